//! `batchgate budget`: each team's limit, reserved, spent and remaining amounts
//! per month, and changes to a month's limit.

use std::process::ExitCode;

use batchgate_shared::broker::Broker;
use batchgate_shared::config::Config;
use batchgate_shared::money::Micros;
use batchgate_shared::period::Period;
use batchgate_shared::store::Store;
use chrono::Utc;
use lapin::BasicProperties;
use serde::Serialize;

use crate::Failure;
use crate::status::print_output;

#[derive(clap::Subcommand)]
pub enum BudgetCommand {
    /// Print limit, reserved, spent and remaining per team for a month.
    Show {
        /// Only this team.
        #[arg(long)]
        team: Option<String>,
        /// Budget month `YYYY-MM` in the budget time zone; default: the current month.
        #[arg(long)]
        month: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set a team's limit for a month, recorded as a `budget.limit_set` event.
    Set {
        #[arg(long)]
        team: String,
        /// Budget month `YYYY-MM` in the budget time zone.
        #[arg(long)]
        month: String,
        /// New limit in USD, for example 250.00.
        #[arg(long)]
        limit: String,
        /// Name of the person making the change, recorded with the event.
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
    /// Release reservations whose job is gone (the scheduler also does this periodically).
    Reap {
        /// Minimum age of a reservation in seconds; default from `scheduler.reservation_max_age_secs`.
        #[arg(long)]
        max_age_secs: Option<u64>,
    },
    /// Rebuild a month's counters in Redis from the event and ledger streams.
    Rebuild {
        /// Budget month `YYYY-MM` in the budget time zone.
        #[arg(long)]
        month: String,
        /// Print the rebuilt counters without writing them.
        #[arg(long)]
        dry_run: bool,
        /// Milliseconds without a new message after which a stream replay ends.
        #[arg(long, default_value_t = 2000)]
        idle_ms: u64,
    },
}

/// One team's budget for one month.
#[derive(Debug, Serialize)]
struct BudgetRow {
    team: String,
    cost_center: String,
    month: String,
    period_start: chrono::DateTime<Utc>,
    period_end: chrono::DateTime<Utc>,
    limit_micros: Micros,
    reserved_micros: Micros,
    spent_micros: Micros,
    remaining_micros: Micros,
    /// False while no job reserved against the month: the limit shown is the configured default.
    counters_exist: bool,
}

/// A change to a team's monthly limit.
#[derive(Debug, Serialize)]
struct LimitSet {
    schema_version: u32,
    event: &'static str,
    team: String,
    month: String,
    previous_limit_micros: Option<Micros>,
    limit_micros: Micros,
    by: String,
    at: chrono::DateTime<Utc>,
}

pub async fn run(config: &Config, command: BudgetCommand) -> Result<ExitCode, Failure> {
    match command {
        BudgetCommand::Show { team, month, json } => show(config, team, month, json).await,
        BudgetCommand::Set {
            team,
            month,
            limit,
            by,
        } => set(config, &team, &month, &limit, &by).await,
        BudgetCommand::Reap { max_age_secs } => reap(config, max_age_secs).await,
        BudgetCommand::Rebuild {
            month,
            dry_run,
            idle_ms,
        } => rebuild(config, &month, dry_run, idle_ms).await,
    }
}

fn period(config: &Config, month: Option<&str>) -> Result<Period, Failure> {
    let periods = config.periods();
    match month {
        None => Ok(periods.containing(Utc::now())),
        Some(month) => periods.parse(month).ok_or_else(|| {
            Failure::Invalid(format!(
                "invalid --month {month:?}: expected YYYY-MM, for example 2026-12"
            ))
        }),
    }
}

fn check_team(config: &Config, team: &str) -> Result<(), Failure> {
    if config.teams.contains_key(team) {
        return Ok(());
    }
    let known: Vec<&str> = config.teams.keys().map(String::as_str).collect();
    Err(Failure::Invalid(format!(
        "unknown team {team:?}; configured teams: {}",
        known.join(", ")
    )))
}

async fn show(
    config: &Config,
    team: Option<String>,
    month: Option<String>,
    json: bool,
) -> Result<ExitCode, Failure> {
    let period = period(config, month.as_deref())?;
    let teams: Vec<String> = match team {
        Some(team) => {
            check_team(config, &team)?;
            vec![team]
        }
        None => config.teams.keys().cloned().collect(),
    };
    let store = Store::connect(&config.redis).await?;
    let mut rows = Vec::new();
    for team in teams {
        let counters = store.budget(&team, &period.month).await?;
        let default_limit = config.team_budget(&team).unwrap_or_default();
        let (limit, reserved, spent) = match counters {
            Some(counters) => (counters.limit, counters.reserved, counters.spent),
            None => (default_limit, Micros::ZERO, Micros::ZERO),
        };
        rows.push(BudgetRow {
            cost_center: config.teams[&team].cost_center.clone(),
            team,
            month: period.month.clone(),
            period_start: period.start,
            period_end: period.end,
            limit_micros: limit,
            reserved_micros: reserved,
            spent_micros: spent,
            remaining_micros: limit - reserved - spent,
            counters_exist: counters.is_some(),
        });
    }
    if json {
        print_output(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!(
        "budget {} ({}, {} to {})\n{:<12} {:<11} {:>14} {:>14} {:>14} {:>14}\n",
        period.month,
        config.budget_time_zone,
        period.start.format("%Y-%m-%dT%H:%M:%SZ"),
        period.end.format("%Y-%m-%dT%H:%M:%SZ"),
        "team",
        "cost center",
        "limit USD",
        "reserved USD",
        "spent USD",
        "remaining USD"
    );
    for row in &rows {
        out.push_str(&format!(
            "{:<12} {:<11} {:>14} {:>14} {:>14} {:>14}\n",
            row.team,
            row.cost_center,
            row.limit_micros,
            row.reserved_micros,
            row.spent_micros,
            row.remaining_micros
        ));
    }
    print_output(&out);
    Ok(ExitCode::SUCCESS)
}

async fn set(
    config: &Config,
    team: &str,
    month: &str,
    limit: &str,
    by: &str,
) -> Result<ExitCode, Failure> {
    check_team(config, team)?;
    let period = period(config, Some(month))?;
    let limit: Micros = limit
        .parse()
        .map_err(|error| Failure::Invalid(format!("--limit: {error}")))?;
    let store = Store::connect(&config.redis).await?;
    let broker = Broker::connect(&config.broker, "batchgate-budget").await?;
    broker
        .declare_topology(&[config.worker.poll_interval_secs])
        .await?;

    // A month without counters gets them with the configured default first, so the
    // previous limit in the event is the one that applied.
    let default_limit = config.team_budget(team).unwrap_or_default();
    store
        .init_budget(team, &period.month, default_limit)
        .await?;
    let previous = store.set_limit(team, &period.month, limit).await?;
    let event = LimitSet {
        schema_version: 1,
        event: "budget.limit_set",
        team: team.to_owned(),
        month: period.month.clone(),
        previous_limit_micros: previous,
        limit_micros: limit,
        by: by.to_owned(),
        at: Utc::now(),
    };
    let json = serde_json::to_string(&event)?;
    store
        .append_budget_history(team, &period.month, &json)
        .await?;
    broker
        .publish_bytes(
            &broker.names.events_exchange(),
            event.event,
            json.as_bytes(),
            BasicProperties::default(),
        )
        .await?;
    broker.close().await;

    let counters = store.budget(team, &period.month).await?.unwrap_or_default();
    let previous = previous
        .map(|amount| amount.to_string())
        .unwrap_or_else(|| "-".into());
    print_output(&format!(
        "team {team} {}: limit {limit} USD (was {previous} USD); reserved {} USD, spent {} USD, remaining {} USD\n",
        period.month,
        counters.reserved,
        counters.spent,
        counters.remaining()
    ));
    if counters.remaining().0 < 0 {
        eprintln!(
            "warning: reservations and spending already exceed the new limit; new jobs will be rejected"
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn rebuild(
    config: &Config,
    month: &str,
    dry_run: bool,
    idle_ms: u64,
) -> Result<ExitCode, Failure> {
    let period = period(config, Some(month))?;
    let store = Store::connect(&config.redis).await?;
    let broker = Broker::connect(&config.broker, "batchgate-budget-rebuild").await?;
    broker
        .declare_topology(&[config.worker.poll_interval_secs])
        .await?;
    let idle = std::time::Duration::from_millis(idle_ms);
    let rebuilt =
        batchgate_shared::rebuild::rebuild_month(config, &broker, &period.month, idle).await?;
    broker.close().await;

    let mut out = format!(
        "budget rebuild {}{}\n{:<12} {:>14} {:>14} {:>14} {:>14} {:>14}\n",
        period.month,
        if dry_run {
            " (dry run, nothing written)"
        } else {
            ""
        },
        "team",
        "limit USD",
        "reserved USD",
        "spent USD",
        "was reserved",
        "was spent"
    );
    for budget in &rebuilt {
        let before = store.budget(&budget.team, &period.month).await?;
        let was = |amount: fn(&batchgate_shared::store::BudgetCounters) -> Micros| {
            before
                .as_ref()
                .map(|counters| amount(counters).to_string())
                .unwrap_or_else(|| "-".into())
        };
        out.push_str(&format!(
            "{:<12} {:>14} {:>14} {:>14} {:>14} {:>14}\n",
            budget.team,
            budget.counters.limit,
            budget.counters.reserved,
            budget.counters.spent,
            was(|counters| counters.reserved),
            was(|counters| counters.spent)
        ));
        if !dry_run {
            batchgate_shared::rebuild::restore(&store, &period.month, budget).await?;
        }
    }
    print_output(&out);
    Ok(ExitCode::SUCCESS)
}

async fn reap(config: &Config, max_age_secs: Option<u64>) -> Result<ExitCode, Failure> {
    let max_age = max_age_secs.unwrap_or(config.scheduler.reservation_max_age_secs) as i64;
    let store = Store::connect(&config.redis).await?;
    let broker = Broker::connect(&config.broker, "batchgate-budget-reap").await?;
    broker
        .declare_topology(&[config.worker.poll_interval_secs])
        .await?;
    let reaped =
        batchgate_shared::reaper::reap(config, &store, &broker, Utc::now(), max_age).await?;
    broker.close().await;
    let mut out = format!(
        "released {} reservations older than {max_age} s\n",
        reaped.len()
    );
    for released in &reaped {
        out.push_str(&format!(
            "{} {} {}: {} USD reserved, {} USD spent ({})\n",
            released.team,
            released.month,
            released.job_id,
            released.amount_micros,
            released.spent_micros,
            released.reason
        ));
    }
    print_output(&out);
    Ok(ExitCode::SUCCESS)
}
