//! Command-line arguments, parsed with clap.

use std::path::PathBuf;
use std::time::Duration;

use clap::{value_parser, Arg, ArgAction, ArgGroup, ArgMatches, Command};

const USAGE: &str = "\
ride-sharing-demo [--duration 30s] [--out DIR] [--rate N]
       ride-sharing-demo --compare [--duration 30s] [--rounds 5] [--concurrency 4] [--sequential]
       ride-sharing-demo --serve --region REGION [--port 5000] [--bind 0.0.0.0]
       ride-sharing-demo --load --targets REGION=URL,... [--duration D|forever] [--rate N]";

const ABOUT: &str = "\
Grafana's ride-sharing \"traces to profiles\" demo, for Rust.

Runs three region services (us-east, eu-north, ap-south) and a load
generator as separate processes for --duration, profiling into --out
(default: <target dir>/ride-sharing-demo), then writes DIR/report.html.
--compare instead measures throughput with profiling off vs on: two such
fleets side by side (or --sequential), each with --concurrency closed-loop
clients, in --rounds rounds within --duration; prints both and their ratio.
--serve runs one region service and --load the load generator alone (the
docker-compose services run these).";

const AFTER_HELP: &str = "\
Profiling and tracing are configured by the environment as for any service:
PYROSCOPE_SERVER_ADDRESS, PYROSCOPE_PROFILES_DIR, PYROSCOPE_LABELS,
OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT, ...";

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Mode {
    /// Parent: spawn regions and load, show progress, write the report.
    Demo,
    /// Parent: measure throughput with profiling off vs on.
    Compare,
    Serve,
    Load,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Args {
    pub(crate) mode: Mode,
    /// `None` = forever (load generator only).
    pub(crate) duration: Option<Duration>,
    pub(crate) out: Option<PathBuf>,
    /// Orders per second (open loop).
    pub(crate) rate: f64,
    /// Closed loop with this many clients instead of a rate.
    pub(crate) concurrency: Option<usize>,
    /// `--compare`: rounds of (off, on).
    pub(crate) rounds: u32,
    /// `--compare`: off and on one after the other, not side by side.
    pub(crate) sequential: bool,
    pub(crate) region: Option<String>,
    pub(crate) port: u16,
    pub(crate) bind: String,
    pub(crate) targets: Vec<(String, String)>,
    /// Spawned by the demo parent: report on stdout, stop at stdin EOF.
    pub(crate) child: bool,
    /// Only validate the arguments, print them and exit.
    pub(crate) check: bool,
}

fn command() -> Command {
    let flag = |name: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .action(ArgAction::SetTrue)
            .help(help)
    };
    let value = |name: &'static str, placeholder: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .value_name(placeholder)
            .action(ArgAction::Set)
            .help(help)
    };
    Command::new("ride-sharing-demo")
        .about(ABOUT)
        .override_usage(USAGE)
        .after_help(AFTER_HELP)
        // A repeated flag takes its last value, as before.
        .args_override_self(true)
        .arg(flag(
            "compare",
            "Measure throughput with profiling off vs on",
        ))
        .arg(flag("serve", "Run one region service"))
        .arg(flag("load", "Run the load generator alone"))
        .group(ArgGroup::new("mode").args(["compare", "serve", "load"]))
        .arg(
            value(
                "duration",
                "D",
                "How long to run: 30s, 2m, 500ms (forever: --load only) [default: 30s]",
            )
            .value_parser(duration),
        )
        .arg(
            value(
                "out",
                "DIR",
                "Profiles and report directory [default: <target dir>/ride-sharing-demo]",
            )
            .value_parser(value_parser!(PathBuf)),
        )
        .arg(value("rate", "N", "Orders per second, open loop [default: 10]").value_parser(rate))
        .arg(
            value(
                "concurrency",
                "N",
                "Closed loop with N clients instead of a rate (1..=256)",
            )
            .value_parser(value_parser!(u16).range(1..=256)),
        )
        .arg(
            value(
                "rounds",
                "N",
                "--compare: rounds of (off, on) (1..=100) [default: 5]",
            )
            .value_parser(value_parser!(u32).range(1..=100)),
        )
        .arg(flag(
            "sequential",
            "--compare: off and on one after the other, not side by side",
        ))
        .arg(value(
            "region",
            "REGION",
            "--serve: the region (else $REGION)",
        ))
        .arg(
            value("port", "PORT", "--serve: the port, 0 = any [default: 5000]")
                .value_parser(value_parser!(u16)),
        )
        .arg(value(
            "bind",
            "ADDR",
            "--serve: the address to listen on [default: 127.0.0.1]",
        ))
        .arg(
            value(
                "targets",
                "REGION=URL,...",
                "--load: the region services to order from",
            )
            .action(ArgAction::Append)
            .value_parser(targets),
        )
        .arg(flag("check", "Validate the arguments, print them and exit"))
        // Spawned by the demo parent: report on stdout, stop at stdin EOF.
        .arg(flag("child", "").hide(true))
}

