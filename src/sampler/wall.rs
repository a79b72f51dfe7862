//! Wall time of the threads inside spans: how long they were **blocked**
//! (in a system call, off CPU) and **runnable** (ready, waiting for a CPU),
//! with stacks, measured by the manager thread **without any signal**.
//!
//! The CPU part of a span's wall time is its CPU samples (the handler's);
//! this module adds the rest. It runs from the manager thread
//! (`pyroscope-timer`) when wall time is on: once per sample period while
//! some thread was inside a span within the last second, otherwise at the
//! manager's usual wakes (none while the process is idle, so idle cost is
//! unchanged). A thread that enters a span while the manager sleeps is
//! noticed at its next wake (at most one scan period in a busy process, or
//! once the process has used 1 ms of CPU); its blocked time before that is
//! not counted.
//!
//! - **Which threads**: the label arena's entries (`context::slot`) owned by
//!   a live thread whose labels hold a span (a span id or a span name).
//!   Reading them is atomics only. Threads outside spans (idle pool threads
//!   parked in `epoll_wait`) are never looked at, and the profiler's own
//!   threads are skipped.
//! - **Bound per tick**: at most [`THREADS_PER_TICK`] in-span threads are
//!   checked per tick, round robin over the arena, and at most
//!   [`ENTRIES_PER_TICK`] entries are looked at to find them. With more
//!   threads in spans each is checked less often, not less exactly: every
//!   check weighs what it credits by the wall time since that thread's own
//!   previous check. A thread's first check in a span only starts the
//!   clock: with N threads in spans, up to N / [`THREADS_PER_TICK`] ticks
//!   of a new span's start go uncounted.
//! - **A check**: the thread's CPU clock (`clock_gettime` on the clock id
//!   the kernel derives from its tid). Off-CPU time is the wall time since
//!   the previous check minus the CPU time used meanwhile. It is credited
//!   to the span the thread's entry held at the previous check; if the
//!   entry now holds another span, half goes to each (the moment of the
//!   change is not known), and time of a thread no longer in any span is
//!   dropped for the half outside it.
//! - **Blocked**: if the thread is in a system call
//!   (`/proc/self/task/TID/syscall`: number, arguments, stack pointer and
//!   program counter of a thread of our own process, no ptrace rights
//!   needed), its stack is copied with `process_vm_readv` (which fails
//!   rather than faults if the memory went away) from the stack pointer up
//!   to the top of the stack the thread registered, and unwound with the
//!   sampler's unwinder from that pc and sp. The syscall file and the CPU
//!   clock are read again afterwards: a thread that ran meanwhile is
//!   rejected (its copy may be torn). The stack gets a synthetic leaf
//!   `[blocked: <syscall>]`.
//! - **One stack per episode**: a blocking episode lasts while the thread's
//!   CPU clock stands still. Any run moves it (the kernel updates a thread's
//!   CPU time, in nanoseconds, whenever it leaves a CPU), so this is exact
//!   and costs one `clock_gettime` per check: the stack taken at the
//!   episode's first check is reused, and each later check of the same
//!   episode adds the time since the previous one to it. No file is read
//!   and nothing is unwound again.
//! - **Frame pointers**: the kernel shows only pc and sp. Where a frame's
//!   unwind rule needs the frame pointer (code built with frame pointers,
//!   such as std's), one is looked for on the copied stack: the lowest
//!   frame record above the frame's stack pointer whose return address
//!   follows a call instruction (x86-64; on aarch64, whose leaf return
//!   address is in `lr`, which is not shown either, such stacks end early).
//! - **Runnable**: a thread whose CPU clock stands still while the kernel
//!   says it is not in a system call but "running" is waiting for a CPU; its
//!   time goes on its last known stack with a leaf `[runnable]`. For a
//!   thread that also ran since its last check, the runnable part is the
//!   growth of its run-queue delay (`/proc/self/task/TID/schedstat`), the
//!   rest is blocked (but runnable if it is running now and its voluntary
//!   context switches did not move: the delay of a wait still going on
//!   shows only once it runs); blocked time of at most 1/16 of the interval
//!   (a busy thread's short waits) goes on its last stack and call without
//!   reading the syscall file.
//! - **No stack to be had** (the syscall file or `process_vm_readv` is not
//!   available, another architecture's registers, a thread that never
//!   registered its stack and lies outside the maps snapshot): the time
//!   still counts, on the thread's last known stack (or none) with the same
//!   leaf.
//! - **Files kept open**: the task files read (`syscall`, `schedstat`,
//!   `status`) stay open between checks, up to [`MAX_OPEN_TASK_FILES`],
//!   and are read again from offset 0: the path lookup and open cost more
//!   than the read. A thread that exited fails its next read, and its file
//!   is opened again by path (its tid may be a new thread's).
//! - **EINTR**: no signal is ever sent to a thread for wall time. Blocked
//!   threads are only read from `/proc` and from our own memory, so no
//!   system call of the application can fail with `EINTR` because of it
//!   (`tests/it/wall_eintr.rs`).
//! - **Output**: the time is added up per (labels, leaf, stack) and handed
//!   on once a second (and when the sampler stops) to the collector's wall
//!   profile, one sample each: `[1, nanoseconds]`, with the synthetic leaf
//!   frame above the unwound stack.
//!
//! Cost figures (manager CPU with many blocked threads) are in
//! BENCHMARKS.md, "Wall time: blocked threads".

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
#[cfg(test)]
use std::sync::Mutex;

