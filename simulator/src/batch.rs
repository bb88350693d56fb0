//! A batch and its status, computed from the time since creation whenever a
//! request reads it, so no background task moves batches along.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::faults::FaultProfile;
use crate::plan::Plan;
use crate::validation::BatchError;

/// Time between creation and `expires_at`, as OpenAI's `24h` completion window sets.
const COMPLETION_WINDOW_SECS: u64 = 24 * 60 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub(crate) const ALL: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::Failed,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Failed
                | BatchStatus::Completed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }
}

/// Phase durations in ms, copied from the settings when the batch is created.
/// `finalizing_ms` also sets how long a batch stays `cancelling`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) validating_ms: u64,
    pub(crate) in_progress_ms: u64,
    pub(crate) finalizing_ms: u64,
    /// Time added to `finalizing` (but not to `cancelling`) by a fault profile.
    pub(crate) finalizing_extra_ms: u64,
}

impl Timing {
    /// Counts the requests processed by `progress_ms` after creation: none while
    /// validating, a share proportional to the time spent in progress, and all
    /// `total` from then on.
    pub(crate) fn count_done(&self, total: usize, progress_ms: u64) -> usize {
        let Some(in_progress_elapsed) = progress_ms.checked_sub(self.validating_ms) else {
            return 0;
        };
        if in_progress_elapsed >= self.in_progress_ms {
            return total;
        }
        // in_progress_ms > in_progress_elapsed >= 0 here, so the division is safe.
        let done =
            total as u128 * u128::from(in_progress_elapsed) / u128::from(self.in_progress_ms);
        usize::try_from(done).unwrap_or(total)
    }

    /// Returns the time in ms after creation at which a batch that is neither
    /// cancelled nor expired finishes processing.
    pub(crate) fn processing_end_ms(&self) -> u64 {
        self.validating_ms
            .saturating_add(self.in_progress_ms)
            .saturating_add(self.finalizing_ms)
            .saturating_add(self.finalizing_extra_ms)
    }
}

/// Status and counters of a batch at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub(crate) status: BatchStatus,
    pub(crate) in_progress_at: Option<u64>,
    pub(crate) finalizing_at: Option<u64>,
    pub(crate) completed_at: Option<u64>,
    pub(crate) failed_at: Option<u64>,
    pub(crate) cancelling_at: Option<u64>,
    pub(crate) cancelled_at: Option<u64>,
    pub(crate) expired_at: Option<u64>,
    pub(crate) total: usize,
    pub(crate) completed: usize,
    /// Failed requests, expired ones included.
    pub(crate) failed: usize,
    /// Number of requests processed so far, in processing order.
    pub(crate) done: usize,
    /// Number of requests that expired unprocessed: `total - done` once the
    /// batch is `expired`, else 0.
    pub(crate) expired: usize,
}

#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) id: String,
    /// 1-based creation order among the simulator's OpenAI batches, part of every
    /// random seed.
    pub(crate) sequence: u64,
    pub(crate) endpoint: String,
    pub(crate) input_file_id: String,
    pub(crate) completion_window: String,
    pub(crate) metadata: Option<Map<String, Value>>,
    /// Creation time as Unix ms, the base of every timestamp of the batch.
    pub(crate) created_at_ms: u64,
    pub(crate) timing: Timing,
    pub(crate) seed: u64,
    pub(crate) cached_ratio: f64,
    /// The fault profile that the batch was created with.
    pub(crate) faults: FaultProfile,
    /// The processing plan, or the problems that make the batch fail validation.
    pub(crate) validation: Result<Arc<Plan>, Vec<BatchError>>,
    /// Time in ms after creation at which a cancel was accepted.
    pub(crate) cancelled_after_ms: Option<u64>,
    /// Whether the result files exist. They are generated once, when the batch is
    /// first read in `completed`, `cancelled` or `expired`.
    pub(crate) files_generated: bool,
    pub(crate) output_file_id: Option<String>,
    pub(crate) error_file_id: Option<String>,
}

impl Batch {
    fn unix_secs(&self, offset_ms: u64) -> u64 {
        self.created_at_ms.saturating_add(offset_ms) / 1000
    }