/// Parses the arguments (without the program name). Help and bad arguments
/// are errors that print themselves (`Error::print`, `Error::exit_code`).
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, clap::Error> {
    let mut cmd = command();
    let m =
        cmd.try_get_matches_from_mut(std::iter::once("ride-sharing-demo".to_string()).chain(args))?;
    let mut a = from_matches(&m);
    let invalid = |cmd: &mut Command, msg: &str| {
        Err(cmd.error(clap::error::ErrorKind::MissingRequiredArgument, msg))
    };
    if a.mode == Mode::Serve && a.region.is_none() {
        a.region = std::env::var("REGION").ok().filter(|r| !r.is_empty());
        if a.region.is_none() {
            return invalid(&mut cmd, "--serve needs --region (or REGION)");
        }
    }
    if a.mode == Mode::Load && a.targets.is_empty() {
        return invalid(&mut cmd, "--load needs --targets REGION=URL,...");
    }
    if a.duration.is_none() && a.mode != Mode::Load && a.mode != Mode::Serve {
        return Err(cmd.error(
            clap::error::ErrorKind::ArgumentConflict,
            "--duration forever is only for --load",
        ));
    }
    Ok(a)
}

fn from_matches(m: &ArgMatches) -> Args {
    let mode = if m.get_flag("compare") {
        Mode::Compare
    } else if m.get_flag("serve") {
        Mode::Serve
    } else if m.get_flag("load") {
        Mode::Load
    } else {
        Mode::Demo
    };
    Args {
        mode,
        duration: m
            .get_one::<Option<Duration>>("duration")
            .copied()
            .unwrap_or(Some(Duration::from_secs(30))),
        out: m.get_one::<PathBuf>("out").cloned(),
        rate: m.get_one::<f64>("rate").copied().unwrap_or(10.0),
        concurrency: m.get_one::<u16>("concurrency").map(|&c| usize::from(c)),
        rounds: m.get_one::<u32>("rounds").copied().unwrap_or(5),
        sequential: m.get_flag("sequential"),
        region: m.get_one::<String>("region").cloned(),
        port: m.get_one::<u16>("port").copied().unwrap_or(5000),
        bind: m
            .get_one::<String>("bind")
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".to_string()),
        targets: m
            .get_many::<Vec<(String, String)>>("targets")
            .into_iter()
            .flatten()
            .flatten()
            .cloned()
            .collect(),
        child: m.get_flag("child"),
        check: m.get_flag("check"),
    }
}

/// `--duration`: a length, or `forever` (`None`).
fn duration(v: &str) -> Result<Option<Duration>, String> {
    if v == "forever" {
        return Ok(None);
    }
    parse_duration(v)
        .map(Some)
        .ok_or_else(|| "expected e.g. 30s, 2m, 500ms or forever".to_string())
}

fn rate(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0 && *r <= 10_000.0)
        .ok_or_else(|| "expected orders per second, 0 < N <= 10000".to_string())
}

