//! Admission of one submitted job message.

use batchgate_shared::broker::ready_routing_key;
use batchgate_shared::input::InputSummary;
use batchgate_shared::input::{hex, validate_input};
use batchgate_shared::journal;
use batchgate_shared::manifest::check_job_id;
use batchgate_shared::message::{JOB_SCHEMA_VERSION, JobEvent, JobMessage, event};
use batchgate_shared::money::Micros;
use batchgate_shared::pricing::PriceEntry;
use batchgate_shared::review::hold_reasons;
use batchgate_shared::store::{Claim, Reservation};
use batchgate_shared::{Error, Result};
use lapin::BasicProperties;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::Scheduler;

/// Outcome of admitting a job message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Accepted {
        job_id: String,
        estimate: Micros,
    },
    Rejected {
        job_id: String,
        reason: String,
    },
    /// The job id was used by an earlier, different message; the earlier job is untouched.
    Duplicate {
        job_id: String,
    },
    /// The message could not be read as a job and went to the dead-letter queue.
    DeadLettered {
        reason: String,
    },
    /// A redelivered message whose admission had already finished.
    AlreadyAdmitted {
        job_id: String,
    },
    /// Held for review: nothing is reserved until a reviewer approves the job.
    Held {
        job_id: String,
        reasons: Vec<String>,
    },
}

/// A validated input with its cost estimate; `None` when the model has no price.
pub(crate) struct Evaluation {
    pub summary: InputSummary,
    pub estimate: Option<Micros>,
}

impl Scheduler {
    /// Admits or rejects one job message. An `Err` means a broker or Redis
    /// failure; the message should be redelivered.
    pub async fn admit(&self, body: &[u8], user_id: Option<&str>) -> Result<Admission> {
        let job: JobMessage = match serde_json::from_slice(body) {
            Ok(job) => job,
            Err(error) => {
                return self
                    .dead_letter(body, format!("invalid job message: {error}"))
                    .await;
            }
        };
        if job.schema_version != JOB_SCHEMA_VERSION {
            let reason = format!(
                "unsupported schema_version {}: this scheduler reads {JOB_SCHEMA_VERSION}",
                job.schema_version
            );
            return self.dead_letter(body, reason).await;
        }
        if let Err(reason) = check_job_id(&job.manifest.job_id) {
            return self.dead_letter(body, reason).await;
        }
        let span = tracing::info_span!(
            "admit",
            job_id = %job.manifest.job_id,
            team = %job.manifest.owner_team,
            user_id = user_id.unwrap_or(""),
        );
        self.admit_job(&job, body, user_id).instrument(span).await
    }

    /// Checks that the broker-validated publishing user may submit for the team.
    fn authorize(&self, team: &str, user_id: Option<&str>) -> std::result::Result<(), String> {
        let Some(user) = user_id else {
            if self.config.allow_anonymous_submission {
                return Ok(());
            }
            return Err(
                "not authorised: the message has no user_id property; publish with user_id set to \
                        your RabbitMQ user name (the broker checks it)"
                    .to_owned(),
            );
        };
        let allowed = self
            .config
            .teams
            .get(team)
            .map(|team| team.amqp_users.as_slice())
            .unwrap_or_default();
        if allowed.iter().any(|allowed| allowed == user) {
            return Ok(());
        }
        Err(format!(
            "not authorised: RabbitMQ user {user:?} may not submit jobs for team {team}; allowed users: {}",
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        ))
    }

