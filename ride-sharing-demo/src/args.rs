//! Command-line arguments, parsed by hand.

use std::path::PathBuf;
use std::time::Duration;

pub(crate) const USAGE: &str = "\
ride-sharing-demo: Grafana's ride-sharing \"traces to profiles\" demo, for Rust.

USAGE:
  ride-sharing-demo [--duration 30s] [--out DIR] [--rate N]
  ride-sharing-demo --compare [--duration 30s] [--rounds 5] [--concurrency 4] [--sequential]
      Runs three region services (us-east, eu-north, ap-south) and a load
      generator as separate processes for --duration, profiling into --out
      (default: <target dir>/ride-sharing-demo), then writes DIR/report.html.
      --compare instead measures throughput with profiling off vs on: two
      such fleets side by side (or --sequential), each with --concurrency
      closed-loop clients, in --rounds rounds within --duration; prints both
      and their ratio.
  ride-sharing-demo --serve --region REGION [--port 5000] [--bind 0.0.0.0]
      One region service (the docker-compose services run this).
  ride-sharing-demo --load --targets REGION=URL,... [--duration D|forever] [--rate N]
      The load generator alone (docker-compose).
  Add --check to any of these to validate the arguments and exit.

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

impl Default for Args {
    fn default() -> Self {
        Args {
            mode: Mode::Demo,
            duration: Some(Duration::from_secs(30)),
            out: None,
            rate: 10.0,
            concurrency: None,
            rounds: 5,
            sequential: false,
            region: None,
            port: 5000,
            bind: "127.0.0.1".to_string(),
            targets: Vec::new(),
            child: false,
            check: false,
        }
    }
}

pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args::default();
    let args: Vec<String> = args.into_iter().collect();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg.as_str(), None),
        };
        let mut take = || -> Result<String, String> {
            if let Some(v) = inline {
                return Ok(v.to_string());
            }
            let v = args.get(i).ok_or_else(|| format!("{flag} needs a value"))?;
            i += 1;
            Ok(v.clone())
        };
        match flag {
            "-h" | "--help" => return Err(String::new()),
            "--serve" => a.mode = Mode::Serve,
            "--load" => a.mode = Mode::Load,
            "--compare" => a.mode = Mode::Compare,
            "--child" => a.child = true,
            "--check" => a.check = true,
            "--sequential" => a.sequential = true,
            "--duration" => {
                let v = take()?;
                a.duration = if v == "forever" {
                    None
                } else {
                    Some(parse_duration(&v).ok_or_else(|| {
                        format!("--duration {v:?}: expected e.g. 30s, 2m, 500ms or forever")
                    })?)
                };
            }
            "--out" => a.out = Some(PathBuf::from(take()?)),
            "--rate" => {
                let v = take()?;
                a.rate = v
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r > 0.0 && *r <= 10_000.0)
                    .ok_or_else(|| {
                        format!("--rate {v:?}: expected orders per second, 0 < N <= 10000")
                    })?;
            }
            "--concurrency" => {
                let v = take()?;
                a.concurrency = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|c| (1..=256).contains(c))
                        .ok_or_else(|| format!("--concurrency {v:?}: expected 1..=256"))?,
                );
            }
            "--rounds" => {
                let v = take()?;
                a.rounds = v
                    .parse::<u32>()
                    .ok()
                    .filter(|r| (1..=100).contains(r))
                    .ok_or_else(|| format!("--rounds {v:?}: expected 1..=100"))?;
            }
            "--region" => a.region = Some(take()?),
            "--port" => {
                let v = take()?;
                a.port = v
                    .parse()
                    .map_err(|_| format!("--port {v:?}: expected a port number (0 = any)"))?;
            }
            "--bind" => a.bind = take()?,
            "--targets" => {
                let v = take()?;
                for t in v.split(',').filter(|t| !t.is_empty()) {
                    let (region, url) = t.split_once('=').ok_or_else(|| {
                        format!("--targets {t:?}: expected REGION=URL, e.g. us-east=http://us-east:5000")
                    })?;
                    a.targets
                        .push((region.to_string(), url.trim_end_matches('/').to_string()));
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.mode == Mode::Serve && a.region.is_none() {
        a.region = std::env::var("REGION").ok().filter(|r| !r.is_empty());
        if a.region.is_none() {
            return Err("--serve needs --region (or REGION)".to_string());
        }
    }
    if a.mode == Mode::Load && a.targets.is_empty() {
        return Err("--load needs --targets REGION=URL,...".to_string());
    }
    if a.duration.is_none() && a.mode != Mode::Load && a.mode != Mode::Serve {
        return Err("--duration forever is only for --load".to_string());
    }
    Ok(a)
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
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_flags() {
        let a = p(&[]).unwrap();
        assert_eq!(a.mode, Mode::Demo);
        assert_eq!(a.duration, Some(Duration::from_secs(30)));
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
            a.targets[0],
            ("us-east".to_string(), "http://h:5000".to_string())
        );
        assert_eq!(a.duration, None);
    }

    #[test]
    fn bad_values_are_named() {
        assert!(p(&["--duration", "soon"])
            .unwrap_err()
            .contains("--duration"));
        assert!(p(&["--rate", "-1"]).unwrap_err().contains("--rate"));
        assert!(p(&["--load"]).unwrap_err().contains("--targets"));
        assert!(p(&["--frobnicate"]).unwrap_err().contains("--frobnicate"));
        assert!(p(&["--duration"]).unwrap_err().contains("needs a value"));
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