    /// Returns the time in ms after creation at which the batch expires, or
    /// `None` if it finishes, fails or is cancelled before its fault profile's
    /// `expire_after_ms`.
    fn expiry_ms(&self) -> Option<u64> {
        let expire_after = self.faults.expire_after_ms?;
        let natural_end = match &self.validation {
            Ok(_) => self.timing.processing_end_ms(),
            Err(_) => self.timing.validating_ms,
        };
        // `cancel` rejects a batch that has already expired, so a cancel always
        // comes before the expiry.
        let expires = expire_after < natural_end && self.cancelled_after_ms.is_none();
        expires.then_some(expire_after)
    }

    /// Computes the status and counters at `elapsed_ms` after creation.
    pub(crate) fn snapshot(&self, elapsed_ms: u64) -> Snapshot {
        let timing = self.timing;
        let in_progress_start = timing.validating_ms;
        let finalizing_start = in_progress_start.saturating_add(timing.in_progress_ms);
        let completed_start = timing.processing_end_ms();
        let expiry = self.expiry_ms();
        // Processing stops at a cancel or at the expiry, so counts and phases
        // freeze there.
        let progress_ms = [Some(elapsed_ms), self.cancelled_after_ms, expiry]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(elapsed_ms);

        let mut snapshot = Snapshot {
            status: BatchStatus::Validating,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            cancelling_at: None,
            cancelled_at: None,
            expired_at: None,
            total: 0,
            completed: 0,
            failed: 0,
            done: 0,
            expired: 0,
        };

        match &self.validation {
            Err(_) => {
                if progress_ms >= in_progress_start {
                    snapshot.status = BatchStatus::Failed;
                    snapshot.failed_at = Some(self.unix_secs(in_progress_start));
                }
            }
            Ok(plan) => {
                if progress_ms >= in_progress_start {
                    snapshot.status = BatchStatus::InProgress;
                    snapshot.in_progress_at = Some(self.unix_secs(in_progress_start));
                    snapshot.total = plan.len();
                }
                if progress_ms >= finalizing_start {
                    snapshot.status = BatchStatus::Finalizing;
                    snapshot.finalizing_at = Some(self.unix_secs(finalizing_start));
                }
                if progress_ms >= completed_start {
                    snapshot.status = BatchStatus::Completed;
                    snapshot.completed_at = Some(self.unix_secs(completed_start));
                }
                snapshot.done = timing.count_done(plan.len(), progress_ms);
                (snapshot.completed, snapshot.failed) = plan.counts(snapshot.done);
            }
        }

        if let Some(expired_after) = expiry.filter(|&expiry| elapsed_ms >= expiry) {
            snapshot.status = BatchStatus::Expired;
            snapshot.expired_at = Some(self.unix_secs(expired_after));
            if let Ok(plan) = &self.validation {
                snapshot.total = plan.len();
                snapshot.expired = plan.len() - snapshot.done;
                snapshot.failed += snapshot.expired;
            }
        }

        if let Some(cancelled_after) = self.cancelled_after_ms {
            let cancelled_start = cancelled_after.saturating_add(timing.finalizing_ms);
            snapshot.status = BatchStatus::Cancelling;
            snapshot.cancelling_at = Some(self.unix_secs(cancelled_after));
            if elapsed_ms >= cancelled_start {
                snapshot.status = BatchStatus::Cancelled;
                snapshot.cancelled_at = Some(self.unix_secs(cancelled_start));
            }
        }
        snapshot
    }

    /// Requests a cancel at `elapsed_ms` after creation.
    ///
    /// A batch already cancelling or cancelled stays as it is. Returns the status
    /// as the error if the batch has already finished in another way.
    pub(crate) fn cancel(&mut self, elapsed_ms: u64) -> Result<(), BatchStatus> {
        if self.cancelled_after_ms.is_some() {
            return Ok(());
        }
        let status = self.snapshot(elapsed_ms).status;
        if status.is_terminal() {
            return Err(status);
        }
        self.cancelled_after_ms = Some(elapsed_ms);
        Ok(())
    }

