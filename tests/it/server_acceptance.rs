//! Every upload is one the real server keeps (issue 9): the crate, through
//! its public API, against the strict Pyroscope double
//! (`tests/common/pyroscope_double.rs`), in configurations the server
//! rejects or that cost it series:
//! - a static label that collides with another label once `.` becomes `_`
//!   (`span.name`, `service.name`, `process.runtime.name`): the builder
//!   must refuse it, or the server must accept what is sent;
//! - a span name longer than the 2048 bytes a label value may have;
//! - many distinct span names: at most 500 series per process;
//! - span labels (`PYROSCOPE_SPAN_LABELS`, one with a '.' in its name) with
//!   many values on many span names: accepted, stored as series labels,
//!   within the same budget.
//!
//! Each scenario failed on the crate as it was when the double became
//! strict. The span-name table is process-wide (its cap is per process), so
//! the scenarios run in one test, in order: the long name must be interned
//! before the budget scenario fills the table.

use crate::common;
use crate::cpu_clock;

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use common::pyroscope_double::PyroscopeDouble;
use common::wait_until;
use tracing_subscriber::prelude::*;

/// One profiler per process: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Issue 9: one process creates at most 500 series with default settings.
const SERIES_BUDGET: usize = 500;

#[inline(never)]
fn burn(cpu: Duration) -> u64 {
    black_box(cpu_clock::spin_for(cpu))
}

/// Starts the profiler against `double` with `configure` applied, runs one
/// root span per name (each burning `cpu_per_span`), waits until every
/// profile was answered, and returns the guard's final stats line.
/// `Err` is the builder's error.
fn run(
    double: &PyroscopeDouble,
    configure: impl FnOnce(tracing_pyroscope::Builder) -> tracing_pyroscope::Builder,
    names: &[String],
    cpu_per_span: Duration,
) -> Result<tracing_pyroscope::Stats, tracing_pyroscope::Error> {
    let builder = tracing_pyroscope::Builder::new("acceptance-app")
        .server_address(double.url())
        .sample_rate(1000)
        .upload_interval(Duration::from_millis(300));
    let (layer, guard) = configure(builder).build()?;
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        for name in names {
            let span = tracing::info_span!("request", otel.name = name.as_str());
            let _entered = span.enter();
            black_box(burn(cpu_per_span));
        }
    });
    Ok(settle_and_stop(guard, dispatch))
}

/// Waits (up to 30 s) until every profile encoded so far got an answer
/// (accepted, rejected or dropped), then stops the profiler; returns its
/// stats from just before the stop.
fn settle_and_stop(
    guard: tracing_pyroscope::ProfilerGuard,
    dispatch: tracing::Dispatch,
) -> tracing_pyroscope::Stats {
    wait_until(Duration::from_secs(30), || {
        let s = guard.stats();
        s.profiles > 0 && s.uploads + s.dropped_profiles >= s.profiles
    });
    drop(dispatch);
    let stats = guard.stats();
    drop(guard);
    stats
}

/// Why not every request the double got was accepted (or none came), if so.
fn not_all_accepted(double: &PyroscopeDouble, what: &str) -> Option<String> {
    let received = double.received();
    if received.is_empty() {
        return Some(format!("{what}: nothing was uploaded"));
    }
    let rejected: Vec<_> = received.iter().filter(|r| r.status != 200).collect();
    if let Some(first) = rejected.first() {
        return Some(format!(
            "{what}: {} of {} uploads rejected; first: {} {}",
            rejected.len(),
            received.len(),
            first.status,
            // Long values make long messages.
            first.message.chars().take(400).collect::<String>()
        ));
    }
    if !double.samples().iter().any(|s| s.span_id != 0) {
        return Some(format!("{what}: no span samples stored"));
    }
    None
}

#[track_caller]
fn assert_all_accepted(double: &PyroscopeDouble, what: &str) {
    if let Some(why) = not_all_accepted(double, what) {
        panic!("{why}");
    }
}

#[test]
fn every_upload_is_one_the_server_keeps() {
    isolated!();
    static_labels_colliding_after_sanitization();
    span_name_longer_than_a_label_value();
    span_labels_reach_the_server_within_the_series_budget();
    distinct_span_names_stay_within_the_series_budget();
}

