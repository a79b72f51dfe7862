//! # ride-sharing-demo
//!
//! Grafana's "traces to profiles" ride-sharing walkthrough, for Rust: three
//! region services (`us-east`, `eu-north`, `ap-south`) and a load generator,
//! instrumented with `tracing` + tracing-opentelemetry and profiled with
//! `tracing_pyroscope::from_env()`.
//!
//! `cargo run --release -p ride-sharing-demo` runs everything locally for
//! 30 s, profiling into `target/ride-sharing-demo/`, and writes
//! `report.html` there. With `PYROSCOPE_SERVER_ADDRESS` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set (see `docker-compose.yml`) the same
//! binary feeds the real Grafana stack.

use std::process::ExitCode;

mod args;
mod loadgen;
mod orchestrate;
mod protocol;
mod server;
mod telemetry;
mod wait;
mod work;

/// Allocation profiles per request span (`memory` profiles): the sampling
/// wrapper around the system allocator, inert unless
/// `PYROSCOPE_PROFILING_ALLOCATION_ENABLED=true` (the fleet sets it for the
/// region services).
#[global_allocator]
static GLOBAL: tracing_pyroscope::Allocator = tracing_pyroscope::Allocator::system();

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        // --help (on stdout, exit 0) or a bad argument (stderr, exit 2).
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    if args.check {
        println!("{args:?}");
        return ExitCode::SUCCESS;
    }
    let result = match args.mode {
        args::Mode::Serve => server::run(&args),
        args::Mode::Load => loadgen::run(&args),
        args::Mode::Demo => orchestrate::demo(&args),
        args::Mode::Compare => orchestrate::compare(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ride-sharing-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM, or (for a child of the demo) when stdin
/// reaches end of file: the parent closes it to stop its children, and a
/// parent that dies closes it too.
pub(crate) async fn shutdown_signal(child: bool) {
    let stdin_closed = async {
        if child {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                let _ = tx.send(());
            });
            let _ = rx.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = stdin_closed => {}
        _ = interrupt => {}
        _ = terminate => {}
    }
}
