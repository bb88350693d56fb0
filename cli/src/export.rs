//! `batchgate ledger export`: a month's ledger records as FOCUS CSV, plain CSV
//! or JSON lines.

use std::io::Write;

use batchgate_shared::message::LedgerRecord;
use batchgate_shared::money::Micros;
use chrono::{DateTime, Utc};

/// Output formats of `ledger export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// FOCUS 1.2 column names, then batchgate's `x_` columns.
    FocusCsv,
    /// One row per record with short snake_case column names.
    Csv,
    /// The ledger records as they are on the stream, one JSON object per line.
    Jsonl,
}

/// FOCUS 1.2 columns that every exported row has, in output order.
pub const FOCUS_COLUMNS: [&str; 23] = [
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "BillingCurrency",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingQuantity",
    "PricingUnit",
    "ServiceName",
    "ServiceCategory",
    "SkuId",
    "SkuPriceId",
    "ProviderName",
    "PublisherName",
    "InvoiceIssuerName",
    "Tags",
];

/// Batchgate's own columns of the FOCUS export, after the FOCUS ones.
const EXTRA_COLUMNS: [&str; 38] = [
    "x_RecordId",
    "x_JobId",
    "x_OwnerTeam",
    "x_CostCenter",
    "x_WorkloadClass",
    "x_Purpose",
    "x_Provider",
    "x_Model",
    "x_Endpoint",
    "x_ProviderBatchId",
    "x_PartIndex",
    "x_PartsTotal",
    "x_ProviderStatus",
    "x_RequestsTotal",
    "x_RequestsSucceeded",
    "x_RequestsFailed",
    "x_RequestsFailedRetryable",
    "x_RequestsExpired",
    "x_RequestsCancelled",
    "x_DuplicateResultLines",
    "x_InputTokens",
    "x_CachedInputTokens",
    "x_CacheWriteTokens",
    "x_CacheWrite1hTokens",
    "x_OutputTokens",
    "x_LongContextPromptTokens",
    "x_LongContextOutputTokens",
    "x_CacheDiscount",
    "x_BatchDiscount",
    "x_PriceEffectiveFrom",
    "x_AccrualConvention",
    "x_AccrualPeriod",
    "x_BudgetMonth",
    "x_SubmittedAt",
    "x_CompletedAt",
    "x_RecordedAt",
    "x_CorrectsRecordId",
    "x_CorrectionReason",
];

