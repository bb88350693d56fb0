//! Durable polling: one message per poll, delayed in a wait queue.
//!
//! Each job has one poll chain, named by a random id stored in the job's
//! record. A poll message from another chain (for example one left behind
//! before a restart started a new chain) is dropped, so a job is never polled
//! by two chains at once.

use batchgate_shared::Result;
use batchgate_shared::message::JobMessage;
use chrono::Utc;
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::Worker;

pub const POLL_SCHEMA_VERSION: u32 = 1;

/// A request to poll one provider batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollMessage {
    pub schema_version: u32,
    pub job_id: String,
    pub provider_batch_id: String,
    pub chain: String,
    pub polls: u64,
}

impl Worker {
    /// Starts a new poll chain for a job, replacing any earlier one.
    pub(crate) async fn start_poll_chain(&self, job_id: &str, batch_id: &str) -> Result<()> {
        let chain = uuid::Uuid::new_v4().to_string();
        self.store
            .set_job_fields(job_id, &[("poll_chain", chain.clone())])
            .await?;
        let poll = PollMessage {
            schema_version: POLL_SCHEMA_VERSION,
            job_id: job_id.to_owned(),
            provider_batch_id: batch_id.to_owned(),
            chain,
            polls: 0,
        };
        self.schedule_poll(&poll).await
    }

    async fn schedule_poll(&self, poll: &PollMessage) -> Result<()> {
        let queue = self
            .broker
            .names
            .poll_wait_queue(self.config.worker.poll_interval_secs);
        self.broker
            .publish_json("", &queue, poll, BasicProperties::default())
            .await
    }

    /// Restarts the poll chain of every in-flight job not polled for three intervals,
    /// in case its poll message was lost with a broker that kept no state.
    pub(crate) async fn resume_inflight(&self) -> Result<()> {
        let stale_after = 3 * self.config.worker.poll_interval_secs as i64;
        for job_id in self.store.inflight_jobs().await? {
            let job = self.store.job(&job_id).await?;
            let last = job
                .get("last_polled_at")
                .and_then(|at| at.parse::<i64>().ok())
                .unwrap_or(0);
            let Some(batch_id) = job.get("provider_batch_id") else {
                continue;
            };
            if job.get("state").map(String::as_str) == Some("polling")
                && Utc::now().timestamp() - last > stale_after
            {
                tracing::info!(job_id, batch_id, "Resuming polls of an in-flight job");
                self.start_poll_chain(&job_id, batch_id).await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn poll(&self, body: &[u8]) -> Result<()> {
        let poll: PollMessage = match serde_json::from_slice(body) {
            Ok(poll) => poll,
            Err(error) => {
                let reason = format!("invalid poll message: {error}");
                self.broker
                    .dead_letter(&self.broker.names.poll_due_queue(), body, &reason)
                    .await?;
                return Ok(());
            }
        };
        let stored = self.store.job(&poll.job_id).await?;
        let team = stored.get("team").cloned().unwrap_or_default();
        let span = tracing::info_span!(
            "job",
            job_id = %poll.job_id,
            team = %team,
            provider = "openai",
            batch_id = %poll.provider_batch_id,
        );
        self.poll_in_span(poll, stored).instrument(span).await
    }

    async fn poll_in_span(
        &self,
        poll: PollMessage,
        stored: std::collections::HashMap<String, String>,
    ) -> Result<()> {
        if stored.get("poll_chain") != Some(&poll.chain)
            || stored.get("state").map(String::as_str) != Some("polling")
        {
            tracing::debug!("Dropping a poll of a superseded chain or a finished job");
            return Ok(());
        }
        let batch = match self.openai.get_batch(&poll.provider_batch_id).await {
            Ok(batch) => batch,
            Err(error) => {
                // The batch keeps running at the provider: keep polling, never drop the job.
                tracing::warn!(error = %error, "Poll failed, trying again after the poll interval");
                self.schedule_poll(&PollMessage {
                    polls: poll.polls + 1,
                    ..poll
                })
                .await?;
                return Ok(());
            }
        };
        let counts = batch.request_counts.unwrap_or_default();
        self.store
            .set_job_fields(
                &poll.job_id,
                &[
                    ("provider_status", batch.status.clone()),
                    ("last_polled_at", Utc::now().timestamp().to_string()),
                    ("provider_completed", counts.completed.to_string()),
                    ("provider_failed", counts.failed.to_string()),
                ],
            )
            .await?;
        if !batch.is_terminal() {
            tracing::debug!(status = %batch.status, completed = counts.completed, total = counts.total, "Batch still running");
            self.schedule_poll(&PollMessage {
                polls: poll.polls + 1,
                ..poll
            })
            .await?;
            return Ok(());
        }

        let Some(message) = stored.get("message") else {
            tracing::error!("In-flight job has no stored job message; marking it for review");
            self.store
                .set_job_fields(&poll.job_id, &[("state", "needs_review".to_owned())])
                .await?;
            return Ok(());
        };
        let job: JobMessage = serde_json::from_str(message).map_err(|error| {
            batchgate_shared::Error::Invalid(format!("stored job message is invalid: {error}"))
        })?;
        self.finish(&job, &batch, &stored).await
    }
}
