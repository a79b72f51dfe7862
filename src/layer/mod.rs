//! The tracing layer: puts the running span's id into the thread slot.
//!
//! Everything users need to know is on [`SpanProfileLayer`]. Inside:
//! - this file: the `Layer` impl (per-span work once, at the first enter,
//!   kept in the span's extensions);
//! - `resolve.rs`: settling a span's ids and labels at its first enter;
//! - `fields.rs`: labels from span fields (recorded values, merged label
//!   sets, `Span::record`);
//! - `stack.rs`: the per-thread stack of saved slot values and the label
//!   cache that makes warm enters lookup-free.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::SystemTime;

use tracing::dispatcher::WeakDispatch;
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::SpanScope;
use crate::export::span_index::{ClosedSpan, SpanIndexQueue};
use fields::{FieldState, FieldValues};
use resolve::{OtelName, SpanData};

mod fields;
#[cfg(all(test, feature = "otel"))]
mod otel_tests;
mod resolve;
mod stack;
#[cfg(test)]
mod tests;
pub(crate) mod wall;
#[cfg(test)]
mod wall_tests;

/// The OpenTelemetry attribute linking a span to its profile.
#[cfg(feature = "otel")]
pub(crate) const PROFILE_ID_ATTRIBUTE: &str = "pyroscope.profile.id";

/// A span's OpenTelemetry context (feature `otel`).
#[cfg(feature = "otel")]
type OtelContext = opentelemetry::Context;
/// Without the `otel` feature a span never has one.
#[cfg(not(feature = "otel"))]
type OtelContext = std::convert::Infallible;

/// The field `tracing-opentelemetry` uses to override a span's name.
const OTEL_NAME_FIELD: &str = "otel.name";

