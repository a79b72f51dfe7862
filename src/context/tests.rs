use super::*;

#[test]
fn replace_returns_previous_and_restores() {
    let a = SpanLabels::new(1, 2, 0);
    let b = SpanLabels::new(3, 0, 0);
    assert_eq!(current(), SpanLabels::NONE);
    let p0 = replace(a);
    assert_eq!(p0, SpanLabels::NONE);
    let p1 = replace(b);
    assert_eq!(p1, a);
    assert_eq!(current(), b);
    replace(p1);
    assert_eq!(current(), a);
    replace(p0);
    assert_eq!(current(), SpanLabels::NONE);
}

#[test]
fn slots_are_per_thread() {
    replace(SpanLabels::new(7, 0, 0));
    std::thread::spawn(|| assert_eq!(current(), SpanLabels::NONE))
        .join()
        .unwrap();
    assert_eq!(current().span_id, 7);
    replace(SpanLabels::NONE);
}

#[test]
fn profiler_threads_are_marked_for_the_signal_handler_only() {
    let labels = SpanLabels::new(5, 0, 0);
    // What the handler reads on this thread: through the entry its
    // timer names, no thread local.
    let in_handler = || {
        let slot = slot::own_slot().expect("an arena entry");
        read_in_signal_handler(slot.to_bits())
    };
    std::thread::spawn(move || {
        assert_eq!(in_handler().profiler_thread(), None);
        mark_profiler_thread(ProfilerThread::Collector);
        let previous = replace(labels);
        let seen = in_handler();
        // The span's labels, plus the thread; the slot itself and the
        // labels written are unchanged.
        assert_eq!((seen.span_id, seen.trace_id, seen.name_id), (5, 0, 0));
        assert_eq!(seen.profiler_thread(), Some(ProfilerThread::Collector));
        assert_eq!(current(), labels);
        assert_eq!(current().profiler_thread(), None);
        replace(previous);
        assert_eq!(
            in_handler().profiler_thread(),
            Some(ProfilerThread::Collector)
        );
        // Not a label.
        let mut pairs = 0;
        in_handler().for_each_label(|_, _| pairs += 1);
        assert_eq!(pairs, 0);
    })
    .join()
    .unwrap();
    // Other threads are not marked.
    assert_eq!(in_handler().profiler_thread(), None);
    // A timer without an entry (the arena was full) reads no labels.
    assert_eq!(read_in_signal_handler(SlotRef::NONE_BITS), SpanLabels::NONE);
    for thread in ProfilerThread::ALL {
        assert_eq!(ProfilerThread::from_code(thread.code()), Some(thread));
    }
    // Each frame says it is the profiler's and which thread.
    let names: Vec<&str> = ProfilerThread::ALL.iter().map(|t| t.frame_name()).collect();
    for (name, thread) in
        names
            .iter()
            .zip(["pyroscope-collect", "pyroscope-timer", "pyroscope-upload"])
    {
        assert!(name.starts_with("tracing-pyroscope: "), "{name}");
        assert!(name.ends_with(&format!("({thread})")), "{name}");
    }
}

#[test]
fn labels_iterate_each_present_key() {
    let name = intern_name("context-test-iter");
    let collect = |l: SpanLabels| {
        let mut out = Vec::new();
        l.for_each_label(|k, v| out.push((k, v.to_string())));
        out
    };
    assert_eq!(collect(SpanLabels::NONE), []);
    assert_eq!(
        collect(SpanLabels::new(1, 0xabc, name)),
        [
            (keys::SPAN_ID, "0000000000000001".to_string()),
            (keys::SPAN_NAME, "context-test-iter".to_string()),
            (keys::TRACE_ID, format!("{:032x}", 0xabc)),
        ]
    );
    // A name alone (scope `none`) is still a label.
    assert_eq!(
        collect(SpanLabels::new(0, 0, name)),
        [(keys::SPAN_NAME, "context-test-iter".to_string())]
    );
    assert_eq!(span_id_hex(u64::MAX), "ffffffffffffffff");
    assert_eq!(trace_id_hex(1).len(), 32);
}

#[test]
fn long_names_are_cut_on_a_char_boundary_with_a_mark() {
    assert_eq!(truncate_value("short"), "short");
    let long = "é".repeat(3000); // 6000 bytes
    let cut = truncate_value(&long);
    assert!(cut.len() <= MAX_VALUE_LEN, "{}", cut.len());
    assert!(cut.ends_with(TRUNCATED_MARK));
    assert!(cut.len() > MAX_VALUE_LEN - 8);
    let id = intern_name(&long);
    assert_eq!(name_of(id).as_deref(), Some(&*cut));
}

#[test]
fn names_intern_to_stable_nonzero_ids() {
    let a = intern_name("context-test-a");
    let b = intern_name("context-test-b");
    assert_ne!(a, 0);
    assert_ne!(a, b);
    assert_eq!(intern_name("context-test-a"), a);
    assert_eq!(name_of(a).as_deref(), Some("context-test-a"));
    assert_eq!(name_of(0), None);
}
