//! Property tests of every environment parser, through [`from_lookup`]
//! (the real `from_env` minus the process environment): durations,
//! booleans, integers, label lists, server URLs and
//! `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! Each parser gets two kinds of property:
//! - generated well-formed values come back exactly (a duration's parts
//!   sum, a label list's pairs in order, a URL in its normal form, a
//!   percent-encoded `service.name`);
//! - anything at all (arbitrary strings, or items mixing valid and invalid
//!   pieces) never panics, and is accepted exactly when an independent
//!   model of the documented rules says so; a rejection is a `Config` error
//!   naming the variable.
//!
//! [`CASES`] cases per property (`PROPTEST_CASES` overrides it).

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use super::*;
use crate::error::Error;
use crate::ErrorKind;

/// Cases per property: enough to hit every branch many times, few enough
/// that the whole suite takes about a second.
const CASES: u32 = 256;

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(CASES)
}

/// `from_lookup` over `vars`, with a fixed application name unless `vars`
/// names one (so the binary's name never matters).
fn read(vars: &[(&str, &str)]) -> Result<Config, Error> {
    let mut map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let named = ["PYROSCOPE_APPLICATION_NAME", "OTEL_SERVICE_NAME"]
        .iter()
        .any(|k| map.contains_key(*k))
        || map.contains_key("OTEL_RESOURCE_ATTRIBUTES");
    if !named {
        map.insert("PYROSCOPE_APPLICATION_NAME".into(), "prop-app".into());
    }
    from_lookup(move |k| map.get(k).cloned())
}

/// A rejection is a `Config` error that names `var`.
fn names_var(result: &Result<Config, Error>, var: &str) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert_eq!(e.kind(), ErrorKind::Config);
        let text = e.to_string();
        prop_assert!(text.contains(var), "{} not in {:?}", var, text);
    }
    Ok(())
}

/// Unicode whitespace, as `str::trim` removes it.
fn space() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "", " ", "  ", "\t", "\u{a0}", " \n"]).prop_map(String::from)
}

// ---------------------------------------------------------------- durations

const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

proptest! {
    #![proptest_config(cases())]

    /// `1m30s500ms`-style sums come back exactly, in range or not.
    #[test]
    fn duration_parts_sum(
        parts in prop::collection::vec((0u64..100_000, 0usize..4), 1..4),
        (pre, post) in (space(), space()),
    ) {
        let text: String = parts
            .iter()
            .map(|(n, u)| format!("{n}{}", UNITS[*u].0))
            .collect();
        let millis: u64 = parts.iter().map(|(n, u)| n * UNITS[*u].1).sum();
        let want = Duration::from_millis(millis);
        let result = read(&[("PYROSCOPE_UPLOAD_INTERVAL", &format!("{pre}{text}{post}"))]);
        names_var(&result, "PYROSCOPE_UPLOAD_INTERVAL")?;
        if (UPLOAD_INTERVAL_MIN..=UPLOAD_INTERVAL_MAX).contains(&want) {
            prop_assert_eq!(result.unwrap().upload_interval, want);
        } else {
            prop_assert!(result.is_err(), "{text} = {want:?} is out of range");
        }
    }

    /// Anything accepted is `<digits><unit>` repeated, inside the bounds.
    #[test]
    fn duration_accepts_only_well_formed(text in "[0-9a-z \\-.+]{0,12}|\\PC{0,8}") {
        let result = read(&[("PYROSCOPE_UPLOAD_INTERVAL", &text)]);
        names_var(&result, "PYROSCOPE_UPLOAD_INTERVAL")?;
        if let Ok(config) = result {
            // Empty counts as unset (the default).
            prop_assert!(text.is_empty() || well_formed_duration(text.trim()), "accepted {:?}", text);
            prop_assert!((UPLOAD_INTERVAL_MIN..=UPLOAD_INTERVAL_MAX).contains(&config.upload_interval));
        }
    }
}

/// `(digits unit)+` with units ms, s, m, h.
fn well_formed_duration(mut s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    while !s.is_empty() {
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        s = &s[digits..];
        let Some(unit) = ["ms", "s", "m", "h"].into_iter().find(|u| {
            s.starts_with(u) && !s[u.len()..].starts_with(|c: char| c.is_ascii_alphabetic())
        }) else {
            return false;
        };
        s = &s[unit.len()..];
    }
    true
}

