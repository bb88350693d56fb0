//! Messages on the broker: the job contract, job events and ledger records.
//!
//! Each body is JSON with a `schema_version`. The job message is a public
//! contract described by `schema/job-message.v1.json`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::money::Micros;
use crate::pricing::TokenCounts;

pub const JOB_SCHEMA_VERSION: u32 = 1;
pub const EVENT_SCHEMA_VERSION: u32 = 1;
pub const LEDGER_SCHEMA_VERSION: u32 = 2;

/// A submitted job, as published with routing key `job.submitted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    pub schema_version: u32,
    pub manifest: Manifest,
    pub input: InputRef,
    pub submitted_at: DateTime<Utc>,
}

/// Location of the input file, with what submit counted in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRef {
    /// Absolute `file://` URI readable by the scheduler and the workers.
    pub uri: String,
    /// SHA-256 of the file; when present the scheduler rejects a file that changed.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub requests: Option<u64>,
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// Characters escaped in a file URI path: controls, space and the URI delimiters.
const PATH_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'?')
    .add(b'<')
    .add(b'>');

impl InputRef {
    /// Formats an absolute path as a `file://` URI, percent-encoding what needs it.
    pub fn file_uri(path: &std::path::Path) -> Option<String> {
        let text = path.to_str()?;
        Some(format!(
            "file://{}",
            percent_encoding::utf8_percent_encode(text, PATH_ESCAPES)
        ))
    }

    /// Returns the local path of a `file://` URI (host empty or `localhost`),
    /// percent-decoded as RFC 8089 file URIs are.
    pub fn local_path(&self) -> Result<std::path::PathBuf, String> {
        let rest = self.uri.strip_prefix("file://").ok_or_else(|| {
            format!(
                "unsupported input uri {:?}: only absolute file:// URIs are read",
                self.uri
            )
        })?;
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(format!(
                "input uri {:?} is not an absolute file:// path",
                self.uri
            ));
        }
        let decoded = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| format!("input uri {:?} does not decode to a UTF-8 path", self.uri))?;
        Ok(std::path::PathBuf::from(decoded.into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(uri: &str) -> InputRef {
        InputRef {
            uri: uri.to_owned(),
            sha256: None,
            requests: None,
            bytes: None,
        }
    }

    #[test]
    fn file_uris_decode_to_paths() {
        let path = input("file:///data/my%20jobs/in.jsonl")
            .local_path()
            .unwrap();
        assert_eq!(path, std::path::PathBuf::from("/data/my jobs/in.jsonl"));
        let path = input("file://localhost/data/in.jsonl")
            .local_path()
            .unwrap();
        assert_eq!(path, std::path::PathBuf::from("/data/in.jsonl"));
    }

    #[test]
    fn paths_round_trip_through_uris() {
        let path = std::path::Path::new("/data/100% done/#1 in.jsonl");
        let uri = InputRef::file_uri(path).unwrap();
        assert_eq!(uri, "file:///data/100%25%20done/%231%20in.jsonl");
        assert_eq!(input(&uri).local_path().unwrap(), path);
    }

    #[test]
    fn other_uris_are_rejected() {
        assert!(input("s3://bucket/in.jsonl").local_path().is_err());
        assert!(input("file://relative/in.jsonl").local_path().is_err());
    }
}

/// The kinds of job event, each published with its name as the routing key.
pub mod event {
    pub const SUBMITTED: &str = "job.submitted";
    pub const ACCEPTED: &str = "job.accepted";
    pub const REJECTED: &str = "job.rejected";
    pub const HELD: &str = "job.held";
    pub const REVIEW_APPROVED: &str = "job.review_approved";
    pub const REVIEW_REJECTED: &str = "job.review_rejected";
    /// An approval that could not be applied, so the job stays held.
    pub const REVIEW_NOT_APPLIED: &str = "job.review_not_applied";
    pub const BATCH_CREATED: &str = "job.batch_created";
    pub const BATCH_ENDED: &str = "job.batch_ended";
    pub const PART_DEFERRED: &str = "job.part_deferred";
    pub const CANCEL_REQUESTED: &str = "job.cancel_requested";
    pub const COMPLETED: &str = "job.completed";
    pub const CANCELLED: &str = "job.cancelled";
    pub const NEEDS_REVIEW: &str = "job.needs_review";
    pub const FAILED: &str = "job.failed";
}

/// One step in a job's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub schema_version: u32,
    pub event: String,
    pub job_id: String,
    pub team: String,
    pub at: DateTime<Utc>,
    /// Human-readable summary, for example the rejection reason.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl JobEvent {
    pub fn new(event: &str, job_id: &str, team: &str, message: impl Into<String>) -> JobEvent {
        JobEvent {
            schema_version: EVENT_SCHEMA_VERSION,
            event: event.to_owned(),
            job_id: job_id.to_owned(),
            team: team.to_owned(),
            at: Utc::now(),
            message: message.into(),
            provider_batch_id: None,
            detail: serde_json::Value::Null,
        }
    }
}

