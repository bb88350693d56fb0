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
pub const FINAL_STATES: [&str; 5] = [
    "completed",
    "rejected",
    "failed",
    "cancelled",
    "needs_review",
];

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
            "job {} not found (Redis key prefix {:?}); a published message that was not a valid job \
             is in the queue {}.dead.letters with the reason",
            arguments.job_id,
            config.redis.prefix,
            config.broker.prefix
        )));
    }
    let parts = store.parts(&arguments.job_id).await?;
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
        fields.remove("plan");
        let parts: Vec<_> = parts
            .iter()
            .map(|part| {
                let mut part = part.clone();
                part.remove("poll_chain");
                part
            })
            .collect();
        let output = serde_json::json!({
            "job_id": arguments.job_id,
            "job": fields,
            "parts": parts,
            "history": history,
        });
        print_output(&format!("{}\n", serde_json::to_string_pretty(&output)?));
        return Ok(ExitCode::SUCCESS);
    }
    print_status(&arguments.job_id, &job, &parts, &history);
    Ok(ExitCode::SUCCESS)
}

fn print_status(
    job_id: &str,
    job: &HashMap<String, String>,
    parts: &[HashMap<String, String>],
    history: &[JobEvent],
) {
    use std::fmt::Write;
    let mut out = String::new();
    let field = |name: &str| job.get(name).map(String::as_str).unwrap_or("-");
    let amount = |record: &HashMap<String, String>, name: &str| {
        record
            .get(name)
            .and_then(|value| value.parse().ok())
            .map(|micros| Micros(micros).to_string())
    };
    let _ = writeln!(out, "job             {job_id}");
    let _ = writeln!(out, "state           {}", field("state"));
    let _ = writeln!(out, "team            {}", field("team"));
    let _ = writeln!(out, "budget month    {}", field("month"));
    let _ = writeln!(
        out,
        "provider        {} ({})",
        field("provider"),
        field("model")
    );
    let _ = writeln!(
        out,
        "estimate        {} USD",
        amount(job, "estimate_micros").unwrap_or_else(|| "-".into())
    );
    let _ = writeln!(
        out,
        "billed          {} USD",
        amount(job, "billed_cost_micros").unwrap_or_else(|| "-".into())
    );
    if let Some(by) = job.get("cancel_requested") {
        let _ = writeln!(out, "cancelled by    {by}");
    }
    if let Some(reason) = job.get("reason") {
        let _ = writeln!(out, "reason          {reason}");
    }
    if job.get("state").is_some_and(|state| state == "held") {
        let reasons: Vec<String> = job
            .get("hold_reasons")
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        for reason in reasons {
            let _ = writeln!(out, "held            {reason}");
        }
        let _ = writeln!(
            out,
            "next step       a reviewer runs `batchgate review approve` or `reject`"
        );
    }
    if !parts.is_empty() {
        let _ = writeln!(out, "parts");
        for (index, part) in parts.iter().enumerate() {
            let get = |name: &str| part.get(name).map(String::as_str).unwrap_or("-");
            let _ = writeln!(
                out,
                "  {}/{}  {:<12} {:>6} requests  {} ({})  billed {}",
                index + 1,
                parts.len(),
                get("state"),
                get("requests"),
                get("provider_batch_id"),
                get("provider_status"),
                amount(part, "billed_cost_micros").unwrap_or_else(|| "-".into())
            );
        }
    }
    let _ = writeln!(out, "history");
    for event in history {
        let _ = writeln!(
            out,
            "  {}  {:<20} {}",
            event.at.format("%Y-%m-%dT%H:%M:%SZ"),
            event.event,
            event.message
        );
    }
    print_output(&out);
}

/// How long `wait` accepts an unknown job id, which the scheduler may not have read yet.
const UNKNOWN_JOB_GRACE: Duration = Duration::from_secs(30);

pub async fn wait(config: &Config, arguments: WaitArguments) -> Result<ExitCode, Failure> {
    let store = Store::connect(&config.redis).await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(arguments.timeout_secs);
    let mut pending: Vec<String> = arguments.job_ids.clone();
    let mut output = String::new();
    let mut announced_holds: Vec<String> = Vec::new();
    while !pending.is_empty() {
        let mut still_pending = Vec::new();
        for job_id in pending {
            let job = store.job(&job_id).await?;
            let state = job.get("state").map(String::as_str).unwrap_or("");
            if state.is_empty() && started.elapsed() > UNKNOWN_JOB_GRACE {
                return Err(Failure::Invalid(format!(
                    "job {job_id} not found after {} s: was it submitted with this configuration's prefixes?",
                    UNKNOWN_JOB_GRACE.as_secs()
                )));
            }
            if state == "held" && !announced_holds.contains(&job_id) {
                eprintln!("{job_id} is held for review; waiting for a reviewer's decision");
                announced_holds.push(job_id.clone());
            }
            if FINAL_STATES.contains(&state) {
                let history = store.history(&job_id).await?;
                let message = outcome_message(&history).replace('\n', " | ");
                output.push_str(&format!("{job_id}\t{state}\t{message}\n"));
            } else {
                still_pending.push(job_id);
            }
        }
        pending = still_pending;
        if !pending.is_empty() {
            if Instant::now() > deadline {
                print_output(&output);
                return Err(Failure::Other(anyhow::anyhow!(
                    "timed out after {} s waiting for: {}",
                    arguments.timeout_secs,
                    pending.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    print_output(&output);
    Ok(ExitCode::SUCCESS)
}

/// Returns the message of the job's last event, skipping rejections of later
/// submissions that reused its id.
fn outcome_message(history: &[String]) -> String {
    history
        .iter()
        .rev()
        .filter_map(|json| serde_json::from_str::<JobEvent>(json).ok())
        .find(|event| event.detail.get("duplicate").is_none())
        .map(|event| event.message)
        .unwrap_or_default()
}

/// Writes command output to stdout; a closed pipe (for example `| head`) is not an error.
pub fn print_output(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
