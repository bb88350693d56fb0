//! Handlers of the Batches API: create, retrieve, list and cancel.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::batch::{Batch, BatchObject, Timing};
use crate::error::ApiError;
use crate::plan::Plan;
use crate::state::{AppState, StoredBatch, new_batch_id, unix_millis_now};
use crate::validation::{BatchError, InputRequest, validate_input};

/// Endpoints that OpenAI's Batch API accepts.
const SUPPORTED_ENDPOINTS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/completions",
];

/// OpenAI's limits on batch metadata.
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY_CHARS: usize = 64;
const MAX_METADATA_VALUE_CHARS: usize = 512;

const DEFAULT_LIST_LIMIT: usize = 20;
const MAX_LIST_LIMIT: usize = 100;

/// Handles `POST /v1/batches`.
///
/// Request fields are checked here and rejected with 400. The input file's lines
/// are checked too, but a problem there makes the batch `failed` after the
/// validating phase instead, as with OpenAI.
pub(crate) async fn create_batch(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<BatchObject>, ApiError> {
    let created = Instant::now();
    let created_at_ms = unix_millis_now();

    let request: Value = serde_json::from_slice(&body).map_err(|error| {
        ApiError::invalid_request(format!("The request body is not valid JSON: {error}."))
    })?;
    let Value::Object(fields) = request else {
        return Err(ApiError::invalid_request(
            "The request body must be a JSON object.",
        ));
    };
    let input_file_id = required_string(&fields, "input_file_id")?.to_owned();
    let endpoint = required_string(&fields, "endpoint")?.to_owned();
    if !SUPPORTED_ENDPOINTS.contains(&endpoint.as_str()) {
        return Err(ApiError::invalid_request(format!(
            "Invalid value for 'endpoint': '{endpoint}'. Supported values are: {}.",
            SUPPORTED_ENDPOINTS.join(", ")
        ))
        .with_param("endpoint"));
    }
    let completion_window = required_string(&fields, "completion_window")?.to_owned();
    if completion_window != "24h" {
        return Err(ApiError::invalid_request(format!(
            "Invalid value for 'completion_window': '{completion_window}'. The only \
             supported value is '24h'."
        ))
        .with_param("completion_window"));
    }
    let metadata = validate_metadata(fields.get("metadata"))?;

    let batch_inputs = {
        let mut store = state.lock();
        let file = store.files.get(&input_file_id).ok_or_else(|| {
            ApiError::not_found(format!("No such File object: {input_file_id}"))
                .with_param("input_file_id")
        })?;
        if file.purpose != "batch" {
            return Err(ApiError::invalid_request(format!(
                "The file {input_file_id} has purpose '{}', but a batch input file needs \
                 purpose 'batch'.",
                file.purpose
            ))
            .with_param("input_file_id"));
        }
        let content = file.content.clone();
        store.last_sequence += 1;
        let (faults, call_faults) = store.take_batch_faults();
        (
            content,
            store.last_sequence,
            store.config.clone(),
            faults,
            call_faults,
        )
    };
    let (content, sequence, config, faults, call_faults) = batch_inputs;

    // Parsing a large input file takes a while, so it runs off the async workers.
    let plan_endpoint = endpoint.clone();
    let failure_ratio = faults.effective_failure_ratio(config.failure_ratio);
    let token_limit_exceeded = faults.token_limit_exceeded;
    let validation = tokio::task::spawn_blocking(move || {
        let requests = validate_input(&content, &plan_endpoint)?;
        if token_limit_exceeded {
            return Err(vec![token_limit_error(&requests)]);
        }
        Ok(Arc::new(Plan::new(
            requests,
            &plan_endpoint,
            config.seed,
            sequence,
            failure_ratio,
        )))
    })
    .await
    .map_err(|error| {
        tracing::error!(
            %error,
            input_file_id = %input_file_id,
            "input file validation task failed"
        );
        ApiError::internal("The simulator failed while validating the input file.")
    })?;

    let batch = Batch {
        id: new_batch_id(),
        sequence,
        endpoint,
        input_file_id,
        completion_window,
        metadata,
        created_at_ms,
        timing: Timing {
            validating_ms: config.validating_ms,
            in_progress_ms: config.in_progress_ms,
            finalizing_ms: config.finalizing_ms,
            finalizing_extra_ms: faults.finalizing_extra_ms,
        },
        seed: config.seed,
        cached_ratio: config.cached_ratio,
        faults,
        validation,
        cancelled_after_ms: None,
        files_generated: false,
        output_file_id: None,
        error_file_id: None,
    };
    match &batch.validation {
        Ok(plan) => tracing::info!(
            batch_id = %batch.id, sequence, endpoint = %batch.endpoint,
            input_file_id = %batch.input_file_id, requests = plan.len(), "batch created"
        ),
        Err(errors) => tracing::info!(
            batch_id = %batch.id, sequence, input_file_id = %batch.input_file_id,
            problems = errors.len(),
            first_problem = errors.first().map(|error| error.message.as_str()),
            "batch created, its input file is invalid and it will fail validation"
        ),
    }

    let position = {
        let mut store = state.lock();
        let position = store.batches.len();
        store.batch_positions.insert(batch.id.clone(), position);
        store.batches.push(StoredBatch {
            batch,
            created,
            call_faults,
        });
        position
    };
    // With all phase durations at 0 the batch is already finished here.
    state.batch_object(position).await.map(Json)
}

/// Handles `GET /v1/batches/{id}`.
pub(crate) async fn retrieve_batch(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let position = find_batch(&state, &batch_id)?;
    state.batch_object(position).await.map(Json)
}

/// Handles `POST /v1/batches/{id}/cancel`. Cancelling a batch that is already
/// cancelling or cancelled returns it unchanged.
pub(crate) async fn cancel_batch(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let position = find_batch(&state, &batch_id)?;
    {
        let mut store = state.lock();
        let stored = &mut store.batches[position];
        let elapsed_ms = stored.elapsed_ms(Instant::now());
        if let Err(status) = stored.batch.cancel(elapsed_ms) {
            return Err(ApiError::invalid_request(format!(
                "Cannot cancel batch {batch_id} because its status is '{}'.",
                status.as_str()
            ))
            .with_status(StatusCode::CONFLICT));
        }
        tracing::info!(batch_id = %batch_id, elapsed_ms, "batch cancel requested");
    }
    state.batch_object(position).await.map(Json)
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    after: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct BatchList {
    object: &'static str,
    data: Vec<BatchObject>,
    first_id: Option<String>,
    last_id: Option<String>,
    has_more: bool,
}

/// Handles `GET /v1/batches?after=ID&limit=N`: batches newest first, starting
/// after the batch `after` if given.
pub(crate) async fn list_batches(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<BatchList>, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::invalid_request(format!("Invalid query string: {}.", rejection.body_text()))
    })?;
    let limit = parse_limit(query.limit.as_deref())?;

    // Positions before `end` in creation order are older than the cursor.
    let end = {
        let store = state.lock();
        match &query.after {
            Some(after) => *store.batch_positions.get(after).ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "Invalid value for 'after': no batch has the id '{after}'."
                ))
                .with_param("after")
            })?,
            None => store.batches.len(),
        }
    };
    let start = end.saturating_sub(limit);

    let mut data = Vec::with_capacity(end - start);
    for position in (start..end).rev() {
        data.push(state.batch_object(position).await?);
    }
    Ok(Json(BatchList {
        object: "list",
        first_id: data.first().map(|batch| batch.id.clone()),
        last_id: data.last().map(|batch| batch.id.clone()),
        has_more: start > 0,
        data,
    }))
}

fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = limit else {
        return Ok(DEFAULT_LIST_LIMIT);
    };
    match text.parse::<usize>() {
        Ok(value) if (1..=MAX_LIST_LIMIT).contains(&value) => Ok(value),
        _ => Err(ApiError::invalid_request(format!(
            "Invalid value for 'limit': '{text}'. Expected an integer from 1 to {MAX_LIST_LIMIT}."
        ))
        .with_param("limit")),
    }
}

fn required_string<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    match fields.get(name) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(ApiError::invalid_request(format!(
            "Invalid type for '{name}': expected a string."
        ))
        .with_param(name)),
        None => Err(
            ApiError::invalid_request(format!("Missing required parameter: '{name}'."))
                .with_param(name),
        ),
    }
}

/// Checks metadata against OpenAI's limits: at most 16 pairs, keys of at most 64
/// characters and string values of at most 512 characters.
fn validate_metadata(metadata: Option<&Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    let pairs = match metadata {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(pairs)) => pairs,
        Some(_) => {
            return Err(invalid_metadata(
                "Invalid type for 'metadata': expected an object of string values.".to_owned(),
            ));
        }
    };
    if pairs.len() > MAX_METADATA_PAIRS {
        return Err(invalid_metadata(format!(
            "Invalid 'metadata': it has {} pairs, more than the maximum of {MAX_METADATA_PAIRS}.",
            pairs.len()
        )));
    }
    for (key, value) in pairs {
        if key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(invalid_metadata(format!(
                "Invalid 'metadata': the key '{key}' is longer than the maximum of \
                 {MAX_METADATA_KEY_CHARS} characters."
            )));
        }
        let Value::String(text) = value else {
            return Err(invalid_metadata(format!(
                "Invalid 'metadata': the value of '{key}' must be a string."
            )));
        };
        if text.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(invalid_metadata(format!(
                "Invalid 'metadata': the value of '{key}' is longer than the maximum of \
                 {MAX_METADATA_VALUE_CHARS} characters."
            )));
        }
    }
    Ok(Some(pairs.clone()))
}

/// Builds the error of the `token_limit_exceeded` fault, worded like OpenAI's
/// message for an organization's enqueued token limit.
fn token_limit_error(requests: &[InputRequest]) -> BatchError {
    let model = requests
        .first()
        .map_or("the requested model", |request| request.model.as_str());
    BatchError {
        code: "token_limit_exceeded",
        message: format!(
            "Enqueued token limit reached for {model} in organization org-simulator. \
             Limit: 90,000 enqueued tokens. Please try again once some in_progress \
             batches have been completed."
        ),
        line: None,
        param: None,
    }
}

fn invalid_metadata(message: String) -> ApiError {
    ApiError::invalid_request(message).with_param("metadata")
}

/// Returns the position of a batch in creation order, or a 404.
fn find_batch(state: &AppState, batch_id: &str) -> Result<usize, ApiError> {
    let store = state.lock();
    store.batch_positions.get(batch_id).copied().ok_or_else(|| {
        ApiError::not_found(format!("No such Batch object: {batch_id}")).with_param("batch_id")
    })
}
