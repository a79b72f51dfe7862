//! `tracing-pyroscope-report DIR [--out FILE]`: writes the span-profile
//! report (one self-contained HTML page) for a profiles directory, a
//! `PYROSCOPE_PROFILES_DIR` holding pprof files and `spans.jsonl`.
//!
//! ```text
//! cargo install tracing-pyroscope --features cli
//! tracing-pyroscope-report target/profiles        # writes target/profiles/report.html
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{value_parser, Arg, Command};

fn command() -> Command {
    Command::new("tracing-pyroscope-report")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Writes the HTML span-profile report of a tracing-pyroscope profiles directory")
        .arg(
            Arg::new("dir")
                .value_name("DIR")
                .required(true)
                .value_parser(value_parser!(PathBuf))
                .help("The profiles directory (PYROSCOPE_PROFILES_DIR): *.pb.gz files and spans.jsonl"),
        )
        .arg(
            Arg::new("out")
                .short('o')
                .long("out")
                .value_name("FILE")
                .value_parser(value_parser!(PathBuf))
                .help("Where to write the report [default: DIR/report.html]"),
        )
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    let Some(dir) = matches.get_one::<PathBuf>("dir").cloned() else {
        // `dir` is required: clap has already exited with its usage.
        return ExitCode::from(2);
    };
    let out = matches
        .get_one::<PathBuf>("out")
        .cloned()
        .unwrap_or_else(|| dir.join("report.html"));
    match tracing_pyroscope::report::write_report(&dir, &out) {
        Ok(summary) => {
            println!(
                "{} spans in {} traces, {} pprof files, {} CPU samples ({} with a span id), {} span flame graphs",
                summary.spans,
                summary.traces,
                summary.files,
                summary.samples,
                summary.samples_with_span,
                summary.span_flame_graphs,
            );
            if summary.skipped_files > 0 {
                println!("skipped {} unreadable pprof file(s)", summary.skipped_files);
            }
            println!("report: {}", summary.path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_consistent() {
        command().debug_assert();
    }

    #[test]
    fn out_defaults_to_none_and_dir_is_required() {
        let m = command().try_get_matches_from(["x", "profiles"]).unwrap();
        assert_eq!(
            m.get_one::<PathBuf>("dir"),
            Some(&PathBuf::from("profiles"))
        );
        assert!(m.get_one::<PathBuf>("out").is_none());
        assert!(command().try_get_matches_from(["x"]).is_err());
    }
}
