//! Validation of a batch input file, which decides whether a batch fails during
//! `validating`.
//!
//! A file with any problem makes the whole batch `failed`, with one entry per
//! problem in the batch's `errors` list.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::Value;

/// Maximum number of requests in one batch, as OpenAI's API reference states.
const MAX_REQUESTS_PER_BATCH: usize = 50_000;

/// Maximum number of embedding inputs over all requests of an `/v1/embeddings`
/// batch, as OpenAI's API reference states.
const MAX_EMBEDDING_INPUTS_PER_BATCH: usize = 50_000;

/// Maximum number of entries in a failed batch's `errors` list. The simulator stops
/// reporting after this many to keep the batch object small.
const MAX_REPORTED_ERRORS: usize = 100;

/// One entry of a batch's `errors.data` list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct BatchError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// 1-based line of the input file, or `None` for a problem of the whole file.
    pub(crate) line: Option<usize>,
    pub(crate) param: Option<&'static str>,
}

/// A request line that passed validation.
#[derive(Debug, Clone)]
pub(crate) struct InputRequest {
    pub(crate) custom_id: String,
    pub(crate) model: String,
    pub(crate) body: Value,
}

/// Parses and validates the lines of a batch input file against the batch's endpoint.
///
/// Blank lines are skipped but still counted in line numbers. Returns the requests
/// in file order, or every problem found (up to `MAX_REPORTED_ERRORS`).
pub(crate) fn validate_input(
    content: &[u8],
    endpoint: &str,
) -> Result<Vec<InputRequest>, Vec<BatchError>> {
    let mut requests = Vec::new();
    let mut errors = Vec::new();
    let mut seen_custom_ids = HashSet::new();
    let mut batch_model: Option<String> = None;

    for (index, raw_line) in content.split(|&byte| byte == b'\n').enumerate() {
        let line = index + 1;
        if raw_line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match validate_line(raw_line, line, endpoint) {
            Ok(request) => {
                if !seen_custom_ids.insert(request.custom_id.clone()) {
                    errors.push(line_error(
                        line,
                        "duplicate_custom_id",
                        Some("custom_id"),
                        format!(
                            "The custom_id '{}' on line {line} is a duplicate. Each request \
                             in a batch needs a unique custom_id.",
                            request.custom_id
                        ),
                    ));
                }
                match &batch_model {
                    None => batch_model = Some(request.model.clone()),
                    Some(model) if *model != request.model => {
                        errors.push(line_error(
                            line,
                            "mismatched_model",
                            Some("body.model"),
                            format!(
                                "The model '{}' on line {line} differs from the model '{model}' \
                                 of the first request. All requests in a batch must use the \
                                 same model.",
                                request.model
                            ),
                        ));
                    }
                    Some(_) => {}
                }
                requests.push(request);
            }
            Err(error) => errors.push(error),
        }
        if errors.len() >= MAX_REPORTED_ERRORS {
            break;
        }
    }

    if errors.is_empty() && requests.is_empty() {
        errors.push(BatchError {
            code: "empty_file",
            message: "The input file contains no requests.".to_owned(),
            line: None,
            param: None,
        });
    }
    if errors.is_empty() && requests.len() > MAX_REQUESTS_PER_BATCH {
        errors.push(BatchError {
            code: "too_many_requests",
            message: format!(
                "The input file contains {} requests, more than the maximum of \
                 {MAX_REQUESTS_PER_BATCH} per batch.",
                requests.len()
            ),
            line: None,
            param: None,
        });
    }

    if errors.is_empty() && endpoint == "/v1/embeddings" {
        let inputs: usize = requests
            .iter()
            .map(|request| count_embedding_inputs(request.body.get("input")))
            .sum();
        if inputs > MAX_EMBEDDING_INPUTS_PER_BATCH {
            errors.push(BatchError {
                code: "too_many_embedding_inputs",
                message: format!(
                    "The input file contains {inputs} embedding inputs, more than the \
                     maximum of {MAX_EMBEDDING_INPUTS_PER_BATCH} per batch."
                ),
                line: None,
                param: None,
            });
        }
    }

    if errors.is_empty() {
        Ok(requests)
    } else {
        Err(errors)
    }
}

/// Counts the inputs of an embeddings request: one for a string or a single
/// token-id array, else one per array item.
pub(crate) fn count_embedding_inputs(input: Option<&Value>) -> usize {
    match input {
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => 1,
        Some(Value::Array(items)) => items.len(),
        Some(_) => 1,
        None => 0,
    }
}

