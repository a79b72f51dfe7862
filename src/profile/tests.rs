//! Tests of aggregation and encoding together: build profiles from real
//! stacks, decode them, and let Google's pprof tool read them.

use prost::Message;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::encode::{decode_gzipped, MAX_PROFILE_BYTES, MAX_SAMPLES_PER_PROFILE, MAX_STACK_DEPTH};
use super::{proto, EncodedProfile, ProfileBuilder, Symbolizer};
use crate::context::{self, SpanLabels};

// Symbol names are only real on Linux (elsewhere the symbolizer is a stub).
#[cfg(tp_sampler)]
mod encoding {
    use super::*;
    use crate::context::ProfilerThread;
    use crate::profile::encode::SYNTHETIC_MAPPING;
    use std::hint::black_box;

    const PERIOD: i64 = 10_000_000; // 100 Hz

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn string(p: &proto::Profile, id: i64) -> &str {
        &p.string_table[id as usize]
    }

    /// `key=value` pairs of a sample's string labels, sorted.
    fn labels_of(p: &proto::Profile, s: &proto::Sample) -> Vec<(String, String)> {
        let mut l: Vec<_> = s
            .label
            .iter()
            .map(|l| (string(p, l.key).to_owned(), string(p, l.str).to_owned()))
            .collect();
        l.sort();
        l
    }

    /// Function names of a sample's stack, leaf first, inlined frames included.
    fn stack_names(p: &proto::Profile, s: &proto::Sample) -> Vec<String> {
        let mut names = Vec::new();
        for id in &s.location_id {
            let loc = &p.location[*id as usize - 1];
            assert_eq!(loc.id, *id, "location ids are their index + 1");
            for line in &loc.line {
                let f = &p.function[line.function_id as usize - 1];
                assert_eq!(f.id, line.function_id);
                names.push(string(p, f.name).to_owned());
            }
        }
        names
    }

    #[inline(never)]
    fn leaf_function_for_profile_test(x: u64) -> u64 {
        let mut acc = black_box(x);
        for i in 0..black_box(9u64) {
            acc = acc.rotate_left(3) ^ i;
        }
        black_box(acc)
    }

    #[inline(never)]
    fn caller_function_for_profile_test(x: u64) -> u64 {
        black_box(leaf_function_for_profile_test(black_box(x)) + 1)
    }

    fn addr_of(f: fn(u64) -> u64) -> u64 {
        f as *const () as usize as u64
    }

    /// A stack with real code addresses: leaf pc in the leaf function, a
    /// "return address" inside the caller.
    fn real_stack() -> Vec<u64> {
        assert_ne!(caller_function_for_profile_test(1), 0);
        vec![
            addr_of(leaf_function_for_profile_test) + 4,
            addr_of(caller_function_for_profile_test) + 8,
        ]
    }

    fn build_labelled() -> (Vec<EncodedProfile>, u32) {
        let name_id = context::intern_name("GET /car");
        let mut b = ProfileBuilder::new(
            crate::profile::ProfileKind::Cpu,
            at(1_700_000_000),
            PERIOD,
            1_000_000,
        );
        assert!(b.is_empty());
        let stack = real_stack();
        let span = SpanLabels::new(
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210_0011_2233_4455_6677,
            name_id,
        );
        let small = SpanLabels::new(0xab, 0, 0);
        b.add(span, &stack, 2);
        b.add(span, &stack, 3); // aggregated with the first
        b.add(SpanLabels::NONE, &stack, 1);
        b.add(small, &stack[..1], 4);
        b.add(span, &stack, 0); // ignored
        assert_eq!(b.samples(), 10);
        assert!(!b.is_empty());
        let mut sym = Symbolizer::new();
        (b.finish(at(1_700_000_010), &mut sym), name_id)
    }

