//! The processing plan of a validated batch: the order in which its requests run
//! and the outcome of each, fixed when the batch is created.

use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::Value;

use crate::seeding::{Stream, stream_rng};
use crate::validation::InputRequest;

/// Share of randomly failed requests that fail with a 500 `server_error` rather
/// than a 400 `invalid_request_error`.
const SERVER_ERROR_SHARE: f64 = 0.25;

/// Result of one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Succeeded,
    /// HTTP 400 with an `invalid_request_error` body.
    Rejected {
        message: String,
        param: Option<String>,
    },
    /// HTTP 500 with a `server_error` body.
    ServerError,
}

/// The result kind of one planned request, for either provider.
pub(crate) trait RequestOutcome {
    fn is_failure(&self) -> bool;
}

impl RequestOutcome for Outcome {
    fn is_failure(&self) -> bool {
        !matches!(self, Outcome::Succeeded)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedRequest<O = Outcome> {
    pub(crate) request: InputRequest,
    pub(crate) outcome: O,
}

/// Requests in processing order, which is also their order in the result files.
/// `O` is the outcome type of the provider, OpenAI's by default.
#[derive(Debug, Clone)]
pub(crate) struct Plan<O = Outcome> {
    pub(crate) requests: Vec<PlannedRequest<O>>,
    /// `failed_before[k]` is the number of failures among the first `k` requests.
    failed_before: Vec<usize>,
}

impl<O: RequestOutcome> Plan<O> {
    /// Shuffles requests whose outcomes are already drawn with the batch's order
    /// stream.
    pub(crate) fn from_planned(
        mut planned: Vec<PlannedRequest<O>>,
        seed: u64,
        sequence: u64,
    ) -> Plan<O> {
        planned.shuffle(&mut stream_rng(seed, sequence, Stream::Order, ""));

        let mut failed_before = Vec::with_capacity(planned.len() + 1);
        failed_before.push(0);
        let mut failed = 0;
        for entry in &planned {
            if entry.outcome.is_failure() {
                failed += 1;
            }
            failed_before.push(failed);
        }
        Plan {
            requests: planned,
            failed_before,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    /// Counts `(completed, failed)` among the first `done` requests.
    pub(crate) fn counts(&self, done: usize) -> (usize, usize) {
        let done = done.min(self.len());
        let failed = self.failed_before[done];
        (done - failed, failed)
    }
}

impl Plan {
    /// Shuffles the requests with the batch's order stream and draws each outcome.
    ///
    /// A body that the endpoint cannot accept is rejected whatever the draw.
    pub(crate) fn new(
        requests: Vec<InputRequest>,
        endpoint: &str,
        seed: u64,
        sequence: u64,
        failure_ratio: f64,
    ) -> Plan {
        let planned: Vec<PlannedRequest> = requests
            .into_iter()
            .map(|request| {
                let outcome = match find_body_problem(endpoint, &request.body) {
                    Some(rejection) => rejection,
                    None => draw_outcome(seed, sequence, &request.custom_id, failure_ratio),
                };
                PlannedRequest { request, outcome }
            })
            .collect();
        Plan::from_planned(planned, seed, sequence)
    }
}

fn draw_outcome(seed: u64, sequence: u64, custom_id: &str, failure_ratio: f64) -> Outcome {
    let mut rng = stream_rng(seed, sequence, Stream::Outcome, custom_id);
    let draw: f64 = rng.random();
    if draw >= failure_ratio {
        return Outcome::Succeeded;
    }
    if rng.random::<f64>() < SERVER_ERROR_SHARE {
        Outcome::ServerError
    } else {
        Outcome::Rejected {
            message: format!(
                "The simulator rejected this request at random (failure ratio {failure_ratio})."
            ),
            param: None,
        }
    }
}

/// Returns a 400 outcome for a body that lacks the endpoint's main input or sets
/// a token limit that is not a positive integer.
fn find_body_problem(endpoint: &str, body: &Value) -> Option<Outcome> {
    let required = match endpoint {
        "/v1/chat/completions" => "messages",
        "/v1/embeddings" | "/v1/responses" => "input",
        _ => "prompt",
    };
    let has_input = match body.get(required) {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(_) => true,
    };
    if !has_input {
        return Some(Outcome::Rejected {
            message: format!("Missing required parameter: '{required}'."),
            param: Some(required.to_owned()),
        });
    }

    for field in ["max_completion_tokens", "max_tokens", "max_output_tokens"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(value) if value.as_u64().is_some_and(|limit| limit >= 1) => {}
            Some(value) => {
                return Some(Outcome::Rejected {
                    message: format!(
                        "Invalid '{field}': expected an integer of at least 1, got {value}."
                    ),
                    param: Some(field.to_owned()),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(custom_id: &str, body: Value) -> InputRequest {
        InputRequest {
            custom_id: custom_id.to_owned(),
            model: "m".to_owned(),
            body,
        }
    }

    #[test]
    fn counts_follow_processing_order() {
        let requests = (0..20)
            .map(|i| request(&format!("r{i}"), json!({"input": "x"})))
            .collect();
        let plan = Plan::new(requests, "/v1/embeddings", 3, 1, 0.5);
        let (completed, failed) = plan.counts(plan.len());
        assert_eq!(completed + failed, 20);
        let expected_failed = plan
            .requests
            .iter()
            .filter(|r| r.outcome.is_failure())
            .count();
        assert_eq!(failed, expected_failed);
        assert_eq!(plan.counts(0), (0, 0));
    }

    #[test]
    fn missing_messages_is_rejected() {
        let problem = find_body_problem("/v1/chat/completions", &json!({"model": "m"}));
        assert!(matches!(problem, Some(Outcome::Rejected { .. })));
    }

    #[test]
    fn zero_max_tokens_is_rejected() {
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0});
        let problem = find_body_problem("/v1/chat/completions", &body);
        assert!(matches!(problem, Some(Outcome::Rejected { .. })));
    }

    #[test]
    fn full_failure_ratio_fails_every_request() {
        let requests = (0..50)
            .map(|i| request(&format!("r{i}"), json!({"input": "x"})))
            .collect();
        let plan = Plan::new(requests, "/v1/embeddings", 3, 1, 1.0);
        assert_eq!(plan.counts(50), (0, 50));
    }
}
