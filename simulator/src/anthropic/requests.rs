//! The body of `POST /v1/messages/batches`: checks that reject the whole call,
//! and the per-request `params` checks and failure draws that make single
//! results `errored`.

use std::collections::HashSet;

use rand::Rng;
use serde_json::{Map, Value};

use crate::anthropic::batch::MessageOutcome;
use crate::anthropic::error::AnthropicError;
use crate::plan::{Plan, PlannedRequest};
use crate::seeding::{Stream, stream_rng};
use crate::validation::InputRequest;

/// Maximum number of requests in one message batch, as Anthropic's API reference states.
pub(crate) const MAX_REQUESTS_PER_BATCH: usize = 100_000;

/// Maximum length of a `custom_id`.
const MAX_CUSTOM_ID_CHARS: usize = 64;

/// Pattern that every `custom_id` must match, as quoted in error messages.
const CUSTOM_ID_PATTERN: &str = "^[a-zA-Z0-9_-]{1,64}$";

/// Error types of randomly failed requests, drawn with equal probability.
const RANDOM_ERROR_TYPES: [&str; 3] = ["overloaded_error", "api_error", "invalid_request_error"];

/// Parses the create body into requests in body order.
///
/// Rejects, with a 400 that names the request, a body that is not a JSON object
/// with a non-empty `requests` array, and any request whose `custom_id` is
/// invalid or repeated or that has no `params` object. More than
/// `MAX_REQUESTS_PER_BATCH` requests get a 413. The contents of `params` are
/// checked later, by `plan_requests`.
pub(crate) fn parse_create_body(body: &[u8]) -> Result<Vec<InputRequest>, AnthropicError> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        AnthropicError::invalid_request(format!("The request body is not valid JSON: {error}."))
    })?;
    let Value::Object(mut fields) = value else {
        return Err(AnthropicError::invalid_request(
            "The request body must be a JSON object with a 'requests' array.",
        ));
    };
    let items = match fields.remove("requests") {
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(AnthropicError::invalid_request(
                "requests: Input should be a valid list",
            ));
        }
        None => return Err(AnthropicError::invalid_request("requests: Field required")),
    };
    if items.is_empty() {
        return Err(AnthropicError::invalid_request(
            "requests: List should have at least 1 item after validation, not 0",
        ));
    }
    if items.len() > MAX_REQUESTS_PER_BATCH {
        return Err(AnthropicError::request_too_large(format!(
            "The batch contains {} requests, more than the maximum of \
             {MAX_REQUESTS_PER_BATCH}. Split it into smaller batches.",
            items.len()
        )));
    }

    let mut seen = HashSet::with_capacity(items.len());
    let mut requests = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let Value::Object(mut request) = item else {
            return Err(AnthropicError::invalid_request(format!(
                "requests.{index}: Input should be a valid object"
            )));
        };
        let custom_id = parse_custom_id(&request, index)?;
        if !seen.insert(custom_id.clone()) {
            return Err(AnthropicError::invalid_request(format!(
                "requests.{index}.custom_id: the custom_id '{custom_id}' is a duplicate. \
                 Each custom_id in a batch must be unique."
            )));
        }
        let params = match request.remove("params") {
            Some(Value::Object(params)) => params,
            Some(_) => {
                return Err(AnthropicError::invalid_request(format!(
                    "requests.{index}.params: Input should be a valid object"
                )));
            }
            None => {
                return Err(AnthropicError::invalid_request(format!(
                    "requests.{index}.params: Field required"
                )));
            }
        };
        let model = params
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        requests.push(InputRequest {
            custom_id,
            model,
            body: Value::Object(params),
        });
    }
    Ok(requests)
}

fn parse_custom_id(request: &Map<String, Value>, index: usize) -> Result<String, AnthropicError> {
    let custom_id = match request.get("custom_id") {
        Some(Value::String(custom_id)) => custom_id,
        Some(_) => {
            return Err(AnthropicError::invalid_request(format!(
                "requests.{index}.custom_id: Input should be a valid string"
            )));
        }
        None => {
            return Err(AnthropicError::invalid_request(format!(
                "requests.{index}.custom_id: Field required"
            )));
        }
    };
    let valid = (1..=MAX_CUSTOM_ID_CHARS).contains(&custom_id.len())
        && custom_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if !valid {
        return Err(AnthropicError::invalid_request(format!(
            "requests.{index}.custom_id: String should match pattern '{CUSTOM_ID_PATTERN}', \
             got '{custom_id}'"
        )));
    }
    Ok(custom_id.clone())
}

/// Draws each request's outcome and shuffles the requests into processing order.
///
/// Requests with invalid `params` are `errored` with `invalid_request_error`
/// whatever the draw.
pub(crate) fn plan_requests(
    requests: Vec<InputRequest>,
    seed: u64,
    sequence: u64,
    failure_ratio: f64,
) -> Plan<MessageOutcome> {
    let planned = requests
        .into_iter()
        .map(|request| {
            let outcome = match find_params_problem(&request.body) {
                Some(message) => MessageOutcome::Errored {
                    error_type: "invalid_request_error",
                    message,
                },
                None => draw_outcome(seed, sequence, &request.custom_id, failure_ratio),
            };
            PlannedRequest { request, outcome }
        })
        .collect();
    Plan::from_planned(planned, seed, sequence)
}

