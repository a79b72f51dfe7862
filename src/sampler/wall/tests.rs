//! The wall sampler's parsing and episode logic against a scripted system,
//! and one live check on this process.
use super::*;
use crate::sampler::{Options, Sampler};
use std::sync::Mutex as StdMutex;

#[test]
fn the_syscall_file_parses_in_its_three_forms() {
    assert_eq!(parse_syscall("running\n"), Some(SyscallState::Running));
    assert_eq!(
        parse_syscall("-1 0x7ffc1000 0x401234\n"),
        Some(SyscallState::Blocked {
            sp: 0x7ffc_1000,
            pc: 0x40_1234
        })
    );
    let text = "230 0x0 0x0 0x7fff122034c0 0x7fff12203500 0x0 0x0 0x7fff122034a8 0x7f042f706503\n";
    assert_eq!(
        parse_syscall(text),
        Some(SyscallState::In {
            nr: 230,
            args: [0, 0, 0x7fff_1220_34c0, 0x7fff_1220_3500, 0, 0],
            sp: 0x7fff_1220_34a8,
            pc: 0x7f04_2f70_6503,
        })
    );
    assert_eq!(parse_syscall(""), None);
    assert_eq!(parse_syscall("230 0x0 0x0"), None);
    assert_eq!(parse_syscall("230 0x0 0x0 0x0 0x0 0x0 0x0 0x1 zz"), None);
}

#[test]
fn status_gives_voluntary_switches() {
    let text = "Name:\tx\nvoluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t3\n";
    assert_eq!(parse_voluntary_switches(text), Some(17));
    assert_eq!(parse_voluntary_switches("Name:\tx\n"), None);
}

#[test]
fn schedstat_gives_cpu_and_run_queue_delay() {
    assert_eq!(
        parse_schedstat("998974 1030669 2\n"),
        Some((998_974, 1_030_669))
    );
    assert_eq!(parse_schedstat("12"), None);
}

#[test]
fn common_blocking_calls_have_names() {
    assert_eq!(syscall_name(libc::SYS_futex), Some("futex"));
    assert_eq!(syscall_name(libc::SYS_read), Some("read"));
    assert_eq!(
        syscall_name(libc::SYS_clock_nanosleep),
        Some("clock_nanosleep")
    );
    #[cfg(target_arch = "x86_64")]
    assert_eq!(syscall_name(232), Some("epoll_wait"));
    assert_eq!(syscall_name(100_000), None);
    assert_eq!(Leaf::Blocked(Some("futex")).name(), "[blocked: futex]");
    assert_eq!(Leaf::Blocked(None).name(), "[blocked]");
    assert_eq!(Leaf::Runnable.name(), "[runnable]");
}

/// One scripted thread.
#[derive(Clone)]
struct FakeThread {
    labels: SpanLabels,
    cpu: u64,
    syscall: Option<SyscallState>,
    run_delay: Option<u64>,
    voluntary: Option<u64>,
    stack: Option<Vec<u64>>,
}

/// A scripted system: threads by arena index (tid = index + 100).
#[derive(Default)]
struct Fake {
    now: u64,
    threads: Vec<Option<FakeThread>>,
    syscall_reads: u64,
    stack_reads: u64,
    /// Applied to thread 0 right after its stack is read (it wakes).
    wake_during_copy: bool,
}

#[derive(Clone, Default)]
struct Shared(Arc<StdMutex<Fake>>);