    /// Builds the OpenAI batch object for `snapshot`.
    pub(crate) fn to_object(&self, snapshot: &Snapshot) -> BatchObject {
        let errors = match (&self.validation, snapshot.status) {
            (Err(errors), BatchStatus::Failed) => Some(ErrorList {
                object: "list",
                data: errors.clone(),
            }),
            _ => None,
        };
        // The fault reports a missing error file as "" instead of null, as OpenAI
        // has been seen doing, but only once the result files exist.
        let error_file_id = match &self.error_file_id {
            None if self.files_generated && self.faults.empty_error_file_id => Some(String::new()),
            other => other.clone(),
        };
        BatchObject {
            id: self.id.clone(),
            object: "batch",
            endpoint: self.endpoint.clone(),
            errors,
            input_file_id: self.input_file_id.clone(),
            completion_window: self.completion_window.clone(),
            status: snapshot.status.as_str(),
            output_file_id: self.output_file_id.clone(),
            error_file_id,
            created_at: self.unix_secs(0),
            in_progress_at: snapshot.in_progress_at,
            expires_at: self.unix_secs(0) + COMPLETION_WINDOW_SECS,
            finalizing_at: snapshot.finalizing_at,
            completed_at: snapshot.completed_at,
            failed_at: snapshot.failed_at,
            expired_at: snapshot.expired_at,
            cancelling_at: snapshot.cancelling_at,
            cancelled_at: snapshot.cancelled_at,
            request_counts: RequestCounts {
                total: snapshot.total,
                completed: snapshot.completed,
                failed: snapshot.failed,
            },
            metadata: self.metadata.clone(),
        }
    }
}

/// OpenAI's batch object.
#[derive(Debug, Serialize)]
pub(crate) struct BatchObject {
    pub(crate) id: String,
    object: &'static str,
    endpoint: String,
    errors: Option<ErrorList>,
    input_file_id: String,
    completion_window: String,
    pub(crate) status: &'static str,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    created_at: u64,
    in_progress_at: Option<u64>,
    expires_at: u64,
    finalizing_at: Option<u64>,
    completed_at: Option<u64>,
    failed_at: Option<u64>,
    /// Null unless a fault profile's `expire_after_ms` made the batch expire.
    expired_at: Option<u64>,
    cancelling_at: Option<u64>,
    cancelled_at: Option<u64>,
    request_counts: RequestCounts,
    metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
struct ErrorList {
    object: &'static str,
    data: Vec<BatchError>,
}

#[derive(Debug, Serialize)]
struct RequestCounts {
    total: usize,
    completed: usize,
    failed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::InputRequest;
    use serde_json::json;

    fn batch_with(validation: Result<Arc<Plan>, Vec<BatchError>>) -> Batch {
        Batch {
            id: "batch_test".to_owned(),
            sequence: 1,
            endpoint: "/v1/embeddings".to_owned(),
            input_file_id: "file-test".to_owned(),
            completion_window: "24h".to_owned(),
            metadata: None,
            created_at_ms: 1_000_000,
            timing: Timing {
                validating_ms: 100,
                in_progress_ms: 1_000,
                finalizing_ms: 100,
                finalizing_extra_ms: 0,
            },
            seed: 0,
            cached_ratio: 0.0,
            faults: FaultProfile::default(),
            validation,
            cancelled_after_ms: None,
            files_generated: false,
            output_file_id: None,
            error_file_id: None,
        }
    }

    fn valid_batch(requests: usize) -> Batch {
        let inputs = (0..requests)
            .map(|i| InputRequest {
                custom_id: format!("r{i}"),
                model: "text-embedding-3-small".to_owned(),
                body: json!({"input": "x"}),
            })
            .collect();
        batch_with(Ok(Arc::new(Plan::new(inputs, "/v1/embeddings", 0, 1, 0.0))))
    }