use framehop::{FrameAddress, UnwindRegsNative, Unwinder};

use super::buffer::MAX_FRAMES;
use super::unwind::NativeCache;
use super::{MAPS, UNWIND};
use crate::context::{self, SlotRef, SlotView, SpanLabels};
use crate::profile::extra;
use crate::profile::{synthetic_frame, ProfileKind};

/// In-span threads checked per tick, at most.
pub(crate) const THREADS_PER_TICK: usize = 8;
/// Arena entries looked at per tick, at most (atomic loads each).
pub(crate) const ENTRIES_PER_TICK: u32 = 256;
/// How often added-up time is handed on.
const FLUSH_NANOS: u64 = 1_000_000_000;
/// Distinct (labels, leaf, stack) keys held before an early hand-on.
const MAX_PENDING: usize = 4096;
/// Task files (`syscall`, `schedstat`, `status` of in-span threads) kept
/// open between checks, at most; past it they are all closed.
const MAX_OPEN_TASK_FILES: usize = 48;
/// The most of a blocked thread's stack copied to unwind it.
const MAX_STACK_COPY: usize = 512 * 1024;
/// Blocked time of at most 1/this of an interval in which the thread also
/// ran is a busy thread's short waits: no file is read for it.
const MOSTLY_ON_CPU: u64 = 16;

/// The synthetic leaf frame of a wall record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Leaf {
    /// Off CPU in a system call (its name if known), or blocked outside one.
    Blocked(Option<&'static str>),
    /// Ready to run, waiting for a CPU.
    Runnable,
}

impl Leaf {
    /// The frame's function name: `[blocked: futex]`, `[blocked]`,
    /// `[runnable]`.
    pub(crate) fn name(self) -> String {
        match self {
            Leaf::Blocked(Some(call)) => format!("[blocked: {call}]"),
            Leaf::Blocked(None) => "[blocked]".to_owned(),
            Leaf::Runnable => "[runnable]".to_owned(),
        }
    }
}

/// What `/proc/self/task/TID/syscall` says about a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyscallState {
    /// On a CPU or ready to run (`running`).
    Running,
    /// Blocked outside a system call (`-1 sp pc`: a page fault, stopped).
    Blocked { sp: u64, pc: u64 },
    /// Blocked in system call `nr` (`nr a1 .. a6 sp pc`).
    In {
        nr: libc::c_long,
        args: [u64; 6],
        sp: u64,
        pc: u64,
    },
}

fn hex(word: &str) -> Option<u64> {
    u64::from_str_radix(word.strip_prefix("0x")?, 16).ok()
}

/// Parses the text of `/proc/PID/task/TID/syscall`.
pub(crate) fn parse_syscall(text: &str) -> Option<SyscallState> {
    let mut words = text.split_ascii_whitespace();
    let first = words.next()?;
    if first == "running" {
        return Some(SyscallState::Running);
    }
    let nr: libc::c_long = first.parse().ok()?;
    if nr < 0 {
        let sp = hex(words.next()?)?;
        let pc = hex(words.next()?)?;
        return Some(SyscallState::Blocked { sp, pc });
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = hex(words.next()?)?;
    }
    let sp = hex(words.next()?)?;
    let pc = hex(words.next()?)?;
    Some(SyscallState::In { nr, args, sp, pc })
}

/// Parses `/proc/PID/task/TID/schedstat`: (CPU time, run-queue delay), in
/// nanoseconds.
pub(crate) fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut words = text.split_ascii_whitespace();
    let cpu = words.next()?.parse().ok()?;
    let delay = words.next()?.parse().ok()?;
    Some((cpu, delay))
}

