//! Aggregation of raw samples and their encoding as gzipped pprof.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use super::proto;
use super::symbolize::{lookup_address, Resolved, Symbolizer};
use super::EncodedProfile;
use crate::context::{self, SpanLabels};

/// Most `Sample` entries per profile (Pyroscope's default
/// `max_profile_stacktrace_samples`).
pub(crate) const MAX_SAMPLES_PER_PROFILE: usize = 16_000;
/// Largest uncompressed profile (Pyroscope's default `max_profile_size_bytes`).
pub(crate) const MAX_PROFILE_BYTES: usize = 4 * 1024 * 1024;
/// Deepest stack kept; deeper stacks lose their outermost (root-side) frames,
/// as the server would (`max_profile_stacktrace_depth`).
pub(crate) const MAX_STACK_DEPTH: usize = 1000;

/// Collects samples for one interval, then encodes them as pprof.
///
/// Samples are aggregated by (stack, labels); identical stacks are stored
/// once, so adding a repeated stack allocates nothing.
#[derive(Debug)]
pub(crate) struct ProfileBuilder {
    start: SystemTime,
    period_nanos: i64,
    stack_ids: HashMap<Box<[u64]>, usize>,
    counts: HashMap<(usize, SpanLabels), u64>,
    samples: u64,
}

impl ProfileBuilder {
    /// An empty profile for the interval starting at `start`; every sample
    /// stands for `period_nanos` of CPU time.
    pub(crate) fn new(start: SystemTime, period_nanos: i64) -> Self {
        ProfileBuilder {
            start,
            period_nanos,
            stack_ids: HashMap::new(),
            counts: HashMap::new(),
            samples: 0,
        }
    }

    /// Adds `count` samples of a stack with `labels`.
    ///
    /// `frames[0]` is the interrupted instruction, `frames[1..]` are return
    /// addresses, leaf first. Stacks deeper than [`MAX_STACK_DEPTH`] keep
    /// their leaf side. An empty stack is kept as a sample without locations.
    pub(crate) fn add(&mut self, labels: SpanLabels, frames: &[u64], count: u64) {
        if count == 0 {
            return;
        }
        let stack = &frames[..frames.len().min(MAX_STACK_DEPTH)];
        let id = match self.stack_ids.get(stack) {
            Some(&id) => id,
            None => {
                let id = self.stack_ids.len();
                self.stack_ids.insert(stack.into(), id);
                id
            }
        };
        let total = self.counts.entry((id, labels)).or_insert(0);
        *total = total.saturating_add(count);
        self.samples = self.samples.saturating_add(count);
    }

    /// Total samples added (the sum of `count`s).
    #[allow(dead_code)] // part of the interface; the collector may not need it
    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }

    /// `true` if nothing was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Symbolizes and encodes the interval `[start, end)`.
    ///
    /// Returns no profile at all when no sample was added (an empty interval
    /// produces no file and no upload). Otherwise one gzipped pprof, or
    /// several when one would exceed the server's limits
    /// ([`MAX_SAMPLES_PER_PROFILE`] samples, [`MAX_PROFILE_BYTES`]
    /// uncompressed): each then covers the same time range and holds a
    /// disjoint part of the samples, so their sum is the whole interval.
    pub(crate) fn finish(
        self,
        end: SystemTime,
        symbolizer: &mut Symbolizer,
    ) -> Vec<EncodedProfile> {
        if self.counts.is_empty() {
            return Vec::new();
        }
        let mut stacks: Vec<Box<[u64]>> = vec![Box::default(); self.stack_ids.len()];
        for (stack, id) in self.stack_ids {
            stacks[id] = stack;
        }
        let mut entries: Vec<((usize, SpanLabels), u64)> = self.counts.into_iter().collect();
        entries.sort_unstable_by_key(|&((stack, l), _)| (stack, l.span_id, l.trace_id, l.name_id));

        let header = Header::new(self.start, end, self.period_nanos);
        let mut out = Vec::new();
        let mut chunk = Chunk::new(&header);
        let mut resolved: Vec<(u64, bool, Arc<Resolved>)> = Vec::new();
        for ((stack_id, labels), count) in entries {
            resolved.clear();
            for (i, &addr) in stacks[stack_id].iter().enumerate() {
                let is_return = i > 0;
                let r = symbolizer.resolve(lookup_address(addr, is_return));
                resolved.push((addr, is_return, r));
            }
            if chunk.profile.sample.len() >= MAX_SAMPLES_PER_PROFILE {
                out.extend(chunk.encode(&header));
                chunk = Chunk::new(&header);
            }
            let checkpoint = chunk.checkpoint();
            chunk.add_sample(&resolved, labels, count, self.period_nanos);
            if chunk.size > MAX_PROFILE_BYTES && checkpoint.samples > 0 {
                // Does not fit: undo, close this profile, start the next.
                chunk.rollback(checkpoint);
                out.extend(chunk.encode(&header));
                chunk = Chunk::new(&header);
                chunk.add_sample(&resolved, labels, count, self.period_nanos);
            }
        }
        out.extend(chunk.encode(&header));
        out
    }
}

