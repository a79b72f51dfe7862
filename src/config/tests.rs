//! Unit tests of parsing and validation.

use super::env::{parse_duration, parse_size};
use super::*;
use crate::error::Error;
use crate::Builder;
use crate::ErrorKind;
use std::collections::HashMap;

fn env(vars: &[(&str, &str)]) -> Result<Config, Error> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    from_lookup(move |k| map.get(k).cloned())
}

fn err(vars: &[(&str, &str)]) -> String {
    let e = env(vars).expect_err("expected an error");
    assert_eq!(e.kind(), ErrorKind::Config);
    e.to_string()
}

#[test]
fn defaults_and_nothing_configured() {
    let c = env(&[]).unwrap();
    assert!(c.enabled);
    assert!(c.server_address.is_none() && c.profiles_dir.is_none());
    assert_eq!(c.sample_rate, 100);
    assert_eq!(c.upload_interval, Duration::from_secs(10));
    assert_eq!(c.span_scope, SpanScope::Root);
    assert!(c.span_name_label && !c.trace_id_label);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    assert!(!c.application_name.is_empty());
    assert_eq!(c.max_span_ids, 10_000);
    assert_eq!(c.profiles_dir_max_size, 512 << 20);
    assert_eq!(c.profiles_dir_max_age, Duration::from_secs(24 * 3600));
}

#[test]
fn sizes_and_local_limits() {
    assert_eq!(parse_size("65536"), Some(65536));
    assert_eq!(parse_size("512MiB"), Some(512 << 20));
    assert_eq!(parse_size(" 2 gib "), Some(2 << 30));
    assert_eq!(parse_size("100MB"), Some(100_000_000));
    assert_eq!(parse_size("64KiB"), Some(65536));
    assert_eq!(parse_size("1TB"), Some(1_000_000_000_000));
    for bad in [
        "",
        "MiB",
        "1.5GiB",
        "-1",
        "10 parsecs",
        "99999999999999999999",
        "20000000TiB",
    ] {
        assert_eq!(parse_size(bad), None, "{bad}");
    }
    let c = env(&[
        ("PYROSCOPE_PROFILES_DIR", "/tmp/p"),
        ("PYROSCOPE_PROFILES_DIR_MAX_SIZE", "1MiB"),
        ("PYROSCOPE_PROFILES_DIR_MAX_AGE", "90m"),
        ("PYROSCOPE_MAX_SPAN_IDS", "50"),
    ])
    .unwrap();
    assert_eq!(c.profiles_dir_max_size, 1 << 20);
    assert_eq!(c.profiles_dir_max_age, Duration::from_secs(5400));
    assert_eq!(c.max_span_ids, 50);
    let m = err(&[("PYROSCOPE_PROFILES_DIR_MAX_SIZE", "lots")]);
    assert!(
        m.contains("PYROSCOPE_PROFILES_DIR_MAX_SIZE") && m.contains("512MiB"),
        "{m}"
    );
    let m = err(&[("PYROSCOPE_PROFILES_DIR_MAX_SIZE", "1KiB")]);
    assert!(m.contains("1024") && m.contains("64KiB"), "{m}");
    let m = err(&[("PYROSCOPE_PROFILES_DIR_MAX_AGE", "500ms")]);
    assert!(
        m.contains("PYROSCOPE_PROFILES_DIR_MAX_AGE") && m.contains("1s"),
        "{m}"
    );
    let m = err(&[("PYROSCOPE_MAX_SPAN_IDS", "0")]);
    assert!(
        m.contains("PYROSCOPE_MAX_SPAN_IDS") && m.contains("1000000"),
        "{m}"
    );
    let m = err(&[("PYROSCOPE_MAX_SPAN_IDS", "many")]);
    assert!(m.contains("PYROSCOPE_MAX_SPAN_IDS"), "{m}");
    let e = Builder::new("svc")
        .profiles_dir("/tmp/p")
        .profiles_dir_max_size(1000)
        .build()
        .unwrap_err();
    assert!(
        e.to_string().contains("Builder::profiles_dir_max_size"),
        "{e}"
    );
}

