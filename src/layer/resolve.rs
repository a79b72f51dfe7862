//! Settling a span's labels at its first enter: its ids (OpenTelemetry's,
//! or minted), whether it is a local root, which labels its samples carry
//! under the configured scope, and the `pyroscope.profile.id` attribute.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::Id;
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use super::fields::FieldState;
use super::stack::Track;
use super::{stack, wall, LayerConfig, SpanProfileLayer, OTEL_NAME_FIELD};
use crate::config::SpanScope;
use crate::context::{self, SpanLabels};

impl SpanProfileLayer {
    /// Tells apart equal span ids of different subscribers in the
    /// per-thread cache: the layer's address inside its subscriber.
    #[inline(always)]
    pub(super) fn key(&self) -> usize {
        self as *const Self as usize
    }

    /// First enter on this thread (or the cache entry was evicted): look the
    /// span up, settle its labels if this is its first enter anywhere.
    #[cold]
    #[inline(never)]
    pub(super) fn enter_uncached<S>(&self, span_id: u64, id: &Id, ctx: &Context<'_, S>)
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
                Some(data) => data
                    .resolved
                    .get()
                    .map(|r| (*r, data.profile_id_set.load(Ordering::Relaxed))),
                None => return,
            }
        };
        let (resolved, id_set) = match cached {
            Some(cached) => cached,
            None => match self.resolve(config, &span) {
                Some(resolved) => (resolved, config.profile_id_always),
                None => return,
            },
        };
        let labels = resolved.labels;
        // Span labels: the span's own fields merged over its ancestors'
        // (cached in the span; a span without any costs nothing here).
        let labels = if config.span_labels.is_empty() {
            labels
        } else {
            labels.with_fields(self.slot_fields(&span, labels.name_id))
        };
        // Watch the sample count until the label owner has its profile
        // id (a child learns that its owner has one at its first sampled
        // exit, in `got_sample`).
        let track = Track::new(
            resolved.record,
            resolved.chain,
            labels.span_id != 0
                && resolved.has_otel
                && !config.profile_id_always
                && !(resolved.own_id == labels.span_id && id_set),
        );
        if resolved.record != 0 {
            wall::set_labels(resolved.record, labels);
        }
        stack::remember(self.key(), span_id, epoch, labels, track);
        stack::enter(span_id, labels, track, self.wall);
    }

    /// A span exited after a sample was taken while it was entered (or it
    /// ended an awaiting episode), and its label owner (itself, or its
    /// local root under scope `root`) may still lack `pyroscope.profile.id`:
    /// set it now, once per owner. Off the hot path: once per span and
    /// thread at most.
    #[cold]
    #[inline(never)]
    pub(super) fn got_sample<S>(&self, id: &Id, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        stack::unwatch(self.key(), id.into_u64());
        let Some(span) = ctx.span(id) else {
            return;
        };
        let owner_id = {
            let ext = span.extensions();
            match ext.get::<SpanData>().and_then(|d| d.resolved.get()) {
                Some(r) => r.labels.span_id,
                None => return,
            }
        };
        if owner_id == 0 {
            return;
        }
        let mut owner = None;
        for s in span.scope() {
            let ext = s.extensions();
            let Some(data) = ext.get::<SpanData>() else {
                continue;
            };
            let Some(r) = data.resolved.get() else {
                continue;
            };
            if r.own_id == owner_id {
                if r.has_otel && !data.profile_id_set.swap(true, Ordering::AcqRel) {
                    owner = Some(s.id());
                }
                break;
            }
        }
        // No extension guard held: the OpenTelemetry layer takes its own.
        if let Some(owner) = owner {
            if let Some(cx) = self.otel_context(&owner) {
                set_profile_id(&cx, owner_id);
            }
        }
    }

    /// A span closes: its awaiting record (if any) credits the last idle
    /// episode, emits and is freed.
    pub(super) fn close_awaiting<S>(&self, id: &Id, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let resolved = ctx.span(id).and_then(|span| {
            let ext = span.extensions();
            ext.get::<SpanData>()
                .and_then(|d| d.resolved.get())
                .copied()
        });
        if let Some(r) = resolved {
            if r.chain != 0 {
                stack::site_closed(r.chain, r.parent_chain);
            }
            if r.record != 0 {
                wall::close(r.record);
            }
        }
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
        let (otel_span_id, otel_trace_id, otel_sampled) =
            otel.as_ref().map_or((0, 0, false), otel_ids);
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
            let parent_chain = match (&parent, local_root) {
                (Some(p), false) => p.chain,
                _ => 0,
            };
            let (chain, record) = if config.wall {
                let chain = wall::chain(parent_chain, span.metadata());
                let record = if own_labels_wanted && labels != SpanLabels::NONE {
                    wall::alloc(chain, labels)
                } else {
                    0
                };
                (chain, record)
            } else {
                (0, 0)
            };
            let resolved = Resolved {
                labels,
                own_id,
                otel_trace_id,
                local_root,
                start,
                has_otel,
                chain,
                parent_chain,
                record,
            };
            match data.resolved.set(resolved) {
                Ok(()) => Ok(resolved),
                Err(_) => Err((data.resolved.get().copied(), record)),
            }
        };
        match won {
            Ok(resolved) => {
                // By default the id goes on at the first exit after the
                // span's first sample (`got_sample`).
                if config.profile_id_always && own_id != 0 && has_otel {
                    if let Some(cx) = &otel {
                        set_profile_id(cx, own_id);
                        if let Some(data) = span.extensions().get::<SpanData>() {
                            data.profile_id_set.store(true, Ordering::Relaxed);
                        }
                    }
                }
                Some(resolved)
            }
            Err((other, record)) => {
                if record != 0 {
                    wall::close(record);
                }
                other
            }
        }
    }
}

