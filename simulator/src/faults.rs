//! Fault profiles: misbehaviour of the simulated APIs that clients must survive,
//! such as rate limits, server errors, slow responses, expiry and damaged
//! result files.

use serde::{Deserialize, Serialize};

/// HTTP statuses that `server_error_status` accepts.
const SERVER_ERROR_STATUSES: [u16; 3] = [500, 502, 503];

/// Faults that the simulator injects. Every fault is off by default.
///
/// The run-level profile (`SimulatorConfig::faults`) applies to every batch
/// created while it is in force. A profile queued with `POST
/// /_sim/next-batch-faults` replaces it for one batch. A batch keeps the profile
/// that it was created with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultProfile {
    /// Number of API calls that get 429 before calls succeed again. At run level
    /// it counts every `/v1/` call. In a per-batch profile it counts only the
    /// calls that name the batch or one of its result files.
    pub rate_limit_requests: u32,
    /// Value in seconds of the `Retry-After` header of each 429.
    pub retry_after_secs: u64,
    /// Number of API calls, counted like `rate_limit_requests` and after those,
    /// that get `server_error_status`.
    pub server_error_requests: u32,
    /// HTTP status of the injected server errors: 500, 502 or 503.
    pub server_error_status: u16,
    /// Delay in ms before each API response is sent. At run level it delays
    /// every `/v1/` call, and in a per-batch profile the calls counted like
    /// `rate_limit_requests`.
    pub response_delay_ms: u64,
    /// Extra time in ms that an OpenAI batch stays `finalizing`, or that an
    /// Anthropic batch stays `in_progress`.
    pub finalizing_extra_ms: u64,
    /// OpenAI only: a finished batch without failed requests reports
    /// `error_file_id` as `""` instead of null.
    pub empty_error_file_id: bool,
    /// OpenAI only: the batch is created, then fails validation with the error
    /// code `token_limit_exceeded` and gets no result files.
    pub token_limit_exceeded: bool,
    /// 1-based line, in served order, of the OpenAI output file or the Anthropic
    /// results that is replaced by its first half, which is invalid JSON.
    pub malformed_line_at: Option<u64>,
    /// Number of lines after which the download of the OpenAI output file or the
    /// Anthropic results stops. The last line is cut in half and has no newline.
    pub truncate_results_at_line: Option<u64>,
    /// One succeeded result line appears twice in the OpenAI output file or the
    /// Anthropic results.
    pub duplicate_custom_id: bool,
    /// Age in ms at which a batch that has not finished expires.
    pub expire_after_ms: Option<u64>,
    /// Every request fails, as with a failure ratio of 1.0.
    pub all_requests_fail: bool,
}

impl Default for FaultProfile {
    fn default() -> Self {
        FaultProfile {
            rate_limit_requests: 0,
            retry_after_secs: 1,
            server_error_requests: 0,
            server_error_status: 500,
            response_delay_ms: 0,
            finalizing_extra_ms: 0,
            empty_error_file_id: false,
            token_limit_exceeded: false,
            malformed_line_at: None,
            truncate_results_at_line: None,
            duplicate_custom_id: false,
            expire_after_ms: None,
            all_requests_fail: false,
        }
    }
}

impl FaultProfile {
    /// Checks the server error status and that line numbers are at least 1.
    pub fn validate(&self) -> Result<(), String> {
        if !SERVER_ERROR_STATUSES.contains(&self.server_error_status) {
            return Err(format!(
                "invalid server_error_status {}: expected 500, 502 or 503",
                self.server_error_status
            ));
        }
        for (name, line) in [
            ("malformed_line_at", self.malformed_line_at),
            ("truncate_results_at_line", self.truncate_results_at_line),
        ] {
            if line == Some(0) {
                return Err(format!("invalid {name} 0: lines are numbered from 1"));
            }
        }
        Ok(())
    }

    /// Returns the failure ratio that a batch with this profile uses.
    pub(crate) fn effective_failure_ratio(&self, failure_ratio: f64) -> f64 {
        if self.all_requests_fail {
            1.0
        } else {
            failure_ratio
        }
    }

    /// Returns the call faults that a batch created with this profile injects
    /// into the calls that name it.
    pub(crate) fn call_budget(&self) -> CallFaultBudget {
        CallFaultBudget {
            rate_limit_remaining: self.rate_limit_requests,
            retry_after_secs: self.retry_after_secs,
            server_error_remaining: self.server_error_requests,
            server_error_status: self.server_error_status,
            response_delay_ms: self.response_delay_ms,
        }
    }
}

/// Remaining rate limit and server error responses of one scope: the whole run,
/// or the calls that name one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CallFaultBudget {
    pub(crate) rate_limit_remaining: u32,
    pub(crate) retry_after_secs: u64,
    pub(crate) server_error_remaining: u32,
    pub(crate) server_error_status: u16,
    pub(crate) response_delay_ms: u64,
}

/// A failure injected in place of an API response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallFault {
    RateLimited { retry_after_secs: u64 },
    ServerError { status: u16 },
}

impl CallFaultBudget {
    /// Takes one injected failure from the budget, rate limits first, or returns
    /// `None` once both counters are spent.
    pub(crate) fn take(&mut self) -> Option<CallFault> {
        if self.rate_limit_remaining > 0 {
            self.rate_limit_remaining -= 1;
            return Some(CallFault::RateLimited {
                retry_after_secs: self.retry_after_secs,
            });
        }
        if self.server_error_remaining > 0 {
            self.server_error_remaining -= 1;
            return Some(CallFault::ServerError {
                status: self.server_error_status,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_default_profile() {
        let profile: FaultProfile = serde_json::from_str("{}").unwrap();
        assert_eq!(profile, FaultProfile::default());
        assert_eq!(profile.validate(), Ok(()));
    }

    #[test]
    fn unknown_field_is_rejected() {
        let result = serde_json::from_str::<FaultProfile>(r#"{"rate_limit":1}"#);
        assert!(result.is_err());
    }

    #[test]
    fn validate_rejects_status_and_line_zero() {
        let status = FaultProfile {
            server_error_status: 504,
            ..FaultProfile::default()
        };
        assert!(status.validate().unwrap_err().contains("504"));
        let line = FaultProfile {
            malformed_line_at: Some(0),
            ..FaultProfile::default()
        };
        assert!(line.validate().unwrap_err().contains("malformed_line_at"));
    }

    #[test]
    fn budget_spends_rate_limits_before_server_errors() {
        let mut budget = FaultProfile {
            rate_limit_requests: 1,
            retry_after_secs: 7,
            server_error_requests: 1,
            server_error_status: 503,
            ..FaultProfile::default()
        }
        .call_budget();
        assert_eq!(
            budget.take(),
            Some(CallFault::RateLimited {
                retry_after_secs: 7
            })
        );
        assert_eq!(budget.take(), Some(CallFault::ServerError { status: 503 }));
        assert_eq!(budget.take(), None);
    }
}
