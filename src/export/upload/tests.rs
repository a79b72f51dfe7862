//! Uploader tests against a tiny scripted HTTP server (std only).

use super::wire::server_message;
use super::*;
use prost::Message;
use std::collections::HashSet;
use std::io::Read;
use std::io::Write;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::SystemTime;

/// What the test server does with the n-th request (0-based).
#[derive(Clone)]
enum Reply {
    Status(u16, &'static [(&'static str, &'static str)], &'static str),
    /// Never answer (keep the connection open).
    Hang,
}

struct Req {
    at: Instant,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let reqs = reqs.clone();
                let script = script.clone();
                std::thread::spawn(move || serve_conn(stream, &reqs, &*script));
            }
        });
        Server { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn serve_conn(stream: TcpStream, reqs: &Mutex<Vec<Req>>, script: &dyn Fn(usize) -> Reply) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = {
            let mut r = reqs.lock().unwrap();
            r.push(Req {
                at: Instant::now(),
                path,
                headers,
                body,
            });
            r.len() - 1
        };
        match script(n) {
            Reply::Hang => {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            Reply::Status(code, extra, text) => {
                let mut resp = format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\n", text.len());
                for (k, v) in extra {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                resp.push_str(text);
                if stream.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

fn fast_policy() -> Policy {
    Policy {
        max_attempts: 3,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        retry_after_max: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(1),
    }
}

fn config(url: &str) -> UploadSettings {
    UploadSettings {
        server_address: url.trim_end_matches('/').to_string(),
        service_name: "ride-sharing-app".into(),
        labels: vec![("region".into(), "eu-north".into())],
        basic_auth: None,
        tenant_id: None,
        shutdown_timeout: Duration::from_secs(5),
    }
}

fn profile(tag: &[u8]) -> EncodedProfile {
    let now = SystemTime::now();
    EncodedProfile {
        kind: crate::profile::ProfileKind::Cpu,
        gzipped: tag.to_vec(),
        start: now,
        end: now,
        samples: 1,
    }
}

fn start(c: &UploadSettings, policy: Policy) -> (Uploader, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    (
        Uploader::start_with(c.clone(), counters.clone(), policy).unwrap(),
        counters,
    )
}

fn wait_for(what: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !what() {
        assert!(Instant::now() < end, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn decode(body: &[u8]) -> proto::PushRequest {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut raw)
        .unwrap();
    proto::PushRequest::decode(&raw[..]).unwrap()
}

#[test]
fn pushes_the_protocol_request() {
    let server = Server::start(|_| Reply::Status(200, &[], ""));
    let mut c = config(&format!("{}/", server.url()));
    c.basic_auth = Some(("123456".into(), Secret("tok:en".into())));
    c.tenant_id = Some("tenant-a".into());
    let (up, counters) = start(&c, fast_policy());
    up.send(profile(b"\x1f\x8bpprof"));
    wait_for(|| get(&counters.uploads) == 1);
    up.shutdown(Instant::now() + Duration::from_secs(1));

    let reqs = server.requests.lock().unwrap();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, "/push.v1.PusherService/Push");
    assert_eq!(r.header("content-type"), Some("application/proto"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    // base64("123456:tok:en")
    assert_eq!(
        r.header("authorization"),
        Some("Basic MTIzNDU2OnRvazplbg==")
    );
    assert_eq!(r.header("x-scope-orgid"), Some("tenant-a"));
    let push = decode(&r.body);
    assert_eq!(push.series.len(), 1);
    let labels: Vec<(&str, &str)> = push.series[0]
        .labels
        .iter()
        .map(|l| (l.name.as_str(), l.value.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("__name__", "process_cpu"),
            ("service_name", "ride-sharing-app"),
            ("process.runtime.name", "rust"),
            ("region", "eu-north"),
        ]
    );
    let sample = &push.series[0].samples[0];
    assert_eq!(sample.raw_profile, b"\x1f\x8bpprof");
    assert_eq!(sample.id.len(), 36);
    assert_eq!(&sample.id[14..15], "4", "uuid v4: {}", sample.id);
    assert_eq!(get(&counters.upload_errors), 0);
    assert_eq!(get(&counters.dropped_profiles), 0);
}

#[test]
fn retries_5xx_with_backoff() {
    let server = Server::start(|n| {
        if n < 2 {
            Reply::Status(503, &[], "{\"code\":\"unavailable\",\"message\":\"busy\"}")
        } else {
            Reply::Status(200, &[], "")
        }
    });
    let (up, counters) = start(&config(&server.url()), fast_policy());
    up.send(profile(b"p"));
    wait_for(|| get(&counters.uploads) == 1);
    assert_eq!(server.count(), 3);
    assert_eq!(get(&counters.upload_errors), 2);
    assert_eq!(get(&counters.dropped_profiles), 0);
    let reqs = server.requests.lock().unwrap();
    // Backoff: 10..20 ms, then 20..40 ms (half to all of base * 2^n).
    let gap1 = reqs[1].at - reqs[0].at;
    let gap2 = reqs[2].at - reqs[1].at;
    assert!(gap1 >= Duration::from_millis(10), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(20), "{gap2:?}");
}

#[test]
fn gives_up_after_max_attempts() {
    let server = Server::start(|_| Reply::Status(500, &[], "boom"));
    let (up, counters) = start(&config(&server.url()), fast_policy());
    up.send(profile(b"p"));
    wait_for(|| get(&counters.dropped_profiles) == 1);
    assert_eq!(server.count(), 3);
    assert_eq!(get(&counters.upload_errors), 3);
    assert_eq!(get(&counters.uploads), 0);
}

#[test]
fn honours_retry_after_on_429() {
    let server = Server::start(|n| {
        if n == 0 {
            Reply::Status(
                429,
                &[("Retry-After", "1")],
                "{\"code\":\"resource_exhausted\",\"message\":\"slow down\"}",
            )
        } else {
            Reply::Status(200, &[], "")
        }
    });
    let (up, counters) = start(&config(&server.url()), fast_policy());
    up.send(profile(b"p"));
    wait_for(|| get(&counters.uploads) == 1);
    let reqs = server.requests.lock().unwrap();
    let gap = reqs[1].at - reqs[0].at;
    // The backoff alone would be 10..20 ms.
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
    assert!(gap < Duration::from_millis(1900), "{gap:?}");
}

#[test]
fn retry_after_as_seconds_or_an_http_date() {
    use super::worker::retry_after;
    // RFC 9110's example date, and one second before it.
    let date = "Sun, 06 Nov 1994 08:49:37 GMT";
    let at = httpdate::parse_http_date(date).unwrap();
    let before = |secs| at - Duration::from_secs(secs);
    assert_eq!(
        retry_after("120", before(0)),
        Some(Duration::from_secs(120))
    );
    assert_eq!(retry_after(" 0 ", before(0)), Some(Duration::ZERO));
    assert_eq!(retry_after(date, before(30)), Some(Duration::from_secs(30)));
    // The two obsolete formats the RFC still asks recipients to read.
    assert_eq!(
        retry_after("Sunday, 06-Nov-94 08:49:37 GMT", before(7)),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        retry_after("Sun Nov  6 08:49:37 1994", before(7)),
        Some(Duration::from_secs(7))
    );
    let half = at - Duration::from_millis(500);
    assert_eq!(retry_after(date, half), Some(Duration::from_millis(500)));
    // Now or past: nothing to wait for, the backoff applies.
    assert_eq!(retry_after(date, at), None);
    assert_eq!(retry_after(date, at + Duration::from_secs(5)), None);
    for junk in ["", "soon", "-1", "1.5", "Sun, 06 Nov 1994 25:49:37 GMT"] {
        assert_eq!(retry_after(junk, before(0)), None, "{junk:?}");
    }
}

#[test]
fn honours_retry_after_as_an_http_date() {
    // A date 3 s ahead (whole seconds: the wait is 2..3 s); the backoff
    // alone would be 10..20 ms.
    let when: &'static str = Box::leak(
        httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3)).into_boxed_str(),
    );
    let extra: &'static [(&'static str, &'static str)] =
        Box::leak(vec![("Retry-After", when)].into_boxed_slice());
    let server = Server::start(move |n| {
        if n == 0 {
            Reply::Status(429, extra, "")
        } else {
            Reply::Status(200, &[], "")
        }
    });
    let (up, counters) = start(&config(&server.url()), fast_policy());
    up.send(profile(b"p"));
    wait_for(|| get(&counters.uploads) == 1);
    let reqs = server.requests.lock().unwrap();
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(1500), "{gap:?}");
    assert!(gap < Duration::from_millis(3500), "{gap:?}");
}

#[test]
fn retry_after_is_capped() {
    let server = Server::start(|n| {
        if n == 0 {
            Reply::Status(429, &[("Retry-After", "3600")], "")
        } else {
            Reply::Status(200, &[], "")
        }
    });
    let policy = Policy {
        retry_after_max: Duration::from_millis(200),
        ..fast_policy()
    };
    let (up, counters) = start(&config(&server.url()), policy);
    up.send(profile(b"p"));
    wait_for(|| get(&counters.uploads) == 1);
    let reqs = server.requests.lock().unwrap();
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(190) && gap < Duration::from_secs(2),
        "{gap:?}"
    );
}

#[test]
fn other_4xx_is_not_retried() {
    for code in [400, 401, 413, 422] {
        let server = Server::start(move |_| {
            Reply::Status(
                code,
                &[],
                "{\"code\":\"invalid_argument\",\"message\":\"bad\"}",
            )
        });
        let (up, counters) = start(&config(&server.url()), fast_policy());
        up.send(profile(b"p"));
        wait_for(|| get(&counters.dropped_profiles) == 1);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(server.count(), 1, "status {code}");
        assert_eq!(get(&counters.upload_errors), 1);
        assert_eq!(get(&counters.uploads), 0);
    }
}

#[test]
fn connection_refused_is_retried_then_dropped() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (up, counters) = start(&config(&format!("http://127.0.0.1:{port}")), fast_policy());
    up.send(profile(b"p"));
    wait_for(|| get(&counters.dropped_profiles) == 1);
    assert_eq!(get(&counters.upload_errors), 3);
}

#[test]
fn queue_is_bounded_and_shutdown_meets_its_deadline() {
    let server = Server::start(|_| Reply::Hang);
    let (up, counters) = start(&config(&server.url()), fast_policy());
    for _ in 0..20 {
        up.send(profile(&[7; 1024]));
    }
    wait_for(|| server.count() == 1);
    // One in flight, QUEUE_CAPACITY waiting, the rest dropped at once.
    assert!(
        get(&counters.dropped_profiles) >= (20 - QUEUE_CAPACITY - 1) as u64,
        "{counters:?}"
    );
    let t = Instant::now();
    up.shutdown(Instant::now() + Duration::from_millis(500));
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1000), "{took:?}");
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert_eq!(get(&counters.dropped_profiles), 20, "{counters:?}");
    assert_eq!(get(&counters.uploads), 0);
}

