//! Handlers of the Message Batches API: create, retrieve, list, cancel and results.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::anthropic::batch::{
    BatchObject, CacheRatios, MessageBatch, MessageOutcome, ProcessingStatus,
};
use crate::anthropic::error::AnthropicError;
use crate::anthropic::requests::{parse_create_body, plan_requests};
use crate::anthropic::results::{ResultSettings, generate_results};
use crate::batch::Timing;
use crate::faults::{CallFaultBudget, FaultProfile};
use crate::line_faults::truncate_after_lines;
use crate::plan::Plan;
use crate::state::{AppState, Store, StoredBatch, new_message_batch_id, unix_millis_now};

/// Maximum size of a create request body. Anthropic's API reference gives
/// 256 MB, which the simulator reads as the larger 256 MiB.
pub(crate) const MAX_CREATE_BODY_BYTES: usize = 256 * 1024 * 1024;

const DEFAULT_LIST_LIMIT: usize = 20;
const MAX_LIST_LIMIT: usize = 1_000;

/// A validated batch, made off the async workers, before it gets its id.
struct PreparedBatch {
    sequence: u64,
    plan: Plan<MessageOutcome>,
    timing: Timing,
    seed: u64,
    cache: CacheRatios,
    faults: FaultProfile,
    call_faults: CallFaultBudget,
}

/// Handles `POST /v1/messages/batches`.
///
/// A malformed body, an invalid or repeated `custom_id` or a request without
/// `params` rejects the call. Invalid `params` do not, and give `errored`
/// results instead.
pub(crate) async fn create_message_batch(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchObject>, AnthropicError> {
    let created = Instant::now();
    let created_at_ms = unix_millis_now();
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AnthropicError::request_too_large(format!(
                "The request body is larger than the maximum of {MAX_CREATE_BODY_BYTES} bytes. \
                 Split the batch into smaller batches."
            ))
        } else {
            AnthropicError::invalid_request(format!(
                "Failed to read the request body: {}.",
                rejection.body_text()
            ))
        }
    })?;

    // Parsing a large body takes a while, so it runs off the async workers.
    let worker_state = state.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare_batch(&worker_state, &body))
        .await
        .map_err(|error| {
            tracing::error!(%error, "message batch preparation task failed");
            AnthropicError::api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The simulator failed while reading the batch requests.",
            )
        })??;

    let requests = prepared.plan.len();
    let batch = MessageBatch {
        id: new_message_batch_id(),
        sequence: prepared.sequence,
        created_at_ms,
        timing: prepared.timing,
        seed: prepared.seed,
        cache: prepared.cache,
        faults: prepared.faults,
        plan: Arc::new(prepared.plan),
        cancelled_after_ms: None,
        results: None,
    };
    tracing::info!(
        batch_id = %batch.id,
        sequence = batch.sequence,
        requests,
        "message batch created"
    );

    let mut store = state.lock();
    let position = store.message_batches.len();
    store
        .message_batch_positions
        .insert(batch.id.clone(), position);
    store.message_batches.push(StoredBatch {
        batch,
        created,
        call_faults: prepared.call_faults,
    });
    Ok(Json(object_at(&store, position)))
}

/// Parses the body, then takes the batch's sequence number, settings and fault
/// profile, and plans its requests. Runs on a blocking thread.
fn prepare_batch(state: &AppState, body: &[u8]) -> Result<PreparedBatch, AnthropicError> {
    let requests = parse_create_body(body)?;
    let (sequence, config, faults, call_faults) = {
        let mut store = state.lock();
        store.last_message_batch_sequence += 1;
        let (faults, call_faults) = store.take_batch_faults();
        (
            store.last_message_batch_sequence,
            store.config.clone(),
            faults,
            call_faults,
        )
    };
    let failure_ratio = faults.effective_failure_ratio(config.failure_ratio);
    let plan = plan_requests(requests, config.seed, sequence, failure_ratio);
    Ok(PreparedBatch {
        sequence,
        plan,
        timing: Timing {
            validating_ms: config.validating_ms,
            in_progress_ms: config.in_progress_ms,
            finalizing_ms: config.finalizing_ms,
            finalizing_extra_ms: faults.finalizing_extra_ms,
        },
        seed: config.seed,
        cache: CacheRatios {
            write: config.anthropic_cache_write_ratio,
            read: config.anthropic_cache_read_ratio,
            one_hour_share: config.anthropic_cache_1h_share,
        },
        faults,
        call_faults,
    })
}

