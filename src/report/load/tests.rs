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
    assert_eq!(span.profile.lines(&data.stacks), ["main;outer;inlined 3"]);
    assert_eq!(
        span.profile.cpu_nanos, 30,
        "samples × period without a cpu value"
    );
    assert_eq!(span.service, "svc");
    assert_eq!(
        data.services["svc"].lines(&data.stacks),
        ["main;0xabc 1", "main;outer;inlined 3"]
    );
    assert_eq!((data.total_samples, data.samples_with_span), (4, 3));
    assert_eq!(
        data.labels["vehicle"]["car"].lines(&data.stacks),
        ["main;outer;inlined 3"]
    );
    assert_eq!(data.labels.len(), 1, "span_id is not a span-field label");
}

#[test]
fn frame_names_cannot_split_stacks() {
    assert_eq!(frame_name("<[u8; 4] as Foo>::bar"), "<[u8, 4] as Foo>::bar");
}
