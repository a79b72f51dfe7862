//! Aggregation: the samples of one interval, by (stack, labels).
//!
//! The collector adds every drained sample to a [`ProfileBuilder`]; at the
//! end of the interval [`ProfileBuilder::finish`] symbolizes each distinct
//! address once and hands the samples to the encoder.
//!
//! An interval keeps at most `max_span_ids` distinct span ids: a sample of a
//! further span keeps its stack and `span_name` but loses `span_id` and
//! `trace_id`, and is counted. With the stacks, that bounds the interval's
//! memory and profile size at any span rate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::encode::{Chunk, Header, MAX_PROFILE_BYTES, MAX_SAMPLES_PER_PROFILE, MAX_STACK_DEPTH};
use super::kind::{ProfileKind, Values};
use super::symbolize::{lookup_address, Resolved, Symbolizer};
use super::synthetic::is_synthetic;
use super::EncodedProfile;
use crate::context::SpanLabels;

/// Collects samples for one interval, then encodes them as pprof.
///
/// Samples are aggregated by (stack, labels); identical stacks are stored
/// once, so adding a repeated stack allocates nothing.
#[derive(Debug)]
pub(crate) struct ProfileBuilder {
    kind: ProfileKind,
    start: SystemTime,
    period_nanos: i64,
    stack_ids: HashMap<Box<[u64]>, usize>,
    counts: HashMap<(usize, SpanLabels), Values>,
    samples: u64,
    /// Distinct span ids kept so far, at most `max_span_ids`.
    span_ids: HashSet<u64>,
    max_span_ids: usize,
    /// Samples whose span labels were dropped by the cap.
    span_id_overflows: u64,
}

impl ProfileBuilder {
    /// An empty profile of `kind` for the interval starting at `start`,
    /// whose pprof `period` is `period_nanos` (nanoseconds of CPU or wall
    /// time per timer sample; bytes between allocation samples); at most
    /// `max_span_ids` distinct span ids keep their label.
    pub(crate) fn new(
        kind: ProfileKind,
        start: SystemTime,
        period_nanos: i64,
        max_span_ids: usize,
    ) -> Self {
        ProfileBuilder {
            kind,
            start,
            period_nanos,
            stack_ids: HashMap::new(),
            counts: HashMap::new(),
            samples: 0,
            span_ids: HashSet::new(),
            max_span_ids,
            span_id_overflows: 0,
        }
    }

    /// Adds `count` samples of a stack with `labels`.
    ///
    /// `frames[0]` is the interrupted instruction, `frames[1..]` are return
    /// addresses, leaf first. Stacks deeper than [`MAX_STACK_DEPTH`] keep
    /// their leaf side (one frame less on a profiler thread, whose root
    /// frame the encoder adds). An empty stack is kept as a sample without
    /// locations.
    ///
    /// Returns the labels the sample was kept with: `labels`, or `labels`
    /// without `span_id` and `trace_id` once the interval holds
    /// `max_span_ids` other span ids.
    pub(crate) fn add(&mut self, labels: SpanLabels, frames: &[u64], count: u64) -> SpanLabels {
        if count == 0 {
            return labels;
        }
        self.add_values(
            labels,
            frames,
            ProfileKind::timer_values(count, self.period_nanos),
        )
    }

    /// Adds a sample of a stack with `labels` and `values` (in the kind's
    /// sample-type order; the first is its count): the general form of
    /// [`add`](Self::add), for wall and memory samples, whose values are
    /// not a whole number of periods. Frames may be synthetic
    /// ([`synthetic_frame`](super::synthetic_frame)).
    pub(crate) fn add_values(
        &mut self,
        labels: SpanLabels,
        frames: &[u64],
        values: Values,
    ) -> SpanLabels {
        if values.iter().all(|&v| v == 0) {
            return labels;
        }
        let count = u64::try_from(values[0]).unwrap_or(0);
        let labels = self.cap_span_id(labels, count);
        let depth = MAX_STACK_DEPTH - usize::from(labels.profiler_thread().is_some());
        let stack = &frames[..frames.len().min(depth)];
        let id = match self.stack_ids.get(stack) {
            Some(&id) => id,
            None => {
                let id = self.stack_ids.len();
                self.stack_ids.insert(stack.into(), id);
                id
            }
        };
        let total = self.counts.entry((id, labels)).or_insert([0; 4]);
        for (t, v) in total.iter_mut().zip(values) {
            *t = t.saturating_add(v);
        }
        self.samples = self.samples.saturating_add(count);
        labels
    }

