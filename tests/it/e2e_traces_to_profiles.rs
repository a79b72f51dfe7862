//! The end-to-end "Traces to profiles" test, the way Grafana does it.
//!
//! An app (a child process: this test binary re-run with the ignored test
//! `app_child` selected) uses tracing + tracing-opentelemetry +
//! opentelemetry-otlp (HTTP/protobuf) and configures profiling only through
//! environment variables and `tracing_pyroscope::from_env()`. It runs two
//! CPU-heavy root spans, `checkout` and `search`, burning about 1 s of CPU
//! each in different `#[inline(never)]` functions, then flushes its traces
//! and drops the profiler guard.
//!
//! The test process hosts:
//! - a loopback OTLP/HTTP receiver (`POST /v1/traces`), decoding bodies
//!   with the OTel protobuf types;
//! - the Pyroscope test double (`tests/common/pyroscope_double.rs`).
//!
//! Then, for each root span, like Grafana's Tempo data source with
//! `tracesToProfiles.tags = [{key: service.name, value: service_name}]`:
//! - it takes `pyroscope.profile.id` from the received OTLP span (and checks
//!   it equals the span id);
//! - maps resource `service.name` to the label selector
//!   `{service_name="…"}`;
//! - calls `SelectMergeSpanProfile` for span start − 60 s .. end + 60 s;
//! - asserts the flame graph holds that span's hot function and not the
//!   other span's, with about the CPU time the app measured.
//!
//! Every profile the double received must also be readable by Google's
//! pprof tool, and pprof's per-span sample counts must equal the double's.
//!
//! Figures are printed; run with
//! `cargo test --release --test e2e_traces_to_profiles -- --nocapture`.

use crate::common;
use crate::cpu_clock;
use crate::pprof_tool;

use cpu_clock::thread_cpu_nanos;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;

use common::pyroscope_double::{FlameGraph, PyroscopeDouble};
use common::wait_until;

/// Selects the child; without it `app_child` does nothing.
const CHILD_ENV: &str = "E2E_TRACES_TO_PROFILES_CHILD";
/// Where the child sends its spans (full OTLP/HTTP traces URL).
const OTLP_ENV: &str = "E2E_TRACES_TO_PROFILES_OTLP";
const SERVICE: &str = "e2e-shop";
const PROFILE_TYPE: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const PROFILE_ID: &str = "pyroscope.profile.id";
/// CPU each root span burns.
const SPAN_CPU: Duration = Duration::from_secs(1);
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// (span name, its hot function).
const ROOTS: [(&str, &str); 2] = [
    ("checkout", "hot_checkout_pricing"),
    ("search", "hot_search_ranking"),
];

// ---------------------------------------------------------------- the app

/// The checkout span's CPU: multiply-add "pricing" over a cart.
#[inline(never)]
fn hot_checkout_pricing(nanos: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut cart = [3u64, 5, 7, 11, 13, 17, 19, 23];
    let mut total = 0u64;
    while thread_cpu_nanos() < end {
        for _ in 0..2000 {
            for price in cart.iter_mut() {
                *price = black_box(price.wrapping_mul(0x2545_f491_4f6c_dd1d).wrapping_add(97));
                total = total.wrapping_add(*price >> 7);
            }
        }
    }
    total
}

/// The search span's CPU: xorshift scores and a running best.
#[inline(never)]
fn hot_search_ranking(nanos: u64) -> u64 {
    let end = thread_cpu_nanos() + nanos;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut best = 0u64;
    while thread_cpu_nanos() < end {
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let score = black_box(state.rotate_left(11) ^ 0x5bd1_e995);
            if score > best {
                best = score;
            }
        }
    }
    best
}

/// The app, run as a child process by `traces_to_profiles` (which sets the
/// environment). Run directly, without that environment, it does nothing.
#[test]
#[ignore = "the app half of traces_to_profiles; run by it in a child process"]
fn app_child() {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use tracing_subscriber::prelude::*;

    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let endpoint = std::env::var(OTLP_ENV).expect("OTLP endpoint");
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .expect("OTLP exporter");
    // The resource reads OTEL_SERVICE_NAME, like the profiler does.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_resource(opentelemetry_sdk::Resource::builder().build())
        .with_simple_exporter(exporter)
        .build();
    let (profiling, guard) = tracing_pyroscope::from_env().expect("profiling from env");
    assert!(guard.is_active(), "from_env() left profiling off");
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("e2e-app")))
        .with(profiling);
    let default = tracing::subscriber::set_default(subscriber);

    let nanos = SPAN_CPU.as_nanos() as u64;
    for (name, _) in ROOTS {
        let cpu = thread_cpu_nanos();
        let result = if name == "checkout" {
            let root = tracing::info_span!("checkout", cart.items = 8);
            let _root = root.enter();
            // A child span: with the default `root` scope its samples carry
            // the root's span id, and it gets no `pyroscope.profile.id`.
            let child = tracing::info_span!("price_items");
            let _child = child.enter();
            hot_checkout_pricing(nanos)
        } else {
            let root = tracing::info_span!("search", query.terms = 3);
            let _root = root.enter();
            hot_search_ranking(nanos)
        };
        black_box(result);
        println!(
            "E2E-APP cpu span={name} cpu_ns={}",
            thread_cpu_nanos() - cpu
        );
    }

    provider.shutdown().expect("flush spans");
    drop(default);
    println!("E2E-APP stats before shutdown: {:?}", guard.stats());
    let stop = Instant::now();
    drop(guard);
    println!("E2E-APP profiler shutdown took {:?}", stop.elapsed());
}

