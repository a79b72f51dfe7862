//! Reading a profiles directory: pprof files (folded per span and per
//! service) and the span index `spans.jsonl`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::context::keys;
use crate::error::{Error, ErrorKind};
use crate::export::span_index::{is_span_index_file, normalize_hex, SpanIndexRecord};
use crate::profile::proto;

/// Decompressed profiles larger than this are skipped (Pyroscope itself
/// rejects profiles over 4 MiB uncompressed).
const MAX_PROFILE_BYTES: u64 = 256 << 20;

/// Folded stacks, interned: one string per distinct root→leaf stack.
#[derive(Debug, Default)]
pub(super) struct Stacks {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Stacks {
    fn intern(&mut self, stack: &str) -> u32 {
        if let Some(&id) = self.ids.get(stack) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(stack.to_string());
        self.ids.insert(stack.to_string(), id);
        id
    }

    pub(super) fn get(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// Samples folded by stack, with totals.
#[derive(Debug, Default)]
pub(super) struct Folded {
    /// Stack id → samples.
    pub(super) stacks: HashMap<u32, u64>,
    pub(super) samples: u64,
    pub(super) cpu_nanos: u64,
}

impl Folded {
    fn add(&mut self, stack: u32, samples: u64, cpu_nanos: u64) {
        *self.stacks.entry(stack).or_insert(0) += samples;
        self.samples += samples;
        self.cpu_nanos += cpu_nanos;
    }

    /// Folded lines `a;b;c N`, sorted (inferno requires sorted input).
    pub(super) fn lines(&self, stacks: &Stacks) -> Vec<String> {
        let mut lines: Vec<String> = self
            .stacks
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(&id, &n)| format!("{} {n}", stacks.get(id)))
            .collect();
        lines.sort_unstable();
        lines
    }
}

/// One root span: from `spans.jsonl`, from samples, or both.
#[derive(Debug, Default)]
pub(super) struct Span {
    /// 16 lowercase hex digits.
    pub(super) span_id: String,
    pub(super) trace_id: Option<String>,
    pub(super) parent_span_id: Option<String>,
    pub(super) name: String,
    pub(super) service: String,
    pub(super) labels: BTreeMap<String, String>,
    /// Unix nanoseconds; `None` if the span is known only from samples.
    pub(super) start: Option<u64>,
    pub(super) end: Option<u64>,
    /// In `spans.jsonl` (not only seen in samples).
    pub(super) recorded: bool,
    pub(super) profile: Folded,
}

/// One pprof file that was read.
#[derive(Debug)]
pub(super) struct FileInfo {
    pub(super) path: PathBuf,
    pub(super) service: String,
    pub(super) samples: u64,
    /// Unix nanoseconds (`time_nanos`), 0 if unset.
    pub(super) start: i64,
    pub(super) duration_nanos: i64,
}

/// Everything the page is made from.
#[derive(Debug, Default)]
pub(super) struct Data {
    pub(super) stacks: Stacks,
    /// Span id → span.
    pub(super) spans: HashMap<String, Span>,
    /// Service → all of its samples.
    pub(super) services: BTreeMap<String, Folded>,
    pub(super) files: Vec<FileInfo>,
    /// File and why it was skipped.
    pub(super) skipped_files: Vec<(PathBuf, String)>,
    pub(super) skipped_span_lines: usize,
    pub(super) total_samples: u64,
    pub(super) samples_with_span: u64,
    /// Span-field label key → value → its samples (all services).
    pub(super) labels: BTreeMap<String, BTreeMap<String, Folded>>,
}

pub(super) fn load(dir: &Path) -> Result<Data, Error> {
    let os_error = |what: String, e: io::Error| Error::new(ErrorKind::Os, what).with_source(e);
    let entries = fs::read_dir(dir).map_err(|e| {
        os_error(
            format!("reading the profiles directory {}", dir.display()),
            e,
        )
    })?;
    let mut pprof_files = Vec::new();
    let mut span_files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            os_error(
                format!("reading the profiles directory {}", dir.display()),
                e,
            )
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Temporary files (written, then renamed) start with a dot.
        if name.ends_with(".pb.gz") && !name.starts_with('.') {
            pprof_files.push(entry.path());
        } else if is_span_index_file(&name) {
            span_files.push(entry.path());
        }
    }
    pprof_files.sort();
    // Rotated parts (`spans-<ms>-…`) sort before the live `spans.jsonl`.
    span_files.sort();

