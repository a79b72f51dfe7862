//! Labels for code that runs outside spans: [`with_labels`], the one
//! public item here (Pyroscope's `tag_wrapper`).
//!
//! Inside the crate, this is the thread span slot: which span is running
//! on this thread, right now. Every thread has one `SpanLabels` record.
//! The tracing layer ([`SpanProfileLayer`]) writes it on span enter and
//! exit; the sampler's `SIGPROF` handler reads it at the very moment it
//! takes a sample. That is what makes labels exact, even for async tasks
//! that hop between worker threads on every poll.
//!
//! The record does not live in a thread local: in a shared library loaded with `dlopen` (a
//! Python or Node extension, any `cdylib`), a thread local is reached
//! through `__tls_get_addr`, which may call `malloc` or take the loader's
//! lock on a thread's first access, and the handler runs on threads that
//! never touched the crate. Each thread's record is an entry of a global,
//! never-freed arena of atomics (`context/slot.rs`): the thread finds it
//! once (a lock, on its first `replace`), the sampler's per-thread timer
//! tells the handler which entry is its thread's, and the entry is returned
//! at thread exit. Writes are double-buffered: the writer fills the
//! inactive copy and then bumps a flip counter, so a signal arriving in the
//! middle of a write sees either the old or the new record, never a torn
//! mix of both, and a reader on another thread can check the counter
//! around its read like a sequence lock.
//!
//! Labels from span fields (`PYROSCOPE_SPAN_LABELS`) ride in the same
//! record as one interned label-set id, `SpanLabels::fields_id`; for code
//! outside spans, [`with_labels`] sets them for a block.
//!
//! [`SpanProfileLayer`]: crate::SpanProfileLayer

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::sync::lock;

mod fields;
mod slot;

pub use fields::with_labels;
pub(crate) use fields::{
    configure_span_labels, merge_fields, set_max_label_values, value_overflows,
};
pub(crate) use fields::{fields_of, DEFAULT_MAX_LABEL_VALUES};
#[cfg_attr(not(tp_sampler), allow(unused_imports))]
pub(crate) use slot::{
    claims as slot_claims, count_sample, current_without_registering, read_slot, release_exited,
    release_slot, set_stack_probe, slot_for_tid, slot_is_current, slots_used, stack_of,
    view as slot_view, SlotRef, SlotView,
};

/// The sample label keys the crate sets, in the order they are written.
///
/// Everything that names a sample label (the profile encoder, the reserved
/// names that static labels may not use, the local report) takes the names
/// from here.
pub(crate) mod keys {
    /// The span id: 16 lowercase hex digits. Pyroscope keeps it per sample
    /// (not as a series label) and Grafana's "Profiles for this span" asks
    /// for it.
    pub(crate) const SPAN_ID: &str = "span_id";
    /// The local root's span name (a series label on the server).
    pub(crate) const SPAN_NAME: &str = "span_name";
    /// The trace id: 32 lowercase hex digits.
    pub(crate) const TRACE_ID: &str = "trace_id";
    /// Every key above.
    pub(crate) const ALL: [&str; 3] = [SPAN_ID, SPAN_NAME, TRACE_ID];
}

/// The labels of the span running on a thread.
///
/// Each public field is one sample label; zero means that label is absent.
/// A record of all zeros ([`SpanLabels::NONE`]) means "no span": samples
/// then carry no span labels. [`for_each_label`](SpanLabels::for_each_label)
/// is the one way to turn a record into `(key, value)` pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub(crate) struct SpanLabels {
    /// The span id (`span_id` label, 16 lowercase hex digits); 0 for none.
    pub(crate) span_id: u64,
    /// The trace id (`trace_id` label, 32 lowercase hex digits); 0 for none.
    pub(crate) trace_id: u128,
    /// An id from [`intern_name`] (`span_name` label); 0 for none.
    pub(crate) name_id: u32,
    /// An interned set of labels from span fields (see [`fields_of`]); 0
    /// for none.
    pub(crate) fields_id: u32,
}