/// Requests of a provider batch by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failed requests whose error marks a retry as possibly successful (429, 5xx, overloaded).
    #[serde(default)]
    pub failed_retryable: u64,
    pub expired: u64,
    #[serde(default)]
    pub cancelled: u64,
}

impl RequestCounts {
    pub fn add(&mut self, other: &RequestCounts) {
        self.total += other.total;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.failed_retryable += other.failed_retryable;
        self.expired += other.expired;
        self.cancelled += other.cancelled;
    }
}

/// The cost of one provider batch, published once to the ledger exchange, or
/// a correction of such a record.
///
/// Field names follow FOCUS 1.2 where FOCUS has the column; the others carry
/// the `x_` prefix. Costs are exact decimal strings with six decimals.
/// Timestamps are UTC, and periods are half-open intervals `[start, end)`.
/// `schema/ledger-record.v2.json` describes the format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerRecord {
    #[serde(rename = "x_SchemaVersion")]
    pub schema_version: u32,
    /// Idempotency key: `provider:provider_batch_id`, or `correction:...` for a
    /// correction. Readers keep one record per id.
    #[serde(rename = "x_RecordId")]
    pub record_id: String,
    #[serde(rename = "BilledCost", with = "crate::money::decimal_string")]
    pub billed_cost_micros: Micros,
    /// Equal to the billed cost: batch usage has no commitment to amortise.
    #[serde(rename = "EffectiveCost", with = "crate::money::decimal_string")]
    pub effective_cost_micros: Micros,
    /// Cost at standard rates, with cached input at the plain input rate.
    #[serde(rename = "ListCost", with = "crate::money::decimal_string")]
    pub list_cost_micros: Micros,
    #[serde(rename = "BillingCurrency")]
    pub currency: String,
    /// When the provider batch ran: created to ended.
    #[serde(rename = "ChargePeriodStart")]
    pub charge_period_start: DateTime<Utc>,
    #[serde(rename = "ChargePeriodEnd")]
    pub charge_period_end: DateTime<Utc>,
    /// The accrual month (in the budget time zone) as a UTC interval.
    #[serde(rename = "BillingPeriodStart")]
    pub billing_period_start: DateTime<Utc>,
    #[serde(rename = "BillingPeriodEnd")]
    pub billing_period_end: DateTime<Utc>,
    /// Always `Usage`.
    #[serde(rename = "ChargeCategory")]
    pub charge_category: String,
    /// `Correction` for a correction record, otherwise empty.
    #[serde(rename = "ChargeClass")]
    pub charge_class: Option<String>,
    #[serde(rename = "ChargeDescription")]
    pub charge_description: String,
    /// Tokens of every class, billed or not.
    #[serde(rename = "ConsumedQuantity")]
    pub consumed_quantity: u64,
    #[serde(rename = "ConsumedUnit")]
    pub consumed_unit: String,
    /// Billed tokens of every class.
    #[serde(rename = "PricingQuantity")]
    pub pricing_quantity: u64,
    #[serde(rename = "PricingUnit")]
    pub pricing_unit: String,
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    #[serde(rename = "ServiceCategory")]
    pub service_category: String,
    /// `provider/model/batch`.
    #[serde(rename = "SkuId")]
    pub sku_id: String,
    /// The SKU and the `effective_from` date of the price table entry used.
    #[serde(rename = "SkuPriceId")]
    pub sku_price_id: String,
    #[serde(rename = "ProviderName")]
    pub provider_name: String,
    #[serde(rename = "PublisherName")]
    pub publisher_name: String,
    #[serde(rename = "InvoiceIssuerName")]
    pub invoice_issuer_name: String,
    /// The manifest's tags: owner team, cost center, workload class and job id.
    #[serde(rename = "Tags")]
    pub tags: BTreeMap<String, String>,
    #[serde(rename = "x_JobId")]
    pub job_id: String,
    #[serde(rename = "x_OwnerTeam")]
    pub owner_team: String,
    #[serde(rename = "x_CostCenter")]
    pub cost_center: String,
    #[serde(rename = "x_WorkloadClass")]
    pub workload_class: String,
    #[serde(rename = "x_Purpose")]
    pub purpose: String,
    #[serde(rename = "x_Provider")]
    pub provider: String,
    #[serde(rename = "x_Model")]
    pub model: String,
    #[serde(rename = "x_Endpoint")]
    pub endpoint: String,
    #[serde(rename = "x_ProviderBatchId")]
    pub provider_batch_id: String,
    /// Zero-based index of the job part this batch ran, and the job's part count.
    #[serde(rename = "x_PartIndex")]
    pub part_index: u32,
    #[serde(rename = "x_PartsTotal")]
    pub parts_total: u32,
    /// Provider status the batch ended in: `completed`, `expired` or `cancelled`.
    #[serde(rename = "x_ProviderStatus")]
    pub provider_status: String,
    #[serde(rename = "x_Requests")]
    pub requests: RequestCounts,
    /// Result lines that repeated a `custom_id` already counted, billed once.
    #[serde(rename = "x_DuplicateResultLines")]
    pub duplicate_result_lines: u64,
    /// Billed tokens by class, both pricing tiers together.
    #[serde(rename = "x_Tokens")]
    pub tokens: TokenCounts,
    /// The part of `tokens` from requests above the long-context threshold.
    #[serde(rename = "x_LongContextTokens")]
    pub long_context_tokens: TokenCounts,
    /// Saving of the standard cached-input rate against the list cost.
    #[serde(rename = "x_CacheDiscount", with = "crate::money::decimal_string")]
    pub cache_discount_micros: Micros,
    /// Saving of the batch rates: `ListCost - x_CacheDiscount - x_BatchDiscount = BilledCost`.
    #[serde(rename = "x_BatchDiscount", with = "crate::money::decimal_string")]
    pub batch_discount_micros: Micros,
    /// `effective_from` of the price table entry used.
    #[serde(rename = "x_PriceEffectiveFrom")]
    pub price_effective_from: chrono::NaiveDate,
    #[serde(rename = "x_SubmittedAt")]
    pub submitted_at: DateTime<Utc>,
    #[serde(rename = "x_CompletedAt")]
    pub provider_completed_at: Option<DateTime<Utc>>,
    #[serde(rename = "x_RecordedAt")]
    pub recorded_at: DateTime<Utc>,
    #[serde(rename = "x_AccrualConvention")]
    pub accrual_convention: crate::config::Accrual,
    /// Month the record counts towards, `YYYY-MM`: the billing period.
    #[serde(rename = "x_AccrualPeriod")]
    pub accrual_period: String,
    /// Month whose budget reserved the job, `YYYY-MM`. The cost itself goes to
    /// the budget of `accrual_period`.
    #[serde(rename = "x_BudgetMonth")]
    pub budget_month: String,
    /// For a correction: the record it corrects.
    #[serde(rename = "x_CorrectsRecordId", default)]
    pub corrects_record_id: Option<String>,
    /// For a correction: the reason given and who made it.
    #[serde(rename = "x_CorrectionReason", default)]
    pub correction_reason: Option<String>,
}

impl LedgerRecord {
    /// Reports whether the record's amounts add up:
    /// list minus both discounts is billed, and effective equals billed.
    pub fn amounts_add_up(&self) -> bool {
        self.list_cost_micros - self.cache_discount_micros - self.batch_discount_micros
            == self.billed_cost_micros
            && self.effective_cost_micros == self.billed_cost_micros
    }
}

/// Names a provider as FOCUS `ProviderName` and the service its batches run in.
pub fn provider_names(provider: &str) -> (&'static str, &'static str) {
    match provider {
        "anthropic" => ("Anthropic", "Anthropic Message Batches API"),
        "openai" => ("OpenAI", "OpenAI Batch API"),
        _ => ("Unknown", "Unknown"),
    }
}
