//! Ending a job once every part has ended: settlement and the final state.

use batchgate_shared::Result;
use batchgate_shared::journal;
use batchgate_shared::message::{JobEvent, JobMessage, event};
use batchgate_shared::money::Micros;

use crate::Worker;

/// Part states after which a part changes no more.
const PART_END_STATES: [&str; 4] = ["ended", "failed", "needs_review", "cancelled"];

impl Worker {
    /// Settles the job's reservation with the billed cost of all its parts and
    /// sets its final state, unless some part is still running. Settlement is
    /// idempotent per job id, so two workers ending the last parts at once
    /// settle it once.
    pub(crate) async fn finish_job_if_ended(&self, job: &JobMessage) -> Result<()> {
        let manifest = &job.manifest;
        let job_id = &manifest.job_id;
        let parts = self.store.parts(job_id).await?;
        let state_of = |part: &std::collections::HashMap<String, String>| {
            part.get("state").cloned().unwrap_or_default()
        };
        if parts
            .iter()
            .any(|part| !PART_END_STATES.contains(&state_of(part).as_str()))
        {
            return Ok(());
        }
        let stored = self.store.job(job_id).await?;
        if matches!(
            stored.get("state").map(String::as_str),
            Some("completed" | "failed" | "cancelled" | "needs_review")
        ) {
            return Ok(());
        }

        let reasons: Vec<String> = parts
            .iter()
            .filter_map(|part| part.get("reason").cloned())
            .collect();
        let count = |state: &str| parts.iter().filter(|part| state_of(part) == state).count();
        if count("needs_review") > 0 {
            // Nothing is billed and the reservation stays until someone resolves it.
            let reason = reasons.join("; ");
            self.store
                .set_job_fields(
                    job_id,
                    &[("state", "needs_review".into()), ("reason", reason.clone())],
                )
                .await?;
            let review = JobEvent::new(event::NEEDS_REVIEW, job_id, &manifest.owner_team, reason);
            return journal::record(&self.broker, &self.store, &review).await;
        }

        // Each part's cost goes to the budget of its accrual month, which under
        // the completion convention can differ from the month that reserved.
        let month = stored.get("month").cloned().unwrap_or_default();
        let mut by_month: std::collections::BTreeMap<String, Micros> = Default::default();
        for part in &parts {
            let Some(cost) = part
                .get("billed_cost_micros")
                .and_then(|micros| micros.parse().ok())
            else {
                continue;
            };
            let accrual = part.get("accrual_period").unwrap_or(&month).clone();
            let sum = by_month.entry(accrual).or_default();
            *sum = *sum + Micros(cost);
        }
        let billed: Micros = by_month.values().copied().sum();
        let charges: Vec<(String, Micros)> = by_month.into_iter().collect();
        let default_limit = self
            .config
            .team_budget(&manifest.owner_team)
            .unwrap_or_default();
        self.store
            .settle_split(
                &manifest.owner_team,
                &month,
                job_id,
                &charges,
                Some(default_limit),
            )
            .await?;

        let (state, name, message) = if stored.contains_key("cancel_requested") {
            (
                "cancelled",
                event::CANCELLED,
                format!(
                    "cancelled; {} parts billed {billed} USD in total",
                    count("ended")
                ),
            )
        } else if count("failed") > 0 {
            (
                "failed",
                event::FAILED,
                format!(
                    "{}; billed {billed} USD for the parts that ran",
                    reasons.join("; ")
                ),
            )
        } else {
            (
                "completed",
                event::COMPLETED,
                if parts.len() == 1 {
                    format!("the provider batch ended; billed {billed} USD")
                } else {
                    format!(
                        "all {} parts ended; billed {billed} USD in total",
                        parts.len()
                    )
                },
            )
        };
        let mut fields = vec![
            ("state", state.to_owned()),
            ("billed_cost_micros", billed.0.to_string()),
        ];
        if state == "failed" {
            fields.push(("reason", reasons.join("; ")));
        }
        self.store.set_job_fields(job_id, &fields).await?;
        let mut ended = JobEvent::new(name, job_id, &manifest.owner_team, message);
        ended.detail = serde_json::json!({"billed_cost_micros": billed, "parts": parts.len()});
        journal::record(&self.broker, &self.store, &ended).await?;
        tracing::info!(state, billed_micros = billed.0, "Job ended");
        Ok(())
    }
}