    #[test]
    fn span_ids_past_the_cap_keep_stack_and_name_but_lose_the_id() {
        let name_id = context::intern_name("capped");
        let stack = real_stack();
        let mut b = ProfileBuilder::new(crate::profile::ProfileKind::Cpu, at(100), PERIOD, 3);
        // Ten spans, each sampled twice (the second time once more after
        // the cap is full: a kept span keeps its id for the whole interval).
        for id in 1..=10u64 {
            let kept = b.add(SpanLabels::new(id, 0xabc, name_id), &stack, 1);
            assert_eq!(kept.span_id, if id <= 3 { id } else { 0 }, "span {id}");
            assert_eq!(kept.trace_id, if id <= 3 { 0xabc } else { 0 });
            assert_eq!(kept.name_id, name_id);
        }
        for id in 1..=10u64 {
            b.add(SpanLabels::new(id, 0xabc, name_id), &stack, 2);
        }
        assert_eq!(b.span_id_overflows(), 7 * 3);
        assert_eq!(b.samples(), 30);
        // One entry per kept span plus one for all the overflowed ones:
        // memory does not grow with the number of spans past the cap.
        for id in 11..=10_000u64 {
            b.add(SpanLabels::new(id, 0, name_id), &stack, 1);
        }
        assert_eq!(
            b.entries(),
            3 + 1,
            "the kept ids, and the name without an id"
        );
        let mut sym = Symbolizer::new();
        let out = b.finish(at(110), &mut sym);
        let mut ids = std::collections::BTreeSet::new();
        let (mut named_without_id, mut total) = (0, 0);
        for e in &out {
            let p = decode_gzipped(&e.gzipped).unwrap();
            for s in &p.sample {
                let labels = labels_of(&p, s);
                total += s.value[0];
                match labels.iter().find(|(k, _)| k == "span_id") {
                    Some((_, v)) => {
                        ids.insert(v.clone());
                    }
                    None => {
                        assert!(labels.contains(&("span_name".into(), "capped".into())));
                        assert!(!labels.iter().any(|(k, _)| k == "trace_id"));
                        named_without_id += s.value[0];
                    }
                }
            }
        }
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_eq!(total, 30 + 9_990);
        assert_eq!(named_without_id, 21 + 9_990);
    }

