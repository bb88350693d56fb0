//! Accounting for a part whose provider batch ended.

use std::collections::{BTreeMap, HashMap};

use batchgate_shared::journal;
use batchgate_shared::message::{
    JobEvent, JobMessage, LEDGER_SCHEMA_VERSION, LedgerRecord, event, provider_names,
};
use batchgate_shared::period::accrual_period;
use batchgate_shared::provider::{BatchState, ProviderBatch, ResultSink};
use batchgate_shared::results::{ResultFormat, ResultTotals};
use batchgate_shared::{Error, Result};
use chrono::Utc;
use lapin::BasicProperties;

use crate::Worker;
use crate::part::inflight_id;

/// Collects result lines per file, so that a file downloaded again after a
/// failure replaces what was counted from it.
struct Accumulator {
    format: ResultFormat,
    long_context_above: Option<u64>,
    finished: ResultTotals,
    current: ResultTotals,
    current_file: Option<String>,
    line_number: u64,
    first_bad: Option<(String, u64, String)>,
}

impl Accumulator {
    fn new(format: ResultFormat, long_context_above: Option<u64>) -> Accumulator {
        Accumulator {
            format,
            long_context_above,
            finished: ResultTotals::new(format).with_long_context(long_context_above),
            current: ResultTotals::new(format).with_long_context(long_context_above),
            current_file: None,
            line_number: 0,
            first_bad: None,
        }
    }

    fn totals(mut self) -> std::result::Result<ResultTotals, (String, u64, String)> {
        if let Some(bad) = self.first_bad {
            return Err(bad);
        }
        self.finished.merge(self.current);
        Ok(self.finished)
    }
}

impl ResultSink for Accumulator {
    fn start_file(&mut self, name: &str) {
        let restarted = self.current_file.as_deref() == Some(name);
        let fresh = ResultTotals::new(self.format).with_long_context(self.long_context_above);
        let previous = std::mem::replace(&mut self.current, fresh);
        if !restarted {
            self.finished.merge(previous);
        }
        if self
            .first_bad
            .as_ref()
            .is_some_and(|(file, _, _)| file == name)
        {
            self.first_bad = None;
        }
        self.current_file = Some(name.to_owned());
        self.line_number = 0;
    }

    fn line(&mut self, line: &[u8]) {
        self.line_number += 1;
        if let Err(problem) = self.current.add_line_after(line, Some(&self.finished))
            && self.first_bad.is_none()
        {
            let file = self.current_file.clone().unwrap_or_default();
            self.first_bad = Some((file, self.line_number, problem));
        }
    }
}

