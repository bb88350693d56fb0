#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use batchgate_shared::config::Config;
use clap::Parser;

/// Admits submitted batchgate jobs against team budgets.
#[derive(Parser)]
#[command(version)]
struct Arguments {
    /// Configuration file.
    #[arg(
        long,
        env = "BATCHGATE_CONFIG",
        default_value = "config/batchgate.toml"
    )]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    batchgate_shared::telemetry::init_logging("info");
    let arguments = Arguments::parse();
    let config = Config::load(&arguments.config)?;
    let scheduler = batchgate_scheduler::Scheduler::connect(config)
        .await
        .context("scheduler cannot start")?;
    scheduler
        .run(batchgate_shared::telemetry::shutdown_signal())
        .await?;
    scheduler.broker.close().await;
    Ok(())
}