fn span_labels_reach_the_server_within_the_series_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let double = PyroscopeDouble::start();
    let (layer, guard) = tracing_pyroscope::Builder::new("acceptance-app")
        .server_address(double.url())
        .sample_rate(1000)
        .upload_interval(Duration::from_millis(300))
        .span_labels(["vehicle", "http.route"])
        // A small budget (the cap is process-wide): the next scenario still
        // has most of the default one for its span names.
        .max_span_names(40)
        .build()
        .expect("profiler starts");
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        // 30 span names × 80 vehicles × 2 routes: far more combinations
        // than the budget holds, and more vehicles than the value cap.
        for n in 0..30 {
            for v in 0..80 {
                let span = tracing::info_span!(
                    "request",
                    otel.name = format!("GET /cars/{n}").as_str(),
                    vehicle = format!("vehicle-{v}").as_str(),
                    http.route = if v % 2 == 0 { "/car" } else { "/bike" },
                );
                let _entered = span.enter();
                // The first spans' label sets are within the budget: give
                // them enough CPU to be sampled for sure (about 40 samples).
                let cpu = if n == 0 && v < 8 { 5_000 } else { 300 };
                black_box(burn(Duration::from_micros(cpu)));
            }
        }
    });
    let stats = settle_and_stop(guard, dispatch);
    let series = double.series_count();
    eprintln!(
        "span labels: {series} series ({} label sets); {stats:?}",
        double.label_sets().len()
    );
    assert_all_accepted(&double, "span labels");
    let stored = double.samples();
    // Stored under the server's sanitized names.
    assert!(
        stored
            .iter()
            .any(|s| s.series.contains_key("vehicle") && s.series.contains_key("http_route")),
        "no sample stored with its span labels"
    );
    assert!(stats.span_label_overflows > 0, "{stats:?}");
    assert!(stats.label_set_overflows > 0, "{stats:?}");
    // 40 label sets, `other` and samples outside spans, two types each.
    assert!(
        series <= 2 * (40 + 2),
        "{series} series with a budget of 40"
    );
}

fn static_labels_colliding_after_sanitization() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut failures = Vec::new();
    for (name, value) in [
        ("span.name", "x"),
        ("service.name", "x"),
        ("process.runtime.name", "x"),
    ] {
        let double = PyroscopeDouble::start();
        let names = vec!["GET /car".to_string()];
        let outcome = run(
            &double,
            |b| b.label(name, value),
            &names,
            Duration::from_millis(200),
        );
        // Either the builder refuses the label, naming the call and the
        // label, or every upload is accepted.
        let failure = match outcome {
            Err(e) => {
                let text = e.to_string();
                (!(text.contains("Builder::label") && text.contains(name)))
                    .then(|| format!("{name}: the error must name the call and the label: {text}"))
            }
            Ok(_) => not_all_accepted(&double, &format!("label {name}={value}")),
        };
        failures.extend(failure);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn span_name_longer_than_a_label_value() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let double = PyroscopeDouble::start();
    let long = format!("GET /{}", "x".repeat(3000));
    let names = vec![long.clone(), "GET /short".to_string()];
    let stats = run(&double, |b| b, &names, Duration::from_millis(200)).expect("profiler starts");
    eprintln!("3000-byte span name: {stats:?}");
    assert_all_accepted(&double, "3000-byte span name");
    let stored: Vec<String> = double
        .samples()
        .iter()
        .filter_map(|s| s.series.get("span_name").cloned())
        .collect();
    assert!(stored.iter().any(|n| n == "GET /short"));
    let cut = stored
        .iter()
        .find(|n| n.starts_with("GET /xxx"))
        .expect("the long name arrives, truncated");
    assert!(cut.len() <= 2048, "{} bytes", cut.len());
}

fn distinct_span_names_stay_within_the_series_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let double = PyroscopeDouble::start();
    // Raw URL paths as span names, the common mistake, one of 3000 bytes,
    // at 1000 Hz.
    let names: Vec<String> = (0..3000)
        .map(|i| match i {
            1500 => format!("GET /cars/{}", "y".repeat(2990)),
            _ => format!("GET /cars/{i}"),
        })
        .collect();
    let stats = run(&double, |b| b, &names, Duration::from_millis(1)).expect("profiler starts");
    assert!(
        wait_until(Duration::from_secs(5), || !double.received().is_empty()),
        "nothing uploaded"
    );
    let series = double.series_count();
    let label_sets = double.label_sets().len();
    eprintln!(
        "3000 span names: {series} series ({label_sets} label sets × profile types {:?}); {stats:?}",
        double.profile_types()
    );
    assert_all_accepted(&double, "3000 span names");
    assert!(stats.span_name_overflows > 0, "{stats:?}");
    assert!(
        series <= SERIES_BUDGET,
        "{series} series for one process (budget {SERIES_BUDGET})"
    );
}
