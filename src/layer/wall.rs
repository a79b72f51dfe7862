//! Awaiting time, measured by the layer: the time a span was entered on no
//! thread (an `Instrumented` future that returned `Pending`, waiting to be
//! polled again), per local root (per span under scope `all`).
//!
//! - **Records.** Each span whose labels it owns (a local root; every span
//!   under scope `all`) gets a record when wall time is on: an entry of a
//!   global, never-freed arena of atomics, found by index, so enter and
//!   exit reach it through the thread's label cache without a lookup. Its
//!   state word holds either "entered on N threads" or "idle since T" (T
//!   in nanoseconds of a process clock, 0: never entered). The exit that
//!   brings N to 0 stores T and the *await site*; the enter that finds it
//!   idle credits `now - T` to that site. Compare-and-swap on one word, so
//!   threads entering and exiting at once, and a flush crediting an open
//!   episode, never count a nanosecond twice.
//! - **Await site.** The innermost span exited last before the span went
//!   idle: the thread remembers the span of the last exit that directly
//!   followed an enter (the deepest point of the poll). An await outside any
//!   instrumented future is credited to the enclosing span; after `join!`
//!   or `select!` the branch polled (and exited) last gets the time.
//! - **Stacks.** A *chain* is a span's callsite (name and `file:line`) on
//!   top of its parent's chain, up to its local root; chains are interned
//!   once per (parent chain, callsite) at a span's first enter, off the hot
//!   path. The time is emitted on the stack (leaf first) `[awaiting]`, the
//!   site's chain, up to the root.
//! - **Emission** (off the hot path): accumulated time goes to the
//!   collector's `wall` profile (`profile::extra`) when the span closes,
//!   and from [`flush`], which the collector calls at the end of every
//!   upload interval and which also credits episodes still open (a span
//!   idle for long is counted in the interval it waited in).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use tracing::Metadata;

use crate::context::SpanLabels;
use crate::profile::{extra, AWAITING_FRAME};
use crate::profile::{synthetic_frame, ProfileKind};
use crate::sync::lock;

/// Records per chunk.
const CHUNK: usize = 1024;
/// Chunks: at most `CHUNK * CHUNKS` spans with a record open at once;
/// beyond that spans get none (their awaiting time is not measured).
const CHUNKS: usize = 1024;
/// Distinct await sites a record keeps apart between two flushes; more
/// are credited to the span's own chain.
const SITES: usize = 4;
/// Most chains; later callsites are credited to their parent's chain.
const MAX_CHAINS: usize = 1 << 16;

/// The state word's flag: entered on `state & !ENTERED` threads.
const ENTERED: u64 = 1 << 63;

/// A span's awaiting accounting.
struct Record {
    /// `ENTERED | threads`, or the clock when the span went idle (0: never
    /// entered).
    state: AtomicU64,
    /// The await site (a chain id) of the current idle episode.
    idle_site: AtomicU32,
    /// The span's own chain (where time of sites beyond [`SITES`] goes).
    own_chain: AtomicU32,
    /// Labels of the span (packed like the slot), for emission.
    labels: [AtomicU64; 4],
    /// Sites (chain ids, 0: free), sticky while the record is held.
    sites: [AtomicU32; SITES],
    /// Nanoseconds and episodes per site since the last emission.
    nanos: [AtomicU64; SITES],
    episodes: [AtomicU64; SITES],
    /// 1 while a span holds the record.
    live: AtomicU32,
    /// The next free record (index + 1), while on the free list.
    next_free: AtomicU32,
}

impl Record {
    fn new() -> Record {
        Record {
            state: AtomicU64::new(0),
            idle_site: AtomicU32::new(0),
            own_chain: AtomicU32::new(0),
            labels: [const { AtomicU64::new(0) }; 4],
            sites: [const { AtomicU32::new(0) }; SITES],
            nanos: [const { AtomicU64::new(0) }; SITES],
            episodes: [const { AtomicU64::new(0) }; SITES],
            live: AtomicU32::new(0),
            next_free: AtomicU32::new(0),
        }
    }

