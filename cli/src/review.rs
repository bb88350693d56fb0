//! `batchgate review`: list jobs held for review and record decisions on them.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use batchgate_shared::broker::Broker;
use batchgate_shared::config::Config;
use batchgate_shared::message::JobMessage;
use batchgate_shared::money::Micros;
use batchgate_shared::review::{
    DECISION_ROUTING_KEY, DECISION_SCHEMA_VERSION, OUTCOME_FIELD, OutcomeKind, ReviewDecision,
    ReviewOutcome, Verdict,
};
use batchgate_shared::store::Store;
use lapin::BasicProperties;

use crate::Failure;
use crate::status::print_output;

#[derive(clap::Subcommand)]
pub enum ReviewCommand {
    /// List the jobs held for review, oldest first.
    List(ListArguments),
    /// Approve a held job: it is then reserved and scheduled, or rejected if
    /// the budget no longer allows it.
    Approve(ApproveArguments),
    /// Reject a held job.
    Reject(RejectArguments),
}

#[derive(clap::Args)]
pub struct ListArguments {
    /// Only this team's jobs.
    #[arg(long)]
    team: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ApproveArguments {
    job_id: String,
    /// Name of the reviewer, recorded in the job's history.
    #[arg(long)]
    by: String,
    #[arg(long, default_value = "")]
    note: String,
    /// Seconds to wait for a scheduler to apply the decision.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[derive(clap::Args)]
pub struct RejectArguments {
    job_id: String,
    /// Name of the reviewer, recorded in the job's history.
    #[arg(long)]
    by: String,
    #[arg(long)]
    reason: String,
    /// Seconds to wait for a scheduler to apply the decision.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

pub async fn run(config: &Config, command: ReviewCommand) -> Result<ExitCode, Failure> {
    match command {
        ReviewCommand::List(arguments) => list(config, arguments).await,
        ReviewCommand::Approve(arguments) => {
            let text = arguments.note.trim().to_owned();
            let decision = (arguments.job_id, Verdict::Approve, arguments.by, text);
            decide(config, decision, arguments.timeout_secs).await
        }
        ReviewCommand::Reject(arguments) => {
            if arguments.reason.trim().is_empty() {
                return Err(Failure::Invalid(
                    "--reason must not be empty: the team reads it in the job's history".into(),
                ));
            }
            let text = arguments.reason.trim().to_owned();
            let decision = (arguments.job_id, Verdict::Reject, arguments.by, text);
            decide(config, decision, arguments.timeout_secs).await
        }
    }
}

/// A held job as `review list` shows it.
#[derive(serde::Serialize)]
struct HeldJob {
    job_id: String,
    team: String,
    held_since: chrono::DateTime<chrono::Utc>,
    provider: String,
    model: String,
    requests: Option<u64>,
    /// `None` when the model has no price.
    estimate_usd: Option<String>,
    reasons: Vec<String>,
    purpose: String,
    justification: String,
    expected_output: String,
}

fn held_job(job_id: &str, held_at: i64, record: &HashMap<String, String>) -> HeldJob {
    let field = |name: &str| record.get(name).cloned().unwrap_or_default();
    let manifest = serde_json::from_str::<JobMessage>(&field("message"))
        .ok()
        .map(|job| job.manifest);
    HeldJob {
        job_id: job_id.to_owned(),
        team: field("team"),
        held_since: chrono::DateTime::from_timestamp(held_at, 0).unwrap_or_default(),
        provider: field("provider"),
        model: field("model"),
        requests: field("requests").parse().ok(),
        estimate_usd: field("estimate_micros")
            .parse()
            .ok()
            .map(|micros| Micros(micros).to_string()),
        reasons: serde_json::from_str(&field("hold_reasons")).unwrap_or_default(),
        purpose: manifest
            .as_ref()
            .map(|manifest| manifest.purpose.clone())
            .unwrap_or_default(),
        justification: manifest
            .as_ref()
            .and_then(|manifest| manifest.justification.clone())
            .unwrap_or_default(),
        expected_output: manifest
            .and_then(|manifest| manifest.expected_output)
            .unwrap_or_default(),
    }
}

async fn list(config: &Config, arguments: ListArguments) -> Result<ExitCode, Failure> {
    if let Some(team) = &arguments.team
        && !config.teams.contains_key(team)
    {
        let known: Vec<&str> = config.teams.keys().map(String::as_str).collect();
        return Err(Failure::Invalid(format!(
            "unknown team {team:?}; configured teams: {}",
            known.join(", ")
        )));
    }
    let store = Store::connect(&config.redis).await?;
    let mut jobs = Vec::new();
    for (job_id, held_at) in store.held_jobs().await? {
        let record = store.job(&job_id).await?;
        let job = held_job(&job_id, held_at, &record);
        if arguments.team.as_ref().is_none_or(|team| *team == job.team) {
            jobs.push(job);
        }
    }
    if arguments.json {
        print_output(&format!("{}\n", serde_json::to_string_pretty(&jobs)?));
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        print_output("no jobs are held for review\n");
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!(
        "{:<28} {:<12} {:<20} {:>9} {:>14}  model\n",
        "job", "team", "held since (UTC)", "requests", "estimate USD"
    );
    for job in &jobs {
        out.push_str(&format!(
            "{:<28} {:<12} {:<20} {:>9} {:>14}  {} {}\n",
            job.job_id,
            job.team,
            job.held_since.format("%Y-%m-%d %H:%M:%S"),
            job.requests
                .map_or("-".to_owned(), |requests| requests.to_string()),
            job.estimate_usd.as_deref().unwrap_or("no price"),
            job.provider,
            job.model,
        ));
        for reason in &job.reasons {
            out.push_str(&format!("    held: {reason}\n"));
        }
        out.push_str(&format!("    purpose: {}\n", job.purpose));
        out.push_str(&format!("    justification: {}\n", job.justification));
        out.push_str(&format!("    expected output: {}\n", job.expected_output));
    }
    print_output(&out);
    Ok(ExitCode::SUCCESS)
}

/// Publishes a decision and waits until a scheduler applied it.
async fn decide(
    config: &Config,
    (job_id, verdict, by, text): (String, Verdict, String, String),
    timeout_secs: u64,
) -> Result<ExitCode, Failure> {
    if by.trim().is_empty() {
        return Err(Failure::Invalid("--by must name the reviewer".into()));
    }
    let store = Store::connect(&config.redis).await?;
    let job = store.job(&job_id).await?;
    let Some(state) = job.get("state") else {
        return Err(Failure::Invalid(format!("job {job_id} not found")));
    };
    if state != "held" {
        return Err(Failure::Invalid(format!(
            "job {job_id} is not held for review (state {state})"
        )));
    }
    let decision = ReviewDecision {
        schema_version: DECISION_SCHEMA_VERSION,
        decision_id: uuid::Uuid::new_v4().to_string(),
        job_id: job_id.clone(),
        verdict,
        by: by.trim().to_owned(),
        text,
        at: chrono::Utc::now(),
    };
    let broker = Broker::connect(&config.broker, "batchgate-review").await?;
    broker
        .declare_topology(&[config.worker.poll_interval_secs])
        .await?;
    let mut properties = BasicProperties::default().with_message_id(job_id.as_str().into());
    if let Some(user) = Broker::user_name(&config.broker.url) {
        properties = properties.with_user_id(user.as_str().into());
    }
    broker
        .publish_json(
            &broker.names.jobs_exchange(),
            DECISION_ROUTING_KEY,
            &decision,
            properties,
        )
        .await?;
    broker.close().await;

    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let job = store.job(&job_id).await?;
        let outcome = job
            .get(OUTCOME_FIELD)
            .and_then(|json| serde_json::from_str::<ReviewOutcome>(json).ok())
            .filter(|outcome| outcome.decision_id == decision.decision_id);
        if let Some(outcome) = outcome {
            println!("{job_id}: {}", outcome.message);
            let done = match outcome.outcome {
                OutcomeKind::Accepted => true,
                OutcomeKind::Rejected => verdict == Verdict::Reject,
                OutcomeKind::StillHeld | OutcomeKind::NotHeld => false,
            };
            return Ok(if done {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        if Instant::now() > deadline {
            return Err(Failure::Other(anyhow::anyhow!(
                "the decision on {job_id} was published, but no scheduler applied it within {timeout_secs} s; \
                 it stays queued until a scheduler runs"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