impl Probe for Shared {
    fn now(&mut self) -> u64 {
        self.0.lock().unwrap().now
    }
    fn used(&mut self) -> u32 {
        self.0.lock().unwrap().threads.len() as u32
    }
    fn view(&mut self, index: u32) -> Option<SlotView> {
        let f = self.0.lock().unwrap();
        let t = f.threads.get(index as usize)?.as_ref()?;
        Some(SlotView {
            slot: SlotRef::from_bits(u64::from(index)),
            tid: index + 100,
            labels: t.labels,
            profiler: false,
        })
    }
    fn cpu(&mut self, tid: u32) -> Option<u64> {
        let f = self.0.lock().unwrap();
        Some(f.threads.get((tid - 100) as usize)?.as_ref()?.cpu)
    }
    fn syscall(&mut self, tid: u32) -> Option<SyscallState> {
        let mut f = self.0.lock().unwrap();
        f.syscall_reads += 1;
        f.threads.get((tid - 100) as usize)?.as_ref()?.syscall
    }
    fn run_delay(&mut self, tid: u32) -> Option<u64> {
        let f = self.0.lock().unwrap();
        f.threads.get((tid - 100) as usize)?.as_ref()?.run_delay
    }
    fn voluntary_switches(&mut self, tid: u32) -> Option<u64> {
        let f = self.0.lock().unwrap();
        f.threads.get((tid - 100) as usize)?.as_ref()?.voluntary
    }
    fn stack(&mut self, view: &SlotView, _sp: u64, _pc: u64) -> Option<Vec<u64>> {
        let mut f = self.0.lock().unwrap();
        f.stack_reads += 1;
        let wake = f.wake_during_copy;
        let t = f.threads.get_mut((view.tid - 100) as usize)?.as_mut()?;
        let stack = t.stack.clone();
        if wake {
            t.cpu += 1000;
        }
        stack
    }
}

const MS: u64 = 1_000_000;

fn span(id: u64) -> SpanLabels {
    SpanLabels::new(id, 0, 0)
}

fn in_call(nr: libc::c_long) -> Option<SyscallState> {
    Some(SyscallState::In {
        nr,
        args: [0; 6],
        sp: 0x1000,
        pc: 0x2000,
    })
}

fn thread(labels: SpanLabels) -> FakeThread {
    FakeThread {
        labels,
        cpu: 0,
        syscall: Some(SyscallState::Running),
        run_delay: Some(0),
        voluntary: Some(0),
        stack: Some(vec![0x2000, 0x3000]),
    }
}

type Out = Arc<StdMutex<Vec<Record>>>;

fn wall(fake: &Shared) -> (Wall<Shared>, Out) {
    let out: Out = Arc::default();
    let sink = out.clone();
    let w = Wall::new(
        fake.clone(),
        Box::new(move |r| sink.lock().unwrap().push(r)),
    );
    (w, out)
}

/// Nanoseconds per (span id, leaf name) over the records.
fn totals(out: &Out) -> HashMap<(u64, String), u64> {
    let mut totals = HashMap::new();
    for r in out.lock().unwrap().iter() {
        *totals.entry((r.labels.span_id, r.leaf.name())).or_default() += r.nanos;
    }
    totals
}

fn advance(fake: &Shared, nanos: u64, f: impl FnOnce(&mut Fake)) {
    let mut g = fake.0.lock().unwrap();
    g.now += nanos;
    f(&mut g);
}

#[test]
fn a_blocking_episode_is_unwound_once_and_weighted_by_its_time() {
    let fake = Shared::default();
    {
        let mut f = fake.0.lock().unwrap();
        f.now = 1000 * MS;
        let mut t = thread(span(7));
        t.syscall = in_call(libc::SYS_futex);
        f.threads.push(Some(t));
    }
    let (mut w, out) = wall(&fake);
    w.tick(); // first sight: a baseline only
    for _ in 0..20 {
        advance(&fake, 10 * MS, |_| {});
        w.tick();
    }
    w.flush();
    let totals = totals(&out);
    assert_eq!(totals[&(7, "[blocked: futex]".into())], 200 * MS);
    assert_eq!(totals.len(), 1, "{totals:?}");
    let f = fake.0.lock().unwrap();
    assert_eq!(f.stack_reads, 1, "one stack per episode");
    assert_eq!(f.syscall_reads, 2, "read before and after the copy");
    assert_eq!(w.stats().episodes, 1);
    let records = out.lock().unwrap();
    assert!(records.iter().all(|r| *r.frames == [0x2000, 0x3000]));
}