/// `fields_id` values from here up are never interned: they mark a sample
/// taken on one of the profiler's own threads (see
/// [`SpanLabels::profiler_thread`]). Kept inside `fields_id` rather than in
/// a field of its own: `SpanLabels` stays 32 bytes, which the layer copies
/// on every enter and exit (a one-byte field made it 48 and the enter+exit
/// 60% slower).
const THREAD_MARK: u32 = u32::MAX - 0xff;
// The layer's hot path copies `SpanLabels`: keep it at four words.
const _: () = assert!(std::mem::size_of::<SpanLabels>() == 32);

impl SpanLabels {
    /// No span: the value of a fresh thread's slot.
    pub(crate) const NONE: SpanLabels = SpanLabels {
        span_id: 0,
        trace_id: 0,
        name_id: 0,
        fields_id: 0,
    };

    /// Labels for a span.
    pub(crate) const fn new(span_id: u64, trace_id: u128, name_id: u32) -> Self {
        SpanLabels {
            span_id,
            trace_id,
            name_id,
            fields_id: 0,
        }
    }

    /// These labels in a sample taken on one of the profiler's own threads:
    /// not a label (no series), but a root frame naming the thread. The
    /// span's field labels give way to the mark (a span entered on a
    /// profiler thread keeps its id, name and trace id).
    pub(crate) const fn on_profiler_thread(self, thread: ProfilerThread) -> Self {
        SpanLabels {
            fields_id: THREAD_MARK + thread.code() as u32,
            ..self
        }
    }

    /// The profiler thread a sample was taken on, if it was one of them.
    pub(crate) const fn profiler_thread(&self) -> Option<ProfilerThread> {
        if self.fields_id >= THREAD_MARK {
            ProfilerThread::from_code((self.fields_id - THREAD_MARK) as u8)
        } else {
            None
        }
    }

    /// The same labels with the span-field label set `fields_id`.
    pub(crate) const fn with_fields(self, fields_id: u32) -> Self {
        SpanLabels { fields_id, ..self }
    }

    /// Calls `f(key, value)` for every label present, in the order of
    /// [`keys::ALL`], then the span-field labels sorted by key. Ids are
    /// formatted as lowercase hex without allocating; a span name and a
    /// label set are looked up in their tables (a lock each), so call this
    /// off the hot path, once per distinct record.
    pub(crate) fn for_each_label(&self, mut f: impl FnMut(&'static str, &str)) {
        let mut buf = [0u8; 32];
        if self.span_id != 0 {
            f(keys::SPAN_ID, hex(u128::from(self.span_id), 16, &mut buf));
        }
        if let Some(name) = name_of(self.name_id) {
            f(keys::SPAN_NAME, &name);
        }
        if self.trace_id != 0 {
            f(keys::TRACE_ID, hex(self.trace_id, 32, &mut buf));
        }
        if let Some(pairs) = (self.fields_id < THREAD_MARK)
            .then(|| fields_of(self.fields_id))
            .flatten()
        {
            for (key, value) in pairs.iter() {
                f(key, value);
            }
        }
    }
}

/// One of the profiler's own threads.
///
/// Samples taken on them get a root frame of their own,
/// [`frame_name`](ProfilerThread::frame_name), instead of starting at the
/// thread's entry function like every other thread's. The thread's name is
/// not in a pprof stack, and its entry frames (`std` and `tokio`-like
/// wrappers) say nothing about what it is, so without that frame a user
/// could not tell the profiler's cost from the program's. A frame rather
/// than a sample label: a label would be one more series on the server.
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64"),
        not(tracing_pyroscope_unsupported)
    )),
    allow(dead_code)
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ProfilerThread {
    /// `pyroscope-collect`: drains samples, symbolizes, encodes, writes.
    Collector,
    /// `pyroscope-timer`: arms the per-thread CPU timers of new threads.
    Timers,
    /// `pyroscope-upload`: sends profiles to the server.
    Uploader,
    /// `pyroscope-drain`: moves samples from the signal buffer to the
    /// collector's queue.
    Drain,
}

