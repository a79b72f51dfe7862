//! The local directory sink (`PYROSCOPE_PROFILES_DIR`).
//!
//! Layout:
//! - `DIR/<service>-<start_unix_ms>-<pid>-<seq>.pb.gz`: one gzipped pprof per
//!   interval. It is written under a hidden temporary name in the same
//!   directory and renamed into place, so a reader never sees half a file.
//! - `DIR/spans.jsonl` ([`SPANS_FILE`]): the span index, one JSON object
//!   per profiled root span ([`SpanIndexRecord`]), appended with `O_APPEND`
//!   in a single write per batch, so several processes can share one
//!   directory. When it passes a quarter of the size limit it is renamed
//!   to `DIR/spans-<unix_ms>-<pid>-<seq>.jsonl` and a new one starts.
//!
//! **Retention** ([`DirLimits`]): before each write the sink makes room, so
//! the files it manages (profiles and span indexes; nothing else in the
//! directory is counted or touched) never pass `max_bytes`: files older
//! than `max_age` go first, then the oldest by modification time. The
//! directory is listed when the running total would pass the limit and at
//! least every [`RESCAN`], so files written by other processes sharing it
//! are counted within that time. Deleted files are counted in
//! `Stats::files_evicted`; a write that cannot fit even in an emptied
//! directory is skipped and counted in `Stats::write_errors`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::span_index::{is_span_index_file, SpanIndexRecord, SPANS_FILE};
use super::Sink;
use crate::profile::EncodedProfile;
use crate::stats::Counters;

/// The longest the sink goes without listing the directory.
pub(crate) const RESCAN: Duration = Duration::from_secs(10);

/// How much the profiles directory may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirLimits {
    /// Most bytes of profiles and span indexes together.
    pub(crate) max_bytes: u64,
    /// Profiles and rotated span indexes older than this are deleted.
    pub(crate) max_age: Duration,
}

/// Writes profiles and span records into one directory.
#[derive(Debug)]
pub(crate) struct DirSink {
    dir: PathBuf,
    /// `service_name`, the first part of every file name.
    service: String,
    pid: u32,
    seq: AtomicU64,
    counters: Arc<Counters>,
    limits: DirLimits,
    /// Bytes of managed files at the last listing plus those written since.
    total: u64,
    /// Bytes of the live span index, likewise.
    spans_bytes: u64,
    /// When the directory was last listed (`None`: never).
    scanned: Option<Instant>,
}

/// A file the retention limit may delete.
struct Managed {
    path: PathBuf,
    len: u64,
    modified: SystemTime,
}

impl DirSink {
    /// Creates `dir` (and its parents) if needed.
    pub(crate) fn new(
        dir: &Path,
        service: &str,
        limits: DirLimits,
        counters: Arc<Counters>,
    ) -> io::Result<Self> {
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
            limits,
            total: 0,
            spans_bytes: 0,
            scanned: None,
        })
    }

    /// Makes room for `incoming` more bytes within the limits; `false` if
    /// they cannot fit even after deleting every file the sink may delete.
    fn make_room(&mut self, incoming: u64) -> bool {
        let stale = self.scanned.is_none_or(|t| t.elapsed() >= RESCAN);
        let over = self.total.saturating_add(incoming) > self.limits.max_bytes;
        let big_index = self.spans_bytes > self.limits.max_bytes / 4;
        if stale || over || big_index {
            self.enforce(incoming);
        }
        self.total.saturating_add(incoming) <= self.limits.max_bytes
    }

    /// Lists the directory, rotates a large span index, deletes files past
    /// the age limit and then the oldest until `incoming` more bytes fit.
    fn enforce(&mut self, incoming: u64) {
        self.scanned = Some(Instant::now());
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut total = 0u64;
        let mut live_index = None;
        let mut deletable = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let profile = name.ends_with(".pb.gz") && !name.starts_with('.');
            let index = is_span_index_file(name);
            if !profile && !index {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            total += meta.len();
            let file = Managed {
                path: entry.path(),
                len: meta.len(),
                modified: meta.modified().unwrap_or(UNIX_EPOCH),
            };
            if name == SPANS_FILE {
                live_index = Some(file);
            } else {
                deletable.push(file);
            }
        }
        self.spans_bytes = live_index.as_ref().map_or(0, |f| f.len);
        if let Some(live) = live_index {
            // Rotate the live index when it is large, or when nothing else
            // could make room: its parts can then be deleted like profiles.
            let others: u64 = deletable.iter().map(|f| f.len).sum();
            let no_room =
                total.saturating_sub(others).saturating_add(incoming) > self.limits.max_bytes;
            if live.len > self.limits.max_bytes / 4 || no_room {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                let rotated = self
                    .dir
                    .join(format!("spans-{ms}-{}-{seq}.jsonl", self.pid));
                // Another process may have rotated it first: then it is gone
                // and the next listing sees the new name.
                if fs::rename(&live.path, &rotated).is_ok() {
                    self.spans_bytes = 0;
                    deletable.push(Managed {
                        path: rotated,
                        ..live
                    });
                }
            }
        }
        // Oldest first; the age limit, then the size limit.
        deletable.sort_by(|a, b| (a.modified, &a.path).cmp(&(b.modified, &b.path)));
        let cutoff = SystemTime::now()
            .checked_sub(self.limits.max_age)
            .unwrap_or(UNIX_EPOCH);
        for file in deletable {
            let too_old = file.modified < cutoff;
            let too_big = total.saturating_add(incoming) > self.limits.max_bytes;
            if !too_old && !too_big {
                break;
            }
            match fs::remove_file(&file.path) {
                Ok(()) => {
                    total = total.saturating_sub(file.len);
                    Counters::bump(&self.counters.files_evicted);
                }
                // Deleted by another process sharing the directory.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    total = total.saturating_sub(file.len);
                }
                Err(_) => {}
            }
        }
        self.total = total;
    }

    /// Writes `DIR/<service>-<start_unix_ms>-<pid>-<seq><kind>.pb.gz`
    /// atomically and returns its path; `<kind>` is empty for CPU
    /// profiles, `.wall` or `.memory` for the others.
    pub(crate) fn write_profile(&self, service: &str, p: &EncodedProfile) -> io::Result<PathBuf> {
        let start_ms = p
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-{start_ms}-{}-{seq}{}.pb.gz",
            file_safe(service),
            self.pid,
            p.kind.file_suffix()
        );
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
        let len = profile.gzipped.len() as u64;
        if !self.make_room(len) {
            Counters::bump(&self.counters.write_errors);
            return;
        }
        match self.write_profile(&self.service, profile) {
            Ok(_) => {
                self.total += len;
                Counters::bump(&self.counters.files_written);
            }
            Err(_) => Counters::bump(&self.counters.write_errors),
        }
    }

    fn keeps_span_index(&self) -> bool {
        true
    }

    fn index_spans(&mut self, records: &[SpanIndexRecord]) {
        let lines: Vec<String> = records.iter().map(SpanIndexRecord::to_line).collect();
        let len: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
        if !self.make_room(len) {
            Counters::bump(&self.counters.write_errors);
            return;
        }
        match self.append_spans(&lines) {
            Ok(()) => {
                self.total += len;
                self.spans_bytes += len;
                Counters::add(&self.counters.spans_recorded, lines.len() as u64);
            }
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
mod tests;