#[test]
fn full_table() {
    let c = env(&[
        ("PYROSCOPE_SERVER_ADDRESS", "http://pyro:4040/prefix/"),
        ("PYROSCOPE_PROFILES_DIR", "/tmp/p"),
        ("PYROSCOPE_APPLICATION_NAME", "ride-sharing-app"),
        ("OTEL_SERVICE_NAME", "ignored"),
        ("PYROSCOPE_BASIC_AUTH_USER", "123"),
        ("PYROSCOPE_BASIC_AUTH_PASSWORD", "s3cr3t"),
        ("PYROSCOPE_TENANT_ID", "tenant-a"),
        ("PYROSCOPE_LABELS", " region = eu-north, env=prod ,"),
        ("PYROSCOPE_SAMPLE_RATE", "250"),
        ("PYROSCOPE_UPLOAD_INTERVAL", "1m30s"),
        ("PYROSCOPE_SPAN_SCOPE", "ALL"),
        ("PYROSCOPE_SPAN_NAME_LABEL", "no"),
        ("PYROSCOPE_TRACE_ID_LABEL", "Yes"),
    ])
    .unwrap();
    assert_eq!(c.server_address.as_deref(), Some("http://pyro:4040/prefix"));
    assert_eq!(c.profiles_dir, Some(PathBuf::from("/tmp/p")));
    assert_eq!(c.application_name, "ride-sharing-app");
    assert_eq!(c.basic_auth_user.as_deref(), Some("123"));
    assert_eq!(c.basic_auth_password, Some(Secret("s3cr3t".into())));
    assert_eq!(c.tenant_id.as_deref(), Some("tenant-a"));
    assert_eq!(
        c.labels,
        vec![
            ("region".to_string(), "eu-north".to_string()),
            ("env".to_string(), "prod".to_string())
        ]
    );
    assert_eq!(c.sample_rate, 250);
    assert_eq!(c.upload_interval, Duration::from_secs(90));
    assert_eq!(c.span_scope, SpanScope::All);
    assert!(!c.span_name_label && c.trace_id_label);
    assert!(c.server_address.is_some() || c.profiles_dir.is_some());
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

#[test]
fn service_name_fallbacks() {
    let c = env(&[("OTEL_SERVICE_NAME", "svc")]).unwrap();
    assert_eq!(c.application_name, "svc");
    let c = env(&[(
        "OTEL_RESOURCE_ATTRIBUTES",
        "a=b, service.name=my%20svc ,x=y",
    )])
    .unwrap();
    assert_eq!(c.application_name, "my svc");
    let c = env(&[
        ("OTEL_SERVICE_NAME", "svc"),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=other"),
    ])
    .unwrap();
    assert_eq!(c.application_name, "svc");
    let c = env(&[
        ("PYROSCOPE_APPLICATION_NAME", ""),
        ("OTEL_SERVICE_NAME", "svc"),
    ])
    .unwrap();
    assert_eq!(c.application_name, "svc", "empty counts as unset");
    let exe = std::env::current_exe().unwrap();
    let stem = exe.file_stem().unwrap().to_string_lossy();
    assert_eq!(env(&[]).unwrap().application_name, stem);
}

#[test]
fn disabled_skips_the_rest() {
    let c = env(&[
        ("PYROSCOPE_PROFILING_ENABLED", "FALSE"),
        ("PYROSCOPE_SAMPLE_RATE", "banana"),
        ("PYROSCOPE_SERVER_ADDRESS", "http://x:1"),
    ])
    .unwrap();
    assert!(!c.enabled);
    let m = err(&[("PYROSCOPE_PROFILING_ENABLED", "maybe")]);
    assert!(
        m.contains("PYROSCOPE_PROFILING_ENABLED") && m.contains("maybe"),
        "{m}"
    );
}

#[test]
fn durations() {
    let d = |s| parse_duration(s);
    assert_eq!(d("10s"), Some(Duration::from_secs(10)));
    assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(d("1m"), Some(Duration::from_secs(60)));
    assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
    for bad in [
        "10",
        "s",
        "1.5s",
        "-1s",
        "10 s",
        "1d",
        "ms10",
        "99999999999999999999h",
    ] {
        assert_eq!(d(bad), None, "{bad}");
    }
    let m = err(&[("PYROSCOPE_UPLOAD_INTERVAL", "10")]);
    assert!(
        m.contains("PYROSCOPE_UPLOAD_INTERVAL=\"10\"") && m.contains("10s"),
        "{m}"
    );
    let m = err(&[("PYROSCOPE_UPLOAD_INTERVAL", "50ms")]);
    assert!(m.contains("50ms") && m.contains("100ms to 10m"), "{m}");
    // The server's 1 h ingestion window bounds the interval.
    let m = err(&[("PYROSCOPE_UPLOAD_INTERVAL", "11m")]);
    assert!(
        m.contains("660000ms") && m.contains("100ms to 10m") && m.contains("ingestion window"),
        "{m}"
    );
    assert!(env(&[("PYROSCOPE_UPLOAD_INTERVAL", "10m")]).is_ok());
}

#[test]
fn bad_values_name_the_variable_value_and_expectation() {
    const BOOL: &str = "true or false";
    const SAMPLE_BYTES: &str = "512 bytes to 1GiB";
    let cases: &[(&str, &str, &str)] = &[
        ("PYROSCOPE_SERVER_ADDRESS", "localhost:4040", "http://"),
        ("PYROSCOPE_SERVER_ADDRESS", "ftp://x", "http://"),
        ("PYROSCOPE_SERVER_ADDRESS", "http://x:4040/?q=1", "no query"),
        ("PYROSCOPE_SERVER_ADDRESS", "http://x:99999", "http://"),
        ("PYROSCOPE_SAMPLE_RATE", "0", "1 to 1000"),
        ("PYROSCOPE_SAMPLE_RATE", "1001", "1 to 1000"),
        ("PYROSCOPE_SAMPLE_RATE", "fast", "1 to 1000"),
        ("PYROSCOPE_SPAN_SCOPE", "leaf", "root, all, none"),
        ("PYROSCOPE_SPAN_NAME_LABEL", "maybe", "true or false"),
        ("PYROSCOPE_TRACE_ID_LABEL", "2", "true or false"),
        ("PYROSCOPE_TENANT_ID", "a/b", "tenant id"),
        ("PYROSCOPE_LABELS", "region", "name=value"),
        ("PYROSCOPE_LABELS", "__x=1", "\"__\""),
        ("PYROSCOPE_LABELS", "a-b=1", "[a-zA-Z0-9_.]"),
        ("PYROSCOPE_LABELS", "1a=1", "digit"),
        ("PYROSCOPE_LABELS", "span_id=1", "reserved"),
        ("PYROSCOPE_LABELS", "service_name=x", "reserved"),
        ("PYROSCOPE_LABELS", "a=", "1 to 2048"),
        ("PYROSCOPE_LABELS", "a=1,a=2", "repeated"),
        ("PYROSCOPE_APPLICATION_NAME", "a\nb", "service name"),
        ("PYROSCOPE_BASIC_AUTH_USER", "a:b", "without ':'"),
        ("PYROSCOPE_PROFILING_WALLTIME_ENABLED", "on", BOOL),
        ("PYROSCOPE_PROFILING_ALLOCATION_ENABLED", "enabled", BOOL),
        ("PYROSCOPE_PROFILING_HEAP_ENABLED", "2", BOOL),
        ("PYROSCOPE_PROFILE_ID_ALWAYS", "always", BOOL),
        ("PYROSCOPE_ALLOCATION_SAMPLE_BYTES", "lots", SAMPLE_BYTES),
        ("PYROSCOPE_ALLOCATION_SAMPLE_BYTES", "100", SAMPLE_BYTES),
        (
            "PYROSCOPE_ALLOCATION_SAMPLE_BYTES",
            "1048576KiB1",
            SAMPLE_BYTES,
        ),
    ];
    for (var, value, expected) in cases {
        let mut vars = vec![(*var, *value)];
        if *var == "PYROSCOPE_BASIC_AUTH_USER" {
            vars.push(("PYROSCOPE_BASIC_AUTH_PASSWORD", "pw"));
        }
        let m = err(&vars);
        assert!(m.contains(var), "{var}: {m}");
        assert!(
            m.contains(&format!("{value:?}")) || m.contains(value),
            "{var}: {m}"
        );
        assert!(m.contains(expected), "{var}={value}: {m}");
    }
}

#[test]
fn too_many_labels_counts_fixed_series_labels() {
    let labels = |n: usize| {
        (0..n)
            .map(|i| format!("l{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
    };
    // Defaults: __name__, service_name, process.runtime.name, span_name.
    assert!(env(&[("PYROSCOPE_LABELS", &labels(26))]).is_ok());
    let m = err(&[("PYROSCOPE_LABELS", &labels(27))]);
    assert!(m.contains("at most 26 static labels"), "{m}");
    let m = err(&[
        ("PYROSCOPE_LABELS", &labels(26)),
        ("PYROSCOPE_TRACE_ID_LABEL", "1"),
    ]);
    assert!(m.contains("at most 25"), "{m}");
    assert!(env(&[
        ("PYROSCOPE_LABELS", &labels(27)),
        ("PYROSCOPE_SPAN_NAME_LABEL", "0")
    ])
    .is_ok());
    let long = format!("a={}", "x".repeat(2049));
    assert!(err(&[("PYROSCOPE_LABELS", &long)]).contains("1 to 2048"));
    let long = format!("{}=1", "a".repeat(1025));
    assert!(err(&[("PYROSCOPE_LABELS", &long)]).contains("at most 1024"));
}

#[test]
fn secrets_never_shown() {
    let m = err(&[("PYROSCOPE_BASIC_AUTH_PASSWORD", "hunter2")]);
    assert!(
        m.contains("PYROSCOPE_BASIC_AUTH_PASSWORD") && m.contains("PYROSCOPE_BASIC_AUTH_USER"),
        "{m}"
    );
    assert!(!m.contains("hunter2") && m.contains("<redacted>"), "{m}");
    let m = err(&[("PYROSCOPE_BASIC_AUTH_USER", "u")]);
    assert!(m.contains("PYROSCOPE_BASIC_AUTH_PASSWORD"), "{m}");
    let m = err(&[("PYROSCOPE_SERVER_ADDRESS", "http://u:hunter2@host:4040")]);
    assert!(
        !m.contains("hunter2") && m.contains("<redacted>@host:4040"),
        "{m}"
    );
    assert!(m.contains("PYROSCOPE_BASIC_AUTH_USER"), "{m}");
    let b = Builder::new("x").basic_auth("u", "hunter2");
    assert!(!format!("{b:?}").contains("hunter2"));
}

#[test]
fn https_needs_tls_feature() {
    let r = env(&[("PYROSCOPE_SERVER_ADDRESS", "https://profiles.example.net")]);
    if cfg!(feature = "tls") {
        assert_eq!(
            r.unwrap().server_address.as_deref(),
            Some("https://profiles.example.net")
        );
    } else {
        let m = r.unwrap_err().to_string();
        assert!(
            m.contains("PYROSCOPE_SERVER_ADDRESS") && m.contains("`tls` feature"),
            "{m}"
        );
    }
}

#[test]
fn builder_validates_at_build() {
    let check = |b: Builder, name: &str, expected: &str| {
        let m = b.config.validate().unwrap_err().to_string();
        assert!(m.contains(name) && m.contains(expected), "{m}");
    };
    check(Builder::new(""), "Builder::new", "non-empty");
    check(
        Builder::new("a").sample_rate(0),
        "Builder::sample_rate",
        "1 to 1000",
    );
    check(
        Builder::new("a").upload_interval(Duration::from_millis(1)),
        "Builder::upload_interval",
        "100ms",
    );
    check(
        Builder::new("a").shutdown_timeout(Duration::from_secs(301)),
        "Builder::shutdown_timeout",
        "at most 5m",
    );
    check(Builder::new("a").label("a b", "1"), "Builder::label", "a b");
    check(
        Builder::new("a").tenant_id("x y"),
        "Builder::tenant_id",
        "x y",
    );
    check(
        Builder::new("a").server_address("nope"),
        "Builder::server_address",
        "http://",
    );
    let c = Builder::new("a")
        .labels([("k", "v"), ("k2", "v2")])
        .server_address("http://127.0.0.1:4040/")
        .config
        .validate()
        .unwrap();
    assert_eq!(c.labels.len(), 2);
    assert_eq!(c.server_address.as_deref(), Some("http://127.0.0.1:4040"));
}

#[test]
fn span_labels_from_env_and_builder() {
    let c = env(&[
        ("PYROSCOPE_SPAN_LABELS", " vehicle, http.route ,"),
        ("PYROSCOPE_SPAN_LABEL_VALUES", "20"),
    ])
    .unwrap();
    assert_eq!(c.span_labels, ["vehicle", "http.route"]);
    assert_eq!(c.max_span_label_values, 20);
    let c = env(&[]).unwrap();
    assert!(c.span_labels.is_empty());
    assert_eq!(
        c.max_span_label_values,
        crate::context::DEFAULT_MAX_LABEL_VALUES
    );
    let c = Builder::new("a")
        .span_labels(["vehicle"])
        .span_labels(vec!["region".to_string()])
        .config
        .validate()
        .unwrap();
    assert_eq!(c.span_labels, ["vehicle", "region"]);
}

#[test]
fn span_label_names_follow_the_server_rules() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("PYROSCOPE_SPAN_LABELS", "span_name")], "reserved"),
        (
            &[("PYROSCOPE_SPAN_LABELS", "span.id")],
            "collides with \"span_id\"",
        ),
        (
            &[("PYROSCOPE_SPAN_LABELS", "service.name")],
            "collides with \"service_name\"",
        ),
        (&[("PYROSCOPE_SPAN_LABELS", "__x")], "\"__\""),
        (&[("PYROSCOPE_SPAN_LABELS", "a-b")], "[a-zA-Z0-9_.]"),
        (&[("PYROSCOPE_SPAN_LABELS", "1a")], "digit"),
        (&[("PYROSCOPE_SPAN_LABELS", "a,a")], "repeated"),
        (
            &[("PYROSCOPE_SPAN_LABELS", "a.b,a_b")],
            "both become \"a_b\"",
        ),
        (
            &[
                ("PYROSCOPE_SPAN_LABELS", "region"),
                ("PYROSCOPE_LABELS", "region=eu"),
            ],
            "static label \"region\"",
        ),
        (
            &[
                ("PYROSCOPE_SPAN_LABELS", "http.route"),
                ("PYROSCOPE_LABELS", "http_route=x"),
            ],
            "static label \"http_route\"",
        ),
        (&[("PYROSCOPE_SPAN_LABEL_VALUES", "0")], "1 to 500"),
        (&[("PYROSCOPE_SPAN_LABEL_VALUES", "501")], "1 to 500"),
        (&[("PYROSCOPE_SPAN_LABEL_VALUES", "many")], "1 to 500"),
    ];
    for (vars, expected) in cases {
        let m = err(vars);
        let (var, value) = vars[0];
        assert!(m.contains(var), "{var}: {m}");
        assert!(m.contains(value), "{var}={value}: {m}");
        assert!(m.contains(expected), "{var}={value}: {m}");
    }
    let long = "a".repeat(1025);
    assert!(err(&[("PYROSCOPE_SPAN_LABELS", &long)]).contains("at most 1024"));
    let m = Builder::new("a")
        .span_labels(["trace_id"])
        .config
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("Builder::span_labels") && m.contains("reserved"),
        "{m}"
    );
    let m = Builder::new("a")
        .max_span_label_values(0)
        .config
        .validate()
        .unwrap_err()
        .to_string();
    assert!(m.contains("Builder::max_span_label_values"), "{m}");
}

