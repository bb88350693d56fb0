//! `batchgate cancel`: ask the workers to cancel every part of a job.

use std::process::ExitCode;

use batchgate_shared::broker::Broker;
use batchgate_shared::config::Config;
use batchgate_shared::journal;
use batchgate_shared::message::{JobEvent, event};
use batchgate_shared::store::{Store, Transition};

use crate::Failure;
use crate::status::FINAL_STATES;

#[derive(clap::Args)]
pub struct CancelArguments {
    job_id: String,
    /// Name of the person requesting the cancellation, recorded in the job's history.
    #[arg(long, env = "USER", default_value = "unknown")]
    by: String,
}

/// Marks the job for cancellation; workers cancel each running part at its
/// next poll, read the partial results and bill the completed requests only.
pub async fn run(config: &Config, arguments: CancelArguments) -> Result<ExitCode, Failure> {
    let store = Store::connect(&config.redis).await?;
    let job = store.job(&arguments.job_id).await?;
    let Some(state) = job.get("state") else {
        return Err(Failure::Invalid(format!(
            "job {} not found",
            arguments.job_id
        )));
    };
    if FINAL_STATES.contains(&state.as_str()) {
        return Err(Failure::Invalid(format!(
            "job {} already ended ({state}); there is nothing to cancel",
            arguments.job_id
        )));
    }
    let broker = Broker::connect(&config.broker, "batchgate-cancel").await?;
    broker
        .declare_topology(&[config.worker.poll_interval_secs])
        .await?;
    let team = job.get("team").cloned().unwrap_or_default();
    // A held job has no reservation and no provider batch: it ends at once.
    if state == "held"
        && store
            .transition(&arguments.job_id, "held", "cancelled", None)
            .await?
            == Transition::Moved
    {
        let reason = format!("cancelled by {} while held for review", arguments.by);
        store
            .set_job_fields(&arguments.job_id, &[("reason", reason.clone())])
            .await?;
        let cancelled = JobEvent::new(event::CANCELLED, &arguments.job_id, &team, reason);
        journal::record(&broker, &store, &cancelled).await?;
        broker.close().await;
        println!(
            "{} cancelled; it was held for review, so nothing was reserved or sent",
            arguments.job_id
        );
        return Ok(ExitCode::SUCCESS);
    }
    store
        .set_job_fields(
            &arguments.job_id,
            &[("cancel_requested", arguments.by.clone())],
        )
        .await?;
    let message = format!("cancellation requested by {}", arguments.by);
    let requested = JobEvent::new(event::CANCEL_REQUESTED, &arguments.job_id, &team, message);
    journal::record(&broker, &store, &requested).await?;
    broker.close().await;
    println!(
        "cancellation of {} requested; running parts end at their next poll with partial results",
        arguments.job_id
    );
    Ok(ExitCode::SUCCESS)
}