    #[test]
    fn valid_batch_moves_through_phases() {
        let batch = valid_batch(10);

        let validating = batch.snapshot(50);
        assert_eq!(validating.status, BatchStatus::Validating);
        assert_eq!(validating.total, 0);

        let started = batch.snapshot(100);
        assert_eq!(started.status, BatchStatus::InProgress);
        assert_eq!(started.total, 10);
        assert_eq!(started.done, 0);
        assert_eq!(started.in_progress_at, Some(1_000));

        let halfway = batch.snapshot(600);
        assert_eq!(halfway.done, 5);
        assert_eq!(halfway.completed, 5);

        let finalizing = batch.snapshot(1_100);
        assert_eq!(finalizing.status, BatchStatus::Finalizing);
        assert_eq!(finalizing.completed, 10);

        let completed = batch.snapshot(1_200);
        assert_eq!(completed.status, BatchStatus::Completed);
        assert_eq!(completed.completed_at, Some(1_001));
    }

    #[test]
    fn invalid_batch_fails_after_validating() {
        let error = BatchError {
            code: "empty_file",
            message: "empty".to_owned(),
            line: None,
            param: None,
        };
        let batch = batch_with(Err(vec![error]));
        assert_eq!(batch.snapshot(99).status, BatchStatus::Validating);
        let failed = batch.snapshot(100);
        assert_eq!(failed.status, BatchStatus::Failed);
        assert_eq!(failed.failed_at, Some(1_000));
        assert!(batch.to_object(&failed).errors.is_some());
    }

    #[test]
    fn cancel_freezes_progress() {
        let mut batch = valid_batch(10);
        batch.cancel(350).unwrap();

        let cancelling = batch.snapshot(400);
        assert_eq!(cancelling.status, BatchStatus::Cancelling);
        assert_eq!(cancelling.done, 2);

        let cancelled = batch.snapshot(5_000);
        assert_eq!(cancelled.status, BatchStatus::Cancelled);
        assert_eq!(cancelled.done, 2);
        assert_eq!(cancelled.completed_at, None);
        assert_eq!(cancelled.cancelled_at, Some(1_000));
    }

    #[test]
    fn cancel_rejects_completed_batch() {
        let mut batch = valid_batch(3);
        assert_eq!(batch.cancel(2_000), Err(BatchStatus::Completed));
    }

    #[test]
    fn zero_durations_complete_at_once() {
        let mut batch = valid_batch(3);
        batch.timing = Timing {
            validating_ms: 0,
            in_progress_ms: 0,
            finalizing_ms: 0,
            finalizing_extra_ms: 0,
        };
        let snapshot = batch.snapshot(0);
        assert_eq!(snapshot.status, BatchStatus::Completed);
        assert_eq!(snapshot.completed, 3);
    }

    #[test]
    fn finalizing_extra_delays_completion() {
        let mut batch = valid_batch(3);
        batch.timing.finalizing_extra_ms = 500;
        assert_eq!(batch.snapshot(1_699).status, BatchStatus::Finalizing);
        assert_eq!(batch.snapshot(1_700).status, BatchStatus::Completed);
    }

    #[test]
    fn expiry_keeps_done_requests_and_expires_rest() {
        let mut batch = valid_batch(10);
        batch.faults.expire_after_ms = Some(600);
        assert_eq!(batch.snapshot(599).status, BatchStatus::InProgress);

        let expired = batch.snapshot(5_000);
        assert_eq!(expired.status, BatchStatus::Expired);
        assert_eq!(expired.expired_at, Some(1_000));
        assert_eq!(expired.done, 5);
        assert_eq!(expired.expired, 5);
        assert_eq!(expired.total, 10);
        assert_eq!(expired.completed, 5);
        assert_eq!(expired.failed, 5);
        assert_eq!(batch.cancel(5_000), Err(BatchStatus::Expired));
    }

    #[test]
    fn expiry_after_completion_has_no_effect() {
        let mut batch = valid_batch(3);
        batch.faults.expire_after_ms = Some(1_200);
        assert_eq!(batch.snapshot(5_000).status, BatchStatus::Completed);
    }

    #[test]
    fn cancel_before_expiry_wins() {
        let mut batch = valid_batch(10);
        batch.faults.expire_after_ms = Some(600);
        batch.cancel(300).unwrap();
        assert_eq!(batch.snapshot(5_000).status, BatchStatus::Cancelled);
    }
}
