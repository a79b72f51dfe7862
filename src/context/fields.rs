//! Labels from span fields: interned label sets, the per-key cap on
//! distinct values, and [`with_labels`] for code outside spans.
//!
//! A *label set* is a list of `(key, value)` pairs sorted by key, each key
//! once, e.g. `[("region", "eu"), ("vehicle", "car")]`. Each distinct set is
//! interned once and named by a non-zero `u32`, [`SpanLabels::fields_id`],
//! so the thread slot holds a whole set in four bytes and the signal handler
//! copies it like the span id. Interning takes a lock and may allocate: the
//! layer does it when a span's fields are recorded or at its first enter,
//! never on a warm enter.
//!
//! Each key keeps at most `PYROSCOPE_SPAN_LABEL_VALUES` (default
//! [`DEFAULT_MAX_LABEL_VALUES`]) distinct values; later values are sent as
//! [`OVERFLOW_VALUE`] and counted (`Stats::span_label_overflows`). Values
//! are cut to the server's 2048 bytes ([`truncate_value`]). Which (span name,
//! label set) combinations reach the server is decided by the series budget
//! shared with span names (`admit` in the parent module).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{admit, current, replace, truncate_value, SpanLabels};
use crate::sync::lock;

/// The default cap on distinct values of one span-label key.
///
/// Each value is a series label on the server. Values alone cannot exhaust
/// the series budget (combinations of span name and values share the cap on
/// span names, see [`DEFAULT_MAX_NAMES`](super::DEFAULT_MAX_NAMES)); this cap
/// keeps one high-cardinality key (a user id by mistake) from using up that
/// budget, and bounds the memory of the value tables.
pub(crate) const DEFAULT_MAX_LABEL_VALUES: usize = 50;
/// The value every new value of a key gets once the key's cap is reached.
pub(crate) const OVERFLOW_VALUE: &str = "other";
/// Most interned label sets (memory bound; far above what the series
/// budget lets through).
const MAX_SETS: usize = 1 << 16;
/// Most distinct keys ever interned (key names are leaked, so bounded).
const MAX_KEYS: usize = 256;
/// Most refused values remembered, so each counts once.
const MAX_REFUSED: usize = 100_000;

static MAX_VALUES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_LABEL_VALUES);
static VALUE_OVERFLOWS: AtomicU64 = AtomicU64::new(0);
/// Any keys configured: [`with_labels`] does nothing (takes no lock) until
/// a profiler lists span labels.
static ANY_CONFIGURED: AtomicBool = AtomicBool::new(false);

