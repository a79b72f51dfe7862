//! `pyroscope.profile.id` with the real sampler: 100 sub-millisecond root
//! spans and 10 long CPU-bound ones under tracing-opentelemetry. The
//! attribute must be on exactly the root spans whose `span_id` has samples
//! in the written CPU profile (read through Google's pprof tool): all long
//! ones, and a short one only if a sample happened to land in it.

use crate::cpu_clock;
use crate::pprof_tool;

use std::collections::HashSet;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::prelude::*;

#[test]
fn profile_id_on_exactly_the_root_spans_with_samples() {
    isolated!();
    let dir = std::env::temp_dir().join(format!(
        "tracing-pyroscope-profile-id-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let (profiling, guard) = tracing_pyroscope::Builder::new("profile-id")
        .profiles_dir(&dir)
        .sample_rate(1000)
        .upload_interval(Duration::from_secs(10))
        .build()
        .expect("start profiler");
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")))
        .with(profiling);
    let default = tracing::subscriber::set_default(subscriber);
    for _ in 0..100 {
        tracing::info_span!("short").in_scope(|| cpu_clock::spin_for(Duration::from_micros(50)));
    }
    for _ in 0..10 {
        tracing::info_span!("long").in_scope(|| cpu_clock::spin_for(Duration::from_millis(60)));
    }
    drop(default);
    drop(guard);
    let _ = provider.force_flush();

    let mut sampled = HashSet::new();
    for f in pprof_tool::profile_files(&dir) {
        if f.to_string_lossy().ends_with(".wall.pb.gz")
            || f.to_string_lossy().ends_with(".memory.pb.gz")
        {
            continue;
        }
        for tr in pprof_tool::traces(&f) {
            if let Some(id) = tr.labels.get("span_id") {
                sampled.insert(id.clone());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 110);
    let mut with = [0usize; 2];
    for span in &spans {
        let id = format!(
            "{:016x}",
            u64::from_be_bytes(span.span_context.span_id().to_bytes())
        );
        let attr = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "pyroscope.profile.id")
            .map(|kv| kv.value.as_str().into_owned());
        let has_samples = sampled.contains(&id);
        assert_eq!(
            attr.is_some(),
            has_samples,
            "{} {id}: attribute {attr:?}, samples in the profile: {has_samples}",
            span.name
        );
        if let Some(attr) = attr {
            assert_eq!(attr, id);
            with[usize::from(span.name == "long")] += 1;
        }
    }
    println!(
        "pyroscope.profile.id on {} of 100 short and {} of 10 long root spans",
        with[0], with[1]
    );
    assert_eq!(with[1], 10, "every long span has samples");
    assert!(with[0] < 50, "most short spans have no sample");
}
