//! Labels from span fields: recording the listed fields of a span, and the
//! label set its slot value carries (its own fields merged over its
//! ancestors', the nearest span winning), computed off the hot path.
//!
//! Each span keeps, in its [`SpanData`], its own values and two caches:
//! `raw`, the merged label set of the span and its ancestors (what its
//! children merge over), and `slot`, that set as admitted by the series
//! budget for the span's slot value. Both are tagged with a generation,
//! [`GENERATION`], so a change high up in a tree can invalidate every
//! descendant's cache at once without finding them.
//!
//! `Span::record` of a listed field:
//! - updates the span's own values and drops its caches (under the span's
//!   extension write lock);
//! - if the span was already settled (entered, or an ancestor of an
//!   entered span), invalidates the per-thread enter caches: only the
//!   span's own entries if no descendant has been settled, else all entries
//!   and every span's field caches (a new generation);
//! - writes the new labels into this thread's slot at once if the span is
//!   the innermost entered span here (the usual
//!   `Span::current().record(...)`); other threads, and entered descendants,
//!   pick them up at their next enter.
//!
//! A warm enter never comes here: it finds the whole slot value, label set
//! included, in the per-thread cache (`stack.rs`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::Subscriber;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use super::resolve::SpanData;
use super::{stack, LayerConfig, SpanProfileLayer};
use crate::context;

/// Bumped when a span with settled descendants records a listed field:
/// every cached label set of an older generation is stale.
static GENERATION: AtomicU32 = AtomicU32::new(1);

/// A span's own listed field values and its label-set caches.
#[derive(Debug, Default)]
pub(super) struct FieldState {
    /// Own values, by key (keys from the layer's list); never empty values.
    own: Vec<(&'static str, Box<str>)>,
    /// A descendant has read this span's label set.
    has_children: AtomicBool,
    /// `generation << 32 | set id`: own values merged over the ancestors'.
    raw: AtomicU64,
    /// `generation << 32 | set id`: `raw` as admitted for the slot.
    slot: AtomicU64,
}

impl FieldState {
    /// The span's own values, from its creation attributes.
    pub(super) fn new(own: Vec<(&'static str, Box<str>)>) -> Self {
        FieldState {
            own,
            ..FieldState::default()
        }
    }
}

fn pack(generation: u32, id: u32) -> u64 {
    u64::from(generation) << 32 | u64::from(id)
}

/// The id cached in `cell` if it is of `generation`.
fn cached(cell: &AtomicU64, generation: u32) -> Option<u32> {
    let v = cell.load(Ordering::Acquire);
    ((v >> 32) as u32 == generation).then_some(v as u32)
}

/// Collects the values of the listed fields: strings as written, numbers
/// and booleans formatted, `%x` with `Display` and `?x` with `Debug`. An
/// empty value unsets the span's own value.
pub(super) struct FieldValues<'a> {
    keys: &'a [&'static str],
    pub(super) found: Vec<(&'static str, String)>,
}

impl<'a> FieldValues<'a> {
    pub(super) fn new(keys: &'a [&'static str]) -> Self {
        FieldValues {
            keys,
            found: Vec::new(),
        }
    }

    fn put(&mut self, field: &Field, value: impl FnOnce() -> String) {
        if let Some(key) = self.keys.iter().find(|k| **k == field.name()) {
            self.found.push((key, value()));
        }
    }

    /// The values found, as a span's own values (empty ones dropped).
    pub(super) fn into_own(self) -> Vec<(&'static str, Box<str>)> {
        self.found
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.into_boxed_str()))
            .collect()
    }
}

impl Visit for FieldValues<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, || value.to_owned());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, || value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, || value.to_string());
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.put(field, || value.to_string());
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.put(field, || value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, || value.to_string());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, || value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, || format!("{value:?}"));
    }
}

