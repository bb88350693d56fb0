//! An Anthropic message batch and its processing status, computed from the time
//! since creation whenever a request reads it.

use std::sync::Arc;

use axum::body::Bytes;
use chrono::{DateTime, SecondsFormat};
use serde::Serialize;

use crate::batch::Timing;
use crate::faults::FaultProfile;
use crate::plan::{Plan, RequestOutcome};

/// Time between creation and `expires_at`: Anthropic processes a batch within 24 hours.
const EXPIRY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcessingStatus {
    InProgress,
    Canceling,
    Ended,
}

impl ProcessingStatus {
    pub(crate) const ALL: [ProcessingStatus; 3] = [
        ProcessingStatus::InProgress,
        ProcessingStatus::Canceling,
        ProcessingStatus::Ended,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProcessingStatus::InProgress => "in_progress",
            ProcessingStatus::Canceling => "canceling",
            ProcessingStatus::Ended => "ended",
        }
    }
}

/// Result of one request of a message batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MessageOutcome {
    Succeeded,
    /// An `errored` result with Anthropic's error `type` and message.
    Errored {
        error_type: &'static str,
        message: String,
    },
}

impl RequestOutcome for MessageOutcome {
    fn is_failure(&self) -> bool {
        matches!(self, MessageOutcome::Errored { .. })
    }
}

/// Result type of the requests that a batch did not process before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unprocessed {
    Canceled,
    Expired,
}

/// Shares of the prompt tokens reported as cache writes and reads, copied from
/// the settings when the batch is created.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CacheRatios {
    pub(crate) write: f64,
    pub(crate) read: f64,
    /// Share of the cache writes with the 1 hour lifetime.
    pub(crate) one_hour_share: f64,
}

/// Status and counters of a message batch at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageSnapshot {
    pub(crate) status: ProcessingStatus,
    /// Time in ms after creation at which processing ended.
    pub(crate) ended_after_ms: Option<u64>,
    /// Number of requests processed, in processing order. The others are
    /// canceled or expired once the batch has ended.
    pub(crate) done: usize,
    pub(crate) unprocessed: Unprocessed,
    pub(crate) counts: RequestCounts,
}

#[derive(Debug)]
pub(crate) struct MessageBatch {
    pub(crate) id: String,
    /// 1-based creation order among the simulator's message batches, part of
    /// every random seed.
    pub(crate) sequence: u64,
    /// Creation time as Unix ms, the base of every timestamp of the batch.
    pub(crate) created_at_ms: u64,
    /// Durations of OpenAI's phases, whose sum is the time until `ended`.
    pub(crate) timing: Timing,
    pub(crate) seed: u64,
    pub(crate) cache: CacheRatios,
    /// The fault profile that the batch was created with.
    pub(crate) faults: FaultProfile,
    pub(crate) plan: Arc<Plan<MessageOutcome>>,
    /// Time in ms after creation at which a cancel was accepted.
    pub(crate) cancelled_after_ms: Option<u64>,
    /// The JSONL results, generated once when first downloaded.
    pub(crate) results: Option<Bytes>,
}