    /// Adds an episode of `nanos` at `site`.
    fn credit(&self, site: u32, nanos: u64) {
        let site = if site == 0 {
            self.own_chain.load(Ordering::Relaxed)
        } else {
            site
        };
        // The last slot is the span's own chain: what fits nowhere else.
        let mut slot = SITES - 1;
        for (i, s) in self.sites.iter().enumerate() {
            let current = s.load(Ordering::Relaxed);
            if current == site {
                slot = i;
                break;
            }
            if current == 0 && i < SITES - 1 {
                match s.compare_exchange(0, site, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        slot = i;
                        break;
                    }
                    Err(other) if other == site => {
                        slot = i;
                        break;
                    }
                    Err(_) => {}
                }
            }
        }
        self.nanos[slot].fetch_add(nanos, Ordering::Relaxed);
        self.episodes[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Credits the open idle episode up to `now` (a flush).
    fn credit_open(&self, now: u64) {
        let mut state = self.state.load(Ordering::Acquire);
        while state & ENTERED == 0 && state != 0 {
            match self.state.compare_exchange_weak(
                state,
                now.max(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let site = self.idle_site.load(Ordering::Relaxed);
                    let nanos = now.saturating_sub(state);
                    if nanos > 0 {
                        self.credit(site, nanos);
                    }
                    return;
                }
                Err(other) => state = other,
            }
        }
    }

    fn labels(&self) -> SpanLabels {
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| self.labels[i].load(Ordering::Relaxed));
        SpanLabels {
            span_id: a,
            trace_id: (u128::from(b) << 64) | u128::from(c),
            name_id: (d >> 32) as u32,
            fields_id: d as u32,
        }
    }

    /// Takes what accumulated, per site.
    fn take(&self, mut f: impl FnMut(u32, u64, u64)) {
        for i in 0..SITES {
            let nanos = self.nanos[i].swap(0, Ordering::Relaxed);
            let episodes = self.episodes[i].swap(0, Ordering::Relaxed);
            if nanos > 0 {
                f(
                    self.sites[i].load(Ordering::Relaxed),
                    nanos,
                    episodes.max(1),
                );
            }
        }
    }
}

static ARENA: [OnceLock<Box<[Record]>>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];
/// Records ever handed out.
static USED: AtomicU32 = AtomicU32::new(0);
/// Free list head: `tag << 32 | (index + 1)`, 0 in the low half: empty.
static FREE: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
fn record(index: u32) -> Option<&'static Record> {
    let i = index.checked_sub(1)? as usize;
    ARENA.get(i / CHUNK)?.get()?.get(i % CHUNK)
}

/// The process clock of idle episodes: nanoseconds since its first use,
/// plus one (0 means "no time").
#[inline(always)]
fn now_nanos() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    (BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64).saturating_add(1)
}

/// A record for a span whose own chain is `own_chain` (index + 1), or 0
/// when the arena is full. Off the hot path (a span's first enter).
pub(super) fn alloc(own_chain: u32, labels: SpanLabels) -> u32 {
    let index = pop_free().or_else(|| {
        let i = USED.fetch_add(1, Ordering::Relaxed) as usize;
        if i >= CHUNK * CHUNKS {
            USED.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        ARENA[i / CHUNK].get_or_init(|| (0..CHUNK).map(|_| Record::new()).collect());
        Some(i as u32 + 1)
    });
    let Some(index) = index else { return 0 };
    let Some(r) = record(index) else { return 0 };
    r.state.store(0, Ordering::Relaxed);
    r.idle_site.store(0, Ordering::Relaxed);
    r.own_chain.store(own_chain, Ordering::Relaxed);
    for s in &r.sites[..SITES - 1] {
        s.store(0, Ordering::Relaxed);
    }
    r.sites[SITES - 1].store(own_chain, Ordering::Relaxed);
    set_labels(index, labels);
    r.live.store(1, Ordering::Release);
    index
}

fn pop_free() -> Option<u32> {
    let mut head = FREE.load(Ordering::Acquire);
    loop {
        let index = head as u32;
        let r = record(index)?;
        let next = u64::from(r.next_free.load(Ordering::Relaxed));
        let tag = (head >> 32).wrapping_add(1);
        match FREE.compare_exchange_weak(
            head,
            (tag << 32) | next,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(index),
            Err(other) => head = other,
        }
    }
}

fn push_free(index: u32) {
    let Some(r) = record(index) else { return };
    let mut head = FREE.load(Ordering::Acquire);
    loop {
        r.next_free.store(head as u32, Ordering::Relaxed);
        let tag = (head >> 32).wrapping_add(1);
        match FREE.compare_exchange_weak(
            head,
            (tag << 32) | u64::from(index),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return,
            Err(other) => head = other,
        }
    }
}

/// Sets the labels a record's time is emitted with.
pub(super) fn set_labels(index: u32, labels: SpanLabels) {
    if let Some(r) = record(index) {
        let words = [
            labels.span_id,
            (labels.trace_id >> 64) as u64,
            labels.trace_id as u64,
            (u64::from(labels.name_id) << 32) | u64::from(labels.fields_id),
        ];
        for (slot, w) in r.labels.iter().zip(words) {
            slot.store(w, Ordering::Relaxed);
        }
    }
}

/// The span of record `index` is entered on this thread: `true` if this
/// ended an idle episode (awaiting time was credited). Lock-free and
/// allocation-free; reads the clock only when the span was idle.
#[inline]
pub(super) fn enter(index: u32) -> bool {
    let Some(r) = record(index) else {
        return false;
    };
    let mut state = r.state.load(Ordering::Acquire);
    loop {
        if state & ENTERED != 0 {
            match r.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return false,
                Err(other) => state = other,
            }
            continue;
        }
        let now = if state == 0 { 0 } else { now_nanos() };
        match r
            .state
            .compare_exchange_weak(state, ENTERED | 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) if state == 0 => return false,
            Ok(_) => {
                let nanos = now.saturating_sub(state);
                if nanos == 0 {
                    return false;
                }
                r.credit(r.idle_site.load(Ordering::Relaxed), nanos);
                return true;
            }
            Err(other) => state = other,
        }
    }
}

