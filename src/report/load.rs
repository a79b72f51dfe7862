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

/// What a profile measures: the report keeps one [`Folded`] per view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum View {
    /// `process_cpu`: `cpu/nanoseconds`.
    Cpu,
    /// `wall`: `wall/nanoseconds` (running, blocked, `[runnable]`,
    /// `[awaiting]`).
    Wall,
    /// `memory`: `alloc_space/bytes`.
    Alloc,
    /// `memory`: `inuse_space/bytes`.
    Inuse,
}

impl View {
    pub(crate) const ALL: [View; 4] = [View::Cpu, View::Wall, View::Alloc, View::Inuse];

    /// The short name used in the page's attributes (`data-view`).
    pub(crate) fn key(self) -> &'static str {
        match self {
            View::Cpu => "cpu",
            View::Wall => "wall",
            View::Alloc => "alloc",
            View::Inuse => "inuse",
        }
    }

    /// The button's text.
    pub(crate) fn title(self) -> &'static str {
        match self {
            View::Cpu => "CPU",
            View::Wall => "wall",
            View::Alloc => "allocations",
            View::Inuse => "in-use",
        }
    }

    /// The pprof sample type (and unit) this view reads.
    fn sample_type(self) -> (&'static str, &'static str) {
        match self {
            View::Cpu => ("cpu", "nanoseconds"),
            View::Wall => ("wall", "nanoseconds"),
            View::Alloc => ("alloc_space", "bytes"),
            View::Inuse => ("inuse_space", "bytes"),
        }
    }

    /// Bytes (memory) rather than nanoseconds (CPU, wall).
    pub(crate) fn is_bytes(self) -> bool {
        matches!(self, View::Alloc | View::Inuse)
    }
}

/// Samples folded by stack, with totals.
#[derive(Debug, Default)]
pub(super) struct Folded {
    /// Stack id → weight: samples (CPU), microseconds (wall) or bytes
    /// (memory).
    pub(super) stacks: HashMap<u32, u64>,
    /// Samples (the `samples`, `alloc_objects` or `inuse_objects` value).
    pub(super) samples: u64,
    /// Nanoseconds (CPU, wall) or bytes (memory).
    pub(super) total: u64,
}

