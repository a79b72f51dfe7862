//! HTTPS uploads with certificate verification on (feature `tls`).
//!
//! With `tls`, reqwest 0.13 verifies servers through
//! rustls-platform-verifier, which on Linux loads its roots with
//! rustls-native-certs: the files named by `SSL_CERT_FILE` / `SSL_CERT_DIR`
//! when either is set (and then only those), else the system store
//! (`/etc/ssl/certs/…`). So a user trusts a private CA the way this test
//! does: by pointing `SSL_CERT_FILE` at a PEM bundle that contains it.
//!
//! The test, per case:
//! - makes a test CA and server certificates with the `openssl` CLI, in a
//!   temporary directory, at test time;
//! - starts the Pyroscope test double (plain HTTP, in process) and, in
//!   front of it, a TLS terminator (`tests/tls/terminator.py`, Python's
//!   standard `ssl`) serving the case's certificate on 127.0.0.1;
//! - runs the app half (`tls_child`, this binary re-run as a child) with
//!   `SSL_CERT_FILE=<test CA>` and
//!   `Builder::server_address("https://localhost:PORT")`, which profiles
//!   some spans and prints its `Stats`.
//!
//! Cases:
//! - a certificate for `localhost` from the test CA: uploads succeed, the
//!   double stores the spans' samples, no upload error;
//! - a certificate from another CA, and one from the test CA for another
//!   host name: no upload reaches the double, and each is a rejection, not
//!   an outage: every profile is tried exactly once (one counted
//!   `upload_errors` and one `dropped_profiles` each, no retries), and the
//!   log names the certificate problem once.
//!
//! `cargo test --release --features tls --test tls_upload`

mod common;
mod cpu_clock;

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::pyroscope_double::PyroscopeDouble;

/// Selects the child; without it `tls_child` does nothing.
const CHILD_ENV: &str = "TLS_UPLOAD_CHILD";
/// `ok`: wait for uploads; `fail`: wait for upload errors.
const EXPECT_ENV: &str = "TLS_UPLOAD_EXPECT";
/// The `https://localhost:PORT` server address.
const URL_ENV: &str = "TLS_UPLOAD_URL";
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the app

#[inline(never)]
fn hot_tls_work(cpu: Duration) -> u64 {
    black_box(cpu_clock::spin_for(cpu))
}

fn stats_line(tag: &str, s: &tracing_pyroscope::Stats) -> String {
    format!(
        "{tag} uploads={} upload_errors={} dropped_profiles={} profiles={}",
        s.uploads, s.upload_errors, s.dropped_profiles, s.profiles
    )
}

/// The app, run as a child process by the cases below (which set the
/// environment, `SSL_CERT_FILE` included). Run directly, without that
/// environment, it does nothing.
#[test]
#[ignore = "the app half of the TLS cases; run by them in a child process"]
fn tls_child() {
    use tracing_subscriber::prelude::*;

    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let url = std::env::var(URL_ENV).expect("server URL");
    let want_uploads = std::env::var(EXPECT_ENV).expect("expectation") == "ok";
    let (layer, guard) = tracing_pyroscope::Builder::new("tls-app")
        .server_address(url)
        .upload_interval(Duration::from_millis(200))
        .build()
        .expect("profiler starts");
    // The crate's own warnings (an upload failure and its cause, logged on
    // its upload thread, hence global) go to stderr, for the parent.
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("tracing_pyroscope", tracing::Level::INFO),
                ),
        )
        .init();
    let done = |s: &tracing_pyroscope::Stats| {
        if want_uploads {
            s.uploads >= 2
        } else {
            s.upload_errors >= 2
        }
    };
    let end = Instant::now() + Duration::from_secs(30);
    while !done(&guard.stats()) && Instant::now() < end {
        let span = tracing::info_span!("tls_request");
        let _entered = span.enter();
        black_box(hot_tls_work(Duration::from_millis(50)));
    }
    // Let the last profiles settle (accepted or dropped) so the counts
    // add up: every profile tried is either an upload or a drop.
    let settled = |s: &tracing_pyroscope::Stats| s.profiles == s.uploads + s.dropped_profiles;
    let end = Instant::now() + Duration::from_secs(10);
    while !settled(&guard.stats()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("{}", stats_line("TLS_STATS", &guard.stats()));
    drop(guard);
}

// ---------------------------------------------------------- certificates

/// Runs `openssl` with `args` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed to make the test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA: `<name>.pem`, `<name>.key`.
fn make_ca(dir: &Path, name: &str) {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN=tracing-pyroscope {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A server certificate for `host` (and 127.0.0.1) signed by CA `ca`:
/// `<name>.pem` (leaf then CA, the chain the server sends) and
/// `<name>.key`.
fn make_server_cert(dir: &Path, name: &str, ca: &str, host: &str) -> (PathBuf, PathBuf) {
    let (csr, key, leaf, ext) = (
        format!("{name}.csr"),
        format!("{name}.key"),
        format!("{name}.leaf.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName=DNS:{host},IP:127.0.0.1\n\
             basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n"
        ),
    )
    .expect("write extensions");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={host}"),
        ],
    );
    let serial = format!(
        "0x{:x}",
        std::process::id() as u64 * 1000 + name.len() as u64
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &leaf,
        ],
    );
    let chain = [
        std::fs::read_to_string(dir.join(&leaf)).expect("leaf"),
        std::fs::read_to_string(dir.join(format!("{ca}.pem"))).expect("ca"),
    ]
    .concat();
    let chain_path = dir.join(format!("{name}.pem"));
    std::fs::write(&chain_path, chain).expect("write chain");
    (chain_path, dir.join(key))
}