impl MessageBatch {
    /// Computes the status and counters at `elapsed_ms` after creation.
    ///
    /// Requests complete in proportion to the time spent in OpenAI's
    /// `in_progress` phase, but the counts show only `processing` until the
    /// batch ends, as Anthropic's do. A cancel freezes processing, and the batch
    /// stays `canceling` for `finalizing_ms`. A fault profile's
    /// `expire_after_ms` ends a batch early, unless it was cancelled first.
    pub(crate) fn snapshot(&self, elapsed_ms: u64) -> MessageSnapshot {
        let total = self.plan.len();
        let processing_end = self.timing.processing_end_ms();
        let (status, ended_after_ms, frozen_at, unprocessed) = match self.cancelled_after_ms {
            Some(cancelled_after) => {
                let ended_after = cancelled_after.saturating_add(self.timing.finalizing_ms);
                let status = if elapsed_ms >= ended_after {
                    ProcessingStatus::Ended
                } else {
                    ProcessingStatus::Canceling
                };
                (status, ended_after, cancelled_after, Unprocessed::Canceled)
            }
            None => {
                let ended_after = self
                    .faults
                    .expire_after_ms
                    .filter(|&expire_after| expire_after < processing_end)
                    .unwrap_or(processing_end);
                let status = if elapsed_ms >= ended_after {
                    ProcessingStatus::Ended
                } else {
                    ProcessingStatus::InProgress
                };
                (status, ended_after, ended_after, Unprocessed::Expired)
            }
        };

        let ended = status == ProcessingStatus::Ended;
        let done = self.timing.count_done(total, elapsed_ms.min(frozen_at));
        let counts = if ended {
            let (succeeded, errored) = self.plan.counts(done);
            let unfinished = total - done;
            RequestCounts {
                processing: 0,
                succeeded,
                errored,
                canceled: if unprocessed == Unprocessed::Canceled {
                    unfinished
                } else {
                    0
                },
                expired: if unprocessed == Unprocessed::Expired {
                    unfinished
                } else {
                    0
                },
            }
        } else {
            RequestCounts {
                processing: total,
                ..RequestCounts::default()
            }
        };
        MessageSnapshot {
            status,
            ended_after_ms: ended.then_some(ended_after_ms),
            done,
            unprocessed,
            counts,
        }
    }

    /// Requests a cancel at `elapsed_ms` after creation. A batch already
    /// canceling stays as it is.
    ///
    /// Returns the status as the error if the batch has already ended.
    pub(crate) fn cancel(&mut self, elapsed_ms: u64) -> Result<(), ProcessingStatus> {
        let status = self.snapshot(elapsed_ms).status;
        if status == ProcessingStatus::Ended {
            return Err(status);
        }
        if self.cancelled_after_ms.is_none() {
            self.cancelled_after_ms = Some(elapsed_ms);
        }
        Ok(())
    }

    /// Builds Anthropic's message batch object for `snapshot`.
    pub(crate) fn to_object(&self, snapshot: &MessageSnapshot, base_url: &str) -> BatchObject {
        let ended = snapshot.status == ProcessingStatus::Ended;
        BatchObject {
            id: self.id.clone(),
            object_type: "message_batch",
            processing_status: snapshot.status.as_str(),
            request_counts: snapshot.counts,
            ended_at: snapshot.ended_after_ms.map(|offset| self.timestamp(offset)),
            created_at: self.timestamp(0),
            expires_at: self.timestamp(EXPIRY_WINDOW_MS),
            cancel_initiated_at: self.cancelled_after_ms.map(|offset| self.timestamp(offset)),
            archived_at: None,
            results_url: ended
                .then(|| format!("{base_url}/v1/messages/batches/{}/results", self.id)),
        }
    }

