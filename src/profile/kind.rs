//! The profile types the crate writes, and what each one's pprof says.
//!
//! | kind | `__name__` | sample types | period type |
//! |---|---|---|---|
//! | [`Cpu`](ProfileKind::Cpu) | `process_cpu` | `samples/count`, `cpu/nanoseconds` | `cpu/nanoseconds` |
//! | [`Wall`](ProfileKind::Wall) | `wall` | `samples/count`, `wall/nanoseconds` | `wall/nanoseconds` |
//! | [`Memory`](ProfileKind::Memory) | `memory` | `alloc_objects/count`, `alloc_space/bytes`, `inuse_objects/count`, `inuse_space/bytes` | `space/bytes` |
//!
//! Pyroscope builds a profile type id per sample type from `__name__` and
//! these (`wall:wall:nanoseconds:wall:nanoseconds`,
//! `memory:alloc_space:bytes:space:bytes`), and each one is a series per
//! label set.

/// One profile type: its series name, sample types and period type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ProfileKind {
    /// CPU time: samples every period of a thread's CPU time.
    Cpu,
    /// Wall time of threads and tasks inside spans: running, blocked,
    /// runnable and awaiting.
    Wall,
    /// Sampled allocations, and those still live (Go's memory profile).
    Memory,
}

/// Most values a sample of any kind has.
pub(crate) const MAX_VALUES: usize = 4;

/// A sample's values, in its kind's [`sample_types`](ProfileKind::sample_types)
/// order; unused trailing values are 0.
pub(crate) type Values = [i64; MAX_VALUES];

impl ProfileKind {
    /// Every kind.
    #[allow(dead_code)] // for the report and tests
    pub(crate) const ALL: [ProfileKind; 3] =
        [ProfileKind::Cpu, ProfileKind::Wall, ProfileKind::Memory];

    /// The series' `__name__`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "process_cpu",
            ProfileKind::Wall => "wall",
            ProfileKind::Memory => "memory",
        }
    }

    /// `(type, unit)` of each sample value.
    pub(crate) const fn sample_types(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ProfileKind::Cpu => &[("samples", "count"), ("cpu", "nanoseconds")],
            ProfileKind::Wall => &[("samples", "count"), ("wall", "nanoseconds")],
            ProfileKind::Memory => &[
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes"),
            ],
        }
    }

    /// `(type, unit)` of the period.
    pub(crate) const fn period_type(self) -> (&'static str, &'static str) {
        match self {
            ProfileKind::Cpu => ("cpu", "nanoseconds"),
            ProfileKind::Wall => ("wall", "nanoseconds"),
            ProfileKind::Memory => ("space", "bytes"),
        }
    }

    /// The part of a local file's name that says its kind
    /// (`<service>-<start_ms>-<pid>-<seq><suffix>.pb.gz`); empty for CPU,
    /// whose files keep the name they always had.
    pub(crate) const fn file_suffix(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "",
            ProfileKind::Wall => ".wall",
            ProfileKind::Memory => ".memory",
        }
    }

    /// The kind a pprof's sample types say, if one of ours.
    #[allow(dead_code)] // for the report
    pub(crate) fn from_sample_types<'a>(
        types: impl IntoIterator<Item = &'a str>,
    ) -> Option<ProfileKind> {
        for t in types {
            match t {
                "cpu" => return Some(ProfileKind::Cpu),
                "wall" => return Some(ProfileKind::Wall),
                "alloc_space" | "inuse_space" | "alloc_objects" | "inuse_objects" => {
                    return Some(ProfileKind::Memory)
                }
                _ => {}
            }
        }
        None
    }

    /// The values of `count` samples of `period` (CPU and wall samples
    /// taken by a timer).
    pub(crate) fn timer_values(count: u64, period_nanos: i64) -> Values {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        [count, count.saturating_mul(period_nanos), 0, 0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_names_its_sample_types_and_is_read_back_from_them() {
        for kind in ProfileKind::ALL {
            let types = kind.sample_types().iter().map(|(t, _)| *t);
            assert_eq!(ProfileKind::from_sample_types(types), Some(kind));
            assert!(kind.sample_types().len() <= MAX_VALUES);
        }
        assert_eq!(ProfileKind::from_sample_types(["samples"]), None);
    }
}
