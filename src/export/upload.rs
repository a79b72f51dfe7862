//! The Pyroscope uploader: `POST {server}/push.v1.PusherService/Push`.
//!
//! # Shape
//!
//! [`Uploader::start`] spawns one thread, `pyroscope-upload`, that owns a
//! blocking `reqwest` client and reads profiles from a queue of
//! [`QUEUE_CAPACITY`] entries. [`Uploader::send`] never blocks: when the
//! queue is full the profile is dropped and counted in
//! `Stats::dropped_profiles`. Memory is therefore bounded by
//! `QUEUE_CAPACITY + 1` encoded profiles, whatever the server does.
//!
//! # The request
//!
//! A gzipped protobuf `PushRequest` with one series. Series labels:
//! `__name__=process_cpu`, `service_name`, `process.runtime.name=rust` and
//! the static labels. The sample's `raw_profile` is our gzipped pprof
//! unchanged (the server detects gzip); per-sample labels such as `span_id`
//! live inside it. Headers: `Content-Type: application/proto`,
//! `Content-Encoding: gzip`, `Authorization: Basic …` and `X-Scope-OrgID`
//! when configured.
//!
//! # Failures
//!
//! - Connection errors, timeouts, 429 and 5xx are retried, at most
//!   [`Policy::max_attempts`] attempts per profile, with exponential backoff
//!   and jitter (1 s, 2 s, … capped at 30 s, each between half and all of
//!   that). A 429's `Retry-After: <seconds>` replaces the backoff, capped at
//!   60 s.
//! - Any other 4xx is not retried: the profile is dropped and the status
//!   with the server's message is logged once per distinct status.
//! - Connection failures are logged once per outage.
//! - Every failed attempt counts in `upload_errors`, every abandoned profile
//!   in `dropped_profiles`, every accepted one in `uploads`.
//!
//! The password never appears in a log line: it only goes into the
//! `Authorization` header, which `reqwest` marks as sensitive.
//!
//! # Shutdown
//!
//! [`Uploader::shutdown`] closes the queue and gives the thread until a
//! deadline to flush what is queued. From then on nothing waits: a backoff in
//! progress ends, each profile gets one last attempt whose timeout is cut to
//! the time left, and once an attempt finds the server unreachable the rest
//! is dropped without trying. So shutdown takes milliseconds when the server
//! is down or failing, at most the deadline when it hangs, and a request
//! sent before shutdown began is abandoned at the deadline (the thread is
//! left to finish it alone). What was not accepted is counted as dropped.
//!
//! # Why not the `pyroscope` crate's agent
//!
//! pyroscope 2.1.5's `SessionManager` pushes with a blocking `send` into its
//! queue (a slow server blocks the agent's report thread), never retries
//! (no backoff, no 429 `Retry-After`), uses a fixed 10 s timeout per request
//! with no overall shutdown bound (queued sessions are each tried in turn
//! before the agent's `shutdown` returns), and its URL join can panic on an
//! unusual base URL. Its `Backend` API would also make us run its timer and
//! report threads next to our own collector. The request format is small, so
//! we speak it directly.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message;

use crate::config::Config;
use crate::profile::EncodedProfile;
use crate::profiler::Counters;
use crate::{Error, ErrorKind};

/// How many encoded profiles may wait for upload.
pub(crate) const QUEUE_CAPACITY: usize = 8;

/// The path of the Push call, appended to the server address.
pub(crate) const PUSH_PATH: &str = "/push.v1.PusherService/Push";

/// `PushRequest` and friends from Pyroscope's `push/v1/push.proto` and
/// `types/v1/types.proto`, written out by hand.
pub(crate) mod proto {
    /// The Push call's request.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub(crate) series: Vec<RawProfileSeries>,
    }

    /// One series: its labels and profiles.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct RawProfileSeries {
        #[prost(message, repeated, tag = "1")]
        pub(crate) labels: Vec<LabelPair>,
        #[prost(message, repeated, tag = "2")]
        pub(crate) samples: Vec<RawSample>,
    }

    /// A series label.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct LabelPair {
        #[prost(string, tag = "1")]
        pub(crate) name: String,
        #[prost(string, tag = "2")]
        pub(crate) value: String,
    }

    /// One pprof profile (gzipped or not) and a unique id.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct RawSample {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) raw_profile: Vec<u8>,
        #[prost(string, tag = "2")]
        pub(crate) id: String,
    }
}

/// Retry and timeout settings. `Default` is what the crate uses; tests
/// shorten the waits.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    /// Attempts per profile, the first included.
    pub(crate) max_attempts: u32,
    /// First backoff; doubles per retry.
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    /// Cap on a server's `Retry-After`.
    pub(crate) retry_after_max: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Where and how to push: fixed for the uploader's life.