/// Parses `voluntary_ctxt_switches` out of `/proc/PID/task/TID/status`.
pub(crate) fn parse_voluntary_switches(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

/// The name of system call `nr` on this architecture, for the calls a
/// thread commonly blocks in.
pub(crate) fn syscall_name(nr: libc::c_long) -> Option<&'static str> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        SYSCALL_NAMES
            .iter()
            .find(|(n, _)| *n == nr)
            .map(|(_, name)| *name)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = nr;
        None
    }
}

/// Calls a thread blocks in, by number (libc's per-architecture numbers).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYSCALL_NAMES: &[(libc::c_long, &str)] = &[
    (libc::SYS_read, "read"),
    (libc::SYS_write, "write"),
    (libc::SYS_readv, "readv"),
    (libc::SYS_writev, "writev"),
    (libc::SYS_pread64, "pread64"),
    (libc::SYS_pwrite64, "pwrite64"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_close, "close"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_fcntl, "fcntl"),
    (libc::SYS_flock, "flock"),
    (libc::SYS_fsync, "fsync"),
    (libc::SYS_fdatasync, "fdatasync"),
    (libc::SYS_futex, "futex"),
    (libc::SYS_nanosleep, "nanosleep"),
    (libc::SYS_clock_nanosleep, "clock_nanosleep"),
    (libc::SYS_epoll_pwait, "epoll_pwait"),
    (libc::SYS_epoll_pwait2, "epoll_pwait2"),
    (libc::SYS_ppoll, "ppoll"),
    (libc::SYS_pselect6, "pselect6"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_recvfrom, "recvfrom"),
    (libc::SYS_recvmsg, "recvmsg"),
    (libc::SYS_recvmmsg, "recvmmsg"),
    (libc::SYS_sendto, "sendto"),
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_sendmmsg, "sendmmsg"),
    (libc::SYS_sendfile, "sendfile"),
    (libc::SYS_splice, "splice"),
    (libc::SYS_wait4, "wait4"),
    (libc::SYS_waitid, "waitid"),
    (libc::SYS_sched_yield, "sched_yield"),
    (libc::SYS_rt_sigtimedwait, "rt_sigtimedwait"),
    (libc::SYS_rt_sigsuspend, "rt_sigsuspend"),
    (libc::SYS_io_getevents, "io_getevents"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_msgrcv, "msgrcv"),
    (libc::SYS_semop, "semop"),
    (libc::SYS_mmap, "mmap"),
    (libc::SYS_munmap, "munmap"),
    (libc::SYS_madvise, "madvise"),
    (libc::SYS_getrandom, "getrandom"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_poll, "poll"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_select, "select"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_epoll_wait, "epoll_wait"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_accept, "accept"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_pause, "pause"),
];

/// What the wall sampler asks of the system: a trait, so that the episode
/// logic is tested against a scripted fake.
pub(crate) trait Probe {
    /// A monotonic clock, in nanoseconds.
    fn now(&mut self) -> u64;
    /// Arena entries that may be owned: indexes `0..used`.
    fn used(&mut self) -> u32;
    /// The entry at `index`, if owned.
    fn view(&mut self, index: u32) -> Option<SlotView>;
    /// The thread's CPU time so far; `None` if it is gone.
    fn cpu(&mut self, tid: u32) -> Option<u64>;
    /// Whether and where the thread is blocked.
    fn syscall(&mut self, tid: u32) -> Option<SyscallState>;
    /// The thread's run-queue delay so far.
    fn run_delay(&mut self, tid: u32) -> Option<u64>;
    /// How many times the thread went to sleep so far.
    fn voluntary_switches(&mut self, tid: u32) -> Option<u64>;
    /// The stack of a blocked thread (leaf first, `pc` first), from its
    /// stack pointer `sp`; `None` if it cannot be read.
    fn stack(&mut self, view: &SlotView, sp: u64, pc: u64) -> Option<Vec<u64>>;
}

/// Wall time added up for one (labels, leaf, stack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) labels: SpanLabels,
    pub(crate) leaf: Leaf,
    /// Leaf first (below `leaf`): the blocked pc, then return addresses.
    pub(crate) frames: Arc<[u64]>,
    pub(crate) nanos: u64,
    /// Records of this key merged (1 per hand-on).
    pub(crate) samples: u64,
}

/// Counters of one wall sampler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WallStats {
    /// Threads checked.
    pub(crate) checks: u64,
    /// Blocking episodes whose stack was unwound.
    pub(crate) episodes: u64,
    /// Stacks thrown away because the thread ran while it was copied.
    pub(crate) rejected: u64,
    /// Blocked time put on the last known stack (no stack to be had).
    pub(crate) fallbacks: u64,
}