    let mut data = Data::default();
    for path in &span_files {
        read_spans(path, &mut data)?;
    }
    for path in pprof_files {
        match read_profile(&path) {
            Ok(profile) => add_profile(&mut data, path, &profile),
            Err(why) => data.skipped_files.push((path, why)),
        }
    }
    Ok(data)
}

fn read_spans(path: &Path, data: &mut Data) -> Result<(), Error> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(
                Error::new(ErrorKind::Os, format!("opening {}", path.display())).with_source(e),
            )
        }
    };
    // Split on '\n' by hand: invalid UTF-8 or a partial last line costs one line.
    for line in io::BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| {
            Error::new(ErrorKind::Os, format!("reading {}", path.display())).with_source(e)
        })?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Some(record) = SpanIndexRecord::from_line(&line) else {
            data.skipped_span_lines += 1;
            continue;
        };
        let span = data.spans.entry(record.span_id.clone()).or_default();
        if span.recorded {
            continue; // keep the first record of a span id
        }
        *span = Span {
            span_id: record.span_id,
            trace_id: record.trace_id,
            parent_span_id: record.parent_span_id,
            name: record.name,
            service: record.service,
            labels: record.labels,
            start: record.start_unix_nanos,
            end: record.end_unix_nanos,
            recorded: true,
            profile: Folded::default(),
        };
    }
    Ok(())
}

fn read_profile(path: &Path) -> Result<proto::Profile, String> {
    let raw = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(MAX_PROFILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("not valid gzip: {e}"))?;
        if out.len() as u64 > MAX_PROFILE_BYTES {
            return Err(format!(
                "larger than {MAX_PROFILE_BYTES} bytes uncompressed"
            ));
        }
        out
    } else {
        raw
    };
    proto::Profile::decode(bytes.as_slice()).map_err(|e| format!("not a pprof profile: {e}"))
}

/// The service from a file name `<service>-<start_ms>-<pid>-<seq>.pb.gz`
/// or `<service>-<start_ms>-<pid>-<seq>.<kind>.pb.gz` (the service name
/// may itself contain '-').
pub(super) fn service_from_file_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".pb.gz").unwrap_or(&name);
    let stem = [".wall", ".memory"]
        .iter()
        .find_map(|kind| stem.strip_suffix(kind))
        .unwrap_or(stem);
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    if parts.len() == 4
        && parts[..3]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        parts[3].to_string()
    } else {
        stem.to_string()
    }
}

