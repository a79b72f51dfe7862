//! Property tests of the pprof encoder: for any interval's samples (stacks
//! of real and made-up addresses, shallow and deeper than the server keeps,
//! with any span id, trace id and span name, counts from 0 to 2³²),
//! [`ProfileBuilder::finish`] writes profiles that
//! - decode, with an independent pprof decoder (`tests/common/pprof.rs`),
//!   back to exactly the samples put in: the same address stacks (cut to
//!   the 1000 leaf-side frames), the same labels, the same counts summed
//!   per (stack, labels), `cpu/nanoseconds` = count × period, and the
//!   interval's time and period;
//! - stay within the server's limits (16000 samples, 4 MiB per profile);
//! - are accepted by the strict Pyroscope double (`tests/common/
//!   pyroscope_double`) in a real push request;
//! - and, for one case in [`PPROF_EVERY`], are read by Google's pprof tool
//!   with the same counts per label set (of the samples with a stack: the
//!   tool lists no others).
//!
//! Case counts: [`CASES`] for the round trip, [`SPLIT_CASES`] for intervals
//! that need more than one profile.

#[path = "../../tests/common/mod.rs"]
mod common;
// Shared with the integration tests, whose items are `pub`.
#[allow(unreachable_pub)]
#[path = "../../tests/pprof_tool/mod.rs"]
mod pprof_tool;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use super::encode::{MAX_PROFILE_BYTES, MAX_SAMPLES_PER_PROFILE, MAX_STACK_DEPTH};
use super::{EncodedProfile, ProfileBuilder, Symbolizer};
use crate::context::{self, SpanLabels};
use common::pprof::{maybe_gunzip, Profile};
use common::pyroscope_double::{
    LabelPair, PushRequest, PyroscopeDouble, RawProfileSeries, RawSample,
};

/// Round-trip cases; each is also pushed to the double.
const CASES: u32 = 64;
/// Cases whose interval needs several profiles (> 16000 distinct samples).
const SPLIT_CASES: u32 = 3;
/// One case in this many is also read by Google's pprof tool.
const PPROF_EVERY: u32 = 8;

/// A sample as it goes in: stack (leaf first), labels, count.
type Input = (Vec<u64>, SpanLabels, u64);
/// (address stack, sorted labels) → summed count.
type Decoded = BTreeMap<(Vec<u64>, Vec<(String, String)>), u64>;

#[inline(never)]
fn real_code_a(x: u64) -> u64 {
    std::hint::black_box(x.rotate_left(7) ^ 0x5a)
}

#[inline(never)]
fn real_code_b(x: u64) -> u64 {
    std::hint::black_box(real_code_a(x) + 1)
}

/// Addresses inside this binary's code, so that some frames symbolize to
/// real functions with a mapping and a build id.
fn real_addresses() -> Vec<u64> {
    let a = real_code_a as fn(u64) -> u64 as usize as u64;
    let b = real_code_b as fn(u64) -> u64 as usize as u64;
    let c = Symbolizer::new as fn() -> Symbolizer as usize as u64;
    vec![a, a + 3, b, b + 5, c, c + 1]
}

/// Span names used by the cases, interned once (the name table is global
/// and capped, so cases do not make up new ones). One is longer than the
/// server accepts and is cut; one has characters pprof and the server must
/// carry through.
fn name_ids() -> Vec<u32> {
    [
        "GET /car".to_string(),
        "OrderVehicle".to_string(),
        "é ünïcode ✓ \"quoted\" x=y,z".to_string(),
        "n".repeat(3000),
    ]
    .iter()
    .map(|n| context::intern_name(n))
    .collect()
}

fn address(real: Vec<u64>) -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(real),
        1 => 1u64..4096,
        1 => any::<u64>(),
    ]
}

fn stack(real: Vec<u64>) -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        8 => prop::collection::vec(address(real.clone()), 0..24),
        1 => prop::collection::vec(address(real), MAX_STACK_DEPTH - 2..MAX_STACK_DEPTH + 40),
    ]
}

fn labels(names: Vec<u32>) -> impl Strategy<Value = SpanLabels> {
    (
        prop_oneof![Just(0u64), any::<u64>()],
        prop_oneof![2 => Just(0u128), 1 => any::<u128>()],
        prop::option::of(prop::sample::select(names)),
    )
        .prop_map(|(span, trace, name)| SpanLabels::new(span, trace, name.unwrap_or(0)))
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..6, 1 => 0u64..=u64::from(u32::MAX)]
}