    #[test]
    fn encodes_labels_types_period_and_aggregates() {
        let (out, _) = build_labelled();
        assert_eq!(out.len(), 1);
        let enc = &out[0];
        assert_eq!(enc.samples, 10);
        assert_eq!(enc.start, at(1_700_000_000));
        assert_eq!(enc.end, at(1_700_000_010));
        assert_eq!(&enc.gzipped[..2], &[0x1f, 0x8b], "gzipped");
        let p = decode_gzipped(&enc.gzipped).expect("decodes");
        assert_eq!(string(&p, 0), "");
        let types: Vec<_> = p
            .sample_type
            .iter()
            .map(|t| (string(&p, t.r#type), string(&p, t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        let period_type = p.period_type.as_ref().expect("period type");
        assert_eq!(
            (string(&p, period_type.r#type), string(&p, period_type.unit)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(p.period, PERIOD);
        assert_eq!(p.time_nanos, 1_700_000_000_000_000_000);
        assert_eq!(p.duration_nanos, 10_000_000_000);

        assert_eq!(p.sample.len(), 3);
        let mut seen = Vec::new();
        for s in &p.sample {
            let labels = labels_of(&p, s);
            seen.push((labels.clone(), s.value.clone(), s.location_id.len()));
        }
        seen.sort();
        let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            seen,
            vec![
                (vec![], vec![1, PERIOD], 2),
                (
                    vec![kv("span_id", "00000000000000ab")],
                    vec![4, 4 * PERIOD],
                    1
                ),
                (
                    vec![
                        kv("span_id", "0123456789abcdef"),
                        kv("span_name", "GET /car"),
                        kv("trace_id", "fedcba98765432100011223344556677"),
                    ],
                    vec![5, 5 * PERIOD],
                    2
                ),
            ]
        );

        // Stacks are symbolized, leaf first; locations and functions deduped.
        let full = p
            .sample
            .iter()
            .find(|s| s.location_id.len() == 2)
            .expect("sample");
        let names = stack_names(&p, full);
        // The leaf location's outermost function is the leaf function (what
        // it inlined, e.g. `black_box`, comes before it).
        let leaf_loc = &p.location[full.location_id[0] as usize - 1];
        let leaf_fn = leaf_loc.line.last().expect("lines").function_id;
        let leaf_name = string(&p, p.function[leaf_fn as usize - 1].name);
        assert_eq!(
            leaf_name,
            "tracing_pyroscope::profile::tests::encoding::leaf_function_for_profile_test"
        );
        assert!(
            names
                .iter()
                .any(|n| n.ends_with("encoding::leaf_function_for_profile_test")),
            "{names:?}"
        );
        assert!(
            names
                .last()
                .expect("names")
                .ends_with("encoding::caller_function_for_profile_test"),
            "{names:?}"
        );
        assert_eq!(p.location.len(), 2);
        assert_eq!(p.location[0].address, real_stack()[0]);
        let mut fn_keys: Vec<_> = p.function.iter().map(|f| (f.name, f.filename)).collect();
        fn_keys.sort();
        fn_keys.dedup();
        assert_eq!(fn_keys.len(), p.function.len(), "functions are deduped");
        let m = &p.mapping[0];
        assert!(m.has_functions && m.has_filenames && m.has_line_numbers && m.has_inline_frames);
        assert!(m.memory_start <= p.location[0].address && p.location[0].address < m.memory_limit);
        assert!(p.location.iter().all(|l| l.mapping_id == 1));
    }

    #[test]
    fn the_profilers_own_samples_are_named_without_reading_debug_info() {
        let stack = real_stack();
        let collector = SpanLabels::NONE.on_profiler_thread(ProfilerThread::Collector);
        let mut b = ProfileBuilder::new(
            crate::profile::ProfileKind::Cpu,
            at(100),
            PERIOD,
            usize::MAX,
        );
        b.add(collector, &stack, 3);
        let mut sym = Symbolizer::new();
        let out = b.finish(at(110), &mut sym);
        assert_eq!(
            sym.loaded_objects(),
            0,
            "debug info read for the profiler's own samples"
        );
        let p = decode_gzipped(&out[0].gzipped).expect("decodes");
        let names = stack_names(&p, &p.sample[0]);
        assert!(
            names[0].ends_with("leaf_function_for_profile_test"),
            "named from the symbol table: {names:?}"
        );
        // An application sample at the same addresses reads debug info.
        let mut b = ProfileBuilder::new(
            crate::profile::ProfileKind::Cpu,
            at(110),
            PERIOD,
            usize::MAX,
        );
        b.add(SpanLabels::NONE, &stack, 3);
        let out = b.finish(at(120), &mut sym);
        assert!(
            sym.release_debug_info(),
            "no debug info read for an application sample"
        );
        let p = decode_gzipped(&out[0].gzipped).expect("decodes");
        let lines: Vec<i64> = p
            .location
            .iter()
            .flat_map(|l| l.line.iter().map(|l| l.line))
            .collect();
        assert!(
            lines.iter().all(|&l| l > 0),
            "lines from debug info: {lines:?}"
        );
    }

    #[test]
    fn samples_of_profiler_threads_end_in_a_root_frame_naming_the_thread() {
        let name_id = context::intern_name("GET /car");
        let span = SpanLabels::new(0x77, 0, name_id);
        let collector = SpanLabels::NONE.on_profiler_thread(ProfilerThread::Collector);
        let timers = SpanLabels::NONE.on_profiler_thread(ProfilerThread::Timers);
        // A span entered on a profiler thread (a custom sink's code, say).
        let collector_in_span = span.on_profiler_thread(ProfilerThread::Collector);
        let stack = real_stack();
        let mut b = ProfileBuilder::new(
            crate::profile::ProfileKind::Cpu,
            at(100),
            PERIOD,
            usize::MAX,
        );
        b.add(SpanLabels::NONE, &stack, 1);
        b.add(span, &stack, 2);
        b.add(collector, &stack, 3);
        b.add(collector, &stack[..1], 4);
        b.add(timers, &stack, 5);
        b.add(collector_in_span, &stack, 6);
        // The root frame counts against the depth limit: the leaf side stays.
        let deep: Vec<u64> = (0..MAX_STACK_DEPTH as u64 + 5)
            .map(|i| stack[0] + (i % 2) * 16)
            .collect();
        b.add(timers, &deep, 7);
        let mut sym = Symbolizer::new();
        let out = b.finish(at(110), &mut sym);
        assert_eq!(out.len(), 1);
        let p = decode_gzipped(&out[0].gzipped).expect("decodes");
        let caller = "encoding::caller_function_for_profile_test";
        let mut seen = Vec::new();
        for s in &p.sample {
            let names = stack_names(&p, s);
            let root = names.last().expect("a stack").clone();
            let labels = labels_of(&p, s);
            seen.push((s.value[0], root.clone(), labels.len()));
            if s.value[0] == 7 {
                assert_eq!(s.location_id.len(), MAX_STACK_DEPTH);
                assert_eq!(p.location[s.location_id[0] as usize - 1].address, stack[0]);
            }
            // Whatever the thread, the program's frames come first.
            if s.value[0] != 7 {
                assert!(
                    names
                        .iter()
                        .any(|n| n.ends_with(caller)
                            || n.ends_with("leaf_function_for_profile_test")),
                    "{names:?}"
                );
            }
        }
        seen.sort();
        let collect = ProfilerThread::Collector.frame_name().to_owned();
        let timer = ProfilerThread::Timers.frame_name().to_owned();
        let program = |r: &str| r.ends_with(caller);
        assert_eq!(seen.len(), 7, "{seen:?}");
        assert!(program(&seen[0].1) && seen[0].2 == 0, "{seen:?}");
        assert!(program(&seen[1].1) && seen[1].2 == 2, "{seen:?}");
        assert_eq!(
            seen[2..],
            [
                (3, collect.clone(), 0),
                (4, collect.clone(), 0),
                (5, timer.clone(), 0),
                (6, collect.clone(), 2),
                (7, timer.clone(), 0),
            ]
        );
        // One location and one function per thread, at address 0 in a
        // mapping of their own marked as symbolized (a server must not try
        // to symbolize it); no label names the thread.
        let roots: Vec<&proto::Location> = p
            .location
            .iter()
            .filter(|l| {
                l.line.len() == 1 && {
                    let f = &p.function[l.line[0].function_id as usize - 1];
                    string(&p, f.name).starts_with("tracing-pyroscope: ")
                }
            })
            .collect();
        assert_eq!(roots.len(), 2);
        let synthetic = roots[0].mapping_id;
        assert!(roots
            .iter()
            .all(|l| l.address == 0 && l.mapping_id == synthetic));
        let m = &p.mapping[synthetic as usize - 1];
        assert_eq!(m.id, synthetic);
        assert_eq!(string(&p, m.filename), SYNTHETIC_MAPPING);
        assert!(m.has_functions && m.has_filenames && m.has_line_numbers && m.has_inline_frames);
        assert_eq!(p.mapping.len(), 2, "the program's and the synthetic one");
        assert!(p
            .location
            .iter()
            .filter(|l| l.mapping_id != synthetic)
            .all(|l| l.address != 0 && l.mapping_id != 0));
        assert!(p.string_table.iter().all(|s| s != "thread"));
    }

    #[test]
    fn wall_and_memory_profiles_carry_their_types_values_and_synthetic_frames() {
        use crate::profile::{synthetic_frame, ProfileKind};
        let span = SpanLabels::new(0x99, 0, context::intern_name("GET /car"));
        let stack = real_stack();
        let awaiting = synthetic_frame("[awaiting]");
        let site = synthetic_frame("dispatch (src/work.rs:42)");
        let blocked = synthetic_frame("[blocked: futex]");
        let mut wall = ProfileBuilder::new(ProfileKind::Wall, at(100), PERIOD, usize::MAX);
        wall.add(span, &stack, 2); // running: two periods
        wall.add_values(span, &[awaiting, site], [1, 300_000_000, 0, 0]);
        let mut blocked_stack = vec![blocked];
        blocked_stack.extend(&stack);
        wall.add_values(span, &blocked_stack, [1, 7_000, 0, 0]);
        wall.add_values(span, &blocked_stack, [1, 3_000, 0, 0]); // aggregated
        let mut sym = Symbolizer::new();
        let out = wall.finish(at(110), &mut sym);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, ProfileKind::Wall);
        let p = decode_gzipped(&out[0].gzipped).expect("decodes");
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (string(&p, t.r#type), string(&p, t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("wall", "nanoseconds")]);
        let period = p.period_type.expect("a period type");
        assert_eq!(
            (string(&p, period.r#type), string(&p, period.unit)),
            ("wall", "nanoseconds")
        );
        let mut seen: Vec<(Vec<i64>, Vec<String>)> = p
            .sample
            .iter()
            .map(|s| (s.value.clone(), stack_names(&p, s)))
            .collect();
        seen.sort();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0].0, [1, 300_000_000]);
        assert_eq!(seen[0].1, ["[awaiting]", "dispatch (src/work.rs:42)"]);
        assert_eq!(seen[1].0, [2, 10_000]);
        assert_eq!(seen[2].0, [2, 2 * PERIOD]);
        assert_eq!(seen[1].1[0], "[blocked: futex]");
        assert_eq!(seen[1].1[1..], seen[2].1[..], "blocked on the real stack");
        // Synthetic frames sit at address 0 in the synthetic mapping.
        for l in &p.location {
            let name = string(&p, p.function[l.line[0].function_id as usize - 1].name);
            let m = &p.mapping[l.mapping_id as usize - 1];
            assert_eq!(
                string(&p, m.filename) == SYNTHETIC_MAPPING,
                name.starts_with('[') || name.starts_with("dispatch"),
                "{name}"
            );
        }

        let mut memory = ProfileBuilder::new(ProfileKind::Memory, at(100), 524_288, usize::MAX);
        memory.add_values(span, &stack, [3, 3 * 4096, 1, 4096]);
        let out = memory.finish(at(110), &mut sym);
        assert_eq!(out[0].kind, ProfileKind::Memory);
        let p = decode_gzipped(&out[0].gzipped).expect("decodes");
        let types: Vec<&str> = p.sample_type.iter().map(|t| string(&p, t.r#type)).collect();
        assert_eq!(
            types,
            [
                "alloc_objects",
                "alloc_space",
                "inuse_objects",
                "inuse_space"
            ]
        );
        assert_eq!(p.period, 524_288);
        assert_eq!(p.sample[0].value, [3, 3 * 4096, 1, 4096]);
    }

    #[test]
    fn empty_interval_gives_no_profile() {
        let b = ProfileBuilder::new(crate::profile::ProfileKind::Cpu, at(10), PERIOD, 1_000_000);
        let mut sym = Symbolizer::new();
        assert!(b.finish(at(20), &mut sym).is_empty());
    }

    #[test]
    fn decode_accepts_raw_and_rejects_garbage() {
        let p = proto::Profile {
            period: 7,
            ..Default::default()
        };
        let raw = p.encode_to_vec();
        assert_eq!(decode_gzipped(&raw).expect("raw").period, 7);
        assert!(decode_gzipped(&[0x1f, 0x8b, 0, 1, 2]).is_err());
        assert!(decode_gzipped(&[0xff, 0xff, 0xff]).is_err());
    }

    fn pprof_tool() -> String {
        if let Ok(p) = std::env::var("PPROF") {
            if !p.is_empty() {
                return p;
            }
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-pprof.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .expect("run install-pprof.sh");
        assert!(
            out.status.success(),
            "install-pprof.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    #[test]
    fn google_pprof_reads_our_profile() {
        let (out, _) = build_labelled();
        let dir = std::env::temp_dir().join(format!("tp-profile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("cpu.pb.gz");
        std::fs::write(&file, &out[0].gzipped).expect("write profile");
        let result = std::process::Command::new(pprof_tool())
            .arg("-traces")
            .arg(&file)
            .env("PPROF_BINARY_PATH", "/nonexistent")
            .output()
            .expect("run pprof");
        let _ = std::fs::remove_dir_all(&dir);
        let stdout = String::from_utf8_lossy(&result.stdout);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(result.status.success(), "pprof failed: {stderr}");
        // `pprof -traces` prints labels as `   span_id:  0123…` lines.
        let words = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        for needle in [
            "span_id: 0123456789abcdef",
            "span_name: GET /car",
            "trace_id: fedcba98765432100011223344556677",
            "span_id: 00000000000000ab 40ms",
            "span_name: GET /car 50ms",
            "encoding::leaf_function_for_profile_test",
            "encoding::caller_function_for_profile_test",
            "Type: cpu",
            "Duration: 10s, Total samples = 100ms",
        ] {
            assert!(
                words.contains(needle),
                "pprof -traces lacks {needle:?}:\n{stdout}\n{stderr}"
            );
        }
    }

    /// Checks the limits on every profile and returns (profiles, total count).
    fn check_limits(out: &[EncodedProfile]) -> Vec<proto::Profile> {
        out.iter()
            .map(|e| {
                let raw = {
                    let mut d = flate2::read::GzDecoder::new(&e.gzipped[..]);
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut d, &mut v).expect("gunzip");
                    v
                };
                assert!(raw.len() <= MAX_PROFILE_BYTES, "{} bytes", raw.len());
                let p = decode_gzipped(&e.gzipped).expect("decode");
                assert!(!p.sample.is_empty());
                assert!(
                    p.sample.len() <= MAX_SAMPLES_PER_PROFILE,
                    "{} samples",
                    p.sample.len()
                );
                let sum: i64 = p.sample.iter().map(|s| s.value[0]).sum();
                assert_eq!(sum as u64, e.samples);
                assert!(p
                    .sample
                    .iter()
                    .all(|s| s.location_id.len() <= MAX_STACK_DEPTH));
                // Every referenced id exists.
                for s in &p.sample {
                    for id in &s.location_id {
                        assert!(*id >= 1 && *id as usize <= p.location.len());
                    }
                }
                p
            })
            .collect()
    }

    #[test]
    fn splits_more_than_16000_samples() {
        let mut b =
            ProfileBuilder::new(crate::profile::ProfileKind::Cpu, at(100), PERIOD, 1_000_000);
        let leaf = addr_of(leaf_function_for_profile_test);
        let caller = addr_of(caller_function_for_profile_test);
        let n = 40_000u64;
        for i in 0..n {
            // Distinct stacks: a real leaf and caller around a fake frame.
            b.add(
                SpanLabels::new(i % 7 + 1, 0, 0),
                &[leaf + i % 16, 0x1000_0000 + i * 16, caller + 8],
                1 + i % 3,
            );
        }
        let expected: u64 = (0..n).map(|i| 1 + i % 3).sum();
        assert_eq!(b.samples(), expected);
        let mut sym = Symbolizer::new();
        let out = b.finish(at(110), &mut sym);
        assert_eq!(out.len(), 3, "40000 samples → 3 profiles");
        let profiles = check_limits(&out);
        let total: u64 = out.iter().map(|e| e.samples).sum();
        assert_eq!(total, expected);
        let entries: usize = profiles.iter().map(|p| p.sample.len()).sum();
        assert_eq!(entries, n as usize);
        for (e, p) in out.iter().zip(&profiles) {
            assert_eq!((e.start, e.end), (at(100), at(110)));
            assert_eq!(
                (p.time_nanos, p.duration_nanos),
                (100_000_000_000, 10_000_000_000)
            );
        }
    }

    #[test]
    fn splits_profiles_larger_than_4_mib() {
        // 2000 samples of 200 distinct frames each: far over 4 MiB at once.
        let mut b =
            ProfileBuilder::new(crate::profile::ProfileKind::Cpu, at(100), PERIOD, 1_000_000);
        let mut stack = vec![0u64; 200];
        for i in 0..2000u64 {
            for (j, f) in stack.iter_mut().enumerate() {
                *f = 0x10_0000_0000 + (i * 200 + j as u64) * 64;
            }
            b.add(
                SpanLabels::new(i + 1, u128::from(i) << 64 | 1, 0),
                &stack,
                1,
            );
        }
        let mut sym = Symbolizer::new();
        let out = b.finish(at(101), &mut sym);
        assert!(out.len() >= 3, "{} profiles", out.len());
        let profiles = check_limits(&out);
        assert_eq!(out.iter().map(|e| e.samples).sum::<u64>(), 2000);
        // Nearly full: splitting is by size, not by a crude guess.
        let first = profiles[0].encode_to_vec().len();
        assert!(
            first > MAX_PROFILE_BYTES - 64 * 1024,
            "first profile only {first} bytes"
        );
        // Rolled-back tables left nothing dangling: every string, function
        // and location is used by some sample of its profile.
        for p in &profiles {
            let used: std::collections::HashSet<u64> = p
                .sample
                .iter()
                .flat_map(|s| s.location_id.iter().copied())
                .collect();
            assert_eq!(used.len(), p.location.len());
            assert_eq!(p.function.len(), p.location.len());
        }
    }

    #[test]
    fn truncates_deep_stacks_keeping_the_leaf() {
        let mut b =
            ProfileBuilder::new(crate::profile::ProfileKind::Cpu, at(100), PERIOD, 1_000_000);
        let stack: Vec<u64> = (0..1500u64).map(|i| 0x2000_0000 + i * 32).collect();
        b.add(SpanLabels::NONE, &stack, 1);
        // Same first 1000 frames: aggregated with the truncated one.
        b.add(SpanLabels::NONE, &stack[..1000], 2);
        let mut sym = Symbolizer::new();
        let out = b.finish(at(101), &mut sym);
        let p = &check_limits(&out)[0];
        assert_eq!(p.sample.len(), 1);
        assert_eq!(p.sample[0].value[0], 3);
        let ids = &p.sample[0].location_id;
        assert_eq!(ids.len(), MAX_STACK_DEPTH);
        let addrs: Vec<u64> = ids
            .iter()
            .map(|id| p.location[*id as usize - 1].address)
            .collect();
        assert_eq!(addrs, stack[..MAX_STACK_DEPTH]);
    }

    #[test]
    fn leaf_and_return_addresses_are_distinct_locations() {
        let leaf = addr_of(leaf_function_for_profile_test);
        let mut b =
            ProfileBuilder::new(crate::profile::ProfileKind::Cpu, at(100), PERIOD, 1_000_000);
        // The same address as a leaf pc and as a return address.
        b.add(SpanLabels::NONE, &[leaf + 1], 1);
        b.add(SpanLabels::NONE, &[leaf + 100, leaf + 1], 1);
        let mut sym = Symbolizer::new();
        let p = decode_gzipped(&b.finish(at(101), &mut sym)[0].gzipped).expect("decode");
        assert_eq!(p.location.len(), 3);
        for l in &p.location {
            let name = string(
                &p,
                p.function[l.line.last().expect("line").function_id as usize - 1].name,
            );
            assert!(name.ends_with("leaf_function_for_profile_test"), "{name}");
        }
    }
}

#[cfg(tp_sampler)]
mod bench {
    use super::*;
    use std::time::Instant;

    /// The test binary's executable mapping.
    fn text_range() -> (u64, u64) {
        let exe = std::env::current_exe().expect("exe");
        let exe = exe.to_str().expect("utf-8");
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let line = maps
            .lines()
            .find(|l| l.ends_with(exe) && l.split_whitespace().nth(1) == Some("r-xp"))
            .expect("text mapping");
        let (a, b) = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'))
            .expect("range");
        (
            u64::from_str_radix(a, 16).expect("hex"),
            u64::from_str_radix(b, 16).expect("hex"),
        )
    }

    /// Realistic load: 8 threads × 100 Hz × 10 s = 8000 samples over 500
    /// distinct stacks of depth 30 (real code addresses), 50 spans.
    /// `cargo test --release --lib profile::builder::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run by hand"]
    fn finish_timing() {
        let (start, end) = text_range();
        let pool: Vec<u64> = (0..3000u64)
            .map(|i| start + (i * 7919 * 64) % (end - start))
            .collect();
        let stacks: Vec<Vec<u64>> = (0..500usize)
            .map(|s| {
                (0..30)
                    .map(|d| pool[(s * 31 + d * 97) % pool.len()])
                    .collect()
            })
            .collect();
        let mut sym = Symbolizer::new();
        for round in 0..3 {
            let t = Instant::now();
            let mut b = ProfileBuilder::new(
                crate::profile::ProfileKind::Cpu,
                UNIX_EPOCH,
                10_000_000,
                1_000_000,
            );
            for i in 0..8000usize {
                let labels = SpanLabels::new((i % 50) as u64 + 1, (i % 50) as u128 + 7, 0);
                b.add(labels, &stacks[(i * 13) % stacks.len()], 1);
            }
            let added = t.elapsed();
            let t = Instant::now();
            let out = b.finish(UNIX_EPOCH + Duration::from_secs(10), &mut sym);
            let finished = t.elapsed();
            let bytes: usize = out.iter().map(|e| e.gzipped.len()).sum();
            println!(
                "round {round}: add 8000 samples {added:?}, finish {finished:?}, {} profile(s), {bytes} bytes gzipped",
                out.len()
            );
        }
    }

    /// Encode time and size by distinct (stack, labels) pairs in one
    /// interval: N span ids over min(N, 1000) stacks of 16 frames.
    /// `cargo test --release --lib profile::tests::bench::pairs_curve -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run by hand"]
    fn pairs_curve() {
        // Warm the symbol cache (the collector keeps it across intervals).
        let _ = super::super::encode_synthetic(1000, 1000, 16);
        println!("| pairs | encode time | per pair | gzipped size | per pair | profiles |");
        println!("|---:|---:|---:|---:|---:|---:|");
        for n in [1_000usize, 10_000, 100_000, 1_000_000] {
            let e = super::super::encode_synthetic(n, n.min(1000), 16);
            println!(
                "| {n} | {:.1} ms | {:.2} µs | {:.1} KiB | {:.1} B | {} |",
                e.elapsed.as_secs_f64() * 1e3,
                e.elapsed.as_secs_f64() * 1e6 / n as f64,
                e.bytes as f64 / 1024.0,
                e.bytes as f64 / n as f64,
                e.profiles
            );
        }
    }
}
