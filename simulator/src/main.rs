//! `batchgate-sim`: serves the OpenAI and Anthropic batch API simulator until
//! SIGTERM or Ctrl-C.

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::process::ExitCode;

use batchgate_simulator::{FaultProfile, SimulatorConfig};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Simulator of OpenAI's Files and Batches APIs and Anthropic's Message Batches
/// API for batchgate's tests.
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

    /// Share from 0.0 to 1.0 of prompt tokens reported as cached (OpenAI).
    #[arg(
        long,
        env = "BATCHGATE_SIM_CACHED_RATIO",
        default_value_t = 0.0,
        value_parser = parse_ratio,
    )]
    cached_ratio: f64,

    /// Share from 0.0 to 1.0 of Anthropic prompt tokens reported as cache writes.
    #[arg(
        long,
        env = "BATCHGATE_SIM_ANTHROPIC_CACHE_WRITE_RATIO",
        default_value_t = 0.0,
        value_parser = parse_ratio,
    )]
    anthropic_cache_write_ratio: f64,

    /// Share from 0.0 to 1.0 of Anthropic prompt tokens reported as cache reads.
    /// With the write ratio it must add up to at most 1.0.
    #[arg(
        long,
        env = "BATCHGATE_SIM_ANTHROPIC_CACHE_READ_RATIO",
        default_value_t = 0.0,
        value_parser = parse_ratio,
    )]
    anthropic_cache_read_ratio: f64,

    /// Share from 0.0 to 1.0 of Anthropic cache writes reported with the 1 hour lifetime.
    #[arg(
        long = "anthropic-cache-1h-share",
        env = "BATCHGATE_SIM_ANTHROPIC_CACHE_1H_SHARE",
        default_value_t = 0.0,
        value_parser = parse_ratio,
    )]
    anthropic_cache_1h_share: f64,

    #[command(flatten)]
    faults: FaultArgs,
}

/// Run-level fault profile. Every fault is off by default.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Faults")]
struct FaultArgs {
    /// Number of API calls after startup that get 429 with a Retry-After header.
    #[arg(long, env = "BATCHGATE_SIM_RATE_LIMIT_REQUESTS", default_value_t = 0)]
    rate_limit_requests: u32,

    /// Value in seconds of the Retry-After header of injected 429s.
    #[arg(long, env = "BATCHGATE_SIM_RETRY_AFTER_SECS", default_value_t = 1)]
    retry_after_secs: u64,

    /// Number of API calls, after the rate limited ones, that get a server error.
    #[arg(long, env = "BATCHGATE_SIM_SERVER_ERROR_REQUESTS", default_value_t = 0)]
    server_error_requests: u32,

    /// HTTP status of injected server errors: 500, 502 or 503.
    #[arg(
        long,
        env = "BATCHGATE_SIM_SERVER_ERROR_STATUS",
        default_value_t = 500,
        value_parser = parse_server_error_status,
    )]
    server_error_status: u16,

    /// Delay in seconds before every API response, fractions allowed.
    #[arg(
        long,
        env = "BATCHGATE_SIM_RESPONSE_DELAY_SECS",
        default_value_t = 0.0,
        value_parser = parse_seconds,
    )]
    response_delay_secs: f64,

    /// Extra seconds that OpenAI batches stay `finalizing` and Anthropic batches
    /// stay `in_progress`.
    #[arg(
        long,
        env = "BATCHGATE_SIM_FINALIZING_EXTRA_SECS",
        default_value_t = 0.0,
        value_parser = parse_seconds,
    )]
    finalizing_extra_secs: f64,

    /// Age in seconds at which unfinished batches expire.
    #[arg(long, env = "BATCHGATE_SIM_EXPIRE_AFTER_SECS", value_parser = parse_seconds)]
    expire_after_secs: Option<f64>,

    /// Make every request fail, as with --failure-ratio 1.
    #[arg(
        long,
        env = "BATCHGATE_SIM_ALL_REQUESTS_FAIL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    all_requests_fail: bool,

    /// Report a missing OpenAI error file as "" instead of null.
    #[arg(
        long,
        env = "BATCHGATE_SIM_EMPTY_ERROR_FILE_ID",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    empty_error_file_id: bool,

    /// Make OpenAI batches fail validation with `token_limit_exceeded`.
    #[arg(
        long,
        env = "BATCHGATE_SIM_TOKEN_LIMIT_EXCEEDED",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    token_limit_exceeded: bool,

    /// 1-based line of each result file that is cut in half, making it invalid JSON.
    #[arg(
        long,
        env = "BATCHGATE_SIM_MALFORMED_LINE_AT",
        value_parser = clap::value_parser!(u64).range(1..),
    )]
    malformed_line_at: Option<u64>,

    /// Number of lines after which result downloads stop, mid-line.
    #[arg(
        long,
        env = "BATCHGATE_SIM_TRUNCATE_RESULTS_AT_LINE",
        value_parser = clap::value_parser!(u64).range(1..),
    )]
    truncate_results_at_line: Option<u64>,

    /// Repeat one succeeded line in each result file.
    #[arg(
        long,
        env = "BATCHGATE_SIM_DUPLICATE_CUSTOM_ID",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    duplicate_custom_id: bool,
}

impl FaultArgs {
    fn to_profile(&self) -> FaultProfile {
        FaultProfile {
            rate_limit_requests: self.rate_limit_requests,
            retry_after_secs: self.retry_after_secs,
            server_error_requests: self.server_error_requests,
            server_error_status: self.server_error_status,
            response_delay_ms: seconds_to_ms(self.response_delay_secs),
            finalizing_extra_ms: seconds_to_ms(self.finalizing_extra_secs),
            empty_error_file_id: self.empty_error_file_id,
            token_limit_exceeded: self.token_limit_exceeded,
            malformed_line_at: self.malformed_line_at,
            truncate_results_at_line: self.truncate_results_at_line,
            duplicate_custom_id: self.duplicate_custom_id,
            expire_after_ms: self.expire_after_secs.map(seconds_to_ms),
            all_requests_fail: self.all_requests_fail,
        }
    }
}

fn parse_server_error_status(text: &str) -> Result<u16, String> {
    match text {
        "500" | "502" | "503" => text
            .parse()
            .map_err(|_| format!("invalid server error status '{text}'")),
        _ => Err(format!(
            "invalid server error status '{text}': expected 500, 502 or 503"
        )),
    }
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
        anthropic_cache_write_ratio: args.anthropic_cache_write_ratio,
        anthropic_cache_read_ratio: args.anthropic_cache_read_ratio,
        anthropic_cache_1h_share: args.anthropic_cache_1h_share,
        faults: args.faults.to_profile(),
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

    // Listen for SIGTERM before announcing the port, so that a caller that stops
    // the simulator right after reading the line is never met by the default action.
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());

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

    #[cfg(unix)]
    wait_for_stop_signal(terminate).await;
    #[cfg(not(unix))]
    wait_for_stop_signal().await;
    tracing::info!("stop signal received, shutting down");
    simulator.shutdown().await;
    ExitCode::SUCCESS
}

/// Waits for Ctrl-C or SIGTERM, whose listener was set up by the caller.
#[cfg(unix)]
async fn wait_for_stop_signal(terminate: std::io::Result<tokio::signal::unix::Signal>) {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "failed to listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match terminate {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
async fn wait_for_stop_signal() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::error!(%error, "failed to listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}
