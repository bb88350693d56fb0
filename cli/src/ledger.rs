//! `batchgate ledger`: replay the ledger stream for one accrual month, export
//! it, or correct it after a price change.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use batchgate_shared::broker::Broker;
use batchgate_shared::config::Config;
use batchgate_shared::message::{LEDGER_SCHEMA_VERSION, LedgerRecord};
use batchgate_shared::money::Micros;
use batchgate_shared::replay::ledger_records;
use serde::Serialize;

use crate::Failure;
use crate::export::{self, ExportFormat};
use crate::status::print_output;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LedgerArguments {
    #[command(subcommand)]
    command: Option<LedgerCommand>,
    /// Accrual month, `YYYY-MM`.
    #[arg(long, required = true)]
    month: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Milliseconds without a new message after which the replay ends.
    #[arg(long, default_value_t = 2000)]
    idle_ms: u64,
}

#[derive(clap::Subcommand)]
enum LedgerCommand {
    /// Write a month's records, corrections included, as FOCUS CSV, CSV or JSON lines.
    Export(ExportArguments),
    /// Price a month's records again with the current price table and publish a
    /// correction record for each whose cost changed.
    Reprice(crate::reprice::RepriceArguments),
}

#[derive(clap::Args)]
struct ExportArguments {
    /// Accrual month, `YYYY-MM`.
    #[arg(long)]
    month: String,
    #[arg(long, value_enum, default_value = "focus-csv")]
    format: ExportFormat,
    /// File to write; standard output by default.
    #[arg(long)]
    output: Option<std::path::PathBuf>,
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

/// Replays the ledger and returns the records, corrections included, whose
/// accrual month is `month`.
pub async fn month_records(
    config: &Config,
    month: &str,
    idle_ms: u64,
) -> Result<Vec<LedgerRecord>, Failure> {
    check_month(month)?;
    let broker = Broker::connect(&config.broker, "batchgate-ledger").await?;
    broker
        .declare_topology(&[config.worker.poll_interval_secs])
        .await?;
    let (records, unreadable) = ledger_records(&broker, Duration::from_millis(idle_ms)).await?;
    broker.close().await;
    if unreadable > 0 {
        eprintln!(
            "warning: {unreadable} messages in the ledger stream are not ledger records of schema version \
             {LEDGER_SCHEMA_VERSION} and were skipped"
        );
    }
    Ok(records
        .into_iter()
        .filter(|record| record.accrual_period == month)
        .collect())
}

pub async fn run(config: &Config, arguments: LedgerArguments) -> Result<ExitCode, Failure> {
    match arguments.command {
        Some(LedgerCommand::Export(export)) => return run_export(config, export).await,
        Some(LedgerCommand::Reprice(reprice)) => return crate::reprice::run(config, reprice).await,
        None => {}
    }
    let month = arguments.month.unwrap_or_default();
    let records = month_records(config, &month, arguments.idle_ms).await?;
    let totals = team_totals(&records);
    let total_billed: Micros = totals.iter().map(|total| total.billed_cost_micros).sum();

    if arguments.json {
        let output = serde_json::json!({
            "month": month,
            "records": records,
            "totals": totals,
            "total_billed_cost_micros": total_billed,
        });
        print_output(&format!("{}\n", serde_json::to_string_pretty(&output)?));
        return Ok(ExitCode::SUCCESS);
    }
    print_output(&ledger_text(&month, &records, &totals));
    Ok(ExitCode::SUCCESS)
}

async fn run_export(config: &Config, arguments: ExportArguments) -> Result<ExitCode, Failure> {
    let records = month_records(config, &arguments.month, arguments.idle_ms).await?;
    match &arguments.output {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|error| {
                Failure::Invalid(format!("cannot write {}: {error}", path.display()))
            })?;
            let mut out = std::io::BufWriter::new(file);
            export::write(&records, arguments.format, &mut out)?;
            std::io::Write::flush(&mut out)?;
            let total: Micros = records.iter().map(|record| record.billed_cost_micros).sum();
            eprintln!(
                "wrote {} records of {} to {} (BilledCost total {total})",
                records.len(),
                arguments.month,
                path.display()
            );
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            match export::write(&records, arguments.format, &mut out) {
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
    }
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
            if record.charge_class.is_some() {
                "corr.".to_owned()
            } else {
                format!("{}/{}", record.part_index + 1, record.parts_total)
            },
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
