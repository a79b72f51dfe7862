use super::*;

const BIG: DirLimits = DirLimits {
    max_bytes: 1 << 30,
    max_age: Duration::from_secs(3600),
};

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tp-dir-{name}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = fs::remove_dir_all(&d);
    d
}

fn profile(bytes: &[u8], start_ms: u64) -> EncodedProfile {
    let start = UNIX_EPOCH + Duration::from_millis(start_ms);
    EncodedProfile {
        kind: crate::profile::ProfileKind::Cpu,
        gzipped: bytes.to_vec(),
        start,
        end: start + Duration::from_secs(10),
        samples: 1,
    }
}

#[test]
fn writes_named_files_atomically() {
    let d = tempdir("files").join("nested");
    let sink = DirSink::new(&d, "svc", BIG, Arc::default()).unwrap();
    let pid = std::process::id();
    let a = sink
        .write_profile("ride/sharing app", &profile(b"one", 1_700_000_000_123))
        .unwrap();
    let b = sink
        .write_profile("ride/sharing app", &profile(b"two", 1_700_000_000_124))
        .unwrap();
    assert_eq!(
        a.file_name().unwrap().to_str().unwrap(),
        format!("ride_sharing_app-1700000000123-{pid}-0.pb.gz")
    );
    assert_eq!(
        b.file_name().unwrap().to_str().unwrap(),
        format!("ride_sharing_app-1700000000124-{pid}-1.pb.gz")
    );
    assert_eq!(fs::read(&a).unwrap(), b"one");
    assert_eq!(fs::read(&b).unwrap(), b"two");
    let names: Vec<_> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    assert_eq!(file_safe(".hidden"), "_.hidden");
    assert_eq!(file_safe(""), "_");
    fs::remove_dir_all(d.parent().unwrap()).unwrap();
}

#[test]
fn appends_span_lines() {
    let d = tempdir("spans");
    let sink = DirSink::new(&d, "svc", BIG, Arc::default()).unwrap();
    sink.append_spans(&[]).unwrap();
    assert!(!d.join(SPANS_FILE).exists());
    sink.append_spans(&["{\"a\":1}".into(), "{\"b\":2}".into()])
        .unwrap();
    sink.append_spans(&["{\"c\":3}".into()]).unwrap();
    let text = fs::read_to_string(d.join(SPANS_FILE)).unwrap();
    assert_eq!(text, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_directory_is_a_clear_error() {
    let d = tempdir("file");
    fs::write(&d, b"not a dir").unwrap();
    assert!(DirSink::new(&d.join("sub"), "svc", BIG, Arc::default()).is_err());
    assert!(DirSink::new(&d, "svc", BIG, Arc::default()).is_err());
    fs::remove_file(&d).unwrap();
}

#[test]
fn the_sink_counts_files_and_span_lines() {
    let d = tempdir("sink");
    let counters = Arc::new(Counters::default());
    let mut sink: Box<dyn Sink> = Box::new(DirSink::new(&d, "svc", BIG, counters.clone()).unwrap());
    assert!(sink.keeps_span_index());
    sink.send(&profile(b"p", 1));
    let record = SpanIndexRecord {
        span_id: "00000000000000ab".into(),
        ..SpanIndexRecord::default()
    };
    sink.index_spans(&[record.clone(), record]);
    sink.shutdown(Instant::now());
    let stats = counters.snapshot();
    assert_eq!((stats.files_written, stats.spans_recorded), (1, 2));
    let text = fs::read_to_string(d.join(SPANS_FILE)).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text
        .lines()
        .all(|l| SpanIndexRecord::from_line(l.as_bytes()).is_some()));
    fs::remove_dir_all(&d).unwrap();
}

/// Bytes of the files the sink manages (profiles and span indexes).
fn managed_bytes(d: &Path) -> u64 {
    fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let n = e.file_name().into_string().unwrap();
            (n.ends_with(".pb.gz") && !n.starts_with('.')) || is_span_index_file(&n)
        })
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn small(max_bytes: u64) -> DirLimits {
    DirLimits {
        max_bytes,
        max_age: Duration::from_secs(3600),
    }
}