struct Target {
    url: String,
    labels: Vec<proto::LabelPair>,
    basic_auth: Option<(String, String)>,
    tenant_id: Option<String>,
}

/// The shutdown deadline, shared with the thread so waits can be cut short.
#[derive(Default)]
struct Control {
    deadline: Mutex<Option<Instant>>,
    wake: Condvar,
}

impl Control {
    fn deadline(&self) -> Option<Instant> {
        match self.deadline.lock() {
            Ok(d) => *d,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn set_deadline(&self, deadline: Instant) {
        match self.deadline.lock() {
            Ok(mut d) => *d = Some(deadline),
            Err(poisoned) => *poisoned.into_inner() = Some(deadline),
        }
        self.wake.notify_all();
    }

    /// Sleeps for `wait`, or less if shutdown begins (a deadline is set).
    fn sleep(&self, wait: Duration) {
        let end = Instant::now() + wait;
        let mut guard = match self.deadline.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        loop {
            let now = Instant::now();
            if guard.is_some() || now >= end {
                return;
            }
            guard = match self.wake.wait_timeout(guard, end - now) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
    }
}

/// Who counts each queued profile's end. Normally the thread does (as an
/// upload or a drop); if shutdown has to leave the thread behind, it counts
/// everything still pending as dropped and the thread counts nothing more.
#[derive(Debug, Default)]
struct Ledger {
    state: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    /// Queued or in flight.
    pending: u64,
    abandoned: bool,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The thread is done with one profile: bump `counter` unless shutdown
    /// already counted it.
    fn settle(&self, counter: &std::sync::atomic::AtomicU64) {
        let mut state = self.lock();
        if !state.abandoned {
            state.pending = state.pending.saturating_sub(1);
            Counters::bump(counter);
        }
    }

    /// Counts everything pending as dropped; later `settle`s count nothing.
    fn abandon(&self, counters: &Counters) {
        let mut state = self.lock();
        if !state.abandoned {
            state.abandoned = true;
            counters
                .dropped_profiles
                .fetch_add(state.pending, std::sync::atomic::Ordering::Relaxed);
            state.pending = 0;
        }
    }
}

/// Uploads profiles from a bounded queue on a background thread.
pub(crate) struct Uploader {
    ledger: Arc<Ledger>,
    tx: Option<SyncSender<EncodedProfile>>,
    control: Arc<Control>,
    done: Option<Receiver<()>>,
    handle: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("running", &self.tx.is_some())
            .finish_non_exhaustive()
    }
}

impl Uploader {
    /// Starts the upload thread for `config.server_address`.
    pub(crate) fn start(config: &Config, counters: Arc<Counters>) -> Result<Self, Error> {
        Self::start_with(config, counters, Policy::default())
    }

    pub(crate) fn start_with(
        config: &Config,
        counters: Arc<Counters>,
        policy: Policy,
    ) -> Result<Self, Error> {
        let Some(server) = &config.server_address else {
            return Err(Error::new(
                ErrorKind::Config,
                "the uploader needs PYROSCOPE_SERVER_ADDRESS (or Builder::server_address)",
            ));
        };
        let target = Target {
            url: format!("{}{PUSH_PATH}", server.trim_end_matches('/')),
            labels: series_labels(config),
            basic_auth: match (&config.basic_auth_user, &config.basic_auth_password) {
                (Some(user), Some(password)) => Some((user.clone(), password.0.clone())),
                _ => None,
            },
            tenant_id: config.tenant_id.clone(),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let control = Arc::new(Control::default());
        let ledger = Arc::new(Ledger::default());
        let worker = Worker {
            ledger: ledger.clone(),
            target,
            policy,
            control: control.clone(),
            counters: counters.clone(),
            logged_statuses: HashSet::new(),
            outage_logged: false,
            unreachable: false,
            rng: Rng::new(),
        };
        let handle = std::thread::Builder::new()
            .name("pyroscope-upload".into())
            .spawn(move || {
                // Built on this thread: reqwest's blocking client must not be
                // created or dropped inside an async runtime, and the
                // caller may be in one.
                let client = match worker.client() {
                    Ok(client) => {
                        let _ = ready_tx.send(Ok(()));
                        client
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                worker.run(&client, rx);
                drop(client);
                let _ = done_tx.send(());
            })
            .map_err(|e| {
                Error::new(ErrorKind::Os, "could not spawn the pyroscope-upload thread")
                    .with_source(e)
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(Error::new(
                    ErrorKind::Os,
                    "could not create the HTTP client for uploads",
                )
                .with_source(e));
            }
            Err(_) => {
                let _ = handle.join();
                return Err(Error::new(
                    ErrorKind::Os,
                    "the pyroscope-upload thread stopped at start",
                ));
            }
        }
        Ok(Uploader {
            ledger,
            tx: Some(tx),
            control,
            done: Some(done_rx),
            handle: Some(handle),
            counters,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// Queues `profile` for upload. Never blocks: a full queue drops it and
    /// counts it in `dropped_profiles`.
    pub(crate) fn send(&self, profile: EncodedProfile) {
        let queued = match &self.tx {
            Some(tx) => {
                // Count before the thread can see it, under the ledger lock.
                let mut ledger = self.ledger.lock();
                match tx.try_send(profile) {
                    Ok(()) => {
                        ledger.pending += 1;
                        true
                    }
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                }
            }
            None => false,
        };
        if !queued {
            Counters::bump(&self.counters.dropped_profiles);
        }
    }

    /// Stops accepting profiles, uploads what is queued until `deadline`,
    /// then abandons the rest (counted as dropped) and returns. Returns by
    /// the deadline even if the server hangs.
    pub(crate) fn shutdown(mut self, deadline: Instant) {
        self.stop(deadline);
    }

    fn stop(&mut self, deadline: Instant) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        self.control.set_deadline(deadline);
        drop(tx);
        let finished = match self.done.take() {
            // A little slack: the thread needs a moment after its last
            // request timed out at the deadline.
            Some(done) => match done.recv_timeout(
                deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(100),
            ) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            },
            None => true,
        };
        if finished {
            if let Some(handle) = self.handle.take() {
                let _ = handle.join();
            }
        } else {
            // Leave the thread behind rather than overrun the bound (a
            // request sent before shutdown began keeps its own timeout); it
            // ends on its own when that request returns.
            self.ledger.abandon(&self.counters);
            tracing::warn!(
                target: "tracing_pyroscope",
                "pyroscope upload did not finish by the shutdown deadline; abandoning it"
            );
            self.handle.take();
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.stop(Instant::now() + self.shutdown_timeout);
    }
}

/// `__name__`, `service_name`, `process.runtime.name`, then the static
/// labels (validated by `config`).
fn series_labels(config: &Config) -> Vec<proto::LabelPair> {
    let pair = |name: &str, value: &str| proto::LabelPair {
        name: name.to_string(),
        value: value.to_string(),
    };
    let mut labels = vec![
        pair("__name__", "process_cpu"),
        pair("service_name", &config.application_name),
        pair("process.runtime.name", "rust"),
    ];
    labels.extend(config.labels.iter().map(|(k, v)| pair(k, v)));
    labels
}

/// What one attempt came to.
enum Outcome {
    Accepted,
    /// Worth another try, after the server's `Retry-After` if it sent one.
    Retry(Option<Duration>),
    /// No answer (connection refused or reset, timeout): retried, except
    /// during shutdown.
    Unreachable,
    /// Not worth retrying (4xx other than 429).
    Rejected,
}

struct Worker {
    ledger: Arc<Ledger>,
    target: Target,
    policy: Policy,
    control: Arc<Control>,
    counters: Arc<Counters>,
    /// Statuses already logged (each is logged once).
    logged_statuses: HashSet<u16>,
    /// Whether the current connection outage was logged.
    outage_logged: bool,
    /// Set when an attempt during shutdown could not reach the server: the
    /// rest of the queue is dropped without trying.
    unreachable: bool,
    rng: Rng,
}

impl Worker {
    fn client(&self) -> reqwest::Result<reqwest::blocking::Client> {
        reqwest::blocking::Client::builder()
            .user_agent(concat!("tracing-pyroscope/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.policy.connect_timeout)
            .timeout(self.policy.request_timeout)
            .build()
    }

    fn run(mut self, client: &reqwest::blocking::Client, rx: Receiver<EncodedProfile>) {
        // Ends when the uploader closes the queue and it is empty.
        while let Ok(profile) = rx.recv() {
            let give_up = self
                .control
                .deadline()
                .is_some_and(|d| self.unreachable || Instant::now() >= d);
            if give_up {
                self.ledger.settle(&self.counters.dropped_profiles);
                continue;
            }
            self.upload(client, profile);
        }
    }

    /// Tries up to `max_attempts` times; counts the result. Once shutdown
    /// has begun there is no more waiting: one last attempt, and none at all
    /// once the server has proved unreachable during shutdown.
    fn upload(&mut self, client: &reqwest::blocking::Client, profile: EncodedProfile) {
        let body = match self.body(profile) {
            Ok(body) => body,
            Err(e) => {
                self.ledger.settle(&self.counters.dropped_profiles);
                tracing::warn!(target: "tracing_pyroscope", "could not encode a push request: {e}");
                return;
            }
        };
        let mut attempts = 0;
        loop {
            let deadline = self.control.deadline();
            let shutting_down = deadline.is_some();
            if shutting_down && self.unreachable {
                break;
            }
            let timeout = match deadline {
                None => self.policy.request_timeout,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    left.min(self.policy.request_timeout)
                }
            };
            attempts += 1;
            let wait = match self.attempt(client, &body, timeout) {
                Outcome::Accepted => {
                    self.ledger.settle(&self.counters.uploads);
                    return;
                }
                Outcome::Rejected => {
                    Counters::bump(&self.counters.upload_errors);
                    break;
                }
                Outcome::Unreachable => {
                    Counters::bump(&self.counters.upload_errors);
                    if shutting_down {
                        self.unreachable = true;
                        break;
                    }
                    self.backoff(attempts - 1)
                }
                Outcome::Retry(retry_after) => {
                    Counters::bump(&self.counters.upload_errors);
                    retry_after.unwrap_or_else(|| self.backoff(attempts - 1))
                }
            };
            if shutting_down || attempts >= self.policy.max_attempts {
                break;
            }
            // Returns early if shutdown begins: then one last attempt.
            self.control.sleep(wait);
        }
        self.ledger.settle(&self.counters.dropped_profiles);
    }

    /// The gzipped `PushRequest` for one profile.
    fn body(&mut self, profile: EncodedProfile) -> std::io::Result<Vec<u8>> {
        let request = proto::PushRequest {
            series: vec![proto::RawProfileSeries {
                labels: self.target.labels.clone(),
                samples: vec![proto::RawSample {
                    raw_profile: profile.gzipped,
                    id: self.rng.uuid_v4(),
                }],
            }],
        };
        let encoded = request.encode_to_vec();
        drop(request);
        // The pprof inside is gzipped already: compress the envelope fast.
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(encoded.len() / 2 + 64),
            flate2::Compression::fast(),
        );
        gz.write_all(&encoded)?;
        gz.finish()
    }

    fn attempt(
        &mut self,
        client: &reqwest::blocking::Client,
        body: &[u8],
        timeout: Duration,
    ) -> Outcome {
        let mut request = client
            .post(&self.target.url)
            .header("Content-Type", "application/proto")
            .header("Content-Encoding", "gzip")
            .timeout(timeout)
            .body(body.to_vec());
        if let Some((user, password)) = &self.target.basic_auth {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(tenant) = &self.target.tenant_id {
            request = request.header("X-Scope-OrgID", tenant);
        }
        let mut response = match request.send() {
            Ok(response) => response,
            Err(e) => {
                if !self.outage_logged {
                    self.outage_logged = true;
                    tracing::warn!(
                        target: "tracing_pyroscope",
                        url = %self.target.url,
                        "pyroscope upload failed, will retry: {}",
                        error_chain(&e)
                    );
                }
                return Outcome::Unreachable;
            }
        };
        let status = response.status();
        if status.is_success() {
            // Drain the (empty) body so the connection can be reused.
            let _ = std::io::copy(&mut response.by_ref().take(64 * 1024), &mut std::io::sink());
            if self.outage_logged {
                self.outage_logged = false;
                tracing::info!(target: "tracing_pyroscope", "pyroscope upload recovered");
            }
            return Outcome::Accepted;
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(self.policy.retry_after_max));
        let mut text = Vec::new();
        let _ = response.by_ref().take(4096).read_to_end(&mut text);
        let code = status.as_u16();
        if self.logged_statuses.insert(code) {
            tracing::warn!(
                target: "tracing_pyroscope",
                status = code,
                url = %self.target.url,
                "pyroscope rejected a profile: {}",
                server_message(&text)
            );
        }
        if code == 429 || status.is_server_error() {
            Outcome::Retry(if code == 429 { retry_after } else { None })
        } else {
            Outcome::Rejected
        }
    }

    /// Exponential backoff with jitter: between half and all of
    /// `base * 2^attempt`, capped.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let full = self
            .policy
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.policy.backoff_max);
        let half = full / 2;
        half + half.mul_f64(self.rng.unit())
    }
}

/// The server's JSON `message`, else the body text (truncated).
fn server_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return e.message;
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(512).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A small xorshift generator for jitter and request ids; seeded from the
/// std hasher's random keys.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Rng(h.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// In `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn uuid_v4(&mut self) -> String {
        let hi = (self.next() & !0xf000) | 0x4000;
        let lo = (self.next() & !(0xc << 60)) | (0x8 << 60);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0xffff,
            lo >> 48,
            lo & 0xffff_ffff_ffff
        )
    }
}

#[cfg(test)]
mod tests;
