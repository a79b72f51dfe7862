//! The Pyroscope test double itself honours the protocol facts: these tests
//! pin what it accepts, what it rejects and how it answers queries.

mod common;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::pprof::{Profile, ProfileBuilder};
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
        assert_eq!(s.series["otel.scope.name"], "com.grafana.pyroscope/rust");
        assert_eq!(s.time_nanos, t);
        assert!(s.values["cpu/nanoseconds"] > 0);
    }
    assert!(samples
        .iter()
        .any(|s| s.stack.iter().any(|f| f == "pyrocheck::burn")));
    assert_eq!(double.profiles().len(), 1);

    // The same request an hour and more later is too old.
    double.set_now(UNIX_EPOCH + Duration::from_nanos(t as u64) + Duration::from_secs(3700));
    let (status, text) = post_push(&double, body);
    assert_eq!(status, 400);
    assert!(error_code(&text).1.contains("1h in the past"), "{text}");
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

    // 30 labels in all is fine; a missing service_name becomes unknown_service.
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
        .any(|s| s.series["service_name"] == "unknown_service" && s.series["a.b"] == "1"));
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
    assert_eq!(status, 413, "{body}");
    error_code(&body);

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
