//! Test hooks under `/_sim/`, which no provider client calls. They need no API
//! key but serve only clients on a loopback address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::anthropic::batch::ProcessingStatus;
use crate::batch::BatchStatus;
use crate::config::{ConfigPatch, SimulatorConfig};
use crate::error::ApiError;
use crate::faults::FaultProfile;
use crate::state::AppState;

/// Rejects a hook request with 403 unless the peer address is a loopback address.
pub(crate) async fn require_loopback_peer(request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| *address);
    match peer {
        Some(address) if address.ip().is_loopback() => next.run(request).await,
        _ => {
            tracing::warn!(
                peer = ?peer,
                path = %request.uri().path(),
                "rejected a test hook request from a non-loopback peer"
            );
            ApiError::forbidden("Test hooks under /_sim/ accept only loopback clients.")
                .into_response()
        }
    }
}

/// Handles `GET /_sim/stats`: upload and batch counts per provider, with every
/// status listed, and the state of the call faults. Reading stats does not
/// generate result files.
///
/// The top-level `batches_created` counts both providers, and the top-level
/// `batches_by_status` repeats OpenAI's counts for clients written before the
/// Anthropic API was added.
pub(crate) async fn stats(State(state): State<AppState>) -> Json<Value> {
    let store = state.lock();
    let now = Instant::now();
    let mut by_status: BTreeMap<&'static str, usize> = BatchStatus::ALL
        .iter()
        .map(|status| (status.as_str(), 0))
        .collect();
    for position in 0..store.batches.len() {
        let snapshot = store.snapshot(position, now);
        *by_status.entry(snapshot.status.as_str()).or_default() += 1;
    }
    let mut by_processing_status: BTreeMap<&'static str, usize> = ProcessingStatus::ALL
        .iter()
        .map(|status| (status.as_str(), 0))
        .collect();
    for stored in &store.message_batches {
        let snapshot = stored.batch.snapshot(stored.elapsed_ms(now));
        *by_processing_status
            .entry(snapshot.status.as_str())
            .or_default() += 1;
    }
    Json(json!({
        "files_uploaded": store.files_uploaded,
        "batches_created": store.batches.len() + store.message_batches.len(),
        "batches_by_status": by_status,
        "openai": {
            "batches_created": store.batches.len(),
            "batches_by_status": by_status,
        },
        "anthropic": {
            "batches_created": store.message_batches.len(),
            "batches_by_processing_status": by_processing_status,
        },
        "faults": {
            "rate_limit_requests_remaining": store.run_call_faults.rate_limit_remaining,
            "server_error_requests_remaining": store.run_call_faults.server_error_remaining,
            "next_batch_faults_queued": store.next_batch_faults.len(),
            "rate_limited_responses": store.rate_limited_responses,
            "server_error_responses": store.server_error_responses,
        },
    }))
}

/// Handles `GET /_sim/config`.
pub(crate) async fn read_config(State(state): State<AppState>) -> Json<SimulatorConfig> {
    Json(state.lock().config.clone())
}

/// Handles `POST /_sim/config`: applies the given fields and returns the new
/// settings. Batches created before the change keep the settings they started with.
pub(crate) async fn update_config(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<SimulatorConfig>, ApiError> {
    let patch: ConfigPatch = serde_json::from_slice(&body).map_err(|error| {
        ApiError::invalid_request(format!(
            "Invalid configuration update: {error}. Expected a JSON object with any of \
             seed, validating_ms, in_progress_ms, finalizing_ms, failure_ratio, cached_ratio, \
             anthropic_cache_write_ratio, anthropic_cache_read_ratio, \
             anthropic_cache_1h_share, faults."
        ))
    })?;
    let faults_given = patch.has_faults();
    let mut store = state.lock();
    let updated = patch
        .apply(&store.config)
        .map_err(ApiError::invalid_request)?;
    tracing::info!(config = ?updated, "simulator settings changed");
    if faults_given {
        store.set_run_faults(updated.faults.clone());
    }
    store.config = updated.clone();
    Ok(Json(updated))
}

/// Parses and validates a fault profile sent to a hook.
fn parse_fault_profile(body: &[u8]) -> Result<FaultProfile, ApiError> {
    let invalid = |problem: String| {
        ApiError::invalid_request(format!(
            "Invalid fault profile: {problem}. Expected a JSON object of fault fields, \
             such as {{\"rate_limit_requests\": 2}}."
        ))
    };
    let value: Value = serde_json::from_slice(body).map_err(|error| invalid(error.to_string()))?;
    // serde would also read a struct from a JSON array of its fields in order.
    if !value.is_object() {
        return Err(invalid("the body is not a JSON object".to_owned()));
    }
    let profile: FaultProfile =
        serde_json::from_value(value).map_err(|error| invalid(error.to_string()))?;
    profile.validate().map_err(ApiError::invalid_request)?;
    Ok(profile)
}

/// Handles `GET /_sim/faults`: the run-level fault profile as last set. The
/// remaining rate limit and server error counts are in `/_sim/stats`.
pub(crate) async fn read_faults(State(state): State<AppState>) -> Json<FaultProfile> {
    Json(state.lock().config.faults.clone())
}

/// Handles `POST /_sim/faults`: replaces the run-level fault profile, so fields
/// left out are off, and restarts its rate limit and server error counts.
/// Batches created before keep the profile they started with.
pub(crate) async fn replace_faults(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<FaultProfile>, ApiError> {
    let profile = parse_fault_profile(&body)?;
    tracing::info!(faults = ?profile, "run-level fault profile changed");
    state.lock().set_run_faults(profile.clone());
    Ok(Json(profile))
}

/// Handles `GET /_sim/next-batch-faults`: the queued per-batch profiles, the
/// next one to be used first.
pub(crate) async fn read_next_batch_faults(State(state): State<AppState>) -> Json<Value> {
    let store = state.lock();
    Json(json!({ "queued": store.next_batch_faults }))
}

/// Handles `POST /_sim/next-batch-faults`: queues a profile for the next batch
/// created, of either provider, after those already queued.
pub(crate) async fn queue_next_batch_faults(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let profile = parse_fault_profile(&body)?;
    let mut store = state.lock();
    let position = store.next_batch_faults.len() + 1;
    tracing::info!(faults = ?profile, position, "per-batch fault profile queued");
    store.next_batch_faults.push_back(profile);
    Ok(Json(json!({ "queued": store.next_batch_faults })))
}

/// Handles `DELETE /_sim/next-batch-faults`: empties the queue.
pub(crate) async fn clear_next_batch_faults(State(state): State<AppState>) -> Json<Value> {
    let mut store = state.lock();
    let removed = store.next_batch_faults.len();
    store.next_batch_faults.clear();
    tracing::info!(removed, "per-batch fault profiles cleared");
    Json(json!({ "queued": [] }))
}
