//! The line protocol between the demo's parent process and its children
//! (region services and the load generator started with `--child`): one
//! message a line on the child's stdout.
//!
//! ```text
//! READY 40123
//! STATS orders=12 errors=0 samples=80 spans=12 files=0 write_errors=0 uploads=0 upload_errors=0 dropped=0
//! EXIT orders=80 errors=0 secs=8.004 samples=950 cpu_ms=1210
//! EXIT requests=27 samples=400 cpu_ms=530
//! ```
//!
//! - `READY PORT`: a region service listens on `PORT`; the load generator
//!   (port 0) has reached every region and starts ordering.
//! - `STATS ...`: progress, every 500 ms: what the child counts (`requests`
//!   for a region, `orders` for the load generator), failed orders and the
//!   profiler's counters.
//! - `EXIT ...`: the last line, after the child has stopped: its totals and
//!   the CPU time the whole process used.
//!
//! Children write with [`write`] (or [`report_progress`]); the parent reads
//! each line with [`parse`]. Only this module knows the text of the lines.

use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// One line of the protocol.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Message {
    /// `READY PORT`: started (the load generator says port 0).
    Ready { port: u16 },
    /// `STATS ...`: progress.
    Stats(Progress),
    /// `EXIT ...`: final figures.
    Exit(Totals),
}

/// What a child counts: requests served (a region) or orders sent (the
/// load generator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Unit {
    #[default]
    Requests,
    Orders,
}

impl Unit {
    fn key(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Orders => "orders",
        }
    }
}

/// A child's progress (`STATS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) unit: Unit,
    /// Requests served or orders answered successfully.
    pub(crate) count: u64,
    /// Orders that failed or were skipped (always 0 for a region).
    pub(crate) errors: u64,
    pub(crate) samples: u64,
    /// Profiled root spans recorded.
    pub(crate) spans: u64,
    /// Profile files written.
    pub(crate) files: u64,
    pub(crate) write_errors: u64,
    pub(crate) uploads: u64,
    pub(crate) upload_errors: u64,
    /// Samples, spans and profiles dropped, together.
    pub(crate) dropped: u64,
}

impl Progress {
    /// `count` and `errors` of `unit`, with the profiler's counters.
    pub(crate) fn new(unit: Unit, count: u64, errors: u64, s: &tracing_pyroscope::Stats) -> Self {
        Progress {
            unit,
            count,
            errors,
            samples: s.samples,
            spans: s.spans_recorded,
            files: s.files_written,
            write_errors: s.write_errors,
            uploads: s.uploads,
            upload_errors: s.upload_errors,
            dropped: s.dropped_samples + s.dropped_spans + s.dropped_profiles,
        }
    }
}

/// A child's final figures (`EXIT`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Totals {
    pub(crate) unit: Unit,
    /// Requests served or orders answered successfully.
    pub(crate) count: u64,
    /// Failed orders (the load generator only).
    pub(crate) errors: Option<u64>,
    /// Seconds spent sending orders (the load generator only); written
    /// with millisecond precision.
    pub(crate) secs: Option<f64>,
    pub(crate) samples: u64,
    /// CPU time (user + system) of the whole process.
    pub(crate) cpu_ms: u64,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Ready { port } => write!(f, "READY {port}"),
            Message::Stats(p) => write!(
                f,
                "STATS {}={} errors={} samples={} spans={} files={} write_errors={} uploads={} upload_errors={} dropped={}",
                p.unit.key(),
                p.count,
                p.errors,
                p.samples,
                p.spans,
                p.files,
                p.write_errors,
                p.uploads,
                p.upload_errors,
                p.dropped
            ),
            Message::Exit(t) => {
                write!(f, "EXIT {}={}", t.unit.key(), t.count)?;
                if let Some(errors) = t.errors {
                    write!(f, " errors={errors}")?;
                }
                if let Some(secs) = t.secs {
                    write!(f, " secs={secs:.3}")?;
                }
                write!(f, " samples={} cpu_ms={}", t.samples, t.cpu_ms)
            }
        }
    }
}

/// Writes `msg` as one line to stdout, flushed at once (a child reporting
/// to its parent). A parent that has gone away is not an error here.
pub(crate) fn write(msg: &Message) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