    /// Formats the time `offset_ms` after creation as RFC 3339 in UTC with
    /// milliseconds, such as `2026-01-01T00:00:00.000Z`.
    fn timestamp(&self, offset_ms: u64) -> String {
        let unix_ms = self.created_at_ms.saturating_add(offset_ms);
        let unix_ms = i64::try_from(unix_ms).unwrap_or(i64::MAX);
        DateTime::from_timestamp_millis(unix_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// Anthropic's message batch object.
#[derive(Debug, Serialize)]
pub(crate) struct BatchObject {
    pub(crate) id: String,
    #[serde(rename = "type")]
    object_type: &'static str,
    pub(crate) processing_status: &'static str,
    request_counts: RequestCounts,
    ended_at: Option<String>,
    created_at: String,
    expires_at: String,
    cancel_initiated_at: Option<String>,
    /// Always null, because the simulator never archives a batch.
    archived_at: Option<String>,
    results_url: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct RequestCounts {
    pub(crate) processing: usize,
    pub(crate) succeeded: usize,
    pub(crate) errored: usize,
    pub(crate) canceled: usize,
    pub(crate) expired: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlannedRequest;
    use crate::validation::InputRequest;
    use serde_json::json;

    fn message_batch(requests: usize) -> MessageBatch {
        let planned = (0..requests)
            .map(|index| PlannedRequest {
                request: InputRequest {
                    custom_id: format!("r{index}"),
                    model: "claude-test".to_owned(),
                    body: json!({}),
                },
                outcome: MessageOutcome::Succeeded,
            })
            .collect();
        MessageBatch {
            id: "msgbatch_test".to_owned(),
            sequence: 1,
            created_at_ms: 1_767_225_600_000,
            timing: Timing {
                validating_ms: 100,
                in_progress_ms: 1_000,
                finalizing_ms: 100,
                finalizing_extra_ms: 0,
            },
            seed: 0,
            cache: CacheRatios {
                write: 0.0,
                read: 0.0,
                one_hour_share: 0.0,
            },
            faults: FaultProfile::default(),
            plan: Arc::new(Plan::from_planned(planned, 0, 1)),
            cancelled_after_ms: None,
            results: None,
        }
    }

    #[test]
    fn counts_move_only_at_end() {
        let batch = message_batch(10);
        let running = batch.snapshot(1_150);
        assert_eq!(running.status, ProcessingStatus::InProgress);
        assert_eq!(running.counts.processing, 10);
        assert_eq!(running.counts.succeeded, 0);

        let ended = batch.snapshot(1_200);
        assert_eq!(ended.status, ProcessingStatus::Ended);
        assert_eq!(ended.ended_after_ms, Some(1_200));
        assert_eq!(ended.counts.processing, 0);
        assert_eq!(ended.counts.succeeded, 10);
    }

    #[test]
    fn cancel_freezes_processing() {
        let mut batch = message_batch(10);
        batch.cancel(600).unwrap();
        assert_eq!(batch.snapshot(650).status, ProcessingStatus::Canceling);
        let ended = batch.snapshot(700);
        assert_eq!(ended.status, ProcessingStatus::Ended);
        assert_eq!(ended.counts.succeeded, 5);
        assert_eq!(ended.counts.canceled, 5);
        assert_eq!(batch.cancel(800), Err(ProcessingStatus::Ended));
    }

    #[test]
    fn expiry_ends_batch_with_expired_requests() {
        let mut batch = message_batch(10);
        batch.faults.expire_after_ms = Some(350);
        assert_eq!(batch.snapshot(349).status, ProcessingStatus::InProgress);
        let ended = batch.snapshot(400);
        assert_eq!(ended.status, ProcessingStatus::Ended);
        assert_eq!(ended.counts.succeeded, 2);
        assert_eq!(ended.counts.expired, 8);
        assert_eq!(ended.unprocessed, Unprocessed::Expired);
    }

    #[test]
    fn object_has_rfc3339_times_and_results_url() {
        let batch = message_batch(1);
        let object = batch.to_object(&batch.snapshot(0), "http://127.0.0.1:1");
        let value = serde_json::to_value(&object).unwrap();
        assert_eq!(value["created_at"], "2026-01-01T00:00:00.000Z");
        assert_eq!(value["expires_at"], "2026-01-02T00:00:00.000Z");
        assert!(value["results_url"].is_null());
        assert!(value["ended_at"].is_null());

        let ended = batch.to_object(&batch.snapshot(5_000), "http://127.0.0.1:1");
        let value = serde_json::to_value(&ended).unwrap();
        assert_eq!(
            value["results_url"],
            "http://127.0.0.1:1/v1/messages/batches/msgbatch_test/results"
        );
        assert_eq!(value["ended_at"], "2026-01-01T00:00:01.200Z");
    }
}