/// Decodes a pprof profile, gunzipping it first if it starts with the gzip
/// magic bytes.
#[allow(dead_code)] // for readers of what we write: the report, tests
pub(crate) fn decode_gzipped(bytes: &[u8]) -> std::io::Result<proto::Profile> {
    let raw;
    let data = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut decoder = flate2::read::GzDecoder::new(bytes);
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut decoder, &mut buf)?;
        raw = buf;
        &raw[..]
    } else {
        bytes
    };
    proto::Profile::decode(data)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// What every profile of one interval shares.
struct Header {
    start: SystemTime,
    end: SystemTime,
    time_nanos: i64,
    duration_nanos: i64,
    period_nanos: i64,
}

impl Header {
    fn new(start: SystemTime, end: SystemTime, period_nanos: i64) -> Self {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        Header {
            start,
            end,
            time_nanos: start.duration_since(UNIX_EPOCH).map(nanos).unwrap_or(0),
            duration_nanos: end.duration_since(start).map(nanos).unwrap_or(0),
            period_nanos,
        }
    }
}

/// Encoded length of a length-delimited field with a one-byte key
/// (every `Profile` field we append to has a tag below 16).
fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// The rollback point of a [`Chunk`] before adding one sample.
#[derive(Clone, Copy)]
struct Checkpoint {
    samples: usize,
    strings: usize,
    functions: usize,
    locations: usize,
    mappings: usize,
    labels: usize,
    size: usize,
    total: u64,
}

/// One profile being built: its own string, function, location and mapping
/// tables, and its exact encoded size so far.
struct Chunk {
    profile: proto::Profile,
    /// Exact `profile.encoded_len()`.
    size: usize,
    /// Sum of sample counts.
    total: u64,
    strings: HashMap<Arc<str>, i64>,
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<(u64, bool), u64>,
    mappings: HashMap<u64, u64>,
    labels: HashMap<SpanLabels, Vec<proto::Label>>,
    // Keys inserted, in order, so that a sample can be undone.
    new_strings: Vec<Arc<str>>,
    new_functions: Vec<(i64, i64)>,
    new_locations: Vec<(u64, bool)>,
    new_mappings: Vec<u64>,
    new_labels: Vec<SpanLabels>,
}

