//! A Pyroscope test double: a loopback HTTP server that accepts what the
//! real server accepts and rejects, with the server's status and message,
//! what it rejects, following `docs/PYROSCOPE-PROTOCOL.md` (facts read
//! from the server's source). The rules live in [`rules`], each citing
//! that file; the double is stricter than the server only where the server
//! silently loses data (dangling ids) or stores a profile Grafana cannot
//! find (profile type), and says so in its answer.
//!
//! Endpoints:
//! - `POST /push.v1.PusherService/Push`: `Content-Type: application/proto`
//!   (else 415), body a protobuf `PushRequest`, gzip when
//!   `Content-Encoding: gzip` says so (a raw body labelled gzip is 400);
//!   every `raw_profile` is a pprof, gzipped or not.
//! - `POST /ingest?name=APP{k=v}&from=&until=&format=pprof`: a raw pprof body.
//! - `POST /querier.v1.QuerierService/SelectMergeSpanProfile`: Connect JSON in,
//!   a flame graph out, over what was stored.
//!
//! What it checks, in the server's order, all 400 with a JSON
//! `{"code":"invalid_argument","message":…}` body like the server's:
//! - profiles: decodable; a sample type; `time_nanos` inside the ingestion
//!   window (1 h back, 10 min ahead); ≤ 4 MiB uncompressed; ≤ 16000
//!   samples; ≤ 100 labels per sample; ids not 0; one value per sample
//!   type; string indexes in range; no dangling or duplicate location,
//!   function or mapping ids; the type Grafana queries
//!   (the one for its `__name__`: [`GRAFANA_PROFILE_TYPE`] for `process_cpu`,
//!   `wall:wall:nanoseconds:wall:nanoseconds`, `memory:alloc_space:bytes:space:bytes`) among its profile types;
//! - series, after the split by sample labels (`profile_id` renamed
//!   `span_id`; `span_id` taken out; `trace_id` taken out only with
//!   [`ServerVersion::V2_1`]; a series label wins over a sample label of
//!   the same name): ≤ 30 names, valid `__name__`, `service_name` (added
//!   as `unspecified` when missing; `unknown_service` with
//!   [`ServerVersion::V2_1`]), names ≤ 1024 and values ≤ 2048
//!   bytes, names `[a-zA-Z_.][a-zA-Z0-9_.]*` without a `__` prefix other
//!   than `__name__`, then `.`→`_` and no two equal names.
//!
//! Stacks deeper than 1000 frames are cut at the leaf end, as the server
//! does. Stored series labels are the sanitized ones. [`PyroscopeDouble::series_count`]
//! counts active series the way the server's per-tenant limit does: one
//! per label set and profile type.
//!
//! Faults ([`Fault`]) are set at run time for the Push and ingest endpoints;
//! the query endpoint always answers so tests can look at what was stored.

pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::pprof::{maybe_gunzip, Profile};
use rules::{parse_span_id, sanitize_label_name, MAX_STACK_DEPTH};
#[allow(unused_imports)] // the tests in tests/it use it, the crate's own do not
pub use rules::{ServerVersion, GRAFANA_PROFILE_TYPE};

// ---- Push protobuf (push/v1/push.proto, types/v1/types.proto) ----

#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<RawProfileSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RawProfileSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<RawSample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RawSample {
    #[prost(bytes = "vec", tag = "1")]
    pub raw_profile: Vec<u8>,
    #[prost(string, tag = "2")]
    pub id: String,
}

// ---- What the double records ----

/// A fault for the upload endpoints (Push and ingest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Port closed: new connections are refused, open ones reset.
    Down,
    /// Connections are accepted and closed at once.
    Refuse,
    /// Every answer comes after this delay.
    Delay(Duration),
    /// Every request gets this status with a JSON error body.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    TooManyRequests {
        retry_after_secs: u64,
    },
}

