//! The Pyroscope test double itself honours the protocol facts: these tests
//! pin what it accepts, what it rejects and how it answers queries. Each
//! server rule gets a hand-built bad request that must be rejected the way
//! the server rejects it, next to a good one that must pass; the request
//! pyroscope-rs 2.1.5 really sent must still be accepted.

use crate::common;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::pprof::{Profile, ProfileBuilder};
use common::pyroscope_double::rules::{self, MAX_PROFILE_BYTES, MAX_SAMPLES};
use common::pyroscope_double::*;
use prost::Message;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/pyroscope-rs-2.1.5-push-request.bin.gz"
);
const FIXTURE_HEADERS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/pyroscope-rs-2.1.5-push-request.headers.json"
);

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(n, v)| LabelPair {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect()
}

fn app_labels() -> Vec<LabelPair> {
    labels(&[("__name__", "process_cpu"), ("service_name", "app")])
}

/// POSTs a gzip PushRequest; returns status and body.
fn push(double: &PyroscopeDouble, labels: Vec<LabelPair>, pprof: Vec<u8>) -> (u16, String) {
    let req = PushRequest {
        series: vec![RawProfileSeries {
            labels,
            samples: vec![RawSample {
                raw_profile: pprof,
                id: "id".into(),
            }],
        }],
    };
    post_push(double, gzip(&req.encode_to_vec()))
}

fn post_push(double: &PyroscopeDouble, body: Vec<u8>) -> (u16, String) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/push.v1.PusherService/Push", double.url()))
        .header("Content-Type", "application/proto")
        .header("Content-Encoding", "gzip")
        .body(body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn simple_profile() -> Vec<u8> {
    ProfileBuilder::cpu(now_nanos())
        .sample(&["main", "work"], 3, &[])
        .encode()
}

fn error_code(body: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON error body");
    (
        v["code"].as_str().unwrap().to_string(),
        v["message"].as_str().unwrap().to_string(),
    )
}

#[test]
fn accepts_the_pyroscope_rs_fixture_exactly() {
    let body = std::fs::read(FIXTURE).unwrap();
    let headers: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE_HEADERS).unwrap()).unwrap();
    let double = PyroscopeDouble::start();
    // The fixture was recorded at its profile's time_nanos: pin the clock.
    let push_req = PushRequest::decode(&common::pprof::maybe_gunzip(&body).unwrap()[..]).unwrap();
    let raw = &push_req.series[0].samples[0].raw_profile;
    let t = Profile::parse(raw).unwrap().time_nanos;
    double.set_now(UNIX_EPOCH + Duration::from_nanos(t as u64 + 1_000_000_000));

    let mut req = reqwest::blocking::Client::new().post(format!(
        "{}{}",
        double.url(),
        headers["path"].as_str().unwrap()
    ));
    for (k, v) in headers["headers"].as_object().unwrap() {
        if k != "host" && k != "content-length" {
            req = req.header(k, v.as_str().unwrap());
        }
    }
    let r = req.body(body.clone()).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "", "200 with an empty body");

    let received = double.received();
    assert_eq!(received.len(), 1);
    for (k, v) in headers["headers"].as_object().unwrap() {
        if k != "host" {
            assert_eq!(
                received[0].headers.get(k).map(String::as_str),
                v.as_str(),
                "{k}"
            );
        }
    }
    let samples = double.samples();
    assert!(!samples.is_empty());
    for s in &samples {
        assert_eq!(
            s.span_id, 0x0123456789abcdef,
            "span_id is taken out of the labels"
        );
        assert!(!s.series.contains_key("span_id"));
        assert_eq!(s.series["service_name"], "pyrocheck");
        assert_eq!(s.series["region"], "eu-north");
        assert_eq!(
            s.series["otel_scope_name"], "com.grafana.pyroscope/rust",
            "label names are stored sanitized"
        );
        assert!(!s.series.contains_key("otel.scope.name"));
        assert_eq!(s.time_nanos, t);
        assert!(s.values["cpu/nanoseconds"] > 0);
    }
    assert!(samples
        .iter()
        .any(|s| s.stack.iter().any(|f| f == "pyrocheck::burn")));
    assert_eq!(double.profiles().len(), 1);
    assert!(double.profile_types().contains(GRAFANA_PROFILE_TYPE));
    // One label set (span_id is not a series label), one series per
    // sample type.
    assert_eq!(double.label_sets().len(), 1, "{:?}", double.label_sets());
    let types = Profile::parse(raw).unwrap().sample_type.len();
    assert_eq!(double.series_count(), types);

    // The same request an hour and more later is too old.
    double.set_now(UNIX_EPOCH + Duration::from_nanos(t as u64) + Duration::from_secs(3700));
    let (status, text) = post_push(&double, body);
    assert_eq!(status, 400);
    assert!(
        error_code(&text)
            .1
            .contains("is outside of ingestion window"),
        "{text}"
    );
}

