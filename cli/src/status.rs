//! `batchgate status` and `batchgate wait`: a job's state and history from Redis.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use batchgate_shared::config::Config;
use batchgate_shared::message::JobEvent;
use batchgate_shared::money::Micros;
use batchgate_shared::store::Store;

use crate::Failure;

/// States after which a job changes no more.
pub const FINAL_STATES: [&str; 4] = ["completed", "rejected", "failed", "needs_review"];

#[derive(clap::Args)]
pub struct StatusArguments {
    job_id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct WaitArguments {
    #[arg(required = true)]
    job_ids: Vec<String>,
    /// Seconds to wait before giving up with exit code 1.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

pub async fn run(config: &Config, arguments: StatusArguments) -> Result<ExitCode, Failure> {
    let store = Store::connect(&config.redis).await?;
    let job = store.job(&arguments.job_id).await?;
    if job.is_empty() {
        return Err(Failure::Other(anyhow::anyhow!(
            "job {} not found (Redis key prefix {:?})",
            arguments.job_id,
            config.redis.prefix
        )));
    }
    let history: Vec<JobEvent> = store
        .history(&arguments.job_id)
        .await?
        .iter()
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect();
    if arguments.json {
        let mut fields = job.clone();
        fields.remove("message");
        fields.remove("fingerprint");
        fields.remove("poll_chain");
        let output =
            serde_json::json!({"job_id": arguments.job_id, "job": fields, "history": history});
        println!("{}", serde_json::to_string_pretty(&output)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_status(&arguments.job_id, &job, &history);
    Ok(ExitCode::SUCCESS)
}

fn print_status(job_id: &str, job: &HashMap<String, String>, history: &[JobEvent]) {
    let field = |name: &str| job.get(name).map(String::as_str).unwrap_or("-");
    let amount = |name: &str| {
        job.get(name)
            .and_then(|value| value.parse().ok())
            .map(|micros| Micros(micros).to_string())
    };
    println!("job             {job_id}");
    println!("state           {}", field("state"));
    println!("team            {}", field("team"));
    println!("budget month    {}", field("month"));
    println!("provider        {} ({})", field("provider"), field("model"));
    println!(
        "provider batch  {} ({})",
        field("provider_batch_id"),
        field("provider_status")
    );
    println!(
        "estimate        {} USD",
        amount("estimate_micros").unwrap_or_else(|| "-".into())
    );
    println!(
        "billed          {} USD",
        amount("billed_cost_micros").unwrap_or_else(|| "-".into())
    );
    if let Some(reason) = job.get("reason") {
        println!("reason          {reason}");
    }
    println!("history");
    for event in history {
        println!(
            "  {}  {:<18} {}",
            event.at.format("%Y-%m-%dT%H:%M:%SZ"),
            event.event,
            event.message
        );
    }
}

pub async fn wait(config: &Config, arguments: WaitArguments) -> Result<ExitCode, Failure> {
    let store = Store::connect(&config.redis).await?;
    let deadline = Instant::now() + Duration::from_secs(arguments.timeout_secs);
    let mut pending: Vec<String> = arguments.job_ids.clone();
    while !pending.is_empty() {
        let mut still_pending = Vec::new();
        for job_id in pending {
            let job = store.job(&job_id).await?;
            let state = job.get("state").map(String::as_str).unwrap_or("");
            if FINAL_STATES.contains(&state) {
                let last = store
                    .history(&job_id)
                    .await?
                    .last()
                    .and_then(|json| serde_json::from_str::<JobEvent>(json).ok());
                let message = last.map(|event| event.message).unwrap_or_default();
                println!("{job_id}\t{state}\t{message}");
            } else {
                still_pending.push(job_id);
            }
        }
        pending = still_pending;
        if !pending.is_empty() {
            if Instant::now() > deadline {
                return Err(Failure::Other(anyhow::anyhow!(
                    "timed out after {} s waiting for: {}",
                    arguments.timeout_secs,
                    pending.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