/// `REGION=URL,...`; a trailing `/` of a URL is dropped.
fn targets(v: &str) -> Result<Vec<(String, String)>, String> {
    v.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (region, url) = t.split_once('=').ok_or_else(|| {
                format!("{t:?}: expected REGION=URL, e.g. us-east=http://us-east:5000")
            })?;
            Ok((region.to_string(), url.trim_end_matches('/').to_string()))
        })
        .collect()
}

/// `30s`, `2m`, `500ms`, `1h`, or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Args, String> {
        parse(args.iter().map(|s| s.to_string())).map_err(|e| e.to_string())
    }

    #[test]
    fn command_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn defaults_and_flags() {
        let a = p(&[]).unwrap();
        assert_eq!(a.mode, Mode::Demo);
        assert_eq!(a.duration, Some(Duration::from_secs(30)));
        assert_eq!((a.rate, a.rounds, a.port), (10.0, 5, 5000));
        assert_eq!(
            (a.bind.as_str(), a.concurrency, a.out),
            ("127.0.0.1", None, None)
        );
        let a = p(&["--duration", "10s", "--out", "x", "--rate=20"]).unwrap();
        assert_eq!(a.duration, Some(Duration::from_secs(10)));
        assert_eq!(a.out, Some(PathBuf::from("x")));
        assert_eq!(a.rate, 20.0);
        let a = p(&["--serve", "--region", "eu-north", "--port", "0", "--child"]).unwrap();
        assert_eq!(
            (a.mode, a.region.as_deref(), a.port, a.child),
            (Mode::Serve, Some("eu-north"), 0, true)
        );
        let a = p(&[
            "--load",
            "--targets",
            "us-east=http://h:5000/,eu-north=http://e:1",
            "--duration",
            "forever",
        ])
        .unwrap();
        assert_eq!(
            a.targets,
            [
                ("us-east".to_string(), "http://h:5000".to_string()),
                ("eu-north".to_string(), "http://e:1".to_string())
            ]
        );
        assert_eq!(a.duration, None);
        let a = p(&[
            "--compare",
            "--rounds",
            "4",
            "--concurrency",
            "4",
            "--sequential",
        ])
        .unwrap();
        assert_eq!(
            (a.mode, a.rounds, a.concurrency, a.sequential),
            (Mode::Compare, 4, Some(4), true)
        );
        // The last of a repeated flag wins; --targets adds up.
        let a = p(&["--rate", "1", "--rate", "2"]).unwrap();
        assert_eq!(a.rate, 2.0);
        let a = p(&["--load", "--targets", "a=u", "--targets", "b=v,"]).unwrap();
        assert_eq!(a.targets.len(), 2);
    }

    #[test]
    fn bad_values_are_named() {
        assert!(p(&["--duration", "soon"])
            .unwrap_err()
            .contains("--duration"));
        assert!(p(&["--rate", "-1"]).unwrap_err().contains("--rate"));
        assert!(p(&["--rounds", "0"]).unwrap_err().contains("--rounds"));
        assert!(p(&["--concurrency", "257"])
            .unwrap_err()
            .contains("--concurrency"));
        assert!(p(&["--targets", "us-east"])
            .unwrap_err()
            .contains("REGION=URL"));
        assert!(p(&["--load"]).unwrap_err().contains("--targets"));
        assert!(p(&["--frobnicate"]).unwrap_err().contains("--frobnicate"));
        assert!(p(&["--duration"]).unwrap_err().contains("--duration"));
        assert!(p(&["--duration", "forever"])
            .unwrap_err()
            .contains("--load"));
        assert!(p(&["--serve", "--load"]).is_err());
    }

    #[test]
    fn help_is_not_a_failure() {
        let e = parse(["--help".to_string()]).unwrap_err();
        assert_eq!(e.exit_code(), 0);
        let help = e.to_string();
        for flag in [
            "--duration",
            "--compare",
            "--targets",
            "PYROSCOPE_PROFILES_DIR",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        }
        assert!(!help.contains("--child"), "{help}");
        assert_eq!(parse(["--bogus".to_string()]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("1d"), None);
    }
}
