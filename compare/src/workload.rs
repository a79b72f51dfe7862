//! The workload every arm runs: many concurrent root spans ("requests") on
//! a multi-thread tokio runtime. Client `j` runs its requests one after
//! another; each request is a root span that burns CPU in client `j`'s own
//! `#[inline(never)]` function (`burn_j`) in bursts separated by
//! `yield_now().await`, so its task hops between worker threads. Every
//! other burst runs inside a child span. The root's OpenTelemetry span id is
//! recorded (the ground truth for attribution) and written into the span's
//! `sid` field, where the pyroscope adapter reads it.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::measure::thread_cpu_nanos;

/// CPU time (ns) spent inside the burn functions, all threads.
static BURN_CPU_NANOS: AtomicU64 = AtomicU64::new(0);

macro_rules! burners {
    ($($name:ident = $salt:expr),* $(,)?) => {
        $(
            #[inline(never)]
            fn $name(nanos: u64) -> u64 {
                let start = thread_cpu_nanos();
                let end = start + nanos;
                let mut x: u64 = $salt;
                while thread_cpu_nanos() < end {
                    for _ in 0..500 {
                        x = black_box(x.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add($salt));
                    }
                }
                BURN_CPU_NANOS.fetch_add(thread_cpu_nanos() - start, Ordering::Relaxed);
                x
            }
        )*
        /// The burn functions, by client; the names are what the scorer
        /// looks for in stacks.
        pub const BURNERS: &[(&str, fn(u64) -> u64)] = &[$((stringify!($name), $name)),*];
    };
}

burners!(
    burn_client_00 = 3,
    burn_client_01 = 5,
    burn_client_02 = 7,
    burn_client_03 = 11,
    burn_client_04 = 13,
    burn_client_05 = 17,
    burn_client_06 = 19,
    burn_client_07 = 23,
    burn_client_08 = 29,
    burn_client_09 = 31,
    burn_client_10 = 37,
    burn_client_11 = 41,
    burn_client_12 = 43,
    burn_client_13 = 47,
    burn_client_14 = 53,
    burn_client_15 = 59,
    burn_client_16 = 61,
    burn_client_17 = 67,
    burn_client_18 = 71,
    burn_client_19 = 73,
    burn_client_20 = 79,
    burn_client_21 = 83,
    burn_client_22 = 89,
    burn_client_23 = 97,
);

/// The shape of the workload.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Concurrent clients (at most `BURNERS.len()`).
    pub clients: usize,
    /// Requests per client.
    pub requests: usize,
    /// CPU bursts per request.
    pub bursts: usize,
    /// CPU time per burst.
    pub burst: Duration,
}

/// What the workload measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Wall time of every request.
    pub latencies: Vec<Duration>,
    /// (root span id, client) of every request.
    pub truth: Vec<(u64, usize)>,
    /// CPU time inside the burn functions.
    pub burn_cpu: Duration,
}

/// Runs the workload on `runtime` and returns what it measured.
pub fn run(runtime: &tokio::runtime::Runtime, p: Params) -> Outcome {
    BURN_CPU_NANOS.store(0, Ordering::Relaxed);
    let clients = p.clients.min(BURNERS.len());
    let truth = Arc::new(Mutex::new(Vec::new()));
    let latencies = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|j| tokio::spawn(client(j, p, truth.clone())))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        all
    });
    let truth = std::mem::take(&mut *truth.lock().expect("truth"));
    Outcome {
        latencies,
        truth,
        burn_cpu: Duration::from_nanos(BURN_CPU_NANOS.load(Ordering::Relaxed)),
    }
}

async fn client(j: usize, p: Params, truth: Arc<Mutex<Vec<(u64, usize)>>>) -> Vec<Duration> {
    let burn = BURNERS[j].1;
    let nanos = p.burst.as_nanos() as u64;
    let mut latencies = Vec::with_capacity(p.requests);
    for _ in 0..p.requests {
        let root = tracing::info_span!("request", client = j, sid = tracing::field::Empty);
        let sid = root.context().span().span_context().span_id();
        let sid = u64::from_be_bytes(sid.to_bytes());
        root.record("sid", format!("{sid:016x}"));
        truth.lock().expect("truth").push((sid, j));
        let start = Instant::now();
        async {
            for b in 0..p.bursts {
                if b % 2 == 0 {
                    let _step = tracing::info_span!("step").entered();
                    black_box(burn(nanos));
                } else {
                    black_box(burn(nanos));
                }
                tokio::task::yield_now().await;
            }
        }
        .instrument(root)
        .await;
        latencies.push(start.elapsed());
    }
    latencies
}