/// The span of record `index` exits on this thread; `site` is the chain
/// of the await site. Lock-free and allocation-free; reads the clock when
/// the span goes idle (entered on no thread).
#[inline]
pub(super) fn exit(index: u32, site: u32) {
    let Some(r) = record(index) else { return };
    let mut state = r.state.load(Ordering::Acquire);
    loop {
        if state & ENTERED == 0 {
            return; // not entered: an exit without an enter
        }
        let next = if state == ENTERED | 1 {
            r.idle_site.store(site, Ordering::Relaxed);
            now_nanos()
        } else {
            state - 1
        };
        match r
            .state
            .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return,
            Err(other) => state = other,
        }
    }
}

/// The span of record `index` closed: emits what it accumulated and frees
/// the record. The time between its last exit and its close is not
/// awaiting: a future that completed exits and is dropped, and one dropped
/// while pending is entered once more to drop its inner future
/// (`Instrumented`), which ends its last awaiting episode.
pub(super) fn close(index: u32) {
    let Some(r) = record(index) else { return };
    if r.live.swap(0, Ordering::AcqRel) == 0 {
        return;
    }
    r.state.store(0, Ordering::Release);
    let labels = r.labels();
    r.take(|site, nanos, episodes| emit(labels, site, nanos, episodes));
    push_free(index);
}

/// Credits every open idle episode up to now and emits what every live
/// record accumulated. Off the hot path; `O(records)`.
pub(crate) fn flush() {
    let used = USED.load(Ordering::Acquire);
    let now = now_nanos();
    for index in 1..=used {
        let Some(r) = record(index) else { continue };
        if r.live.load(Ordering::Acquire) == 0 {
            continue;
        }
        r.credit_open(now);
        let labels = r.labels();
        r.take(|site, nanos, episodes| emit(labels, site, nanos, episodes));
    }
}

/// The interned callsite chains.
struct Chains {
    ids: HashMap<(u32, usize), u32>,
    /// `(parent chain, frame name, frame value)`; chain `i + 1` is at `i`.
    nodes: Vec<(u32, String, u64)>,
}

fn chains() -> &'static Mutex<Chains> {
    static CHAINS: OnceLock<Mutex<Chains>> = OnceLock::new();
    CHAINS.get_or_init(|| {
        Mutex::new(Chains {
            ids: HashMap::new(),
            nodes: Vec::new(),
        })
    })
}

/// The frame name of a span callsite: `name (file:line)`.
pub(crate) fn site_frame_name(meta: &Metadata<'_>) -> String {
    match (meta.file(), meta.line()) {
        (Some(file), Some(line)) => format!("{} ({file}:{line})", meta.name()),
        (Some(file), None) => format!("{} ({file})", meta.name()),
        _ => meta.name().to_string(),
    }
}

