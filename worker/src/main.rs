#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use batchgate_shared::config::Config;
use clap::Parser;

/// Runs admitted batchgate jobs at the provider and records their cost.
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
    let worker = batchgate_worker::Worker::connect(config)
        .await
        .context("worker cannot start")?;
    worker
        .run(batchgate_shared::telemetry::shutdown_signal())
        .await?;
    worker.broker.close().await;
    Ok(())
}