// ----------------------------------------------------------------- booleans

const BOOL_VARS: [&str; 3] = [
    "PYROSCOPE_PROFILING_ENABLED",
    "PYROSCOPE_SPAN_NAME_LABEL",
    "PYROSCOPE_TRACE_ID_LABEL",
];

fn bool_of(config: &Config, var: &str) -> bool {
    match var {
        "PYROSCOPE_PROFILING_ENABLED" => config.enabled,
        "PYROSCOPE_SPAN_NAME_LABEL" => config.span_name_label,
        _ => config.trace_id_label,
    }
}

proptest! {
    #![proptest_config(cases())]

    /// true/false, 1/0, yes/no in any case, with whitespace around.
    #[test]
    fn booleans_in_any_case(
        var in prop::sample::select(BOOL_VARS.to_vec()),
        word in prop::sample::select(vec![("true", true), ("false", false), ("1", true), ("0", false), ("yes", true), ("no", false)]),
        upper in prop::collection::vec(any::<bool>(), 5),
        (pre, post) in (space(), space()),
    ) {
        let cased: String = word
            .0
            .chars()
            .zip(upper.iter().cycle())
            .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
            .collect();
        let config = read(&[(var, &format!("{pre}{cased}{post}"))]).unwrap();
        prop_assert_eq!(bool_of(&config, var), word.1);
    }

    /// Nothing else is a boolean.
    #[test]
    fn booleans_reject_the_rest(
        var in prop::sample::select(BOOL_VARS.to_vec()),
        text in "[a-zA-Z0-9 ]{1,6}|\\PC{1,6}",
    ) {
        let result = read(&[(var, &text)]);
        names_var(&result, var)?;
        let valid = ["true", "false", "1", "0", "yes", "no"]
            .contains(&text.trim().to_ascii_lowercase().as_str());
        prop_assert_eq!(result.is_ok(), valid, "{:?}", text);
    }

    /// Integers: accepted exactly in their documented ranges.
    #[test]
    fn integers_in_range(
        n in prop_oneof![0u64..1200, any::<u64>()],
        (pre, post) in (space(), space()),
        junk in prop::option::of("[a-z.\\-]{1,3}"),
    ) {
        let text = format!("{pre}{n}{}{post}", junk.as_deref().unwrap_or(""));
        let rate = read(&[("PYROSCOPE_SAMPLE_RATE", &text)]);
        names_var(&rate, "PYROSCOPE_SAMPLE_RATE")?;
        let names = read(&[("PYROSCOPE_MAX_SPAN_NAMES", &text)]);
        names_var(&names, "PYROSCOPE_MAX_SPAN_NAMES")?;
        let clean = junk.is_none();
        prop_assert_eq!(rate.is_ok(), clean && (1..=1000).contains(&n));
        prop_assert_eq!(names.is_ok(), clean && (1..=500).contains(&n));
        if let Ok(c) = rate {
            prop_assert_eq!(u64::from(c.sample_rate), n);
        }
        if let Ok(c) = names {
            prop_assert_eq!(c.max_span_names as u64, n);
        }
    }
}

// ------------------------------------------------------------- label lists

/// The documented label rules, written out again: `[a-zA-Z0-9_.]`, no
/// leading digit or `__`, ≤ 1024 bytes; values 1–2048 bytes; names distinct
/// and not reserved, also after `.`→`_`; at most 26 (30 minus `__name__`,
/// `service_name`, `process.runtime.name`, `span_name`).
fn model_labels_ok(labels: &[(String, String)]) -> bool {
    const RESERVED: [&str; 7] = [
        "__name__",
        "service_name",
        "process_runtime_name",
        "span_id",
        "span_name",
        "trace_id",
        "profile_id",
    ];
    let mut seen = std::collections::HashSet::new();
    labels.len() <= 26
        && labels.iter().all(|(name, value)| {
            let clean = name.replace('.', "_");
            !name.is_empty()
                && name.len() <= 1024
                && !name.starts_with("__")
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                && !RESERVED.contains(&clean.as_str())
                && (1..=2048).contains(&value.len())
                && seen.insert(clean)
        })
}

/// A label name: mostly valid, sometimes reserved, colliding or invalid.
fn label_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z_][a-zA-Z0-9_.]{0,12}",
        1 => prop::sample::select(vec![
            "span.name", "service.name", "process.runtime.name", "span_id", "trace_id",
            "profile.id", "__x", "_", "a.b", "a_b", "1abc", "a-b", "a b", "é", "",
        ]).prop_map(String::from),
        1 => Just("n".repeat(1025)),
    ]
}