#[test]
fn a_new_episode_starts_when_the_cpu_clock_moves() {
    let fake = Shared::default();
    {
        let mut f = fake.0.lock().unwrap();
        let mut t = thread(span(7));
        t.syscall = in_call(libc::SYS_futex);
        f.threads.push(Some(t));
    }
    let (mut w, out) = wall(&fake);
    w.tick();
    advance(&fake, 10 * MS, |_| {});
    w.tick();
    // It ran 1 ms, then blocked in a read with another stack.
    advance(&fake, 10 * MS, |f| {
        let t = f.threads[0].as_mut().unwrap();
        t.cpu += MS;
        t.syscall = in_call(libc::SYS_read);
        t.stack = Some(vec![0x2100, 0x3000]);
    });
    w.tick();
    advance(&fake, 10 * MS, |_| {});
    w.tick();
    w.flush();
    let totals = totals(&out);
    assert_eq!(totals[&(7, "[blocked: futex]".into())], 10 * MS);
    // 9 ms off CPU in the mixed interval (no run-queue delay), then 10.
    assert_eq!(totals[&(7, "[blocked: read]".into())], 19 * MS);
    assert_eq!(fake.0.lock().unwrap().stack_reads, 2);
}

#[test]
fn runnable_time_is_the_run_queue_delay_or_a_still_clock_outside_a_call() {
    let fake = Shared::default();
    fake.0.lock().unwrap().threads.push(Some(thread(span(3))));
    let (mut w, out) = wall(&fake);
    w.tick();
    // Preempted, not in a call, clock still: runnable.
    advance(&fake, 4 * MS, |_| {});
    w.tick();
    // Busy: 9.5 of 10 ms on CPU, the rest in the run queue: no
    // syscall file read.
    let reads = fake.0.lock().unwrap().syscall_reads;
    advance(&fake, 10 * MS, |f| {
        let t = f.threads[0].as_mut().unwrap();
        t.cpu += 9_500_000;
        t.run_delay = Some(500_000);
    });
    w.tick();
    assert_eq!(fake.0.lock().unwrap().syscall_reads, reads);
    // Half on CPU, no run-queue delay yet, running now, never slept: in
    // the run queue (its delay shows only once it runs again).
    advance(&fake, 10 * MS, |f| {
        f.threads[0].as_mut().unwrap().cpu += 5 * MS
    });
    w.tick();
    // The same, but it slept: blocked somewhere earlier (call unknown).
    advance(&fake, 10 * MS, |f| {
        let t = f.threads[0].as_mut().unwrap();
        t.cpu += 5 * MS;
        t.voluntary = Some(1);
    });
    w.tick();
    // Half on CPU, 2 ms in the run queue, blocked now in a read.
    advance(&fake, 10 * MS, |f| {
        let t = f.threads[0].as_mut().unwrap();
        t.cpu += 5 * MS;
        t.run_delay = Some(2_500_000);
        t.syscall = in_call(libc::SYS_read);
    });
    w.tick();
    w.flush();
    let totals = totals(&out);
    assert_eq!(
        totals[&(3, "[runnable]".into())],
        4 * MS + 500_000 + 5 * MS + 2 * MS,
        "{totals:?}"
    );
    assert_eq!(totals[&(3, "[blocked]".into())], 5 * MS);
    assert_eq!(totals[&(3, "[blocked: read]".into())], 3 * MS);
}

#[test]
fn a_span_change_between_checks_splits_the_time() {
    let fake = Shared::default();
    {
        let mut f = fake.0.lock().unwrap();
        let mut t = thread(span(1));
        t.syscall = in_call(libc::SYS_futex);
        f.threads.push(Some(t));
    }
    let (mut w, out) = wall(&fake);
    w.tick();
    advance(&fake, 10 * MS, |f| {
        let t = f.threads[0].as_mut().unwrap();
        t.cpu += 2 * MS;
        t.labels = span(2);
    });
    w.tick();
    // Leaves every span: the last interval still counts for the one it
    // left (half), then the thread is no longer looked at.
    advance(&fake, 10 * MS, |f| {
        let t = f.threads[0].as_mut().unwrap();
        t.cpu += 2 * MS;
        t.labels = SpanLabels::NONE;
    });
    w.tick();
    let checks = w.stats().checks;
    advance(&fake, 10 * MS, |_| {});
    w.tick();
    assert_eq!(w.stats().checks, checks, "outside spans: never checked");
    w.flush();
    let totals = totals(&out);
    assert_eq!(totals[&(1, "[blocked: futex]".into())], 4 * MS);
    assert_eq!(totals[&(2, "[blocked: futex]".into())], 4 * MS + 4 * MS);
    assert_eq!(totals.len(), 2, "{totals:?}");
}