/// A label set: `(key, value)` pairs sorted by key, each key once.
pub(crate) type LabelSet = Arc<[(&'static str, Arc<str>)]>;

#[derive(Default)]
struct Table {
    /// Every key name ever interned (leaked: at most [`MAX_KEYS`]).
    keys: HashSet<&'static str>,
    /// The keys the running profiler lists (`PYROSCOPE_SPAN_LABELS`).
    configured: Vec<&'static str>,
    /// Admitted values per key.
    values: HashMap<&'static str, HashSet<Arc<str>>>,
    /// Hashes of the (key, value) pairs refused by the cap
    /// ([`refused_hash`](super::refused_hash)), so each counts once.
    refused: HashSet<u64>,
    overflow: Option<Arc<str>>,
    /// Set `id` is `sets[id - 1]`.
    sets: Vec<LabelSet>,
    ids: HashMap<LabelSet, u32>,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

impl Table {
    fn key(&mut self, name: &str) -> Option<&'static str> {
        if let Some(&key) = self.keys.get(name) {
            return Some(key);
        }
        if self.keys.len() >= MAX_KEYS {
            return None;
        }
        let key: &'static str = Box::leak(Box::from(name));
        self.keys.insert(key);
        Some(key)
    }

    /// `value` as admitted for `key`: truncated, or [`OVERFLOW_VALUE`] past
    /// the key's cap.
    fn value(&mut self, key: &'static str, value: &str) -> Arc<str> {
        let value = truncate_value(value);
        let max = MAX_VALUES.load(Ordering::Relaxed);
        let values = self.values.entry(key).or_default();
        if let Some(v) = values.get(&*value) {
            return v.clone();
        }
        if values.len() < max {
            let v: Arc<str> = Arc::from(&*value);
            values.insert(v.clone());
            return v;
        }
        if self.refused.len() < MAX_REFUSED
            && self.refused.insert(super::refused_hash(&[key, &value]))
        {
            VALUE_OVERFLOWS.fetch_add(1, Ordering::Relaxed);
        }
        self.overflow
            .get_or_insert_with(|| Arc::from(OVERFLOW_VALUE))
            .clone()
    }

    fn intern(&mut self, pairs: Vec<(&'static str, Arc<str>)>) -> u32 {
        if pairs.is_empty() {
            return 0;
        }
        if let Some(&id) = self.ids.get(&pairs[..]) {
            return id;
        }
        if self.sets.len() >= MAX_SETS {
            return 0;
        }
        let set: LabelSet = pairs.into();
        self.sets.push(set.clone());
        let id = self.sets.len() as u32;
        self.ids.insert(set, id);
        id
    }

    fn pairs(&self, id: u32) -> Vec<(&'static str, Arc<str>)> {
        id.checked_sub(1)
            .and_then(|i| self.sets.get(i as usize))
            .map(|set| set.to_vec())
            .unwrap_or_default()
    }

    /// `parent`'s pairs, with `own`'s values replacing or adding keys.
    fn merge<'a>(
        &mut self,
        parent: u32,
        own: impl Iterator<Item = (&'static str, &'a str)>,
    ) -> u32 {
        let mut pairs = self.pairs(parent);
        for (key, value) in own {
            if value.is_empty() {
                continue; // the server rejects empty values
            }
            let value = self.value(key, value);
            match pairs.binary_search_by(|(k, _)| k.cmp(&key)) {
                Ok(i) => pairs[i].1 = value,
                Err(i) => pairs.insert(i, (key, value)),
            }
        }
        self.intern(pairs)
    }
}

/// Makes `names` the span-label keys of the running profiler (what
/// [`with_labels`] accepts) and returns them interned, for the layer. The
/// names were checked by the configuration.
pub(crate) fn configure_span_labels(names: &[String]) -> Arc<[&'static str]> {
    let mut table = lock(table());
    let keys: Vec<&'static str> = names.iter().filter_map(|n| table.key(n)).collect();
    table.configured = keys.clone();
    ANY_CONFIGURED.store(!keys.is_empty(), Ordering::Relaxed);
    keys.into()
}

/// Sets the cap on distinct values per key (at least 1). Values already
/// admitted stay.
pub(crate) fn set_max_label_values(max: usize) {
    MAX_VALUES.store(max.max(1), Ordering::Relaxed);
}

/// How many values were sent as [`OVERFLOW_VALUE`] so far (each distinct
/// refused value counts once).
pub(crate) fn value_overflows() -> u64 {
    VALUE_OVERFLOWS.load(Ordering::Relaxed)
}

/// The label set `parent` (0: none) with `own`'s values replacing or
/// adding keys ("the nearest span wins"); returns its id (0 if empty).
/// Keys come from [`configure_span_labels`]; empty values are skipped.
pub(crate) fn merge_fields(parent: u32, own: &[(&'static str, &str)]) -> u32 {
    if own.iter().all(|(_, v)| v.is_empty()) {
        return parent;
    }
    lock(table()).merge(parent, own.iter().copied())
}

/// The label set behind a [`SpanLabels::fields_id`], sorted by key; `None`
/// for 0 or an unknown id.
pub(crate) fn fields_of(id: u32) -> Option<LabelSet> {
    let index = id.checked_sub(1)?;
    lock(table()).sets.get(index as usize).cloned()
}

/// Runs `f` with extra labels on its CPU samples: the `tag_wrapper` of the
/// other Pyroscope SDKs, for code that does not use spans.
///
/// Only keys listed in `PYROSCOPE_SPAN_LABELS` (or
/// [`Builder::span_labels`](crate::Builder::span_labels)) are used; others
/// are ignored, as are all of them while no profiler lists span labels. The
/// labels are merged into this thread's current ones: inside a span they
/// join (and override) the span's field labels, and the span id and name
/// stay. Values follow the span-field rules: truncated, capped per key, and
/// within the series budget.
///
/// The thread's labels are restored exactly when `f` returns or panics.
/// A span entered inside `f` carries its own labels (its fields and its
/// ancestors'), not these: label work that uses spans with span fields.
/// This costs two lock acquisitions per call (interning); for a hot loop,
/// hoist the call out of it. It labels this thread only.
///
/// ```
/// use tracing_pyroscope::context;
///
/// let eta = context::with_labels(&[("vehicle", "car")], || {
///     // CPU samples here carry vehicle="car" (if "vehicle" is listed in
///     // PYROSCOPE_SPAN_LABELS and profiling runs).
///     21 * 2
/// });
/// assert_eq!(eta, 42);
/// ```
pub fn with_labels<R>(labels: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    let _guard = LabelGuard::new(labels);
    f()
}

/// Sets extra labels on this thread until dropped, then restores exactly
/// what the thread had: [`with_labels`] as a guard.
#[must_use = "the labels are removed when the guard is dropped"]
pub(crate) struct LabelGuard {
    /// What to restore; `None` if nothing was changed.
    previous: Option<SpanLabels>,
    /// Restores this thread's slot: must stay on this thread.
    _not_send: PhantomData<*const ()>,
}

impl LabelGuard {
    /// Merges `labels` (those whose key is a configured span label) into
    /// this thread's labels until the guard is dropped.
    pub(crate) fn new(labels: &[(&str, &str)]) -> Self {
        let unchanged = LabelGuard {
            previous: None,
            _not_send: PhantomData,
        };
        if labels.is_empty() || !ANY_CONFIGURED.load(Ordering::Relaxed) {
            return unchanged;
        }
        let now = current();
        let fields = {
            let mut table = lock(table());
            let configured = table.configured.clone();
            let own: Vec<(&'static str, &str)> = labels
                .iter()
                .filter_map(|(k, v)| configured.iter().find(|c| **c == *k).map(|c| (*c, *v)))
                .collect();
            if own.iter().all(|(_, v)| v.is_empty()) {
                return unchanged;
            }
            table.merge(now.fields_id, own.into_iter())
        };
        let fields = admit(now.name_id, fields);
        LabelGuard {
            previous: Some(replace(now.with_fields(fields))),
            _not_send: PhantomData,
        }
    }
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            replace(previous);
        }
    }
}

impl fmt::Debug for LabelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabelGuard")
            .field("previous", &self.previous)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels_of(id: u32) -> Vec<(String, String)> {
        fields_of(id)
            .map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn key(name: &str) -> &'static str {
        lock(table()).key(name).unwrap()
    }

    #[test]
    fn nearest_value_wins_and_sets_are_canonical() {
        let (v, r) = (key("fields-test-vehicle"), key("fields-test-region"));
        let outer = merge_fields(0, &[(v, "car"), (r, "eu")]);
        let inner = merge_fields(outer, &[(v, "bike")]);
        assert_eq!(
            labels_of(inner),
            [
                ("fields-test-region".into(), "eu".into()),
                ("fields-test-vehicle".into(), "bike".into())
            ]
        );
        // The same set built another way has the same id.
        assert_eq!(merge_fields(0, &[(r, "eu"), (v, "bike")]), inner);
        // Nothing of its own (or only empty values): the parent's set.
        assert_eq!(merge_fields(outer, &[]), outer);
        assert_eq!(merge_fields(outer, &[(v, "")]), outer);
        assert_eq!(merge_fields(0, &[]), 0);
        assert_ne!(outer, 0);
        assert!(fields_of(0).is_none());
    }

    #[test]
    fn values_are_capped_per_key_and_truncated() {
        let k = key("fields-test-capped");
        let before = value_overflows();
        let max = MAX_VALUES.load(Ordering::Relaxed);
        for i in 0..max {
            let id = merge_fields(0, &[(k, &format!("v{i}"))]);
            assert_eq!(labels_of(id)[0].1, format!("v{i}"));
        }
        let id = merge_fields(0, &[(k, "one-too-many")]);
        assert_eq!(labels_of(id)[0].1, OVERFLOW_VALUE);
        merge_fields(0, &[(k, "one-too-many")]);
        assert!(value_overflows() > before);
        // Admitted values stay admitted.
        assert_eq!(labels_of(merge_fields(0, &[(k, "v0")]))[0].1, "v0");

        let long = "x".repeat(5000);
        let id = merge_fields(0, &[(key("fields-test-long"), &long)]);
        let value = &labels_of(id)[0].1;
        assert!(value.len() <= super::super::MAX_VALUE_LEN && value.ends_with('…'));
    }
}
