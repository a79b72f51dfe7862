//! A deploy renames a new build over a loaded library's path while the
//! process keeps running the old one. Its frames must keep their own
//! names, read from the loaded image's file (kept open from when the
//! symbolizer first saw it), never from the new file at the path: the
//! fixture (tests/fixtures/deploy_fixture.c) is built twice with the same
//! layout and other names, so names read from the wrong file show.

use crate::common::pprof;

use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn build(dir: &Path, variant: &str, out: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/deploy_fixture.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-g"])
        .arg(format!("-DVARIANT={variant}"))
        .arg("-o")
        .arg(out)
        .arg(&source)
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("this test needs a C compiler ({cc}): {e}"));
    assert!(status.success(), "{cc} failed on {}", source.display());
}

/// Names of the library's frames, with their sample counts, in the
/// profiles of `dir` whose interval started at or after `since`
/// (nanoseconds since the epoch).
fn library_frames(dir: &Path, since: i64) -> Vec<(String, i64)> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).expect("profiles dir") {
        let path = entry.expect("entry").path();
        if !path.to_string_lossy().ends_with(".pb.gz") {
            continue;
        }
        let profile =
            pprof::Profile::parse(&std::fs::read(&path).expect("read")).expect("a pprof profile");
        if profile.time_nanos < since {
            continue;
        }
        for sample in &profile.sample {
            let count = sample.value.first().copied().unwrap_or(0);
            names.extend(
                profile
                    .stack(sample)
                    .into_iter()
                    .filter(|f| f.contains("deploy_") || f.contains("libdeploy"))
                    .map(|f| (f, count)),
            );
        }
    }
    names
}

#[test]
fn a_library_replaced_on_disk_keeps_its_own_names() {
    isolated!();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("symbols_replaced_library: watchdog fired");
        std::process::abort();
    });
    let dir = std::env::temp_dir().join(format!("tracing-pyroscope-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join("libdeploy.so");
    let next = dir.join("libdeploy.so.next");
    build(&dir, "original", &lib);
    build(&dir, "replaced", &next);
    let profiles = dir.join("profiles");
    let (_layer, guard) = tracing_pyroscope::Builder::new("deploy-test")
        .profiles_dir(&profiles)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(1))
        .build()
        .expect("start profiler");

    let c_path = CString::new(lib.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; the fixture has no constructors.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {} failed", lib.display());
    // SAFETY: the symbol is the fixture's `unsigned long long (unsigned long long)`.
    let spin = unsafe { libc::dlsym(handle, c"deploy_spin".as_ptr()) };
    assert!(!spin.is_null());
    let spin: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(spin) };
    // SAFETY: as above.
    let later = unsafe { libc::dlsym(handle, c"deploy_spin_later".as_ptr()) };
    assert!(!later.is_null());
    let later: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(later) };
    let stop = Arc::new(AtomicBool::new(false));
    let deployed = Arc::new(AtomicBool::new(false));
    let worker = {
        let (stop, deployed) = (stop.clone(), deployed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // After the deploy, code whose addresses are new to the
                // profiler runs as well: it is named then.
                if deployed.load(Ordering::Relaxed) {
                    std::hint::black_box(later(20_000_000));
                }
                std::hint::black_box(spin(20_000_000));
            }
        })
    };
    // A few intervals with the original file at the path: the profiler
    // sees the library and reads its names.
    std::thread::sleep(Duration::from_millis(2500));
    // The deploy: a new build renamed over the path.
    std::fs::rename(&next, &lib).expect("rename");
    let renamed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    deployed.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(3500));
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("worker");
    // Every object's own file was found: nothing fell back to object+offset.
    let stats = guard.stats();
    drop(guard);
    assert_eq!(stats.symbol_mismatches, 0, "{stats:?}");

    let names = library_frames(&profiles, renamed);
    let _ = std::fs::remove_dir_all(&dir);
    let count = |want: &dyn Fn(&str) -> bool| -> i64 {
        names.iter().filter(|(n, _)| want(n)).map(|(_, c)| c).sum()
    };
    let own =
        count(&|n| n.ends_with("_original") || n == "deploy_spin" || n == "deploy_spin_later");
    let later = count(&|n| n == "deploy_later_original");
    let wrong: Vec<&(String, i64)> = names
        .iter()
        .filter(|(n, _)| {
            !(n.ends_with("_original") || n == "deploy_spin" || n == "deploy_spin_later")
        })
        .collect();
    println!(
        "after the rename: {own} library frames with their own names \
         ({later} in deploy_later_original), others: {wrong:?}"
    );
    assert!(
        later >= 100,
        "too few samples in the code run after the rename: {names:?}"
    );
    assert!(
        wrong.is_empty(),
        "frames not named from the loaded library: {wrong:?}"
    );
}
