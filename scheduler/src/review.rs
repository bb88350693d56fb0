//! Applying reviewers' decisions to held jobs.

use batchgate_shared::Result;
use batchgate_shared::journal;
use batchgate_shared::message::{JobEvent, JobMessage, event};
use batchgate_shared::review::{
    DECISION_SCHEMA_VERSION, OUTCOME_FIELD, OutcomeKind, ReviewDecision, ReviewOutcome, Verdict,
};
use batchgate_shared::store::Transition;
use tracing::Instrument;

use crate::{Admission, Scheduler};

impl Scheduler {
    /// Applies one review decision. Returns `None` when the message was not a
    /// decision and went to the dead-letter queue. An `Err` means a broker or
    /// Redis failure; the message should be redelivered.
    pub async fn decide(&self, body: &[u8], user_id: Option<&str>) -> Result<Option<OutcomeKind>> {
        let decision: ReviewDecision = match serde_json::from_slice(body) {
            Ok(decision) => decision,
            Err(error) => {
                self.dead_letter_decision(body, format!("invalid review decision: {error}"))
                    .await?;
                return Ok(None);
            }
        };
        if decision.schema_version != DECISION_SCHEMA_VERSION {
            let reason = format!(
                "unsupported review decision schema_version {}: this scheduler reads {DECISION_SCHEMA_VERSION}",
                decision.schema_version
            );
            self.dead_letter_decision(body, reason).await?;
            return Ok(None);
        }
        let span = tracing::info_span!(
            "review",
            job_id = %decision.job_id,
            by = %decision.by,
            verdict = ?decision.verdict,
            user_id = user_id.unwrap_or(""),
        );
        self.apply_decision(&decision, user_id)
            .instrument(span)
            .await
            .map(Some)
    }

