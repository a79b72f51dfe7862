use super::*;
use crate::context::{ProfilerThread, SpanLabels};

/// Ends `n` intervals of `watch`, each with `samples` samples of
/// `labels`; the number of warnings asked for.
fn intervals(watch: &mut SpanlessWatch, n: u32, samples: u32, labels: SpanLabels) -> usize {
    (0..n)
        .filter(|_| {
            for _ in 0..samples {
                watch.sample(&labels);
            }
            watch.end_interval()
        })
        .count()
}

#[test]
fn no_span_in_the_first_intervals_asks_for_one_warning() {
    let mut watch = SpanlessWatch::default();
    // Intervals without samples do not count.
    assert_eq!(intervals(&mut watch, 10, 0, SpanLabels::NONE), 0);
    assert_eq!(
        intervals(&mut watch, SPANLESS_INTERVALS - 1, 5, SpanLabels::NONE),
        0
    );
    // The next one does, once; later ones never again.
    assert_eq!(intervals(&mut watch, 1, 5, SpanLabels::NONE), 1);
    assert_eq!(intervals(&mut watch, 20, 5, SpanLabels::NONE), 0);
}

#[test]
fn a_span_or_a_span_record_silences_the_watch_for_good() {
    let in_span = SpanLabels::new(7, 0, 3);
    let mut watch = SpanlessWatch::default();
    assert_eq!(intervals(&mut watch, 1, 5, SpanLabels::NONE), 0);
    // One sample in a span among many outside.
    watch.sample(&in_span);
    assert_eq!(intervals(&mut watch, 20, 5, SpanLabels::NONE), 0);
    // A span name without an id (past the id cap) is a span too.
    let mut watch = SpanlessWatch::default();
    watch.sample(&SpanLabels::new(0, 0, 3));
    assert_eq!(intervals(&mut watch, 20, 5, SpanLabels::NONE), 0);
    // So is a closed span's record, without a sample.
    let mut watch = SpanlessWatch::default();
    watch.span_seen();
    assert_eq!(intervals(&mut watch, 20, 5, SpanLabels::NONE), 0);
}

#[test]
fn the_profilers_own_samples_are_not_the_applications() {
    let own = SpanLabels::NONE.on_profiler_thread(ProfilerThread::Collector);
    let mut watch = SpanlessWatch::default();
    assert_eq!(intervals(&mut watch, 20, 5, own), 0);
}

#[test]
fn a_tally_is_kept_while_its_span_gets_samples_and_forgotten_after() {
    let mut tally = SpanTally::default();
    tally.add(1, cpu(2));
    tally.add(2, cpu(1));
    // Span 1 keeps getting samples for longer than the horizon; span 2
    // (never closed, or its record dropped) gets none after the first.
    for _ in 0..TALLY_INTERVALS * 2 {
        tally.next_interval();
        tally.add(1, cpu(1));
    }
    assert_eq!(tally.take(2).cpu_samples, 0, "span 2's tally was forgotten");
    assert_eq!(
        tally.take(1).cpu_samples,
        2 + u64::from(TALLY_INTERVALS) * 2
    );
    assert_eq!(tally.take(1).cpu_samples, 0, "taking forgets");
    // Within the horizon a span's samples are all there.
    tally.add(3, cpu(5));
    for _ in 0..TALLY_INTERVALS - 1 {
        tally.next_interval();
    }
    assert_eq!(tally.take(3).cpu_samples, 5);
}

#[test]
fn a_full_tally_takes_no_new_ids_but_counts_known_ones() {
    let mut tally = SpanTally::default();
    for id in 1..=MAX_TALLIED_SPANS as u64 {
        tally.add(id, cpu(1));
    }
    tally.add(u64::MAX, cpu(1));
    tally.add(1, cpu(1));
    assert_eq!(tally.take(u64::MAX).cpu_samples, 0);
    assert_eq!(tally.take(1).cpu_samples, 2);
    // Room again once stale ids age out.
    for _ in 0..TALLY_INTERVALS {
        tally.next_interval();
    }
    tally.add(u64::MAX, cpu(1));
    assert_eq!(tally.take(u64::MAX).cpu_samples, 1);
}

fn cpu(samples: u64) -> SpanCost {
    SpanCost {
        cpu_samples: samples,
        ..SpanCost::default()
    }
}
