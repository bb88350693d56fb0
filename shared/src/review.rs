//! Review holds: which jobs wait for a person's sign-off, and the decision
//! messages that release them.
//!
//! A job is held instead of reserved when its estimated cost or its request
//! count is above its team's review threshold, or when its model is missing
//! from the price table so that no estimate exists. `batchgate review`
//! publishes a [`ReviewDecision`] with routing key [`DECISION_ROUTING_KEY`];
//! a scheduler applies it and stores a [`ReviewOutcome`] on the job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::ReviewThreshold;
use crate::money::Micros;

pub const DECISION_ROUTING_KEY: &str = "review.decision";
pub const DECISION_SCHEMA_VERSION: u32 = 1;

/// Job field holding the JSON [`ReviewOutcome`] of the latest decision.
pub const OUTCOME_FIELD: &str = "review_outcome";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Reject,
}

/// A reviewer's decision on a held job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewDecision {
    pub schema_version: u32,
    /// Unique per decision, so that a redelivered decision is applied once.
    pub decision_id: String,
    pub job_id: String,
    pub verdict: Verdict,
    /// Name of the reviewer.
    pub by: String,
    /// Approval note or rejection reason.
    #[serde(default)]
    pub text: String,
    pub at: DateTime<Utc>,
}

/// Result of applying a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Approved, reserved and forwarded to the workers.
    Accepted,
    /// Rejected by the reviewer, or approved but no longer within the budget
    /// or no longer valid.
    Rejected,
    /// Approval not applied because the model still has no price, so the job stays held.
    StillHeld,
    /// The job was not held (already decided, cancelled or unknown).
    NotHeld,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewOutcome {
    pub decision_id: String,
    pub verdict: Verdict,
    pub by: String,
    pub outcome: OutcomeKind,
    pub message: String,
}

/// Returns the reasons a job must be held for review, or none when it may be
/// admitted. `estimate` is `None` when the model has no price.
pub fn hold_reasons(
    threshold: ReviewThreshold,
    team: &str,
    model: &str,
    estimate: Option<Micros>,
    requests: u64,
) -> Vec<String> {
    let mut reasons = Vec::new();
    match (estimate, threshold.cost) {
        (None, _) => reasons.push(format!(
            "model {model} is not in the price table, so its cost cannot be estimated"
        )),
        (Some(estimate), Some(limit)) if estimate > limit => reasons.push(format!(
            "estimated cost {estimate} USD is above team {team}'s review threshold of {limit} USD"
        )),
        _ => {}
    }
    if let Some(limit) = threshold.requests
        && requests > limit
    {
        reasons.push(format!(
            "{requests} requests are above team {team}'s review threshold of {limit} requests"
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(cost: Option<i64>, requests: Option<u64>) -> ReviewThreshold {
        ReviewThreshold {
            cost: cost.map(Micros),
            requests,
        }
    }

    #[test]
    fn jobs_at_the_threshold_are_not_held() {
        let both = threshold(Some(1_000_000), Some(100));
        assert!(hold_reasons(both, "t", "m", Some(Micros(1_000_000)), 100).is_empty());
        assert!(
            hold_reasons(
                threshold(None, None),
                "t",
                "m",
                Some(Micros(i64::MAX)),
                1 << 40
            )
            .is_empty()
        );
    }

    #[test]
    fn each_bound_is_checked_on_its_own() {
        let both = threshold(Some(1_000_000), Some(100));
        let cost = hold_reasons(both, "t", "m", Some(Micros(1_000_001)), 10);
        assert_eq!(cost.len(), 1);
        assert!(cost[0].contains("1.000001 USD"), "{cost:?}");
        let requests = hold_reasons(both, "t", "m", Some(Micros(1)), 101);
        assert_eq!(requests.len(), 1);
        assert!(requests[0].contains("101 requests"), "{requests:?}");
        assert_eq!(
            hold_reasons(both, "t", "m", Some(Micros(2_000_000)), 101).len(),
            2
        );
    }

    #[test]
    fn unpriced_models_are_always_held() {
        let reasons = hold_reasons(threshold(None, None), "t", "gpt-x", None, 1);
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("gpt-x is not in the price table"));
    }

    #[test]
    fn decisions_round_trip() {
        let decision = ReviewDecision {
            schema_version: DECISION_SCHEMA_VERSION,
            decision_id: "d1".into(),
            job_id: "job-1".into(),
            verdict: Verdict::Approve,
            by: "alice".into(),
            text: "fits the quarter plan".into(),
            at: Utc::now(),
        };
        let json = serde_json::to_string(&decision).unwrap();
        assert!(json.contains("\"verdict\":\"approve\""), "{json}");
        assert_eq!(
            serde_json::from_str::<ReviewDecision>(&json).unwrap(),
            decision
        );
    }
}
