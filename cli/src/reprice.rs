//! `batchgate ledger reprice`: correct a month's records after the price
//! table changed, without overwriting any record.
//!
//! Each usage record is priced again with the entry in force when its batch
//! ran. When the result differs from the record plus the corrections already
//! published for it, a correction record (ChargeClass `Correction`) carries
//! the difference. Its id is derived from the original and from the amounts
//! before and after it, so running the command again publishes nothing new,
//! and a price changed and then changed back gets a correction each time.

use std::collections::HashMap;
use std::process::ExitCode;

use batchgate_shared::broker::Broker;
use batchgate_shared::config::Config;
use batchgate_shared::message::LedgerRecord;
use batchgate_shared::money::Micros;
use batchgate_shared::pricing::{Cost, PriceTable, TokenCounts, Usage};
use batchgate_shared::store::Store;
use lapin::BasicProperties;

use crate::Failure;
use crate::ledger::month_records;

#[derive(clap::Args)]
pub struct RepriceArguments {
    /// Accrual month, `YYYY-MM`.
    #[arg(long)]
    month: String,
    /// Name of the person making the corrections, recorded in each.
    #[arg(long)]
    by: String,
    /// Reason for pricing the records again, recorded in each correction.
    #[arg(long)]
    reason: String,
    /// Print the corrections without publishing them.
    #[arg(long)]
    dry_run: bool,
    /// Milliseconds without a new message after which the replay ends.
    #[arg(long, default_value_t = 2000)]
    idle_ms: u64,
}

/// Returns `tokens - part` class by class.
fn without(tokens: &TokenCounts, part: &TokenCounts) -> TokenCounts {
    TokenCounts {
        input: tokens.input.saturating_sub(part.input),
        cached_input: tokens.cached_input.saturating_sub(part.cached_input),
        cache_write: tokens.cache_write.saturating_sub(part.cache_write),
        cache_write_1h: tokens.cache_write_1h.saturating_sub(part.cache_write_1h),
        output: tokens.output.saturating_sub(part.output),
    }
}

/// Amounts of a record, or of a record plus its corrections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Amounts {
    list: Micros,
    cache_discount: Micros,
    batch_discount: Micros,
    billed: Micros,
}

impl Amounts {
    fn of(record: &LedgerRecord) -> Amounts {
        Amounts {
            list: record.list_cost_micros,
            cache_discount: record.cache_discount_micros,
            batch_discount: record.batch_discount_micros,
            billed: record.billed_cost_micros,
        }
    }

    fn of_cost(cost: &Cost) -> Amounts {
        Amounts {
            list: cost.list,
            cache_discount: cost.cache_discount,
            batch_discount: cost.batch_discount(),
            billed: cost.billed,
        }
    }

    fn plus(self, other: Amounts) -> Amounts {
        Amounts {
            list: self.list + other.list,
            cache_discount: self.cache_discount + other.cache_discount,
            batch_discount: self.batch_discount + other.batch_discount,
            billed: self.billed + other.billed,
        }
    }

    fn minus(self, other: Amounts) -> Amounts {
        Amounts {
            list: self.list - other.list,
            cache_discount: self.cache_discount - other.cache_discount,
            batch_discount: self.batch_discount - other.batch_discount,
            billed: self.billed - other.billed,
        }
    }
}

