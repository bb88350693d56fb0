//! Taking an admitted job from a ready queue: record its parts, create them.

use batchgate_shared::Result;
use batchgate_shared::input::PartBounds;
use batchgate_shared::message::JobMessage;
use tracing::Instrument;

use crate::Worker;

impl Worker {
    pub(crate) async fn start_job(&self, body: &[u8]) -> Result<()> {
        let job: JobMessage = match serde_json::from_slice(body) {
            Ok(job) => job,
            Err(error) => {
                let reason = format!("invalid ready message: {error}");
                tracing::warn!(error = %reason, "Ready message dead-lettered");
                self.broker
                    .dead_letter(&self.broker.names.jobs_exchange(), body, &reason)
                    .await?;
                return Ok(());
            }
        };
        let span = tracing::info_span!(
            "job",
            job_id = %job.manifest.job_id,
            team = %job.manifest.owner_team,
            provider = %job.manifest.provider,
        );
        self.start_job_in_span(&job, body).instrument(span).await
    }

    async fn start_job_in_span(&self, job: &JobMessage, body: &[u8]) -> Result<()> {
        let job_id = &job.manifest.job_id;
        let stored = self.store.job(job_id).await?;
        let state = stored.get("state").map(String::as_str).unwrap_or("");
        match state {
            "accepted" | "running" => {}
            "" => {
                let reason = format!("job {job_id} was never admitted by a scheduler");
                tracing::warn!(error = %reason, "Ready message dead-lettered");
                let queue = self.broker.names.ready_queue(&job.manifest.provider);
                self.broker.dead_letter(&queue, body, &reason).await?;
                return Ok(());
            }
            _ => {
                tracing::info!(
                    state,
                    "Ready message for a job already past creation, ignoring it"
                );
                return Ok(());
            }
        }

        let plan = stored
            .get("plan")
            .map(|plan| parse_plan(plan))
            .unwrap_or_default();
        if plan.is_empty() {
            let reason = "the job record has no part plan; resubmit it".to_owned();
            self.store
                .set_job_fields(
                    job_id,
                    &[("state", "failed".into()), ("reason", reason.clone())],
                )
                .await?;
            tracing::error!(error = %reason, "Cannot run job");
            return Ok(());
        }
        for (index, bounds) in plan.iter().enumerate() {
            let fields = [
                ("first_line", bounds.first_line.to_string()),
                ("requests", bounds.requests.to_string()),
                ("bytes", bounds.bytes.to_string()),
            ];
            self.store.init_part(job_id, index as u32, &fields).await?;
        }
        self.store
            .set_job_fields(job_id, &[("state", "running".to_owned())])
            .await?;
        for (index, bounds) in plan.iter().enumerate() {
            self.create_part(job, index as u32, plan.len() as u32, bounds)
                .await?;
        }
        Ok(())
    }
}

/// Reads the scheduler's part plan, `[[first_line, requests, bytes], ...]`.
fn parse_plan(plan: &str) -> Vec<PartBounds> {
    let rows: Vec<[u64; 3]> = serde_json::from_str(plan).unwrap_or_default();
    rows.into_iter()
        .map(|[first_line, requests, bytes]| PartBounds {
            first_line,
            requests,
            bytes,
        })
        .collect()
}