/// What the layer needs to know; the builder fills it from the config.
#[derive(Clone, Debug)]
pub(crate) struct LayerConfig {
    pub(crate) scope: SpanScope,
    pub(crate) span_name_label: bool,
    pub(crate) trace_id_label: bool,
    /// Span fields that become sample labels (interned key names).
    pub(crate) span_labels: std::sync::Arc<[&'static str]>,
    /// Set when a sink keeps a span index: closed profiled root spans go
    /// here.
    pub(crate) records: Option<SpanIndexQueue>,
    /// Wall time on: measure awaiting time (`wall.rs`).
    pub(crate) wall: bool,
    /// Set `pyroscope.profile.id` at the first enter of every sampled span
    /// that has an id, samples or not (`PYROSCOPE_PROFILE_ID_ALWAYS`).
    pub(crate) profile_id_always: bool,
}

/// The layer to add to a `tracing_subscriber::Registry`: puts the running
/// span's id into the thread slot, so CPU samples carry it.
///
/// On every span enter it writes the span's labels (`span_id`, `trace_id`,
/// `span_name`) into this thread's slot, where the sampler's signal handler reads them at the
/// moment it takes a sample. On exit it puts back exactly what was there
/// before. Once a profiled span has a sample, it also sets the
/// OpenTelemetry attribute `pyroscope.profile.id` to the same 16-hex id, so
/// Grafana's "Profiles for this span" finds the samples (see
/// [below](#pyroscopeprofileid-only-on-spans-with-samples)).
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
/// # Labels from span fields
///
/// List span fields with `PYROSCOPE_SPAN_LABELS=vehicle,region` (or
/// [`Builder::span_labels`](crate::Builder::span_labels)), and each becomes
/// a sample label of the same name, like Go's `pprof.Do` labels or the
/// `tag_wrapper` of Pyroscope's other SDKs:
///
/// ```
/// # fn find_nearest_vehicle() {}
/// # let kind = "car";
/// // PYROSCOPE_SPAN_LABELS=vehicle
/// let span = tracing::info_span!("GET /car", vehicle = %kind);
/// span.in_scope(|| {
///     // CPU samples here, and in every descendant span, carry vehicle="car".
///     find_nearest_vehicle();
/// });
///
/// // Or later, e.g. once the request is parsed:
/// let span = tracing::info_span!("order", vehicle = tracing::field::Empty);
/// let _entered = span.enter();
/// span.record("vehicle", "bike"); // labels samples from here on
/// ```
///
/// - **Where.** A listed field recorded on a span, at creation or with
///   `Span::record`, labels every sample taken while that span or any of its
///   descendants is entered, on any thread and across `.await`s
///   (`#[instrument(fields(vehicle = %kind))]` works the same).
/// - **Nearest wins.** A descendant that sets the same key overrides it for
///   its own subtree; other keys are inherited (`vehicle` from the child,
///   `region` from the parent).
/// - **Independent of the scope.** With scope `root`, a child's `vehicle`
///   still labels its samples (they keep the root's `span_id` and
///   `span_name`); with scope `none`, fields label samples too.
/// - **`Span::record`** takes effect at once on the thread that records it
///   when the span is the innermost span entered there (the usual
///   `Span::current().record(..)`); elsewhere (another thread that has it
///   entered, descendants entered now, or the span itself while a child is
///   entered on top of it) at the next enter. An empty string unsets the
///   span's own value.
/// - **Values.** Strings as written, integers, floats and booleans
///   formatted, `%x` with `Display`, `?x` with `Debug`; cut to the server's
///   2048 bytes. Each key keeps at most `PYROSCOPE_SPAN_LABEL_VALUES`
///   (default 50) distinct values, later ones are sent as `other`; and
///   combinations of span name and values share the series budget of
///   `PYROSCOPE_MAX_SPAN_NAMES` (see [`from_env`](crate::from_env)).
/// - **Cost.** The label set is merged and interned once per span, off the
///   hot path (at its first enter, or when a listed field is recorded), and
///   cached like the ids: enter and exit stay lookup-free and allocation-free.
///   A layer with no span labels listed does no extra work at all; under
///   one that lists some, a span without listed fields only looks up its
///   parent's label set once, at its first enter.
/// - **Without spans**, [`context::with_labels`](crate::context::with_labels)
///   labels a block of code the same way.
///
/// # `pyroscope.profile.id`: only on spans with samples
///
/// The attribute goes on a span only once it has at least one sample of
/// any profile type, so Grafana never offers a "Profiles for this span"
/// button that opens an empty graph (most short request spans never get a
/// CPU sample).
///
/// - **When.** At the first *exit* after the span's first sample. The
///   signal handler counts samples per thread; the layer reads the count
///   at enter and compares it at exit (a load each, only until the id is
///   set). A sample taken in a descendant (which carries the root's
///   `span_id` under scope `root`) sets the root's attribute at the
///   descendant's exit. With wall time on, awaiting time counts as a
///   sample, and so do blocked and runnable samples of the wall sampler.
/// - **Never at creation nor at close.** Setting it in `on_new_span` would
///   start the OpenTelemetry span early and lose a later `set_parent`; at
///   `on_close`, tracing-opentelemetry may already have exported the span.
/// - **Layer order.** Either order works: `tracing-opentelemetry`'s layer
///   before this one (`registry().with(otel).with(profiling)`) runs its
///   `on_exit` first and keeps the span open until its close; after this
///   one, this layer's exit runs first. Both see the attribute before the
///   span is exported. A sample taken after the span's last exit (a
///   detached child task still running after its root closed) cannot
///   mark a span that was already exported.
/// - **`PYROSCOPE_PROFILE_ID_ALWAYS=true`**
///   ([`Builder::profile_id_always`](crate::Builder::profile_id_always))
///   restores "every sampled root span": the attribute is set at the
///   span's first enter, as Go's and Java's span profilers do.
///
/// # Wall time: awaiting
///
/// With wall time on (`PYROSCOPE_PROFILING_WALLTIME_ENABLED=true`,
/// [`Builder::wall_time`](crate::Builder::wall_time)), the layer also
/// measures *awaiting* time: the time a span is entered on no thread, such
/// as an `Instrumented` future that returned `Pending` and waits to be
/// polled again. No thread sampler can see it, since nothing runs; the
/// layer knows exactly when the span's task is polled and when it is not.
///
/// - **Per local root** (per span under scope `all`): the time from the
///   exit that leaves the span entered on no thread to its next enter,
///   measured with the monotonic clock, goes into the `wall` profile with
///   the span's labels (`span_id`, `span_name`, span fields).
/// - **Its stack** (leaf first): a synthetic frame `[awaiting]`, then the
///   *await site* (the innermost span exited last before the task went
///   idle, as `name (file:line)` of its callsite, e.g.
///   `dispatch (src/work.rs:42)`), then each enclosing span up to the local
///   root.
/// - **Which site.** An await inside no instrumented future of its own is
///   credited to the enclosing span (a child span that already finished
///   is not the site). `join!` and `select!` poll several branches in one
///   poll: the branch polled and exited last gets the whole wait.
/// - **When it is sent.** At the span's close, and at the end of every
///   upload interval for spans still open (a span idle for minutes shows
///   in the intervals it waited in). The time between a span's last exit
///   and its close is not awaiting.
/// - **Cost.** Enter and exit stay allocation-free and lock-free: a
///   compare-and-swap on the span's record, and a clock read when the span
///   leaves or ends an idle episode. With wall time off they do what they
///   did before (one more branch on a flag). `BENCHMARKS.md` has figures.
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
    /// `config.wall`: awaiting time is measured.
    wall: bool,
    /// `None`: inert.
    config: Option<LayerConfig>,
    /// The dispatch this layer lives in, to reach the OpenTelemetry layer.
    dispatch: OnceLock<WeakDispatch>,
}

impl SpanProfileLayer {
    pub(crate) fn new(config: LayerConfig) -> Self {
        SpanProfileLayer {
            active: true,
            wall: config.wall,
            config: Some(config),
            dispatch: OnceLock::new(),
        }
    }