#[test]
fn a_thread_that_woke_during_the_copy_is_rejected() {
    let fake = Shared::default();
    {
        let mut f = fake.0.lock().unwrap();
        let mut t = thread(span(5));
        t.syscall = in_call(libc::SYS_read);
        f.threads.push(Some(t));
        f.wake_during_copy = true;
    }
    let (mut w, out) = wall(&fake);
    w.tick();
    advance(&fake, 10 * MS, |_| {});
    w.tick();
    w.flush();
    assert_eq!(w.stats().rejected, 1);
    assert_eq!(w.stats().episodes, 0);
    // The time counts, on the (empty) last known stack.
    let records = out.lock().unwrap();
    assert_eq!(records.len(), 1);
    assert!(records[0].frames.is_empty());
    assert_eq!(records[0].leaf, Leaf::Blocked(Some("read")));
    assert_eq!(records[0].nanos, 10 * MS);
}

#[test]
fn without_a_stack_the_time_counts_on_the_last_one() {
    let fake = Shared::default();
    {
        let mut f = fake.0.lock().unwrap();
        let mut t = thread(span(5));
        t.syscall = in_call(libc::SYS_futex);
        f.threads.push(Some(t));
    }
    let (mut w, out) = wall(&fake);
    w.tick();
    advance(&fake, 10 * MS, |_| {});
    w.tick(); // unwound: [0x2000, 0x3000]
    advance(&fake, 10 * MS, |f| {
        let t = f.threads[0].as_mut().unwrap();
        t.cpu += MS;
        t.stack = None;
        t.syscall = in_call(libc::SYS_nanosleep);
    });
    w.tick();
    advance(&fake, 10 * MS, |_| {});
    w.tick();
    w.flush();
    assert_eq!(w.stats().fallbacks, 1, "tried once per episode");
    let sleep: u64 = out
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.leaf == Leaf::Blocked(Some("nanosleep")))
        .inspect(|r| assert_eq!(&*r.frames, [0x2000, 0x3000]))
        .map(|r| r.nanos)
        .sum();
    assert_eq!(sleep, 19 * MS);
}

#[test]
fn a_tick_checks_a_bounded_number_of_threads_round_robin_and_totals_stay_exact() {
    let fake = Shared::default();
    let n = THREADS_PER_TICK * 5 + 3;
    {
        let mut f = fake.0.lock().unwrap();
        for i in 0..n {
            let mut t = thread(span(i as u64 + 1));
            t.syscall = in_call(libc::SYS_futex);
            f.threads.push(Some(t));
            // Threads outside spans in between are skipped, not counted.
            f.threads.push(Some(thread(SpanLabels::NONE)));
        }
    }
    let (mut w, out) = wall(&fake);
    let mut ticks = 0u64;
    // Enough ticks for every thread's baseline and many checks after.
    while ticks < 200 {
        let before = w.stats().checks;
        w.tick();
        assert!(w.stats().checks - before <= THREADS_PER_TICK as u64);
        advance(&fake, MS, |_| {});
        ticks += 1;
    }
    // A last full round at the same instant.
    for _ in 0..n.div_ceil(THREADS_PER_TICK) + 1 {
        w.tick();
    }
    w.flush();
    let totals = totals(&out);
    assert_eq!(totals.len(), n);
    // Each thread: from its baseline to the end, exactly.
    for (&(id, _), &nanos) in &totals {
        let baseline_tick = ((id - 1) as usize / THREADS_PER_TICK) as u64;
        assert_eq!(nanos, (200 - baseline_tick) * MS, "span {id}");
    }
}

