//! Middleware that injects the call faults of fault profiles: rate limits,
//! server errors and response delays, in the error body of each provider.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::anthropic::AnthropicError;
use crate::error::ApiError;
use crate::faults::CallFault;
use crate::state::{AppState, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    OpenAi,
    Anthropic,
}

/// Injects call faults into the OpenAI routes.
pub(crate) async fn inject_openai_call_faults(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    inject_call_faults(&state, Provider::OpenAi, request, next).await
}

/// Injects call faults into the Anthropic routes.
pub(crate) async fn inject_anthropic_call_faults(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    inject_call_faults(&state, Provider::Anthropic, request, next).await
}

/// Decides on arrival whether the call gets an injected failure, then waits for
/// the response delay, then returns the failure or runs the handler.
///
/// The run-level budget is spent first. The budget of a batch named in the path
/// is spent only by calls that the run level lets through. The delay is the
/// longer of the run-level delay and that batch's delay.
async fn inject_call_faults(
    state: &AppState,
    provider: Provider,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let (fault, delay_ms) = {
        let mut store = state.lock();
        let mut delay_ms = store.config.faults.response_delay_ms;
        let mut fault = store.run_call_faults.take();
        if let Some(budget) = batch_call_faults(&mut store, provider, &path) {
            delay_ms = delay_ms.max(budget.response_delay_ms);
            if fault.is_none() {
                fault = budget.take();
            }
        }
        match fault {
            Some(CallFault::RateLimited { .. }) => store.rate_limited_responses += 1,
            Some(CallFault::ServerError { .. }) => store.server_error_responses += 1,
            None => {}
        }
        (fault, delay_ms)
    };

    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let Some(fault) = fault else {
        return next.run(request).await;
    };
    tracing::info!(
        method = %request.method(),
        %path,
        ?fault,
        delay_ms,
        "injected a fault response"
    );
    fault_response(provider, fault)
}

/// Returns the call fault budget of the batch that `path` names: the batch
/// itself or, for OpenAI, one of its result files.
fn batch_call_faults<'a>(
    store: &'a mut Store,
    provider: Provider,
    path: &str,
) -> Option<&'a mut crate::faults::CallFaultBudget> {
    let mut segments = path.trim_start_matches('/').split('/');
    if segments.next() != Some("v1") {
        return None;
    }
    match (provider, segments.next(), segments.next()) {
        (Provider::OpenAi, Some("batches"), Some(batch_id)) => {
            let position = *store.batch_positions.get(batch_id)?;
            Some(&mut store.batches[position].call_faults)
        }
        (Provider::OpenAi, Some("files"), Some(file_id)) => {
            let position = *store.result_file_batches.get(file_id)?;
            Some(&mut store.batches[position].call_faults)
        }
        (Provider::Anthropic, Some("messages"), Some("batches")) => {
            let position = *store.message_batch_positions.get(segments.next()?)?;
            Some(&mut store.message_batches[position].call_faults)
        }
        _ => None,
    }
}

fn fault_response(provider: Provider, fault: CallFault) -> Response {
    match fault {
        CallFault::RateLimited { retry_after_secs } => {
            let mut response = match provider {
                Provider::OpenAi => ApiError::rate_limited().into_response(),
                Provider::Anthropic => AnthropicError::rate_limited().into_response(),
            };
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        CallFault::ServerError { status } => {
            // FaultProfile::validate allows only 500, 502 and 503.
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match provider {
                Provider::OpenAi => ApiError::injected_server_error(status).into_response(),
                Provider::Anthropic => AnthropicError::api_error(
                    status,
                    "Internal server error. The simulator injected this error.",
                )
                .into_response(),
            }
        }
    }
}
