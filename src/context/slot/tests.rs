use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[test]
fn slot_refs_round_trip_and_none_refers_to_nothing() {
    let slot = SlotRef {
        index: 7,
        generation: 0xdead_beef,
    };
    assert_eq!(SlotRef::from_bits(slot.to_bits()), slot);
    assert_eq!(read_slot(SlotRef::from_bits(SlotRef::NONE_BITS)), None);
}

#[test]
fn the_manager_and_the_thread_agree_on_one_entry_and_exit_releases_it() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let labels = SpanLabels::new(0x5107, 3, 0);
    let thread = std::thread::spawn(move || {
        let tid = own_tid().expect("/proc/thread-self");
        // "The manager" claims first, from another thread.
        let claimed = std::thread::scope(|s| s.spawn(|| slot_for_tid(tid)).join())
            .unwrap()
            .expect("claim");
        // The thread's own first write finds the same entry.
        replace(labels);
        assert_eq!(own_slot(), Some(claimed));
        tx.send((tid, claimed)).unwrap();
        go_rx.recv().unwrap();
    });
    let (tid, slot) = rx.recv().unwrap();
    assert!(slot_is_current(slot, tid));
    assert_eq!(read_slot(slot).map(|l| l.span_id), Some(0x5107));
    go_tx.send(()).unwrap();
    thread.join().unwrap();
    // Released at exit: the reference reads nothing, and releasing
    // again (the manager, late) loses the race harmlessly.
    assert!(!slot_is_current(slot, tid));
    assert_eq!(read_slot(slot), None);
    assert!(!release_slot(slot, tid));
}

#[test]
fn an_entry_taken_back_from_a_live_thread_is_reclaimed_with_its_labels() {
    std::thread::spawn(|| {
        let labels = SpanLabels::new(0xca11, 0, 0);
        replace(labels);
        let slot = own_slot().unwrap();
        let tid = own_tid().unwrap();
        assert!(release_slot(slot, tid));
        // The next access notices and registers again.
        assert_eq!(current(), labels);
        let again = own_slot().unwrap();
        assert_ne!(again, slot);
        assert_eq!(read_slot(again).map(|l| l.span_id), Some(0xca11));
    })
    .join()
    .unwrap();
}

#[test]
fn exited_threads_entries_are_released_by_the_sweep() {
    // A thread the manager claimed an entry for, which never touched
    // the crate itself, so no guard returns it.
    let (tid, slot) = std::thread::spawn(|| {
        let tid = own_tid().unwrap();
        (tid, slot_for_tid(tid).unwrap())
    })
    .join()
    .unwrap();
    // The thread is gone from /proc once joined; "listed" claims every
    // tid is alive except this one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while slot_is_current(slot, tid) && std::time::Instant::now() < deadline {
        release_exited(|t| t != tid);
    }
    assert!(!slot_is_current(slot, tid));
    // A live thread's entry is never taken for dead.
    let own = own_slot().unwrap();
    let me = own_tid().unwrap();
    release_exited(|_| false);
    assert!(slot_is_current(own, me));
}

#[test]
fn a_read_overtaken_by_two_writes_is_retried_not_torn() {
    let a = SpanLabels::new(0x1111, 0x2222 << 64 | 0x3333, 0x44).with_fields(0x55);
    let b = SpanLabels::new(0x6666, 0x7777 << 64 | 0x8888, 0x99).with_fields(0xaa);
    std::thread::spawn(move || {
        replace(a);
        let slot = own_slot().unwrap();
        // A slow reader: after the first word of the current copy, the
        // writer runs twice, so that very copy is rewritten under it.
        let mut pauses = 0;
        let read = read_slot_pausing(slot, || {
            pauses += 1;
            if pauses == 1 {
                replace(b);
                replace(b);
            }
        });
        assert_eq!(pauses, 2, "the overtaken attempt was not retried");
        assert_eq!(read, Some(b));
    })
    .join()
    .unwrap();
}

#[test]
fn a_reader_on_another_thread_never_sees_a_torn_mix() {
    // Two label sets that differ in every word.
    let a = SpanLabels::new(0x1111_1111_1111_1111, 0x2222 << 64 | 0x3333, 0x44).with_fields(0x55);
    let b = SpanLabels::new(0x6666_6666_6666_6666, 0x7777 << 64 | 0x8888, 0x99).with_fields(0xaa);
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            replace(a);
            tx.send(own_slot().unwrap()).unwrap();
            let mut writes = 0u64;
            // Millions of writes, and on until the reader is done.
            while writes < 2_000_000 || !done.load(Ordering::Relaxed) {
                for _ in 0..1000 {
                    replace(if writes & 1 == 0 { b } else { a });
                    writes += 1;
                }
            }
            writes
        })
    };
    let slot = rx.recv().unwrap();
    let (mut reads, mut seen_a, mut seen_b, mut gave_up) = (0u64, 0u64, 0u64, 0u64);
    // Millions of reads, and until both sets were seen often (on a
    // busy machine the writer may wait for a CPU a while).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while reads < 4_000_000 || (seen_a.min(seen_b) < 10_000 && std::time::Instant::now() < deadline)
    {
        reads += 1;
        match read_slot(slot) {
            Some(l) if l == a => seen_a += 1,
            Some(l) if l == b => seen_b += 1,
            Some(l) => panic!("torn read after {reads} reads: {l:?}"),
            None => gave_up += 1,
        }
    }
    done.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    println!("{writes} writes, {reads} reads: {seen_a} a, {seen_b} b, {gave_up} gave up");
    assert!(
        seen_a.min(seen_b) >= 10_000,
        "the reader saw too few flips to test"
    );
}
