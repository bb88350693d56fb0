//! Durable polling: one message per poll, delayed in a wait queue.
//!
//! Each part has one poll chain, named by a random id stored in the part's
//! record. A poll message from another chain (for example one left behind
//! before a restart started a new chain) is dropped, so a part is never polled
//! by two chains at once.

use std::collections::HashMap;

use batchgate_shared::input::PartBounds;
use batchgate_shared::message::JobMessage;
use batchgate_shared::{Error, Result};
use chrono::Utc;
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::Worker;
use crate::part::inflight_id;

pub const POLL_SCHEMA_VERSION: u32 = 1;

/// A request to poll one part's provider batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollMessage {
    pub schema_version: u32,
    pub job_id: String,
    pub part: u32,
    pub chain: String,
    pub polls: u64,
}

impl Worker {
    /// Starts a new poll chain for a part, replacing any earlier one.
    pub(crate) async fn start_poll_chain(&self, job_id: &str, part: u32) -> Result<()> {
        let chain = uuid::Uuid::new_v4().to_string();
        self.store
            .set_part_fields(job_id, part, &[("poll_chain", chain.clone())])
            .await?;
        let poll = PollMessage {
            schema_version: POLL_SCHEMA_VERSION,
            job_id: job_id.to_owned(),
            part,
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

    /// Restarts the poll chain of every in-flight part not polled for three
    /// intervals, in case its poll message was lost with a broker that kept no state.
    pub(crate) async fn resume_inflight(&self) -> Result<()> {
        let stale_after = 3 * self.config.worker.poll_interval_secs as i64;
        for member in self.store.inflight_jobs().await? {
            let Some((job_id, part)) = member.rsplit_once('#') else {
                continue;
            };
            let Ok(part) = part.parse::<u32>() else {
                continue;
            };
            let record = self.store.part(job_id, part).await?;
            let last = record
                .get("last_polled_at")
                .and_then(|at| at.parse::<i64>().ok())
                .unwrap_or(0);
            let state = record.get("state").map(String::as_str);
            let waiting = matches!(state, Some("running" | "deferred"));
            if waiting && Utc::now().timestamp() - last > stale_after {
                tracing::info!(job_id, part, "Resuming polls of an in-flight part");
                self.start_poll_chain(job_id, part).await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn poll(&self, body: &[u8]) -> Result<()> {
        let poll: PollMessage = match serde_json::from_slice(body) {
            Ok(poll) => poll,
            Err(error) => {
                let reason = format!("invalid poll message: {error}");
                tracing::warn!(error = %reason, "Poll message dead-lettered");
                self.broker
                    .dead_letter(&self.broker.names.poll_due_queue(), body, &reason)
                    .await?;
                return Ok(());
            }
        };
        let part = self.store.part(&poll.job_id, poll.part).await?;
        let job = self.store.job(&poll.job_id).await?;
        let span = tracing::info_span!(
            "job",
            job_id = %poll.job_id,
            team = job.get("team").map(String::as_str).unwrap_or(""),
            provider = job.get("provider").map(String::as_str).unwrap_or(""),
            part = poll.part,
            batch_id = part.get("provider_batch_id").map(String::as_str).unwrap_or(""),
        );
        self.poll_in_span(poll, part, job).instrument(span).await
    }

    async fn poll_in_span(
        &self,
        poll: PollMessage,
        part: HashMap<String, String>,
        job: HashMap<String, String>,
    ) -> Result<()> {
        let state = part.get("state").map(String::as_str).unwrap_or("");
        if part.get("poll_chain") != Some(&poll.chain) || !matches!(state, "running" | "deferred") {
            tracing::debug!("Dropping a poll of a superseded chain or an ended part");
            return Ok(());
        }
        let Some(message) = job.get("message") else {
            return Err(Error::Invalid(format!(
                "job {} has no stored job message",
                poll.job_id
            )));
        };
        let job_message: JobMessage = serde_json::from_str(message)
            .map_err(|error| Error::Invalid(format!("stored job message is invalid: {error}")))?;
        let total: u32 = job
            .get("parts")
            .and_then(|parts| parts.parse().ok())
            .unwrap_or(1);

        if state == "deferred" {
            return self.retry_deferred(&job_message, &poll, &part, total).await;
        }
        let Some(batch_id) = part.get("provider_batch_id") else {
            return Err(Error::Invalid(format!(
                "part {} of job {} has no provider batch id",
                poll.part, poll.job_id
            )));
        };
        let slot = self.provider(&job_message.manifest.provider)?;
        let _permit = slot
            .polls
            .acquire()
            .await
            .map_err(|_| Error::Broker("worker is stopping".into()))?;

        if job.contains_key("cancel_requested") && !part.contains_key("cancel_sent") {
            match slot.client.cancel_batch(batch_id).await {
                Ok(batch) => {
                    tracing::info!(status = %batch.status, "Cancellation sent to the provider")
                }
                Err(error) => {
                    tracing::warn!(error = %error, "Cancellation failed; the batch runs on")
                }
            }
            self.store
                .set_part_fields(&poll.job_id, poll.part, &[("cancel_sent", "1".to_owned())])
                .await?;
        }
        let batch = match slot.client.get_batch(batch_id).await {
            Ok(batch) => batch,
            Err(error) => {
                // The batch keeps running at the provider: keep polling, never drop the part.
                tracing::warn!(error = %error, "Poll failed, trying again after the poll interval");
                return self
                    .schedule_poll(&PollMessage {
                        polls: poll.polls + 1,
                        ..poll
                    })
                    .await;
            }
        };
        self.store
            .set_part_fields(
                &poll.job_id,
                poll.part,
                &[
                    ("provider_status", batch.status.clone()),
                    ("last_polled_at", Utc::now().timestamp().to_string()),
                    ("requests_done", batch.requests_done.to_string()),
                ],
            )
            .await?;
        if !batch.state.is_ended() {
            tracing::debug!(status = %batch.status, done = batch.requests_done, "Batch still running");
            return self
                .schedule_poll(&PollMessage {
                    polls: poll.polls + 1,
                    ..poll
                })
                .await;
        }
        self.finish_part(&job_message, poll.part, total, &batch, &job)
            .await
    }

    /// Creates a deferred part again once its delay passed; until then keeps waiting.
    async fn retry_deferred(
        &self,
        job: &JobMessage,
        poll: &PollMessage,
        part: &HashMap<String, String>,
        total: u32,
    ) -> Result<()> {
        let not_before: i64 = part
            .get("not_before")
            .and_then(|at| at.parse().ok())
            .unwrap_or(0);
        self.store
            .set_part_fields(
                &poll.job_id,
                poll.part,
                &[("last_polled_at", Utc::now().timestamp().to_string())],
            )
            .await?;
        if Utc::now().timestamp() < not_before {
            return self
                .schedule_poll(&PollMessage {
                    polls: poll.polls + 1,
                    ..poll.clone()
                })
                .await;
        }
        let number = |name: &str| {
            part.get(name)
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let bounds = PartBounds {
            first_line: number("first_line"),
            requests: number("requests"),
            bytes: number("bytes"),
        };
        tracing::info!("Creating a deferred part again");
        self.create_part(job, poll.part, total, &bounds).await
    }

    /// Defers a part whose batch the provider refused to run for now.
    pub(crate) async fn defer_part(
        &self,
        job: &JobMessage,
        index: u32,
        reason: &str,
    ) -> Result<()> {
        let job_id = &job.manifest.job_id;
        let limits = self.config.providers.get(&job.manifest.provider);
        let retry_secs = limits
            .map(|limits| limits.token_limit_retry_secs)
            .unwrap_or(600);
        let not_before = Utc::now().timestamp() + retry_secs as i64;
        self.store
            .set_part_fields(
                job_id,
                index,
                &[
                    ("state", "deferred".to_owned()),
                    ("not_before", not_before.to_string()),
                    ("reason", reason.to_owned()),
                ],
            )
            .await?;
        self.store
            .mark_inflight(&inflight_id(job_id, index), true)
            .await?;
        self.start_poll_chain(job_id, index).await
    }
}
