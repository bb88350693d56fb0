//! `batchgate-sim`: serves the OpenAI Files and Batches simulator until SIGTERM
//! or Ctrl-C.

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::process::ExitCode;

use batchgate_simulator::SimulatorConfig;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Simulator of OpenAI's Files and Batches APIs for batchgate's tests.
///
/// Prints `batchgate-sim listening on <base URL>` on stdout once ready and logs
/// to stderr (filter with RUST_LOG, default `info`).
#[derive(Debug, Parser)]
#[command(name = "batchgate-sim", version)]
struct Args {
    /// IP address to listen on.
    #[arg(long, env = "BATCHGATE_SIM_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,

    /// TCP port to listen on. 0 picks a free port.
    #[arg(long, env = "BATCHGATE_SIM_PORT", default_value_t = 0)]
    port: u16,

    /// Allow a --bind address outside the loopback range.
    #[arg(
        long,
        env = "BATCHGATE_SIM_ALLOW_NON_LOOPBACK",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    allow_non_loopback: bool,

    /// Seed of every random draw: output order, failures, token counts and text.
    #[arg(long, env = "BATCHGATE_SIM_SEED", default_value_t = 0)]
    seed: u64,

    /// Time in seconds that a new batch stays `validating`.
    #[arg(
        long,
        env = "BATCHGATE_SIM_VALIDATING_SECS",
        default_value_t = 1.0,
        value_parser = parse_seconds,
    )]
    validating_secs: f64,

    /// Time in seconds that a batch stays `in_progress`.
    #[arg(
        long,
        env = "BATCHGATE_SIM_IN_PROGRESS_SECS",
        default_value_t = 3.0,
        value_parser = parse_seconds,
    )]
    in_progress_secs: f64,

    /// Time in seconds that a batch stays `finalizing`, and also `cancelling`.
    #[arg(
        long,
        env = "BATCHGATE_SIM_FINALIZING_SECS",
        default_value_t = 1.0,
        value_parser = parse_seconds,
    )]
    finalizing_secs: f64,

    /// Probability from 0.0 to 1.0 that a request fails with a 400 or a 500.
    #[arg(
        long,
        env = "BATCHGATE_SIM_FAILURE_RATIO",
        default_value_t = 0.0,
        value_parser = parse_ratio,
    )]
    failure_ratio: f64,

    /// Share from 0.0 to 1.0 of prompt tokens reported as cached.
    #[arg(
        long,
        env = "BATCHGATE_SIM_CACHED_RATIO",
        default_value_t = 0.0,
        value_parser = parse_ratio,
    )]
    cached_ratio: f64,
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("invalid duration '{text}': expected seconds such as 0.5"))?;
    // 1e9 s (about 31 years) keeps the conversion to ms far from u64 overflow.
    if seconds.is_finite() && (0.0..=1e9).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(format!(
            "invalid duration '{text}': expected seconds from 0 to 1000000000"
        ))
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text
        .parse()
        .map_err(|_| format!("invalid ratio '{text}': expected a number such as 0.2"))?;
    if ratio.is_finite() && (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!(
            "invalid ratio '{text}': expected a number from 0.0 to 1.0"
        ))
    }
}

fn seconds_to_ms(seconds: f64) -> u64 {
    // parse_seconds bounds the value, so the cast neither truncates nor saturates.
    (seconds * 1000.0).round() as u64
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    if !args.bind.is_loopback() && !args.allow_non_loopback {
        eprintln!(
            "batchgate-sim: rejected --bind {}: it is not a loopback address. Use 127.0.0.1 \
             or ::1, or pass --allow-non-loopback.",
            args.bind
        );
        return ExitCode::from(2);
    }

    let config = SimulatorConfig {
        seed: args.seed,
        validating_ms: seconds_to_ms(args.validating_secs),
        in_progress_ms: seconds_to_ms(args.in_progress_secs),
        finalizing_ms: seconds_to_ms(args.finalizing_secs),
        failure_ratio: args.failure_ratio,
        cached_ratio: args.cached_ratio,
    };
    tracing::info!(?config, "simulator settings");

    let listener = match tokio::net::TcpListener::bind((args.bind, args.port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "batchgate-sim: failed to listen on {}:{}: {error}",
                args.bind, args.port
            );
            return ExitCode::FAILURE;
        }
    };
    let simulator = match batchgate_simulator::start(config, listener).await {
        Ok(simulator) => simulator,
        Err(error) => {
            eprintln!("batchgate-sim: failed to start: {error}");
            return ExitCode::FAILURE;
        }
    };

    // Scripts parse this line to learn the port, so it is the only write to stdout.
    let mut stdout = std::io::stdout();
    let announced = writeln!(
        stdout,
        "batchgate-sim listening on {}",
        simulator.base_url()
    )
    .and_then(|()| stdout.flush());
    if let Err(error) = announced {
        tracing::error!(%error, "failed to write the listening line to stdout");
    }

    wait_for_stop_signal().await;
    tracing::info!("stop signal received, shutting down");
    simulator.shutdown().await;
    ExitCode::SUCCESS
}

/// Waits for Ctrl-C or, on Unix, SIGTERM.
async fn wait_for_stop_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "failed to listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