#[test]
fn shutdown_flushes_what_is_queued() {
    let server = Server::start(|_| Reply::Status(200, &[], ""));
    let (up, counters) = start(&config(&server.url()), fast_policy());
    for i in 0..5u8 {
        up.send(profile(&[i]));
    }
    up.shutdown(Instant::now() + Duration::from_secs(5));
    assert_eq!(get(&counters.uploads), 5);
    assert_eq!(server.count(), 5);
    let mut seen: Vec<u8> = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| decode(&r.body).series[0].samples[0].raw_profile[0])
        .collect();
    seen.sort();
    assert_eq!(seen, [0, 1, 2, 3, 4]);
}

#[test]
fn shutdown_skips_backoff_past_the_deadline() {
    let server = Server::start(|_| Reply::Status(503, &[], ""));
    let policy = Policy {
        backoff_base: Duration::from_secs(10),
        backoff_max: Duration::from_secs(10),
        ..fast_policy()
    };
    let (up, counters) = start(&config(&server.url()), policy);
    up.send(profile(b"p"));
    wait_for(|| server.count() == 1);
    let t = Instant::now();
    up.shutdown(Instant::now() + Duration::from_secs(2));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(get(&counters.dropped_profiles), 1);
    assert_eq!(server.count(), 2, "the backoff ends; one last attempt");
}

