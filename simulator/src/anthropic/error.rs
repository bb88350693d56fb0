//! HTTP errors in Anthropic's body shape:
//! `{"type":"error","error":{"type","message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error response of the simulated Anthropic API.
#[derive(Debug, Clone)]
pub(crate) struct AnthropicError {
    pub(crate) status: StatusCode,
    /// Anthropic's error `type`, such as `invalid_request_error` or `api_error`.
    pub(crate) error_type: &'static str,
    pub(crate) message: String,
}

impl AnthropicError {
    fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        AnthropicError {
            status,
            error_type,
            message: message.into(),
        }
    }

    /// Creates a 400 `invalid_request_error`.
    pub(crate) fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// Creates a 401 `authentication_error`.
    pub(crate) fn authentication(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    /// Creates a 404 `not_found_error`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    /// Creates a 413 `request_too_large`.
    pub(crate) fn request_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", message)
    }

    /// Creates the 429 `rate_limit_error` that a rate limit fault injects. The
    /// caller adds the `Retry-After` header.
    pub(crate) fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "Rate limit exceeded. The simulator injected this error. Retry after the \
             number of seconds in the Retry-After header.",
        )
    }

    /// Creates an `api_error` with `status`, for injected server errors and
    /// failures inside the simulator.
    pub(crate) fn api_error(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, "api_error", message)
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "error",
            "error": {"type": self.error_type, "message": self.message},
        });
        (self.status, axum::Json(body)).into_response()
    }
}