#[test]
fn rejects_bad_series_labels_with_400() {
    let double = PyroscopeDouble::start();
    let mut too_many = app_labels();
    too_many.extend((0..29).map(|i| LabelPair {
        name: format!("l{i}"),
        value: "v".into(),
    }));
    let cases: Vec<(&str, Vec<LabelPair>)> = vec![
        (
            "charset",
            labels(&[
                ("__name__", "process_cpu"),
                ("service_name", "app"),
                ("a-b", "1"),
            ]),
        ),
        (
            "leading digit",
            labels(&[("__name__", "process_cpu"), ("1a", "1")]),
        ),
        (
            "reserved prefix",
            labels(&[("__name__", "process_cpu"), ("__x", "1")]),
        ),
        (
            "duplicate",
            labels(&[("__name__", "process_cpu"), ("a", "1"), ("a", "2")]),
        ),
        ("no __name__", labels(&[("service_name", "app")])),
        ("31 labels", too_many),
        (
            "long value",
            vec![
                LabelPair {
                    name: "__name__".into(),
                    value: "process_cpu".into(),
                },
                LabelPair {
                    name: "a".into(),
                    value: "x".repeat(2049),
                },
            ],
        ),
        (
            "long name",
            vec![
                LabelPair {
                    name: "__name__".into(),
                    value: "process_cpu".into(),
                },
                LabelPair {
                    name: "a".repeat(1025),
                    value: "x".into(),
                },
            ],
        ),
    ];
    for (what, labels) in cases {
        let (status, body) = push(&double, labels, simple_profile());
        assert_eq!(status, 400, "{what}: {body}");
        let (code, message) = error_code(&body);
        assert_eq!(code, "invalid_argument", "{what}");
        assert!(!message.is_empty());
    }
    assert!(
        double.samples().is_empty(),
        "nothing stored from rejected requests"
    );

    // 30 labels in all is fine; a missing service_name becomes
    // `unspecified` (v1.13.4), `unknown_service` from 2.x on.
    let mut thirty = app_labels();
    thirty.extend((0..28).map(|i| LabelPair {
        name: format!("l{i}"),
        value: "v".into(),
    }));
    assert_eq!(push(&double, thirty, simple_profile()).0, 200);
    let (status, _) = push(
        &double,
        labels(&[("__name__", "process_cpu"), ("a.b", "1")]),
        simple_profile(),
    );
    assert_eq!(status, 200);
    assert!(double
        .samples()
        .iter()
        .any(|s| s.series["service_name"] == "unspecified" && s.series["a_b"] == "1"));
    double.set_server_version(ServerVersion::V2_1);
    let (status, _) = push(
        &double,
        labels(&[("__name__", "process_cpu"), ("c", "2")]),
        simple_profile(),
    );
    assert_eq!(status, 200);
    assert!(double
        .samples()
        .iter()
        .any(|s| s.series["service_name"] == "unknown_service" && s.series["c"] == "2"));
}

#[test]
fn sample_labels_count_against_the_series_limit() {
    let double = PyroscopeDouble::start();
    let mut series = app_labels();
    series.extend((0..28).map(|i| LabelPair {
        name: format!("l{i}"),
        value: "v".into(),
    }));
    // span_id is taken out; span_name becomes the 31st series label.
    let pprof = ProfileBuilder::cpu(now_nanos())
        .sample(
            &["main"],
            1,
            &[("span_id", "0123456789abcdef"), ("span_name", "GET /")],
        )
        .encode();
    assert_eq!(push(&double, series.clone(), pprof).0, 400);
    let pprof = ProfileBuilder::cpu(now_nanos())
        .sample(&["main"], 1, &[("span_id", "0123456789abcdef")])
        .encode();
    assert_eq!(push(&double, series, pprof).0, 200);
}