impl Chunk {
    fn new(header: &Header) -> Self {
        let mut chunk = Chunk {
            profile: proto::Profile::default(),
            size: 0,
            total: 0,
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            mappings: HashMap::new(),
            labels: HashMap::new(),
            new_strings: Vec::new(),
            new_functions: Vec::new(),
            new_locations: Vec::new(),
            new_mappings: Vec::new(),
            new_labels: Vec::new(),
        };
        chunk.string(""); // string_table[0] must be "".
        let samples = chunk.string("samples");
        let count = chunk.string("count");
        let cpu = chunk.string("cpu");
        let nanoseconds = chunk.string("nanoseconds");
        for key in ["span_id", "span_name", "trace_id"] {
            chunk.string(key);
        }
        let cpu_ns = proto::ValueType {
            r#type: cpu,
            unit: nanoseconds,
        };
        chunk.profile.sample_type = vec![
            proto::ValueType {
                r#type: samples,
                unit: count,
            },
            cpu_ns,
        ];
        chunk.profile.period_type = Some(cpu_ns);
        chunk.profile.period = header.period_nanos;
        chunk.profile.time_nanos = header.time_nanos;
        chunk.profile.duration_nanos = header.duration_nanos;
        chunk.size = chunk.profile.encoded_len();
        // The fixed strings are never rolled back.
        chunk.new_strings.clear();
        chunk
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            samples: self.profile.sample.len(),
            strings: self.new_strings.len(),
            functions: self.new_functions.len(),
            locations: self.new_locations.len(),
            mappings: self.new_mappings.len(),
            labels: self.new_labels.len(),
            size: self.size,
            total: self.total,
        }
    }

    fn rollback(&mut self, cp: Checkpoint) {
        let p = &mut self.profile;
        p.sample.truncate(cp.samples);
        for key in self.new_strings.drain(cp.strings..) {
            self.strings.remove(&key);
        }
        p.string_table.truncate(self.strings.len());
        for key in self.new_functions.drain(cp.functions..) {
            self.functions.remove(&key);
        }
        p.function.truncate(self.functions.len());
        for key in self.new_locations.drain(cp.locations..) {
            self.locations.remove(&key);
        }
        p.location.truncate(self.locations.len());
        for key in self.new_mappings.drain(cp.mappings..) {
            self.mappings.remove(&key);
        }
        p.mapping.truncate(self.mappings.len());
        for key in self.new_labels.drain(cp.labels..) {
            self.labels.remove(&key);
        }
        self.size = cp.size;
        self.total = cp.total;
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.strings.get(s) {
            return id;
        }
        let id = self.profile.string_table.len() as i64;
        let key: Arc<str> = Arc::from(s);
        self.strings.insert(key.clone(), id);
        self.new_strings.push(key);
        self.profile.string_table.push(s.to_owned());
        self.size += field_len(s.len());
        id
    }

    fn string_arc(&mut self, s: &Arc<str>) -> i64 {
        if let Some(&id) = self.strings.get(s) {
            return id;
        }
        let id = self.profile.string_table.len() as i64;
        self.strings.insert(s.clone(), id);
        self.new_strings.push(s.clone());
        self.profile.string_table.push(s.to_string());
        self.size += field_len(s.len());
        id
    }

    fn function(&mut self, name: &Arc<str>, file: &Arc<str>) -> u64 {
        let name = self.string_arc(name);
        let file = self.string_arc(file);
        if let Some(&id) = self.functions.get(&(name, file)) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let function = proto::Function {
            id,
            name,
            system_name: name,
            filename: file,
            start_line: 0,
        };
        self.size += field_len(function.encoded_len());
        self.profile.function.push(function);
        self.functions.insert((name, file), id);
        self.new_functions.push((name, file));
        id
    }

    fn location(&mut self, addr: u64, is_return: bool, resolved: &Resolved) -> u64 {
        if let Some(&id) = self.locations.get(&(addr, is_return)) {
            return id;
        }
        let mapping_id = match &resolved.mapping {
            Some(m) => match self.mappings.get(&m.start) {
                Some(&id) => id,
                None => {
                    let filename = self.string_arc(&m.path);
                    let build_id = match &m.build_id {
                        Some(b) => self.string_arc(b),
                        None => 0,
                    };
                    let id = self.profile.mapping.len() as u64 + 1;
                    let mapping = proto::Mapping {
                        id,
                        memory_start: m.start,
                        memory_limit: m.limit,
                        file_offset: m.file_offset,
                        filename,
                        build_id,
                        has_functions: true,
                        has_filenames: true,
                        has_line_numbers: true,
                        has_inline_frames: true,
                    };
                    self.size += field_len(mapping.encoded_len());
                    self.profile.mapping.push(mapping);
                    self.mappings.insert(m.start, id);
                    self.new_mappings.push(m.start);
                    id
                }
            },
            None => 0,
        };
        let line = resolved
            .frames
            .iter()
            .map(|f| proto::Line {
                function_id: self.function(&f.name, &f.file),
                line: i64::from(f.line),
                column: 0,
            })
            .collect();
        let id = self.profile.location.len() as u64 + 1;
        let location = proto::Location {
            id,
            mapping_id,
            address: addr,
            line,
            is_folded: false,
        };
        self.size += field_len(location.encoded_len());
        self.profile.location.push(location);
        self.locations.insert((addr, is_return), id);
        self.new_locations.push((addr, is_return));
        id
    }

    fn labels(&mut self, labels: SpanLabels) -> Vec<proto::Label> {
        if let Some(l) = self.labels.get(&labels) {
            return l.clone();
        }
        let mut out = Vec::new();
        if labels.span_id != 0 {
            let key = self.string("span_id");
            let value = self.string(&format!("{:016x}", labels.span_id));
            out.push(string_label(key, value));
            if let Some(name) = context::name_of(labels.name_id) {
                let key = self.string("span_name");
                let value = self.string_arc(&name);
                out.push(string_label(key, value));
            }
            if labels.trace_id != 0 {
                let key = self.string("trace_id");
                let value = self.string(&format!("{:032x}", labels.trace_id));
                out.push(string_label(key, value));
            }
        }
        self.labels.insert(labels, out.clone());
        self.new_labels.push(labels);
        out
    }

    fn add_sample(
        &mut self,
        stack: &[(u64, bool, Arc<Resolved>)],
        labels: SpanLabels,
        count: u64,
        period_nanos: i64,
    ) {
        let location_id = stack
            .iter()
            .map(|(addr, is_return, r)| self.location(*addr, *is_return, r))
            .collect();
        let label = self.labels(labels);
        let count_i = i64::try_from(count).unwrap_or(i64::MAX);
        let sample = proto::Sample {
            location_id,
            value: vec![count_i, count_i.saturating_mul(period_nanos)],
            label,
        };
        self.size += field_len(sample.encoded_len());
        self.profile.sample.push(sample);
        self.total = self.total.saturating_add(count);
    }

    /// Gzips the profile; `None` if it has no sample.
    fn encode(self, header: &Header) -> Option<EncodedProfile> {
        if self.profile.sample.is_empty() {
            return None;
        }
        let raw = self.profile.encode_to_vec();
        // The running size is exact; the tests hold it to that.
        #[cfg(test)]
        assert_eq!(self.size, raw.len(), "size accounting");
        let mut gz = GzEncoder::new(
            Vec::with_capacity(raw.len() / 4 + 64),
            Compression::default(),
        );
        // Writing into a Vec cannot fail.
        gz.write_all(&raw).ok()?;
        let gzipped = gz.finish().ok()?;
        Some(EncodedProfile {
            gzipped,
            start: header.start,
            end: header.end,
            samples: self.total,
        })
    }
}

