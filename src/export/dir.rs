//! The local directory sink (`PYROSCOPE_PROFILES_DIR`).
//!
//! Layout:
//! - `DIR/<service>-<start_unix_ms>-<pid>-<seq>.pb.gz`: one gzipped pprof per
//!   interval. It is written under a hidden temporary name in the same
//!   directory and renamed into place, so a reader never sees half a file.
//! - `DIR/spans.jsonl` ([`SPANS_FILE`]): the span index, one JSON object
//!   per profiled root span ([`SpanIndexRecord`]), appended with `O_APPEND`
//!   in a single write per batch, so several processes can share one
//!   directory.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use super::span_index::{SpanIndexRecord, SPANS_FILE};
use super::Sink;
use crate::profile::EncodedProfile;
use crate::stats::Counters;

/// Writes profiles and span records into one directory.
#[derive(Debug)]
pub(crate) struct DirSink {
    dir: PathBuf,
    /// `service_name`, the first part of every file name.
    service: String,
    pid: u32,
    seq: AtomicU64,
    counters: Arc<Counters>,
}

impl DirSink {
    /// Creates `dir` (and its parents) if needed.
    pub(crate) fn new(dir: &Path, service: &str, counters: Arc<Counters>) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        if !dir.is_dir() {
            return Err(io::Error::other("not a directory"));
        }
        Ok(DirSink {
            dir: dir.to_path_buf(),
            service: service.to_string(),
            pid: std::process::id(),
            seq: AtomicU64::new(0),
            counters,
        })
    }

    /// Writes `DIR/<service>-<start_unix_ms>-<pid>-<seq>.pb.gz` atomically
    /// and returns its path.
    pub(crate) fn write_profile(&self, service: &str, p: &EncodedProfile) -> io::Result<PathBuf> {
        let start_ms = p
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{start_ms}-{}-{seq}.pb.gz", file_safe(service), self.pid);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let written = fs::write(&tmp, &p.gzipped).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(path)
    }

    /// Appends `lines` (JSON objects without newlines) to `DIR/spans.jsonl`
    /// in one write.
    pub(crate) fn append_spans(&self, lines: &[String]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut buf = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            buf.push_str(line);
            buf.push('\n');
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(SPANS_FILE))?
            .write_all(buf.as_bytes())
    }
}

impl Sink for DirSink {
    fn send(&mut self, profile: &EncodedProfile) {
        match self.write_profile(&self.service, profile) {
            Ok(_) => Counters::bump(&self.counters.files_written),
            Err(_) => Counters::bump(&self.counters.write_errors),
        }
    }

    fn keeps_span_index(&self) -> bool {
        true
    }

    fn index_spans(&mut self, records: &[SpanIndexRecord]) {
        let lines: Vec<String> = records.iter().map(SpanIndexRecord::to_line).collect();
        match self.append_spans(&lines) {
            Ok(()) => Counters::add(&self.counters.spans_recorded, lines.len() as u64),
            Err(_) => Counters::bump(&self.counters.write_errors),
        }
    }

    /// Every write is synchronous: nothing is pending.
    fn shutdown(self: Box<Self>, _deadline: Instant) {}
}

/// The service name as a file-name part: `[A-Za-z0-9._-]`, others as `_`.
fn file_safe(service: &str) -> String {
    let s: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

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
            gzipped: bytes.to_vec(),
            start,
            end: start + Duration::from_secs(10),
            samples: 1,
        }
    }

    #[test]
    fn writes_named_files_atomically() {
        let d = tempdir("files").join("nested");
        let sink = DirSink::new(&d, "svc", Arc::default()).unwrap();
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
        let sink = DirSink::new(&d, "svc", Arc::default()).unwrap();
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
        assert!(DirSink::new(&d.join("sub"), "svc", Arc::default()).is_err());
        assert!(DirSink::new(&d, "svc", Arc::default()).is_err());
        fs::remove_file(&d).unwrap();
    }

    #[test]
    fn the_sink_counts_files_and_span_lines() {
        let d = tempdir("sink");
        let counters = Arc::new(Counters::default());
        let mut sink: Box<dyn Sink> = Box::new(DirSink::new(&d, "svc", counters.clone()).unwrap());
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
}