    async fn apply_decision(
        &self,
        decision: &ReviewDecision,
        user_id: Option<&str>,
    ) -> Result<OutcomeKind> {
        let job_id = decision.job_id.as_str();
        let transition = self
            .store
            .transition(job_id, "held", "reviewing", Some(&decision.decision_id))
            .await?;
        match transition {
            Transition::Moved => {}
            Transition::Resumed(state) if state == "reviewing" => {}
            Transition::Resumed(state) => {
                // Applied before. A crash may have come before its outcome was stored.
                tracing::info!(state, "Review decision already applied");
                if let Some(kind) = self.stored_outcome(job_id, &decision.decision_id).await? {
                    return Ok(kind);
                }
                let (kind, message) = match state.as_str() {
                    "held" => (
                        OutcomeKind::StillHeld,
                        "approval not applied, so the job stays held".to_owned(),
                    ),
                    "rejected" => (OutcomeKind::Rejected, "the job was rejected".to_owned()),
                    _ => (
                        OutcomeKind::Accepted,
                        format!("the job was scheduled (state {state})"),
                    ),
                };
                self.store_outcome(decision, kind, message).await?;
                return Ok(kind);
            }
            Transition::Other(state) => {
                tracing::info!(state, "Review decision for a job that is not held");
                if !state.is_empty() {
                    let message = format!("job {job_id} is not held for review (state {state})");
                    self.store_outcome(decision, OutcomeKind::NotHeld, message)
                        .await?;
                }
                return Ok(OutcomeKind::NotHeld);
            }
        }

        let stored = self.store.job(job_id).await?;
        let body = stored.get("message").cloned().unwrap_or_default();
        let job: JobMessage = match serde_json::from_str(&body) {
            Ok(job) => job,
            Err(error) => {
                // Only a damaged job record gets here: the message was read at submission.
                let message = format!("the stored job message cannot be read: {error}");
                tracing::warn!(error = %error, "Held job has an unreadable message; rejecting it");
                self.store
                    .set_job_fields(
                        job_id,
                        &[
                            ("state", "rejected".to_owned()),
                            ("reason", message.clone()),
                        ],
                    )
                    .await?;
                self.store_outcome(decision, OutcomeKind::Rejected, message)
                    .await?;
                return Ok(OutcomeKind::Rejected);
            }
        };
        let team = job.manifest.owner_team.clone();
        let detail = serde_json::json!({
            "decision_id": decision.decision_id,
            "by": decision.by,
            "text": decision.text,
            "amqp_user": user_id,
            "decided_at": decision.at,
        });

        let (kind, message) = match decision.verdict {
            Verdict::Reject => {
                let mut rejected = JobEvent::new(
                    event::REVIEW_REJECTED,
                    job_id,
                    &team,
                    format!("rejected in review by {}: {}", decision.by, decision.text),
                );
                rejected.detail = detail;
                journal::record(&self.broker, &self.store, &rejected).await?;
                let reason = format!("rejected in review by {}: {}", decision.by, decision.text);
                self.reject(&job, reason.clone(), serde_json::Value::Null)
                    .await?;
                (OutcomeKind::Rejected, reason)
            }
            Verdict::Approve => match self.evaluate(&job).await? {
                Ok(evaluation) if evaluation.estimate.is_none() => {
                    self.store
                        .transition(job_id, "reviewing", "held", None)
                        .await?;
                    let message = format!(
                        "approval not applied: model {} of provider {} is still missing from the price table {}. \
                         Add its prices and approve again; the job stays held.",
                        job.manifest.model,
                        job.manifest.provider,
                        self.config.price_table.display()
                    );
                    tracing::info!(message, "Approval not applied: the model has no price");
                    let mut not_applied =
                        JobEvent::new(event::REVIEW_NOT_APPLIED, job_id, &team, message.clone());
                    not_applied.detail = detail;
                    journal::record(&self.broker, &self.store, &not_applied).await?;
                    (OutcomeKind::StillHeld, message)
                }
                evaluated => {
                    let note = if decision.text.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", decision.text)
                    };
                    let mut approved = JobEvent::new(
                        event::REVIEW_APPROVED,
                        job_id,
                        &team,
                        format!("approved in review by {}{note}", decision.by),
                    );
                    approved.detail = detail;
                    journal::record(&self.broker, &self.store, &approved).await?;
                    let admission = match evaluated {
                        Ok(evaluation) => {
                            self.reserve_and_forward(&job, body.as_bytes(), &evaluation)
                                .await?
                        }
                        Err(reason) => {
                            let reason =
                                format!("approved, but the job is no longer valid: {reason}");
                            self.reject(&job, reason, serde_json::Value::Null).await?
                        }
                    };
                    match admission {
                        Admission::Accepted { estimate, .. } => (
                            OutcomeKind::Accepted,
                            format!(
                                "approved by {}; {estimate} USD reserved and the job scheduled",
                                decision.by
                            ),
                        ),
                        Admission::Rejected { reason, .. } => (
                            OutcomeKind::Rejected,
                            format!(
                                "approved by {}, but the job was rejected: {reason}",
                                decision.by
                            ),
                        ),
                        other => (
                            OutcomeKind::Rejected,
                            format!("unexpected admission {other:?}"),
                        ),
                    }
                }
            },
        };
        self.store_outcome(decision, kind, message).await?;
        Ok(kind)
    }

    async fn dead_letter_decision(&self, body: &[u8], reason: String) -> Result<()> {
        tracing::warn!(reason, "Review decision dead-lettered");
        self.broker
            .dead_letter(&self.broker.names.review_queue(), body, &reason)
            .await
    }

    async fn store_outcome(
        &self,
        decision: &ReviewDecision,
        outcome: OutcomeKind,
        message: String,
    ) -> Result<()> {
        let outcome = ReviewOutcome {
            decision_id: decision.decision_id.clone(),
            verdict: decision.verdict,
            by: decision.by.clone(),
            outcome,
            message,
        };
        let json = serde_json::to_string(&outcome).unwrap_or_default();
        self.store
            .set_job_fields(&decision.job_id, &[(OUTCOME_FIELD, json)])
            .await
    }

    async fn stored_outcome(&self, job_id: &str, decision_id: &str) -> Result<Option<OutcomeKind>> {
        let job = self.store.job(job_id).await?;
        Ok(job
            .get(OUTCOME_FIELD)
            .and_then(|json| serde_json::from_str::<ReviewOutcome>(json).ok())
            .filter(|outcome| outcome.decision_id == decision_id)
            .map(|outcome| outcome.outcome))
    }
}