// ------------------------------------------------------ the OTLP receiver

/// One span as received over OTLP.
#[derive(Clone, Debug)]
struct OtlpSpan {
    resource: BTreeMap<String, String>,
    name: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
    start_unix_nanos: u64,
    end_unix_nanos: u64,
}

#[derive(Default)]
struct OtlpStore {
    requests: usize,
    spans: Vec<OtlpSpan>,
}

type OtlpShared = Arc<Mutex<OtlpStore>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

async fn receive_traces(
    State(store): State<OtlpShared>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype != "application/x-protobuf" {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("{ctype:?}")).into_response();
    }
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let raw = if gzip {
        match common::pprof::maybe_gunzip(&body) {
            Ok(raw) => raw,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    } else {
        body.to_vec()
    };
    let request = match ExportTraceServiceRequest::decode(&raw[..]) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
    s.requests += 1;
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for scope in &resource_spans.scope_spans {
            for span in &scope.spans {
                s.spans.push(OtlpSpan {
                    resource: resource.clone(),
                    name: span.name.clone(),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                });
            }
        }
    }
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

/// A loopback OTLP/HTTP receiver on its own runtime thread.
struct OtlpReceiver {
    addr: SocketAddr,
    store: OtlpShared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OtlpReceiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let store = OtlpShared::default();
        let app = Router::new()
            .route("/v1/traces", post(receive_traces))
            .with_state(store.clone());
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .expect("spawn");
        OtlpReceiver {
            addr,
            store,
            stop: Some(stop),
        }
    }

    fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    fn spans(&self) -> Vec<OtlpSpan> {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spans
            .clone()
    }

    fn requests(&self) -> usize {
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------- the test

/// Runs the app child with the environment a user would set; returns its
/// stdout.
fn run_app(double: &PyroscopeDouble, otlp: &OtlpReceiver) -> String {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        "e2e_traces_to_profiles::app_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    // Only this test's settings: nothing inherited from the caller.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PYROSCOPE_") || key.starts_with("OTEL_") {
            cmd.env_remove(&*key);
        }
    }
    cmd.env(CHILD_ENV, "1")
        .env(OTLP_ENV, otlp.traces_url())
        .env("OTEL_SERVICE_NAME", SERVICE)
        .env("PYROSCOPE_SERVER_ADDRESS", double.url())
        .env("PYROSCOPE_UPLOAD_INTERVAL", "1s")
        .env("PYROSCOPE_SAMPLE_RATE", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the app");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the app") {
            break status;
        }
        if started.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the app did not finish within {CHILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    println!(
        "app exited {status} after {:.2?}; its output:\n{out}{err}",
        started.elapsed()
    );
    assert!(status.success(), "the app failed");
    assert!(
        out.contains("1 passed"),
        "the child ran no app (filter did not select app_child?)"
    );
    out
}

/// CPU time the app measured per span, from its `E2E-APP cpu` lines.
fn app_cpu(out: &str) -> BTreeMap<String, u64> {
    out.lines()
        // The harness may print `test app_child ... ` on the same line.
        .filter_map(|l| l.split_once("E2E-APP cpu span=").map(|(_, rest)| rest))
        .filter_map(|l| {
            let (name, rest) = l.split_once(' ')?;
            let nanos = rest.strip_prefix("cpu_ns=")?.trim().parse().ok()?;
            Some((name.to_string(), nanos))
        })
        .collect()
}