/// Temporary directory with the certificates of every case.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "tracing-pyroscope-tls-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        make_ca(&dir, "test-ca");
        make_ca(&dir, "other-ca");
        Pki { dir }
    }

    /// What the app is told to trust.
    fn trusted_ca(&self) -> PathBuf {
        self.dir.join("test-ca.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------- the TLS frontend

/// `tests/tls/terminator.py` in front of the double; stopped on drop.
struct Terminator {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
}

impl Terminator {
    fn start(cert: &Path, key: &Path, upstream: std::net::SocketAddr) -> Terminator {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/terminator.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(cert)
            .arg(key)
            .arg(upstream.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is needed for the TLS terminator");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the terminator's port");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("terminator did not start: {line:?}"));
        Terminator { child, stdin, port }
    }
}

impl Drop for Terminator {
    fn drop(&mut self) {
        // Closing stdin ends it; kill in case it is stuck.
        drop(self.stdin.take());
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- the cases

/// What the child reported.
struct ChildRun {
    uploads: u64,
    upload_errors: u64,
    dropped_profiles: u64,
    profiles: u64,
    stderr: String,
}

/// Runs `tls_child` against `https://localhost:{port}` trusting `ca`.
fn run_child(port: u16, ca: &Path, expect_ok: bool) -> ChildRun {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", "tls_child", "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env(URL_ENV, format!("https://localhost:{port}"))
        .env(EXPECT_ENV, if expect_ok { "ok" } else { "fail" })
        .env("SSL_CERT_FILE", ca)
        .env_remove("SSL_CERT_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the app");
    let (mut out, mut err) = (String::new(), String::new());
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let _ = BufReader::new(stdout).read_to_string(&mut out);
    let end = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the app did not finish in {CHILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    err.push_str(&err_reader.join().unwrap_or_default());
    assert!(status.success(), "app failed: {status}\n{out}\n{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("TLS_STATS "))
        .unwrap_or_else(|| panic!("no stats from the app:\n{out}\n{err}"));
    println!("{line}");
    eprint!("{err}");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {line:?}"))
    };
    ChildRun {
        uploads: field("uploads"),
        upload_errors: field("upload_errors"),
        dropped_profiles: field("dropped_profiles"),
        profiles: field("profiles"),
        stderr: err,
    }
}

#[test]
fn https_upload_with_a_trusted_ca_succeeds() {
    let pki = Pki::new();
    let (cert, key) = make_server_cert(&pki.dir, "localhost", "test-ca", "localhost");
    let double = PyroscopeDouble::start();
    let tls = Terminator::start(&cert, &key, double.addr());

    let run = run_child(tls.port, &pki.trusted_ca(), true);
    assert!(run.uploads >= 2, "uploads: {}\n{}", run.uploads, run.stderr);
    assert_eq!(run.upload_errors, 0, "{}", run.stderr);
    // The bytes went through TLS to the double, which accepted them.
    let received = double.received();
    assert!(double.accepted() as u64 >= run.uploads, "{received:?}");
    assert!(received.iter().all(|r| r.status == 200), "{received:?}");
    assert_eq!(
        received[0].headers.get("content-type").map(String::as_str),
        Some("application/proto")
    );
    assert!(
        double
            .samples()
            .iter()
            .any(|s| s.span_id != 0 && s.stack.iter().any(|f| f.contains("hot_tls_work"))),
        "no span samples of hot_tls_work stored"
    );
}

/// A certificate the app must refuse: nothing reaches the double, each
/// profile is tried once and dropped (a rejection: the same certificate
/// would come back on every retry), every attempt counts as an upload
/// error, and the log says why, once.
fn refused(cert_ca: &str, host: &str, reason: &str) {
    let pki = Pki::new();
    let (cert, key) = make_server_cert(&pki.dir, "server", cert_ca, host);
    let double = PyroscopeDouble::start();
    let tls = Terminator::start(&cert, &key, double.addr());

    let run = run_child(tls.port, &pki.trusted_ca(), false);
    assert_eq!(run.uploads, 0, "{}", run.stderr);
    assert!(
        run.upload_errors >= 2,
        "upload_errors: {}\n{}",
        run.upload_errors,
        run.stderr
    );
    assert!(
        double.received().is_empty(),
        "a request got past TLS: {:?}",
        double.received()
    );
    // Exactly one attempt per profile: with retries there would be up to
    // three errors per dropped profile.
    assert_eq!(
        run.upload_errors, run.dropped_profiles,
        "each refused profile must be tried once (profiles {})\n{}",
        run.profiles, run.stderr
    );
    assert_eq!(run.dropped_profiles, run.profiles, "{}", run.stderr);
    let logged = run.stderr.matches("TLS certificate was refused").count();
    assert_eq!(logged, 1, "logged {logged} times:\n{}", run.stderr);
    assert!(
        run.stderr.contains("pyroscope upload failed") && run.stderr.contains(reason),
        "the log does not say {reason:?}:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("will retry"),
        "a refused certificate is not an outage:\n{}",
        run.stderr
    );
    drop(tls);
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_refused() {
    refused(
        "other-ca",
        "localhost",
        "invalid peer certificate: UnknownIssuer",
    );
}

#[test]
fn a_certificate_for_another_host_is_refused() {
    refused(
        "test-ca",
        "pyroscope.invalid",
        "not valid for name \"localhost\"",
    );
}