    async fn admit_job(
        &self,
        job: &JobMessage,
        body: &[u8],
        user_id: Option<&str>,
    ) -> Result<Admission> {
        let manifest = &job.manifest;
        let job_id = manifest.job_id.clone();
        let fingerprint = hex(&Sha256::digest(body));
        match self
            .store
            .claim_job(&job_id, &fingerprint, &manifest.owner_team)
            .await?
        {
            Claim::New => {
                let month = self.config.periods().containing((self.clock)()).month;
                self.store
                    .set_job_fields(
                        &job_id,
                        &[
                            ("month", month),
                            ("provider", manifest.provider.clone()),
                            ("model", manifest.model.clone()),
                            ("submitted_at", job.submitted_at.to_rfc3339()),
                            ("message", String::from_utf8_lossy(body).into_owned()),
                        ],
                    )
                    .await?;
                let submitted = JobEvent::new(
                    event::SUBMITTED,
                    &job_id,
                    &manifest.owner_team,
                    "job received by the scheduler",
                );
                journal::record(&self.broker, &self.store, &submitted).await?;
            }
            Claim::Redelivered { state } if state != "received" && state != "accepted" => {
                return Ok(Admission::AlreadyAdmitted { job_id });
            }
            Claim::Redelivered { .. } => {}
            Claim::Duplicate { state } => {
                let reason = format!(
                    "job id {job_id} is already used by another submission (state {state})"
                );
                tracing::info!(reason, "Duplicate job id rejected");
                let mut rejected =
                    JobEvent::new(event::REJECTED, &job_id, &manifest.owner_team, reason);
                rejected.detail = serde_json::json!({"duplicate": true});
                journal::record(&self.broker, &self.store, &rejected).await?;
                return Ok(Admission::Duplicate { job_id });
            }
        }

        if let Err(error) = manifest.validate(&self.config) {
            return self
                .reject(job, error.to_string(), serde_json::Value::Null)
                .await;
        }
        if let Err(reason) = self.authorize(&manifest.owner_team, user_id) {
            return self.reject(job, reason, serde_json::Value::Null).await;
        }
        let evaluation = match self.evaluate(job).await? {
            Ok(evaluation) => evaluation,
            Err(reason) => return self.reject(job, reason, serde_json::Value::Null).await,
        };
        let reasons = hold_reasons(
            self.config.review_threshold(&manifest.owner_team),
            &manifest.owner_team,
            &manifest.model,
            evaluation.estimate,
            evaluation.summary.requests,
        );
        if !reasons.is_empty() {
            if let Err(error) = manifest.check_review_fields(&reasons) {
                return self
                    .reject(job, error.to_string(), serde_json::Value::Null)
                    .await;
            }
            return self.hold(job, &evaluation, reasons).await;
        }
        self.reserve_and_forward(job, body, &evaluation).await
    }

    /// Returns the newest price entry of a model from the current price table.
    pub(crate) fn price_for(&self, provider: &str, model: &str) -> Option<PriceEntry> {
        self.prices.current().latest(provider, model).cloned()
    }

    /// Validates the input file and estimates the job's cost. The inner `Err`
    /// is a rejection reason; the outer one a failure to retry.
    pub(crate) async fn evaluate(
        &self,
        job: &JobMessage,
    ) -> Result<std::result::Result<Evaluation, String>> {
        let manifest = &job.manifest;
        let price = self.price_for(&manifest.provider, &manifest.model);
        let path = match job.input.local_path() {
            Ok(path) => path,
            Err(reason) => return Ok(Err(reason)),
        };
        let Some(limits) = self.config.providers.get(&manifest.provider).cloned() else {
            return Ok(Err(format!(
                "provider {} is not configured",
                manifest.provider
            )));
        };
        let checked_manifest = manifest.clone();
        let checked_price = price.clone();
        let summary = tokio::task::spawn_blocking(move || {
            validate_input(&path, &checked_manifest, checked_price.as_ref(), &limits)
        })
        .await
        .map_err(|error| Error::Invalid(format!("input validation task failed: {error}")))?;
        let summary = match summary {
            Ok(summary) => summary,
            Err(error) => return Ok(Err(error.to_string())),
        };
        if let Some(expected) = &job.input.sha256
            && !expected.eq_ignore_ascii_case(&summary.sha256)
        {
            return Ok(Err(format!(
                "input file {} changed after submission: sha256 {} differs from the submitted {expected}",
                job.input.uri, summary.sha256
            )));
        }
        let estimate = match &price {
            Some(price) => match price.estimate_tiers(
                summary.input_tokens,
                summary.max_output_tokens,
                summary.long_context_tokens,
            ) {
                Ok(estimate) => Some(estimate),
                Err(error) => return Ok(Err(error.to_string())),
            },
            None => None,
        };
        Ok(Ok(Evaluation { summary, estimate }))
    }

