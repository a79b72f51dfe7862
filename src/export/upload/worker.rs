//! The `pyroscope-upload` thread: takes profiles off the queue and pushes
//! each one with retries, backoff and the shutdown deadline (see the
//! parent module's docs for the rules).

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{wire, Policy};
use crate::profile::EncodedProfile;
use crate::stats::Counters;
use crate::sync::lock;

/// Where and how to push: fixed for the uploader's life.
pub(super) struct Target {
    pub(super) url: String,
    pub(super) labels: Vec<wire::proto::LabelPair>,
    pub(super) basic_auth: Option<(String, String)>,
    pub(super) tenant_id: Option<String>,
}

/// The shutdown deadline, shared with the thread so waits can be cut short.
#[derive(Default)]
pub(super) struct Control {
    deadline: Mutex<Option<Instant>>,
    wake: Condvar,
}

impl Control {
    pub(super) fn deadline(&self) -> Option<Instant> {
        *lock(&self.deadline)
    }

    pub(super) fn set_deadline(&self, deadline: Instant) {
        *lock(&self.deadline) = Some(deadline);
        self.wake.notify_all();
    }

    /// Sleeps for `wait`, or less if shutdown begins (a deadline is set).
    pub(super) fn sleep(&self, wait: Duration) {
        let end = Instant::now() + wait;
        let mut guard = lock(&self.deadline);
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
pub(super) struct Ledger {
    state: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
pub(super) struct LedgerState {
    /// Queued or in flight.
    pub(super) pending: u64,
    pub(super) abandoned: bool,
}

impl Ledger {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        lock(&self.state)
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
    pub(super) fn abandon(&self, counters: &Counters) {
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

/// What one attempt came to.
pub(super) enum Outcome {
    Accepted,
    /// Worth another try, after the server's `Retry-After` if it sent one.
    Retry(Option<Duration>),
    /// No answer (connection refused or reset, timeout): retried, except
    /// during shutdown.
    Unreachable,
    /// Not worth retrying: a 4xx other than 429, or a server certificate
    /// that failed verification (trying again gets the same certificate).
    Rejected,
}

pub(super) struct Worker {
    pub(super) ledger: Arc<Ledger>,
    pub(super) target: Target,
    pub(super) policy: Policy,
    pub(super) control: Arc<Control>,
    pub(super) counters: Arc<Counters>,
    /// Statuses already logged (each is logged once).
    pub(super) logged_statuses: HashSet<u16>,
    /// Whether the current connection outage was logged.
    pub(super) outage_logged: bool,
    /// Whether a refused server certificate was logged (once).
    pub(super) certificate_logged: bool,
    /// Set when an attempt during shutdown could not reach the server: the
    /// rest of the queue is dropped without trying.
    pub(super) unreachable: bool,
    pub(super) rng: Rng,
}

impl Worker {
    pub(super) fn client(&self) -> reqwest::Result<reqwest::blocking::Client> {
        reqwest::blocking::Client::builder()
            .user_agent(concat!("tracing-pyroscope/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.policy.connect_timeout)
            .timeout(self.policy.request_timeout)
            .build()
    }

    pub(super) fn run(mut self, client: &reqwest::blocking::Client, rx: Receiver<EncodedProfile>) {
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

    /// The gzipped `PushRequest` for one profile, its series named by its
    /// kind (`__name__`).
    fn body(&mut self, profile: EncodedProfile) -> std::io::Result<Vec<u8>> {
        let mut labels = self.target.labels.clone();
        wire::set_profile_name(&mut labels, profile.kind.name());
        wire::push_body(&labels, profile.gzipped, self.rng.uuid_v4())
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
                if let Some(problem) = certificate_problem(&e) {
                    // The same certificate comes back on every try: a
                    // rejection, like a 4xx, not an outage.
                    if !self.certificate_logged {
                        self.certificate_logged = true;
                        tracing::warn!(
                            target: "tracing_pyroscope",
                            url = %self.target.url,
                            certificate = %problem,
                            "pyroscope upload failed: the server's TLS certificate was refused; \
                             profiles are dropped, not retried, until it is trusted (see SSL_CERT_FILE): {}",
                            error_chain(&e)
                        );
                    }
                    return Outcome::Rejected;
                }
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
            .and_then(|v| retry_after(v, std::time::SystemTime::now()))
            .map(|wait| wait.min(self.policy.retry_after_max));
        let mut text = Vec::new();
        let _ = response.by_ref().take(4096).read_to_end(&mut text);
        let code = status.as_u16();
        if self.logged_statuses.insert(code) {
            tracing::warn!(
                target: "tracing_pyroscope",
                status = code,
                url = %self.target.url,
                "pyroscope rejected a profile: {}",
                wire::server_message(&text)
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
    pub(super) fn backoff(&mut self, attempt: u32) -> Duration {
        let full = self
            .policy
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.policy.backoff_max);
        let half = full / 2;
        half + half.mul_f64(self.rng.unit())
    }
}

/// A `Retry-After` value as a wait from `now`: delay-seconds (`120`) or an
/// HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`, RFC 9110 §10.2.3, in any of
/// its three formats). `None` when it is neither, or when the date is not
/// in the future (then the backoff applies).
pub(super) fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok().filter(|wait| !wait.is_zero())
}

/// The certificate problem behind a failed request, if that is why it
/// failed: the server's certificate did not verify (unknown issuer, wrong
/// host name, expired, …). rustls reports it inside the `io::Error` of the
/// handshake (two deep with reqwest 0.13), which `source()` skips, so each
/// `io::Error`'s payload is looked into.
#[cfg(feature = "tls")]
fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let is_certificate = |r: &rustls::Error| {
        matches!(
            r,
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertRevocationList(_)
        )
    };
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return is_certificate(r).then(|| r.to_string());
        }
        // Into an io::Error's own payload (which may be another io::Error
        // around the rustls error), else on down the chain.
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// Without TLS there are no certificates.
#[cfg(not(feature = "tls"))]
fn certificate_problem(_: &(dyn std::error::Error + 'static)) -> Option<String> {
    None
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
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new() -> Self {
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
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(super) fn uuid_v4(&mut self) -> String {
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
