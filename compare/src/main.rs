//! Side by side: tracing-pyroscope against pyroscope 2.x (pprof backend)
//! with `span_id` tags, on the same async workload, in one run.
//!
//! ```text
//! bash scripts/compare.sh                      # the comparison (arms a–d)
//! bash scripts/compare.sh idle                 # idle cost, 0/100/1000 threads
//! bash scripts/compare.sh tagcost              # layer cost vs tag cost
//! ```
//!
//! `run` (the default) starts a Pyroscope receiver on loopback, then runs
//! each arm in its own child process, rounds × arms, the order rotating
//! every round; each arm uploads its profiles to the receiver under its own
//! path. Then every arm's profiles are read through Google's pprof tool the
//! same way and the medians over rounds are printed as a table: wall and
//! CPU time as ratios to arm (a) of the same round, samples kept against
//! CPU time × rate, attribution accuracy, and request latency.

mod arms;
mod child;
mod idle;
mod measure;
mod receiver;
mod score;
mod tagcost;
mod workload;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arms::Arm;
use child::Settings;
use measure::median;
use workload::Params;

const USAGE: &str = "\
usage:
  compare [run] [--rounds 3] [--clients 24] [--requests 40] [--bursts 8]
                [--burst-ms 2] [--rate 100] [--interval-s 10] [--workers 2]
                [--arms abcd(e)] [--late-runtime] [--out DIR]
  compare idle [--threads 0,100,1000] [--seconds 10] [--rounds 3] [--arms abc]
  compare tagcost [--rounds 40]";

/// `--name value` options after the mode.
pub struct Options(BTreeMap<String, String>);

impl Options {
    fn parse(args: &[String]) -> Options {
        let mut map = BTreeMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                eprintln!("unexpected argument {a:?}\n{USAGE}");
                std::process::exit(2);
            };
            if name == "late-runtime" {
                map.insert(name.to_string(), "true".to_string());
                continue;
            }
            let Some(v) = it.next() else {
                eprintln!("--{name} needs a value\n{USAGE}");
                std::process::exit(2);
            };
            map.insert(name.to_string(), v.clone());
        }
        Options(map)
    }

    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.0.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("bad value for --{name}: {v:?}\n{USAGE}");
                std::process::exit(2);
            }),
        }
    }

    pub fn text(&self, name: &str, default: &str) -> String {
        self.0.get(name).cloned().unwrap_or_else(|| default.into())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("child") => {
            let arm = args[2]
                .chars()
                .next()
                .and_then(Arm::from_letter)
                .expect("arm letter");
            child::run(
                arm,
                &args[3],
                Path::new(&args[4]),
                &Settings::from_args(&args[5..]),
            );
        }
        Some("idle-child") => idle::child(&args[2..]),
        Some("idle") => idle::run(&Options::parse(&args[2..])),
        Some("tagcost") => tagcost::run(&Options::parse(&args[2..])),
        Some("run") => run(&Options::parse(&args[2..])),
        Some("-h" | "--help") => println!("{USAGE}"),
        _ => run(&Options::parse(&args[1..])),
    }
}

/// A child's `RESULT key=value ...` line.
type Fields = BTreeMap<String, String>;