/// Handles `GET /v1/messages/batches/{id}`.
pub(crate) async fn retrieve_message_batch(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
) -> Result<Json<BatchObject>, AnthropicError> {
    let store = state.lock();
    let position = find_position(&store, &batch_id)?;
    Ok(Json(object_at(&store, position)))
}

/// Handles `POST /v1/messages/batches/{id}/cancel`. Cancelling a batch that is
/// already canceling returns it unchanged.
pub(crate) async fn cancel_message_batch(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
) -> Result<Json<BatchObject>, AnthropicError> {
    let mut store = state.lock();
    let position = find_position(&store, &batch_id)?;
    let stored = &mut store.message_batches[position];
    let elapsed_ms = stored.elapsed_ms(Instant::now());
    // NOTE: Anthropic's API reference does not state the error for cancelling an
    // ended batch, so the simulator returns a 400 `invalid_request_error`.
    if let Err(status) = stored.batch.cancel(elapsed_ms) {
        return Err(AnthropicError::invalid_request(format!(
            "Cannot cancel message batch {batch_id} because its processing_status is '{}'.",
            status.as_str()
        )));
    }
    tracing::info!(batch_id = %batch_id, elapsed_ms, "message batch cancel requested");
    Ok(Json(object_at(&store, position)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<String>,
    after_id: Option<String>,
    before_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct BatchList {
    data: Vec<BatchObject>,
    has_more: bool,
    first_id: Option<String>,
    last_id: Option<String>,
}

/// Handles `GET /v1/messages/batches?limit=N&after_id=ID&before_id=ID`: batches
/// newest first. `after_id` selects the page of older batches that follows that
/// batch, and `before_id` the page of newer batches just before it. `has_more`
/// is true if more batches lie further in the same direction.
pub(crate) async fn list_message_batches(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<BatchList>, AnthropicError> {
    let Query(query) = query.map_err(|rejection| {
        AnthropicError::invalid_request(format!("Invalid query string: {}.", rejection.body_text()))
    })?;
    let limit = parse_limit(query.limit.as_deref())?;

    let store = state.lock();
    let count = store.message_batches.len();
    // `positions` is a range in creation order. The page lists it in reverse.
    let (positions, has_more) = match (&query.after_id, &query.before_id) {
        (Some(_), Some(_)) => {
            return Err(AnthropicError::invalid_request(
                "Set at most one of 'after_id' and 'before_id'.",
            ));
        }
        (Some(after_id), None) => {
            let end = cursor_position(&store, "after_id", after_id)?;
            let start = end.saturating_sub(limit);
            (start..end, start > 0)
        }
        (None, Some(before_id)) => {
            let start = cursor_position(&store, "before_id", before_id)? + 1;
            let end = start.saturating_add(limit).min(count);
            (start..end, end < count)
        }
        (None, None) => {
            let start = count.saturating_sub(limit);
            (start..count, start > 0)
        }
    };

    let data: Vec<BatchObject> = positions
        .rev()
        .map(|position| object_at(&store, position))
        .collect();
    Ok(Json(BatchList {
        first_id: data.first().map(|batch| batch.id.clone()),
        last_id: data.last().map(|batch| batch.id.clone()),
        has_more,
        data,
    }))
}

fn parse_limit(limit: Option<&str>) -> Result<usize, AnthropicError> {
    let Some(text) = limit else {
        return Ok(DEFAULT_LIST_LIMIT);
    };
    match text.parse::<usize>() {
        Ok(value) if (1..=MAX_LIST_LIMIT).contains(&value) => Ok(value),
        _ => Err(AnthropicError::invalid_request(format!(
            "Invalid value for 'limit': '{text}'. Expected an integer from 1 to {MAX_LIST_LIMIT}."
        ))),
    }
}

fn cursor_position(store: &Store, name: &str, batch_id: &str) -> Result<usize, AnthropicError> {
    store
        .message_batch_positions
        .get(batch_id)
        .copied()
        .ok_or_else(|| {
            AnthropicError::invalid_request(format!(
                "Invalid value for '{name}': no message batch has the id '{batch_id}'."
            ))
        })
}

/// Handles `GET /v1/messages/batches/{id}/results`: the JSONL results, served
/// without a `Content-Type` header as the real API has been seen doing.
///
/// The results are generated on first download, on a blocking thread without
/// the lock. Two requests that race here generate the same bytes, and the first
/// to finish stores them.
pub(crate) async fn message_batch_results(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
) -> Result<Response, AnthropicError> {
    let (position, job) = {
        let store = state.lock();
        let position = find_position(&store, &batch_id)?;
        let stored = &store.message_batches[position];
        let batch = &stored.batch;
        let snapshot = batch.snapshot(stored.elapsed_ms(Instant::now()));
        // NOTE: the API reference gives no error for results requested before the
        // batch ends, so the simulator returns a 400 `invalid_request_error`.
        if snapshot.status != ProcessingStatus::Ended {
            return Err(AnthropicError::invalid_request(format!(
                "Message batch {batch_id} has no results yet because its processing_status \
                 is '{}'. Results are available once it is 'ended'.",
                snapshot.status.as_str()
            )));
        }
        if let Some(results) = &batch.results {
            return Ok(results_response(
                results,
                batch.faults.truncate_results_at_line,
            ));
        }
        let settings = ResultSettings {
            seed: batch.seed,
            sequence: batch.sequence,
            cache: batch.cache,
            unprocessed: snapshot.unprocessed,
            faults: batch.faults.clone(),
        };
        (position, (Arc::clone(&batch.plan), snapshot.done, settings))
    };

    let (plan, done, settings) = job;
    let generated = tokio::task::spawn_blocking(move || generate_results(&plan, done, &settings))
        .await
        .map_err(|error| {
            tracing::error!(%error, batch_id = %batch_id, "message batch results task failed");
            AnthropicError::api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The simulator failed while generating the batch results.",
            )
        })?;

    let mut store = state.lock();
    let stored = &mut store.message_batches[position];
    let elapsed_ms = stored.elapsed_ms(Instant::now());
    let batch = &mut stored.batch;
    if batch.results.is_none() {
        let counts = batch.snapshot(elapsed_ms).counts;
        tracing::info!(
            batch_id = %batch.id,
            bytes = generated.len(),
            succeeded = counts.succeeded,
            errored = counts.errored,
            canceled = counts.canceled,
            expired = counts.expired,
            "message batch results generated"
        );
        batch.results = Some(Bytes::from(generated));
    }
    let results = batch.results.clone().unwrap_or_default();
    Ok(results_response(
        &results,
        batch.faults.truncate_results_at_line,
    ))
}

/// Builds the results response without a `Content-Type` header, cut short if
/// the batch has the `truncate_results_at_line` fault.
fn results_response(results: &Bytes, truncate_at_line: Option<u64>) -> Response {
    let body = match truncate_at_line {
        Some(line_count) => truncate_after_lines(results, line_count),
        None => results.clone(),
    };
    Response::new(Body::from(body))
}

/// Builds the object of the message batch at `position` at the current time.
fn object_at(store: &Store, position: usize) -> BatchObject {
    let stored = &store.message_batches[position];
    let snapshot = stored.batch.snapshot(stored.elapsed_ms(Instant::now()));
    stored.batch.to_object(&snapshot, &store.base_url)
}

fn find_position(store: &Store, batch_id: &str) -> Result<usize, AnthropicError> {
    store
        .message_batch_positions
        .get(batch_id)
        .copied()
        .ok_or_else(|| {
            AnthropicError::not_found(format!("No message batch has the id '{batch_id}'."))
        })
}
