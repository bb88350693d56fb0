//! Test hooks under `/_sim/`, which no OpenAI client calls. They need no API key
//! but serve only clients on a loopback address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::batch::BatchStatus;
use crate::config::{ConfigPatch, SimulatorConfig};
use crate::error::ApiError;
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

/// Handles `GET /_sim/stats`: upload and batch counts, with every status listed.
/// Reading stats does not generate result files.
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
    Json(json!({
        "files_uploaded": store.files_uploaded,
        "batches_created": store.batches.len(),
        "batches_by_status": by_status,
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
             seed, validating_ms, in_progress_ms, finalizing_ms, failure_ratio, cached_ratio."
        ))
    })?;
    let mut store = state.lock();
    let updated = patch
        .apply(&store.config)
        .map_err(ApiError::invalid_request)?;
    tracing::info!(config = ?updated, "simulator settings changed");
    store.config = updated.clone();
    Ok(Json(updated))
}