    /// Holds a job for review: nothing is reserved until a reviewer approves it.
    async fn hold(
        &self,
        job: &JobMessage,
        evaluation: &Evaluation,
        reasons: Vec<String>,
    ) -> Result<Admission> {
        let manifest = &job.manifest;
        let job_id = manifest.job_id.clone();
        let summary = &evaluation.summary;

        let mut fields = vec![
            ("requests", summary.requests.to_string()),
            ("input_bytes", summary.bytes.to_string()),
            ("input_tokens", summary.input_tokens.to_string()),
            ("hold_reasons", serde_json::json!(reasons).to_string()),
        ];
        if let Some(estimate) = evaluation.estimate {
            fields.push(("estimate_micros", estimate.0.to_string()));
        }
        self.store.set_job_fields(&job_id, &fields).await?;
        let message = format!("held for review: {}", reasons.join("; "));
        let mut held_event = JobEvent::new(event::HELD, &job_id, &manifest.owner_team, message);
        held_event.detail = serde_json::json!({
            "reasons": reasons,
            "estimate_micros": evaluation.estimate,
            "requests": summary.requests,
            "input_tokens": summary.input_tokens,
            "justification": manifest.justification,
            "expected_output": manifest.expected_output,
        });
        journal::record(&self.broker, &self.store, &held_event).await?;

        // The event goes first. A crash before this step redelivers the message
        // in state `received`, and that delivery puts the job on hold again.
        self.store
            .transition(&job_id, "received", "held", None)
            .await?;
        tracing::info!(reasons = ?reasons, "Job held for review");
        Ok(Admission::Held { job_id, reasons })
    }

    /// Reserves the estimate against the team's budget and forwards the job to
    /// the workers, or rejects it when the budget does not allow it.
    pub(crate) async fn reserve_and_forward(
        &self,
        job: &JobMessage,
        body: &[u8],
        evaluation: &Evaluation,
    ) -> Result<Admission> {
        let manifest = &job.manifest;
        let job_id = manifest.job_id.clone();
        let summary = &evaluation.summary;
        let Some(estimate) = evaluation.estimate else {
            let reason = format!(
                "model {} has no price, so nothing can be reserved for the job",
                manifest.model
            );
            return self.reject(job, reason, serde_json::Value::Null).await;
        };
        let stored = self.store.job(&job_id).await?;
        let month = stored
            .get("month")
            .cloned()
            .unwrap_or_else(|| self.config.periods().containing((self.clock)()).month);
        let limit = self
            .config
            .team_budget(&manifest.owner_team)
            .unwrap_or_default();
        let estimate_detail = serde_json::json!({
            "estimate_micros": estimate,
            "requests": summary.requests,
            "input_tokens": summary.input_tokens,
            "max_output_tokens": summary.max_output_tokens,
            "parts": summary.parts.len(),
            "month": month,
        });
        match self
            .store
            .reserve(&manifest.owner_team, &month, &job_id, estimate, limit)
            .await?
        {
            Reservation::Reserved(_) | Reservation::AlreadyReserved(_) => {
                self.publish_threshold_alerts(&manifest.owner_team, &month)
                    .await?;
            }
            Reservation::OverBudget(counters) => {
                let reason = format!(
                    "over budget: estimated cost {estimate} USD exceeds the {} USD left of team {}'s {month} budget \
                     (limit {} USD, reserved {} USD, spent {} USD)",
                    counters.remaining(),
                    manifest.owner_team,
                    counters.limit,
                    counters.reserved,
                    counters.spent
                );
                let estimate_field = [("estimate_micros", estimate.0.to_string())];
                self.store.set_job_fields(&job_id, &estimate_field).await?;
                let mut detail = estimate_detail;
                detail["limit_micros"] = counters.limit.0.into();
                detail["reserved_micros"] = counters.reserved.0.into();
                detail["spent_micros"] = counters.spent.0.into();
                return self.reject(job, reason, detail).await;
            }
        }

        self.store
            .set_job_fields(
                &job_id,
                &[
                    ("estimate_micros", estimate.0.to_string()),
                    ("requests", summary.requests.to_string()),
                    ("input_bytes", summary.bytes.to_string()),
                    ("input_tokens", summary.input_tokens.to_string()),
                    ("parts", summary.parts.len().to_string()),
                    ("plan", part_plan_json(&summary.parts)),
                ],
            )
            .await?;
        // Marked accepted before the ready message goes out, so no worker reads an
        // earlier state. A redelivery in state `accepted` publishes it again, and
        // the worker's creation claim makes a second ready message harmless.
        self.store
            .set_job_fields(&job_id, &[("state", "accepted".to_owned())])
            .await?;
        let properties = BasicProperties::default().with_message_id(job_id.as_str().into());
        self.broker
            .publish_bytes(
                &self.broker.names.jobs_exchange(),
                &ready_routing_key(&manifest.provider),
                body,
                properties,
            )
            .await?;
        let message = format!(
            "accepted: estimated cost {estimate} USD for {} requests in {} provider batches reserved against team {}'s {month} budget",
            summary.requests,
            summary.parts.len(),
            manifest.owner_team
        );
        let mut accepted = JobEvent::new(event::ACCEPTED, &job_id, &manifest.owner_team, message);
        accepted.detail = estimate_detail;
        journal::record(&self.broker, &self.store, &accepted).await?;
        tracing::info!(
            estimate_micros = estimate.0,
            requests = summary.requests,
            "Job accepted"
        );
        Ok(Admission::Accepted { job_id, estimate })
    }

