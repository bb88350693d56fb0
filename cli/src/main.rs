//! `batchgate`: submit jobs, follow their status and read the ledger.
//!
//! Exit codes: 0 on success, 2 when the manifest, input or arguments are
//! invalid (nothing was published), 1 for any other failure.

#![forbid(unsafe_code)]

mod budget;
mod cancel;
mod cost;
mod export;
mod ledger;
mod reprice;
mod review;
mod status;
mod submit;

use std::path::PathBuf;
use std::process::ExitCode;

use batchgate_shared::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "batchgate",
    version,
    about = "Governed LLM batch jobs: submit, follow, account"
)]
struct Arguments {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "BATCHGATE_CONFIG",
        default_value = "config/batchgate.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a manifest and its input file, then publish the job.
    Submit(submit::SubmitArguments),
    /// Print a job's state, provider batch and event history.
    Status(status::StatusArguments),
    /// Cancel every part of a job; completed requests are still billed.
    Cancel(cancel::CancelArguments),
    /// Wait until jobs reach a final state, then print each outcome.
    Wait(status::WaitArguments),
    /// Show team budgets or set a month's limit.
    #[command(subcommand)]
    Budget(budget::BudgetCommand),
    /// Replay the ledger and print a month's records and per-team totals.
    Ledger(ledger::LedgerArguments),
    /// Price local result files of one provider batch with the price table,
    /// printing the totals the worker would record.
    Cost(cost::CostArguments),
    /// List jobs held for review, approve or reject them.
    #[command(subcommand)]
    Review(review::ReviewCommand),
}

/// A failure that the command reports and maps to an exit code.
pub enum Failure {
    /// Invalid manifest, input or arguments: nothing was published.
    Invalid(String),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure::Other(error.into())
    }
}

fn main() -> ExitCode {
    // The command reports its own errors; the AMQP client's connection log would repeat them.
    batchgate_shared::telemetry::init_logging("warn,lapin=off");
    let arguments = Arguments::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(arguments)) {
        Ok(code) => code,
        Err(Failure::Invalid(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Other(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(arguments: Arguments) -> Result<ExitCode, Failure> {
    match arguments.command {
        // `cost` reads only the price table, so it runs without a configuration
        // file when it is given one.
        Command::Cost(cost) => {
            let price_table = match &cost.price_table {
                Some(path) => path.clone(),
                None => {
                    Config::load(&arguments.config)
                        .map_err(|error| Failure::Invalid(error.to_string()))?
                        .price_table
                }
            };
            tokio::task::spawn_blocking(move || cost::run(&price_table, cost)).await?
        }
        command => run_with_config(&arguments.config, command).await,
    }
}

async fn run_with_config(path: &std::path::Path, command: Command) -> Result<ExitCode, Failure> {
    let config = Config::load(path).map_err(|error| Failure::Invalid(error.to_string()))?;
    match command {
        Command::Submit(submit) => submit::run(&config, submit).await,
        Command::Status(status) => status::run(&config, status).await,
        Command::Cancel(cancel) => cancel::run(&config, cancel).await,
        Command::Wait(wait) => status::wait(&config, wait).await,
        Command::Ledger(ledger) => ledger::run(&config, ledger).await,
        Command::Budget(budget) => budget::run(&config, budget).await,
        Command::Review(review) => review::run(&config, review).await,
        Command::Cost(cost) => {
            tokio::task::spawn_blocking(move || cost::run(&config.price_table, cost)).await?
        }
    }
}