impl Worker {
    pub(crate) async fn finish_part(
        &self,
        job: &JobMessage,
        index: u32,
        total: u32,
        batch: &ProviderBatch,
        stored: &HashMap<String, String>,
    ) -> Result<()> {
        let job_id = &job.manifest.job_id;
        let label = format!("part {} of {total}", index + 1);
        if let BatchState::Failed { code, message } = &batch.state {
            let part = self.store.part(job_id, index).await?;
            let deferrals: u32 = part
                .get("deferrals")
                .and_then(|count| count.parse().ok())
                .unwrap_or(0);
            let limits = self.config.providers.get(&job.manifest.provider);
            let max_deferrals = limits
                .map(|limits| limits.max_token_limit_retries)
                .unwrap_or(0);
            if code.as_deref() == Some("token_limit_exceeded") && deferrals < max_deferrals {
                let reason = format!(
                    "{label}: provider batch {} failed with token_limit_exceeded; created again later",
                    batch.id
                );
                let previous = match part.get("previous_batch_ids") {
                    Some(ids) => format!("{ids},{}", batch.id),
                    None => batch.id.clone(),
                };
                self.store
                    .set_part_fields(
                        job_id,
                        index,
                        &[
                            ("deferrals", (deferrals + 1).to_string()),
                            ("previous_batch_ids", previous),
                        ],
                    )
                    .await?;
                let mut deferred = JobEvent::new(
                    event::PART_DEFERRED,
                    job_id,
                    &job.manifest.owner_team,
                    reason.clone(),
                );
                deferred.provider_batch_id = Some(batch.id.clone());
                journal::record(&self.broker, &self.store, &deferred).await?;
                return self.defer_part(job, index, &reason).await;
            }
            let code = code.as_deref().unwrap_or("no code");
            let reason = format!(
                "{label}: provider batch {} failed ({code}): {message}",
                batch.id
            );
            return self.fail_part(job, index, &reason).await;
        }

        let slot = self.provider(&job.manifest.provider)?;
        // The long-context threshold decides, per request, which tier its usage is priced at.
        let created_at = batch.created_at.unwrap_or_else(Utc::now);
        let long_context_above = self
            .price_at(&job.manifest.provider, &job.manifest.model, created_at)
            .and_then(|price| price.long_context_above());
        let mut accumulator = Accumulator::new(
            ResultFormat::for_provider(&job.manifest.provider),
            long_context_above,
        );
        let downloaded = slot.client.stream_results(batch, &mut accumulator).await;
        let totals = match (downloaded, accumulator.totals()) {
            (Err(error), _) => {
                let reason = format!(
                    "{label}: cannot read the results of provider batch {}: {error}",
                    batch.id
                );
                return self.review_part(job, index, &reason).await;
            }
            (Ok(()), Err((file, line, problem))) => {
                let reason = format!(
                    "{label}: result file {file} line {line}: {problem}; nothing is billed until it is reviewed"
                );
                return self.review_part(job, index, &reason).await;
            }
            (Ok(()), Ok(totals)) => totals,
        };
        if totals.duplicate_lines > 0 {
            tracing::warn!(
                duplicates = totals.duplicate_lines,
                "Result files repeat custom_ids; each is billed once"
            );
        }

        let planned = self.store.part(job_id, index).await?;
        let planned: u64 = planned
            .get("requests")
            .and_then(|requests| requests.parse().ok())
            .unwrap_or(0);
        let mut totals = totals;
        count_missing_requests(&mut totals, &batch.state, planned);
        let record = match self.ledger_record(job, index, total, batch, stored, &totals) {
            Ok(record) => record,
            Err(error) => {
                let reason = format!("{label}: cannot price provider batch {}: {error}", batch.id);
                return self.review_part(job, index, &reason).await;
            }
        };
        let part = self.store.part(job_id, index).await?;
        if part.get("ledger_record_id") != Some(&record.record_id) {
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
        }
        self.store
            .set_part_fields(
                job_id,
                index,
                &[
                    ("state", "ended".to_owned()),
                    ("ledger_record_id", record.record_id.clone()),
                    (
                        "billed_cost_micros",
                        record.billed_cost_micros.0.to_string(),
                    ),
                    ("duplicate_result_lines", totals.duplicate_lines.to_string()),
                    ("accrual_period", record.accrual_period.clone()),
                ],
            )
            .await?;
        self.store
            .mark_inflight(&inflight_id(job_id, index), false)
            .await?;
        let message = format!(
            "{label}: provider batch {} {}: {} succeeded, {} failed, {} expired, {} cancelled; billed {} USD",
            batch.id,
            batch.status,
            record.requests.succeeded,
            record.requests.failed,
            record.requests.expired,
            record.requests.cancelled,
            record.billed_cost_micros
        );
        let mut ended = JobEvent::new(
            event::BATCH_ENDED,
            job_id,
            &job.manifest.owner_team,
            message,
        );
        ended.provider_batch_id = Some(batch.id.clone());
        ended.detail = serde_json::json!({
            "part": index,
            "record_id": record.record_id,
            "billed_cost_micros": record.billed_cost_micros,
            "duplicate_result_lines": totals.duplicate_lines,
        });
        journal::record(&self.broker, &self.store, &ended).await?;
        self.finish_job_if_ended(job).await
    }

    /// Holds a part for review: no ledger record, and the reservation stays.
    async fn review_part(&self, job: &JobMessage, index: u32, reason: &str) -> Result<()> {
        let job_id = &job.manifest.job_id;
        tracing::error!(part = index, error = reason, "Job part needs review");
        self.store
            .set_part_fields(
                job_id,
                index,
                &[
                    ("state", "needs_review".to_owned()),
                    ("reason", reason.to_owned()),
                ],
            )
            .await?;
        self.store
            .mark_inflight(&inflight_id(job_id, index), false)
            .await?;
        self.finish_job_if_ended(job).await
    }

    /// Returns the price entry in force at `at` from the current price table.
    fn price_at(
        &self,
        provider: &str,
        model: &str,
        at: chrono::DateTime<Utc>,
    ) -> Option<batchgate_shared::pricing::PriceEntry> {
        self.prices.current().lookup(provider, model, at).cloned()
    }

