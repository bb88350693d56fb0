//! Accounting for a provider batch that reached a terminal status.

use std::collections::HashMap;

use batchgate_shared::config::Accrual;
use batchgate_shared::journal;
use batchgate_shared::message::{
    JobEvent, JobMessage, LEDGER_SCHEMA_VERSION, LedgerRecord, event, month_of,
};
use batchgate_shared::openai::Batch;
use batchgate_shared::results::ResultTotals;
use batchgate_shared::{Error, Result};
use chrono::{DateTime, Utc};
use lapin::BasicProperties;

use crate::Worker;

/// A result file line that could not be read.
struct BadLine {
    file_id: String,
    line: u64,
    problem: String,
}

impl Worker {
    pub(crate) async fn finish(
        &self,
        job: &JobMessage,
        batch: &Batch,
        stored: &HashMap<String, String>,
    ) -> Result<()> {
        let job_id = &job.manifest.job_id;
        if batch.status == "failed" {
            let errors = batch
                .errors
                .as_ref()
                .map(|errors| errors.to_string())
                .unwrap_or_default();
            self.fail_job(
                job,
                &format!("provider batch {} failed: {errors}", batch.id),
            )
            .await?;
            return Ok(());
        }

        let totals = match self.read_results(batch).await? {
            Ok(totals) => totals,
            Err(bad) => {
                let reason = format!(
                    "result file {} line {}: {}; the batch needs review before it is billed",
                    bad.file_id, bad.line, bad.problem
                );
                tracing::error!(error = %reason, "Cannot account for a provider batch");
                self.store
                    .set_job_fields(
                        job_id,
                        &[
                            ("state", "needs_review".to_owned()),
                            ("reason", reason.clone()),
                        ],
                    )
                    .await?;
                self.store.mark_inflight(job_id, false).await?;
                let event = JobEvent::new(event::FAILED, job_id, &job.manifest.owner_team, reason);
                journal::record(&self.broker, &self.store, &event).await?;
                return Ok(());
            }
        };
        if totals.duplicate_lines > 0 {
            tracing::warn!(
                duplicates = totals.duplicate_lines,
                "Result files repeat custom_ids; each is billed once"
            );
        }

        let record = match self.ledger_record(job, batch, stored, &totals) {
            Ok(record) => record,
            Err(error) => {
                let reason = format!("cannot price provider batch {}: {error}", batch.id);
                self.store
                    .set_job_fields(
                        job_id,
                        &[
                            ("state", "needs_review".to_owned()),
                            ("reason", reason.clone()),
                        ],
                    )
                    .await?;
                self.store.mark_inflight(job_id, false).await?;
                let event = JobEvent::new(event::FAILED, job_id, &job.manifest.owner_team, reason);
                journal::record(&self.broker, &self.store, &event).await?;
                return Ok(());
            }
        };
        if stored.get("ledger_record_id") != Some(&record.record_id) {
            let routing_key = format!("ledger.{}.{}", record.provider, record.owner_team);
            let properties =
                BasicProperties::default().with_message_id(record.record_id.as_str().into());
            self.broker
                .publish_json(
                    &self.broker.names.ledger_exchange(),
                    &routing_key,
                    &record,
                    properties,
                )
                .await?;
            self.store
                .set_job_fields(job_id, &[("ledger_record_id", record.record_id.clone())])
                .await?;
        }

        let month = stored
            .get("month")
            .cloned()
            .unwrap_or_else(|| record.accrual_period.clone());
        self.store
            .settle(
                &record.owner_team,
                &month,
                job_id,
                record.billed_cost_micros,
            )
            .await?;
        self.store
            .set_job_fields(
                job_id,
                &[
                    ("state", "completed".to_owned()),
                    (
                        "billed_cost_micros",
                        record.billed_cost_micros.0.to_string(),
                    ),
                ],
            )
            .await?;
        self.store.mark_inflight(job_id, false).await?;
        let message = format!(
            "provider batch {} {}: {} succeeded, {} failed, {} expired; billed {} USD",
            batch.id,
            batch.status,
            record.requests.succeeded,
            record.requests.failed,
            record.requests.expired,
            record.billed_cost_micros
        );
        let mut completed =
            JobEvent::new(event::COMPLETED, job_id, &job.manifest.owner_team, message);
        completed.provider_batch_id = Some(batch.id.clone());
        completed.detail = serde_json::json!({"record_id": record.record_id, "billed_cost_micros": record.billed_cost_micros});
        journal::record(&self.broker, &self.store, &completed).await?;
        tracing::info!(billed_micros = record.billed_cost_micros.0, "Job completed");
        Ok(())
    }