/// One interval: a period and samples drawn from a few stacks and label
/// sets, so that equal (stack, labels) pairs meet and must be summed.
fn interval() -> impl Strategy<Value = (i64, Vec<Input>)> {
    let real = real_addresses();
    let names = name_ids();
    (
        prop::sample::select(vec![1_000_000i64, 10_000_000, 1_000_000_000]),
        prop::collection::vec(stack(real), 1..6),
        prop::collection::vec(labels(names), 1..5),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                any::<prop::sample::Index>(),
                count(),
            ),
            1..40,
        ),
    )
        .prop_map(|(period, stacks, labels, picks)| {
            let samples = picks
                .into_iter()
                .map(|(s, l, n)| {
                    (
                        stacks[s.index(stacks.len())].clone(),
                        labels[l.index(labels.len())],
                        n,
                    )
                })
                .collect();
            (period, samples)
        })
}

/// The labels a sample must carry, written out from the documented format
/// (16 and 32 lowercase hex digits, the interned name), sorted.
fn expected_labels(l: &SpanLabels) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if l.span_id != 0 {
        out.push(("span_id".to_string(), format!("{:016x}", l.span_id)));
    }
    if let Some(name) = context::name_of(l.name_id) {
        out.push(("span_name".to_string(), name.to_string()));
    }
    if l.trace_id != 0 {
        out.push(("trace_id".to_string(), format!("{:032x}", l.trace_id)));
    }
    out.sort();
    out
}