/// The chain of a span at callsite `meta` under `parent` (0: a local root).
/// Locks and allocates the first time a thread sees a (parent, callsite)
/// pair (a thread-local cache keeps them): a span's first enter, off the
/// hot path.
pub(super) fn chain(parent: u32, meta: &'static Metadata<'static>) -> u32 {
    thread_local! {
        static SEEN: std::cell::RefCell<HashMap<(u32, usize), u32>> =
            std::cell::RefCell::new(HashMap::new());
    }
    let key = (parent, meta as *const Metadata<'static> as usize);
    if let Ok(Some(id)) = SEEN.try_with(|seen| seen.try_borrow().ok()?.get(&key).copied()) {
        return id;
    }
    let id = {
        let mut table = lock(chains());
        match table.ids.get(&key) {
            Some(&id) => id,
            None if table.nodes.len() >= MAX_CHAINS => parent,
            None => {
                let name = site_frame_name(meta);
                let frame = synthetic_frame(&name);
                table.nodes.push((parent, name, frame));
                let id = table.nodes.len() as u32;
                table.ids.insert(key, id);
                id
            }
        }
    };
    let _ = SEEN.try_with(|seen| {
        if let Ok(mut seen) = seen.try_borrow_mut() {
            if seen.len() < MAX_CHAINS {
                seen.insert(key, id);
            }
        }
    });
    id
}

/// The stack of awaiting time at `site`, leaf first: `[awaiting]`, the
/// site, its ancestors up to the local root; `f` maps a node's (name,
/// frame value).
fn stack_of<T>(site: u32, leaf: T, f: impl Fn(&str, u64) -> T) -> Vec<T> {
    let table = lock(chains());
    let mut stack = vec![leaf];
    let mut chain = site;
    while let Some((parent, name, frame)) = chain
        .checked_sub(1)
        .and_then(|i| table.nodes.get(i as usize))
    {
        stack.push(f(name, *frame));
        if stack.len() > MAX_DEPTH {
            break;
        }
        chain = *parent;
    }
    stack
}

/// Deepest span path an awaiting stack shows.
const MAX_DEPTH: usize = 256;

/// The frame names of the awaiting stack at `site`, leaf first.
#[cfg(test)]
pub(crate) fn stack_names(site: u32) -> Vec<String> {
    stack_of(site, AWAITING_FRAME.to_string(), |name, _| name.to_string())
}

/// Hands awaiting time to the collector's `wall` profile (refused at once
/// when no running profiler collects it).
fn emit(labels: SpanLabels, site: u32, nanos: u64, episodes: u64) {
    #[cfg(test)]
    lock(&EMITTED).push(Awaiting {
        labels,
        site,
        nanos,
        episodes,
    });
    if !extra::enabled(ProfileKind::Wall) {
        return;
    }
    static LEAF: OnceLock<u64> = OnceLock::new();
    let leaf = *LEAF.get_or_init(|| synthetic_frame(AWAITING_FRAME));
    let frames = stack_of(site, leaf, |_, frame| frame);
    extra::submit(
        ProfileKind::Wall,
        labels,
        &frames,
        [
            i64::try_from(episodes).unwrap_or(i64::MAX),
            i64::try_from(nanos).unwrap_or(i64::MAX),
            0,
            0,
        ],
    );
}

/// One emission: awaiting time of one span at one site (tests).
#[cfg(test)]
#[derive(Clone, Debug)]
pub(crate) struct Awaiting {
    pub(crate) labels: SpanLabels,
    /// The chain of the await site.
    pub(crate) site: u32,
    pub(crate) nanos: u64,
    pub(crate) episodes: u64,
}

/// Everything emitted, for the tests (they filter by span id).
#[cfg(test)]
static EMITTED: Mutex<Vec<Awaiting>> = Mutex::new(Vec::new());

/// What was emitted with `span_id`, taken.
#[cfg(test)]
pub(crate) fn take_emitted(span_id: u64) -> Vec<Awaiting> {
    let mut all = lock(&EMITTED);
    let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|a| a.labels.span_id == span_id);
    *all = rest;
    mine
}

#[cfg(test)]
pub(super) fn records_live() -> usize {
    let used = USED.load(Ordering::Acquire);
    (1..=used)
        .filter_map(record)
        .filter(|r| r.live.load(Ordering::Relaxed) != 0)
        .count()
}