    pub(crate) fn inert() -> Self {
        SpanProfileLayer {
            active: false,
            wall: false,
            config: None,
            dispatch: OnceLock::new(),
        }
    }

    /// An active layer without a profiler: it writes the thread slot only
    /// (`span_name` on, `trace_id` off). No sampler counts samples in these
    /// tests, so `pyroscope.profile.id` is set at the first enter
    /// (`PYROSCOPE_PROFILE_ID_ALWAYS`); tests of the default switch it off.
    #[cfg(test)]
    pub(crate) fn with_scope(scope: SpanScope) -> Self {
        Self::new(LayerConfig {
            scope,
            span_name_label: true,
            trace_id_label: false,
            span_labels: std::sync::Arc::new([]),
            records: None,
            wall: false,
            profile_id_always: true,
        })
    }

    /// Switches awaiting time (active layers only).
    #[cfg(test)]
    pub(crate) fn with_wall(mut self, on: bool) -> Self {
        if let Some(config) = &mut self.config {
            config.wall = on;
            self.wall = on;
        }
        self
    }

    /// Switches `PYROSCOPE_PROFILE_ID_ALWAYS` (active layers only).
    #[cfg(test)]
    pub(crate) fn with_profile_id_always(mut self, on: bool) -> Self {
        if let Some(config) = &mut self.config {
            config.profile_id_always = on;
        }
        self
    }

    /// Lists span fields that become labels (active layers only).
    #[cfg(test)]
    pub(crate) fn with_span_labels(mut self, names: &[&str]) -> Self {
        if let Some(config) = &mut self.config {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            config.span_labels = crate::context::configure_span_labels(&names);
        }
        self
    }

    /// Switches the `span_name` label (active layers only).
    #[cfg(test)]
    pub(crate) fn with_span_name_label(mut self, on: bool) -> Self {
        if let Some(config) = &mut self.config {
            config.span_name_label = on;
        }
        self
    }

    /// Switches the `trace_id` label (active layers only).
    #[cfg(test)]
    pub(crate) fn with_trace_id_label(mut self, on: bool) -> Self {
        if let Some(config) = &mut self.config {
            config.trace_id_label = on;
        }
        self
    }

    /// The OpenTelemetry context of a span (this starts the OTel span if it
    /// was not started yet). `None` without an OpenTelemetry layer.
    #[cfg(feature = "otel")]
    fn otel_context(&self, id: &Id) -> Option<OtelContext> {
        let dispatch = match self.dispatch.get().and_then(WeakDispatch::upgrade) {
            Some(dispatch) => dispatch,
            None => tracing::dispatcher::get_default(Dispatch::clone),
        };
        tracing_opentelemetry::get_otel_context(id, &dispatch)
    }

    /// Without the `otel` feature: never an OpenTelemetry context.
    #[cfg(not(feature = "otel"))]
    fn otel_context(&self, _id: &Id) -> Option<OtelContext> {
        None
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
        let Some(config) = &self.config else {
            return;
        };
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
        let fields = if fields::lists_any(&config.span_labels, metadata.fields()) {
            let mut visitor = FieldValues::new(&config.span_labels);
            attrs.record(&mut visitor);
            FieldState::new(visitor.into_own())
        } else {
            FieldState::default()
        };
        span.extensions_mut().insert(SpanData {
            name,
            resolved: OnceLock::new(),
            fields,
            profile_id_set: std::sync::atomic::AtomicBool::new(false),
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(config) = &self.config else {
            return;
        };
        let Some(span) = ctx.span(id) else {
            return;
        };
        if !config.span_labels.is_empty() {
            self.record_fields(config, &span, values);
        }
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
        if !stack::enter_cached(self.key(), span_id, self.wall) {
            self.enter_uncached(span_id, id, &ctx);
        }
    }

    #[inline(always)]
    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if self.active && stack::exit(id.into_u64(), self.wall) == stack::Exited::Sampled {
            self.got_sample(id, &ctx);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(config) = &self.config else {
            return;
        };
        // Before the Registry can hand this id to a new span.
        stack::closed(id.into_u64());
        if config.wall {
            self.close_awaiting(&id, &ctx);
        }
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
        // Scope `all`: every span with its own id is indexed (a child with
        // its local parent's id); otherwise local roots only.
        if resolved.own_id == 0 || (!resolved.local_root && *scope != SpanScope::All) {
            return;
        }
        // The remote parent's id is inside tracing-opentelemetry's private
        // span data, not reachable through its public API: left unset.
        let parent_span_id = if resolved.local_root {
            0
        } else {
            span.parent()
                .and_then(|p| {
                    p.extensions()
                        .get::<SpanData>()
                        .and_then(|d| d.resolved.get().map(|r| r.own_id))
                })
                .unwrap_or(0)
        };
        records.record(ClosedSpan {
            span_id: resolved.own_id,
            trace_id: resolved.otel_trace_id,
            root: resolved.local_root,
            parent_span_id,
            name: data.name.clone(),
            start: resolved.start,
            end: SystemTime::now(),
        });
    }
}