/// What the profiles must decode to.
fn expected(samples: &[Input]) -> Decoded {
    let mut want = Decoded::new();
    for (stack, labels, count) in samples {
        if *count == 0 {
            continue;
        }
        let kept = stack[..stack.len().min(MAX_STACK_DEPTH)].to_vec();
        *want.entry((kept, expected_labels(labels))).or_default() += count;
    }
    want
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// Decodes every profile with the independent decoder, checking each
/// profile's header and limits on the way.
fn decode_all(
    out: &[EncodedProfile],
    start: SystemTime,
    end: SystemTime,
    period: i64,
) -> Result<Decoded, TestCaseError> {
    let mut got = Decoded::new();
    for encoded in out {
        let raw = maybe_gunzip(&encoded.gzipped).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(encoded.gzipped.starts_with(&[0x1f, 0x8b]));
        prop_assert!(raw.len() <= MAX_PROFILE_BYTES, "{} bytes", raw.len());
        let p = Profile::parse(&raw).map_err(TestCaseError::fail)?;
        prop_assert!(!p.sample.is_empty() && p.sample.len() <= MAX_SAMPLES_PER_PROFILE);
        prop_assert_eq!(p.sample_types(), ["samples/count", "cpu/nanoseconds"]);
        let pt = p.period_type.expect("period type");
        prop_assert_eq!(
            (p.string(pt.r#type), p.string(pt.unit)),
            ("cpu", "nanoseconds")
        );
        prop_assert_eq!(p.period, period);
        prop_assert_eq!(p.time_nanos, nanos(start));
        prop_assert_eq!(p.duration_nanos, nanos(end) - nanos(start));
        prop_assert_eq!((encoded.start, encoded.end), (start, end));
        let addresses: BTreeMap<u64, u64> = p.location.iter().map(|l| (l.id, l.address)).collect();
        let mut total = 0u64;
        for s in &p.sample {
            let stack: Vec<u64> = s
                .location_id
                .iter()
                .map(|id| {
                    addresses
                        .get(id)
                        .copied()
                        .ok_or_else(|| TestCaseError::fail(format!("dangling location {id}")))
                })
                .collect::<Result<_, _>>()?;
            let mut labels = p.labels(s);
            labels.sort();
            prop_assert_eq!(s.value.len(), 2);
            prop_assert!(s.value[0] > 0);
            // Saturating: 2^63 ns is 292 years of CPU in one interval.
            prop_assert_eq!(s.value[1], s.value[0].saturating_mul(period));
            total += s.value[0] as u64;
            *got.entry((stack, labels)).or_default() += s.value[0] as u64;
        }
        prop_assert_eq!(encoded.samples, total);
    }
    Ok(got)
}

/// Pushes each profile to the double as the uploader would; all must be
/// accepted.
fn push_all(double: &PyroscopeDouble, out: &[EncodedProfile]) -> Result<(), TestCaseError> {
    let client = reqwest::blocking::Client::new();
    for (i, encoded) in out.iter().enumerate() {
        let request = PushRequest {
            series: vec![RawProfileSeries {
                labels: [
                    ("__name__", "process_cpu"),
                    ("service_name", "proptest-app"),
                ]
                .iter()
                .map(|(n, v)| LabelPair {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
                samples: vec![RawSample {
                    raw_profile: encoded.gzipped.clone(),
                    id: format!("case-{i}"),
                }],
            }],
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&prost::Message::encode_to_vec(&request))
            .expect("gzip");
        let response = client
            .post(format!("{}/push.v1.PusherService/Push", double.url()))
            .header("Content-Type", "application/proto")
            .header("Content-Encoding", "gzip")
            .body(gz.finish().expect("gzip"))
            .send()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        prop_assert_eq!(
            status,
            200,
            "the double refused an encoder output: {}",
            text
        );
    }
    Ok(())
}

/// Google's pprof tool reads every profile; its counts per label set match.
fn pprof_reads(out: &[EncodedProfile], want: &Decoded, case: u32) {
    let dir = std::env::temp_dir().join(format!("tp-proptest-{}-{case}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut got: BTreeMap<BTreeMap<String, String>, u64> = BTreeMap::new();
    for (i, encoded) in out.iter().enumerate() {
        let file = dir.join(format!("{i}.pb.gz"));
        std::fs::write(&file, &encoded.gzipped).expect("write");
        for trace in pprof_tool::traces(&file) {
            *got.entry(trace.labels).or_default() += trace.count;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // pprof lists only samples with a stack (it counts the others in its
    // "Total samples" header alone).
    let mut expect: BTreeMap<BTreeMap<String, String>, u64> = BTreeMap::new();
    for ((stack, labels), count) in want {
        if stack.is_empty() {
            continue;
        }
        *expect.entry(labels.iter().cloned().collect()).or_default() += count;
    }
    assert_eq!(got, expect, "pprof -traces counts per label set");
}

#[test]
fn encoder_round_trips_and_the_double_accepts_it() {
    let double = PyroscopeDouble::start();
    // `run` takes an `Fn`: state shared across cases goes in cells.
    let symbolizer = RefCell::new(Symbolizer::new());
    let mut runner = TestRunner::new(ProptestConfig::with_cases(CASES));
    let case = Cell::new(0u32);
    let read_by_pprof = Cell::new(0u32);
    runner
        .run(&interval(), |(period, samples)| {
            case.set(case.get() + 1);
            let start = SystemTime::now();
            let end = start + Duration::from_secs(10);
            let mut builder =
                ProfileBuilder::new(crate::profile::ProfileKind::Cpu, start, period, usize::MAX);
            for (stack, labels, count) in &samples {
                builder.add(*labels, stack, *count);
            }
            let want = expected(&samples);
            let out = builder.finish(end, &mut symbolizer.borrow_mut());
            prop_assert_eq!(
                out.is_empty(),
                want.is_empty(),
                "no profile exactly when no sample"
            );
            let got = decode_all(&out, start, end, period)?;
            prop_assert_eq!(&got, &want);
            push_all(&double, &out)?;
            if case.get() % PPROF_EVERY == 1 && !out.is_empty() {
                pprof_reads(&out, &want, case.get());
                read_by_pprof.set(read_by_pprof.get() + 1);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (case, read_by_pprof) = (case.get(), read_by_pprof.get());
    assert!(read_by_pprof >= 1, "no case went through pprof");
    eprintln!(
        "FIGURES encoder round trip: {case} cases, {} profiles accepted by the double, {read_by_pprof} read by pprof",
        double.accepted()
    );
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "32000 samples through an unoptimized encoder and decoder take minutes; scripts/test.sh runs it in release (seconds)"
)]
fn intervals_past_the_sample_limit_split_and_round_trip() {
    let double = PyroscopeDouble::start();
    let symbolizer = RefCell::new(Symbolizer::new());
    let names = name_ids();
    let mut runner = TestRunner::new(ProptestConfig::with_cases(SPLIT_CASES));
    let strategy = (
        MAX_SAMPLES_PER_PROFILE + 1..MAX_SAMPLES_PER_PROFILE * 2 + 500,
        prop::collection::vec(labels(names), 1..4),
        any::<u64>(),
    );
    let profiles = Cell::new(0usize);
    runner
        .run(&strategy, |(distinct, labels, seed)| {
            // Distinct two-frame stacks of made-up addresses: one sample each.
            let samples: Vec<Input> = (0..distinct as u64)
                .map(|i| {
                    let leaf = seed.wrapping_add(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    (
                        vec![leaf, i + 1],
                        labels[i as usize % labels.len()],
                        1 + i % 3,
                    )
                })
                .collect();
            let start = SystemTime::now();
            let end = start + Duration::from_secs(10);
            let mut builder = ProfileBuilder::new(
                crate::profile::ProfileKind::Cpu,
                start,
                10_000_000,
                usize::MAX,
            );
            for (stack, labels, count) in &samples {
                builder.add(*labels, stack, *count);
            }
            let want = expected(&samples);
            let out = builder.finish(end, &mut symbolizer.borrow_mut());
            prop_assert!(
                out.len() >= 2,
                "{} samples in {} profile(s)",
                distinct,
                out.len()
            );
            profiles.set(profiles.get() + out.len());
            prop_assert_eq!(&decode_all(&out, start, end, 10_000_000)?, &want);
            push_all(&double, &out)?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "FIGURES split: {SPLIT_CASES} cases, {} profiles, all accepted by the double",
        profiles.get()
    );
}
