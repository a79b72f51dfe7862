use super::*;
use crate::profile::symbolize::{ObjectMapping, SymbolFrame};

/// Full names as the symbolizer gives them, and what every reader
/// must show.
const NAMES: [(&str, &str); 5] = [
    (
        "<F as core::ops::function::FnOnce<()>>::call_once",
        "<F as core::ops::function::FnOnce>::call_once",
    ),
    (
        "<tokio::runtime::blocking::task::BlockingTask<T> as core::future::future::Future>::poll",
        "<tokio::runtime::blocking::task::BlockingTask as core::future::future::Future>::poll",
    ),
    (
        "core::iter::range::<impl core::iter::traits::iterator::Iterator for core::ops::range::Range<A>>::next",
        "core::iter::range::<impl core::iter::traits::iterator::Iterator for core::ops::range::Range>::next",
    ),
    // Nothing to drop: the readable name is the full name.
    (
        "<std::sys::thread::unix::Thread>::new::thread_start",
        "<std::sys::thread::unix::Thread>::new::thread_start",
    ),
    ("main", "main"),
];

/// One profile whose only sample's stack has a frame per [`NAMES`]
/// entry (leaf first).
fn profile() -> EncodedProfile {
    let header = Header::new(
        crate::profile::ProfileKind::Cpu,
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        UNIX_EPOCH + Duration::from_secs(1_700_000_010),
        10_000_000,
    );
    let mapping = Arc::new(ObjectMapping {
        path: Arc::from("/usr/bin/app"),
        start: 0x1000,
        limit: 0x9000,
        file_offset: 0,
        build_id: None,
    });
    let stack: Vec<(u64, bool, Arc<Resolved>)> = NAMES
        .iter()
        .enumerate()
        .map(|(i, (full, _))| {
            let resolved = Resolved {
                frames: vec![SymbolFrame {
                    name: Arc::from(*full),
                    file: Arc::from("src/lib.rs"),
                    line: 7,
                }],
                mapping: Some(mapping.clone()),
            };
            (0x1100 + 16 * i as u64, i > 0, Arc::new(resolved))
        })
        .collect();
    let mut chunk = Chunk::new(&header);
    chunk.add_sample(&stack, SpanLabels::NONE, [3, 30_000_000, 0, 0]);
    chunk.encode(&header).expect("one sample")
}

#[test]
fn functions_are_named_readably_and_keep_a_different_full_name() {
    let p = decode_gzipped(&profile().gzipped).expect("decode");
    let string = |id: i64| p.string_table[id as usize].as_str();
    assert_eq!(p.function.len(), NAMES.len());
    for (f, (full, shown)) in p.function.iter().zip(NAMES) {
        assert_eq!(string(f.name), shown);
        // Never equal: Google's pprof would strip `<...>` again.
        assert_ne!(f.name, f.system_name, "{full}");
        if full == shown {
            assert_eq!(f.system_name, 0, "{full}");
        } else {
            assert_eq!(string(f.system_name), full);
        }
    }
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
    assert!(out.status.success(), "install-pprof.sh failed");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// What Google's pprof tool shows for `args` on the profile.
fn pprof(args: &[&str]) -> String {
    let dir =
        std::env::temp_dir().join(format!("tp-names-test-{}-{}", std::process::id(), args[0]));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("cpu.pb.gz");
    std::fs::write(&file, profile().gzipped).expect("write profile");
    let out = std::process::Command::new(pprof_tool())
        .args(args)
        .arg(&file)
        .env("PPROF_BINARY_PATH", "/nonexistent")
        .output()
        .expect("run pprof");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Google's pprof tool shows the readable names unchanged (and the full
/// ones when asked for them).
#[test]
fn google_pprof_shows_the_readable_names() {
    let traces = pprof(&["-traces"]);
    // Frame lines: `     30ms   NAME` or `            NAME` (names have
    // no double space).
    let frames: Vec<&str> = traces
        .lines()
        .filter_map(|l| l.rsplit("  ").next())
        .map(str::trim)
        .collect();
    for (_, shown) in NAMES {
        assert!(
            traces.lines().any(|l| l.trim().ends_with(shown)),
            "pprof -traces does not show `{shown}`:\n{traces}"
        );
    }
    for f in frames {
        assert!(
            !f.starts_with("::") && !f.contains("::::") && !f.ends_with("::"),
            "pprof shows `{f}`:\n{traces}"
        );
    }
    let full = pprof(&["-traces", "-symbolize=demangle=full"]);
    for (name, _) in NAMES {
        assert!(
            full.lines().any(|l| l.trim().ends_with(name)),
            "pprof -symbolize=demangle=full does not show `{name}`:\n{full}"
        );
    }
}