impl Folded {
    fn add(&mut self, stack: u32, weight: u64, samples: u64, total: u64) {
        *self.stacks.entry(stack).or_insert(0) += weight;
        self.samples += samples;
        self.total += total;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.stacks.values().all(|&w| w == 0)
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

/// One [`Folded`] per view.
#[derive(Debug, Default)]
pub(super) struct Profiles {
    pub(super) cpu: Folded,
    pub(super) wall: Folded,
    pub(super) alloc: Folded,
    pub(super) inuse: Folded,
    /// Wall nanoseconds whose leaf frame is `[awaiting]`.
    pub(super) awaiting_nanos: u64,
    /// Wall nanoseconds whose leaf is `[blocked…` or `[runnable]`.
    pub(super) blocked_leaf_nanos: u64,
}

impl Profiles {
    pub(super) fn get(&self, view: View) -> &Folded {
        match view {
            View::Cpu => &self.cpu,
            View::Wall => &self.wall,
            View::Alloc => &self.alloc,
            View::Inuse => &self.inuse,
        }
    }

    fn get_mut(&mut self, view: View) -> &mut Folded {
        match view {
            View::Cpu => &mut self.cpu,
            View::Wall => &mut self.wall,
            View::Alloc => &mut self.alloc,
            View::Inuse => &mut self.inuse,
        }
    }

    fn add(&mut self, view: View, value: &SampleValue) {
        self.get_mut(view)
            .add(value.stack, value.weight, value.samples, value.total);
        if view == View::Wall {
            match value.leaf {
                Leaf::Awaiting => self.awaiting_nanos += value.total,
                Leaf::Blocked => self.blocked_leaf_nanos += value.total,
                Leaf::Other => {}
            }
        }
    }

    /// The views that hold samples, in [`View::ALL`]'s order.
    pub(super) fn views(&self) -> Vec<View> {
        View::ALL
            .into_iter()
            .filter(|&v| !self.get(v).is_empty())
            .collect()
    }

    /// Samples of any view.
    pub(super) fn any_samples(&self) -> bool {
        View::ALL.iter().any(|&v| !self.get(v).is_empty())
    }
}

/// What a wall sample's leaf frame says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaf {
    Awaiting,
    Blocked,
    Other,
}

/// One sample's contribution to a view.
struct SampleValue {
    stack: u32,
    weight: u64,
    samples: u64,
    total: u64,
    leaf: Leaf,
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
    /// A local root (a record without `root` is one: older writers indexed
    /// only local roots); `false` for a child span under scope `all`.
    pub(super) root: bool,
    pub(super) profile: Profiles,
    /// The CPU profile's period, nanoseconds (0 if no CPU sample).
    pub(super) cpu_period: u64,
}

/// One pprof file that was read.
#[derive(Debug)]
pub(super) struct FileInfo {
    pub(super) path: PathBuf,
    pub(super) service: String,
    /// The profile types the file holds (`process_cpu`, `wall`, `memory`).
    pub(super) kind: &'static str,
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
    pub(super) services: BTreeMap<String, Profiles>,
    pub(super) files: Vec<FileInfo>,
    /// File and why it was skipped.
    pub(super) skipped_files: Vec<(PathBuf, String)>,
    pub(super) skipped_span_lines: usize,
    /// CPU samples in all files.
    pub(super) total_samples: u64,
    /// CPU samples that carry a `span_id`.
    pub(super) samples_with_span: u64,
    /// CPU samples without a `span_id` (stacks and samples): lost
    /// attribution.
    pub(super) outside_spans: Folded,
    /// Span-field label key → value → its samples (all services).
    pub(super) labels: BTreeMap<String, BTreeMap<String, Profiles>>,
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
            root: record.root,
            profile: Profiles::default(),
            cpu_period: 0,
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

/// Where each view's values sit in a profile's samples: (view, index of
/// its count, index of its value), and the view's value per sample when the
/// profile has no value of its own (the period: a `samples`-only profile is
/// read as CPU).
struct Layout {
    views: Vec<(View, Option<usize>, Option<usize>)>,
    period: u64,
    kind: &'static str,
}

impl Layout {
    fn of(profile: &proto::Profile, string: impl Fn(i64) -> String) -> Layout {
        let types: Vec<(String, String)> = profile
            .sample_type
            .iter()
            .map(|t| (string(t.r#type), string(t.unit)))
            .collect();
        let index = |name: &str| types.iter().position(|(t, _)| t == name);
        let mut views = Vec::new();
        for view in View::ALL {
            let (name, unit) = view.sample_type();
            let Some(value) = types.iter().position(|(t, u)| t == name && u == unit) else {
                continue;
            };
            let count = match view {
                View::Cpu | View::Wall => index("samples"),
                View::Alloc => index("alloc_objects"),
                View::Inuse => index("inuse_objects"),
            };
            views.push((view, count, Some(value)));
        }
        if views.is_empty() {
            // Only `samples/count`: CPU samples of `period` nanoseconds each.
            views.push((View::Cpu, Some(index("samples").unwrap_or(0)), None));
        }
        let kind = match views.first().map(|v| v.0) {
            Some(View::Wall) => "wall",
            Some(View::Alloc | View::Inuse) => "memory",
            _ => "process_cpu",
        };
        Layout {
            views,
            period: u64::try_from(profile.period).unwrap_or(0),
            kind,
        }
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
    let layout = Layout::of(profile, |i| string(i).to_string());

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
    let mut values: Vec<(View, SampleValue)> = Vec::with_capacity(4);
    for sample in &profile.sample {
        let value = |i: usize| {
            sample
                .value
                .get(i)
                .and_then(|&v| u64::try_from(v).ok())
                .unwrap_or(0)
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
        let leaf_name = stack.rsplit(';').next().unwrap_or("");
        let leaf = if leaf_name == "[awaiting]" {
            Leaf::Awaiting
        } else if leaf_name.starts_with("[blocked") || leaf_name == "[runnable]" {
            Leaf::Blocked
        } else {
            Leaf::Other
        };
        values.clear();
        for &(view, count_index, value_index) in &layout.views {
            let samples = count_index.map_or(0, value);
            let total = match value_index {
                Some(i) => value(i),
                None => samples.saturating_mul(layout.period),
            };
            if samples == 0 && total == 0 {
                continue;
            }
            let weight = match view {
                View::Cpu => samples.max(1),
                // Microseconds: the graph's tooltips stay readable.
                View::Wall => total.div_ceil(1000),
                View::Alloc | View::Inuse => total,
            };
            if weight == 0 {
                continue;
            }
            values.push((
                view,
                SampleValue {
                    stack: 0,
                    weight,
                    samples,
                    total,
                    leaf,
                },
            ));
        }
        if values.is_empty() {
            continue;
        }
        let stack_id = data.stacks.intern(&stack);
        for (_, v) in &mut values {
            v.stack = stack_id;
        }
        let cpu_samples: u64 = values
            .iter()
            .filter(|(view, _)| *view == View::Cpu)
            .map(|(_, v)| v.samples)
            .sum();
        file_samples += values.iter().map(|(_, v)| v.samples).max().unwrap_or(0);
        data.total_samples += cpu_samples;
        let service_profiles = data.services.entry(service.clone()).or_default();
        for (view, v) in &values {
            service_profiles.add(*view, v);
        }

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
                key if label.str != 0 => add_label(&mut data.labels, key, string(label.str), |p| {
                    for (view, v) in &values {
                        p.add(*view, v);
                    }
                }),
                _ => {}
            }
        }
        let Some(span_id) = span_id else {
            for (view, v) in &values {
                if *view == View::Cpu {
                    data.outside_spans
                        .add(v.stack, v.weight, v.samples, v.total);
                }
            }
            continue;
        };
        data.samples_with_span += cpu_samples;
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
        for (view, v) in &values {
            span.profile.add(*view, v);
            if *view == View::Cpu && v.samples > 0 {
                span.cpu_period = v.total / v.samples;
            }
        }
    }
    data.files.push(FileInfo {
        path,
        service,
        kind: layout.kind,
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
    labels: &mut BTreeMap<String, BTreeMap<String, Profiles>>,
    key: &str,
    value: &str,
    add: impl FnOnce(&mut Profiles),
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

/// Spans made by hand, for the page's tests.
#[cfg(test)]
pub(super) mod tests_support {
    use super::{Data, Leaf, SampleValue, Span, View};

    /// Adds `samples` CPU samples of 10 ms outside any span on `stack`.
    pub(in crate::report) fn outside(data: &mut Data, stack: &str, samples: u64) {
        let id = data.stacks.intern(stack);
        data.outside_spans
            .add(id, samples, samples, samples * 10 * MS);
        data.total_samples += samples;
    }

    const MS: u64 = 1_000_000;

    /// A span of `dur_ms` with `cpu_ms` of CPU in `cpu_samples` samples and
    /// `wall_ms` of wall time, of which `awaiting_ms` is `[awaiting]` and
    /// `blocked_ms` has a `[blocked…]` leaf.
    pub(in crate::report) fn span_with(
        dur_ms: u64,
        cpu_ms: u64,
        cpu_samples: u64,
        wall_ms: u64,
        awaiting_ms: u64,
        blocked_ms: u64,
    ) -> Span {
        let mut span = Span {
            span_id: "00000000000000ab".into(),
            start: Some(1),
            end: Some(1 + dur_ms * MS),
            recorded: true,
            root: true,
            ..Span::default()
        };
        let value = |stack, total: u64, samples, leaf| SampleValue {
            stack,
            weight: total.div_ceil(1000).max(1),
            samples,
            total,
            leaf,
        };
        if cpu_samples > 0 {
            span.profile
                .add(View::Cpu, &value(0, cpu_ms * MS, cpu_samples, Leaf::Other));
        }
        let running = wall_ms.saturating_sub(awaiting_ms + blocked_ms);
        for (stack, ms, leaf) in [
            (0, running, Leaf::Other),
            (1, awaiting_ms, Leaf::Awaiting),
            (2, blocked_ms, Leaf::Blocked),
        ] {
            if ms > 0 {
                span.profile
                    .add(View::Wall, &value(stack, ms * MS, 1, leaf));
            }
        }
        span
    }
}
