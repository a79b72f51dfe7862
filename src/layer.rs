//! The tracing layer: puts the running span's id into the thread slot.
//!
//! Everything users need to know is on [`SpanProfileLayer`]. Inside: the
//! `Layer` impl (per-span work once, at the first enter, kept in the span's
//! extensions) and the per-thread `stack` module (saved slot values and the
//! label cache that makes warm enters lookup-free).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::KeyValue;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};
use tracing_subscriber::Layer;

use crate::context::{self, SpanLabels};
use crate::profiler::{SpanRecord, SpanRecordSink};
use crate::SpanScope;

/// The OpenTelemetry attribute linking a span to its profile.
pub(crate) const PROFILE_ID_ATTRIBUTE: &str = "pyroscope.profile.id";

/// The field `tracing-opentelemetry` uses to override a span's name.
const OTEL_NAME_FIELD: &str = "otel.name";

/// What the layer needs to know; built by `profiler::start` from the config.
#[derive(Clone, Debug)]
pub(crate) struct LayerConfig {
    pub(crate) scope: SpanScope,
    pub(crate) span_name_label: bool,
    pub(crate) trace_id_label: bool,
    /// Set in local-directory mode: closed profiled root spans go here.
    pub(crate) records: Option<SpanRecordSink>,
}

/// The layer to add to a `tracing_subscriber::Registry`: puts the running
/// span's id into the thread slot, so CPU samples carry it.
///
/// On every span enter it writes the span's labels ([`SpanLabels`]:
/// `span_id`, `trace_id`, `span_name`) into this thread's slot
/// ([`crate::context`]), where the sampler's signal handler reads them at the
/// moment it takes a sample. On exit it puts back exactly what was there
/// before. On a profiled span's first enter it also sets the OpenTelemetry
/// attribute `pyroscope.profile.id` to the same 16-hex id, so Grafana's
/// "Profiles for this span" finds the samples.
///
/// You get the layer from [`Builder::build`](crate::Builder::build) or
/// [`from_env`](crate::from_env); add it to a `Registry`, with or without a
/// `tracing-opentelemetry` layer, in any order:
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// // Nothing configured in the environment: an inert layer and a no-op guard.
/// let (profiling, _guard) = tracing_pyroscope::from_env()?;
/// let subscriber = tracing_subscriber::registry()
///     // .with(tracing_opentelemetry::layer().with_tracer(tracer)) // optional
///     .with(profiling);
/// tracing::subscriber::with_default(subscriber, || {
///     let span = tracing::info_span!("GET /car");
///     let _entered = span.enter();
///     // CPU samples taken here carry span_id = the OTel span id of "GET /car".
/// });
/// # Ok::<(), tracing_pyroscope::Error>(())
/// ```
///
/// ```no_run
/// use tracing_pyroscope::SpanScope;
/// use tracing_subscriber::prelude::*;
///
/// let (profiling, _guard) = tracing_pyroscope::Builder::new("ride-sharing-app")
///     .server_address("http://localhost:4040")
///     .span_scope(SpanScope::Root) // the default
///     .span_name_label(true) // the default
///     .trace_id_label(false) // the default
///     .build()?;
/// tracing_subscriber::registry().with(profiling).init();
/// # Ok::<(), tracing_pyroscope::Error>(())
/// ```
///
/// # Which span's id a sample carries
///
/// - **Ids.** With a `tracing-opentelemetry` layer in the stack, `span_id` is
///   the OpenTelemetry span id and `trace_id` its trace id. Without one, the
///   layer mints random non-zero 64-bit span ids and leaves `trace_id` out.
///   Ids are settled at a span's *first enter*, not at creation: an incoming
///   `traceparent` is attached with `set_parent` after creation and before the
///   first enter, and starting the OpenTelemetry span any earlier would lose
///   it. The result is cached in the span's extensions, so later enters are a
///   lookup.
/// - **Scope** ([`SpanScope`]). With `Root` (the default, like Go's
///   otel-profiling-go) only *local roots* get an id: spans without a parent,
///   or whose OpenTelemetry parent is remote (a span re-parented with
///   `set_parent` into another trace). Their descendants carry the root's
///   labels. With `All` every span carries its own id and name; with `None`
///   there are no ids, only the local root's `span_name`.
/// - **Sampling.** Only spans whose OpenTelemetry context is sampled get
///   labels and the attribute; work inside an unsampled trace carries no span
///   labels, since nothing in Tempo would link to them.
/// - **`span_name`** is the local root's name (`otel.name` if the span has
///   that field, else the span's name). It is a *series* label on the
///   Pyroscope server, so every distinct name makes a new series: keep span
///   names low-cardinality (`GET /car/{id}`, not `GET /car/42`), or turn it
///   off (`PYROSCOPE_SPAN_NAME_LABEL=false`).
/// - **`trace_id`** is off by default (`PYROSCOPE_TRACE_ID_LABEL`): Pyroscope
///   servers before 2.1 turn any label other than `span_id` into a series
///   label, and one series per trace would explode the server's index. The
///   span id is enough for Grafana's trace-to-profile link.
///
/// # Save and restore
///
/// Each thread keeps a small fixed-size stack of `(span, saved labels)`
/// entries in a `const` thread local. Enter pushes what the slot held; exit
/// finds the span's topmost entry and restores it. If a span exits out of
/// order (not the most recently entered), the slot is left alone (a later
/// span is still running) and the entry above inherits the saved value, so
/// when that one exits the slot returns to what it was before both. The
/// same span entered on two threads, re-entered on one, or an `Instrumented`
/// future polled on a different worker each time all work, because entries
/// are per thread. Nesting deeper than 32 spans on one thread leaves the
/// deeper spans' labels as their enclosing span's.
///
/// # Cost
///
/// The first enter of a span on a thread looks it up in the Registry (and, the
/// very first time, settles its ids). After that each thread finds the labels
/// in a small direct-mapped cache keyed by span id, so a warm enter is a few
/// thread-local reads and writes and exit is a pop: no allocation, no lock, no
/// syscall. The Registry reuses span ids once a span closes; every close bumps
/// a counter for its id, and a cache entry is only used while that counter
/// is unchanged. An inert layer (profiling off) returns at once from every
/// callback. `benches/layer.rs` measures all of this against the Registry
/// alone and against tracing-opentelemetry.
#[derive(Clone, Debug)]
pub struct SpanProfileLayer {
    /// `config.is_some()`, read first on the hot path.
    active: bool,
    /// `None`: inert.
    config: Option<LayerConfig>,
    /// The dispatch this layer lives in, to reach the OpenTelemetry layer.
    dispatch: OnceLock<WeakDispatch>,
}