/// A label value (no `,`): mostly fine, sometimes empty or too long.
fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[^,\\s\\p{C}]([^,\\p{C}]{0,20}[^,\\s\\p{C}])?",
        1 => Just(String::new()),
        1 => Just("v".repeat(2049)),
        1 => Just("é".repeat(1024)), // 2048 bytes: the most allowed
    ]
}

proptest! {
    #![proptest_config(cases())]

    /// `k=v,k2=v2` with any spacing and blank items: accepted exactly when
    /// the model says so, and then the pairs come back in order.
    #[test]
    fn label_lists(
        labels in prop::collection::vec((label_name(), label_value()), 0..30),
        spacing in prop::collection::vec((space(), space(), space(), space()), 30),
        blanks in prop::collection::vec(any::<bool>(), 31),
    ) {
        let mut text = String::new();
        for (i, (name, value)) in labels.iter().enumerate() {
            if blanks[i] {
                text.push_str(" ,");
            }
            let (a, b, c, d) = &spacing[i];
            text.push_str(&format!("{a}{name}{b}={c}{value}{d},"));
        }
        if !blanks[30] {
            text.pop();
        }
        let result = read(&[("PYROSCOPE_LABELS", &text)]);
        names_var(&result, "PYROSCOPE_LABELS")?;
        // What the parser sees once items are trimmed.
        let items: Vec<(String, String)> = labels
            .iter()
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        match result {
            Ok(config) => {
                prop_assert!(model_labels_ok(&items), "accepted {:?}", items);
                prop_assert_eq!(config.labels, items);
            }
            Err(_) => prop_assert!(!model_labels_ok(&items), "rejected {:?}", items),
        }
    }

    /// Anything at all: never a panic; an item without `=` is an error.
    #[test]
    fn label_lists_from_any_text(text in "[a-z_.=, ]{0,24}|\\PC{0,16}") {
        let result = read(&[("PYROSCOPE_LABELS", &text)]);
        names_var(&result, "PYROSCOPE_LABELS")?;
        let bare_item = text.split(',').any(|i| !i.trim().is_empty() && !i.contains('='));
        if bare_item {
            prop_assert!(result.is_err(), "{:?}", text);
        }
        if let Ok(config) = result {
            prop_assert!(model_labels_ok(&config.labels), "{:?}", config.labels);
        }
    }
}

// --------------------------------------------------------------------- URLs

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-z0-9]{0,8}(\\.[a-z][a-z0-9]{0,8}){0,2}",
        1 => Just("localhost".to_string()),
        1 => (0u8..=255, 0u8..=255, 0u8..=255, 1u8..=254)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
    ]
}

