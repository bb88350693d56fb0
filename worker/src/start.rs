//! Creating the provider batch for an admitted job.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use batchgate_shared::journal;
use batchgate_shared::message::{JobEvent, JobMessage, event};
use batchgate_shared::store::CreationClaim;
use batchgate_shared::{Error, Result};
use tracing::Instrument;

use crate::Worker;

/// Pages of the newest provider batches searched for one created before a crash.
const RECOVERY_LIST_PAGES: usize = 5;

impl Worker {
    pub(crate) async fn start_job(&self, body: &[u8]) -> Result<()> {
        let job: JobMessage = match serde_json::from_slice(body) {
            Ok(job) => job,
            Err(error) => {
                let reason = format!("invalid ready message: {error}");
                self.broker
                    .dead_letter(&self.broker.names.ready_queue("openai"), body, &reason)
                    .await?;
                return Ok(());
            }
        };
        let span = tracing::info_span!(
            "job",
            job_id = %job.manifest.job_id,
            team = %job.manifest.owner_team,
            provider = %job.manifest.provider,
            batch_id = tracing::field::Empty,
        );
        self.start_job_in_span(&job).instrument(span).await
    }

    async fn start_job_in_span(&self, job: &JobMessage) -> Result<()> {
        let job_id = &job.manifest.job_id;
        let claim = self
            .store
            .claim_creation(job_id, self.config.worker.creation_lease_secs)
            .await?;
        let existing = match claim {
            CreationClaim::Fresh => None,
            // A previous worker may have created the batch and died before recording it.
            CreationClaim::Resume => {
                self.openai
                    .find_batch_by_job(job_id, RECOVERY_LIST_PAGES)
                    .await?
            }
            CreationClaim::Busy => {
                return Err(Error::Broker(format!(
                    "job {job_id} is being created by another worker"
                )));
            }
            CreationClaim::Other(state) if state.is_empty() => {
                let reason = format!("job {job_id} was never admitted by a scheduler");
                let body = serde_json::to_vec(job).unwrap_or_default();
                self.broker
                    .dead_letter(&self.broker.names.ready_queue("openai"), &body, &reason)
                    .await?;
                return Ok(());
            }
            CreationClaim::Other(state) => {
                tracing::info!(
                    state,
                    "Ready message for a job already past creation, ignoring it"
                );
                return Ok(());
            }
        };
        let batch = match existing {
            Some(batch) => {
                tracing::info!(batch_id = %batch.id, "Found the provider batch created before a restart");
                batch
            }
            None => match self.create_batch(job).await {
                Ok(batch) => batch,
                Err(error) if !error.is_retryable() || matches!(error, Error::Provider { .. }) => {
                    self.fail_job(job, &format!("cannot create the provider batch: {error}"))
                        .await?;
                    return Ok(());
                }
                Err(error) => return Err(error),
            },
        };
        tracing::Span::current().record("batch_id", batch.id.as_str());

        self.store
            .set_job_fields(
                job_id,
                &[
                    ("state", "polling".to_owned()),
                    ("provider_batch_id", batch.id.clone()),
                    ("provider_status", batch.status.clone()),
                ],
            )
            .await?;
        self.store.mark_inflight(job_id, true).await?;
        let mut created = JobEvent::new(
            event::BATCH_CREATED,
            job_id,
            &job.manifest.owner_team,
            format!("provider batch {} created", batch.id),
        );
        created.provider_batch_id = Some(batch.id.clone());
        journal::record(&self.broker, &self.store, &created).await?;
        self.start_poll_chain(job_id, &batch.id).await?;
        tracing::info!(batch_id = %batch.id, "Provider batch created");
        Ok(())
    }

    async fn create_batch(&self, job: &JobMessage) -> Result<batchgate_shared::openai::Batch> {
        let path = job.input.local_path().map_err(Error::Invalid)?;
        let (upload_path, _decompressed) = plain_input(&path).await?;
        let file_id = self.openai.upload_file(&upload_path).await?;
        self.store
            .set_job_fields(&job.manifest.job_id, &[("input_file_id", file_id.clone())])
            .await?;
        self.openai
            .create_batch(&file_id, &job.manifest.endpoint, &batch_metadata(job))
            .await
    }

    /// Ends a job that cannot run: releases its reservation and records why.
    pub(crate) async fn fail_job(&self, job: &JobMessage, reason: &str) -> Result<()> {
        let manifest = &job.manifest;
        tracing::warn!(error = reason, "Job failed");
        let stored = self.store.job(&manifest.job_id).await?;
        if let Some(month) = stored.get("month") {
            self.store
                .release(&manifest.owner_team, month, &manifest.job_id)
                .await?;
        }
        self.store
            .set_job_fields(
                &manifest.job_id,
                &[
                    ("state", "failed".to_owned()),
                    ("reason", reason.to_owned()),
                ],
            )
            .await?;
        self.store.mark_inflight(&manifest.job_id, false).await?;
        let failed = JobEvent::new(
            event::FAILED,
            &manifest.job_id,
            &manifest.owner_team,
            reason,
        );
        journal::record(&self.broker, &self.store, &failed).await
    }
}

/// Returns the job's tags as provider metadata (at most 16 pairs, values up to 512 characters).
fn batch_metadata(job: &JobMessage) -> BTreeMap<String, String> {
    let manifest = &job.manifest;
    let purpose: String = manifest.purpose.chars().take(512).collect();
    BTreeMap::from([
        ("job_id".to_owned(), manifest.job_id.clone()),
        ("owner_team".to_owned(), manifest.owner_team.clone()),
        ("cost_center".to_owned(), manifest.cost_center.clone()),
        ("workload_class".to_owned(), manifest.workload_class.clone()),
        ("purpose".to_owned(), purpose),
        ("submitted_by".to_owned(), "batchgate".to_owned()),
    ])
}

/// Returns a path to the uncompressed input: the file itself, or a temporary
/// copy when it is gzip, kept alive by the returned guard.
async fn plain_input(path: &Path) -> Result<(PathBuf, Option<tempfile::TempPath>)> {
    let source = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let context = |error| {
            Error::io(
                format!("cannot read input file {}", source.display()),
                error,
            )
        };
        let mut file = std::fs::File::open(&source).map_err(context)?;
        let mut magic = [0u8; 2];
        let is_gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
        if !is_gzip {
            return Ok((source.clone(), None));
        }
        let file = std::fs::File::open(&source).map_err(context)?;
        let mut decoder = flate2::read::MultiGzDecoder::new(file);
        let mut temporary = tempfile::NamedTempFile::new().map_err(context)?;
        std::io::copy(&mut decoder, &mut temporary).map_err(context)?;
        let temporary = temporary.into_temp_path();
        Ok((temporary.to_path_buf(), Some(temporary)))
    })
    .await
    .map_err(|error| Error::Invalid(format!("input preparation task failed: {error}")))?
}