impl SpanProfileLayer {
    pub(crate) fn new(config: LayerConfig) -> Self {
        SpanProfileLayer {
            active: true,
            config: Some(config),
            dispatch: OnceLock::new(),
        }
    }

    pub(crate) fn inert() -> Self {
        SpanProfileLayer {
            active: false,
            config: None,
            dispatch: OnceLock::new(),
        }
    }

    /// An active layer without a profiler: it writes the thread slot only
    /// (`span_name` on, `trace_id` off). For tests and benchmarks.
    #[doc(hidden)]
    pub fn with_scope(scope: SpanScope) -> Self {
        Self::new(LayerConfig {
            scope,
            span_name_label: true,
            trace_id_label: false,
            records: None,
        })
    }

    /// Switches the `span_name` label (active layers only). For tests.
    #[doc(hidden)]
    pub fn with_span_name_label(mut self, on: bool) -> Self {
        if let Some(config) = &mut self.config {
            config.span_name_label = on;
        }
        self
    }

    /// Switches the `trace_id` label (active layers only). For tests.
    #[doc(hidden)]
    pub fn with_trace_id_label(mut self, on: bool) -> Self {
        if let Some(config) = &mut self.config {
            config.trace_id_label = on;
        }
        self
    }

    /// `true` if profiling is off and the layer does nothing.
    #[doc(hidden)]
    pub fn is_inert(&self) -> bool {
        self.config.is_none()
    }

    /// The OpenTelemetry context of a span (this starts the OTel span if it
    /// was not started yet). `None` without an OpenTelemetry layer.
    fn otel_context(&self, id: &Id) -> Option<opentelemetry::Context> {
        let dispatch = match self.dispatch.get().and_then(WeakDispatch::upgrade) {
            Some(dispatch) => dispatch,
            None => tracing::dispatcher::get_default(Dispatch::clone),
        };
        tracing_opentelemetry::get_otel_context(id, &dispatch)
    }