/// A blocking episode: its leaf and stack, reused while the CPU clock
/// stands still.
struct Episode {
    leaf: Leaf,
    frames: Arc<[u64]>,
}

/// A thread seen inside a span at its last check.
struct Tracked {
    slot: SlotRef,
    tid: u32,
    /// Wall clock and CPU clock at the last check.
    wall: u64,
    cpu: u64,
    /// The labels at the last check.
    labels: SpanLabels,
    /// Run-queue delay as of `cpu` (valid while the thread has not run
    /// since it was read).
    run_delay: Option<u64>,
    /// Voluntary context switches (times it went to sleep), as last read.
    voluntary: Option<u64>,
    episode: Option<Episode>,
    /// The last stack unwound, for time without a stack of its own.
    last_stack: Arc<[u64]>,
    /// The last system call it was seen blocked in.
    last_call: Option<&'static str>,
}

type Key = (SpanLabels, Leaf, Arc<[u64]>);

/// The wall-time sampler's state (manager thread only).
pub(crate) struct Wall<P: Probe> {
    probe: P,
    threads: HashMap<u32, Tracked>,
    cursor: u32,
    pending: HashMap<Key, u64>,
    last_flush: u64,
    stats: WallStats,
    empty: Arc<[u64]>,
    out: Box<dyn FnMut(Record) + Send>,
}