    /// `labels`, or its stack-and-name part past the span id cap.
    fn cap_span_id(&mut self, labels: SpanLabels, count: u64) -> SpanLabels {
        if labels.span_id == 0 || self.span_ids.contains(&labels.span_id) {
            return labels;
        }
        if self.span_ids.len() < self.max_span_ids {
            self.span_ids.insert(labels.span_id);
            return labels;
        }
        self.span_id_overflows = self.span_id_overflows.saturating_add(count);
        SpanLabels::new(0, 0, labels.name_id)
    }

    /// Distinct (stack, labels) entries.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.counts.len()
    }

    /// Samples that lost their span id to the cap so far.
    pub(crate) fn span_id_overflows(&self) -> u64 {
        self.span_id_overflows
    }

    /// Total samples added (the sum of `count`s).
    #[allow(dead_code)] // part of the interface; the collector may not need it
    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }

    /// `true` if nothing was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Symbolizes and encodes the interval `[start, end)`.
    ///
    /// Returns no profile at all when no sample was added (an empty interval
    /// produces no file and no upload). Otherwise one gzipped pprof, or
    /// several when one would exceed the server's limits
    /// ([`MAX_SAMPLES_PER_PROFILE`] samples, [`MAX_PROFILE_BYTES`]
    /// uncompressed): each then covers the same time range and holds a
    /// disjoint part of the samples, so their sum is the whole interval.
    pub(crate) fn finish(
        self,
        end: SystemTime,
        symbolizer: &mut Symbolizer,
    ) -> Vec<EncodedProfile> {
        if self.counts.is_empty() {
            return Vec::new();
        }
        let mut stacks: Vec<Box<[u64]>> = vec![Box::default(); self.stack_ids.len()];
        for (stack, id) in self.stack_ids {
            stacks[id] = stack;
        }
        let mut entries: Vec<((usize, SpanLabels), Values)> = self.counts.into_iter().collect();
        entries.sort_unstable_by_key(|&((stack, labels), _)| (stack, labels));

        let header = Header::new(self.kind, self.start, end, self.period_nanos);
        let mut out = Vec::new();
        let mut chunk = Chunk::new(&header);
        // New addresses are symbolized in address order first (see
        // `Symbolizer::prefetch`); the profiler's own samples never read
        // debug info.
        // Each stack once, however many label sets it was sampled with.
        let mut seen = vec![false; stacks.len()];
        symbolizer.prefetch(
            entries
                .iter()
                .filter(|((_, labels), _)| labels.profiler_thread().is_none())
                .filter(|&&((stack_id, _), _)| !std::mem::replace(&mut seen[stack_id], true))
                .flat_map(|&((stack_id, _), _)| {
                    let stack: &[u64] = &stacks[stack_id];
                    stack
                        .iter()
                        .enumerate()
                        .filter(|&(_, &addr)| !is_synthetic(addr))
                        .map(|(i, &addr)| lookup_address(addr, i > 0))
                }),
        );
        let mut resolved: Vec<(u64, bool, Arc<Resolved>)> = Vec::new();
        let no_symbol = Arc::new(Resolved::default());
        for ((stack_id, labels), values) in entries {
            resolved.clear();
            let own = labels.profiler_thread().is_some();
            for (i, &addr) in stacks[stack_id].iter().enumerate() {
                if is_synthetic(addr) {
                    // The encoder names it; nothing to look up.
                    resolved.push((addr, false, no_symbol.clone()));
                    continue;
                }
                let is_return = i > 0;
                let probe = lookup_address(addr, is_return);
                let r = if own {
                    // The profiler's own samples never make it read debug info.
                    symbolizer.resolve_from_symbols(probe)
                } else {
                    symbolizer.resolve(probe)
                };
                resolved.push((addr, is_return, r));
            }
            if chunk.profile.sample.len() >= MAX_SAMPLES_PER_PROFILE {
                out.extend(chunk.encode(&header));
                chunk = Chunk::new(&header);
            }
            let checkpoint = chunk.checkpoint();
            chunk.add_sample(&resolved, labels, values);
            if chunk.size > MAX_PROFILE_BYTES && checkpoint.samples > 0 {
                // Does not fit: undo, close this profile, start the next.
                chunk.rollback(checkpoint);
                out.extend(chunk.encode(&header));
                chunk = Chunk::new(&header);
                chunk.add_sample(&resolved, labels, values);
            }
        }
        out.extend(chunk.encode(&header));
        out
    }
}