proptest! {
    #![proptest_config(cases())]

    /// `http(s)://host[:port][/path][/]` comes back in normal form: default
    /// port dropped, no trailing `/`. `https` only with the `tls` feature.
    #[test]
    fn server_urls(
        https in any::<bool>(),
        upper in any::<bool>(),
        host in host(),
        port in prop::option::of(1u16..=65535),
        path in "(/[a-zA-Z0-9._~-]{1,8}){0,3}",
        slash in any::<bool>(),
        (pre, post) in (space(), space()),
    ) {
        let scheme = if https { "https" } else { "http" };
        let shown_scheme = if upper { scheme.to_ascii_uppercase() } else { scheme.to_string() };
        let port_part = port.map(|p| format!(":{p}")).unwrap_or_default();
        let tail = if slash { "/" } else { "" };
        let text = format!("{pre}{shown_scheme}://{host}{port_part}{path}{tail}{post}");
        let result = read(&[("PYROSCOPE_SERVER_ADDRESS", &text)]);
        names_var(&result, "PYROSCOPE_SERVER_ADDRESS")?;
        if https && !cfg!(feature = "tls") {
            prop_assert!(result.is_err());
            return Ok(());
        }
        // "." and ".." path segments are resolved by the URL parser.
        prop_assume!(!path.split('/').any(|s| s == "." || s == ".."));
        let default_port = if https { 443 } else { 80 };
        let port_part = match port {
            Some(p) if p != default_port => format!(":{p}"),
            _ => String::new(),
        };
        let want = format!("{scheme}://{host}{port_part}{path}");
        prop_assert_eq!(result.unwrap().server_address, Some(want));
    }

    /// Anything accepted is an http(s) URL with a host and without
    /// credentials, query or fragment.
    #[test]
    fn server_urls_from_any_text(
        text in "(https?|ftp|HTTP)?(://)?[a-z0-9@:/?#.\\-\\[\\] ]{0,24}|\\PC{0,16}",
    ) {
        let result = read(&[("PYROSCOPE_SERVER_ADDRESS", &text)]);
        names_var(&result, "PYROSCOPE_SERVER_ADDRESS")?;
        if let Ok(config) = result {
            let Some(address) = config.server_address else {
                prop_assert!(text.is_empty());
                return Ok(());
            };
            let url = reqwest::Url::parse(&address).expect("a valid URL");
            prop_assert!(matches!(url.scheme(), "http" | "https"));
            prop_assert!(url.host_str().is_some_and(|h| !h.is_empty()));
            prop_assert!(url.username().is_empty() && url.password().is_none());
            prop_assert!(url.query().is_none() && url.fragment().is_none());
            prop_assert!(!address.ends_with('/'));
        }
    }

    /// A password in the URL is refused and never shown.
    #[test]
    fn server_url_credentials_never_shown(
        password in "pw[a-zA-Z0-9]{8,16}",
        host in host(),
    ) {
        let text = format!("http://user:{password}@{host}:4040/");
        let e = read(&[("PYROSCOPE_SERVER_ADDRESS", &text)]).unwrap_err();
        prop_assert!(e.to_string().contains("PYROSCOPE_SERVER_ADDRESS"));
        prop_assert!(!e.to_string().contains(&password), "{}", e);
        let debug = format!("{e:?}");
        prop_assert!(!debug.contains(&password));
    }
}

// ------------------------------------------------- OTEL_RESOURCE_ATTRIBUTES

/// What the OTel specification asks: values percent-encoded (here every
/// byte that is not alphanumeric).
fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

proptest! {
    #![proptest_config(cases())]

    /// `service.name` anywhere in the list, any printable value (spaces,
    /// commas, `=` and non-ASCII included, percent-encoded), becomes the
    /// service name; `OTEL_SERVICE_NAME` and `PYROSCOPE_APPLICATION_NAME`
    /// win over it, in that order.
    #[test]
    fn resource_attributes_service_name(
        name in "\\PC{1,40}",
        others in prop::collection::vec(("[a-z][a-z.]{0,10}", "\\PC{0,10}"), 0..5),
        at in any::<prop::sample::Index>(),
        spaced in any::<bool>(),
        otel in prop::option::of("[a-z][a-z0-9-]{0,10}"),
        pyroscope in prop::option::of("[a-z][a-z0-9-]{0,10}"),
    ) {
        let mut pairs: Vec<String> = others
            .iter()
            .filter(|(k, _)| k != "service.name")
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let sep = if spaced { " = " } else { "=" };
        let index = at.index(pairs.len() + 1);
        pairs.insert(index, format!("service.name{sep}{}", encode(&name)));
        let attrs = pairs.join(",");
        let mut vars = vec![("OTEL_RESOURCE_ATTRIBUTES", attrs.as_str())];
        if let Some(o) = &otel {
            vars.push(("OTEL_SERVICE_NAME", o));
        }
        if let Some(p) = &pyroscope {
            vars.push(("PYROSCOPE_APPLICATION_NAME", p));
        }
        let result = read(&vars);
        let want = pyroscope.or(otel).unwrap_or(name);
        prop_assert_eq!(result.unwrap().application_name, want);
    }

    /// Any text: never a panic; accepted names are non-empty, at most 2048
    /// bytes, without control characters.
    #[test]
    fn resource_attributes_from_any_text(text in "[a-z.=,% 0-9A-F]{0,24}|\\PC{0,24}|service\\.name=[%0-9a-fA-F\\PC]{0,12}") {
        let result = read(&[("OTEL_RESOURCE_ATTRIBUTES", &text)]);
        names_var(&result, "OTEL_RESOURCE_ATTRIBUTES")?;
        if let Ok(config) = result {
            let name = &config.application_name;
            prop_assert!(!name.is_empty() && name.len() <= 2048);
            prop_assert!(!name.chars().any(char::is_control), "{:?}", name);
        }
    }
}