/// Value of the flame graph under stacks that contain `function`.
fn value_in(fg: &FlameGraph, function: &str) -> i64 {
    fg.stacks()
        .iter()
        .filter(|(stack, _)| stack.iter().any(|f| f.contains(function)))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn traces_to_profiles() {
    isolated!();
    let double = PyroscopeDouble::start();
    let otlp = OtlpReceiver::start();
    let out = run_app(&double, &otlp);
    let cpu = app_cpu(&out);
    assert_eq!(cpu.len(), ROOTS.len(), "app CPU lines: {cpu:?}");

    // The app flushed both before exiting; allow for in-flight requests.
    let names_received = || {
        let spans = otlp.spans();
        ROOTS
            .iter()
            .all(|(name, _)| spans.iter().any(|s| s.name == *name))
    };
    assert!(
        wait_until(Duration::from_secs(5), names_received),
        "spans received: {:?}",
        otlp.spans()
    );
    let spans = otlp.spans();
    println!(
        "OTLP receiver: {} requests, {} spans",
        otlp.requests(),
        spans.len()
    );

    // Child spans get no profile id with the default `root` scope.
    let child = spans
        .iter()
        .find(|s| s.name == "price_items")
        .expect("child span price_items received");
    assert!(
        !child.attributes.contains_key(PROFILE_ID),
        "non-root span carries {PROFILE_ID}: {child:?}"
    );

    // Every profile the double accepted is valid for Google's pprof.
    let received = double.received();
    assert!(!received.is_empty(), "the double received no upload");
    assert!(
        received.iter().all(|r| r.status == 200),
        "uploads not accepted: {received:?}"
    );
    let profiles = double.profiles();
    let dir =
        std::env::temp_dir().join(format!("tracing-pyroscope-e2e-ttp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut pprof_counts: BTreeMap<String, u64> = BTreeMap::new();
    for (i, profile) in profiles.iter().enumerate() {
        assert_eq!(
            profile.series.get("service_name").map(String::as_str),
            Some(SERVICE),
            "series labels: {:?}",
            profile.series
        );
        let file = dir.join(format!("profile-{i}.pb.gz"));
        std::fs::write(&file, &profile.raw).expect("write profile");
        for trace in pprof_tool::traces(&file) {
            if let Some(id) = trace.labels.get("span_id") {
                *pprof_counts.entry(id.clone()).or_default() += trace.count;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "double: {} uploads, {} profiles, all read by pprof; samples per span_id (pprof): {pprof_counts:?}",
        received.len(),
        profiles.len()
    );
    let samples = double.samples();

    for (i, (name, hot)) in ROOTS.iter().enumerate() {
        let other_hot = ROOTS[1 - i].1;
        let span = spans
            .iter()
            .find(|s| s.name == *name)
            .expect("root span received");
        assert!(
            span.parent_span_id.is_empty(),
            "{name} is not a root: {span:?}"
        );

        // What Grafana reads from the span.
        let profile_id = span
            .attributes
            .get(PROFILE_ID)
            .unwrap_or_else(|| panic!("{name} has no {PROFILE_ID}: {span:?}"));
        assert_eq!(
            profile_id, &span.span_id,
            "{name}: {PROFILE_ID} is not the span id"
        );
        let service_name = span
            .resource
            .get("service.name")
            .unwrap_or_else(|| panic!("{name}: resource has no service.name: {span:?}"));
        assert_eq!(service_name, SERVICE);
        let label_selector = format!("{{service_name=\"{service_name}\"}}");
        let start_ms = (span.start_unix_nanos / 1_000_000) as i64 - 60_000;
        let end_ms = (span.end_unix_nanos / 1_000_000) as i64 + 60_000;
        let span_ids = vec![profile_id.clone()];

        let fg = double
            .select_merge_span_profile(&label_selector, &span_ids, start_ms, end_ms)
            .unwrap_or_else(|e| panic!("{name}: SelectMergeSpanProfile failed: {e}"));
        let in_hot = value_in(&fg, hot);
        let in_other = value_in(&fg, other_hot);
        let span_samples: i64 = samples
            .iter()
            .filter(|s| format!("{:016x}", s.span_id) == *profile_id)
            .filter_map(|s| s.values.get("samples/count"))
            .sum();
        let app_cpu = cpu[*name];
        println!(
            "span {name} id={profile_id} {PROFILE_TYPE} {label_selector}: \
             {span_samples} samples, flame graph total {:.3} s (app measured {:.3} s CPU), \
             {hot} {:.1}%, {other_hot} {:.1}%, {} names, {} levels",
            fg.total as f64 / 1e9,
            app_cpu as f64 / 1e9,
            100.0 * in_hot as f64 / fg.total.max(1) as f64,
            100.0 * in_other as f64 / fg.total.max(1) as f64,
            fg.names.len(),
            fg.levels.len(),
        );

        assert!(fg.has_function(hot), "{name}: {hot} missing: {fg:?}");
        assert!(
            !fg.has_function(other_hot),
            "{name}: flame graph has the other span's {other_hot}: {:?}",
            fg.names
        );
        assert!(
            in_hot as f64 >= 0.7 * fg.total as f64,
            "{name}: {hot} is only {in_hot} of {} ns",
            fg.total
        );
        assert!(
            fg.total as f64 >= 0.6 * app_cpu as f64 && fg.total as f64 <= 1.5 * app_cpu as f64,
            "{name}: flame graph total {} ns, but the app measured {app_cpu} ns of CPU",
            fg.total
        );
        assert_eq!(
            pprof_counts.get(profile_id).copied().unwrap_or(0) as i64,
            span_samples,
            "{name}: pprof and the double disagree on the span's samples"
        );

        // The label selector matters: another service has nothing.
        let other_service = double
            .select_merge_span_profile(
                "{service_name=\"another-service\"}",
                &span_ids,
                start_ms,
                end_ms,
            )
            .expect("query another service");
        assert_eq!(other_service.total, 0, "{name}: selector ignored");
    }
}