fn validate_line(raw_line: &[u8], line: usize, endpoint: &str) -> Result<InputRequest, BatchError> {
    let value: Value = serde_json::from_slice(raw_line).map_err(|error| {
        line_error(
            line,
            "invalid_json_line",
            None,
            format!("Line {line} is not valid JSON: {error}."),
        )
    })?;
    let Value::Object(object) = value else {
        return Err(line_error(
            line,
            "invalid_json_line",
            None,
            format!("Line {line} is not a JSON object."),
        ));
    };

    let custom_id = required_string(&object, "custom_id", line)?;
    if custom_id.is_empty() {
        return Err(line_error(
            line,
            "invalid_value",
            Some("custom_id"),
            format!("The custom_id on line {line} is empty."),
        ));
    }

    let method = required_string(&object, "method", line)?;
    if method != "POST" {
        return Err(line_error(
            line,
            "invalid_value",
            Some("method"),
            format!("The method '{method}' on line {line} is invalid. Only 'POST' is supported."),
        ));
    }

    let url = required_string(&object, "url", line)?;
    if url != endpoint {
        return Err(line_error(
            line,
            "mismatched_endpoint",
            Some("url"),
            format!(
                "The url '{url}' on line {line} does not match the batch endpoint '{endpoint}'."
            ),
        ));
    }

    let Some(Value::Object(body)) = object.get("body") else {
        return Err(line_error(
            line,
            "missing_required_parameter",
            Some("body"),
            format!("Line {line} is missing the required object 'body'."),
        ));
    };
    let Some(Value::String(model)) = body.get("model") else {
        return Err(line_error(
            line,
            "missing_required_parameter",
            Some("body.model"),
            format!("Line {line} is missing the required string 'body.model'."),
        ));
    };

    Ok(InputRequest {
        custom_id: custom_id.to_owned(),
        model: model.clone(),
        body: Value::Object(body.clone()),
    })
}

fn required_string<'a>(
    object: &'a serde_json::Map<String, Value>,
    field: &'static str,
    line: usize,
) -> Result<&'a str, BatchError> {
    match object.get(field) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(line_error(
            line,
            "invalid_value",
            Some(field),
            format!("The field '{field}' on line {line} must be a string."),
        )),
        None => Err(line_error(
            line,
            "missing_required_parameter",
            Some(field),
            format!("Line {line} is missing the required field '{field}'."),
        )),
    }
}

fn line_error(
    line: usize,
    code: &'static str,
    param: Option<&'static str>,
    message: String,
) -> BatchError {
    BatchError {
        code,
        message,
        line: Some(line),
        param,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CHAT: &str = "/v1/chat/completions";

    fn chat_line(custom_id: &str, model: &str) -> String {
        format!(
            r#"{{"custom_id":"{custom_id}","method":"POST","url":"{CHAT}","body":{{"model":"{model}","messages":[]}}}}"#
        )
    }

    #[test]
    fn valid_file_keeps_file_order() {
        let content = format!("{}\n\n{}\n", chat_line("a", "m"), chat_line("b", "m"));
        let requests = validate_input(content.as_bytes(), CHAT).unwrap();
        let ids: Vec<&str> = requests.iter().map(|r| r.custom_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn invalid_json_reports_line() {
        let content = format!("{}\nnot json\n", chat_line("a", "m"));
        let errors = validate_input(content.as_bytes(), CHAT).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].code, "invalid_json_line");
        assert_eq!(errors[0].line, Some(2));
    }

    #[test]
    fn duplicate_and_model_mismatch_each_reported() {
        let content = [
            chat_line("a", "m"),
            chat_line("a", "m"),
            chat_line("c", "other"),
        ]
        .join("\n");
        let errors = validate_input(content.as_bytes(), CHAT).unwrap_err();
        let codes: Vec<(&str, Option<usize>)> = errors.iter().map(|e| (e.code, e.line)).collect();
        assert_eq!(
            codes,
            [
                ("duplicate_custom_id", Some(2)),
                ("mismatched_model", Some(3))
            ]
        );
    }

    #[test]
    fn url_mismatch_reports_url_param() {
        let content = chat_line("a", "m");
        let errors = validate_input(content.as_bytes(), "/v1/embeddings").unwrap_err();
        assert_eq!(errors[0].code, "mismatched_endpoint");
        assert_eq!(errors[0].param, Some("url"));
    }

    #[test]
    fn token_id_array_is_one_input() {
        assert_eq!(count_embedding_inputs(Some(&json!([1, 2, 3]))), 1);
        assert_eq!(count_embedding_inputs(Some(&json!([[1], [2]]))), 2);
        assert_eq!(count_embedding_inputs(Some(&json!(["a", "b"]))), 2);
        assert_eq!(count_embedding_inputs(Some(&json!("a"))), 1);
    }

    #[test]
    fn too_many_embedding_inputs_fail() {
        let inputs: Vec<&str> = vec!["x"; 30_000];
        let line = |custom_id: &str| {
            json!({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": inputs}})
            .to_string()
        };
        let content = format!("{}\n{}\n", line("a"), line("b"));
        let errors = validate_input(content.as_bytes(), "/v1/embeddings").unwrap_err();
        assert_eq!(errors[0].code, "too_many_embedding_inputs");
    }

    #[test]
    fn empty_file_fails_without_line() {
        let errors = validate_input(b"\n \n", CHAT).unwrap_err();
        assert_eq!(errors[0].code, "empty_file");
        assert_eq!(errors[0].line, None);
    }
}