impl<P: Probe> std::fmt::Debug for Wall<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wall")
            .field("threads", &self.threads.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// `true` if `labels` hold a span.
fn in_span(labels: &SpanLabels) -> bool {
    labels.span_id != 0 || labels.name_id != 0
}

impl<P: Probe> Wall<P> {
    /// A wall sampler reading the system through `probe` and handing its
    /// records to `out`.
    pub(crate) fn new(mut probe: P, out: Box<dyn FnMut(Record) + Send>) -> Wall<P> {
        let last_flush = probe.now();
        Wall {
            probe,
            threads: HashMap::new(),
            cursor: 0,
            pending: HashMap::new(),
            last_flush,
            stats: WallStats::default(),
            empty: Arc::from(Vec::new()),
            out,
        }
    }

    /// Counters so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn stats(&self) -> WallStats {
        self.stats
    }

    /// One tick: checks up to [`THREADS_PER_TICK`] in-span threads, round
    /// robin, and hands on what was added up once a second. Returns `true`
    /// if it saw a thread inside a span (or still tracks one).
    pub(crate) fn tick(&mut self) -> bool {
        let now = self.probe.now();
        let used = self.probe.used();
        let mut checked = 0;
        let mut seen = false;
        for _ in 0..used.min(ENTRIES_PER_TICK) {
            if checked >= THREADS_PER_TICK {
                break;
            }
            let index = if self.cursor >= used { 0 } else { self.cursor };
            self.cursor = index + 1;
            let tracked = self.threads.contains_key(&index);
            let view = match self.probe.view(index) {
                Some(v) if !v.profiler => v,
                _ => {
                    if tracked {
                        self.threads.remove(&index);
                    }
                    continue;
                }
            };
            let inside = in_span(&view.labels);
            if !inside && !tracked {
                continue;
            }
            seen |= inside;
            checked += 1;
            self.check(index, view, now);
        }
        if now.saturating_sub(self.last_flush) >= FLUSH_NANOS || self.pending.len() >= MAX_PENDING {
            self.flush();
        }
        seen || !self.threads.is_empty()
    }

    /// Hands on everything added up so far.
    pub(crate) fn flush(&mut self) {
        self.last_flush = self.probe.now();
        for ((labels, leaf, frames), nanos) in self.pending.drain() {
            (self.out)(Record {
                labels,
                leaf,
                frames,
                nanos,
                samples: 1,
            });
        }
    }

    fn check(&mut self, index: u32, v: SlotView, now: u64) {
        self.stats.checks += 1;
        let Some(cpu) = self.probe.cpu(v.tid) else {
            self.threads.remove(&index);
            return;
        };
        let inside = in_span(&v.labels);
        let Some(mut t) = self
            .threads
            .remove(&index)
            .filter(|t| t.slot == v.slot && t.tid == v.tid)
        else {
            if inside {
                let run_delay = self.probe.run_delay(v.tid);
                self.threads.insert(
                    index,
                    Tracked {
                        slot: v.slot,
                        tid: v.tid,
                        wall: now,
                        cpu,
                        labels: v.labels,
                        run_delay,
                        voluntary: self.probe.voluntary_switches(v.tid),
                        episode: None,
                        last_stack: self.empty.clone(),
                        last_call: None,
                    },
                );
            }
            return;
        };
        let elapsed = now.saturating_sub(t.wall);
        let ran = cpu.saturating_sub(t.cpu);
        let off = elapsed.saturating_sub(ran);
        let (before, after) = (t.labels, v.labels);
        if ran == 0 {
            // Not run since the last check: the same episode, if one was
            // seen; else look at what it waits for.
            let (leaf, frames) = match &t.episode {
                Some(e) => (e.leaf, e.frames.clone()),
                None => self.classify(&mut t, &v, cpu),
            };
            self.credit(before, after, leaf, frames, off);
        } else {
            t.episode = None;
            // Ran meanwhile: the run-queue delay's growth is the runnable
            // part (unknown: all of a small remainder), the rest blocked.
            let delay = self.probe.run_delay(v.tid);
            let small = |nanos: u64| nanos.saturating_mul(MOSTLY_ON_CPU) <= elapsed;
            let runnable = match (t.run_delay, delay) {
                (Some(a), Some(b)) => b.saturating_sub(a).min(off),
                _ if small(off) => off,
                _ => 0,
            };
            t.run_delay = delay;
            let frames = t.last_stack.clone();
            self.credit(before, after, Leaf::Runnable, frames, runnable);
            let blocked = off - runnable;
            let (leaf, frames) = if small(blocked) {
                // A busy thread's short waits: no file read for them.
                (Leaf::Blocked(t.last_call), t.last_stack.clone())
            } else {
                match self.classify(&mut t, &v, cpu) {
                    // On a CPU or in the run queue now: if it never went to
                    // sleep since the last look, it was waiting for a CPU
                    // (the run-queue delay grows only once it runs again);
                    // otherwise it blocked earlier in the interval.
                    (Leaf::Runnable, frames) => {
                        let switches = self.probe.voluntary_switches(v.tid);
                        let slept = switches.is_none() || switches != t.voluntary;
                        t.voluntary = switches;
                        if slept {
                            (Leaf::Blocked(t.last_call), frames)
                        } else {
                            (Leaf::Runnable, frames)
                        }
                    }
                    found => found,
                }
            };
            self.credit(before, after, leaf, frames, blocked);
        }
        if off > 0 && in_span(&before) {
            // The span entered now got a wall sample: the layer sets its
            // `pyroscope.profile.id` at its next exit.
            crate::context::count_sample(v.slot);
        }
        t.wall = now;
        t.cpu = cpu;
        t.labels = v.labels;
        if inside {
            self.threads.insert(index, t);
        }
    }

    /// What a thread off CPU now waits for, with a stack: a new blocking
    /// episode (unwound, and cached in `t`), runnable, or blocked without
    /// a stack of its own. `cpu` is its CPU time read at this check.
    fn classify(&mut self, t: &mut Tracked, v: &SlotView, cpu: u64) -> (Leaf, Arc<[u64]>) {
        match self.probe.syscall(v.tid) {
            Some(SyscallState::Running) => (Leaf::Runnable, t.last_stack.clone()),
            Some(first @ SyscallState::In { nr, sp, pc, .. }) => {
                let leaf = Leaf::Blocked(syscall_name(nr));
                t.last_call = syscall_name(nr);
                match self.probe.stack(v, sp, pc).filter(|f| !f.is_empty()) {
                    Some(frames) => {
                        // Still in the same call, and not run meanwhile: the
                        // copy is whole.
                        let same = self.probe.syscall(v.tid) == Some(first)
                            && self.probe.cpu(v.tid) == Some(cpu);
                        if same {
                            let frames: Arc<[u64]> = frames.into();
                            self.stats.episodes += 1;
                            t.last_stack = frames.clone();
                            t.episode = Some(Episode {
                                leaf,
                                frames: frames.clone(),
                            });
                            return (leaf, frames);
                        }
                        self.stats.rejected += 1;
                        (leaf, t.last_stack.clone())
                    }
                    None => {
                        // No stack to be had: the episode keeps the last one
                        // (no retry every check).
                        self.stats.fallbacks += 1;
                        t.episode = Some(Episode {
                            leaf,
                            frames: t.last_stack.clone(),
                        });
                        (leaf, t.last_stack.clone())
                    }
                }
            }
            Some(SyscallState::Blocked { .. }) | None => {
                self.stats.fallbacks += 1;
                let leaf = Leaf::Blocked(None);
                t.episode = Some(Episode {
                    leaf,
                    frames: t.last_stack.clone(),
                });
                (leaf, t.last_stack.clone())
            }
        }
    }

    /// Adds `nanos` to the span held at the previous check (`before`) or,
    /// if the entry changed since, half to each.
    fn credit(
        &mut self,
        before: SpanLabels,
        after: SpanLabels,
        leaf: Leaf,
        frames: Arc<[u64]>,
        nanos: u64,
    ) {
        if before == after {
            self.add(before, leaf, frames, nanos);
        } else {
            let half = nanos / 2;
            self.add(before, leaf, frames.clone(), half);
            self.add(after, leaf, frames, nanos - half);
        }
    }

    fn add(&mut self, labels: SpanLabels, leaf: Leaf, frames: Arc<[u64]>, nanos: u64) {
        if nanos == 0 || !in_span(&labels) {
            return;
        }
        *self.pending.entry((labels, leaf, frames)).or_default() += nanos;
    }
}