impl ProfilerThread {
    /// Every profiler thread.
    #[cfg(test)]
    pub(crate) const ALL: [ProfilerThread; 4] = [
        ProfilerThread::Collector,
        ProfilerThread::Timers,
        ProfilerThread::Uploader,
        ProfilerThread::Drain,
    ];

    /// A nonzero byte for an arena entry's marker (0: not a profiler
    /// thread).
    pub(crate) const fn code(self) -> u8 {
        match self {
            ProfilerThread::Collector => 1,
            ProfilerThread::Timers => 2,
            ProfilerThread::Uploader => 3,
            ProfilerThread::Drain => 4,
        }
    }

    /// The thread a marker byte stands for.
    pub(crate) const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ProfilerThread::Collector),
            2 => Some(ProfilerThread::Timers),
            3 => Some(ProfilerThread::Uploader),
            4 => Some(ProfilerThread::Drain),
            _ => None,
        }
    }

    /// The root frame of samples taken on this thread. It says what the
    /// thread does and, in parentheses, the thread's name as `top -H`, a
    /// debugger or a log line shows it.
    pub(crate) const fn frame_name(self) -> &'static str {
        match self {
            ProfilerThread::Collector => "tracing-pyroscope: collector (pyroscope-collect)",
            ProfilerThread::Timers => "tracing-pyroscope: timer manager (pyroscope-timer)",
            ProfilerThread::Uploader => "tracing-pyroscope: uploader (pyroscope-upload)",
            ProfilerThread::Drain => "tracing-pyroscope: sample drain (pyroscope-drain)",
        }
    }
}

