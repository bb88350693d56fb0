//! HTTP plumbing shared by the provider clients: timeouts, retries with
//! backoff and jitter, `Retry-After`, error bodies and streamed downloads.
//!
//! Every call has a timeout. Calls that fail with 408, 429, 5xx or a network
//! error are retried with exponential backoff and jitter, up to the configured
//! number of attempts. A `Retry-After` header sets the next delay instead.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::TryStreamExt;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::ResultSink;
use crate::config::ProviderConfig;
use crate::error::{Error, Result};

/// Maximum wait a `Retry-After` header may set before the next attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Largest request body held in memory. A server may reply 429 or 413 before it
/// reads the body. With a streamed body the client then fails writing it and the
/// reply (with its `Retry-After`) is lost, so bodies up to this size are sent
/// from memory.
const MAX_BUFFERED_BODY: u64 = 64 * 1024 * 1024;

/// A request body read from a file: in memory when small, else streamed.
pub(crate) enum FileBody {
    Memory(bytes::Bytes),
    Stream {
        path: std::path::PathBuf,
        length: u64,
    },
}

impl FileBody {
    pub async fn read(path: &std::path::Path) -> Result<FileBody> {
        let context = |error| Error::io(format!("cannot read part file {}", path.display()), error);
        let length = tokio::fs::metadata(path).await.map_err(context)?.len();
        if length <= MAX_BUFFERED_BODY {
            let bytes = tokio::fs::read(path).await.map_err(context)?;
            return Ok(FileBody::Memory(bytes.into()));
        }
        // NOTE: a 429 or 413 sent before a streamed body is read arrives as a
        // broken pipe, so such a retry waits the backoff, not the Retry-After.
        Ok(FileBody::Stream {
            path: path.to_owned(),
            length,
        })
    }

    pub fn length(&self) -> u64 {
        match self {
            FileBody::Memory(bytes) => bytes.len() as u64,
            FileBody::Stream { length, .. } => *length,
        }
    }

    /// Returns a body for one attempt.
    pub async fn body(&self) -> std::result::Result<reqwest::Body, Failure> {
        match self {
            FileBody::Memory(bytes) => Ok(reqwest::Body::from(bytes.clone())),
            FileBody::Stream { path, .. } => {
                let file = tokio::fs::File::open(path).await.map_err(|error| {
                    Failure::permanent(format!("cannot open {}: {error}", path.display()))
                })?;
                Ok(reqwest::Body::wrap_stream(
                    tokio_util::io::ReaderStream::new(file),
                ))
            }
        }
    }
}

/// A failed attempt, before it becomes an [`Error::Provider`].
#[derive(Debug)]
pub(crate) struct Failure {
    pub message: String,
    pub retryable: bool,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn permanent(message: String) -> Failure {
        Failure {
            message,
            retryable: false,
            retry_after: None,
        }
    }
}

#[derive(Clone)]
pub(crate) struct HttpClient {
    pub http: reqwest::Client,
    pub base_url: String,
    pub request_timeout: Duration,
    pub max_attempts: u32,
}

impl HttpClient {
    pub fn new(config: &ProviderConfig) -> Result<HttpClient> {
        let request_timeout = Duration::from_secs(config.request_timeout_secs);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(request_timeout)
            .build()
            .map_err(|error| Error::Config(format!("cannot build the HTTP client: {error}")))?;
        Ok(HttpClient {
            http,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            request_timeout,
            max_attempts: config.max_attempts.max(1),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Runs `attempt` with retries, mapping the last failure to [`Error::Provider`].
    pub async fn with_retries<T, F, Fut>(&self, operation: &str, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(self.max_attempts as usize - 1)
            .with_jitter();
        attempt
            .retry(backoff)
            .when(|failure: &Failure| failure.retryable)
            .adjust(
                |failure: &Failure, delay| match (failure.retry_after, delay) {
                    (Some(wait), Some(_)) => Some(wait.min(MAX_RETRY_AFTER)),
                    (_, delay) => delay,
                },
            )
            .notify(|failure: &Failure, delay| {
                tracing::warn!(
                    operation,
                    error = %failure.message,
                    retry_in_ms = delay.as_millis() as u64,
                    "Provider call failed, retrying"
                );
            })
            .await
            .map_err(|failure| Error::Provider {
                operation: operation.to_owned(),
                message: failure.message,
                retryable: failure.retryable,
            })
    }

    /// Downloads a response body line by line into `sink`, restarting the file
    /// after a failed attempt.
    pub async fn stream_lines(
        &self,
        name: &str,
        request: impl Fn() -> RequestBuilder,
        sink: &mut dyn ResultSink,
    ) -> Result<()> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            sink.start_file(name);
            match stream_once(request(), sink).await {
                Ok(()) => return Ok(()),
                Err(failure) if failure.retryable && attempts < self.max_attempts => {
                    let wait = failure
                        .retry_after
                        .unwrap_or(Duration::from_secs(2 * attempts as u64));
                    tracing::warn!(file = name, error = %failure.message, "Result download failed, retrying");
                    tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
                }
                Err(failure) => {
                    return Err(Error::Provider {
                        operation: format!("download {name}"),
                        message: failure.message,
                        retryable: failure.retryable,
                    });
                }
            }
        }
    }
}

async fn stream_once(
    request: RequestBuilder,
    sink: &mut dyn ResultSink,
) -> std::result::Result<(), Failure> {
    let response = request
        .send()
        .await
        .map_err(|error| transport_failure(&error))?;
    let response = check_status(response).await?;
    let stream = response.bytes_stream().map_err(std::io::Error::other);
    let mut reader =
        tokio::io::BufReader::with_capacity(1 << 16, tokio_util::io::StreamReader::new(stream));
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|error| Failure {
                message: format!("download interrupted: {error}"),
                retryable: true,
                retry_after: None,
            })?;
        if read == 0 {
            return Ok(());
        }
        sink.line(&line);
    }
}

pub(crate) async fn send_json<T: serde::de::DeserializeOwned>(
    request: RequestBuilder,
) -> std::result::Result<T, Failure> {
    let response = request
        .send()
        .await
        .map_err(|error| transport_failure(&error))?;
    let response = check_status(response).await?;
    let bytes = response
        .bytes()
        .await
        .map_err(|error| transport_failure(&error))?;
    serde_json::from_slice(&bytes)
        .map_err(|error| Failure::permanent(format!("unexpected response body: {error}")))
}

/// Turns a non-success response into a failure, retryable for 408, 429 and 5xx.
pub(crate) async fn check_status(
    response: reqwest::Response,
) -> std::result::Result<reqwest::Response, Failure> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    // OpenAI and Anthropic both put the reason at `error.message`.
    let detail = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|value| {
            value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error();
    Err(Failure {
        message: format!("HTTP {status}: {detail}"),
        retryable,
        retry_after,
    })
}

pub(crate) fn transport_failure(error: &reqwest::Error) -> Failure {
    // reqwest errors name the URL but never the request headers, so no key leaks.
    Failure {
        message: error.to_string(),
        retryable: true,
        retry_after: None,
    }
}
