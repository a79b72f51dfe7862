use super::*;

#[test]
fn service_names_from_file_names() {
    let s = |n: &str| service_from_file_name(Path::new(n));
    assert_eq!(
        s("ride-sharing-app-1700000000000-42-3.pb.gz"),
        "ride-sharing-app"
    );
    assert_eq!(s("app-1-2-3.pb.gz"), "app");
    assert_eq!(s("odd-name.pb.gz"), "odd-name");
    assert_eq!(s("x-1-2-y.pb.gz"), "x-1-2-y");
}

#[test]
fn folds_root_to_leaf_with_inlined_frames_expanded() {
    let strings: Vec<String> = [
        "",
        "samples",
        "count",
        "span_id",
        "00f067aa0ba902b7",
        "main",
        "outer",
        "inlined",
        "vehicle",
        "car",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let function = |id: u64, name: i64| proto::Function {
        id,
        name,
        ..Default::default()
    };
    let line = |function_id: u64| proto::Line {
        function_id,
        ..Default::default()
    };
    let profile = proto::Profile {
        sample_type: vec![proto::ValueType { r#type: 1, unit: 2 }],
        period: 10,
        string_table: strings,
        function: vec![function(1, 5), function(2, 6), function(3, 7)],
        location: vec![
            // Innermost first: `inlined` was inlined into `outer`.
            proto::Location {
                id: 1,
                line: vec![line(3), line(2)],
                ..Default::default()
            },
            proto::Location {
                id: 2,
                line: vec![line(1)],
                ..Default::default()
            },
            proto::Location {
                id: 3,
                address: 0xabc,
                ..Default::default()
            },
        ],
        sample: vec![
            proto::Sample {
                location_id: vec![1, 2],
                value: vec![3],
                label: vec![
                    proto::Label {
                        key: 3,
                        str: 4,
                        ..Default::default()
                    },
                    proto::Label {
                        key: 8,
                        str: 9,
                        ..Default::default()
                    },
                ],
            },
            proto::Sample {
                location_id: vec![3, 2],
                value: vec![1],
                label: vec![],
            },
        ],
        ..Default::default()
    };
    let mut data = Data::default();
    add_profile(&mut data, PathBuf::from("svc-1-2-3.pb.gz"), &profile);
    let span = &data.spans["00f067aa0ba902b7"];
    assert_eq!(
        span.profile.cpu.lines(&data.stacks),
        ["main;outer;inlined 3"]
    );
    assert_eq!(
        span.profile.cpu.total, 30,
        "samples × period without a cpu value"
    );
    assert_eq!(span.service, "svc");
    assert_eq!(
        data.services["svc"].cpu.lines(&data.stacks),
        ["main;0xabc 1", "main;outer;inlined 3"]
    );
    assert_eq!((data.total_samples, data.samples_with_span), (4, 3));
    assert_eq!(
        data.labels["vehicle"]["car"].cpu.lines(&data.stacks),
        ["main;outer;inlined 3"]
    );
    assert_eq!(data.labels.len(), 1, "span_id is not a span-field label");
}

#[test]
fn frame_names_cannot_split_stacks() {
    assert_eq!(frame_name("<[u8; 4] as Foo>::bar"), "<[u8, 4] as Foo>::bar");
}

/// A profile with the given sample types; each sample is (frames leaf
/// first, values, span id).
fn profile_of(
    types: &[(&str, &str)],
    samples: &[(&[&str], &[i64], Option<&str>)],
) -> proto::Profile {
    let mut strings: Vec<String> = vec![String::new()];
    let mut intern = |s: &str| -> i64 {
        if let Some(i) = strings.iter().position(|x| x == s) {
            return i as i64;
        }
        strings.push(s.to_string());
        (strings.len() - 1) as i64
    };
    let sample_type = types
        .iter()
        .map(|(t, u)| proto::ValueType {
            r#type: intern(t),
            unit: intern(u),
        })
        .collect();
    let mut function = Vec::new();
    let mut location = Vec::new();
    let mut sample = Vec::new();
    for (frames, values, span) in samples {
        let mut ids = Vec::new();
        for name in *frames {
            let id = function.len() as u64 + 1;
            function.push(proto::Function {
                id,
                name: intern(name),
                ..Default::default()
            });
            location.push(proto::Location {
                id,
                line: vec![proto::Line {
                    function_id: id,
                    ..Default::default()
                }],
                ..Default::default()
            });
            ids.push(id);
        }
        let label = span
            .map(|id| {
                vec![proto::Label {
                    key: intern("span_id"),
                    str: intern(id),
                    ..Default::default()
                }]
            })
            .unwrap_or_default();
        sample.push(proto::Sample {
            location_id: ids,
            value: values.to_vec(),
            label,
        });
    }
    proto::Profile {
        sample_type,
        sample,
        location,
        function,
        string_table: strings,
        period: 10_000_000,
        ..Default::default()
    }
}

#[test]
fn reads_cpu_wall_and_memory_profiles_by_their_sample_types() {
    const SPAN: &str = "00f067aa0ba902b7";
    let cpu = profile_of(
        &[("samples", "count"), ("cpu", "nanoseconds")],
        &[
            (&["work", "main"], &[2, 20_000_000], Some(SPAN)),
            (&["idle", "main"], &[1, 10_000_000], None),
        ],
    );
    let wall = profile_of(
        &[("samples", "count"), ("wall", "nanoseconds")],
        &[
            (&["work", "main"], &[2, 20_000_000], Some(SPAN)),
            (
                &["[awaiting]", "span dispatch (src/x.rs:1)"],
                &[1, 30_000_000],
                Some(SPAN),
            ),
            (&["[blocked: futex]", "lock"], &[1, 40_000_000], Some(SPAN)),
        ],
    );
    let memory = profile_of(
        &[
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ],
        &[(&["route", "main"], &[3, 3000, 1, 1000], Some(SPAN))],
    );
    let mut data = Data::default();
    add_profile(&mut data, PathBuf::from("svc-1-2-3.pb.gz"), &cpu);
    add_profile(&mut data, PathBuf::from("svc-1-2-4.wall.pb.gz"), &wall);
    add_profile(&mut data, PathBuf::from("svc-1-2-5.memory.pb.gz"), &memory);
    let kinds: Vec<&str> = data.files.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, ["process_cpu", "wall", "memory"]);
    let services: Vec<&str> = data.files.iter().map(|f| f.service.as_str()).collect();
    assert_eq!(
        services,
        ["svc", "svc", "svc"],
        "the kind's file suffix is not the service"
    );
    let p = &data.spans[SPAN].profile;
    assert_eq!((p.cpu.samples, p.cpu.total), (2, 20_000_000));
    assert_eq!(p.wall.total, 90_000_000);
    assert_eq!(
        (p.awaiting_nanos, p.blocked_leaf_nanos),
        (30_000_000, 40_000_000)
    );
    assert_eq!(
        p.wall.lines(&data.stacks),
        [
            "lock;[blocked: futex] 40000",
            "main;work 20000",
            "span dispatch (src/x.rs:1);[awaiting] 30000"
        ],
        "wall graphs weigh microseconds"
    );
    assert_eq!((p.alloc.total, p.inuse.total), (3000, 1000));
    assert_eq!(p.alloc.lines(&data.stacks), ["main;route 3000"]);
    assert_eq!(p.views(), [View::Cpu, View::Wall, View::Alloc, View::Inuse]);
    // Only CPU samples count as CPU, with or without a span.
    assert_eq!((data.total_samples, data.samples_with_span), (3, 2));
    assert_eq!(data.outside_spans.lines(&data.stacks), ["main;idle 1"]);
}