/// `true` if the span's metadata has any of the listed fields.
pub(super) fn lists_any(keys: &[&'static str], fields: &tracing::field::FieldSet) -> bool {
    !keys.is_empty() && fields.iter().any(|f| keys.contains(&f.name()))
}

impl SpanProfileLayer {
    /// The label set the span's slot value carries, as admitted by the
    /// series budget together with `name_id` (the name in its slot).
    /// Cached in the span; the first call per generation merges and interns.
    pub(super) fn slot_fields<S>(&self, span: &SpanRef<'_, S>, name_id: u32) -> u32
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let generation = GENERATION.load(Ordering::Acquire);
        {
            let ext = span.extensions();
            let Some(data) = ext.get::<SpanData>() else {
                return 0;
            };
            if let Some(id) = cached(&data.fields.slot, generation) {
                return id;
            }
        }
        let raw = self.raw_fields(span, generation, false);
        let admitted = context::admit(name_id, raw);
        let ext = span.extensions();
        if let Some(data) = ext.get::<SpanData>() {
            // Unless a record dropped `raw` meanwhile (under the write lock,
            // which this read lock excludes).
            if cached(&data.fields.raw, generation) == Some(raw) {
                data.fields
                    .slot
                    .store(pack(generation, admitted), Ordering::Release);
            }
        }
        admitted
    }

    /// The span's own values merged over its ancestors' (unadmitted).
    fn raw_fields<S>(&self, span: &SpanRef<'_, S>, generation: u32, as_parent: bool) -> u32
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        {
            let ext = span.extensions();
            let Some(data) = ext.get::<SpanData>() else {
                return 0;
            };
            if as_parent {
                // Before reading: a record that misses this flag has
                // already dropped the cache read below (see `record_fields`).
                data.fields.has_children.store(true, Ordering::SeqCst);
            }
            if let Some(id) = cached(&data.fields.raw, generation) {
                return id;
            }
        }
        let parent = span
            .parent()
            .map(|p| self.raw_fields(&p, generation, true))
            .unwrap_or(0);
        let ext = span.extensions();
        let Some(data) = ext.get::<SpanData>() else {
            return parent;
        };
        let own = &data.fields.own;
        let id = if own.is_empty() {
            parent
        } else {
            let pairs: Vec<(&'static str, &str)> = own.iter().map(|(k, v)| (*k, &**v)).collect();
            context::merge_fields(parent, &pairs)
        };
        data.fields
            .raw
            .store(pack(generation, id), Ordering::Release);
        id
    }

    /// `Span::record` of listed fields (see the module docs).
    pub(super) fn record_fields<S>(
        &self,
        config: &LayerConfig,
        span: &SpanRef<'_, S>,
        values: &Record<'_>,
    ) where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let fields = span.metadata().fields();
        let listed = config
            .span_labels
            .iter()
            .any(|k| fields.field(k).is_some_and(|f| values.contains(&f)));
        if !listed {
            return;
        }
        let mut visitor = FieldValues::new(&config.span_labels);
        values.record(&mut visitor);
        let (has_children, resolved, old_slot) = {
            let mut ext = span.extensions_mut();
            let Some(data) = ext.get_mut::<SpanData>() else {
                return;
            };
            let state = &mut data.fields;
            for (key, value) in visitor.found {
                state.own.retain(|(k, _)| *k != key);
                if !value.is_empty() {
                    state.own.push((key, value.into_boxed_str()));
                }
            }
            *state.raw.get_mut() = 0;
            // The label set its enters wrote (whatever the generation).
            let old_slot = std::mem::take(state.slot.get_mut()) as u32;
            (
                state.has_children.load(Ordering::SeqCst),
                data.resolved.get().copied(),
                old_slot,
            )
        };
        // Never settled: no cache anywhere holds its labels (a descendant
        // settles its ancestors first).
        let Some(resolved) = resolved else {
            return;
        };
        let span_id = span.id().into_u64();
        if has_children {
            GENERATION.fetch_add(1, Ordering::AcqRel);
            stack::invalidate_all();
        } else {
            stack::invalidate(span_id);
        }
        // At once if the slot holds exactly what this span's enter wrote
        // (not, say, `with_labels` on top of it).
        if stack::innermost(span_id, resolved.labels.with_fields(old_slot)) {
            let fields = self.slot_fields(span, resolved.labels.name_id);
            stack::retarget_innermost(span_id, resolved.labels.with_fields(fields));
        }
    }
}