/// `value` as `digits` lowercase hex digits, written into `buf`.
fn hex(value: u128, digits: usize, buf: &mut [u8; 32]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let out = &mut buf[..digits];
    for (i, b) in out.iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *b = HEX[((value >> shift) & 0xf) as usize];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// `id` as the 16 lowercase hex digits of a `span_id` label.
pub(crate) fn span_id_hex(id: u64) -> String {
    format!("{id:016x}")
}

/// `id` as the 32 lowercase hex digits of a `trace_id` label.
pub(crate) fn trace_id_hex(id: u128) -> String {
    format!("{id:032x}")
}

/// Sets this thread's labels and returns the previous ones, to be restored
/// later with another `replace`. A few nanoseconds; no syscall, no
/// allocation, no lock (a thread's first call registers it: see
/// the [module docs](self)).
#[inline]
pub(crate) fn replace(labels: SpanLabels) -> SpanLabels {
    slot::replace(labels)
}

/// Sets this thread's labels back to ones a [`replace`] returned, without
/// reading the current ones: the layer's exit.
#[inline]
pub(crate) fn restore(labels: SpanLabels) {
    slot::restore(labels);
}

/// Samples taken of this thread so far, any profile type (wrapping): the
/// layer compares two readings to learn whether a span got a sample.
#[inline(always)]
pub(crate) fn own_samples() -> u32 {
    slot::own_samples()
}

/// Counts a sample of the thread whose timer carries `slot_bits`: one
/// relaxed add, async-signal-safe like [`read_in_signal_handler`].
#[inline(always)]
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn count_sample_in_signal_handler(slot_bits: u64) {
    count_sample(SlotRef::from_bits(slot_bits));
}

/// Counts a sample of the calling thread, as the signal handler does.
#[cfg(test)]
pub(crate) fn count_own_sample() {
    if let Some(slot) = slot::own_slot() {
        count_sample(slot);
    }
}

/// This thread's current labels.
#[inline]
pub(crate) fn current() -> SpanLabels {
    slot::current()
}

/// Marks the calling thread as one of the profiler's own: samples taken on
/// it from now on get its root frame. Call it first thing on the thread.
pub(crate) fn mark_profiler_thread(thread: ProfilerThread) {
    slot::mark_profiler_thread(thread);
}

/// The labels for a sample taken by the `SIGPROF` handler on the thread
/// whose timer carries `slot_bits` ([`SlotRef::to_bits`]), with
/// the mark of [`SpanLabels::profiler_thread`] on the profiler's own threads; none if the
/// entry is not that thread's any more.
///
/// No thread-local access, no lock, no allocation: async-signal-safe even
/// when the crate lives in a `dlopen`ed library.
#[inline(always)]
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn read_in_signal_handler(slot_bits: u64) -> SpanLabels {
    read_slot(SlotRef::from_bits(slot_bits)).unwrap_or_default()
}

/// The stack the thread whose timer carries `slot_bits` reported when it
/// registered (see [`slot`]), if it did. Async-signal-safe, like
/// [`read_in_signal_handler`].
#[inline(always)]
#[cfg_attr(not(tp_sampler), allow(dead_code))]
pub(crate) fn stack_in_signal_handler(slot_bits: u64) -> Option<std::ops::Range<u64>> {
    stack_of(SlotRef::from_bits(slot_bits))
}

/// The default cap on distinct label sets a process sends: span names, and
/// combinations of a span name with span-field labels.
///
/// `span_name` and every span-field label are series labels on the
/// Pyroscope server, so every distinct name, and every distinct (name,
/// field values) combination, is one more label set; the server counts a
/// series per label set *and* sample type (we send two: `samples/count` and
/// `cpu/nanoseconds`); a tenant has 5000 series by default for all its
/// services. Names and combinations share this one budget, so with this cap
/// one process creates at most 2 × (200 + 2) = 404 series (the label sets,
/// [`OVERFLOW_NAME`] and samples outside spans), within the crate's budget of
/// 500 series per process, however many span labels are configured
/// (`PYROSCOPE_MAX_SPAN_NAMES` changes it).
pub(crate) const DEFAULT_MAX_NAMES: usize = 200;
/// The name every span gets once the cap on distinct names is reached.
pub(crate) const OVERFLOW_NAME: &str = "other";
/// The longest label value the server accepts (bytes); longer span names are
/// cut on a character boundary and end in [`TRUNCATED_MARK`].
pub(crate) const MAX_VALUE_LEN: usize = 2048;
/// The mark at the end of a truncated name.
pub(crate) const TRUNCATED_MARK: &str = "…";

static MAX_NAMES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_NAMES);
static NAME_OVERFLOWS: AtomicU64 = AtomicU64::new(0);
static LABEL_SET_OVERFLOWS: AtomicU64 = AtomicU64::new(0);
/// Most refused names (or label sets) remembered, so each counts once.
const MAX_REFUSED: usize = 100_000;

/// A 64-bit hash of refused text: what is kept of a refused name or value
/// (8 bytes, not the text, so [`MAX_REFUSED`] of them cost about 2 MiB at
/// most). Two refused texts with one hash count once: an overflow counter
/// a hair low, never a wrong label.
pub(crate) fn refused_hash(parts: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// Sets the cap on distinct label sets: span names plus (name, span-field
/// labels) combinations (at least 1). Names and sets already admitted keep
/// their ids.
pub(crate) fn set_max_names(max: usize) {
    MAX_NAMES.store(max.max(1), Ordering::Relaxed);
}

/// How many span names were mapped to [`OVERFLOW_NAME`] so far (each new
/// name past the cap counts once).
pub(crate) fn name_overflows() -> u64 {
    NAME_OVERFLOWS.load(Ordering::Relaxed)
}

/// How many (span name, span-field labels) combinations were refused by
/// the series budget so far (each counts once); their samples carry the
/// span name without the span-field labels.
pub(crate) fn label_set_overflows() -> u64 {
    LABEL_SET_OVERFLOWS.load(Ordering::Relaxed)
}

/// The series budget: span names and (name, field set) combinations share
/// one cap, `MAX_NAMES`.
#[derive(Default)]
struct Names {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    /// Hashes of names refused by the cap ([`refused_hash`]), so each
    /// counts once as an overflow.
    refused: HashSet<u64>,
    /// Admitted `(name_id, fields_id)` combinations (`fields_id != 0`).
    sets: HashSet<(u32, u32)>,
    /// Combinations refused by the cap, so each counts once.
    refused_sets: HashSet<(u32, u32)>,
}

impl Names {
    /// Label sets counted against the budget so far.
    fn label_sets(&self) -> usize {
        self.names.len() + self.sets.len()
    }
}

fn names() -> &'static Mutex<Names> {
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    NAMES.get_or_init(Default::default)
}