/// Hands records to the collector's wall profile, each as one sample
/// `[1, nanos]` whose leaf is its synthetic frame.
#[cfg_attr(test, allow(dead_code))]
fn collector_sink() -> Box<dyn FnMut(Record) + Send> {
    let mut leaves: HashMap<Leaf, u64> = HashMap::new();
    let mut frames = Vec::new();
    Box::new(move |r: Record| {
        let leaf = *leaves
            .entry(r.leaf)
            .or_insert_with(|| synthetic_frame(&r.leaf.name()));
        frames.clear();
        frames.push(leaf);
        frames.extend_from_slice(&r.frames);
        let nanos = i64::try_from(r.nanos).unwrap_or(i64::MAX);
        let samples = i64::try_from(r.samples).unwrap_or(i64::MAX);
        extra::submit(ProfileKind::Wall, r.labels, &frames, [samples, nanos, 0, 0]);
    })
}

/// Records of this crate's own tests (the collector's queue is
/// process-wide, and its tests use it).
#[cfg(test)]
static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// Takes the records handed on so far (tests).
#[cfg(test)]
pub(crate) fn take_records() -> Vec<Record> {
    std::mem::take(&mut *crate::sync::lock(&RECORDS))
}

/// The real system: the label arena, `/proc/self/task`, the thread CPU
/// clocks, `process_vm_readv` and the sampler's published unwinder.
pub(crate) struct Os {
    pid: libc::pid_t,
    path: String,
    copy: Vec<u8>,
    cache: NativeCache,
    /// `process_vm_readv` refused (seccomp, no such call): not tried again.
    no_vm_read: bool,
    /// Task files kept open between checks, read again from offset 0
    /// (`pread`): the path lookup and open cost more than the read.
    /// At most [`MAX_OPEN_TASK_FILES`]; a thread that exited fails its
    /// next read and its file is dropped.
    files: HashMap<(u32, &'static str), std::fs::File>,
}

impl std::fmt::Debug for Os {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Os").finish_non_exhaustive()
    }
}

impl Default for Os {
    fn default() -> Self {
        Os {
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            path: String::new(),
            copy: Vec::new(),
            cache: NativeCache::new_in(),
            no_vm_read: false,
            files: HashMap::new(),
        }
    }
}

/// The CPU-time clock of thread `tid` (Linux's `MAKE_THREAD_CPUCLOCK(tid,
/// CPUCLOCK_SCHED)`).
fn thread_cpu_clock(tid: u32) -> libc::clockid_t {
    (((!tid) << 3) | 6) as libc::clockid_t
}

