//! Output and error files of a finished batch, in OpenAI's result line format:
//! `{"id","custom_id","response":{"status_code","request_id","body"},"error":null}`.

use serde::Serialize;
use serde_json::{Value, json};

use crate::bodies::success_body;
use crate::plan::{Outcome, Plan};
use crate::seeding::{Stream, random_hex, stream_rng};

/// Inputs of result generation that come from the batch rather than the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GenerationSettings<'a> {
    pub(crate) endpoint: &'a str,
    pub(crate) seed: u64,
    pub(crate) sequence: u64,
    pub(crate) cached_ratio: f64,
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
struct ResultLine<'a> {
    id: String,
    custom_id: &'a str,
    response: ResponseEnvelope,
    /// Always null. OpenAI sets it only for failures without an HTTP response,
    /// and the simulator produces none.
    error: Option<Value>,
}

#[derive(Serialize)]
struct ResponseEnvelope {
    status_code: u16,
    request_id: String,
    body: Value,
}

/// Generates the result lines of the first `done` requests in processing order.
///
/// Each line depends only on the settings and the request, so the same seed,
/// sequence number and input always give the same bytes.
pub(crate) fn generate_files(
    plan: &Plan,
    done: usize,
    settings: GenerationSettings<'_>,
) -> GeneratedFiles {
    let mut files = GeneratedFiles::default();
    for planned in plan.requests.iter().take(done) {
        let request = &planned.request;
        let mut rng = stream_rng(
            settings.seed,
            settings.sequence,
            Stream::Content,
            &request.custom_id,
        );
        let id = format!("batch_req_{}", random_hex(&mut rng));
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

        let line = ResultLine {
            id,
            custom_id: &request.custom_id,
            response: ResponseEnvelope {
                status_code,
                request_id,
                body,
            },
            error: None,
        };
        let target = if status_code == 200 {
            &mut files.output
        } else {
            &mut files.errors
        };
        // serde_json fails here only on a map with non-string keys, which these
        // types do not contain.
        if let Err(error) = serde_json::to_writer(&mut *target, &line) {
            tracing::error!(
                %error,
                custom_id = %request.custom_id,
                "failed to serialize a result line"
            );
            continue;
        }
        target.push(b'\n');
    }
    files
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