    /// Publishes one `budget.threshold` event per alert threshold that the team's
    /// reserved plus spent reached this month, once per team, month and threshold.
    async fn publish_threshold_alerts(&self, team: &str, month: &str) -> Result<()> {
        let thresholds = self.config.alert_per_mille();
        let claimed = self
            .store
            .claim_threshold_alerts(team, month, &thresholds)
            .await?;
        if claimed.is_empty() {
            return Ok(());
        }
        let counters = self.store.budget(team, month).await?.unwrap_or_default();
        for per_mille in claimed {
            let event = serde_json::json!({
                "schema_version": 1,
                "event": "budget.threshold",
                "team": team,
                "month": month,
                "threshold": format!("{}.{:03}", per_mille / 1000, per_mille % 1000),
                "limit_micros": counters.limit,
                "reserved_micros": counters.reserved,
                "spent_micros": counters.spent,
                "at": chrono::Utc::now(),
            });
            let body = serde_json::to_vec(&event).unwrap_or_default();
            let exchange = self.broker.names.events_exchange();
            let properties = BasicProperties::default();
            let published = self
                .broker
                .publish_bytes(&exchange, "budget.threshold", &body, properties)
                .await;
            self.store
                .finish_threshold_alert(team, month, per_mille, published.is_ok())
                .await?;
            published?;
            tracing::info!(team, month, per_mille, "Budget threshold reached");
        }
        Ok(())
    }

    pub(crate) async fn reject(
        &self,
        job: &JobMessage,
        reason: String,
        detail: serde_json::Value,
    ) -> Result<Admission> {
        let job_id = &job.manifest.job_id;
        tracing::info!(reason, "Job rejected");
        self.store
            .set_job_fields(
                job_id,
                &[("state", "rejected".to_owned()), ("reason", reason.clone())],
            )
            .await?;
        let mut rejected = JobEvent::new(
            event::REJECTED,
            job_id,
            &job.manifest.owner_team,
            reason.clone(),
        );
        rejected.detail = detail;
        journal::record(&self.broker, &self.store, &rejected).await?;
        Ok(Admission::Rejected {
            job_id: job_id.clone(),
            reason,
        })
    }

    async fn dead_letter(&self, body: &[u8], reason: String) -> Result<Admission> {
        tracing::warn!(reason, "Job message dead-lettered");
        self.broker
            .dead_letter(&self.broker.names.submitted_queue(), body, &reason)
            .await?;
        Ok(Admission::DeadLettered { reason })
    }
}

/// Serialises the part plan as `[[first_line, requests, bytes], ...]` for the worker.
fn part_plan_json(parts: &[batchgate_shared::input::PartBounds]) -> String {
    let plan: Vec<[u64; 3]> = parts
        .iter()
        .map(|part| [part.first_line, part.requests, part.bytes])
        .collect();
    serde_json::to_string(&plan).unwrap_or_default()
}