/// One request to an upload endpoint, whatever the answer.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
    pub status: u16,
    pub body_len: usize,
    /// The error message the double answered with ("" on success and for
    /// injected faults).
    pub message: String,
    /// The `RawSample.ID`s of a Push body that decodes (whatever the
    /// answer, injected faults included): the uploader gives each profile
    /// one id and keeps it across retries, so ids tell the attempts of
    /// one profile apart from other profiles.
    pub sample_ids: Vec<String>,
}

/// One sample as stored: the server's view after label processing.
#[derive(Clone, Debug)]
pub struct StoredSample {
    /// Series labels, including `__name__`, `service_name` and sample
    /// labels such as `span_name`.
    pub series: BTreeMap<String, String>,
    /// 0 = no span.
    pub span_id: u64,
    pub trace_id: Option<String>,
    pub time_nanos: i64,
    /// Function names, root first.
    pub stack: Vec<String>,
    /// `type/unit` → value, e.g. `cpu/nanoseconds`.
    pub values: BTreeMap<String, i64>,
}

/// An accepted profile, as received (for pprof validity checks).
#[derive(Clone, Debug)]
pub struct StoredProfile {
    pub series: BTreeMap<String, String>,
    /// The pprof as it was in the request (gzipped or not).
    pub raw: Vec<u8>,
}

#[derive(Default)]
struct Store {
    fault: Option<Fault>,
    /// Fixed "now" for the time checks (`None`: the real clock).
    now: Option<SystemTime>,
    version: ServerVersion,
    received: Vec<Received>,
    samples: Vec<StoredSample>,
    profiles: Vec<StoredProfile>,
    /// Active series as the server's limiter counts them: (sanitized label
    /// set after the split, profile type id).
    series: BTreeSet<(Labels, String)>,
}

type Shared = Arc<Mutex<Store>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    Up,
    Down,
    Refuse,
}