/// Reads `f` from offset 0 into `buf` (as much as fits); the byte count.
fn read_from_start(f: &std::fs::File, buf: &mut [u8]) -> Option<usize> {
    use std::os::unix::fs::FileExt;
    let mut len = 0;
    while len < buf.len() {
        match f.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(len)
}

fn clock_nanos(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; an invalid clock id fails with EINVAL.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

impl Os {
    /// Reads `/proc/self/task/TID/<file>` (a few hundred bytes at most)
    /// into `buf`, through a file kept open since an earlier check when
    /// there is one.
    fn read_task_file<'b>(
        &mut self,
        tid: u32,
        file: &'static str,
        buf: &'b mut [u8],
    ) -> Option<&'b str> {
        let key = (tid, file);
        let len = match self.files.get(&key).map(|f| read_from_start(f, buf)) {
            Some(Some(len)) if len > 0 => len,
            cached => {
                if cached.is_some() {
                    // The thread exited (the tid may be a new thread's now).
                    self.files.remove(&key);
                }
                self.path.clear();
                let _ = write!(self.path, "/proc/self/task/{tid}/{file}");
                let f = std::fs::File::open(&self.path).ok()?;
                let len = read_from_start(&f, buf)?;
                if self.files.len() >= MAX_OPEN_TASK_FILES {
                    self.files.clear();
                }
                self.files.insert(key, f);
                len
            }
        };
        std::str::from_utf8(&buf[..len]).ok()
    }

    /// Copies `len` bytes of our own memory at `addr` into `self.copy`;
    /// returns how many were read (0 if none).
    fn copy_memory(&mut self, addr: u64, len: usize) -> usize {
        if self.copy.len() < len {
            self.copy.resize(len, 0);
        }
        let local = libc::iovec {
            iov_base: self.copy.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `local` is our own buffer of at least `len` bytes; the
        // kernel checks `remote` and fails (EFAULT) rather than faulting
        // where it is not mapped.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error().raw_os_error();
            if matches!(err, Some(libc::EPERM | libc::ENOSYS)) {
                self.no_vm_read = true;
            }
            return 0;
        }
        n as usize
    }
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
/// Copies our own memory at `addr` into `out` with `process_vm_readv`
/// (an unmapped address fails, never faults); `true` if all of it was read.
fn read_own(pid: libc::pid_t, addr: u64, out: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: out.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: out.len(),
    };
    // SAFETY: `local` is `out`; the kernel checks `remote`.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    n >= 0 && n as usize == out.len()
}

impl Probe for Os {
    fn now(&mut self) -> u64 {
        clock_nanos(libc::CLOCK_MONOTONIC).unwrap_or(0)
    }

    fn used(&mut self) -> u32 {
        context::slots_used()
    }

    fn view(&mut self, index: u32) -> Option<SlotView> {
        context::slot_view(index)
    }

    fn cpu(&mut self, tid: u32) -> Option<u64> {
        clock_nanos(thread_cpu_clock(tid))
    }

    fn syscall(&mut self, tid: u32) -> Option<SyscallState> {
        let mut buf = [0u8; 256];
        parse_syscall(self.read_task_file(tid, "syscall", &mut buf)?)
    }

    fn run_delay(&mut self, tid: u32) -> Option<u64> {
        let mut buf = [0u8; 128];
        parse_schedstat(self.read_task_file(tid, "schedstat", &mut buf)?).map(|(_, d)| d)
    }

    fn voluntary_switches(&mut self, tid: u32) -> Option<u64> {
        let mut buf = [0u8; 4096];
        parse_voluntary_switches(self.read_task_file(tid, "status", &mut buf)?)
    }

    fn stack(&mut self, view: &SlotView, sp: u64, pc: u64) -> Option<Vec<u64>> {
        if self.no_vm_read {
            return None;
        }
        let unwinder = UNWIND.load(Ordering::SeqCst);
        if unwinder.is_null() {
            return None;
        }
        // SAFETY: only the manager thread, which runs this, replaces and
        // frees the published unwinder (after a grace period); it stays
        // alive for this call.
        let state = unsafe { &*unwinder };
        // The thread's registered stack, else the snapshot's mapping.
        let top = match context::stack_of(view.slot).filter(|r| r.contains(&sp)) {
            Some(r) => r.end,
            None => {
                let maps = MAPS.load(Ordering::SeqCst);
                if maps.is_null() {
                    return None;
                }
                // SAFETY: as for the unwinder.
                unsafe { &*maps }.readable_range(sp)?.end
            }
        };
        let len = usize::try_from(top.checked_sub(sp)?)
            .ok()?
            .min(MAX_STACK_COPY);
        let got = self.copy_memory(sp, len);
        if got == 0 {
            return None;
        }
        let copy = &self.copy[..got];
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let offset = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let bytes = copy
                .get(offset..offset.checked_add(8).ok_or(())?)
                .ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        #[cfg(target_arch = "x86_64")]
        let mut regs = UnwindRegsNative::new(pc, sp, 0);
        // The return address of a leaf function is in `lr`, which the
        // kernel does not show: frames whose rule needs it end there.
        #[cfg(target_arch = "aarch64")]
        let mut regs = UnwindRegsNative::new_with_ptr_auth_mask(
            framehop::aarch64::PtrAuthMask::from_max_known_address(
                state.unwinder.max_known_code_address(),
            ),
            0,
            sp,
            0,
        );
        let mut out = vec![pc];
        let mut address = FrameAddress::InstructionPointer(pc);
        // The kernel shows no frame pointer either: the first frame that
        // needs one (code built with frame pointers) gets one found on the
        // stack (see `frame_base`), once.
        #[cfg(target_arch = "x86_64")]
        let mut base_found = false;
        while out.len() < MAX_FRAMES {
            #[cfg(target_arch = "x86_64")]
            let before = regs;
            match state
                .unwinder
                .unwind_frame(address, &mut regs, &mut self.cache, &mut read_stack)
            {
                Ok(Some(ra)) => match FrameAddress::from_return_address(ra) {
                    Some(next) => {
                        out.push(ra);
                        address = next;
                    }
                    None => break,
                },
                #[cfg(target_arch = "x86_64")]
                _ if !base_found && before.bp() == 0 => {
                    base_found = true;
                    regs = before;
                    let pid = self.pid;
                    let is_return = |ret: u64| {
                        let mut before = [0u8; 8];
                        read_own(pid, ret.wrapping_sub(8), &mut before) && after_call(&before)
                    };
                    let found = frame_base(copy, sp, before.sp(), is_return);
                    match found {
                        Some(bp) => regs.set_bp(bp),
                        None => break,
                    }
                }
                _ => break,
            }
        }
        Some(out)
    }
}

