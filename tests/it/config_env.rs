//! `from_env()` through the public API: every variable's bad values give an
//! `Err` of kind `Config` whose text names the variable, shows the value
//! (never the password) and says what is expected.
//!
//! The environment is process-global, so every case holds `ENV` while it
//! sets variables and restores them afterwards.

use std::sync::Mutex;

use tracing_pyroscope::ErrorKind;

static ENV: Mutex<()> = Mutex::new(());

/// Every variable `from_env` reads.
const VARS: &[&str] = &[
    "PYROSCOPE_SERVER_ADDRESS",
    "PYROSCOPE_PROFILES_DIR",
    "PYROSCOPE_PROFILING_ENABLED",
    "PYROSCOPE_APPLICATION_NAME",
    "PYROSCOPE_BASIC_AUTH_USER",
    "PYROSCOPE_BASIC_AUTH_PASSWORD",
    "PYROSCOPE_TENANT_ID",
    "PYROSCOPE_LABELS",
    "PYROSCOPE_SAMPLE_RATE",
    "PYROSCOPE_UPLOAD_INTERVAL",
    "PYROSCOPE_SPAN_SCOPE",
    "PYROSCOPE_SPAN_NAME_LABEL",
    "PYROSCOPE_TRACE_ID_LABEL",
    "PYROSCOPE_SPAN_LABELS",
    "PYROSCOPE_SPAN_LABEL_VALUES",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// Runs `from_env` with exactly `vars` set (all others of `VARS` unset) and
/// returns its error text, or `None` if it succeeded.
fn from_env_with(vars: &[(&str, &str)]) -> Option<String> {
    let _lock = ENV.lock().unwrap_or_else(|p| p.into_inner());
    let saved: Vec<_> = VARS.iter().map(|v| (*v, std::env::var_os(v))).collect();
    for v in VARS {
        std::env::remove_var(v);
    }
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let result = tracing_pyroscope::from_env();
    for (k, v) in saved {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    match result {
        Ok(_) => None,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            Some(e.to_string())
        }
    }
}

/// Asserts the error names `var`, shows `shown` and contains `expected`.
#[track_caller]
fn assert_bad(vars: &[(&str, &str)], var: &str, shown: &str, expected: &str) {
    let msg = from_env_with(vars).unwrap_or_else(|| panic!("{vars:?} should be rejected"));
    assert!(msg.contains(var), "names {var}: {msg}");
    assert!(msg.contains(shown), "shows {shown:?}: {msg}");
    assert!(msg.contains(expected), "says {expected:?}: {msg}");
}

fn bad(var: &str, value: &str, expected: &str) {
    assert_bad(&[(var, value)], var, &format!("{value:?}"), expected);
}

#[test]
fn nothing_set_is_ok() {
    isolated!();
    assert_eq!(from_env_with(&[]), None);
    // Empty counts as unset.
    let empty: Vec<(&str, &str)> = VARS.iter().map(|v| (*v, "")).collect();
    assert_eq!(from_env_with(&empty), None);
}

#[test]
fn valid_values_are_accepted() {
    isolated!();
    assert_eq!(
        from_env_with(&[
            ("PYROSCOPE_APPLICATION_NAME", "ride-sharing-app"),
            ("PYROSCOPE_BASIC_AUTH_USER", "123456"),
            ("PYROSCOPE_BASIC_AUTH_PASSWORD", "glc_secret"),
            ("PYROSCOPE_TENANT_ID", "tenant-a"),
            ("PYROSCOPE_LABELS", "region=eu-north,env=prod"),
            ("PYROSCOPE_SAMPLE_RATE", "97"),
            ("PYROSCOPE_UPLOAD_INTERVAL", "15s"),
            ("PYROSCOPE_SPAN_SCOPE", "all"),
            ("PYROSCOPE_SPAN_NAME_LABEL", "false"),
            ("PYROSCOPE_TRACE_ID_LABEL", "YES"),
            ("PYROSCOPE_PROFILING_ENABLED", "1"),
        ]),
        None
    );
}

#[test]
fn server_address() {
    isolated!();
    let var = "PYROSCOPE_SERVER_ADDRESS";
    bad(var, "localhost:4040", "http://");
    bad(var, "ftp://localhost:4040", "http://");
    bad(var, "http://", "http://");
    bad(var, "http://localhost:4040?x=1", "no query");
    bad(var, "http://localhost:70000", "http://");
    if !cfg!(feature = "tls") {
        bad(
            var,
            "https://profiles-prod-001.grafana.net",
            "`tls` feature",
        );
    }
    // Credentials in the URL: redacted, and pointed at the right variables.
    let msg = from_env_with(&[(var, "http://123:glc_topsecret@pyro:4040")]).unwrap();
    assert!(
        msg.contains(var) && msg.contains("<redacted>@pyro:4040"),
        "{msg}"
    );
    assert!(!msg.contains("glc_topsecret"), "{msg}");
    assert!(msg.contains("PYROSCOPE_BASIC_AUTH_USER"), "{msg}");
}

#[test]
fn profiles_dir() {
    isolated!();
    let file = std::env::temp_dir().join(format!("config-env-file-{}", std::process::id()));
    std::fs::write(&file, b"not a directory").unwrap();
    let below = file.join("profiles");
    let below = below.to_str().unwrap();
    assert_bad(
        &[("PYROSCOPE_PROFILES_DIR", below)],
        "PYROSCOPE_PROFILES_DIR",
        below,
        "a directory that exists or can be created",
    );
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn profiling_enabled() {
    isolated!();
    bad("PYROSCOPE_PROFILING_ENABLED", "maybe", "true or false");
    bad("PYROSCOPE_PROFILING_ENABLED", "2", "true or false");
    // `false` turns everything off; the other variables are not checked.
    assert_eq!(
        from_env_with(&[
            ("PYROSCOPE_PROFILING_ENABLED", "false"),
            ("PYROSCOPE_SAMPLE_RATE", "lots"),
        ]),
        None
    );
}

#[test]
fn application_name() {
    isolated!();
    bad(
        "PYROSCOPE_APPLICATION_NAME",
        "ride\nsharing",
        "service name",
    );
    let long = "a".repeat(2049);
    assert_bad(
        &[("PYROSCOPE_APPLICATION_NAME", &long)],
        "PYROSCOPE_APPLICATION_NAME",
        "aaaa",
        "at most 2048",
    );
    // The fallback names the variable it came from.
    assert_bad(
        &[("OTEL_SERVICE_NAME", "bad\tname")],
        "OTEL_SERVICE_NAME",
        "bad\\tname",
        "service name",
    );
}

#[test]
fn basic_auth_never_shows_the_password() {
    isolated!();
    let msg = from_env_with(&[("PYROSCOPE_BASIC_AUTH_PASSWORD", "glc_topsecret")]).unwrap();
    assert!(msg.contains("PYROSCOPE_BASIC_AUTH_PASSWORD"), "{msg}");
    assert!(
        msg.contains("PYROSCOPE_BASIC_AUTH_USER"),
        "says what is missing: {msg}"
    );
    assert!(
        msg.contains("<redacted>") && !msg.contains("glc_topsecret"),
        "{msg}"
    );

    assert_bad(
        &[("PYROSCOPE_BASIC_AUTH_USER", "123456")],
        "PYROSCOPE_BASIC_AUTH_USER",
        "\"123456\"",
        "PYROSCOPE_BASIC_AUTH_PASSWORD to be set",
    );
    let msg = from_env_with(&[
        ("PYROSCOPE_BASIC_AUTH_USER", "a:b"),
        ("PYROSCOPE_BASIC_AUTH_PASSWORD", "glc_topsecret"),
    ])
    .unwrap();
    assert!(
        msg.contains("PYROSCOPE_BASIC_AUTH_USER") && msg.contains("\"a:b\""),
        "{msg}"
    );
    assert!(
        msg.contains("without ':'") && !msg.contains("glc_topsecret"),
        "{msg}"
    );
}

#[test]
fn tenant_id() {
    isolated!();
    bad("PYROSCOPE_TENANT_ID", "a/b", "tenant id");
    bad("PYROSCOPE_TENANT_ID", "..", "not \".\" or \"..\"");
    bad("PYROSCOPE_TENANT_ID", &"t".repeat(151), "at most 150");
}

#[test]
fn labels() {
    isolated!();
    let var = "PYROSCOPE_LABELS";
    bad(var, "region", "name=value");
    bad(var, "region=eu,env", "item \"env\" has no '='");
    bad(var, "a-b=1", "[a-zA-Z0-9_.]");
    bad(var, "9a=1", "starting with a digit");
    bad(var, "__meta=1", "digit or \"__\"");
    bad(var, "service_name=x", "reserved");
    bad(var, "span_id=x", "reserved");
    bad(var, "span_name=x", "reserved");
    bad(var, "trace_id=x", "reserved");
    // The server turns '.' into '_' and then rejects duplicates.
    bad(var, "span.name=x", "becomes \"span_name\"");
    bad(var, "service.name=x", "becomes \"service_name\"");
    bad(var, "process.runtime.name=x", "reserved");
    bad(var, "a.b=1,a_b=2", "both become \"a_b\"");
    bad(var, "a=", "1 to 2048");
    bad(var, "a=1,a=2", "repeated");
    let labels = |n: usize| {
        (0..n)
            .map(|i| format!("l{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
    };
    bad(var, &labels(27), "at most 26 static labels");
    assert_eq!(from_env_with(&[(var, &labels(26))]), None, "26 fit");
}

#[test]
fn sample_rate() {
    isolated!();
    for v in ["0", "1001", "-5", "fast", "100Hz"] {
        bad("PYROSCOPE_SAMPLE_RATE", v, "an integer from 1 to 1000");
    }
}

#[test]
fn upload_interval() {
    isolated!();
    for v in ["10", "ten seconds", "1.5s", "1d", "-1s"] {
        bad("PYROSCOPE_UPLOAD_INTERVAL", v, "10s, 500ms, 1m");
    }
    assert_bad(
        &[("PYROSCOPE_UPLOAD_INTERVAL", "50ms")],
        "PYROSCOPE_UPLOAD_INTERVAL",
        "50ms",
        "from 100ms to 10m",
    );
    assert_bad(
        &[("PYROSCOPE_UPLOAD_INTERVAL", "2h")],
        "PYROSCOPE_UPLOAD_INTERVAL",
        "7200000ms",
        "from 100ms to 10m",
    );
}

#[test]
fn span_scope() {
    isolated!();
    bad("PYROSCOPE_SPAN_SCOPE", "leaf", "one of root, all, none");
}

#[test]
fn span_name_and_trace_id_labels() {
    isolated!();
    bad("PYROSCOPE_SPAN_NAME_LABEL", "on-ish", "true or false");
    bad("PYROSCOPE_TRACE_ID_LABEL", "sometimes", "true or false");
    // Each adds a series label: the static-label budget shrinks.
    let twenty_six: String = (0..26).map(|i| format!("l{i}=v,")).collect();
    assert_bad(
        &[
            ("PYROSCOPE_LABELS", &twenty_six),
            ("PYROSCOPE_TRACE_ID_LABEL", "true"),
        ],
        "PYROSCOPE_LABELS",
        "l0=v",
        "at most 25 static labels",
    );
}

#[test]
fn span_labels() {
    isolated!();
    let var = "PYROSCOPE_SPAN_LABELS";
    assert_eq!(
        from_env_with(&[
            (var, "vehicle,http.route"),
            ("PYROSCOPE_SPAN_LABEL_VALUES", "20"),
            ("PYROSCOPE_LABELS", "region=eu-north"),
        ]),
        None
    );
    bad(var, "vehicle,a-b", "[a-zA-Z0-9_.]");
    bad(var, "span_name", "reserved");
    bad(var, "trace.id", "collides with \"trace_id\"");
    bad(var, "vehicle,vehicle", "repeated");
    assert_bad(
        &[(var, "region"), ("PYROSCOPE_LABELS", "region=eu")],
        var,
        "region",
        "static label \"region\"",
    );
    for v in ["0", "501", "lots"] {
        bad("PYROSCOPE_SPAN_LABEL_VALUES", v, "1 to 500");
    }
}

#[test]
fn builder_reports_the_same_rules() {
    isolated!();
    let e = tracing_pyroscope::Builder::new("app")
        .basic_auth("u", "glc_topsecret")
        .label("bad name", "x")
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let msg = e.to_string();
    assert!(
        msg.contains("Builder::label") && msg.contains("bad name"),
        "{msg}"
    );
    let b = tracing_pyroscope::Builder::new("app").basic_auth("u", "glc_topsecret");
    assert!(!format!("{b:?}").contains("glc_topsecret"));
    let e = tracing_pyroscope::Builder::new("app")
        .server_address("localhost")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("Builder::server_address"), "{e}");
}
