//! Allocation profiling without `tracing_pyroscope::Allocator` as the
//! global allocator (this test binary has the system allocator) is an
//! error that says how to install it.

#[test]
fn allocations_without_the_wrapper_say_how_to_install_it() {
    isolated!();
    let dir = std::env::temp_dir().join(format!(
        "tracing-pyroscope-alloc-not-installed-{}",
        std::process::id()
    ));
    for (allocations, heap) in [(true, false), (false, true)] {
        let err = tracing_pyroscope::Builder::new("alloc-not-installed")
            .profiles_dir(&dir)
            .allocations(allocations)
            .heap(heap)
            .build()
            .err()
            .expect("an error without the wrapper");
        assert_eq!(err.kind(), tracing_pyroscope::ErrorKind::Config);
        let message = err.to_string();
        assert!(
            message.contains(
                "#[global_allocator] static GLOBAL: tracing_pyroscope::Allocator = tracing_pyroscope::Allocator::system();"
            ),
            "{message}"
        );
    }
    // Without allocation profiling the same profiler starts.
    let (_layer, guard) = tracing_pyroscope::Builder::new("alloc-not-installed")
        .profiles_dir(&dir)
        .build()
        .expect("start profiler");
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}