fn string_label(key: i64, value: i64) -> proto::Label {
    proto::Label {
        key,
        str: value,
        num: 0,
        num_unit: 0,
    }
}

// Symbol names are only real on Linux (elsewhere the symbolizer is a stub).
#[cfg(all(
    test,
    all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64"),
        not(tracing_pyroscope_unsupported)
    )
))]
mod tests {
    use super::*;
    use std::hint::black_box;

    const PERIOD: i64 = 10_000_000; // 100 Hz

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn string(p: &proto::Profile, id: i64) -> &str {
        &p.string_table[id as usize]
    }

    /// `key=value` pairs of a sample's string labels, sorted.
    fn labels_of(p: &proto::Profile, s: &proto::Sample) -> Vec<(String, String)> {
        let mut l: Vec<_> = s
            .label
            .iter()
            .map(|l| (string(p, l.key).to_owned(), string(p, l.str).to_owned()))
            .collect();
        l.sort();
        l
    }

    /// Function names of a sample's stack, leaf first, inlined frames included.
    fn stack_names(p: &proto::Profile, s: &proto::Sample) -> Vec<String> {
        let mut names = Vec::new();
        for id in &s.location_id {
            let loc = &p.location[*id as usize - 1];
            assert_eq!(loc.id, *id, "location ids are their index + 1");
            for line in &loc.line {
                let f = &p.function[line.function_id as usize - 1];
                assert_eq!(f.id, line.function_id);
                names.push(string(p, f.name).to_owned());
            }
        }
        names
    }

