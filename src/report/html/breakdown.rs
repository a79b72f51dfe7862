//! A span's time, split: CPU, blocked and awaiting, drawn as one bar that
//! spans its duration.
//!
//! - **CPU**: the CPU profile's `cpu/nanoseconds` for the span, never more
//!   than its duration. A span with fewer than [`ESTIMATE_BELOW_SAMPLES`]
//!   CPU samples (or whose samples outweigh it) gets its CPU marked as an
//!   estimate, with its sample count: CPU-clock timers fire at the kernel
//!   tick, so one sample stands for a whole period (4 ms at `CONFIG_HZ=250`).
//! - **Awaiting**: wall samples whose leaf frame is `[awaiting]` (the span's
//!   task entered on no thread).
//! - **Blocked**: the rest of the wall time, wall − CPU − awaiting (at least
//!   the wall samples whose leaf is `[blocked…]` or `[runnable]`): off CPU
//!   on a thread, in a syscall, a lock, or waiting for a CPU.
//! - What is left of the duration is drawn as "not measured" (no wall
//!   profile, or time the samples did not cover).

use std::fmt::Write as _;

use super::text::fmt_duration;
use crate::report::load::Span;

/// Fewer CPU samples than this make a span's CPU time an estimate.
pub(super) const ESTIMATE_BELOW_SAMPLES: u64 = 5;

/// A span's duration and its parts, nanoseconds; the parts never sum to
/// more than `duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Breakdown {
    pub(super) duration: u64,
    pub(super) cpu: u64,
    pub(super) blocked: u64,
    pub(super) awaiting: u64,
    /// The span has wall samples.
    pub(super) wall: bool,
    /// The CPU figure is an estimate (few samples, or more than the span).
    pub(super) estimate: bool,
    pub(super) cpu_samples: u64,
    /// CPU as the samples weigh it, before clamping to the duration.
    pub(super) cpu_sampled: u64,
    /// CPU + blocked + awaiting as sampled, before clamping to the
    /// duration (more than `duration` when the samples overcount it).
    pub(super) measured: u64,
}

impl Breakdown {
    /// `None` when the span has neither a known duration nor wall samples.
    pub(super) fn of(span: &Span) -> Option<Breakdown> {
        let p = &span.profile;
        let wall = !p.wall.is_empty();
        let duration = match (span.start, span.end) {
            (Some(s), Some(e)) => e.saturating_sub(s),
            _ if wall => p.wall.total,
            _ => return None,
        };
        let cpu_sampled = p.cpu.total;
        let cpu = cpu_sampled.min(duration);
        let (awaiting, blocked, measured) = if wall {
            let awaiting = p.awaiting_nanos.min(duration - cpu);
            let off_cpu = p
                .wall
                .total
                .saturating_sub(cpu_sampled.saturating_add(p.awaiting_nanos))
                .max(p.blocked_leaf_nanos);
            (
                awaiting,
                off_cpu.min(duration - cpu - awaiting),
                cpu_sampled + off_cpu + p.awaiting_nanos,
            )
        } else {
            (0, 0, cpu_sampled)
        };
        Some(Breakdown {
            duration,
            cpu,
            blocked,
            awaiting,
            wall,
            estimate: p.cpu.samples > 0
                && (p.cpu.samples < ESTIMATE_BELOW_SAMPLES || cpu_sampled > duration),
            cpu_samples: p.cpu.samples,
            cpu_sampled,
            measured,
        })
    }

    /// Duration not covered by CPU, blocked or awaiting.
    pub(super) fn unmeasured(&self) -> u64 {
        self.duration - self.cpu - self.blocked - self.awaiting
    }

    /// The CPU figure for the span's row: `12.0 ms`, or `≈4.0 ms (1 sample)`.
    pub(super) fn cpu_text(&self) -> String {
        if self.estimate {
            format!(
                "≈{} ({} sample{})",
                fmt_duration(self.cpu),
                self.cpu_samples,
                if self.cpu_samples == 1 { "" } else { "s" }
            )
        } else {
            fmt_duration(self.cpu)
        }
    }