fn field(f: &Fields, k: &str) -> f64 {
    f.get(k).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Runs `exe args`, passes its stderr through and returns its RESULT line.
pub fn run_child(args: &[String]) -> Fields {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        panic!("child {args:?} failed ({}): {stdout}", out.status);
    };
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One arm in one round: what the child measured and what its profiles
/// hold.
struct Measured {
    fields: Fields,
    score: score::Score,
}

fn run(o: &Options) {
    let settings = Settings {
        params: Params {
            clients: o.get("clients", 24usize).min(workload::BURNERS.len()),
            requests: o.get("requests", 40),
            bursts: o.get("bursts", 8),
            burst: Duration::from_secs_f64(o.get("burst-ms", 2.0) / 1e3),
        },
        rate: o.get("rate", 100),
        interval: Duration::from_secs_f64(o.get("interval-s", 10.0)),
        workers: o.get("workers", 2),
        late_runtime: o.get("late-runtime", false),
    };
    let rounds: usize = o.get("rounds", 3);
    let arms: Vec<Arm> = o
        .text("arms", "abcd")
        .chars()
        .filter_map(Arm::from_letter)
        .collect();
    let out = PathBuf::from(
        o.text(
            "out",
            &std::env::temp_dir()
                .join(format!("tracing-pyroscope-compare-{}", std::process::id()))
                .to_string_lossy(),
        ),
    );
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("create --out");
    let pprof = score::pprof();
    let url = receiver::start(&out).expect("start the receiver");
    let period_nanos = 1e9 / f64::from(settings.rate);
    eprintln!(
        "workload: {} clients × {} requests × {} bursts of {:?} CPU on {} tokio workers; \
         {} Hz, {:?} interval; {rounds} rounds of arms {}; profiles in {}",
        settings.params.clients,
        settings.params.requests,
        settings.params.bursts,
        settings.params.burst,
        settings.workers,
        settings.rate,
        settings.interval,
        arms.iter().map(|a| a.letter()).collect::<String>(),
        out.display()
    );

    let mut results: Vec<BTreeMap<char, Measured>> = Vec::new();
    for round in 0..rounds {
        let mut this_round = BTreeMap::new();
        for k in 0..arms.len() {
            let arm = arms[(k + round) % arms.len()];
            let prefix = format!("{}-r{round}", arm.letter());
            let dir = out.join(&prefix);
            let mut args = vec![
                "child".to_string(),
                arm.letter().to_string(),
                format!("{url}/{prefix}"),
                dir.to_string_lossy().into_owned(),
            ];
            args.extend(settings.to_args());
            let fields = run_child(&args);
            let truth: HashMap<u64, usize> = std::fs::read_to_string(dir.join("truth.tsv"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let (id, c) = l.split_once('\t')?;
                    Some((u64::from_str_radix(id, 16).ok()?, c.parse().ok()?))
                })
                .collect();
            let score = score::score(&pprof, &dir, &truth, period_nanos);
            eprintln!(
                "round {round} arm ({}) {}: wall {:.2} s, cpu {:.2} s, {:.0} samples",
                arm.letter(),
                arm.name(),
                field(&fields, "wall_s"),
                field(&fields, "cpu_total_s"),
                score.samples
            );
            this_round.insert(arm.letter(), Measured { fields, score });
        }
        results.push(this_round);
    }
    report(&results, &arms, &settings, period_nanos);
}

fn report(results: &[BTreeMap<char, Measured>], arms: &[Arm], s: &Settings, period_nanos: f64) {
    let rate = 1e9 / period_nanos;
    let per = |arm: char, f: &dyn Fn(&Measured, Option<&Measured>) -> f64| -> f64 {
        median(
            results
                .iter()
                .filter_map(|r| Some(f(r.get(&arm)?, r.get(&'a'))))
                .collect(),
        )
    };
    let ratio = |k: &'static str| {
        move |m: &Measured, a: Option<&Measured>| match a {
            Some(a) if field(&a.fields, k) > 0.0 => field(&m.fields, k) / field(&a.fields, k),
            _ => f64::NAN,
        }
    };
    println!(
        "\n{} rounds, medians; ratios are to arm (a) of the same round; \
         {} clients × {} requests × {} bursts of {:?}, {} Hz, {:?} interval, {} workers{}\n",
        results.len(),
        s.params.clients,
        s.params.requests,
        s.params.bursts,
        s.params.burst,
        s.rate,
        s.interval,
        s.workers,
        if s.late_runtime {
            ", runtime built after the profiler started"
        } else {
            ""
        }
    );
    println!(
        "| arm | wall ratio | CPU ratio | coverage (burn samples / burn CPU × rate) | samples / (process CPU × rate) | labelled | accuracy | p50 ms | p99 ms | peak RSS MiB | profiles (files, KiB) | tag calls |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for arm in arms {
        let c = arm.letter();
        let cov = per(c, &|m, _| {
            m.score.burn / (field(&m.fields, "burn_cpu_s") * rate).max(1e-9)
        });
        let kept = per(c, &|m, _| {
            m.score.samples / (field(&m.fields, "cpu_total_s") * rate).max(1e-9)
        });
        let labelled = per(c, &|m, _| m.score.labelled / m.score.burn.max(1e-9));
        let acc = per(c, &|m, _| m.score.correct / m.score.burn.max(1e-9));
        let profiled = *arm != Arm::None;
        let pct = |x: f64| {
            if profiled {
                format!("{:.1}%", x * 100.0)
            } else {
                "–".into()
            }
        };
        println!(
            "| ({c}) {} | {:.4} | {:.4} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0}, {:.0} | {:.0} |",
            arm.name(),
            per(c, &ratio("wall_s")),
            per(c, &ratio("cpu_total_s")),
            pct(cov),
            pct(kept),
            pct(labelled),
            pct(acc),
            per(c, &|m, _| field(&m.fields, "p50_ms")),
            per(c, &|m, _| field(&m.fields, "p99_ms")),
            per(c, &|m, _| field(&m.fields, "max_rss_kib")) / 1024.0,
            per(c, &|m, _| m.score.files as f64),
            per(c, &|m, _| m.score.bytes as f64 / 1024.0),
            per(c, &|m, _| field(&m.fields, "tag_calls")),
        );
    }
    println!("\nabsolute medians:");
    for arm in arms {
        let c = arm.letter();
        println!(
            "  ({c}) wall {:.3} s, process CPU {:.3} s (workload window {:.3} s), burn CPU {:.3} s, samples {:.0}, burn samples {:.0}",
            per(c, &|m, _| field(&m.fields, "wall_s")),
            per(c, &|m, _| field(&m.fields, "cpu_total_s")),
            per(c, &|m, _| field(&m.fields, "cpu_work_s")),
            per(c, &|m, _| field(&m.fields, "burn_cpu_s")),
            per(c, &|m, _| m.score.samples),
            per(c, &|m, _| m.score.burn),
        );
    }
    // Where (b)'s missing samples went, round by round.
    if arms.contains(&Arm::TracingPyroscope) {
        println!("\ncoverage accounting for (b), per round:");
        for (round, r) in results.iter().enumerate() {
            let Some(m) = r.get(&'b') else { continue };
            let expected = field(&m.fields, "burn_cpu_s") * rate;
            let all_expected = field(&m.fields, "cpu_total_s") * rate;
            println!(
                "  round {round}: burn CPU × rate {expected:.0}, burn samples {:.0} ({:.2}%); \
                 process CPU × rate {all_expected:.0}, samples in profiles {:.0}; \
                 handler counted {} taken (unweighted), {} dropped, {} degraded (leaf only); {} threads armed",
                m.score.burn,
                m.score.burn / expected.max(1e-9) * 100.0,
                m.score.samples,
                m.fields.get("taken").map_or("?", String::as_str),
                m.fields.get("dropped").map_or("?", String::as_str),
                m.fields.get("degraded").map_or("?", String::as_str),
                m.fields.get("threads").map_or("?", String::as_str),
            );
            let mut elsewhere: Vec<(&String, &f64)> = m.score.elsewhere.iter().collect();
            elsewhere.sort_by(|a, b| b.1.total_cmp(a.1));
            for (what, n) in elsewhere.iter().take(8) {
                println!("      {n:>6.0}  {what}");
            }
        }
    }
}