    #[inline(never)]
    fn leaf_function_for_profile_test(x: u64) -> u64 {
        let mut acc = black_box(x);
        for i in 0..black_box(9u64) {
            acc = acc.rotate_left(3) ^ i;
        }
        black_box(acc)
    }

    #[inline(never)]
    fn caller_function_for_profile_test(x: u64) -> u64 {
        black_box(leaf_function_for_profile_test(black_box(x)) + 1)
    }

    fn addr_of(f: fn(u64) -> u64) -> u64 {
        f as *const () as usize as u64
    }

    /// A stack with real code addresses: leaf pc in the leaf function, a
    /// "return address" inside the caller.
    fn real_stack() -> Vec<u64> {
        assert_ne!(caller_function_for_profile_test(1), 0);
        vec![
            addr_of(leaf_function_for_profile_test) + 4,
            addr_of(caller_function_for_profile_test) + 8,
        ]
    }

    fn build_labelled() -> (Vec<EncodedProfile>, u32) {
        let name_id = context::intern_name("GET /car");
        let mut b = ProfileBuilder::new(at(1_700_000_000), PERIOD);
        assert!(b.is_empty());
        let stack = real_stack();
        let span = SpanLabels::new(
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210_0011_2233_4455_6677,
            name_id,
        );
        let small = SpanLabels::new(0xab, 0, 0);
        b.add(span, &stack, 2);
        b.add(span, &stack, 3); // aggregated with the first
        b.add(SpanLabels::NONE, &stack, 1);
        b.add(small, &stack[..1], 4);
        b.add(span, &stack, 0); // ignored
        assert_eq!(b.samples(), 10);
        assert!(!b.is_empty());
        let mut sym = Symbolizer::new();
        (b.finish(at(1_700_000_010), &mut sym), name_id)
    }

