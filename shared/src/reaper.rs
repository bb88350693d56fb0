//! Releasing reservations whose job is gone.
//!
//! A reservation normally ends when its job settles. One can outlive its job,
//! for example when Redis kept the reservation but lost or never wrote the job
//! record, or when a job ended without settling after a crash. The reaper
//! looks at reservations older than a minimum age in the current and previous
//! budget month and releases those whose job record is missing or ended. A
//! completed job is settled with its billed cost instead. Each release is a
//! `budget.reservation_released` event.

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use serde::Serialize;

use crate::broker::Broker;
use crate::config::Config;
use crate::error::Result;
use crate::money::Micros;
use crate::store::Store;

/// A reservation the reaper released or settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReapedReservation {
    pub team: String,
    pub month: String,
    pub job_id: String,
    pub amount_micros: Micros,
    /// Amount spent in place of the reservation: zero for a release, the billed cost for a settlement.
    pub spent_micros: Micros,
    pub reason: String,
}

/// Releases or settles every reservation at least `max_age_secs` old whose job is gone.
pub async fn reap(
    config: &Config,
    store: &Store,
    broker: &Broker,
    now: DateTime<Utc>,
    max_age_secs: i64,
) -> Result<Vec<ReapedReservation>> {
    let periods = config.periods();
    let current = periods.containing(now);
    let previous = periods.containing(current.start - chrono::Duration::seconds(1));
    let mut reaped = Vec::new();
    for team in config.teams.keys() {
        for month in [&previous.month, &current.month] {
            for (job_id, amount, _) in store.old_reservations(team, month, max_age_secs).await? {
                let job = store.job(&job_id).await?;
                let state = job.get("state").map(String::as_str).unwrap_or("");
                let (spent, reason) = match state {
                    "" => (Micros::ZERO, "the job record is missing".to_owned()),
                    "rejected" | "failed" | "cancelled" => (
                        Micros::ZERO,
                        format!("the job ended {state} without settling"),
                    ),
                    "completed" => {
                        let billed = job
                            .get("billed_cost_micros")
                            .and_then(|micros| micros.parse().ok())
                            .unwrap_or(0);
                        (
                            Micros(billed),
                            "the job completed without settling".to_owned(),
                        )
                    }
                    _ => continue,
                };
                if !store.settle(team, month, &job_id, spent).await? {
                    continue;
                }
                let released = ReapedReservation {
                    team: team.clone(),
                    month: month.clone(),
                    job_id,
                    amount_micros: amount,
                    spent_micros: spent,
                    reason,
                };
                publish(store, broker, &released).await?;
                tracing::warn!(team, month, job_id = %released.job_id, reason = %released.reason, "Reservation released by the reaper");
                reaped.push(released);
            }
        }
    }
    Ok(reaped)
}

async fn publish(store: &Store, broker: &Broker, released: &ReapedReservation) -> Result<()> {
    let event = serde_json::json!({
        "schema_version": 1,
        "event": "budget.reservation_released",
        "team": released.team,
        "month": released.month,
        "job_id": released.job_id,
        "amount_micros": released.amount_micros,
        "spent_micros": released.spent_micros,
        "reason": released.reason,
        "at": Utc::now(),
    });
    let body = event.to_string();
    store
        .append_budget_history(&released.team, &released.month, &body)
        .await?;
    let exchange = broker.names.events_exchange();
    broker
        .publish_bytes(
            &exchange,
            "budget.reservation_released",
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await
}