#[test]
fn the_size_limit_holds_after_every_write_and_evicts_oldest_first() {
    let d = tempdir("limit");
    let counters = Arc::new(Counters::default());
    let mut sink = DirSink::new(&d, "svc", small(64 * 1024), counters.clone()).unwrap();
    // Not ours: never counted, never deleted.
    fs::write(d.join("report.html"), vec![b'x'; 100 * 1024]).unwrap();
    let body = vec![7u8; 5000];
    for i in 0..60u64 {
        sink.send(&profile(&body, 1_000 + i));
        let used = managed_bytes(&d);
        assert!(used <= 64 * 1024, "after write {i}: {used} bytes");
    }
    let stats = counters.snapshot();
    assert_eq!(stats.files_written, 60);
    assert_eq!(stats.write_errors, 0);
    // 64 KiB hold 13 files of 5000 bytes: every write past that evicted one.
    assert_eq!(stats.files_evicted, 60 - 13);
    let mut kept: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pb.gz"))
        .collect();
    kept.sort_by_key(|n| n.split('-').nth(1).unwrap().parse::<u64>().unwrap());
    assert_eq!(kept.len(), 13);
    assert!(kept[0].contains("-1047-"), "the newest survive: {kept:?}");
    assert!(d.join("report.html").exists());
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn files_past_the_age_limit_are_deleted() {
    let d = tempdir("age");
    fs::create_dir_all(&d).unwrap();
    let old = d.join("svc-1-1-0.pb.gz");
    let rotated = d.join("spans-1-1-0.jsonl");
    let hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    for f in [&old, &rotated] {
        fs::write(f, b"old").unwrap();
        fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(hours_ago)
            .unwrap();
    }
    let counters = Arc::new(Counters::default());
    let mut sink = DirSink::new(&d, "svc", small(1 << 20), counters.clone()).unwrap();
    sink.send(&profile(b"new", 5));
    assert!(!old.exists() && !rotated.exists());
    assert_eq!(counters.snapshot().files_evicted, 2);
    assert_eq!(counters.snapshot().files_written, 1);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_large_span_index_is_rotated_and_stays_within_the_limit() {
    let d = tempdir("rotate");
    let counters = Arc::new(Counters::default());
    let mut sink = DirSink::new(&d, "svc", small(64 * 1024), counters.clone()).unwrap();
    let record = SpanIndexRecord {
        span_id: "00000000000000ab".into(),
        name: "GET /car".into(),
        ..SpanIndexRecord::default()
    };
    let batch = vec![record; 20];
    let mut recorded = 0;
    for _ in 0..200 {
        sink.index_spans(&batch);
        recorded += 20;
        let used = managed_bytes(&d);
        assert!(used <= 64 * 1024, "{used} bytes");
    }
    let stats = counters.snapshot();
    assert_eq!(stats.spans_recorded, recorded);
    assert!(stats.files_evicted > 0, "old parts were evicted: {stats:?}");
    let names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("spans-")), "{names:?}");
    assert!(names.iter().all(|n| is_span_index_file(n)), "{names:?}");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_live_index_makes_room_when_nothing_else_can() {
    let d = tempdir("live");
    let counters = Arc::new(Counters::default());
    let mut sink = DirSink::new(&d, "svc", small(64 * 1024), counters.clone()).unwrap();
    // 15 KiB of index: below the rotation size (a quarter of the limit).
    let record = SpanIndexRecord {
        span_id: "00000000000000ab".into(),
        name: "x".repeat(150),
        ..SpanIndexRecord::default()
    };
    sink.index_spans(&vec![record; 45]);
    let index = fs::metadata(d.join(SPANS_FILE)).unwrap().len();
    assert!((10_000..16_384).contains(&index), "{index}");
    // A profile that fits only without it.
    sink.send(&profile(&vec![1u8; 55 * 1024], 1));
    let stats = counters.snapshot();
    assert_eq!(
        (stats.files_written, stats.write_errors),
        (1, 0),
        "{stats:?}"
    );
    assert_eq!(stats.files_evicted, 1, "the rotated index");
    assert!(managed_bytes(&d) <= 64 * 1024);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_profile_larger_than_the_limit_is_skipped_and_counted() {
    let d = tempdir("huge");
    let counters = Arc::new(Counters::default());
    let mut sink = DirSink::new(&d, "svc", small(64 * 1024), counters.clone()).unwrap();
    sink.send(&profile(&vec![0u8; 65 * 1024], 1));
    sink.send(&profile(b"fits", 2));
    let stats = counters.snapshot();
    assert_eq!((stats.files_written, stats.write_errors), (1, 1));
    assert_eq!(managed_bytes(&d), 4);
    fs::remove_dir_all(&d).unwrap();
}