/// The running double. Dropping it stops the server.
pub struct PyroscopeDouble {
    addr: SocketAddr,
    store: Shared,
    net: watch::Sender<Net>,
    listening: Arc<std::sync::atomic::AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl PyroscopeDouble {
    /// Starts on `127.0.0.1:0` with its own runtime thread.
    pub fn start() -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let store: Shared = Arc::default();
        let (net, net_rx) = watch::channel(Net::Up);
        let listening = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let app = Router::new()
            .route("/push.v1.PusherService/Push", post(push))
            .route("/ingest", post(ingest))
            .route(
                "/querier.v1.QuerierService/SelectMergeSpanProfile",
                post(select_merge_span_profile),
            )
            .with_state(store.clone());
        let flag = listening.clone();
        std::thread::Builder::new()
            .name("pyroscope-double".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = FaultListener {
                        addr,
                        inner: Some(TcpListener::from_std(std_listener).expect("listener")),
                        net: net_rx,
                        listening: flag,
                    };
                    tokio::select! {
                        _ = axum::serve(listener, app) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime cancels every connection task.
            })
            .expect("spawn");
        PyroscopeDouble {
            addr,
            store,
            net,
            listening,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the fault for upload endpoints; returns once it is in effect
    /// (for `Down`: the port is closed; for the others: it is listening).
    pub fn set_fault(&self, fault: Fault) {
        self.lock().fault = Some(fault);
        let net = match fault {
            Fault::Down => Net::Down,
            Fault::Refuse => Net::Refuse,
            _ => Net::Up,
        };
        self.net.send_replace(net);
        let want_listening = net != Net::Down;
        let end = Instant::now() + Duration::from_secs(5);
        while self.listening.load(std::sync::atomic::Ordering::SeqCst) != want_listening {
            assert!(Instant::now() < end, "the double did not apply {fault:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn clear_fault(&self) {
        self.set_fault(Fault::None);
    }

    /// Pins the clock used for the time-range checks.
    pub fn set_now(&self, now: SystemTime) {
        self.lock().now = Some(now);
    }

    /// Which server's sample-label rules apply (default: v1.13.4, where
    /// `trace_id` is a series label).
    pub fn set_server_version(&self, version: ServerVersion) {
        self.lock().version = version;
    }

    /// Distinct series created so far, counted as the server's per-tenant
    /// series limit counts them (PROTOCOL "Series limit", 5000 by default):
    /// one per label set after the split by sample labels and per profile
    /// type, so a profile with two sample types makes two series per label
    /// set (pkg/phlaredb/labels `CreateProfileLabels`).
    pub fn series_count(&self) -> usize {
        self.lock().series.len()
    }

    /// Distinct label sets after the split (sanitized names), whatever the
    /// profile type.
    pub fn label_sets(&self) -> Vec<BTreeMap<String, String>> {
        let store = self.lock();
        let sets: BTreeSet<&Labels> = store.series.iter().map(|(l, _)| l).collect();
        sets.into_iter()
            .map(|l| l.iter().cloned().collect())
            .collect()
    }

    /// Profile type ids of the series created so far.
    pub fn profile_types(&self) -> BTreeSet<String> {
        self.lock().series.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Requests to upload endpoints so far (all answers).
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Upload requests answered 200.
    pub fn accepted(&self) -> usize {
        self.lock()
            .received
            .iter()
            .filter(|r| r.status == 200)
            .count()
    }

    pub fn samples(&self) -> Vec<StoredSample> {
        self.lock().samples.clone()
    }

    pub fn profiles(&self) -> Vec<StoredProfile> {
        self.lock().profiles.clone()
    }

    /// Calls `SelectMergeSpanProfile` over HTTP (JSON). Do not call from
    /// inside an async runtime (it uses reqwest's blocking client).
    pub fn select_merge_span_profile(
        &self,
        label_selector: &str,
        span_ids: &[String],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<FlameGraph, String> {
        let body = serde_json::json!({
            "profile_typeID": "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
            "label_selector": label_selector,
            "span_selector": span_ids,
            "start": start_ms.to_string(),
            "end": end_ms,
            "max_nodes": 1024,
        });
        let resp = reqwest::blocking::Client::new()
            .post(format!(
                "{}/querier.v1.QuerierService/SelectMergeSpanProfile",
                self.url()
            ))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        FlameGraph::from_json(&v["flamegraph"])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PyroscopeDouble {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---- Network faults: a listener that can close its port, and streams
// that reset when the double is down or refusing. ----

struct FaultListener {
    addr: SocketAddr,
    inner: Option<TcpListener>,
    net: watch::Receiver<Net>,
    listening: Arc<std::sync::atomic::AtomicBool>,
}

impl axum::serve::Listener for FaultListener {
    type Io = FaultStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (FaultStream, SocketAddr) {
        loop {
            let net = *self.net.borrow_and_update();
            if net == Net::Down {
                self.inner = None;
                self.listening
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                let _ = self.net.changed().await;
                continue;
            }
            if self.inner.is_none() {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => self.inner = Some(l),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
            self.listening
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let Some(inner) = &self.inner else { continue };
            tokio::select! {
                accepted = inner.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    if *self.net.borrow() == Net::Refuse {
                        drop(stream);
                        continue;
                    }
                    return (FaultStream { inner: stream, net: self.net.clone() }, peer);
                }
                _ = self.net.changed() => continue,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

struct FaultStream {
    inner: TcpStream,
    net: watch::Receiver<Net>,
}

impl FaultStream {
    fn cut(&self) -> bool {
        *self.net.borrow() != Net::Up
    }
}

fn reset() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "double is down")
}

impl AsyncRead for FaultStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.cut() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.cut() {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---- Answers ----

/// A Connect-style error: status and JSON `{"code","message"}`; a 415 has
/// no body and an `Accept-Post` header, as connect-go sends it.
#[derive(Debug)]
pub struct ApiError(pub u16, pub String);

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        ApiError(400, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0 == 415 {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                [("accept-post", "application/json, application/proto")],
            )
                .into_response();
        }
        let code = match self.0 {
            400 => "invalid_argument",
            401 => "unauthenticated",
            413 => "resource_exhausted",
            422 => "invalid_argument",
            429 => "resource_exhausted",
            501 => "unimplemented",
            503 => "unavailable",
            _ => "internal",
        };
        let status = StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "code": code, "message": self.1 }).to_string();
        (status, [("content-type", "application/json")], body).into_response()
    }
}

/// Applies the configured fault. `Some(response)` ends the request.
async fn apply_fault(store: &Shared) -> Option<Response> {
    let fault = store.lock().unwrap_or_else(|p| p.into_inner()).fault;
    match fault {
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        Some(Fault::Status(code)) => {
            Some(ApiError(code, format!("injected fault: status {code}")).into_response())
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let mut r = ApiError(429, "injected fault: too many requests".into()).into_response();
            if let Ok(v) = retry_after_secs.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            Some(r)
        }
        _ => None,
    }
}

/// What an upload request came to: the response, and the error message
/// for [`Received::message`].
fn answer(result: Result<(), ApiError>) -> (Response, String) {
    match result {
        Ok(()) => (StatusCode::OK.into_response(), String::new()),
        Err(e) => {
            let message = e.1.clone();
            (e.into_response(), message)
        }
    }
}

/// The sample ids of a Push body, if it decodes (gzip or not).
fn push_sample_ids(body: &[u8]) -> Vec<String> {
    maybe_gunzip(body)
        .ok()
        .and_then(|raw| PushRequest::decode(&raw[..]).ok())
        .map(|request| {
            request
                .series
                .iter()
                .flat_map(|s| s.samples.iter().map(|x| x.id.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn record(store: &Shared, path: &str, headers: &HeaderMap, body: &[u8], answer: (u16, String)) {
    let sample_ids = if path == "/push.v1.PusherService/Push" {
        push_sample_ids(body)
    } else {
        Vec::new()
    };
    let body_len = body.len();
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    store
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .received
        .push(Received {
            path: path.to_string(),
            headers,
            status: answer.0,
            body_len,
            message: answer.1,
            sample_ids,
        });
}

async fn push(State(store): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (response, message) = match apply_fault(&store).await {
        Some(r) => (r, String::new()),
        None => answer(accept_push(&store, &headers, &body)),
    };
    let status = response.status().as_u16();
    record(
        &store,
        "/push.v1.PusherService/Push",
        &headers,
        &body,
        (status, message),
    );
    response
}

fn accept_push(store: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    rules::check_content_type(headers)?;
    let raw = rules::decode_body(headers, body)?;
    let request = PushRequest::decode(&raw[..])
        .map_err(|e| ApiError::bad(format!("unmarshal into *v1.PushRequest: {e}")))?;
    let (now, version) = clock_and_version(store);
    let mut batch = Batch::new(version);
    for series in &request.series {
        let labels: Vec<(String, String)> = series
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect();
        for sample in &series.samples {
            batch.add(&labels, &sample.raw_profile, None, now)?;
        }
    }
    // distributor.go: a request without profiles is invalid.
    if batch.profiles.is_empty() {
        return Err(ApiError::bad("no profiles received"));
    }
    batch.commit(store);
    Ok(())
}

fn clock_and_version(store: &Shared) -> (SystemTime, ServerVersion) {
    let s = store.lock().unwrap_or_else(|p| p.into_inner());
    (s.now.unwrap_or_else(SystemTime::now), s.version)
}

/// Samples, profiles and series of one request, stored only if all of it
/// is valid (the server rejects a whole push on the first error).
struct Batch {
    version: ServerVersion,
    samples: Vec<StoredSample>,
    profiles: Vec<StoredProfile>,
    series: BTreeSet<(Labels, String)>,
}

/// Label pairs in order.
type Labels = Vec<(String, String)>;

impl Batch {
    fn new(version: ServerVersion) -> Self {
        Batch {
            version,
            samples: Vec::new(),
            profiles: Vec::new(),
            series: BTreeSet::new(),
        }
    }

    /// Validates and splits one pprof. `time_override`: ingest's `from`.
    fn add(
        &mut self,
        series_labels: &[(String, String)],
        raw_profile: &[u8],
        time_override: Option<i64>,
        now: SystemTime,
    ) -> Result<(), ApiError> {
        let mut base = series_labels.to_vec();
        // PROTOCOL "Upload: Push API": a missing service_name is added,
        // `unspecified` on v1.13.4, `unknown_service` later.
        if !base.iter().any(|(n, _)| n == "service_name") {
            let fallback = match self.version {
                ServerVersion::V1_13 => "unspecified",
                ServerVersion::V2_1 => "unknown_service",
            };
            base.push(("service_name".into(), fallback.into()));
        }
        // Every split series contains these, so their errors come first.
        let base_clean = rules::validate_labels(base.clone())?;

        // PROTOCOL "Upload: Push API": gzip is detected automatically.
        let raw = maybe_gunzip(raw_profile)
            .map_err(|e| ApiError::bad(format!("bad gzip profile: {e}")))?;
        let mut profile = Profile::decode(&raw[..])
            .map_err(|e| ApiError::bad(format!("failed to parse profile: {e}")))?;
        let time_nanos = time_override.unwrap_or(profile.time_nanos);
        rules::validate_profile(&profile, raw.len(), &base_clean, time_nanos, now)?;
        rules::check_references(&profile)?;
        let name = base_clean
            .iter()
            .find(|(n, _)| n == "__name__")
            .map_or("", |(_, v)| v.as_str());
        let required = rules::grafana_type_for(name).ok_or_else(|| {
            ApiError::bad(format!(
                "unexpected __name__ {name:?}: the types Grafana queries are {GRAFANA_PROFILE_TYPE:?}, {:?} and {:?}",
                rules::GRAFANA_WALL_TYPE,
                rules::GRAFANA_ALLOC_TYPE
            ))
        })?;
        rules::check_profile_type(name, &profile, required)?;
        let types = rules::profile_type_ids(name, &profile);

        // PROTOCOL "Deep stacks": the leaf end goes (location_id[0] is
        // the leaf).
        for sample in &mut profile.sample {
            let n = sample.location_id.len();
            if n > MAX_STACK_DEPTH {
                sample.location_id.drain(..n - MAX_STACK_DEPTH);
            }
        }

        let value_types = profile.sample_types();
        // Raw label set → validated, sanitized one.
        let mut checked: BTreeMap<Labels, Labels> = BTreeMap::new();
        for sample in &profile.sample {
            let split = rules::split_sample(self.version, &base, profile.labels(sample));
            let labels = match checked.get(&split.labels) {
                Some(clean) => clean.clone(),
                None => {
                    let clean = rules::validate_labels(split.labels.clone())?;
                    checked.insert(split.labels, clean.clone());
                    clean
                }
            };
            for t in &types {
                self.series.insert((labels.clone(), t.clone()));
            }
            let values = value_types
                .iter()
                .cloned()
                .zip(sample.value.iter().copied())
                .collect();
            self.samples.push(StoredSample {
                series: labels.into_iter().collect(),
                span_id: split.span_id,
                trace_id: split.trace_id,
                time_nanos,
                stack: profile.stack(sample),
                values,
            });
        }
        self.profiles.push(StoredProfile {
            series: base_clean.into_iter().collect(),
            raw: raw_profile.to_vec(),
        });
        Ok(())
    }

    fn commit(self, store: &Shared) {
        let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
        s.samples.extend(self.samples);
        s.profiles.extend(self.profiles);
        s.series.extend(self.series);
    }
}

// ---- /ingest ----

async fn ingest(
    State(store): State<Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (response, message) = match apply_fault(&store).await {
        Some(r) => (r, String::new()),
        None => answer(accept_ingest(
            &store,
            query.as_deref().unwrap_or(""),
            &headers,
            &body,
        )),
    };
    let status = response.status().as_u16();
    record(&store, "/ingest", &headers, &body, (status, message));
    response
}

fn accept_ingest(
    store: &Shared,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let params: BTreeMap<String, String> = form_urlencoded(query);
    let name = params
        .get("name")
        .ok_or_else(|| ApiError::bad("missing name"))?;
    let (app, mut labels) = parse_app_name(name)?;
    let from = params.get("from").map(|v| ingest_time(v)).transpose()?;
    let _until = params.get("until").map(|v| ingest_time(v)).transpose()?;
    let pprof = match params.get("format").map(String::as_str) {
        Some("pprof") => body.to_vec(),
        Some(other) => {
            return Err(ApiError::bad(format!(
                "format {other:?} is not supported by the double"
            )))
        }
        None => multipart_profile(headers, body)?,
    };
    labels.push(("service_name".into(), app));
    labels.push(("__name__".into(), "process_cpu".into()));
    let (now, version) = clock_and_version(store);
    let mut batch = Batch::new(version);
    // A profile with its own time_nanos keeps it; `from` is the fallback.
    let profile_time = Profile::parse(&pprof)
        .ok()
        .map(|p| p.time_nanos)
        .filter(|t| *t != 0);
    batch.add(&labels, &pprof, profile_time.or(from), now)?;
    batch.commit(store);
    Ok(())
}

/// `name=APP{k=v,k2=v2}`: the app name may also use `-` and `/`.
fn parse_app_name(name: &str) -> Result<(String, Vec<(String, String)>), ApiError> {
    let (app, rest) = match name.find('{') {
        Some(i) => (&name[..i], &name[i..]),
        None => (name, ""),
    };
    let app_ok = !app.is_empty()
        && app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
    if !app_ok {
        return Err(ApiError::bad(format!("invalid app name {app:?}")));
    }
    let mut labels = Vec::new();
    if !rest.is_empty() {
        let inner = rest
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .ok_or_else(|| ApiError::bad(format!("invalid labels in name {name:?}")))?;
        for pair in inner.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ApiError::bad(format!("invalid label {pair:?}")))?;
            // PROTOCOL "Upload: /ingest": `[a-zA-Z0-9_.]`, `__name__` reserved.
            if k == "__name__" || sanitize_label_name(k).is_none() || k.starts_with("__") {
                return Err(ApiError::bad(format!("invalid label name {k:?}")));
            }
            labels.push((k.to_string(), v.to_string()));
        }
    }
    Ok((app.to_string(), labels))
}

/// Digit count decides the unit: 13 ms, 16 µs, 19 ns, anything else s.
pub fn parse_ingest_time(value: &str) -> Option<i64> {
    let n: i64 = value.parse().ok()?;
    let digits = value.trim_start_matches('-').len();
    Some(match digits {
        13 => n * 1_000_000,
        16 => n * 1_000,
        19 => n,
        _ => n.checked_mul(1_000_000_000)?,
    })
}

fn ingest_time(value: &str) -> Result<i64, ApiError> {
    parse_ingest_time(value).ok_or_else(|| ApiError::bad(format!("invalid time {value:?}")))
}

/// The `profile` part of a multipart form; `prev_profile` is rejected (422).
fn multipart_profile(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = ctype
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .ok_or_else(|| ApiError::bad("no format and not multipart"))?;
    let delimiter = format!("--{boundary}");
    let mut profile = None;
    for part in split_bytes(body, delimiter.as_bytes()).into_iter().skip(1) {
        if part.starts_with(b"--") {
            break;
        }
        let Some(head_end) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..head_end]);
        let mut content = &part[head_end + 4..];
        content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let name = head
            .split(';')
            .find_map(|p| p.trim().strip_prefix("name="))
            .map(|n| n.trim_matches('"').to_string());
        match name.as_deref() {
            Some("prev_profile") => {
                return Err(ApiError(422, "prev_profile is not supported".into()))
            }
            Some("profile") => profile = Some(content.to_vec()),
            _ => {}
        }
    }
    profile.ok_or_else(|| ApiError::bad("multipart form has no profile field"))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split_bytes<'a>(mut hay: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    while let Some(i) = find(hay, delimiter) {
        parts.push(&hay[..i]);
        hay = &hay[i + delimiter.len()..];
        hay = hay.strip_prefix(b"\r\n").unwrap_or(hay);
    }
    parts.push(hay);
    parts
}

fn form_urlencoded(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                Some(Ok(v)) => {
                    out.push(v);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---- SelectMergeSpanProfile ----

async fn select_merge_span_profile(State(store): State<Shared>, body: Bytes) -> Response {
    match query(&store, &body) {
        Ok(fg) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            serde_json::json!({ "flamegraph": fg.to_json() }).to_string(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Connect JSON accepts the proto field name or its lowerCamelCase form,
/// and int64 as a number or a string.
fn field<'a>(v: &'a serde_json::Value, proto: &str, camel: &str) -> Option<&'a serde_json::Value> {
    v.get(proto).or_else(|| v.get(camel))
}

fn int64(v: Option<&serde_json::Value>) -> Option<i64> {
    match v? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn query(store: &Shared, body: &[u8]) -> Result<FlameGraph, ApiError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("bad JSON: {e}")))?;
    let profile_type = field(&v, "profile_typeID", "profileTypeID")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::bad("missing profile_typeID"))?;
    let parts: Vec<&str> = profile_type.split(':').collect();
    let [name, sample_type, sample_unit, _, _] = parts[..] else {
        return Err(ApiError::bad(format!(
            "invalid profile_typeID {profile_type:?}"
        )));
    };
    let value_key = format!("{sample_type}/{sample_unit}");
    let selector = field(&v, "label_selector", "labelSelector")
        .and_then(|v| v.as_str())
        .unwrap_or("{}");
    let matchers = parse_selector(selector)?;
    let spans: Vec<u64> = field(&v, "span_selector", "spanSelector")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str())
                .map(parse_span_id)
                .filter(|&id| id != 0)
                .collect()
        })
        .unwrap_or_default();
    let start = int64(v.get("start")).ok_or_else(|| ApiError::bad("missing start"))?;
    let end = int64(v.get("end")).ok_or_else(|| ApiError::bad("missing end"))?;
    let (start_ns, end_ns) = (start * 1_000_000, end * 1_000_000);

    let s = store.lock().unwrap_or_else(|p| p.into_inner());
    let mut tree = Node::default();
    for sample in &s.samples {
        let selected = sample.series.get("__name__").map(String::as_str) == Some(name)
            && matchers.iter().all(|m| m.matches(&sample.series))
            && spans.contains(&sample.span_id)
            && (start_ns..=end_ns).contains(&sample.time_nanos);
        if !selected {
            continue;
        }
        if let Some(&value) = sample.values.get(&value_key) {
            tree.insert(&sample.stack, value);
        }
    }
    Ok(FlameGraph::from_tree(&tree))
}

struct Matcher {
    name: String,
    value: String,
    equal: bool,
}

impl Matcher {
    fn matches(&self, series: &BTreeMap<String, String>) -> bool {
        let actual = series.get(&self.name).map_or("", String::as_str);
        (actual == self.value) == self.equal
    }
}

/// `{a="x", b!="y"}`: equality and inequality matchers.
fn parse_selector(selector: &str) -> Result<Vec<Matcher>, ApiError> {
    let bad = || ApiError::bad(format!("invalid label_selector {selector:?}"));
    let inner = selector
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(bad)?;
    let mut matchers = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let op_at = rest.find(['=', '!']).ok_or_else(bad)?;
        let name = rest[..op_at].trim().to_string();
        let (equal, after) = if rest[op_at..].starts_with("!=") {
            (false, &rest[op_at + 2..])
        } else if rest[op_at..].starts_with('=') {
            (true, &rest[op_at + 1..])
        } else {
            return Err(bad());
        };
        let after = after.trim_start().strip_prefix('"').ok_or_else(bad)?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(bad)?;
        matchers.push(Matcher { name, value, equal });
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(matchers)
}

#[derive(Default)]
struct Node {
    total: i64,
    self_value: i64,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn insert(&mut self, stack: &[String], value: i64) {
        self.total += value;
        match stack.split_first() {
            None => self.self_value += value,
            Some((first, rest)) => self
                .children
                .entry(first.clone())
                .or_default()
                .insert(rest, value),
        }
    }
}

/// Pyroscope's flame graph: `levels[i]` holds quadruples
/// `[x_offset, total, self, name_index]`, x offsets delta-encoded against
/// the end of the previous node on the same level; level 0 is `total`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlameGraph {
    pub names: Vec<String>,
    pub levels: Vec<Vec<i64>>,
    pub total: i64,
    pub max_self: i64,
}

impl FlameGraph {
    fn from_tree(root: &Node) -> FlameGraph {
        let mut fg = FlameGraph {
            names: vec!["total".to_string()],
            total: root.total,
            ..Default::default()
        };
        let mut absolute: Vec<Vec<i64>> = Vec::new();
        fn walk(
            fg: &mut FlameGraph,
            levels: &mut Vec<Vec<i64>>,
            node: &Node,
            name: usize,
            level: usize,
            x: i64,
        ) {
            if levels.len() <= level {
                levels.push(Vec::new());
            }
            levels[level].extend([x, node.total, node.self_value, name as i64]);
            fg.max_self = fg.max_self.max(node.self_value);
            let mut child_x = x;
            for (child_name, child) in &node.children {
                let idx = match fg.names.iter().position(|n| n == child_name) {
                    Some(i) if i > 0 => i,
                    _ => {
                        fg.names.push(child_name.clone());
                        fg.names.len() - 1
                    }
                };
                walk(fg, levels, child, idx, level + 1, child_x);
                child_x += child.total;
            }
        }
        if root.total > 0 {
            walk(&mut fg, &mut absolute, root, 0, 0, 0);
        }
        for level in &mut absolute {
            let mut prev_end = 0;
            for q in level.chunks_mut(4) {
                let x = q[0];
                q[0] = x - prev_end;
                prev_end = x + q[1];
            }
        }
        fg.levels = absolute;
        fg
    }

    /// Protobuf JSON: int64 values as strings, `maxSelf` in lowerCamelCase.
    fn to_json(&self) -> serde_json::Value {
        let s = |v: i64| serde_json::Value::String(v.to_string());
        serde_json::json!({
            "names": self.names,
            "levels": self.levels.iter().map(|l| serde_json::json!({
                "values": l.iter().map(|&v| s(v)).collect::<Vec<_>>()
            })).collect::<Vec<_>>(),
            "total": s(self.total),
            "maxSelf": s(self.max_self),
        })
    }

    /// Parses the protobuf-JSON flame graph (numbers or strings).
    pub fn from_json(v: &serde_json::Value) -> Result<FlameGraph, String> {
        let names = v["names"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut levels = Vec::new();
        for level in v["levels"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let values = level["values"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| int64(Some(x)).ok_or("bad value"))
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap_or(Ok(Vec::new()))?;
            levels.push(values);
        }
        Ok(FlameGraph {
            names,
            levels,
            total: int64(v.get("total")).unwrap_or(0),
            max_self: int64(v.get("maxSelf").or(v.get("max_self"))).unwrap_or(0),
        })
    }

    /// Decodes back to `(stack root first, self value)` pairs the way
    /// Grafana does (delta-decode, then find each node's parent by offset).
    pub fn stacks(&self) -> Vec<(Vec<String>, i64)> {
        let mut abs = self.levels.clone();
        for level in &mut abs {
            let mut prev_end = 0;
            for q in level.chunks_mut(4) {
                q[0] += prev_end;
                prev_end = q[0] + q[1];
            }
        }
        let mut out = Vec::new();
        for (depth, level) in abs.iter().enumerate().skip(1) {
            for q in level.chunks(4) {
                if q[2] == 0 {
                    continue;
                }
                let mut stack = vec![self.names[q[3] as usize].clone()];
                let mut x = q[0];
                for parent_level in abs[1..depth].iter().rev() {
                    let parent = parent_level
                        .chunks(4)
                        .rfind(|p| p[0] <= x)
                        .expect("a parent");
                    stack.push(self.names[parent[3] as usize].clone());
                    x = parent[0];
                }
                stack.reverse();
                out.push((stack, q[2]));
            }
        }
        out
    }

    /// Whether any frame's name contains `needle`.
    pub fn has_function(&self, needle: &str) -> bool {
        self.names.iter().skip(1).any(|n| n.contains(needle))
    }
}