#[test]
fn enforces_profile_limits() {
    let double = PyroscopeDouble::start();
    // > 4 MiB uncompressed (a huge function name compresses well).
    let huge = "f".repeat(MAX_PROFILE_BYTES);
    let pprof = ProfileBuilder::cpu(now_nanos())
        .sample(&[&huge], 1, &[])
        .encode();
    let (status, body) = push(&double, app_labels(), gzip(&pprof));
    assert_eq!(status, 400, "{body}");
    assert!(
        error_code(&body).1.contains("exceeds the size limit"),
        "{body}"
    );

    let mut many = ProfileBuilder::cpu(now_nanos());
    for i in 0..=MAX_SAMPLES {
        many = many.sample(&["main"], 1, &[("i", if i % 2 == 0 { "a" } else { "b" })]);
    }
    let (status, body) = push(&double, app_labels(), many.encode());
    assert_eq!(status, 400, "{body}");
    assert!(error_code(&body).1.contains("16000"), "{body}");

    let hour = 3_600_000_000_000;
    for (what, t, ok) in [
        ("2h old", now_nanos() - 2 * hour, false),
        ("20m ahead", now_nanos() + hour / 3, false),
        ("30m old", now_nanos() - hour / 2, true),
        ("5m ahead", now_nanos() + hour / 12, true),
    ] {
        let pprof = ProfileBuilder::cpu(t).sample(&["main"], 1, &[]).encode();
        let (status, body) = push(&double, app_labels(), pprof);
        assert_eq!(status == 200, ok, "{what}: {status} {body}");
    }
    let (status, _) = push(&double, app_labels(), b"not a pprof".to_vec());
    assert_eq!(status, 400);
    // An uncompressed PushRequest (no Content-Encoding) is fine too.
    let req = PushRequest {
        series: vec![RawProfileSeries {
            labels: app_labels(),
            samples: vec![RawSample {
                raw_profile: simple_profile(),
                id: String::new(),
            }],
        }],
    };
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/push.v1.PusherService/Push", double.url()))
        .header("Content-Type", "application/proto")
        .body(req.encode_to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn span_id_extraction_rules() {
    let double = PyroscopeDouble::start();
    double.set_server_version(ServerVersion::V2_1);
    let pprof = ProfileBuilder::cpu(now_nanos())
        .sample(
            &["a"],
            1,
            &[("span_id", "0123456789abcdef"), ("span_name", "GET /car")],
        )
        .sample(&["b"], 1, &[("span_id", "123")])
        .sample(&["c"], 1, &[("span_id", "0123456789abcdefg")])
        .sample(&["d"], 1, &[("span_id", "zz23456789abcdef")])
        .sample(&["e"], 1, &[("profile_id", "fedcba9876543210")])
        .sample(
            &["f"],
            1,
            &[
                ("span_id", "00000000000000ff"),
                ("trace_id", "0123456789abcdef0123456789abcdef"),
            ],
        )
        .sample(&["g"], 1, &[])
        .encode();
    assert_eq!(push(&double, app_labels(), pprof).0, 200);
    let by_leaf = |leaf: &str| {
        double
            .samples()
            .into_iter()
            .find(|s| s.stack.last().map(String::as_str) == Some(leaf))
            .unwrap()
    };
    let a = by_leaf("a");
    assert_eq!(a.span_id, 0x0123456789abcdef);
    assert_eq!(
        a.series["span_name"], "GET /car",
        "span_name is a series label"
    );
    assert!(!a.series.contains_key("span_id"));
    for leaf in ["b", "c", "d", "g"] {
        let s = by_leaf(leaf);
        assert_eq!(s.span_id, 0, "{leaf}: not 16 hex digits means no span");
        assert!(!s.series.contains_key("span_id"), "{leaf}");
    }
    assert_eq!(
        by_leaf("e").span_id,
        0xfedcba9876543210,
        "profile_id is renamed"
    );
    let f = by_leaf("f");
    assert_eq!(f.span_id, 0xff);
    assert_eq!(
        f.trace_id.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert!(!f.series.contains_key("trace_id"));
}

#[test]
fn select_merge_span_profile_returns_only_the_selected_span() {
    let double = PyroscopeDouble::start();
    let t = now_nanos();
    let span_a = "00000000000000aa";
    let span_b = "00000000000000bb";
    let pprof = ProfileBuilder::cpu(t)
        .sample(&["main", "handler", "hot_a"], 7, &[("span_id", span_a)])
        .sample(&["main", "handler"], 2, &[("span_id", span_a)])
        .sample(&["main", "other", "hot_b"], 5, &[("span_id", span_b)])
        .sample(&["main", "idle"], 9, &[])
        .encode();
    assert_eq!(push(&double, app_labels(), pprof).0, 200);
    let ms = t / 1_000_000;
    let fg = double
        .select_merge_span_profile(
            r#"{service_name="app"}"#,
            &[span_a.into()],
            ms - 60_000,
            ms + 60_000,
        )
        .unwrap();
    assert!(fg.has_function("hot_a"));
    assert!(!fg.has_function("hot_b"));
    assert!(!fg.has_function("idle"));
    assert_eq!(fg.total, 9 * 10_000_000, "cpu nanoseconds");
    assert_eq!(fg.names[0], "total");
    let mut stacks = fg.stacks();
    stacks.sort();
    assert_eq!(
        stacks,
        vec![
            (vec!["main".to_string(), "handler".into()], 20_000_000),
            (
                vec!["main".to_string(), "handler".into(), "hot_a".into()],
                70_000_000
            ),
        ]
    );
    assert_eq!(fg.max_self, 70_000_000);

    let both = double
        .select_merge_span_profile(
            r#"{service_name="app", __name__="process_cpu"}"#,
            &[span_a.into(), span_b.into()],
            ms - 60_000,
            ms + 60_000,
        )
        .unwrap();
    assert!(both.has_function("hot_a") && both.has_function("hot_b"));
    assert_eq!(both.total, 14 * 10_000_000);

    let other_service = double
        .select_merge_span_profile(
            r#"{service_name="nope"}"#,
            &[span_a.into()],
            ms - 60_000,
            ms + 60_000,
        )
        .unwrap();
    assert_eq!(other_service.total, 0);
    assert!(other_service.levels.is_empty());
    let out_of_range = double
        .select_merge_span_profile(
            r#"{service_name="app"}"#,
            &[span_a.into()],
            ms + 1000,
            ms + 60_000,
        )
        .unwrap();
    assert_eq!(out_of_range.total, 0);
    let bad = double.select_merge_span_profile("service_name=app", &[span_a.into()], 0, ms);
    assert!(bad.unwrap_err().starts_with("400"));
}

#[test]
fn ingest_pprof_and_its_time_rules() {
    assert_eq!(
        parse_ingest_time("1700000000123"),
        Some(1_700_000_000_123_000_000)
    );
    assert_eq!(
        parse_ingest_time("1700000000123456"),
        Some(1_700_000_000_123_456_000)
    );
    assert_eq!(
        parse_ingest_time("1700000000123456789"),
        Some(1_700_000_000_123_456_789)
    );
    assert_eq!(
        parse_ingest_time("1700000000"),
        Some(1_700_000_000_000_000_000)
    );

    let double = PyroscopeDouble::start();
    let client = reqwest::blocking::Client::new();
    let now_s = now_nanos() / 1_000_000_000;
    let from_ms = (now_s - 10) * 1000;
    let pprof = ProfileBuilder::cpu(0)
        .sample(&["main", "ingested"], 2, &[("span_id", "00000000000000cc")])
        .encode();
    let url = format!(
        "{}/ingest?name=my-app%2Fsvc%7Benv%3Dprod%7D&from={from_ms}&until={}&format=pprof&sampleRate=100",
        double.url(),
        now_s
    );
    let r = client.post(&url).body(pprof.clone()).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let s = &double.samples()[0];
    assert_eq!(s.series["service_name"], "my-app/svc");
    assert_eq!(s.series["env"], "prod");
    assert_eq!(s.span_id, 0xcc);
    assert_eq!(
        s.time_nanos,
        from_ms * 1_000_000,
        "13 digits are milliseconds"
    );

    let bad_name = format!(
        "{}/ingest?name=my%20app&from={now_s}&format=pprof",
        double.url()
    );
    assert_eq!(
        client
            .post(&bad_name)
            .body(pprof.clone())
            .send()
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    let bad_label = format!(
        "{}/ingest?name=app%7Ba-b%3D1%7D&from={now_s}&format=pprof",
        double.url()
    );
    assert_eq!(
        client
            .post(&bad_label)
            .body(pprof.clone())
            .send()
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    let old = format!(
        "{}/ingest?name=app&from={}&format=pprof",
        double.url(),
        now_s - 7200
    );
    assert_eq!(
        client
            .post(&old)
            .body(pprof.clone())
            .send()
            .unwrap()
            .status()
            .as_u16(),
        400
    );

    // Multipart: `profile` is read, `prev_profile` is refused with 422.
    let multipart = |fields: &[(&str, &[u8])]| {
        let mut body = Vec::new();
        for (name, content) in fields {
            body.extend_from_slice(
                format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"p\"\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    };
    let url = format!("{}/ingest?name=multi&from={now_s}", double.url());
    let send = |body: Vec<u8>| {
        client
            .post(&url)
            .header("Content-Type", "multipart/form-data; boundary=XyZ")
            .body(body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(send(multipart(&[("profile", &pprof)])), 200);
    assert_eq!(
        send(multipart(&[("profile", &pprof), ("prev_profile", &pprof)])),
        422
    );
    assert!(double
        .samples()
        .iter()
        .any(|s| s.series["service_name"] == "multi"));
}

#[test]
fn faults_can_be_switched_at_run_time() {
    let double = PyroscopeDouble::start();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let req = PushRequest {
        series: vec![RawProfileSeries {
            labels: app_labels(),
            samples: vec![RawSample {
                raw_profile: simple_profile(),
                id: String::new(),
            }],
        }],
    };
    let body = gzip(&req.encode_to_vec());
    let send = || {
        client
            .post(format!("{}/push.v1.PusherService/Push", double.url()))
            .header("Content-Type", "application/proto")
            .header("Content-Encoding", "gzip")
            .header("Authorization", "Basic dTpw")
            .header("X-Scope-OrgID", "tenant-a")
            .body(body.clone())
            .send()
    };
    assert_eq!(send().unwrap().status().as_u16(), 200);

    double.set_fault(Fault::Down);
    let e = send().unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{e:?}");
    assert!(
        std::net::TcpStream::connect(double.addr()).is_err(),
        "port closed"
    );
    double.clear_fault();
    assert_eq!(send().unwrap().status().as_u16(), 200, "same port again");

    double.set_fault(Fault::Refuse);
    assert!(send().is_err());
    double.clear_fault();
    assert_eq!(send().unwrap().status().as_u16(), 200);

    double.set_fault(Fault::Delay(Duration::from_millis(700)));
    let t = Instant::now();
    assert_eq!(send().unwrap().status().as_u16(), 200);
    assert!(t.elapsed() >= Duration::from_millis(700));

    for code in [500, 413, 400] {
        double.set_fault(Fault::Status(code));
        let r = send().unwrap();
        assert_eq!(r.status().as_u16(), code);
        error_code(&r.text().unwrap());
    }
    double.set_fault(Fault::TooManyRequests {
        retry_after_secs: 7,
    });
    let r = send().unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    double.clear_fault();

    let received = double.received();
    assert_eq!(double.accepted(), 4);
    let last = received.last().unwrap();
    assert_eq!(last.headers["authorization"], "Basic dTpw");
    assert_eq!(last.headers["x-scope-orgid"], "tenant-a");
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 200, 200, 500, 413, 400, 429]
    );
}

// ---- One hand-built bad request per server rule ----

/// POSTs `body` to Push with exactly these headers.
fn post_with(
    double: &PyroscopeDouble,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> reqwest::blocking::Response {
    let mut req = reqwest::blocking::Client::new()
        .post(format!("{}/push.v1.PusherService/Push", double.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(body).send().unwrap()
}

fn push_request(labels: Vec<LabelPair>, pprof: Vec<u8>) -> PushRequest {
    PushRequest {
        series: vec![RawProfileSeries {
            labels,
            samples: vec![RawSample {
                raw_profile: pprof,
                id: String::new(),
            }],
        }],
    }
}

fn push_profile(double: &PyroscopeDouble, labels: Vec<LabelPair>, p: &Profile) -> (u16, String) {
    push(double, labels, p.encode_to_vec())
}

fn intern(p: &mut Profile, s: &str) -> i64 {
    p.string_table.push(s.to_string());
    (p.string_table.len() - 1) as i64
}

/// 400, `invalid_argument`, and a message containing `needle`.
#[track_caller]
fn assert_rejected(what: &str, (status, body): (u16, String), needle: &str) {
    assert_eq!(status, 400, "{what}: {body}");
    let (code, message) = error_code(&body);
    assert_eq!(code, "invalid_argument", "{what}");
    assert!(
        message.contains(needle),
        "{what}: {message:?} lacks {needle:?}"
    );
}

#[test]
fn content_type_is_required() {
    let double = PyroscopeDouble::start();
    let body = gzip(&push_request(app_labels(), simple_profile()).encode_to_vec());
    for (what, content_type) in [
        ("missing", None),
        ("text/plain", Some("text/plain")),
        ("octet-stream", Some("application/octet-stream")),
        (
            "JSON (the double speaks proto only)",
            Some("application/json"),
        ),
    ] {
        let mut headers = vec![("Content-Encoding", "gzip")];
        headers.extend(content_type.map(|c| ("Content-Type", c)));
        let r = post_with(&double, &headers, body.clone());
        assert_eq!(r.status().as_u16(), 415, "{what}");
        assert!(r.headers().contains_key("accept-post"), "{what}");
        assert_eq!(r.text().unwrap(), "", "{what}: connect-go sends no body");
    }
    assert!(double.samples().is_empty());
    let ok = post_with(
        &double,
        &[
            ("Content-Type", "application/proto"),
            ("Content-Encoding", "gzip"),
        ],
        body,
    );
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(double.accepted(), 1);
}

#[test]
fn a_body_labelled_gzip_must_be_gzip() {
    let double = PyroscopeDouble::start();
    let raw = push_request(app_labels(), simple_profile()).encode_to_vec();
    let proto = ("Content-Type", "application/proto");

    let r = post_with(&double, &[proto, ("Content-Encoding", "gzip")], raw.clone());
    let status = r.status().as_u16();
    assert_rejected(
        "raw body labelled gzip",
        (status, r.text().unwrap()),
        "decompress: gzip",
    );

    // A truncated gzip stream is no better.
    let mut cut = gzip(&raw);
    cut.truncate(cut.len() / 2);
    let r = post_with(&double, &[proto, ("Content-Encoding", "gzip")], cut);
    let status = r.status().as_u16();
    assert_rejected(
        "truncated gzip",
        (status, r.text().unwrap()),
        "decompress: gzip",
    );

    // An encoding the server does not know: Connect's `unimplemented`.
    let r = post_with(&double, &[proto, ("Content-Encoding", "br")], gzip(&raw));
    assert_eq!(r.status().as_u16(), 501);
    assert_eq!(error_code(&r.text().unwrap()).0, "unimplemented");
    assert!(double.samples().is_empty());

    // Declared correctly, both forms are accepted.
    let r = post_with(&double, &[proto, ("Content-Encoding", "gzip")], gzip(&raw));
    assert_eq!(r.status().as_u16(), 200);
    let r = post_with(
        &double,
        &[proto, ("Content-Encoding", "identity")],
        raw.clone(),
    );
    assert_eq!(r.status().as_u16(), 200);
    let r = post_with(&double, &[proto], raw);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(double.accepted(), 3);
}

#[test]
fn profile_type_must_be_the_one_grafana_queries() {
    let double = PyroscopeDouble::start();
    let base = || {
        ProfileBuilder::cpu(now_nanos())
            .sample(&["main", "work"], 3, &[])
            .build()
    };

    let mut no_cpu_type = base();
    let wall = intern(&mut no_cpu_type, "wall");
    no_cpu_type.sample_type[1].r#type = wall;
    let mut no_period = base();
    no_period.period_type = None;
    let mut wrong_period = base();
    let wall = intern(&mut wrong_period, "wall");
    wrong_period.period_type.as_mut().unwrap().r#type = wall;
    let mut millis = base();
    let ms = intern(&mut millis, "milliseconds");
    millis.sample_type[1].unit = ms;

    for (what, labels, profile) in [
        ("sample type wall", app_labels(), no_cpu_type),
        ("no period type", app_labels(), no_period),
        ("period type wall", app_labels(), wrong_period),
        ("unit milliseconds", app_labels(), millis),
        (
            "__name__ cpu",
            labels(&[("__name__", "cpu"), ("service_name", "app")]),
            base(),
        ),
    ] {
        assert_rejected(
            what,
            push_profile(&double, labels, &profile),
            GRAFANA_PROFILE_TYPE,
        );
    }
    assert!(double.samples().is_empty());

    // Only cpu/nanoseconds (no samples/count) is enough.
    let mut only_cpu = base();
    only_cpu.sample_type.remove(0);
    for s in &mut only_cpu.sample {
        s.value.remove(0);
    }
    assert_eq!(push_profile(&double, app_labels(), &only_cpu).0, 200);
    assert_eq!(
        double.profile_types().into_iter().collect::<Vec<_>>(),
        [GRAFANA_PROFILE_TYPE]
    );
}

#[test]
fn dangling_and_broken_ids_are_rejected() {
    let double = PyroscopeDouble::start();
    let base = || {
        ProfileBuilder::cpu(now_nanos())
            .sample(&["main", "work"], 3, &[("span_id", "0123456789abcdef")])
            .build()
    };
    type Breakage = fn(&mut Profile);
    let cases: Vec<(&str, Breakage, &str)> = vec![
        (
            "sample → missing location",
            |p| p.sample[0].location_id.push(99),
            "references location 99",
        ),
        (
            "location → missing function",
            |p| p.location[0].line[0].function_id = 77,
            "references function 77",
        ),
        (
            "location → missing mapping",
            |p| p.location[0].mapping_id = 5,
            "references mapping 5",
        ),
        (
            "duplicate location id",
            |p| {
                let dup = p.location[0].clone();
                p.location.push(dup);
            },
            "defined twice",
        ),
        (
            "function name past the string table",
            |p| p.function[0].name = 1000,
            "string index 1000 out of range",
        ),
        (
            "label key past the string table",
            |p| p.sample[0].label[0].key = 1000,
            "string index 1000 out of range",
        ),
        (
            "sample type past the string table",
            |p| p.sample_type[0].unit = -1,
            "string index -1 out of range",
        ),
        (
            "string 0 not empty",
            |p| p.string_table[0] = "x".into(),
            "string 0 should be empty string",
        ),
        (
            "location id 0",
            |p| p.location[0].id = 0,
            "location id is 0",
        ),
        (
            "function id 0",
            |p| p.function[0].id = 0,
            "function id is 0",
        ),
        (
            "one value for two sample types",
            |p| p.sample[0].value.truncate(1),
            "sample value length mismatch",
        ),
        (
            "no sample type",
            |p| {
                p.sample_type.clear();
            },
            "empty profile",
        ),
    ];
    for (what, breakage, needle) in cases {
        let mut p = base();
        breakage(&mut p);
        assert_rejected(what, push_profile(&double, app_labels(), &p), needle);
    }
    assert!(double.samples().is_empty());
    assert_eq!(double.series_count(), 0);

    // A mapping that exists is fine, and no stack has a placeholder frame.
    let mut p = base();
    p.mapping.push(common::pprof::Mapping {
        id: 5,
        ..Default::default()
    });
    p.location[0].mapping_id = 5;
    assert_eq!(push_profile(&double, app_labels(), &p).0, 200);
    let stack = &double.samples()[0].stack;
    assert_eq!(stack, &["main".to_string(), "work".into()]);
}

#[test]
fn label_names_are_sanitized_then_duplicates_rejected() {
    let double = PyroscopeDouble::start();
    let with = |extra: &[(&str, &str)]| {
        let mut l = app_labels();
        l.extend(labels(extra));
        l
    };
    let span_profile = |name: &str| {
        ProfileBuilder::cpu(now_nanos())
            .sample(
                &["main"],
                1,
                &[("span_id", "0123456789abcdef"), ("span_name", name)],
            )
            .encode()
    };
    // The static label meets the crate's sample label after the split.
    assert_rejected(
        "span.name static + span_name sample label",
        push(&double, with(&[("span.name", "x")]), span_profile("GET /")),
        "has duplicate label name 'span_name' after label name sanitization from 'span.name'",
    );
    assert_rejected(
        "service.name",
        push(&double, with(&[("service.name", "x")]), simple_profile()),
        "duplicate label name 'service_name' after label name sanitization from 'service.name'",
    );
    assert_rejected(
        "process.runtime.name twice",
        push(
            &double,
            with(&[
                ("process.runtime.name", "rust"),
                ("process_runtime_name", "x"),
            ]),
            simple_profile(),
        ),
        "after label name sanitization from 'process.runtime.name'",
    );
    // v1.13.4 rejects a collision even with equal values.
    assert_rejected(
        "service.name equal to service_name",
        push(&double, with(&[("service.name", "app")]), simple_profile()),
        "after label name sanitization",
    );
    assert_rejected(
        "plain duplicate",
        push(&double, with(&[("a", "1"), ("a", "1")]), simple_profile()),
        "has duplicate label name: 'a'",
    );
    assert!(double.samples().is_empty());

    // Dots alone are fine, and stored as underscores.
    assert_eq!(
        push(
            &double,
            with(&[("process.runtime.name", "rust")]),
            span_profile("GET /")
        )
        .0,
        200
    );
    let s = &double.samples()[0];
    assert_eq!(s.series["process_runtime_name"], "rust");
    assert_eq!(s.series["span_name"], "GET /");
    assert!(!s.series.keys().any(|k| k.contains('.')));
}

#[test]
fn series_are_counted_after_the_split() {
    let double = PyroscopeDouble::start();
    // 3 span names over 30 spans, plus samples outside any span: 4 label
    // sets; span ids are not series labels.
    let mut b = ProfileBuilder::cpu(now_nanos()).sample(&["idle"], 1, &[]);
    let names = ["GET /a", "GET /b", "POST /c"];
    let ids: Vec<String> = (1..=30u64).map(|i| format!("{i:016x}")).collect();
    for (i, id) in ids.iter().enumerate() {
        b = b.sample(
            &["main", "handler"],
            1,
            &[("span_id", id), ("span_name", names[i % 3])],
        );
    }
    let pprof = b.encode();
    assert_eq!(push(&double, app_labels(), pprof.clone()).0, 200);
    let sets = double.label_sets();
    assert_eq!(sets.len(), 4, "{sets:?}");
    assert!(sets.iter().all(|s| !s.contains_key("span_id")));
    let with_names: Vec<&str> = sets
        .iter()
        .filter_map(|s| s.get("span_name").map(String::as_str))
        .collect();
    assert_eq!(with_names, names);
    // Two sample types: each label set is two series.
    assert_eq!(double.series_count(), 8);
    assert_eq!(
        double.profile_types().into_iter().collect::<Vec<_>>(),
        [
            "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
            "process_cpu:samples:count:cpu:nanoseconds"
        ]
    );
    // The same series again: nothing new.
    assert_eq!(push(&double, app_labels(), pprof).0, 200);
    assert_eq!(double.series_count(), 8);

    // Before 2.1 (the compose file's 1.13.4) every trace is a series.
    let traced = |n: u64| {
        let mut b = ProfileBuilder::cpu(now_nanos());
        for i in 0..n {
            let trace = format!("{i:032x}");
            b = b.sample(
                &["main"],
                1,
                &[("span_id", "0123456789abcdef"), ("trace_id", &trace)],
            );
        }
        b.encode()
    };
    let v1 = PyroscopeDouble::start();
    assert_eq!(push(&v1, app_labels(), traced(5)).0, 200);
    assert_eq!(v1.label_sets().len(), 5);
    assert!(v1.samples().iter().all(|s| s.trace_id.is_none()));
    let v2 = PyroscopeDouble::start();
    v2.set_server_version(ServerVersion::V2_1);
    assert_eq!(push(&v2, app_labels(), traced(5)).0, 200);
    assert_eq!(v2.label_sets().len(), 1);
    assert!(v2.samples().iter().all(|s| s.trace_id.is_some()));
}

#[test]
fn label_values_longer_than_2048_bytes_are_rejected() {
    let double = PyroscopeDouble::start();
    let span_profile = |name: &str| {
        ProfileBuilder::cpu(now_nanos())
            .sample(
                &["main"],
                1,
                &[("span_id", "0123456789abcdef"), ("span_name", name)],
            )
            .encode()
    };
    let long = "x".repeat(2049);
    assert_rejected(
        "2049-byte span_name",
        push(&double, app_labels(), span_profile(&long)),
        "has label value too long",
    );
    // Bytes, not characters: 683 three-byte characters are 2049 bytes.
    let wide = "€".repeat(683);
    assert_rejected(
        "2049 bytes of €",
        push(&double, app_labels(), span_profile(&wide)),
        "has label value too long",
    );
    let mut static_long = app_labels();
    static_long.extend(labels(&[("region", &long)]));
    assert_rejected(
        "2049-byte static label",
        push(&double, static_long, simple_profile()),
        "has label value too long",
    );
    assert!(double.samples().is_empty());
    let exact = "€".repeat(682) + "xx";
    assert_eq!(exact.len(), 2048);
    assert_eq!(push(&double, app_labels(), span_profile(&exact)).0, 200);
    assert_eq!(double.samples()[0].series["span_name"], exact);
}

#[test]
fn ingestion_window_answers_like_the_server() {
    // The server's own test vector (validate_test.go): now is
    // 2023-02-17 12:13:14 UTC, the window is 1 h back and 10 min ahead.
    let double = PyroscopeDouble::start();
    let now_s = 1_676_635_994u64;
    double.set_now(UNIX_EPOCH + Duration::from_secs(now_s));
    let at = |offset_s: i64| {
        let t = (now_s as i64 + offset_s) * 1_000_000_000;
        ProfileBuilder::cpu(t).sample(&["main"], 1, &[]).encode()
    };
    let (status, body) = push(&double, app_labels(), at(-61 * 60));
    assert_eq!(status, 400);
    assert_eq!(
        error_code(&body).1,
        "profile with labels '{__name__=\"process_cpu\", service_name=\"app\"}' is outside of \
         ingestion window (profile timestamp: 2023-02-17 11:12:14 +0000 UTC, the ingestion \
         window starts at 2023-02-17 11:13:14 +0000 UTC and ends at 2023-02-17 12:23:14 +0000 UTC)"
    );
    assert_rejected(
        "11 min ahead",
        push(&double, app_labels(), at(11 * 60)),
        "profile timestamp: 2023-02-17 12:24:14 +0000 UTC",
    );
    assert_rejected(
        "exactly 1 h old",
        push(&double, app_labels(), at(-3600)),
        "outside of ingestion window",
    );
    assert_eq!(push(&double, app_labels(), at(-3599)).0, 200);
    assert_eq!(push(&double, app_labels(), at(9 * 60)).0, 200);
    assert_eq!(
        rules::format_time_millis(1_676_635_994_120),
        "2023-02-17 12:13:14.12 +0000 UTC"
    );
    assert_eq!(
        rules::format_time_millis(951_782_400_000),
        "2000-02-29 00:00:00 +0000 UTC"
    );
}

#[test]
fn sample_labels_and_stack_depth_limits() {
    let double = PyroscopeDouble::start();
    let many: Vec<(String, String)> = (0..101).map(|i| (format!("k{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let pprof = ProfileBuilder::cpu(now_nanos())
        .sample(&["main"], 1, &many)
        .encode();
    assert_rejected(
        "101 sample labels",
        push(&double, app_labels(), pprof),
        "exceeds the sample labels limit",
    );

    // 1200 frames: the server keeps the 1000 at the root end.
    let frames: Vec<String> = (0..1200).map(|i| format!("f{i}")).collect();
    let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
    let pprof = ProfileBuilder::cpu(now_nanos())
        .sample(&frames, 1, &[])
        .encode();
    assert_eq!(push(&double, app_labels(), pprof).0, 200);
    let stack = &double.samples()[0].stack;
    assert_eq!(stack.len(), 1000);
    assert_eq!(stack[0], "f0");
    assert_eq!(stack[999], "f999");
}

#[test]
fn a_push_without_profiles_is_rejected() {
    let double = PyroscopeDouble::start();
    let empty = PushRequest {
        series: vec![RawProfileSeries {
            labels: app_labels(),
            samples: vec![],
        }],
    };
    assert_rejected(
        "no samples",
        post_push(&double, gzip(&empty.encode_to_vec())),
        "no profiles received",
    );
}
