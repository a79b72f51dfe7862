//! pprof encoding: one interval's aggregated samples become one or more
//! gzipped `Profile`s within the server's limits.
//!
//! A [`Chunk`] is one profile being built, with its own string, function,
//! location and mapping tables and its exact encoded size, so that a sample
//! that would push it past [`MAX_PROFILE_BYTES`] can be rolled back and
//! start the next profile. Sample labels come from
//! [`SpanLabels::for_each_label`], so a new label needs nothing here.
//!
//! A sample taken on one of the profiler's own threads ([`SpanLabels`]'s
//! `thread`) ends in a synthetic root frame naming that thread
//! ([`ProfilerThread::frame_name`]): a `Location` at address 0 with one
//! `Line` of a function of that name, in a mapping of its own,
//! [`SYNTHETIC_MAPPING`], marked as symbolized like every other, so that
//! no server tries to symbolize it (Pyroscope gives a location without a
//! mapping a stub mapping that is not).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use super::kind::{ProfileKind, Values};
use super::names::readable;
use super::proto;
use super::symbolize::Resolved;
use super::synthetic::{is_synthetic, synthetic_name};
use super::EncodedProfile;
use crate::context::{keys, ProfilerThread, SpanLabels};

/// Most `Sample` entries per profile (Pyroscope's default
/// `max_profile_stacktrace_samples`).
pub(crate) const MAX_SAMPLES_PER_PROFILE: usize = 16_000;
/// Largest uncompressed profile (Pyroscope's default `max_profile_size_bytes`).
pub(crate) const MAX_PROFILE_BYTES: usize = 4 * 1024 * 1024;
/// Deepest stack kept; deeper stacks lose their outermost (root-side) frames,
/// as the server would (`max_profile_stacktrace_depth`).
pub(crate) const MAX_STACK_DEPTH: usize = 1000;

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
pub(super) struct Header {
    kind: ProfileKind,
    start: SystemTime,
    end: SystemTime,
    time_nanos: i64,
    duration_nanos: i64,
    period_nanos: i64,
}