    #[test]
    fn encodes_labels_types_period_and_aggregates() {
        let (out, _) = build_labelled();
        assert_eq!(out.len(), 1);
        let enc = &out[0];
        assert_eq!(enc.samples, 10);
        assert_eq!(enc.start, at(1_700_000_000));
        assert_eq!(enc.end, at(1_700_000_010));
        assert_eq!(&enc.gzipped[..2], &[0x1f, 0x8b], "gzipped");
        let p = decode_gzipped(&enc.gzipped).expect("decodes");
        assert_eq!(string(&p, 0), "");
        let types: Vec<_> = p
            .sample_type
            .iter()
            .map(|t| (string(&p, t.r#type), string(&p, t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        let period_type = p.period_type.as_ref().expect("period type");
        assert_eq!(
            (string(&p, period_type.r#type), string(&p, period_type.unit)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(p.period, PERIOD);
        assert_eq!(p.time_nanos, 1_700_000_000_000_000_000);
        assert_eq!(p.duration_nanos, 10_000_000_000);

        assert_eq!(p.sample.len(), 3);
        let mut seen = Vec::new();
        for s in &p.sample {
            let labels = labels_of(&p, s);
            seen.push((labels.clone(), s.value.clone(), s.location_id.len()));
        }
        seen.sort();
        let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            seen,
            vec![
                (vec![], vec![1, PERIOD], 2),
                (
                    vec![kv("span_id", "00000000000000ab")],
                    vec![4, 4 * PERIOD],
                    1
                ),
                (
                    vec![
                        kv("span_id", "0123456789abcdef"),
                        kv("span_name", "GET /car"),
                        kv("trace_id", "fedcba98765432100011223344556677"),
                    ],
                    vec![5, 5 * PERIOD],
                    2
                ),
            ]
        );

        // Stacks are symbolized, leaf first; locations and functions deduped.
        let full = p
            .sample
            .iter()
            .find(|s| s.location_id.len() == 2)
            .expect("sample");
        let names = stack_names(&p, full);
        // The leaf location's outermost function is the leaf function (what
        // it inlined, e.g. `black_box`, comes before it).
        let leaf_loc = &p.location[full.location_id[0] as usize - 1];
        let leaf_fn = leaf_loc.line.last().expect("lines").function_id;
        let leaf_name = string(&p, p.function[leaf_fn as usize - 1].name);
        assert_eq!(
            leaf_name,
            "tracing_pyroscope::profile::builder::tests::leaf_function_for_profile_test"
        );
        assert!(
            names
                .iter()
                .any(|n| n.ends_with("tests::leaf_function_for_profile_test")),
            "{names:?}"
        );
        assert!(
            names
                .last()
                .expect("names")
                .ends_with("tests::caller_function_for_profile_test"),
            "{names:?}"
        );
        assert_eq!(p.location.len(), 2);
        assert_eq!(p.location[0].address, real_stack()[0]);
        let mut fn_keys: Vec<_> = p.function.iter().map(|f| (f.name, f.filename)).collect();
        fn_keys.sort();
        fn_keys.dedup();
        assert_eq!(fn_keys.len(), p.function.len(), "functions are deduped");
        let m = &p.mapping[0];
        assert!(m.has_functions && m.has_filenames && m.has_line_numbers && m.has_inline_frames);
        assert!(m.memory_start <= p.location[0].address && p.location[0].address < m.memory_limit);
        assert!(p.location.iter().all(|l| l.mapping_id == 1));
    }

    #[test]
    fn empty_interval_gives_no_profile() {
        let b = ProfileBuilder::new(at(10), PERIOD);
        let mut sym = Symbolizer::new();
        assert!(b.finish(at(20), &mut sym).is_empty());
    }

    #[test]
    fn decode_accepts_raw_and_rejects_garbage() {
        let p = proto::Profile {
            period: 7,
            ..Default::default()
        };
        let raw = p.encode_to_vec();
        assert_eq!(decode_gzipped(&raw).expect("raw").period, 7);
        assert!(decode_gzipped(&[0x1f, 0x8b, 0, 1, 2]).is_err());
        assert!(decode_gzipped(&[0xff, 0xff, 0xff]).is_err());
    }

    fn pprof_tool() -> String {
        if let Ok(p) = std::env::var("PPROF") {
            if !p.is_empty() {
                return p;
            }
        }
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/tools/install-pprof.sh"
        );
        let out = std::process::Command::new("bash")
            .arg(script)
            .output()
            .expect("run install-pprof.sh");
        assert!(
            out.status.success(),
            "install-pprof.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    #[test]
    fn google_pprof_reads_our_profile() {
        let (out, _) = build_labelled();
        let dir = std::env::temp_dir().join(format!("tp-profile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("cpu.pb.gz");
        std::fs::write(&file, &out[0].gzipped).expect("write profile");
        let result = std::process::Command::new(pprof_tool())
            .arg("-traces")
            .arg(&file)
            .env("PPROF_BINARY_PATH", "/nonexistent")
            .output()
            .expect("run pprof");
        let _ = std::fs::remove_dir_all(&dir);
        let stdout = String::from_utf8_lossy(&result.stdout);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(result.status.success(), "pprof failed: {stderr}");
        // `pprof -traces` prints labels as `   span_id:  0123…` lines.
        let words = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        for needle in [
            "span_id: 0123456789abcdef",
            "span_name: GET /car",
            "trace_id: fedcba98765432100011223344556677",
            "span_id: 00000000000000ab 40ms",
            "span_name: GET /car 50ms",
            "tests::leaf_function_for_profile_test",
            "tests::caller_function_for_profile_test",
            "Type: cpu",
            "Duration: 10s, Total samples = 100ms",
        ] {
            assert!(
                words.contains(needle),
                "pprof -traces lacks {needle:?}:\n{stdout}\n{stderr}"
            );
        }
    }

    /// Checks the limits on every profile and returns (profiles, total count).
    fn check_limits(out: &[EncodedProfile]) -> Vec<proto::Profile> {
        out.iter()
            .map(|e| {
                let raw = {
                    let mut d = flate2::read::GzDecoder::new(&e.gzipped[..]);
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut d, &mut v).expect("gunzip");
                    v
                };
                assert!(raw.len() <= MAX_PROFILE_BYTES, "{} bytes", raw.len());
                let p = decode_gzipped(&e.gzipped).expect("decode");
                assert!(!p.sample.is_empty());
                assert!(
                    p.sample.len() <= MAX_SAMPLES_PER_PROFILE,
                    "{} samples",
                    p.sample.len()
                );
                let sum: i64 = p.sample.iter().map(|s| s.value[0]).sum();
                assert_eq!(sum as u64, e.samples);
                assert!(p
                    .sample
                    .iter()
                    .all(|s| s.location_id.len() <= MAX_STACK_DEPTH));
                // Every referenced id exists.
                for s in &p.sample {
                    for id in &s.location_id {
                        assert!(*id >= 1 && *id as usize <= p.location.len());
                    }
                }
                p
            })
            .collect()
    }

    #[test]
    fn splits_more_than_16000_samples() {
        let mut b = ProfileBuilder::new(at(100), PERIOD);
        let leaf = addr_of(leaf_function_for_profile_test);
        let caller = addr_of(caller_function_for_profile_test);
        let n = 40_000u64;
        for i in 0..n {
            // Distinct stacks: a real leaf and caller around a fake frame.
            b.add(
                SpanLabels::new(i % 7 + 1, 0, 0),
                &[leaf + i % 16, 0x1000_0000 + i * 16, caller + 8],
                1 + i % 3,
            );
        }
        let expected: u64 = (0..n).map(|i| 1 + i % 3).sum();
        assert_eq!(b.samples(), expected);
        let mut sym = Symbolizer::new();
        let out = b.finish(at(110), &mut sym);
        assert_eq!(out.len(), 3, "40000 samples → 3 profiles");
        let profiles = check_limits(&out);
        let total: u64 = out.iter().map(|e| e.samples).sum();
        assert_eq!(total, expected);
        let entries: usize = profiles.iter().map(|p| p.sample.len()).sum();
        assert_eq!(entries, n as usize);
        for (e, p) in out.iter().zip(&profiles) {
            assert_eq!((e.start, e.end), (at(100), at(110)));
            assert_eq!(
                (p.time_nanos, p.duration_nanos),
                (100_000_000_000, 10_000_000_000)
            );
        }
    }

    #[test]
    fn splits_profiles_larger_than_4_mib() {
        // 2000 samples of 200 distinct frames each: far over 4 MiB at once.
        let mut b = ProfileBuilder::new(at(100), PERIOD);
        let mut stack = vec![0u64; 200];
        for i in 0..2000u64 {
            for (j, f) in stack.iter_mut().enumerate() {
                *f = 0x10_0000_0000 + (i * 200 + j as u64) * 64;
            }
            b.add(
                SpanLabels::new(i + 1, u128::from(i) << 64 | 1, 0),
                &stack,
                1,
            );
        }
        let mut sym = Symbolizer::new();
        let out = b.finish(at(101), &mut sym);
        assert!(out.len() >= 3, "{} profiles", out.len());
        let profiles = check_limits(&out);
        assert_eq!(out.iter().map(|e| e.samples).sum::<u64>(), 2000);
        // Nearly full: splitting is by size, not by a crude guess.
        let first = profiles[0].encode_to_vec().len();
        assert!(
            first > MAX_PROFILE_BYTES - 64 * 1024,
            "first profile only {first} bytes"
        );
        // Rolled-back tables left nothing dangling: every string, function
        // and location is used by some sample of its profile.
        for p in &profiles {
            let used: std::collections::HashSet<u64> = p
                .sample
                .iter()
                .flat_map(|s| s.location_id.iter().copied())
                .collect();
            assert_eq!(used.len(), p.location.len());
            assert_eq!(p.function.len(), p.location.len());
        }
    }

    #[test]
    fn truncates_deep_stacks_keeping_the_leaf() {
        let mut b = ProfileBuilder::new(at(100), PERIOD);
        let stack: Vec<u64> = (0..1500u64).map(|i| 0x2000_0000 + i * 32).collect();
        b.add(SpanLabels::NONE, &stack, 1);
        // Same first 1000 frames: aggregated with the truncated one.
        b.add(SpanLabels::NONE, &stack[..1000], 2);
        let mut sym = Symbolizer::new();
        let out = b.finish(at(101), &mut sym);
        let p = &check_limits(&out)[0];
        assert_eq!(p.sample.len(), 1);
        assert_eq!(p.sample[0].value[0], 3);
        let ids = &p.sample[0].location_id;
        assert_eq!(ids.len(), MAX_STACK_DEPTH);
        let addrs: Vec<u64> = ids
            .iter()
            .map(|id| p.location[*id as usize - 1].address)
            .collect();
        assert_eq!(addrs, stack[..MAX_STACK_DEPTH]);
    }

    #[test]
    fn leaf_and_return_addresses_are_distinct_locations() {
        let leaf = addr_of(leaf_function_for_profile_test);
        let mut b = ProfileBuilder::new(at(100), PERIOD);
        // The same address as a leaf pc and as a return address.
        b.add(SpanLabels::NONE, &[leaf + 1], 1);
        b.add(SpanLabels::NONE, &[leaf + 100, leaf + 1], 1);
        let mut sym = Symbolizer::new();
        let p = decode_gzipped(&b.finish(at(101), &mut sym)[0].gzipped).expect("decode");
        assert_eq!(p.location.len(), 3);
        for l in &p.location {
            let name = string(
                &p,
                p.function[l.line.last().expect("line").function_id as usize - 1].name,
            );
            assert!(name.ends_with("leaf_function_for_profile_test"), "{name}");
        }
    }
}

#[cfg(all(
    test,
    all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64"),
        not(tracing_pyroscope_unsupported)
    )
))]
mod bench {
    use super::*;
    use std::time::Instant;

    /// The test binary's executable mapping.
    fn text_range() -> (u64, u64) {
        let exe = std::env::current_exe().expect("exe");
        let exe = exe.to_str().expect("utf-8");
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let line = maps
            .lines()
            .find(|l| l.ends_with(exe) && l.split_whitespace().nth(1) == Some("r-xp"))
            .expect("text mapping");
        let (a, b) = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'))
            .expect("range");
        (
            u64::from_str_radix(a, 16).expect("hex"),
            u64::from_str_radix(b, 16).expect("hex"),
        )
    }

    /// Realistic load: 8 threads × 100 Hz × 10 s = 8000 samples over 500
    /// distinct stacks of depth 30 (real code addresses), 50 spans.
    /// `cargo test --release --lib profile::builder::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run by hand"]
    fn finish_timing() {
        let (start, end) = text_range();
        let pool: Vec<u64> = (0..3000u64)
            .map(|i| start + (i * 7919 * 64) % (end - start))
            .collect();
        let stacks: Vec<Vec<u64>> = (0..500usize)
            .map(|s| {
                (0..30)
                    .map(|d| pool[(s * 31 + d * 97) % pool.len()])
                    .collect()
            })
            .collect();
        let mut sym = Symbolizer::new();
        for round in 0..3 {
            let t = Instant::now();
            let mut b = ProfileBuilder::new(UNIX_EPOCH, 10_000_000);
            for i in 0..8000usize {
                let labels = SpanLabels::new((i % 50) as u64 + 1, (i % 50) as u128 + 7, 0);
                b.add(labels, &stacks[(i * 13) % stacks.len()], 1);
            }
            let added = t.elapsed();
            let t = Instant::now();
            let out = b.finish(UNIX_EPOCH + Duration::from_secs(10), &mut sym);
            let finished = t.elapsed();
            let bytes: usize = out.iter().map(|e| e.gzipped.len()).sum();
            println!(
                "round {round}: add 8000 samples {added:?}, finish {finished:?}, {} profile(s), {bytes} bytes gzipped",
                out.len()
            );
        }
    }
}
