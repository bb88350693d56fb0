//! Output and error files of a finished batch, in OpenAI's result line format:
//! `{"id","custom_id","response":{"status_code","request_id","body"},"error":null}`.

use serde::Serialize;
use serde_json::{Value, json};

use crate::bodies::success_body;
use crate::faults::FaultProfile;
use crate::line_faults::{ResultLine, damage_and_join};
use crate::plan::{Outcome, Plan};
use crate::seeding::{Stream, random_hex, stream_rng};

/// Inputs of result generation that come from the batch rather than the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GenerationSettings<'a> {
    pub(crate) endpoint: &'a str,
    pub(crate) seed: u64,
    pub(crate) sequence: u64,
    pub(crate) cached_ratio: f64,
    /// Whether the requests after the first `done` expired, which puts them in
    /// the error file as `batch_expired` lines.
    pub(crate) expired: bool,
    /// Faults that damage the output file.
    pub(crate) faults: &'a FaultProfile,
}

/// JSONL contents of a finished batch. Either may be empty.
#[derive(Debug, Default)]
pub(crate) struct GeneratedFiles {
    /// Lines with status 200.
    pub(crate) output: Vec<u8>,
    /// Lines with a 4xx or 5xx status.
    pub(crate) errors: Vec<u8>,
}

#[derive(Serialize)]
struct OutputLine<'a> {
    id: String,
    custom_id: &'a str,
    /// Null only for an expired request.
    response: Option<ResponseEnvelope>,
    /// Null unless the request expired. OpenAI sets it only for failures
    /// without an HTTP response.
    error: Option<Value>,
}

#[derive(Serialize)]
struct ResponseEnvelope {
    status_code: u16,
    request_id: String,
    body: Value,
}

/// Message of the error that OpenAI writes for a request that expired.
const EXPIRED_MESSAGE: &str =
    "This request could not be executed before the completion window expired.";

/// Generates the result lines of the first `done` requests in processing order,
/// followed by an expired line for each other request if the batch expired.
///
/// Each line depends only on the settings and the request, so the same seed,
/// sequence number and input always give the same bytes.
pub(crate) fn generate_files(
    plan: &Plan,
    done: usize,
    settings: GenerationSettings<'_>,
) -> GeneratedFiles {
    let mut output_lines = Vec::new();
    let mut errors = Vec::new();
    for (index, planned) in plan.requests.iter().enumerate() {
        if index >= done && !settings.expired {
            break;
        }
        let request = &planned.request;
        let mut rng = stream_rng(
            settings.seed,
            settings.sequence,
            Stream::Content,
            &request.custom_id,
        );
        let id = format!("batch_req_{}", random_hex(&mut rng));
        if index >= done {
            let line = OutputLine {
                id,
                custom_id: &request.custom_id,
                response: None,
                error: Some(json!({"code": "batch_expired", "message": EXPIRED_MESSAGE})),
            };
            push_line(&mut errors, &line, &request.custom_id);
            continue;
        }
        let request_id = format!("req_{}", random_hex(&mut rng));

        let (status_code, body) = match &planned.outcome {
            Outcome::Succeeded => {
                let body =
                    success_body(settings.endpoint, request, &mut rng, settings.cached_ratio);
                (200, body)
            }
            Outcome::Rejected { message, param } => (
                400,
                error_body(message, "invalid_request_error", param.as_deref()),
            ),
            Outcome::ServerError => (
                500,
                error_body(
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    None,
                ),
            ),
        };

        let line = OutputLine {
            id,
            custom_id: &request.custom_id,
            response: Some(ResponseEnvelope {
                status_code,
                request_id,
                body,
            }),
            error: None,
        };
        if status_code != 200 {
            push_line(&mut errors, &line, &request.custom_id);
            continue;
        }
        match serde_json::to_vec(&line) {
            Ok(bytes) => output_lines.push(ResultLine {
                bytes,
                succeeded: true,
            }),
            Err(error) => log_serialization_error(&error, &request.custom_id),
        }
    }

    let mut fault_rng = stream_rng(settings.seed, settings.sequence, Stream::Fault, "");
    let output = damage_and_join(
        output_lines,
        settings.faults.duplicate_custom_id,
        settings.faults.malformed_line_at,
        &mut fault_rng,
    );
    GeneratedFiles { output, errors }
}

/// Appends `line` and a newline to `target`.
fn push_line(target: &mut Vec<u8>, line: &OutputLine<'_>, custom_id: &str) {
    match serde_json::to_vec(line) {
        Ok(bytes) => {
            target.extend_from_slice(&bytes);
            target.push(b'\n');
        }
        Err(error) => log_serialization_error(&error, custom_id),
    }
}

// serde_json fails on these lines only for a map with non-string keys, which
// their types do not contain.
fn log_serialization_error(error: &serde_json::Error, custom_id: &str) {
    tracing::error!(%error, %custom_id, "failed to serialize a result line");
}

fn error_body(message: &str, error_type: &str, param: Option<&str>) -> Value {
    json!({
        "error": {
            "message": message,
            "type": error_type,
            "param": param,
            "code": null,
        }
    })
}
