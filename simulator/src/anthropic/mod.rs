//! The Anthropic Message Batches API: batches of Messages requests sent in one
//! call, processed on the simulator's clock, with JSONL results.

pub(crate) mod batch;
mod error;
mod handlers;
mod requests;
mod results;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub(crate) use crate::anthropic::error::AnthropicError;
use crate::call_faults::inject_anthropic_call_faults;
use crate::state::AppState;

/// The only `anthropic-version` header value that the simulator accepts.
const API_VERSION: &str = "2023-06-01";

/// Builds the routes under `/v1/messages/batches`, with the header checks and
/// the call faults.
pub(crate) fn router(state: AppState) -> Router<AppState> {
    let body_limit = handlers::MAX_CREATE_BODY_BYTES;
    Router::new()
        .route(
            "/v1/messages/batches",
            post(handlers::create_message_batch)
                .layer(DefaultBodyLimit::max(body_limit))
                .get(handlers::list_message_batches),
        )
        .route(
            "/v1/messages/batches/{batch_id}",
            get(handlers::retrieve_message_batch),
        )
        .route(
            "/v1/messages/batches/{batch_id}/cancel",
            post(handlers::cancel_message_batch),
        )
        .route(
            "/v1/messages/batches/{batch_id}/results",
            get(handlers::message_batch_results),
        )
        .route_layer(middleware::from_fn_with_state(
            state,
            inject_anthropic_call_faults,
        ))
        .route_layer(middleware::from_fn(require_anthropic_headers))
}

/// Rejects a request without a non-empty `x-api-key` header with 401, and one
/// without `anthropic-version: 2023-06-01` with 400. The key itself is neither
/// checked further nor logged.
async fn require_anthropic_headers(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let has_key = headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|key| !key.trim().is_empty());
    if !has_key {
        tracing::debug!(path = %request.uri().path(), "rejected a request without x-api-key");
        return AnthropicError::authentication("x-api-key header is required").into_response();
    }
    let version = headers
        .get("anthropic-version")
        .map(|value| value.to_str().unwrap_or_default());
    match version {
        Some(API_VERSION) => next.run(request).await,
        Some(other) => AnthropicError::invalid_request(format!(
            "anthropic-version: '{other}' is not supported by the simulator. Send \
             'anthropic-version: {API_VERSION}'."
        ))
        .into_response(),
        None => AnthropicError::invalid_request(format!(
            "anthropic-version: header is required. Send 'anthropic-version: {API_VERSION}'."
        ))
        .into_response(),
    }
}