    /// Tells apart equal span ids of different subscribers in the
    /// per-thread cache: the layer's address inside its subscriber.
    #[inline(always)]
    fn key(&self) -> usize {
        self as *const Self as usize
    }

    /// First enter on this thread (or the cache entry was evicted): look the
    /// span up, settle its labels if this is its first enter anywhere.
    #[cold]
    #[inline(never)]
    fn enter_uncached<S>(&self, span_id: u64, id: &Id, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let Some(config) = &self.config else {
            return;
        };
        let epoch = stack::epoch(span_id);
        let Some(span) = ctx.span(id) else {
            return;
        };
        let cached = {
            let ext = span.extensions();
            match ext.get::<SpanData>() {
                Some(data) => data.resolved.get().map(|r| r.labels),
                None => return,
            }
        };
        let labels = match cached {
            Some(labels) => labels,
            None => match self.resolve(config, &span) {
                Some(resolved) => resolved.labels,
                None => return,
            },
        };
        stack::remember(self.key(), span_id, epoch, labels);
        stack::enter(span_id, labels);
    }

    /// Settles a span's labels (once; the first thread to finish wins).
    /// Must be called without holding any of the span's extension guards.
    fn resolve<S>(&self, config: &LayerConfig, span: &SpanRef<'_, S>) -> Option<Resolved>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        {
            let ext = span.extensions();
            let data = ext.get::<SpanData>()?;
            if let Some(resolved) = data.resolved.get() {
                return Some(*resolved);
            }
        }
        // The parent first (normally already settled at its own first enter).
        let parent = span.parent().and_then(|p| self.resolve(config, &p));

        let otel = match config.scope {
            SpanScope::None => None,
            SpanScope::Root | SpanScope::All => self.otel_context(&span.id()),
        };
        let mut otel_sampled = false;
        let (otel_span_id, otel_trace_id) = match &otel {
            Some(cx) => {
                let sc = cx.span().span_context().clone();
                if sc.is_valid() {
                    otel_sampled = sc.is_sampled();
                    (
                        u64::from_be_bytes(sc.span_id().to_bytes()),
                        u128::from_be_bytes(sc.trace_id().to_bytes()),
                    )
                } else {
                    (0, 0)
                }
            }
            None => (0, 0),
        };
        let has_otel = otel_trace_id != 0;

        // A local root: no parent, or re-parented into another trace.
        let local_root = match &parent {
            None => true,
            Some(p) => has_otel && p.otel_trace_id != 0 && p.otel_trace_id != otel_trace_id,
        };
        let wants_id = match config.scope {
            SpanScope::None => false,
            SpanScope::Root => local_root,
            SpanScope::All => true,
        };
        let own_id = match (wants_id, has_otel) {
            (false, _) => 0,
            (true, true) if otel_sampled => otel_span_id,
            (true, true) => 0,
            (true, false) => mint_span_id(),
        };
        let own_labels_wanted = match config.scope {
            SpanScope::None | SpanScope::Root => local_root,
            SpanScope::All => true,
        };
        let start = if config.records.is_some() {
            SystemTime::now()
        } else {
            SystemTime::UNIX_EPOCH
        };

        let won = {
            let ext = span.extensions();
            let data = ext.get::<SpanData>()?;
            let labels = if own_labels_wanted {
                let name_id = if config.span_name_label {
                    context::intern_name(&data.name)
                } else {
                    0
                };
                match config.scope {
                    SpanScope::None => SpanLabels::new(0, 0, name_id),
                    _ if own_id == 0 => SpanLabels::NONE,
                    _ => {
                        let trace_id = if config.trace_id_label {
                            otel_trace_id
                        } else {
                            0
                        };
                        SpanLabels::new(own_id, trace_id, name_id)
                    }
                }
            } else {
                parent.map(|p| p.labels).unwrap_or(SpanLabels::NONE)
            };
            let resolved = Resolved {
                labels,
                own_id,
                otel_trace_id,
                local_root,
                start,
            };
            match data.resolved.set(resolved) {
                Ok(()) => Ok(resolved),
                Err(_) => Err(data.resolved.get().copied()),
            }
        };
        match won {
            Ok(resolved) => {
                if own_id != 0 && has_otel {
                    if let Some(cx) = &otel {
                        cx.span()
                            .set_attribute(KeyValue::new(PROFILE_ID_ATTRIBUTE, hex16(own_id)));
                    }
                }
                Some(resolved)
            }
            Err(other) => other,
        }
    }
}

