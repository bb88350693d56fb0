//! `batchgate ledger`: replay the ledger stream for one accrual month.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use batchgate_shared::broker::Broker;
use batchgate_shared::config::Config;
use batchgate_shared::message::LedgerRecord;
use batchgate_shared::money::Micros;
use batchgate_shared::replay::ledger_records;
use serde::Serialize;

use crate::Failure;
use crate::status::print_output;

#[derive(clap::Args)]
pub struct LedgerArguments {
    /// Accrual month, `YYYY-MM`.
    #[arg(long)]
    month: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Milliseconds without a new message after which the replay ends.
    #[arg(long, default_value_t = 2000)]
    idle_ms: u64,
}

/// One team's sums for the month.
#[derive(Debug, Default, Serialize)]
pub struct TeamTotal {
    pub team: String,
    pub cost_center: String,
    pub records: u64,
    pub requests_succeeded: u64,
    pub requests_failed: u64,
    pub list_cost_micros: Micros,
    pub cache_discount_micros: Micros,
    pub batch_discount_micros: Micros,
    pub billed_cost_micros: Micros,
}

pub async fn run(config: &Config, arguments: LedgerArguments) -> Result<ExitCode, Failure> {
    check_month(&arguments.month)?;
    let broker = Broker::connect(&config.broker, "batchgate-ledger").await?;
    broker
        .declare_topology(&[config.worker.poll_interval_secs])
        .await?;
    let (records, unreadable) =
        ledger_records(&broker, Duration::from_millis(arguments.idle_ms)).await?;
    broker.close().await;
    let records: Vec<LedgerRecord> = records
        .into_iter()
        .filter(|record| record.accrual_period == arguments.month)
        .collect();
    let totals = team_totals(&records);
    let total_billed: Micros = totals.iter().map(|total| total.billed_cost_micros).sum();
    if unreadable > 0 {
        eprintln!(
            "warning: {unreadable} messages in the ledger stream are not ledger records and were skipped"
        );
    }

    if arguments.json {
        let output = serde_json::json!({
            "month": arguments.month,
            "records": records,
            "totals": totals,
            "total_billed_cost_micros": total_billed,
        });
        print_output(&format!("{}\n", serde_json::to_string_pretty(&output)?));
        return Ok(ExitCode::SUCCESS);
    }
    print_output(&ledger_text(&arguments.month, &records, &totals));
    Ok(ExitCode::SUCCESS)
}

fn ledger_text(month: &str, records: &[LedgerRecord], totals: &[TeamTotal]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let noun = if records.len() == 1 {
        "record"
    } else {
        "records"
    };
    let _ = writeln!(out, "ledger {month}: {} {noun}", records.len());
    let _ = writeln!(
        out,
        "{:<30} {:<10} {:<40} {:>5} {:>9} {:>7} {:>14}",
        "job", "team", "provider batch", "part", "succeeded", "failed", "billed USD"
    );
    for record in records {
        let _ = writeln!(
            out,
            "{:<30} {:<10} {:<40} {:>5} {:>9} {:>7} {:>14}",
            record.job_id,
            record.owner_team,
            record.provider_batch_id,
            format!("{}/{}", record.part_index + 1, record.parts_total),
            record.requests.succeeded,
            record.requests.failed,
            record.billed_cost_micros
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<10} {:<11} {:>7} {:>14} {:>14} {:>14} {:>14}",
        "team",
        "cost center",
        "records",
        "list USD",
        "cache disc USD",
        "batch disc USD",
        "billed USD"
    );
    for total in totals {
        let _ = writeln!(
            out,
            "{:<10} {:<11} {:>7} {:>14} {:>14} {:>14} {:>14}",
            total.team,
            total.cost_center,
            total.records,
            total.list_cost_micros,
            total.cache_discount_micros,
            total.batch_discount_micros,
            total.billed_cost_micros
        );
    }
    let sum = |amount: fn(&TeamTotal) -> Micros| totals.iter().map(amount).sum::<Micros>();
    let _ = writeln!(
        out,
        "{:<10} {:<11} {:>7} {:>14} {:>14} {:>14} {:>14}",
        "total",
        "",
        records.len(),
        sum(|total| total.list_cost_micros),
        sum(|total| total.cache_discount_micros),
        sum(|total| total.batch_discount_micros),
        sum(|total| total.billed_cost_micros)
    );
    out
}

fn check_month(month: &str) -> Result<(), Failure> {
    let valid = chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").is_ok()
        && month.len() == 7;
    if valid {
        Ok(())
    } else {
        Err(Failure::Invalid(format!(
            "invalid --month {month:?}: expected YYYY-MM, for example 2026-12"
        )))
    }
}

/// Sums records per team (and cost center), sorted by team.
pub fn team_totals(records: &[LedgerRecord]) -> Vec<TeamTotal> {
    let mut totals: BTreeMap<(String, String), TeamTotal> = BTreeMap::new();
    for record in records {
        let key = (record.owner_team.clone(), record.cost_center.clone());
        let total = totals.entry(key).or_insert_with(|| TeamTotal {
            team: record.owner_team.clone(),
            cost_center: record.cost_center.clone(),
            ..TeamTotal::default()
        });
        total.records += 1;
        total.requests_succeeded += record.requests.succeeded;
        total.requests_failed += record.requests.failed;
        total.list_cost_micros = total.list_cost_micros + record.list_cost_micros;
        total.cache_discount_micros = total.cache_discount_micros + record.cache_discount_micros;
        total.batch_discount_micros = total.batch_discount_micros + record.batch_discount_micros;
        total.billed_cost_micros = total.billed_cost_micros + record.billed_cost_micros;
    }
    totals.into_values().collect()
}