/// The frame pointer of the frame whose stack pointer is `frame_sp`, found
/// in `copy` (a stack copied from `copy_at`): the lowest 8-aligned slot at
/// or above `frame_sp` (within 4 KiB) that holds a frame record, i.e. a
/// saved frame pointer (0 or further up the stack, if any slot has one)
/// followed by a return address (`is_return`: right after a call
/// instruction). A guess, used only where
/// the kernel does not show the register: a wrong one ends the stack early
/// or skips frames.
#[cfg(target_arch = "x86_64")]
fn frame_base(
    copy: &[u8],
    copy_at: u64,
    frame_sp: u64,
    mut is_return: impl FnMut(u64) -> bool,
) -> Option<u64> {
    let word = |addr: u64| -> Option<u64> {
        let offset = usize::try_from(addr.checked_sub(copy_at)?).ok()?;
        Some(u64::from_le_bytes(
            copy.get(offset..offset + 8)?.try_into().ok()?,
        ))
    };
    let top = copy_at + copy.len() as u64;
    let first = (frame_sp + 7) & !7;
    let slots = || (0..512u64).map(|i| first + i * 8);
    let mut record = |at: u64, strict: bool| -> bool {
        let (Some(saved), Some(ret)) = (word(at), word(at + 8)) else {
            return false;
        };
        // A saved frame pointer is 0 (the outermost) or higher up this
        // stack, unless the caller uses the register for something else
        // (code built without frame pointers): tried first, then not.
        let saved_ok = !strict || saved == 0 || (saved > at && saved < top && saved % 8 == 0);
        saved_ok && ret > 0x1000 && !(copy_at..top).contains(&ret) && is_return(ret)
    };
    slots()
        .find(|&at| record(at, true))
        .or_else(|| slots().find(|&at| record(at, false)))
}

/// `true` if the bytes before `ret` end with an x86-64 call instruction:
/// `call rel32`, `call *reg`, `call *disp8(reg)`, `call *disp32(reg)`,
/// `call *disp32(%rip)`, with or without a REX prefix.
#[cfg(target_arch = "x86_64")]
fn after_call(before: &[u8; 8]) -> bool {
    let b = |back: usize| before[8 - back];
    let modrm_call = |m: u8, modbits: u8| m & 0xc0 == modbits && (m >> 3) & 7 == 2;
    b(5) == 0xe8
        || (b(2) == 0xff && modrm_call(b(1), 0xc0))
        || (b(3) == 0xff && modrm_call(b(2), 0x40))
        || (b(4) == 0xff && modrm_call(b(3), 0x40) && b(3) & 7 == 4)
        || (b(6) == 0xff && (b(5) == 0x15 || modrm_call(b(5), 0x80)))
        || (b(7) == 0xff && modrm_call(b(6), 0x80) && b(6) & 7 == 4)
}

/// A wall sampler over the real system, handing its records to the
/// collector (`profile::extra`).
pub(crate) fn start() -> Wall<Os> {
    #[cfg(not(test))]
    let out = collector_sink();
    #[cfg(test)]
    let out: Box<dyn FnMut(Record) + Send> = Box::new(|r| crate::sync::lock(&RECORDS).push(r));
    Wall::new(Os::default(), out)
}

#[cfg(test)]
mod tests;