pub async fn run(config: &Config, arguments: RepriceArguments) -> Result<ExitCode, Failure> {
    for (name, value) in [("--by", &arguments.by), ("--reason", &arguments.reason)] {
        if value.trim().is_empty() {
            return Err(Failure::Invalid(format!(
                "{name} must not be empty: each correction records it"
            )));
        }
    }
    let table = PriceTable::load(&config.price_table)
        .map_err(|error| Failure::Invalid(error.to_string()))?;
    let records = month_records(config, &arguments.month, arguments.idle_ms).await?;
    let mut corrected: HashMap<&str, Amounts> = HashMap::new();
    for record in &records {
        if let Some(original) = &record.corrects_record_id {
            let sum = corrected.entry(original.as_str()).or_default();
            *sum = sum.plus(Amounts::of(record));
        }
    }

    let mut corrections = Vec::new();
    let mut unpriced = Vec::new();
    for record in records
        .iter()
        .filter(|record| record.charge_class.is_none())
    {
        let Some(price) = table.lookup(&record.provider, &record.model, record.charge_period_start)
        else {
            unpriced.push(record.record_id.clone());
            continue;
        };
        let usage = Usage {
            base: without(&record.tokens, &record.long_context_tokens),
            long_context: record.long_context_tokens,
        };
        let cost = price.price_usage(&usage)?;
        let current = Amounts::of(record).plus(
            corrected
                .get(record.record_id.as_str())
                .copied()
                .unwrap_or_default(),
        );
        let target = Amounts::of_cost(&cost);
        if target == current {
            continue;
        }
        let difference = target.minus(current);
        // The amounts before the correction are part of the id, so that a price
        // changed and then changed back gets a new correction, not a repeated id.
        let fingerprint = xxhash_rust::xxh3::xxh3_64(
            format!(
                "{}:{current:?}:{target:?}:{}",
                record.record_id, price.effective_from
            )
            .as_bytes(),
        );
        let mut correction = record.clone();
        correction.record_id = format!("correction:{}:{fingerprint:016x}", record.record_id);
        correction.charge_class = Some("Correction".to_owned());
        correction.corrects_record_id = Some(record.record_id.clone());
        correction.correction_reason = Some(format!(
            "{} (by {})",
            arguments.reason.trim(),
            arguments.by.trim()
        ));
        correction.charge_description = format!(
            "Correction of {}: priced again with the {} entry of {} {}; billed {} -> {} {}",
            record.record_id,
            price.effective_from,
            record.provider,
            record.model,
            current.billed,
            target.billed,
            record.currency
        );
        correction.list_cost_micros = difference.list;
        correction.cache_discount_micros = difference.cache_discount;
        correction.batch_discount_micros = difference.batch_discount;
        correction.billed_cost_micros = difference.billed;
        correction.effective_cost_micros = difference.billed;
        correction.consumed_quantity = 0;
        correction.pricing_quantity = 0;
        correction.tokens = TokenCounts::default();
        correction.long_context_tokens = TokenCounts::default();
        correction.requests = Default::default();
        correction.duplicate_result_lines = 0;
        correction.price_effective_from = price.effective_from;
        correction.sku_price_id = format!("{}/{}", record.sku_id, price.effective_from);
        correction.recorded_at = chrono::Utc::now();
        corrections.push(correction);
    }

    for record_id in &unpriced {
        eprintln!("warning: {record_id} has no price entry in force when it ran; left as it is");
    }
    if corrections.is_empty() {
        println!(
            "no record of {} needs a correction: every one matches the price table",
            arguments.month
        );
        return Ok(ExitCode::SUCCESS);
    }
    let total: Micros = corrections
        .iter()
        .map(|record| record.billed_cost_micros)
        .sum();
    for correction in &corrections {
        println!(
            "{}\t{}\tBilledCost {:+}",
            correction.record_id,
            correction.charge_description,
            correction.billed_cost_micros.to_decimal()
        );
    }
    if arguments.dry_run {
        println!(
            "dry run: {} corrections, BilledCost {:+} in total, not published",
            corrections.len(),
            total.to_decimal()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let store = Store::connect(&config.redis).await?;
    let broker = Broker::connect(&config.broker, "batchgate-reprice").await?;
    broker
        .declare_topology(&[config.worker.poll_interval_secs])
        .await?;
    for correction in &corrections {
        // The budget first: a crash before the publish leaves a correction that
        // the next run publishes with the same id, and the budget change is
        // applied once per id.
        let limit = config
            .team_budget(&correction.owner_team)
            .unwrap_or_default();
        store
            .apply_correction(
                &correction.owner_team,
                &correction.accrual_period,
                &correction.record_id,
                correction.billed_cost_micros,
                limit,
            )
            .await?;
        let routing_key = format!("ledger.{}.{}", correction.provider, correction.owner_team);
        let properties =
            BasicProperties::default().with_message_id(correction.record_id.as_str().into());
        broker
            .publish_json(
                &broker.names.ledger_exchange(),
                &routing_key,
                correction,
                properties,
            )
            .await?;
    }
    broker.close().await;
    println!(
        "published {} corrections to the ledger: BilledCost {:+} in total for {}",
        corrections.len(),
        total.to_decimal(),
        arguments.month
    );
    Ok(ExitCode::SUCCESS)
}