    /// Streams the output and error files into totals. The outer error is a
    /// provider or network failure; the inner one a line that cannot be read.
    async fn read_results(
        &self,
        batch: &Batch,
    ) -> Result<std::result::Result<ResultTotals, BadLine>> {
        let mut totals = ResultTotals::default();
        for file_id in [batch.output_file(), batch.error_file()]
            .into_iter()
            .flatten()
        {
            let mut file_totals = ResultTotals::default();
            let mut line_number = 0u64;
            let mut first_bad: Option<(u64, String)> = None;
            self.openai
                .stream_file_lines(file_id, |line| {
                    let Some(line) = line else {
                        file_totals = ResultTotals::default();
                        line_number = 0;
                        first_bad = None;
                        return;
                    };
                    line_number += 1;
                    if first_bad.is_none()
                        && let Err(problem) = file_totals.add_line(line)
                    {
                        first_bad = Some((line_number, problem));
                    }
                })
                .await?;
            if let Some((line, problem)) = first_bad {
                return Ok(Err(BadLine {
                    file_id: file_id.to_owned(),
                    line,
                    problem,
                }));
            }
            totals.merge(file_totals);
        }
        Ok(Ok(totals))
    }

    fn ledger_record(
        &self,
        job: &JobMessage,
        batch: &Batch,
        stored: &HashMap<String, String>,
        totals: &ResultTotals,
    ) -> Result<LedgerRecord> {
        let manifest = &job.manifest;
        let created_at = batch
            .created_at
            .and_then(|at| DateTime::from_timestamp(at, 0))
            .unwrap_or_else(Utc::now);
        let completed_at = batch
            .ended_at()
            .and_then(|at| DateTime::from_timestamp(at, 0));
        let price = self
            .prices
            .lookup(&manifest.provider, &manifest.model, created_at)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the price table has no {} {} entry in force on {}",
                    manifest.provider,
                    manifest.model,
                    created_at.date_naive()
                ))
            })?;
        let cost = price.price(&totals.tokens)?;
        let accrual = self.config.accrual;
        let submission_month = stored
            .get("month")
            .cloned()
            .unwrap_or_else(|| month_of(job.submitted_at));
        let accrual_period = match accrual {
            Accrual::Submission => submission_month,
            Accrual::Completion => month_of(completed_at.unwrap_or_else(Utc::now)),
        };
        Ok(LedgerRecord {
            schema_version: LEDGER_SCHEMA_VERSION,
            record_id: format!("{}:{}", manifest.provider, batch.id),
            job_id: manifest.job_id.clone(),
            owner_team: manifest.owner_team.clone(),
            cost_center: manifest.cost_center.clone(),
            workload_class: manifest.workload_class.clone(),
            purpose: manifest.purpose.clone(),
            provider: manifest.provider.clone(),
            model: manifest.model.clone(),
            endpoint: manifest.endpoint.clone(),
            provider_batch_id: batch.id.clone(),
            provider_status: batch.status.clone(),
            requests: totals.requests,
            tokens: totals.tokens,
            currency: price.currency.clone(),
            list_cost_micros: cost.list,
            discount_micros: cost.discount(),
            billed_cost_micros: cost.billed,
            price_effective_from: price.effective_from,
            submitted_at: job.submitted_at,
            provider_completed_at: completed_at,
            recorded_at: Utc::now(),
            accrual_convention: accrual,
            accrual_period,
        })
    }
}