impl Header {
    pub(super) fn new(
        kind: ProfileKind,
        start: SystemTime,
        end: SystemTime,
        period_nanos: i64,
    ) -> Self {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        Header {
            kind,
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

/// The file name of the mapping of synthetic frames (a pseudo name, like
/// the kernel's `[vdso]`).
pub(crate) const SYNTHETIC_MAPPING: &str = "[tracing-pyroscope]";
/// The key of that mapping in [`Chunk`]'s mapping table, which is keyed by
/// start address: no real mapping starts at the last address.
const SYNTHETIC_MAPPING_KEY: u64 = u64::MAX;

/// What a `Location` stands for: an address (leaf or return address, which
/// symbolize differently), or the root frame of a profiler thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LocationKey {
    Address(u64, bool),
    Root(ProfilerThread),
    /// A [`synthetic_frame`](super::synthetic_frame) value.
    Synthetic(u64),
}

/// The rollback point of a [`Chunk`] before adding one sample.
#[derive(Clone, Copy)]
pub(super) struct Checkpoint {
    pub(super) samples: usize,
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
pub(super) struct Chunk {
    pub(super) profile: proto::Profile,
    /// Exact `profile.encoded_len()`.
    pub(super) size: usize,
    /// Sum of sample counts.
    total: u64,
    strings: HashMap<Arc<str>, i64>,
    /// (full name, file) string ids → function id.
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<LocationKey, u64>,
    mappings: HashMap<u64, u64>,
    labels: HashMap<SpanLabels, Vec<proto::Label>>,
    // Keys inserted, in order, so that a sample can be undone.
    new_strings: Vec<Arc<str>>,
    new_functions: Vec<(i64, i64)>,
    new_locations: Vec<LocationKey>,
    new_mappings: Vec<u64>,
    new_labels: Vec<SpanLabels>,
}

impl Chunk {
    pub(super) fn new(header: &Header) -> Self {
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
        let mut value_type = |(t, u): (&str, &str)| proto::ValueType {
            r#type: chunk.string(t),
            unit: chunk.string(u),
        };
        // CPU's strings come first, in the order they always had.
        let sample_type: Vec<proto::ValueType> = header
            .kind
            .sample_types()
            .iter()
            .map(|&t| value_type(t))
            .collect();
        let period_type = value_type(header.kind.period_type());
        for key in keys::ALL {
            chunk.string(key);
        }
        chunk.profile.sample_type = sample_type;
        chunk.profile.period_type = Some(period_type);
        chunk.profile.period = header.period_nanos;
        chunk.profile.time_nanos = header.time_nanos;
        chunk.profile.duration_nanos = header.duration_nanos;
        chunk.size = chunk.profile.encoded_len();
        // The fixed strings are never rolled back.
        chunk.new_strings.clear();
        chunk
    }

    pub(super) fn checkpoint(&self) -> Checkpoint {
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

    pub(super) fn rollback(&mut self, cp: Checkpoint) {
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

    /// The function whose full name (a symbolized frame's) is `full`.
    ///
    /// Its `name` is the [`readable`] form, which Pyroscope, Grafana and
    /// Google's pprof tool show; its `system_name` is the full name, or
    /// empty when the two are the same. They must never be equal: Google's
    /// pprof tool takes a function whose `name` equals its `system_name`
    /// (or has no `name`) for one not yet demangled, and "simplifies" it
    /// C++-style, removing everything between `<` and `>` and `(` and `)`,
    /// which would turn `<std::sys::thread::unix::Thread>::new::thread_start`
    /// into `::new::thread_start`. A `name` different from the
    /// `system_name` it leaves as it is; `pprof -symbolize=demangle=full`
    /// shows the `system_name` instead, so the full names stay one flag
    /// away.
    fn function(&mut self, full: &Arc<str>, file: &Arc<str>) -> u64 {
        let full_id = self.string_arc(full);
        let file = self.string_arc(file);
        if let Some(&id) = self.functions.get(&(full_id, file)) {
            return id;
        }
        let (name, system_name) = match readable(full) {
            Cow::Owned(shown) if *shown != **full => (self.string(&shown), full_id),
            _ => (full_id, 0),
        };
        let id = self.profile.function.len() as u64 + 1;
        let function = proto::Function {
            id,
            name,
            system_name,
            filename: file,
            start_line: 0,
        };
        self.size += field_len(function.encoded_len());
        self.profile.function.push(function);
        self.functions.insert((full_id, file), id);
        self.new_functions.push((full_id, file));
        id
    }

    fn location(&mut self, addr: u64, is_return: bool, resolved: &Resolved) -> u64 {
        let key = LocationKey::Address(addr, is_return);
        if let Some(&id) = self.locations.get(&key) {
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
        self.push_location(key, mapping_id, addr, line)
    }

    /// The root frame of samples taken on `thread`.
    fn root_location(&mut self, thread: ProfilerThread) -> u64 {
        self.synthetic_location(LocationKey::Root(thread), thread.frame_name())
    }

    /// A frame named `name` in the synthetic mapping, at address 0.
    fn synthetic_location(&mut self, key: LocationKey, name: &str) -> u64 {
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let mapping_id = match self.mappings.get(&SYNTHETIC_MAPPING_KEY) {
            Some(&id) => id,
            None => {
                let filename = self.string(SYNTHETIC_MAPPING);
                let id = self.profile.mapping.len() as u64 + 1;
                let mapping = proto::Mapping {
                    id,
                    filename,
                    has_functions: true,
                    has_filenames: true,
                    has_line_numbers: true,
                    has_inline_frames: true,
                    ..Default::default()
                };
                self.size += field_len(mapping.encoded_len());
                self.profile.mapping.push(mapping);
                self.mappings.insert(SYNTHETIC_MAPPING_KEY, id);
                self.new_mappings.push(SYNTHETIC_MAPPING_KEY);
                id
            }
        };
        let name: Arc<str> = Arc::from(name);
        let line = vec![proto::Line {
            function_id: self.function(&name, &Arc::from("")),
            line: 0,
            column: 0,
        }];
        self.push_location(key, mapping_id, 0, line)
    }

    fn push_location(
        &mut self,
        key: LocationKey,
        mapping_id: u64,
        address: u64,
        line: Vec<proto::Line>,
    ) -> u64 {
        let id = self.profile.location.len() as u64 + 1;
        let location = proto::Location {
            id,
            mapping_id,
            address,
            line,
            is_folded: false,
        };
        self.size += field_len(location.encoded_len());
        self.profile.location.push(location);
        self.locations.insert(key, id);
        self.new_locations.push(key);
        id
    }

    fn labels(&mut self, labels: SpanLabels) -> Vec<proto::Label> {
        if let Some(l) = self.labels.get(&labels) {
            return l.clone();
        }
        let mut pairs = Vec::new();
        labels.for_each_label(|key, value| pairs.push((key, value.to_string())));
        let out: Vec<proto::Label> = pairs
            .into_iter()
            .map(|(key, value)| string_label(self.string(key), self.string(&value)))
            .collect();
        self.labels.insert(labels, out.clone());
        self.new_labels.push(labels);
        out
    }

    pub(super) fn add_sample(
        &mut self,
        stack: &[(u64, bool, Arc<Resolved>)],
        labels: SpanLabels,
        values: Values,
    ) {
        let mut location_id: Vec<u64> = stack
            .iter()
            .map(|(addr, is_return, r)| {
                if is_synthetic(*addr) {
                    let name = synthetic_name(*addr);
                    let name = name.as_deref().unwrap_or("[unknown]");
                    self.synthetic_location(LocationKey::Synthetic(*addr), name)
                } else {
                    self.location(*addr, *is_return, r)
                }
            })
            .collect();
        if let Some(thread) = labels.profiler_thread() {
            location_id.push(self.root_location(thread)); // leaf first: root last
        }
        let label = self.labels(labels);
        let n = self.profile.sample_type.len();
        let sample = proto::Sample {
            location_id,
            value: values[..n].to_vec(),
            label,
        };
        self.size += field_len(sample.encoded_len());
        self.profile.sample.push(sample);
        self.total = self
            .total
            .saturating_add(u64::try_from(values[0]).unwrap_or(0));
    }

    /// Gzips the profile; `None` if it has no sample.
    pub(super) fn encode(self, header: &Header) -> Option<EncodedProfile> {
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
            kind: header.kind,
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

#[cfg(test)]
mod tests;
