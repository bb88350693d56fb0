//! Creating the provider batch of one part, at most once.
//!
//! The part is claimed under a lease and its intent time recorded before the
//! create call. A worker that takes over a lapsed lease first asks the provider
//! for a batch created since that intent and not yet recorded, and creates a
//! new one only if there is none.

use batchgate_shared::input::PartBounds;
use batchgate_shared::journal;
use batchgate_shared::message::{JobEvent, JobMessage, event};
use batchgate_shared::provider::{PartRequest, ProviderBatch};
use batchgate_shared::split::write_part;
use batchgate_shared::store::CreationClaim;
use batchgate_shared::{Error, Result};
use chrono::{DateTime, Utc};

use crate::{Worker, crash};

impl Worker {
    pub(crate) async fn create_part(
        &self,
        job: &JobMessage,
        index: u32,
        total: u32,
        bounds: &PartBounds,
    ) -> Result<()> {
        let job_id = &job.manifest.job_id;
        let lease = self.config.worker.creation_lease_secs;
        let claim = self.store.claim_creation(job_id, index, lease).await?;
        let resuming = match claim {
            CreationClaim::Fresh => false,
            CreationClaim::Resume => true,
            // Another worker holds the lease: deliver the message again, so that the
            // part is resumed here if that worker died before recording the batch.
            CreationClaim::Busy => {
                return Err(Error::Broker(format!(
                    "part {} of job {job_id} is being created under another worker's lease",
                    index + 1
                )));
            }
            CreationClaim::Other(_) => return Ok(()),
        };
        let stored = self.store.job(job_id).await?;
        if stored.contains_key("cancel_requested") {
            self.store
                .set_part_fields(job_id, index, &[("state", "cancelled".to_owned())])
                .await?;
            return self.finish_job_if_ended(job).await;
        }
        let part = self.store.part(job_id, index).await?;
        let intent_at = part
            .get("intent_at")
            .and_then(|at| at.parse().ok())
            .and_then(|at| DateTime::from_timestamp(at, 0))
            .unwrap_or_else(Utc::now);

        let slot = self.provider(&job.manifest.provider)?;
        let _permit = slot
            .creates
            .acquire()
            .await
            .map_err(|_| Error::Broker("worker is stopping".into()))?;
        let file = self.write_part_file(job, bounds).await?;
        let request = PartRequest {
            job,
            part_index: index,
            parts_total: total,
            file: file.path(),
            requests: bounds.requests,
        };

        let mut existing = None;
        if resuming {
            for candidate in slot.client.find_batches(&request, intent_at).await? {
                if !self.store.is_known_batch(&candidate.id).await? {
                    existing = Some(candidate);
                    break;
                }
            }
        }
        let batch = match existing {
            Some(batch) => {
                tracing::info!(part = index, batch_id = %batch.id, "Found the provider batch created before a restart");
                batch
            }
            None => {
                crash::at("before_create");
                match slot.client.create_batch(&request).await {
                    Ok(batch) => batch,
                    Err(error @ Error::Provider { .. }) => {
                        let reason = format!(
                            "part {} of {total}: cannot create the provider batch: {error}",
                            index + 1
                        );
                        return self.fail_part(job, index, &reason).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        crash::at("after_create");
        self.record_batch(job, index, total, &batch).await
    }

    async fn write_part_file(
        &self,
        job: &JobMessage,
        bounds: &PartBounds,
    ) -> Result<tempfile::NamedTempFile> {
        let input = job.input.local_path().map_err(Error::Invalid)?;
        let provider = job.manifest.provider.clone();
        let bounds = *bounds;
        tokio::task::spawn_blocking(move || {
            let context = |error| Error::io(format!("cannot write a part of {}", input.display()), error);
            let mut file = tempfile::NamedTempFile::new().map_err(context)?;
            let mut writer = std::io::BufWriter::new(file.as_file_mut());
            let written = write_part(&input, &provider, &bounds, &mut writer).map_err(context)?;
            drop(writer);
            if written != bounds.requests {
                return Err(Error::Invalid(format!(
                    "input file {} has fewer lines than when it was admitted ({written} of {} for this part)",
                    input.display(),
                    bounds.requests
                )));
            }
            Ok(file)
        })
        .await
        .map_err(|error| Error::Invalid(format!("part file task failed: {error}")))?
    }

    /// Records a created batch before anything else, then starts polling it.
    async fn record_batch(
        &self,
        job: &JobMessage,
        index: u32,
        total: u32,
        batch: &ProviderBatch,
    ) -> Result<()> {
        let job_id = &job.manifest.job_id;
        self.store.add_known_batch(&batch.id).await?;
        self.store
            .set_part_fields(
                job_id,
                index,
                &[
                    ("state", "running".to_owned()),
                    // A deferral's reason no longer applies once a batch runs.
                    ("reason", String::new()),
                    ("provider_batch_id", batch.id.clone()),
                    ("provider_status", batch.status.clone()),
                ],
            )
            .await?;
        self.store
            .mark_inflight(&inflight_id(job_id, index), true)
            .await?;
        let message = format!(
            "part {} of {total}: provider batch {} created",
            index + 1,
            batch.id
        );
        let mut created = JobEvent::new(
            event::BATCH_CREATED,
            job_id,
            &job.manifest.owner_team,
            message,
        );
        created.provider_batch_id = Some(batch.id.clone());
        created.detail = serde_json::json!({"part": index, "parts": total});
        journal::record(&self.broker, &self.store, &created).await?;
        self.start_poll_chain(job_id, index).await?;
        tracing::info!(part = index, batch_id = %batch.id, "Provider batch created");
        Ok(())
    }

    /// Ends a part that cannot run, then ends the job if it was the last part.
    pub(crate) async fn fail_part(&self, job: &JobMessage, index: u32, reason: &str) -> Result<()> {
        let job_id = &job.manifest.job_id;
        tracing::warn!(part = index, error = reason, "Job part failed");
        self.store
            .set_part_fields(
                job_id,
                index,
                &[
                    ("state", "failed".to_owned()),
                    ("reason", reason.to_owned()),
                ],
            )
            .await?;
        self.store
            .mark_inflight(&inflight_id(job_id, index), false)
            .await?;
        self.finish_job_if_ended(job).await
    }
}

/// Member of the in-flight set for one part: `job_id#part`.
pub(crate) fn inflight_id(job_id: &str, part: u32) -> String {
    format!("{job_id}#{part}")
}
