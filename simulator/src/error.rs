//! HTTP errors in OpenAI's body shape:
//! `{"error":{"message","type","param","code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error response of the simulated API.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    /// OpenAI's `type`, such as `invalid_request_error` or `server_error`.
    pub(crate) error_type: &'static str,
    pub(crate) param: Option<String>,
    /// OpenAI's `code`, such as `rate_limit_exceeded`, or `None` for null.
    pub(crate) code: Option<&'static str>,
}

impl ApiError {
    /// Creates a 400 `invalid_request_error`.
    pub(crate) fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            error_type: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// Creates a 404 `invalid_request_error`.
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            ..ApiError::invalid_request(message)
        }
    }

    /// Creates a 500 `server_error` for a failure inside the simulator.
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error_type: "server_error",
            ..ApiError::invalid_request(message)
        }
    }

    /// Creates the 401 for a missing or empty bearer token, with the first
    /// sentences of OpenAI's message.
    pub(crate) fn missing_api_key() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            ..ApiError::invalid_request(
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        }
    }

    /// Creates a 403 for a test hook called from an address outside the loopback range.
    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            ..ApiError::invalid_request(message)
        }
    }

    /// Creates the 429 that a rate limit fault injects. The caller adds the
    /// `Retry-After` header.
    pub(crate) fn rate_limited() -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            error_type: "requests",
            code: Some("rate_limit_exceeded"),
            ..ApiError::invalid_request(
                "Rate limit reached for requests. The simulator injected this error. \
                 Retry after the number of seconds in the Retry-After header.",
            )
        }
    }

    /// Creates the `server_error` that a server error fault injects.
    pub(crate) fn injected_server_error(status: StatusCode) -> ApiError {
        ApiError {
            status,
            ..ApiError::internal(
                "The server had an error while processing your request. Sorry about that!",
            )
        }
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub(crate) fn with_param(mut self, param: &str) -> ApiError {
        self.param = Some(param.to_owned());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        });
        (self.status, axum::Json(body)).into_response()
    }
}