fn add_profile(data: &mut Data, path: PathBuf, profile: &proto::Profile) {
    let strings = &profile.string_table;
    let string = |i: i64| -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| strings.get(i))
            .map(String::as_str)
            .unwrap_or("")
    };
    let type_index = |wanted: &str| {
        profile
            .sample_type
            .iter()
            .position(|t| string(t.r#type) == wanted)
    };
    let count_index = type_index("samples").unwrap_or(0);
    let cpu_index = type_index("cpu");
    let period = u64::try_from(profile.period).unwrap_or(0);

    // Function id → name; location id → its frames, caller first, joined by ';'.
    let functions: HashMap<u64, String> = profile
        .function
        .iter()
        .map(|f| {
            let mut name = string(f.name);
            if name.is_empty() {
                name = string(f.system_name);
            }
            (f.id, frame_name(name))
        })
        .collect();
    let locations: HashMap<u64, String> = profile
        .location
        .iter()
        .map(|loc| {
            let frames: Vec<String> = if loc.line.is_empty() {
                vec![format!("0x{:x}", loc.address)]
            } else {
                // Lines are innermost first; the flame graph wants caller first.
                loc.line
                    .iter()
                    .rev()
                    .map(|line| {
                        functions
                            .get(&line.function_id)
                            .filter(|n| !n.is_empty())
                            .cloned()
                            .unwrap_or_else(|| format!("0x{:x}", loc.address))
                    })
                    .collect()
            };
            (loc.id, frames.join(";"))
        })
        .collect();

    let service = service_from_file_name(&path);
    let mut file_samples = 0u64;
    let mut stack = String::new();
    for sample in &profile.sample {
        let value = |i: usize| {
            sample
                .value
                .get(i)
                .and_then(|&v| u64::try_from(v).ok())
                .unwrap_or(0)
        };
        let samples = value(count_index);
        if samples == 0 {
            continue;
        }
        let cpu_nanos = match cpu_index {
            Some(i) => value(i),
            None => samples.saturating_mul(period),
        };
        stack.clear();
        // location_id is leaf first.
        for id in sample.location_id.iter().rev() {
            if !stack.is_empty() {
                stack.push(';');
            }
            match locations.get(id) {
                Some(frames) => stack.push_str(frames),
                None => stack.push_str("[unknown]"),
            }
        }
        if stack.is_empty() {
            stack.push_str("[unknown]");
        }
        let stack_id = data.stacks.intern(&stack);
        file_samples += samples;
        data.total_samples += samples;
        data.services
            .entry(service.clone())
            .or_default()
            .add(stack_id, samples, cpu_nanos);

        let mut span_id = None;
        let mut span_name = None;
        let mut trace_id = None;
        for label in &sample.label {
            match string(label.key) {
                keys::SPAN_ID => span_id = normalize_hex(string(label.str), 16),
                keys::SPAN_NAME => span_name = Some(string(label.str)),
                keys::TRACE_ID => trace_id = normalize_hex(string(label.str), 32),
                "" => {}
                // Any other string label is a span-field label.
                key if label.str != 0 => add_label(&mut data.labels, key, string(label.str), |f| {
                    f.add(stack_id, samples, cpu_nanos)
                }),
                _ => {}
            }
        }
        let Some(span_id) = span_id else { continue };
        data.samples_with_span += samples;
        let span = data.spans.entry(span_id.clone()).or_insert_with(|| Span {
            span_id,
            ..Span::default()
        });
        if !span.recorded {
            if span.name.is_empty() {
                if let Some(name) = span_name {
                    span.name = name.to_string();
                }
            }
            if span.trace_id.is_none() {
                span.trace_id = trace_id;
            }
            if span.service.is_empty() {
                span.service = service.clone();
            }
        }
        span.profile.add(stack_id, samples, cpu_nanos);
    }
    data.files.push(FileInfo {
        path,
        service,
        samples: file_samples,
        start: profile.time_nanos,
        duration_nanos: profile.duration_nanos,
    });
}

/// Most span-label keys, and values per key, the report keeps (the crate
/// sends far fewer; this bounds what a foreign directory can make it hold).
const MAX_LABEL_KEYS: usize = 64;
const MAX_LABEL_VALUES: usize = 1000;

fn add_label(
    labels: &mut BTreeMap<String, BTreeMap<String, Folded>>,
    key: &str,
    value: &str,
    add: impl FnOnce(&mut Folded),
) {
    if !labels.contains_key(key) && labels.len() >= MAX_LABEL_KEYS {
        return;
    }
    let values = labels.entry(key.to_string()).or_default();
    if !values.contains_key(value) && values.len() >= MAX_LABEL_VALUES {
        return;
    }
    add(values.entry(value.to_string()).or_default());
}

/// A frame name safe for the folded format (';' separates frames).
fn frame_name(name: &str) -> String {
    name.replace(';', ",").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests;