/// `value` cut to at most [`MAX_VALUE_LEN`] bytes on a character boundary,
/// ending in [`TRUNCATED_MARK`] when it was cut.
pub(crate) fn truncate_value(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_VALUE_LEN {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut end = MAX_VALUE_LEN - TRUNCATED_MARK.len();
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{TRUNCATED_MARK}", &value[..end]))
}

/// Returns the id of a span name, for [`SpanLabels::name_id`].
///
/// Interning takes a lock and may allocate: call it when a span is created
/// or first entered, not on every enter. Ids are never 0. Names longer than
/// the server accepts are truncated ([`truncate_value`]). At most
/// `PYROSCOPE_MAX_SPAN_NAMES` (default [`DEFAULT_MAX_NAMES`]) label sets are
/// kept, names and (name, span-field labels) combinations together; after
/// that every new name maps to [`OVERFLOW_NAME`] and is counted
/// (`Stats::span_name_overflows`), so memory and the series a process
/// creates stay bounded.
pub(crate) fn intern_name(name: &str) -> u32 {
    let name = truncate_value(name);
    let mut table = lock(names());
    if let Some(&id) = table.ids.get(&*name) {
        return id;
    }
    let name: &str = if table.label_sets() >= MAX_NAMES.load(Ordering::Relaxed) {
        if table.refused.len() < MAX_REFUSED && table.refused.insert(refused_hash(&[&name])) {
            NAME_OVERFLOWS.fetch_add(1, Ordering::Relaxed);
        }
        OVERFLOW_NAME
    } else {
        &name
    };
    if let Some(&id) = table.ids.get(name) {
        return id;
    }
    let arc: Arc<str> = Arc::from(name);
    table.names.push(arc.clone());
    let id = table.names.len() as u32;
    table.ids.insert(arc, id);
    id
}

/// The series budget for span-field labels: returns `fields_id` if the
/// label set (`name_id`, `fields_id`) is admitted, else 0 (the samples keep
/// their span name and lose their span-field labels; counted once per
/// combination in `Stats::label_set_overflows`).
///
/// Combinations are admitted while names plus combinations stay under the
/// cap of [`intern_name`]; once admitted, always. A lock: call it when a
/// span's labels are settled, not on every enter.
pub(crate) fn admit(name_id: u32, fields_id: u32) -> u32 {
    if fields_id == 0 {
        return 0;
    }
    let mut table = lock(names());
    let set = (name_id, fields_id);
    if table.sets.contains(&set) {
        return fields_id;
    }
    if table.label_sets() < MAX_NAMES.load(Ordering::Relaxed) {
        table.sets.insert(set);
        return fields_id;
    }
    if table.refused_sets.len() < MAX_REFUSED && table.refused_sets.insert(set) {
        LABEL_SET_OVERFLOWS.fetch_add(1, Ordering::Relaxed);
    }
    0
}

/// The name behind an id from [`intern_name`].
pub(crate) fn name_of(id: u32) -> Option<Arc<str>> {
    if id == 0 {
        return None;
    }
    let table = lock(names());
    table.names.get(id as usize - 1).cloned()
}

#[cfg(test)]
mod tests;