#[test]
fn shutdown_with_the_server_down_is_quick() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (up, counters) = start(
        &config(&format!("http://127.0.0.1:{port}")),
        Policy::default(),
    );
    for _ in 0..6 {
        up.send(profile(b"p"));
    }
    let t = Instant::now();
    up.shutdown(Instant::now() + Duration::from_secs(5));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(get(&counters.dropped_profiles), 6);
    // At most one attempt before shutdown and one during it; the other
    // profiles are not tried once the server proved unreachable.
    assert!(get(&counters.upload_errors) <= 2, "{counters:?}");
}

#[test]
fn shutdown_gives_failing_profiles_one_last_attempt_each() {
    let server = Server::start(|n| {
        if n == 0 {
            Reply::Status(500, &[], "")
        } else {
            Reply::Status(200, &[], "")
        }
    });
    let policy = Policy {
        backoff_base: Duration::from_secs(10),
        backoff_max: Duration::from_secs(10),
        ..fast_policy()
    };
    let (up, counters) = start(&config(&server.url()), policy);
    up.send(profile(b"a"));
    wait_for(|| server.count() == 1);
    up.send(profile(b"b"));
    let t = Instant::now();
    up.shutdown(Instant::now() + Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(get(&counters.uploads), 2, "{counters:?}");
    assert_eq!(get(&counters.dropped_profiles), 0);
}

#[test]
fn drop_without_shutdown_is_bounded() {
    let server = Server::start(|_| Reply::Hang);
    let mut c = config(&server.url());
    c.shutdown_timeout = Duration::from_millis(300);
    let (up, counters) = start(&c, fast_policy());
    up.send(profile(b"p"));
    wait_for(|| server.count() == 1);
    let t = Instant::now();
    drop(up);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(get(&counters.dropped_profiles), 1);
}

#[test]
fn backoff_grows_and_is_capped() {
    let mut w = Worker {
        ledger: Arc::new(Ledger::default()),
        target: Target {
            url: String::new(),
            labels: Vec::new(),
            basic_auth: None,
            tenant_id: None,
        },
        policy: Policy::default(),
        control: Arc::new(Control::default()),
        counters: Arc::new(Counters::default()),
        logged_statuses: HashSet::new(),
        outage_logged: false,
        certificate_logged: false,
        unreachable: false,
        rng: Rng::new(),
    };
    for (attempt, full) in [(0, 1), (1, 2), (2, 4), (3, 8), (4, 16), (5, 30), (20, 30)] {
        for _ in 0..50 {
            let d = w.backoff(attempt);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }
    let ids: HashSet<String> = (0..100).map(|_| w.rng.uuid_v4()).collect();
    assert_eq!(ids.len(), 100);
}

#[test]
fn server_message_prefers_json() {
    assert_eq!(
        server_message(br#"{"code":"invalid_argument","message":"too many labels"}"#),
        "too many labels"
    );
    assert_eq!(server_message(b"plain"), "plain");
    assert_eq!(server_message(&[b'x'; 2000]).len(), 512);
}

#[test]
fn password_never_in_debug() {
    let mut c = config("http://127.0.0.1:1");
    c.basic_auth = Some(("u".into(), Secret("hunter2".into())));
    let (up, _) = start(&c, fast_policy());
    assert!(!format!("{up:?}").contains("hunter2"));
    assert!(!format!("{c:?}").contains("hunter2"));
}