/// Our per-span data, in the span's extensions.
#[derive(Debug)]
struct SpanData {
    /// `otel.name` if the span has it, else the metadata name.
    name: Cow<'static, str>,
    /// Settled at the first enter (on any thread).
    resolved: OnceLock<Resolved>,
}

#[derive(Clone, Copy, Debug)]
struct Resolved {
    /// What the slot holds while this span runs.
    labels: SpanLabels,
    /// This span's own profile id (0: none, e.g. unsampled or not a root).
    own_id: u64,
    /// The OTel trace id, 0 without OTel.
    otel_trace_id: u128,
    local_root: bool,
    /// First enter (only measured in local-directory mode).
    start: SystemTime,
}

/// Finds an `otel.name` field value.
struct OtelName(Option<String>);

impl Visit for OtelName {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == OTEL_NAME_FIELD {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == OTEL_NAME_FIELD {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

fn hex16(id: u64) -> String {
    format!("{id:016x}")
}

/// A random non-zero span id: splitmix64 over a counter, seeded once from
/// std's `RandomState`. Distinct counters give distinct outputs.
fn mint_span_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(std::process::id() as u64);
        hasher.finish()
    });
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if z != 0 {
            return z;
        }
    }
}

impl<S> Layer<S> for SpanProfileLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        if self.config.is_some() {
            let _ = self.dispatch.set(subscriber.downgrade());
        }
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if self.config.is_none() {
            return;
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        let metadata = attrs.metadata();
        let mut name = Cow::Borrowed(metadata.name());
        if metadata.fields().field(OTEL_NAME_FIELD).is_some() {
            let mut visitor = OtelName(None);
            attrs.record(&mut visitor);
            if let Some(otel_name) = visitor.0 {
                name = Cow::Owned(otel_name);
            }
        }
        span.extensions_mut().insert(SpanData {
            name,
            resolved: OnceLock::new(),
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if self.config.is_none() {
            return;
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        match span.metadata().fields().field(OTEL_NAME_FIELD) {
            Some(field) if values.contains(&field) => {}
            _ => return,
        }
        let mut visitor = OtelName(None);
        values.record(&mut visitor);
        let Some(otel_name) = visitor.0 else {
            return;
        };
        let mut ext = span.extensions_mut();
        if let Some(data) = ext.get_mut::<SpanData>() {
            // After the first enter the labels are settled; the name stays.
            if data.resolved.get().is_none() {
                data.name = Cow::Owned(otel_name);
            }
        }
    }

    #[inline(always)]
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if !self.active {
            return;
        }
        let span_id = id.into_u64();
        if !stack::enter_cached(self.key(), span_id) {
            self.enter_uncached(span_id, id, &ctx);
        }
    }

    #[inline(always)]
    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        if self.active {
            stack::exit(id.into_u64());
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(config) = &self.config else {
            return;
        };
        // Before the Registry can hand this id to a new span.
        stack::closed(id.into_u64());
        let LayerConfig {
            records: Some(records),
            scope,
            ..
        } = config
        else {
            return;
        };
        if *scope == SpanScope::None {
            return;
        }
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let ext = span.extensions();
        let Some(data) = ext.get::<SpanData>() else {
            return;
        };
        let Some(resolved) = data.resolved.get() else {
            return;
        };
        if !resolved.local_root || resolved.own_id == 0 {
            return;
        }
        records.record(SpanRecord {
            span_id: resolved.own_id,
            trace_id: resolved.otel_trace_id,
            // The remote parent's id is inside tracing-opentelemetry's
            // private span data; not reachable through its public API.
            parent_span_id: 0,
            name: data.name.to_string(),
            start: resolved.start,
            end: SystemTime::now(),
        });
    }
}

/// Per-thread state: the stack of saved slot values and a small cache of
/// settled labels, so that a warm enter needs no Registry lookup.
mod stack {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};

    use crate::context::{self, SpanLabels};

    /// Deeper nesting on one thread leaves the slot unchanged.
    pub(super) const CAPACITY: usize = 32;
    /// Direct-mapped label cache size (a power of two).
    const CACHE: usize = 32;
    /// Close counters (a power of two), one per cache line.
    const EPOCHS: usize = 256;

    #[derive(Clone, Copy)]
    struct Entry {
        span: u64,
        saved: SpanLabels,
    }

    const EMPTY: Entry = Entry {
        span: 0,
        saved: SpanLabels::NONE,
    };

    /// A span's settled labels, valid while `epoch` matches the close counter
    /// of the span's id. `layer` tells apart equal ids of different
    /// subscribers (span ids are per Registry).
    #[derive(Clone, Copy)]
    struct Cached {
        layer: usize,
        span: u64,
        epoch: u64,
        labels: SpanLabels,
    }

    const NO_CACHE: Cached = Cached {
        layer: 0,
        span: 0,
        epoch: 0,
        labels: SpanLabels::NONE,
    };

    struct Stack {
        len: Cell<usize>,
        /// Enters beyond `CAPACITY` not yet exited.
        overflow: Cell<usize>,
        entries: [Cell<Entry>; CAPACITY],
        cache: [Cell<Cached>; CACHE],
    }

    thread_local! {
        // const-initialised, no destructor: plain TLS, no lazy registration.
        static STACK: Stack = const {
            Stack {
                len: Cell::new(0),
                overflow: Cell::new(0),
                entries: [const { Cell::new(EMPTY) }; CAPACITY],
                cache: [const { Cell::new(NO_CACHE) }; CACHE],
            }
        };
    }

    /// A counter on its own cache line, so closes on other threads do not
    /// slow down enters of unrelated spans.
    #[repr(align(64))]
    struct Epoch(AtomicU64);

    /// Bumped whenever a span whose id hashes here closes. A Registry reuses
    /// span ids after a close, so a cached entry is valid only while the
    /// counter of its id is unchanged.
    static CLOSES: [Epoch; EPOCHS] = [const { Epoch(AtomicU64::new(0)) }; EPOCHS];

    #[inline(always)]
    fn hash(span: u64) -> u64 {
        span.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    #[inline(always)]
    fn epoch_of(span: u64) -> &'static AtomicU64 {
        &CLOSES[(hash(span) >> 56) as usize & (EPOCHS - 1)].0
    }

    #[inline(always)]
    fn cache_slot(span: u64) -> usize {
        (hash(span) >> 32) as usize & (CACHE - 1)
    }

    /// The close counter to pass to [`remember`]; read it before looking
    /// the span up.
    #[inline]
    pub(super) fn epoch(span: u64) -> u64 {
        epoch_of(span).load(Ordering::Acquire)
    }

    /// Call from `on_close`, before the Registry can reuse the id.
    #[inline]
    pub(super) fn closed(span: u64) {
        epoch_of(span).fetch_add(1, Ordering::Release);
    }

    /// Caches a span's settled labels for later enters on this thread.
    #[inline]
    pub(super) fn remember(layer: usize, span: u64, epoch: u64, labels: SpanLabels) {
        let _ = STACK.try_with(|stack| {
            stack.cache[cache_slot(span)].set(Cached {
                layer,
                span,
                epoch,
                labels,
            });
        });
    }

    /// Enters with cached labels if this thread has them; `false` if not.
    #[inline]
    pub(super) fn enter_cached(layer: usize, span: u64) -> bool {
        STACK
            .try_with(|stack| {
                let cached = stack.cache[cache_slot(span)].get();
                if cached.span != span
                    || cached.layer != layer
                    || cached.epoch != epoch_of(span).load(Ordering::Acquire)
                {
                    return false;
                }
                push(stack, span, cached.labels);
                true
            })
            .unwrap_or(false)
    }

    /// Installs `labels`, remembering what the slot held.
    #[inline]
    pub(super) fn enter(span: u64, labels: SpanLabels) {
        let _ = STACK.try_with(|stack| push(stack, span, labels));
    }

    #[inline(always)]
    fn push(stack: &Stack, span: u64, labels: SpanLabels) {
        let len = stack.len.get();
        if len >= CAPACITY {
            stack.overflow.set(stack.overflow.get() + 1);
            return;
        }
        let saved = context::replace(labels);
        stack.entries[len].set(Entry { span, saved });
        stack.len.set(len + 1);
    }

    /// Undoes the topmost enter of `span` on this thread.
    #[inline]
    pub(super) fn exit(span: u64) {
        let _ = STACK.try_with(|stack| {
            let len = stack.len.get();
            if stack.overflow.get() == 0 && len > 0 {
                let top = stack.entries[len - 1].get();
                if top.span == span {
                    // The common case: the most recent enter.
                    context::replace(top.saved);
                    stack.len.set(len - 1);
                    return;
                }
            }
            exit_slow(stack, span);
        });
    }

    /// Overflowed stacks, out-of-order exits, and exits without an enter.
    #[cold]
    #[inline(never)]
    fn exit_slow(stack: &Stack, span: u64) {
        let len = stack.len.get();
        // A span with an entry is undone from the stack even while enters
        // beyond the capacity are pending: counting its exit against those
        // instead would leave its entry (and its labels in the slot) behind
        // for good. Only exits of spans without an entry are taken as exits
        // of the uncounted deeper enters.
        let Some(i) = (0..len)
            .rev()
            .find(|&i| stack.entries[i].get().span == span)
        else {
            let overflow = stack.overflow.get();
            if overflow > 0 {
                stack.overflow.set(overflow - 1);
            }
            return;
        };
        let entry = stack.entries[i].get();
        if i + 1 == len {
            context::replace(entry.saved);
        } else {
            // Out of order: a later span still runs, so the slot stays; the
            // entry above takes over what this one saved.
            let mut above = stack.entries[i + 1].get();
            above.saved = entry.saved;
            stack.entries[i + 1].set(above);
            for j in i..len - 1 {
                stack.entries[j].set(stack.entries[j + 1].get());
            }
        }
        stack.len.set(len - 1);
    }

    #[cfg(test)]
    pub(super) fn depth() -> usize {
        STACK.with(|stack| stack.len.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiler::Counters;
    use std::sync::mpsc;
    use std::sync::Arc;
    use tracing_subscriber::prelude::*;

    fn labels(span_id: u64) -> SpanLabels {
        SpanLabels::new(span_id, 0, 0)
    }

    #[test]
    fn stack_in_order_and_out_of_order() {
        let base = context::replace(labels(1));
        stack::enter(10, labels(2));
        stack::enter(11, labels(3));
        assert_eq!(context::current(), labels(3));
        // Out of order: 10 exits while 11 runs.
        stack::exit(10);
        assert_eq!(context::current(), labels(3));
        stack::exit(11);
        assert_eq!(context::current(), labels(1));
        assert_eq!(stack::depth(), 0);
        // Re-entering the same span.
        stack::enter(10, labels(2));
        stack::enter(10, labels(2));
        stack::exit(10);
        assert_eq!(context::current(), labels(2));
        stack::exit(10);
        assert_eq!(context::current(), labels(1));
        // Unknown exits change nothing.
        stack::exit(99);
        assert_eq!(context::current(), labels(1));
        context::replace(base);
    }

    #[test]
    fn stack_overflow_is_bounded_and_recovers() {
        let base = context::current();
        for i in 0..(stack::CAPACITY as u64 + 10) {
            stack::enter(100 + i, labels(100 + i));
        }
        assert_eq!(context::current(), labels(100 + stack::CAPACITY as u64 - 1));
        for i in (0..(stack::CAPACITY as u64 + 10)).rev() {
            stack::exit(100 + i);
        }
        assert_eq!(context::current(), base);
        assert_eq!(stack::depth(), 0);
    }

    #[test]
    fn out_of_order_exit_while_overflowed_restores_the_slot() {
        let base = context::current();
        let cap = stack::CAPACITY as u64;
        for i in 0..cap {
            stack::enter(200 + i, labels(200 + i));
        }
        // One enter beyond the capacity, then the topmost stacked span exits
        // before it (out of order).
        stack::enter(900, labels(900));
        stack::exit(200 + cap - 1);
        assert_eq!(context::current(), labels(200 + cap - 2));
        stack::exit(900);
        for i in (0..cap - 1).rev() {
            stack::exit(200 + i);
        }
        assert_eq!(context::current(), base);
        assert_eq!(stack::depth(), 0);
    }

    #[test]
    fn cache_entries_die_with_their_span() {
        let base = context::current();
        let epoch = stack::epoch(42);
        stack::remember(7, 42, epoch, labels(5));
        assert!(stack::enter_cached(7, 42));
        assert_eq!(context::current(), labels(5));
        stack::exit(42);
        assert!(!stack::enter_cached(8, 42), "another subscriber's id 42");
        stack::closed(42);
        assert!(!stack::enter_cached(7, 42), "span 42 closed");
        assert_eq!(context::current(), base);
    }

    #[test]
    fn reused_span_ids_get_fresh_labels() {
        // The Registry reuses span ids (slab slot + wrapping generation). A
        // worker thread enters span X, caching its labels; X closes; once a
        // new span gets X's id, the worker enters it: it must see new labels.
        let subscriber =
            tracing_subscriber::registry().with(SpanProfileLayer::with_scope(SpanScope::All));
        let (to_worker, work) = mpsc::channel::<tracing::Span>();
        let (to_main, results) = mpsc::channel::<SpanLabels>();
        let worker = std::thread::spawn(move || {
            for span in work {
                let labels = span.in_scope(context::current);
                drop(span);
                to_main.send(labels).unwrap();
            }
        });
        tracing::subscriber::with_default(subscriber, || {
            let first = tracing::info_span!("reuse");
            let first_id = first.id().unwrap();
            to_worker.send(first.clone()).unwrap();
            let first_labels = results.recv().unwrap();
            assert_ne!(first_labels.span_id, 0);
            // The worker has dropped its handle; close X here, so its slab slot
            // is the next one this thread reuses.
            drop(first);
            for _ in 0..1_000_000 {
                let span = tracing::info_span!("reuse");
                if span.id() == Some(first_id.clone()) {
                    to_worker.send(span).unwrap();
                    let labels = results.recv().unwrap();
                    assert_ne!(labels.span_id, 0);
                    assert_ne!(labels, first_labels, "stale labels for a reused id");
                    return;
                }
            }
            panic!("the Registry never reused a span id; the test proves nothing");
        });
        drop(to_worker);
        worker.join().unwrap();
    }

    #[test]
    fn minted_ids_are_distinct_and_nonzero() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| mint_span_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn records_profiled_local_roots_on_close() {
        let (tx, rx) = mpsc::sync_channel(16);
        let counters = Arc::new(Counters::default());
        let layer = SpanProfileLayer::new(LayerConfig {
            scope: SpanScope::Root,
            span_name_label: true,
            trace_id_label: false,
            records: Some(SpanRecordSink {
                tx,
                counters: counters.clone(),
            }),
        });
        let subscriber = tracing_subscriber::registry().with(layer);
        let root_id = tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!("record-root", otel.name = "GET /car");
            let root_id = root.in_scope(|| {
                let root_labels = context::current();
                let child = tracing::info_span!("record-child");
                // Scope root: the child carries the root's labels.
                child.in_scope(|| assert_eq!(context::current(), root_labels));
                root_labels.span_id
            });
            drop(root);
            // A root that is never entered has no id and no record.
            drop(tracing::info_span!("never-entered"));
            root_id
        });
        assert_ne!(root_id, 0);
        let records: Vec<SpanRecord> = rx.try_iter().collect();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].span_id, root_id);
        assert_eq!(records[0].trace_id, 0);
        assert_eq!(records[0].name, "GET /car");
        assert!(records[0].end >= records[0].start);
        assert_eq!(counters.snapshot().dropped_spans, 0);
    }

    #[test]
    fn records_carry_otel_ids() {
        use opentelemetry::trace::TracerProvider as _;
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let (tx, rx) = mpsc::sync_channel(16);
        let layer = SpanProfileLayer::new(LayerConfig {
            scope: SpanScope::All,
            span_name_label: false,
            trace_id_label: false,
            records: Some(SpanRecordSink {
                tx,
                counters: Arc::new(Counters::default()),
            }),
        });
        let subscriber = tracing_subscriber::registry()
            .with(layer)
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!("otel-record-root");
            root.in_scope(|| tracing::info_span!("otel-record-child").in_scope(|| {}));
        });
        let spans = exporter.get_finished_spans().unwrap();
        let root = spans.iter().find(|s| s.name == "otel-record-root").unwrap();
        let records: Vec<SpanRecord> = rx.try_iter().collect();
        // Scope all: only local roots are recorded.
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(
            records[0].span_id,
            u64::from_be_bytes(root.span_context.span_id().to_bytes())
        );
        assert_eq!(
            records[0].trace_id,
            u128::from_be_bytes(root.span_context.trace_id().to_bytes())
        );
        assert_eq!(records[0].name, "otel-record-root");
    }

    #[test]
    fn inert_layer_leaves_the_slot_alone() {
        let subscriber = tracing_subscriber::registry().with(SpanProfileLayer::inert());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("inert");
            let before = context::current();
            span.in_scope(|| assert_eq!(context::current(), before));
        });
    }
}
