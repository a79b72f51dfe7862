//! A minimal pprof `Profile` (github.com/google/pprof/proto/profile.proto),
//! written here rather than taken from the crate so the test double checks
//! the crate's output independently. Only the fields the double reads.

use std::io::Read;

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// 0: no mapping.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Innermost (inlined) function first.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// gunzip if it starts with the gzip magic, else the bytes as they are.
pub fn maybe_gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

impl Profile {
    /// Decodes a pprof, gzipped or not.
    pub fn parse(bytes: &[u8]) -> Result<Profile, String> {
        let raw = maybe_gunzip(bytes).map_err(|e| format!("bad gzip: {e}"))?;
        Profile::decode(&raw[..]).map_err(|e| format!("bad pprof: {e}"))
    }

    pub fn string(&self, i: i64) -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.string_table.get(i))
            .map_or("", |s| s.as_str())
    }

    /// Sample types as `type/unit`.
    pub fn sample_types(&self) -> Vec<String> {
        self.sample_type
            .iter()
            .map(|t| format!("{}/{}", self.string(t.r#type), self.string(t.unit)))
            .collect()
    }

    /// A sample's string labels.
    pub fn labels(&self, s: &Sample) -> Vec<(String, String)> {
        s.label
            .iter()
            .filter(|l| l.str != 0)
            .map(|l| {
                (
                    self.string(l.key).to_string(),
                    self.string(l.str).to_string(),
                )
            })
            .collect()
    }

    /// A sample's stack as function names, root first.
    pub fn stack(&self, s: &Sample) -> Vec<String> {
        let mut leaf_first = Vec::new();
        for id in &s.location_id {
            let Some(loc) = self.location.iter().find(|l| l.id == *id) else {
                leaf_first.push(format!("<missing location {id}>"));
                continue;
            };
            if loc.line.is_empty() {
                leaf_first.push(format!("{:#x}", loc.address));
            }
            for line in &loc.line {
                let name = self
                    .function
                    .iter()
                    .find(|f| f.id == line.function_id)
                    .map_or("<missing function>", |f| self.string(f.name));
                leaf_first.push(name.to_string());
            }
        }
        leaf_first.reverse();
        leaf_first
    }
}

/// Builds small profiles for tests: `stacks` are root-first function names.
pub struct ProfileBuilder {
    profile: Profile,
}

impl ProfileBuilder {
    /// Sample types `samples/count` and `cpu/nanoseconds`, period 10 ms.
    pub fn cpu(time_nanos: i64) -> Self {
        let mut b = ProfileBuilder {
            profile: Profile {
                string_table: vec![String::new()],
                time_nanos,
                duration_nanos: 10_000_000_000,
                period: 10_000_000,
                ..Default::default()
            },
        };
        let (samples, count, cpu, nanos) = (
            b.intern("samples"),
            b.intern("count"),
            b.intern("cpu"),
            b.intern("nanoseconds"),
        );
        b.profile.sample_type = vec![
            ValueType {
                r#type: samples,
                unit: count,
            },
            ValueType {
                r#type: cpu,
                unit: nanos,
            },
        ];
        b.profile.period_type = Some(ValueType {
            r#type: cpu,
            unit: nanos,
        });
        b
    }

    fn intern(&mut self, s: &str) -> i64 {
        if let Some(i) = self.profile.string_table.iter().position(|x| x == s) {
            return i as i64;
        }
        self.profile.string_table.push(s.to_string());
        (self.profile.string_table.len() - 1) as i64
    }

    fn location_for(&mut self, name: &str) -> u64 {
        let name_idx = self.intern(name);
        if let Some(f) = self.profile.function.iter().find(|f| f.name == name_idx) {
            return f.id;
        }
        let id = self.profile.function.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name: name_idx,
            ..Default::default()
        });
        self.profile.location.push(Location {
            id,
            address: 0x1000 + id,
            line: vec![Line {
                function_id: id,
                line: 1,
            }],
            ..Default::default()
        });
        id
    }

    /// Adds `count` samples of `stack` (root first) with string `labels`.
    pub fn sample(mut self, stack: &[&str], count: i64, labels: &[(&str, &str)]) -> Self {
        let mut location_id: Vec<u64> = stack.iter().map(|f| self.location_for(f)).collect();
        location_id.reverse();
        let label = labels
            .iter()
            .map(|(k, v)| Label {
                key: self.intern(k),
                str: self.intern(v),
                ..Default::default()
            })
            .collect();
        self.profile.sample.push(Sample {
            location_id,
            value: vec![count, count * 10_000_000],
            label,
        });
        self
    }

    pub fn build(self) -> Profile {
        self.profile
    }

    pub fn encode(self) -> Vec<u8> {
        self.profile.encode_to_vec()
    }
}