/// Writes a `STATS` line every 500 ms, as long as the current tokio
/// runtime runs: `counts` gives the count and errors, the profiler the rest.
pub(crate) fn report_progress(
    unit: Unit,
    profiler: Arc<tracing_pyroscope::ProfilerGuard>,
    counts: impl Fn() -> (u64, u64) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let (count, errors) = counts();
            write(&Message::Stats(Progress::new(
                unit,
                count,
                errors,
                &profiler.stats(),
            )));
        }
    });
}

/// A line that is not a message of this protocol.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    line: String,
    reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unexpected line from a child {:?}: {}",
            self.line, self.reason
        )
    }
}

impl std::error::Error for ParseError {}

/// Reads one line (without its line break).
pub(crate) fn parse(line: &str) -> Result<Message, ParseError> {
    let error = |reason: String| ParseError {
        line: line.to_string(),
        reason,
    };
    let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
    match tag {
        "READY" => {
            let port = rest.trim();
            port.parse()
                .map(|port| Message::Ready { port })
                .map_err(|_| error(format!("READY needs a port number, got {port:?}")))
        }
        "STATS" => {
            let mut f = Fields::parse(rest).map_err(error)?;
            let (unit, count) = f.unit().map_err(error)?;
            let mut num = |key| f.take(key).map_err(error);
            let p = Progress {
                unit,
                count,
                errors: num("errors")?,
                samples: num("samples")?,
                spans: num("spans")?,
                files: num("files")?,
                write_errors: num("write_errors")?,
                uploads: num("uploads")?,
                upload_errors: num("upload_errors")?,
                dropped: num("dropped")?,
            };
            f.finish().map_err(error)?;
            Ok(Message::Stats(p))
        }
        "EXIT" => {
            let mut f = Fields::parse(rest).map_err(error)?;
            let (unit, count) = f.unit().map_err(error)?;
            let errors = f.take_opt("errors").map_err(error)?;
            let secs = f.take_opt("secs").map_err(error)?;
            let t = Totals {
                unit,
                count,
                errors,
                secs,
                samples: f.take("samples").map_err(error)?,
                cpu_ms: f.take("cpu_ms").map_err(error)?,
            };
            f.finish().map_err(error)?;
            Ok(Message::Exit(t))
        }
        "" => Err(error("empty line".to_string())),
        other => Err(error(format!(
            "unknown message {other:?} (expected READY, STATS or EXIT)"
        ))),
    }
}