    fn ledger_record(
        &self,
        job: &JobMessage,
        index: u32,
        total: u32,
        batch: &ProviderBatch,
        stored: &HashMap<String, String>,
        totals: &ResultTotals,
    ) -> Result<LedgerRecord> {
        let manifest = &job.manifest;
        let created_at = batch.created_at.unwrap_or(job.submitted_at);
        let price = self
            .price_at(&manifest.provider, &manifest.model, created_at)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the price table has no {} {} entry in force on {}",
                    manifest.provider,
                    manifest.model,
                    created_at.date_naive()
                ))
            })?;
        let price = &price;
        let usage = totals.billed_usage(price);
        let tokens = usage.total();
        let cost = price.price_usage(&usage)?;
        let accrual = self.config.accrual;
        let periods = self.config.periods();
        let submission_month = stored
            .get("month")
            .cloned()
            .unwrap_or_else(|| periods.containing(job.submitted_at).month);
        let ended_at = batch.ended_at.unwrap_or_else(Utc::now);
        let accrual_period = accrual_period(&periods, accrual, &submission_month, ended_at);
        // A FOCUS charge period is a non-empty interval.
        let charge_end = ended_at.max(created_at + chrono::Duration::seconds(1));
        let (provider_name, service_name) = provider_names(&manifest.provider);
        let sku_id = format!("{}/{}/batch", manifest.provider, manifest.model);
        let tags = BTreeMap::from([
            ("owner_team".to_owned(), manifest.owner_team.clone()),
            ("cost_center".to_owned(), manifest.cost_center.clone()),
            ("workload_class".to_owned(), manifest.workload_class.clone()),
            ("job_id".to_owned(), manifest.job_id.clone()),
        ]);
        let requests = &totals.requests;
        Ok(LedgerRecord {
            schema_version: LEDGER_SCHEMA_VERSION,
            record_id: format!("{}:{}", manifest.provider, batch.id),
            billed_cost_micros: cost.billed,
            effective_cost_micros: cost.billed,
            list_cost_micros: cost.list,
            currency: price.currency.clone(),
            charge_period_start: created_at,
            charge_period_end: charge_end,
            billing_period_start: accrual_period.start,
            billing_period_end: accrual_period.end,
            charge_category: "Usage".to_owned(),
            charge_class: None,
            charge_description: format!(
                "{service_name} batch {} ({}), part {} of {total} of job {}: {} requests, {} succeeded",
                batch.id,
                manifest.model,
                index + 1,
                manifest.job_id,
                requests.total,
                requests.succeeded
            ),
            consumed_quantity: totals.consumed_tokens().total(),
            consumed_unit: "Tokens".to_owned(),
            pricing_quantity: tokens.total(),
            pricing_unit: "Tokens".to_owned(),
            service_name: service_name.to_owned(),
            service_category: "AI and Machine Learning".to_owned(),
            sku_price_id: format!("{sku_id}/{}", price.effective_from),
            sku_id,
            provider_name: provider_name.to_owned(),
            publisher_name: provider_name.to_owned(),
            invoice_issuer_name: provider_name.to_owned(),
            tags,
            job_id: manifest.job_id.clone(),
            owner_team: manifest.owner_team.clone(),
            cost_center: manifest.cost_center.clone(),
            workload_class: manifest.workload_class.clone(),
            purpose: manifest.purpose.clone(),
            provider: manifest.provider.clone(),
            model: manifest.model.clone(),
            endpoint: manifest.endpoint.clone(),
            provider_batch_id: batch.id.clone(),
            part_index: index,
            parts_total: total,
            provider_status: batch.status.clone(),
            requests: totals.requests,
            duplicate_result_lines: totals.duplicate_lines,
            tokens,
            long_context_tokens: usage.long_context,
            cache_discount_micros: cost.cache_discount,
            batch_discount_micros: cost.batch_discount(),
            price_effective_from: price.effective_from,
            submitted_at: job.submitted_at,
            provider_completed_at: batch.ended_at,
            recorded_at: Utc::now(),
            accrual_convention: accrual,
            accrual_period: accrual_period.month,
            budget_month: submission_month,
            corrects_record_id: None,
            correction_reason: None,
        })
    }
}

/// Counts requests that appear in no result file: a cancelled or expired batch
/// leaves the unfinished ones out, so they count as cancelled or expired.
fn count_missing_requests(totals: &mut ResultTotals, state: &BatchState, planned: u64) {
    let missing = planned.saturating_sub(totals.requests.total);
    match state {
        BatchState::Cancelled => totals.requests.cancelled += missing,
        BatchState::Expired => totals.requests.expired += missing,
        _ => return,
    }
    totals.requests.total += missing;
}
