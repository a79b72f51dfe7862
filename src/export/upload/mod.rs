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
//! `__name__` (`process_cpu`, `wall` or `memory`, the profile's kind), `service_name`, `process.runtime.name=rust` and
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
//!   that). A 429's `Retry-After` (seconds or an HTTP date) replaces the
//!   backoff, capped at 60 s.
//! - Any other 4xx is not retried: the profile is dropped and the status
//!   with the server's message is logged once per distinct status.
//! - A server certificate that fails verification (feature `tls`) is a
//!   rejection too: not retried, logged once with the reason.
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
//! Why the crate speaks the protocol itself rather than through the
//! `pyroscope` crate's agent: `docs/server.md`.
//!
//! # Files
//!
//! - `wire`: the `PushRequest` types, series labels and request body;
//! - `worker`: the upload thread (attempts, retries, backoff, shutdown);
//! - this file: [`UploadSettings`], the queue and the [`Sink`] impl.

use std::collections::HashSet;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Sink;
use crate::context::{self, ProfilerThread};
use crate::error::{Error, ErrorKind};
use crate::profile::EncodedProfile;
use crate::secret::Secret;
use crate::stats::Counters;
use worker::{Control, Ledger, Rng, Target, Worker};

mod wire;
mod worker;

#[cfg(test)]
pub(crate) use wire::proto;

/// How many encoded profiles may wait for upload.
pub(crate) const QUEUE_CAPACITY: usize = 8;

/// What the uploader needs, checked before it gets here.
#[derive(Clone, Debug)]
pub(crate) struct UploadSettings {
    /// `http(s)://host[:port][/path]`, without a trailing `/`.
    pub(crate) server_address: String,
    /// The `service_name` series label.
    pub(crate) service_name: String,
    /// Static series labels.
    pub(crate) labels: Vec<(String, String)>,
    /// Basic-auth user and password.
    pub(crate) basic_auth: Option<(String, Secret)>,
    /// `X-Scope-OrgID`.
    pub(crate) tenant_id: Option<String>,
    /// Bound on flushing when the uploader is dropped without `shutdown`.
    pub(crate) shutdown_timeout: Duration,
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
    /// Starts the upload thread.
    pub(crate) fn start(settings: UploadSettings, counters: Arc<Counters>) -> Result<Self, Error> {
        Self::start_with(settings, counters, Policy::default())
    }

    pub(crate) fn start_with(
        settings: UploadSettings,
        counters: Arc<Counters>,
        policy: Policy,
    ) -> Result<Self, Error> {
        let target = Target {
            url: format!(
                "{}{}",
                settings.server_address.trim_end_matches('/'),
                wire::PUSH_PATH
            ),
            labels: wire::series_labels(&settings.service_name, &settings.labels),
            basic_auth: settings
                .basic_auth
                .map(|(user, password)| (user, password.0)),
            tenant_id: settings.tenant_id,
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
            certificate_logged: false,
            unreachable: false,
            rng: Rng::new(),
        };
        let handle = std::thread::Builder::new()
            .name("pyroscope-upload".into())
            .spawn(move || {
                context::mark_profiler_thread(ProfilerThread::Uploader);
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
            shutdown_timeout: settings.shutdown_timeout,
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

impl Sink for Uploader {
    fn send(&mut self, profile: &EncodedProfile) {
        Uploader::send(self, profile.clone());
    }

    fn shutdown(self: Box<Self>, deadline: Instant) {
        Uploader::shutdown(*self, deadline);
    }
}

#[cfg(test)]
mod tests;