/// Returns the error message for `params` without a `model` string, a
/// `max_tokens` integer of at least 1, or a non-empty `messages` array.
fn find_params_problem(params: &Value) -> Option<String> {
    match params.get("model") {
        Some(Value::String(model)) if !model.is_empty() => {}
        Some(_) => return Some("model: Input should be a non-empty string".to_owned()),
        None => return Some("model: Field required".to_owned()),
    }
    match params.get("max_tokens") {
        Some(value) if value.as_u64().is_some_and(|limit| limit >= 1) => {}
        Some(value) => {
            return Some(format!(
                "max_tokens: Input should be an integer of at least 1, got {value}"
            ));
        }
        None => return Some("max_tokens: Field required".to_owned()),
    }
    match params.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => None,
        Some(_) => Some("messages: Input should be a non-empty list".to_owned()),
        None => Some("messages: Field required".to_owned()),
    }
}

fn draw_outcome(seed: u64, sequence: u64, custom_id: &str, failure_ratio: f64) -> MessageOutcome {
    let mut rng = stream_rng(seed, sequence, Stream::Outcome, custom_id);
    let draw: f64 = rng.random();
    if draw >= failure_ratio {
        return MessageOutcome::Succeeded;
    }
    let error_type = RANDOM_ERROR_TYPES[rng.random_range(0..RANDOM_ERROR_TYPES.len())];
    let message = match error_type {
        "overloaded_error" => "Overloaded".to_owned(),
        "api_error" => "Internal server error".to_owned(),
        _ => format!(
            "The simulator rejected this request at random (failure ratio {failure_ratio})."
        ),
    };
    MessageOutcome::Errored {
        error_type,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(requests: Value) -> Vec<u8> {
        json!({ "requests": requests }).to_string().into_bytes()
    }

    fn valid_params() -> Value {
        json!({"model": "claude-test", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]})
    }

    #[test]
    fn custom_id_pattern_is_enforced() {
        let too_long = "a".repeat(65);
        for custom_id in ["", "has space", "dot.id", "é", too_long.as_str()] {
            let request = json!([{ "custom_id": custom_id, "params": valid_params() }]);
            let error = parse_create_body(&body(request)).unwrap_err();
            assert_eq!(error.status, 400, "custom_id {custom_id:?}");
            assert!(
                error.message.contains("requests.0.custom_id"),
                "{}",
                error.message
            );
        }
        let longest = "A-z_9".repeat(12) + "abcd";
        let request = json!([{ "custom_id": longest, "params": valid_params() }]);
        assert!(parse_create_body(&body(request)).is_ok());
    }

    #[test]
    fn duplicate_custom_id_is_rejected() {
        let requests = json!([
            {"custom_id": "a", "params": valid_params()},
            {"custom_id": "a", "params": valid_params()},
        ]);
        let error = parse_create_body(&body(requests)).unwrap_err();
        assert!(
            error.message.contains("requests.1.custom_id"),
            "{}",
            error.message
        );
    }

    #[test]
    fn empty_and_missing_requests_are_rejected() {
        assert!(parse_create_body(&body(json!([]))).is_err());
        assert!(parse_create_body(b"{}").is_err());
        assert!(parse_create_body(b"[1]").is_err());
        let without_params = json!([{"custom_id": "a"}]);
        assert!(parse_create_body(&body(without_params)).is_err());
    }

    #[test]
    fn invalid_params_become_errored_outcomes() {
        let cases = [
            (json!({"max_tokens": 5, "messages": [1]}), "model"),
            (json!({"model": "m", "messages": [1]}), "max_tokens"),
            (
                json!({"model": "m", "max_tokens": 0, "messages": [1]}),
                "max_tokens",
            ),
            (json!({"model": "m", "max_tokens": 5}), "messages"),
            (
                json!({"model": "m", "max_tokens": 5, "messages": []}),
                "messages",
            ),
        ];
        for (params, field) in cases {
            let message = find_params_problem(&params);
            assert!(
                message
                    .as_deref()
                    .is_some_and(|text| text.starts_with(field)),
                "params {params} gave {message:?}"
            );
        }
        assert_eq!(find_params_problem(&valid_params()), None);
    }

    #[test]
    fn full_failure_ratio_mixes_error_types() {
        let requests = (0..60)
            .map(|index| InputRequest {
                custom_id: format!("r{index}"),
                model: "claude-test".to_owned(),
                body: valid_params(),
            })
            .collect();
        let plan = plan_requests(requests, 1, 1, 1.0);
        let types: HashSet<&str> = plan
            .requests
            .iter()
            .map(|planned| match &planned.outcome {
                MessageOutcome::Errored { error_type, .. } => *error_type,
                MessageOutcome::Succeeded => "succeeded",
            })
            .collect();
        assert_eq!(types, HashSet::from(RANDOM_ERROR_TYPES));
    }
}