/// Live: a thread in a span sleeping 200 ms gets ~200 ms blocked in
/// `clock_nanosleep`, on a stack through this test's function; a busy one
/// gets nearly none.
#[test]
fn a_sleeping_span_is_blocked_for_its_sleep_on_its_stack() {
    let _serial = super::super::tests::serial();
    let mut sampler = Sampler::start_with(Options {
        rate_hz: 1000,
        wall: true,
    })
    .expect("start");
    let _ = take_records();
    let sleeper = std::thread::spawn(|| {
        crate::context::replace(SpanLabels::new(0x51ee9, 0, 0));
        sleep_200_ms_in_a_span();
        crate::context::replace(SpanLabels::NONE);
    });
    let busy = std::thread::spawn(|| {
        crate::context::replace(SpanLabels::new(0xb05, 0, 0));
        let start = std::time::Instant::now();
        let mut x = 1u64;
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        crate::context::replace(SpanLabels::NONE);
    });
    sleeper.join().unwrap();
    busy.join().unwrap();
    sampler.stop();
    let records = take_records();
    let sum = |id: u64, blocked: bool| -> u64 {
        records
            .iter()
            .filter(|r| r.labels.span_id == id && matches!(r.leaf, Leaf::Blocked(_)) == blocked)
            .map(|r| r.nanos)
            .sum()
    };
    let slept = sum(0x51ee9, true);
    assert!(
        (190 * MS..=210 * MS).contains(&slept),
        "blocked {slept} ns of a 200 ms sleep: {records:#?}"
    );
    let mut symbolizer = crate::profile::Symbolizer::new();
    let mut on_stack = false;
    for r in records.iter().filter(|r| r.labels.span_id == 0x51ee9) {
        assert!(
            matches!(
                r.leaf,
                Leaf::Blocked(Some("clock_nanosleep" | "nanosleep")) | Leaf::Runnable
            ),
            "{:?}",
            r.leaf
        );
        for (i, &addr) in r.frames.iter().enumerate() {
            let probe = if i > 0 { addr.saturating_sub(1) } else { addr };
            let resolved = symbolizer.resolve(probe);
            if std::env::var_os("WALL_TEST_PRINT").is_some() {
                eprintln!("{:?} {}", r.leaf, resolved.frames[0].name);
            }
            if resolved
                .frames
                .iter()
                .any(|f| f.name.contains("sleep_200_ms_in_a_span"))
            {
                on_stack = true;
            }
        }
    }
    assert!(
        on_stack,
        "no stack through the test's function: {records:#?}"
    );
    let busy_blocked = sum(0xb05, true);
    assert!(
        busy_blocked < 20 * MS,
        "a busy span blocked {busy_blocked} ns"
    );
}

#[inline(never)]
fn sleep_200_ms_in_a_span() {
    // Work after the call: not a tail call, so this frame stays.
    let start = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::hint::black_box(start.elapsed());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn return_addresses_follow_call_instructions() {
    let ends = |tail: &[u8]| {
        let mut before = [0x90u8; 8];
        before[8 - tail.len()..].copy_from_slice(tail);
        after_call(&before)
    };
    assert!(ends(&[0xe8, 1, 2, 3, 4])); // call rel32
    assert!(ends(&[0xff, 0xd0])); // call *%rax
    assert!(ends(&[0x41, 0xff, 0xd3])); // call *%r11
    assert!(ends(&[0xff, 0x50, 0x08])); // call *8(%rax)
    assert!(ends(&[0xff, 0x15, 1, 2, 3, 4])); // call *disp(%rip)
    assert!(ends(&[0xff, 0x90, 1, 2, 3, 4])); // call *disp32(%rax)
    assert!(!ends(&[0x48, 0x89, 0xe5])); // mov %rsp, %rbp
    assert!(!ends(&[0, 0, 0, 0, 0, 0, 0, 0]));
    assert!(!ends(&[0xff, 0xe0])); // jmp *%rax
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_frame_record_is_found_above_the_stack_pointer() {
    let at = 0x7000_0000u64;
    let bytes = |words: &[u64]| -> Vec<u8> { words.iter().flat_map(|w| w.to_le_bytes()).collect() };
    // sp: locals (a pointer up the stack, a number, a function's address
    // not after a call, a stale return address after a number), then the
    // frame record (saved frame pointer 0).
    let copy = bytes(&[
        at + 0x28,
        200_000_000,
        0x40_2000,
        200_000_000,
        0x40_1005,
        0,
        0x40_1005,
        0,
    ]);
    assert_eq!(
        frame_base(&copy, at, at, |ret| ret == 0x40_1005),
        Some(at + 0x28)
    );
    // No record with a plausible saved frame pointer: the first return
    // address will do.
    let copy = bytes(&[5, 200_000_000, 0x40_1005, 0]);
    assert_eq!(
        frame_base(&copy, at, at, |ret| ret == 0x40_1005),
        Some(at + 0x8)
    );
    assert_eq!(frame_base(&copy, at, at, |_| false), None);
}
