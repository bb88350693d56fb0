//! Rebuilding a month's budget counters in Redis from the broker's streams,
//! for the day Redis lost its data.
//!
//! - The limit is the last `budget.limit_set` event for the team and month, or
//!   the configured default.
//! - Reserved is the estimate of every job accepted for the month that has not
//!   ended (`job.accepted` without a later `job.completed`, `job.failed` or
//!   `job.cancelled`); a job whose results need review keeps its reservation.
//! - Spent is the billed cost of the ledger records (corrections included)
//!   whose accrual month is the month, of jobs that ended, one per record id:
//!   what settlement and corrections added to that month.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use crate::broker::Broker;
use crate::config::Config;
use crate::error::Result;
use crate::message::event;
use crate::money::Micros;
use crate::replay::{ledger_records, read_stream};
use crate::store::{BudgetCounters, Store};

/// Counters rebuilt for one team, with the job ids behind them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuiltBudget {
    pub team: String,
    pub counters: BudgetCounters,
    pub reservations: BTreeMap<String, Micros>,
    pub settlements: BTreeMap<String, Micros>,
    pub alerts_published: Vec<u32>,
}

#[derive(Default)]
struct JobTrace {
    team: String,
    estimate: Micros,
    ended: bool,
}

/// Computes every configured team's counters for `month` from the streams.
pub async fn rebuild_month(
    config: &Config,
    broker: &Broker,
    month: &str,
    idle: Duration,
) -> Result<Vec<RebuiltBudget>> {
    let events = read_stream(broker, &broker.names.events_stream(), idle).await?;
    let (records, _) = ledger_records(broker, idle).await?;
    let billed: Vec<BilledRecord> = records
        .iter()
        .map(|record| BilledRecord {
            job_id: record.job_id.clone(),
            team: record.owner_team.clone(),
            accrual_period: record.accrual_period.clone(),
            billed: record.billed_cost_micros,
        })
        .collect();
    Ok(rebuild_from(config, month, &events, &billed))
}

/// The part of a ledger record that a rebuild reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BilledRecord {
    pub job_id: String,
    pub team: String,
    /// Month whose budget the cost was added to.
    pub accrual_period: String,
    pub billed: Micros,
}

/// Computes every configured team's counters for `month` from event bodies
/// (JSON, in stream order) and the month's ledger records, one per record id.
pub fn rebuild_from(
    config: &Config,
    month: &str,
    events: &[Vec<u8>],
    records: &[BilledRecord],
) -> Vec<RebuiltBudget> {
    let mut ended: HashSet<String> = HashSet::new();
    let mut jobs: HashMap<String, JobTrace> = HashMap::new();
    let mut limits: HashMap<String, Micros> = HashMap::new();
    let mut alerts: HashMap<String, HashSet<u32>> = HashMap::new();
    for body in events {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            continue;
        };
        let name = value["event"].as_str().unwrap_or_default();
        let team = value["team"].as_str().unwrap_or_default().to_owned();
        if value["month"] == month || value["detail"]["month"] == month {
            match name {
                "budget.limit_set" => {
                    if let Some(limit) = value["limit_micros"].as_i64() {
                        limits.insert(team, Micros(limit));
                    }
                    continue;
                }
                "budget.threshold" => {
                    let threshold = value["threshold"].as_str().unwrap_or_default();
                    if let Some(per_mille) = per_mille(threshold) {
                        alerts.entry(team).or_default().insert(per_mille);
                    }
                    continue;
                }
                _ => {}
            }
        }
        let Some(job_id) = value["job_id"].as_str() else {
            continue;
        };
        if name == event::ACCEPTED && value["detail"]["month"] == month {
            let estimate = value["detail"]["estimate_micros"].as_i64().unwrap_or(0);
            let trace = jobs.entry(job_id.to_owned()).or_default();
            trace.team = team;
            trace.estimate = Micros(estimate);
        } else if matches!(name, event::COMPLETED | event::FAILED | event::CANCELLED) {
            ended.insert(job_id.to_owned());
        }
    }
    for (job_id, trace) in jobs.iter_mut() {
        trace.ended = ended.contains(job_id);
    }

    // A settled job's cost is the sum of its records in every month. Each
    // record's cost went to the budget of its own accrual month when the job ended.
    let mut billed: HashMap<String, Micros> = HashMap::new();
    let mut spent: HashMap<String, Micros> = HashMap::new();
    for record in records
        .iter()
        .filter(|record| ended.contains(&record.job_id))
    {
        let total = billed.entry(record.job_id.clone()).or_default();
        *total = *total + record.billed;
        if record.accrual_period == month {
            let team_spent = spent.entry(record.team.clone()).or_default();
            *team_spent = *team_spent + record.billed;
        }
    }

    let mut rebuilt = Vec::new();
    for team in config.teams.keys() {
        let limit = limits
            .get(team)
            .copied()
            .or_else(|| config.team_budget(team))
            .unwrap_or_default();
        let mut reservations = BTreeMap::new();
        let mut settlements = BTreeMap::new();
        for (job_id, trace) in jobs.iter().filter(|(_, trace)| trace.team == *team) {
            if trace.ended {
                settlements.insert(
                    job_id.clone(),
                    billed.get(job_id).copied().unwrap_or_default(),
                );
            } else {
                reservations.insert(job_id.clone(), trace.estimate);
            }
        }
        let counters = BudgetCounters {
            limit,
            reserved: reservations.values().copied().sum(),
            spent: spent.get(team).copied().unwrap_or_default(),
        };
        let mut alerts_published: Vec<u32> = alerts
            .get(team)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        alerts_published.sort_unstable();
        rebuilt.push(RebuiltBudget {
            team: team.clone(),
            counters,
            reservations,
            settlements,
            alerts_published,
        });
    }
    rebuilt
}

/// Writes rebuilt counters over whatever Redis holds for the team and month.
pub async fn restore(store: &Store, month: &str, budget: &RebuiltBudget) -> Result<()> {
    store.restore_budget(&budget.team, month, budget).await
}

fn per_mille(threshold: &str) -> Option<u32> {
    let fraction: rust_decimal::Decimal = threshold.parse().ok()?;
    rust_decimal::prelude::ToPrimitive::to_u32(&(fraction * rust_decimal::Decimal::from(1000)))
}