/// The `KEY=VALUE` fields of a line, taken out one by one.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    fn parse(s: &'a str) -> Result<Self, String> {
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for kv in s.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("expected KEY=VALUE, got {kv:?}"))?;
            if fields.iter().any(|&(seen, _)| seen == k) {
                return Err(format!("{k} appears twice"));
            }
            fields.push((k, v));
        }
        Ok(Fields(fields))
    }

    /// Removes `key` and parses its value, if it is there.
    fn take_opt<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>, String> {
        let Some(at) = self.0.iter().position(|&(k, _)| k == key) else {
            return Ok(None);
        };
        let (_, v) = self.0.remove(at);
        v.parse()
            .map(Some)
            .map_err(|_| format!("{key}={v:?} is not a number"))
    }

    fn take<T: std::str::FromStr>(&mut self, key: &str) -> Result<T, String> {
        self.take_opt(key)?
            .ok_or_else(|| format!("{key} is missing"))
    }

    /// The unit (`requests` or `orders`, exactly one) and its count.
    fn unit(&mut self) -> Result<(Unit, u64), String> {
        match (self.take_opt("requests")?, self.take_opt("orders")?) {
            (Some(n), None) => Ok((Unit::Requests, n)),
            (None, Some(n)) => Ok((Unit::Orders, n)),
            (Some(_), Some(_)) => Err("both requests and orders".to_string()),
            (None, None) => Err("requests or orders is missing".to_string()),
        }
    }

    /// Fails if a field is left that no one took.
    fn finish(self) -> Result<(), String> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(format!("unknown field {k:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(unit: Unit) -> Progress {
        Progress {
            unit,
            count: 12,
            errors: 1,
            samples: 80,
            spans: 11,
            files: 3,
            write_errors: 2,
            uploads: 4,
            upload_errors: 5,
            dropped: 6,
        }
    }

    #[test]
    fn messages_round_trip() {
        let messages = [
            Message::Ready { port: 40123 },
            Message::Ready { port: 0 },
            Message::Stats(stats(Unit::Requests)),
            Message::Stats(stats(Unit::Orders)),
            Message::Exit(Totals {
                unit: Unit::Orders,
                count: 80,
                errors: Some(2),
                secs: Some(8.125),
                samples: 950,
                cpu_ms: 1210,
            }),
            Message::Exit(Totals {
                unit: Unit::Requests,
                count: 27,
                errors: None,
                secs: None,
                samples: 400,
                cpu_ms: 530,
            }),
        ];
        for msg in messages {
            let line = msg.to_string();
            assert!(!line.contains('\n'), "{line:?}");
            assert_eq!(parse(&line), Ok(msg), "{line:?}");
        }
    }

    #[test]
    fn lines_have_their_documented_form() {
        assert_eq!(
            Message::Stats(stats(Unit::Orders)).to_string(),
            "STATS orders=12 errors=1 samples=80 spans=11 files=3 write_errors=2 uploads=4 upload_errors=5 dropped=6"
        );
        let exit = Message::Exit(Totals {
            unit: Unit::Orders,
            count: 80,
            errors: Some(0),
            secs: Some(8.0041),
            samples: 950,
            cpu_ms: 1210,
        });
        assert_eq!(
            exit.to_string(),
            "EXIT orders=80 errors=0 secs=8.004 samples=950 cpu_ms=1210"
        );
        assert_eq!(
            parse("EXIT requests=27 samples=400 cpu_ms=530"),
            Ok(Message::Exit(Totals {
                unit: Unit::Requests,
                count: 27,
                samples: 400,
                cpu_ms: 530,
                ..Totals::default()
            }))
        );
    }

    #[test]
    fn the_profilers_counters_fill_progress() {
        // `Stats` is non-exhaustive: set its fields one by one.
        let mut s = tracing_pyroscope::Stats::default();
        s.samples = 7;
        s.spans_recorded = 3;
        s.files_written = 2;
        s.dropped_samples = 1;
        s.dropped_spans = 10;
        s.dropped_profiles = 100;
        let p = Progress::new(Unit::Orders, 5, 1, &s);
        assert_eq!(
            (p.count, p.errors, p.samples, p.spans, p.files, p.dropped),
            (5, 1, 7, 3, 2, 111)
        );
    }

    #[test]
    fn malformed_lines_are_errors_that_say_why() {
        let valid = Message::Stats(stats(Unit::Orders)).to_string();
        for (line, why) in [
            ("", "empty line"),
            ("HELLO 1", "unknown message \"HELLO\""),
            ("READY", "READY needs a port number"),
            ("READY 70000", "READY needs a port number, got \"70000\""),
            ("READY x", "got \"x\""),
            ("EXIT samples=1 cpu_ms=2", "requests or orders is missing"),
            ("EXIT requests=1 orders=2 samples=1 cpu_ms=2", "both"),
            ("EXIT orders=1 samples=1", "cpu_ms is missing"),
            (
                "EXIT orders=1 samples=x cpu_ms=2",
                "samples=\"x\" is not a number",
            ),
            (
                "EXIT orders=-1 samples=1 cpu_ms=2",
                "orders=\"-1\" is not a number",
            ),
            (
                "EXIT orders=1 samples=1 cpu_ms=2 junk",
                "expected KEY=VALUE, got \"junk\"",
            ),
            (
                "EXIT orders=1 samples=1 cpu_ms=2 x=1",
                "unknown field \"x\"",
            ),
            (
                "EXIT orders=1 orders=1 samples=1 cpu_ms=2",
                "orders appears twice",
            ),
            ("STATS orders=1 errors=0", "samples is missing"),
        ] {
            let err = parse(line).expect_err(line).to_string();
            assert!(err.contains(why), "{line:?}: {err}");
            assert!(err.contains(&format!("{line:?}")), "{err}");
        }
        // A line cut short misses its last field; a count is a whole number.
        let cut = valid.rsplit_once(' ').map(|(head, _)| head).unwrap();
        assert!(parse(cut)
            .unwrap_err()
            .to_string()
            .contains("dropped is missing"));
        assert!(parse(&valid.replace("files=3", "files=3.5")).is_err());
    }
}