    /// The bar: one segment per part, widths in percent of the duration,
    /// each part's nanoseconds in `data-*` attributes.
    pub(super) fn bar(&self) -> String {
        let pct = |part: u64| {
            if self.duration == 0 {
                0.0
            } else {
                part as f64 * 100.0 / self.duration as f64
            }
        };
        let mut title = format!(
            "of {}: CPU {}",
            fmt_duration(self.duration),
            fmt_duration(self.cpu)
        );
        if self.estimate {
            let _ = write!(
                title,
                " (an estimate: {} sample{} of CPU time weighing {}; CPU timers fire at the kernel tick)",
                self.cpu_samples,
                if self.cpu_samples == 1 { "" } else { "s" },
                fmt_duration(self.cpu_sampled)
            );
        }
        if self.wall {
            let _ = write!(
                title,
                " · blocked {} · awaiting {}",
                fmt_duration(self.blocked),
                fmt_duration(self.awaiting)
            );
        }
        let rest = self.unmeasured();
        if rest > 0 {
            let _ = write!(
                title,
                " · not measured {}{}",
                fmt_duration(rest),
                if self.wall { "" } else { " (no wall profile)" }
            );
        }
        let mut h = format!(
            "<div class=\"breakdown\" data-dur=\"{}\" data-cpu=\"{}\" data-blocked=\"{}\" \
             data-awaiting=\"{}\" data-measured=\"{}\" data-wall=\"{}\" \
             data-cpu-samples=\"{}\" data-cpu-sampled=\"{}\" title=\"{}\">",
            self.duration,
            self.cpu,
            self.blocked,
            self.awaiting,
            self.measured,
            self.wall,
            self.cpu_samples,
            self.cpu_sampled,
            title
        );
        for (class, part) in [
            ("cpu", self.cpu),
            ("blocked", self.blocked),
            ("awaiting", self.awaiting),
            ("rest", rest),
        ] {
            if part > 0 {
                let _ = write!(
                    h,
                    "<span class=\"seg {class}\" style=\"width:{:.3}%\"></span>",
                    pct(part)
                );
            }
        }
        h.push_str("</div>");
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::load::tests_support::span_with;

    #[test]
    fn parts_sum_to_the_duration_and_cpu_is_clamped() {
        // 100 ms span, 20 ms CPU (5 samples), 90 ms wall of which 30 ms
        // awaiting: blocked is 90 − 20 − 30 = 40 ms, 10 ms unmeasured.
        let b = Breakdown::of(&span_with(100, 20, 5, 90, 30, 0)).unwrap();
        assert_eq!(
            (b.cpu, b.blocked, b.awaiting, b.unmeasured()),
            (20_000_000, 40_000_000, 30_000_000, 10_000_000)
        );
        assert!(!b.estimate);
        // A 1 ms span with one 4 ms sample: CPU drawn as 1 ms, an estimate.
        let b = Breakdown::of(&span_with(1, 4, 1, 0, 0, 0)).unwrap();
        assert_eq!((b.cpu, b.blocked, b.awaiting), (1_000_000, 0, 0));
        assert!(b.estimate);
        assert_eq!(b.cpu_text(), "≈1.0 ms (1 sample)");
        // Wall larger than the duration: the parts still fit in it.
        let b = Breakdown::of(&span_with(50, 10, 10, 80, 60, 0)).unwrap();
        assert_eq!(b.cpu + b.blocked + b.awaiting, 50_000_000);
        assert_eq!(b.unmeasured(), 0);
        assert_eq!(b.measured, 80_000_000, "as sampled, before clamping");
        // Blocked leaves count even when CPU covers the wall.
        let b = Breakdown::of(&span_with(100, 50, 50, 60, 0, 30)).unwrap();
        assert_eq!(b.blocked, 30_000_000);
    }
}