#[test]
fn span_labels_count_towards_the_series_labels() {
    let names = |n: usize| {
        (0..n)
            .map(|i| format!("f{i}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    // Defaults: __name__, service_name, process.runtime.name, span_name:
    // 26 left for static and span labels together.
    assert!(env(&[
        ("PYROSCOPE_LABELS", "region=eu,env=prod"),
        ("PYROSCOPE_SPAN_LABELS", &names(24)),
    ])
    .is_ok());
    let m = err(&[
        ("PYROSCOPE_SPAN_LABELS", &names(25)),
        ("PYROSCOPE_LABELS", "region=eu,env=prod"),
    ]);
    assert!(m.contains("at most 24 span labels"), "{m}");
}

/// `Builder::from_env` over `vars`.
fn env_builder(vars: &[(&str, &str)]) -> Builder {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Builder::from_lookup(move |k| map.get(k).cloned())
}

#[test]
fn builder_from_env_keeps_the_environment_and_code_overrides_it() {
    let vars = [
        ("PYROSCOPE_APPLICATION_NAME", "from-env"),
        ("PYROSCOPE_SAMPLE_RATE", "250"),
        ("PYROSCOPE_SPAN_LABELS", "vehicle"),
    ];
    let kept = env_builder(&vars).config.validate().unwrap();
    assert_eq!(kept.application_name, "from-env");
    assert_eq!(kept.sample_rate, 250);
    assert_eq!(kept.span_labels, ["vehicle"]);

    let overridden = env_builder(&vars)
        .sample_rate(300)
        .span_labels(["region"])
        .config
        .validate()
        .unwrap();
    assert_eq!(overridden.sample_rate, 300);
    // Span labels add to the environment's.
    assert_eq!(overridden.span_labels, ["vehicle", "region"]);
}

#[test]
fn builder_from_env_reports_a_bad_variable_at_build() {
    let err = env_builder(&[("PYROSCOPE_SAMPLE_RATE", "fast")])
        .sample_rate(50)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("PYROSCOPE_SAMPLE_RATE"), "{err}");
}

#[test]
fn an_overridden_value_is_named_by_its_setter() {
    let err = env_builder(&[("PYROSCOPE_SAMPLE_RATE", "50")])
        .sample_rate(5000)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("Builder::sample_rate"), "{err}");
    let err = env_builder(&[("PYROSCOPE_SAMPLE_RATE", "5000")])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("PYROSCOPE_SAMPLE_RATE"), "{err}");
}