/// A span's OpenTelemetry ids: `(span id, trace id, sampled)`, zeros if
/// its context is not valid.
#[cfg(feature = "otel")]
fn otel_ids(cx: &super::OtelContext) -> (u64, u128, bool) {
    use opentelemetry::trace::TraceContextExt as _;
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        (
            u64::from_be_bytes(sc.span_id().to_bytes()),
            u128::from_be_bytes(sc.trace_id().to_bytes()),
            sc.is_sampled(),
        )
    } else {
        (0, 0, false)
    }
}

/// Without the `otel` feature there is no OpenTelemetry context.
#[cfg(not(feature = "otel"))]
fn otel_ids(cx: &super::OtelContext) -> (u64, u128, bool) {
    match *cx {}
}

/// Sets `pyroscope.profile.id` on the span's OpenTelemetry span.
#[cfg(feature = "otel")]
fn set_profile_id(cx: &super::OtelContext, own_id: u64) {
    use opentelemetry::trace::TraceContextExt as _;
    cx.span().set_attribute(opentelemetry::KeyValue::new(
        super::PROFILE_ID_ATTRIBUTE,
        context::span_id_hex(own_id),
    ));
}

#[cfg(not(feature = "otel"))]
fn set_profile_id(cx: &super::OtelContext, _own_id: u64) {
    match *cx {}
}

/// Our per-span data, in the span's extensions.
#[derive(Debug)]
pub(super) struct SpanData {
    /// `otel.name` if the span has it, else the metadata name.
    pub(super) name: Cow<'static, str>,
    /// Settled at the first enter (on any thread).
    pub(super) resolved: OnceLock<Resolved>,
    /// Listed span-field values and the span's label-set caches.
    pub(super) fields: FieldState,
    /// `pyroscope.profile.id` was set (by the first thread to see a
    /// sample, or at the first enter with `PYROSCOPE_PROFILE_ID_ALWAYS`).
    pub(super) profile_id_set: AtomicBool,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Resolved {
    /// What the slot holds while this span runs, but for the span-field
    /// label set (`fields.rs`).
    pub(super) labels: SpanLabels,
    /// This span's own profile id (0: none, e.g. unsampled or not a root).
    pub(super) own_id: u64,
    /// The OTel trace id, 0 without OTel.
    pub(super) otel_trace_id: u128,
    pub(super) local_root: bool,
    /// First enter (only measured in local-directory mode).
    pub(super) start: SystemTime,
    /// The span has an OpenTelemetry context (its trace id is known).
    pub(super) has_otel: bool,
    /// Its chain (`wall.rs`): 0 with wall time off.
    pub(super) chain: u32,
    /// Its parent's chain, 0 for a local root.
    pub(super) parent_chain: u32,
    /// Its awaiting record (`wall.rs`): 0 for none.
    pub(super) record: u32,
}

/// Finds an `otel.name` field value.
pub(super) struct OtelName(pub(super) Option<String>);

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

/// A random non-zero span id: splitmix64 over a counter, seeded once from
/// std's `RandomState`. Distinct counters give distinct outputs.
pub(super) fn mint_span_id() -> u64 {
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