/// Formats a timestamp as FOCUS writes date-times: UTC, seconds, `Z`.
fn utc(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn money(amount: Micros) -> String {
    amount.to_string()
}

fn focus_row(record: &LedgerRecord) -> Vec<String> {
    let requests = &record.requests;
    let tokens = &record.tokens;
    vec![
        money(record.billed_cost_micros),
        money(record.effective_cost_micros),
        money(record.list_cost_micros),
        record.currency.clone(),
        utc(&record.charge_period_start),
        utc(&record.charge_period_end),
        utc(&record.billing_period_start),
        utc(&record.billing_period_end),
        record.charge_category.clone(),
        record.charge_class.clone().unwrap_or_default(),
        record.charge_description.clone(),
        record.consumed_quantity.to_string(),
        record.consumed_unit.clone(),
        record.pricing_quantity.to_string(),
        record.pricing_unit.clone(),
        record.service_name.clone(),
        record.service_category.clone(),
        record.sku_id.clone(),
        record.sku_price_id.clone(),
        record.provider_name.clone(),
        record.publisher_name.clone(),
        record.invoice_issuer_name.clone(),
        serde_json::to_string(&record.tags).unwrap_or_default(),
        record.record_id.clone(),
        record.job_id.clone(),
        record.owner_team.clone(),
        record.cost_center.clone(),
        record.workload_class.clone(),
        record.purpose.clone(),
        record.provider.clone(),
        record.model.clone(),
        record.endpoint.clone(),
        record.provider_batch_id.clone(),
        record.part_index.to_string(),
        record.parts_total.to_string(),
        record.provider_status.clone(),
        requests.total.to_string(),
        requests.succeeded.to_string(),
        requests.failed.to_string(),
        requests.failed_retryable.to_string(),
        requests.expired.to_string(),
        requests.cancelled.to_string(),
        record.duplicate_result_lines.to_string(),
        tokens.input.to_string(),
        tokens.cached_input.to_string(),
        tokens.cache_write.to_string(),
        tokens.cache_write_1h.to_string(),
        tokens.output.to_string(),
        record.long_context_tokens.prompt().to_string(),
        record.long_context_tokens.output.to_string(),
        money(record.cache_discount_micros),
        money(record.batch_discount_micros),
        record.price_effective_from.to_string(),
        record.accrual_convention.as_str().to_owned(),
        record.accrual_period.clone(),
        record.budget_month.clone(),
        utc(&record.submitted_at),
        record
            .provider_completed_at
            .as_ref()
            .map(utc)
            .unwrap_or_default(),
        utc(&record.recorded_at),
        record.corrects_record_id.clone().unwrap_or_default(),
        record.correction_reason.clone().unwrap_or_default(),
    ]
}

const PLAIN_COLUMNS: [&str; 20] = [
    "record_id",
    "charge_class",
    "corrects_record_id",
    "job_id",
    "owner_team",
    "cost_center",
    "workload_class",
    "provider",
    "model",
    "provider_batch_id",
    "part",
    "accrual_period",
    "requests_succeeded",
    "requests_failed",
    "billed_tokens",
    "currency",
    "list_cost",
    "cache_discount",
    "batch_discount",
    "billed_cost",
];

fn plain_row(record: &LedgerRecord) -> Vec<String> {
    vec![
        record.record_id.clone(),
        record.charge_class.clone().unwrap_or_default(),
        record.corrects_record_id.clone().unwrap_or_default(),
        record.job_id.clone(),
        record.owner_team.clone(),
        record.cost_center.clone(),
        record.workload_class.clone(),
        record.provider.clone(),
        record.model.clone(),
        record.provider_batch_id.clone(),
        format!("{}/{}", record.part_index + 1, record.parts_total),
        record.accrual_period.clone(),
        record.requests.succeeded.to_string(),
        record.requests.failed.to_string(),
        record.pricing_quantity.to_string(),
        record.currency.clone(),
        money(record.list_cost_micros),
        money(record.cache_discount_micros),
        money(record.batch_discount_micros),
        money(record.billed_cost_micros),
    ]
}

/// Writes the records in `format` to `out`.
pub fn write(
    records: &[LedgerRecord],
    format: ExportFormat,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match format {
        ExportFormat::Jsonl => {
            for record in records {
                serde_json::to_writer(&mut *out, record)?;
                out.write_all(b"\n")?;
            }
        }
        ExportFormat::FocusCsv | ExportFormat::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            let to_io = |error: csv::Error| std::io::Error::other(error.to_string());
            if format == ExportFormat::FocusCsv {
                let header = FOCUS_COLUMNS.iter().chain(EXTRA_COLUMNS.iter());
                writer.write_record(header).map_err(to_io)?;
                for record in records {
                    writer.write_record(focus_row(record)).map_err(to_io)?;
                }
            } else {
                writer.write_record(PLAIN_COLUMNS).map_err(to_io)?;
                for record in records {
                    writer.write_record(plain_row(record)).map_err(to_io)?;
                }
            }
            writer.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn focus_rows_match_header() {
        let text = include_str!("../../tests/fixtures/ledger-record.v2.json");
        let record: LedgerRecord = serde_json::from_str(text).unwrap();
        assert_eq!(
            focus_row(&record).len(),
            FOCUS_COLUMNS.len() + EXTRA_COLUMNS.len()
        );
        assert_eq!(plain_row(&record).len(), PLAIN_COLUMNS.len());
    }
}