#[test]
fn builder_defaults_are_the_public_consts() {
    let c = Builder::new("a").config;
    assert_eq!(c.sample_rate, Builder::DEFAULT_SAMPLE_RATE);
    assert_eq!(c.upload_interval, Builder::DEFAULT_UPLOAD_INTERVAL);
    assert_eq!(c.shutdown_timeout, Builder::DEFAULT_SHUTDOWN_TIMEOUT);
    assert_eq!(c.span_scope, Builder::DEFAULT_SPAN_SCOPE);
    assert_eq!(c.span_name_label, Builder::DEFAULT_SPAN_NAME_LABEL);
    assert_eq!(c.trace_id_label, Builder::DEFAULT_TRACE_ID_LABEL);
    assert_eq!(c.max_span_names, Builder::DEFAULT_MAX_SPAN_NAMES);
    assert_eq!(
        c.max_span_label_values,
        Builder::DEFAULT_MAX_SPAN_LABEL_VALUES
    );
    assert_eq!(c.max_span_ids, Builder::DEFAULT_MAX_SPAN_IDS);
    assert_eq!(
        c.profiles_dir_max_size,
        Builder::DEFAULT_PROFILES_DIR_MAX_SIZE
    );
    assert_eq!(
        c.profiles_dir_max_age,
        Builder::DEFAULT_PROFILES_DIR_MAX_AGE
    );
    // The environment starts from the same defaults.
    let e = env(&[]).unwrap();
    assert_eq!(e.sample_rate, Builder::DEFAULT_SAMPLE_RATE);
    assert_eq!(e.max_span_ids, Builder::DEFAULT_MAX_SPAN_IDS);
}

/// Without the `upload` feature a server address is an error that says
/// which feature to enable (`cargo test --no-default-features`).
#[cfg(not(feature = "upload"))]
#[test]
fn a_server_address_without_the_upload_feature_is_an_error() {
    for result in [
        Builder::new("a")
            .server_address("http://localhost:4040")
            .config
            .validate(),
        env(&[("PYROSCOPE_SERVER_ADDRESS", "http://localhost:4040")]),
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("`upload` feature"), "{err}");
    }
}
