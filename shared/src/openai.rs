//! Client for the OpenAI Files and Batches APIs.
//!
//! Every call has a timeout. Calls that fail with 408, 429, 5xx or a network
//! error are retried with exponential backoff and jitter, up to the configured
//! number of attempts. A `Retry-After` header sets the next delay instead.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::TryStreamExt;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::config::ProviderConfig;
use crate::error::{Error, Result};

/// Maximum wait a `Retry-After` header may set before the next attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Batch statuses after which nothing changes.
pub const TERMINAL_STATUSES: [&str; 4] = ["completed", "failed", "expired", "cancelled"];

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Batch {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    #[serde(default)]
    pub request_counts: Option<BatchRequestCounts>,
    #[serde(default)]
    pub created_at: Option<i64>,
    #[serde(default)]
    pub completed_at: Option<i64>,
    #[serde(default)]
    pub failed_at: Option<i64>,
    #[serde(default)]
    pub expired_at: Option<i64>,
    #[serde(default)]
    pub cancelled_at: Option<i64>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub errors: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct BatchRequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

impl Batch {
    pub fn is_terminal(&self) -> bool {
        TERMINAL_STATUSES.contains(&self.status.as_str())
    }

    /// Returns the time the batch reached its terminal status, in Unix seconds.
    pub fn ended_at(&self) -> Option<i64> {
        self.completed_at
            .or(self.failed_at)
            .or(self.expired_at)
            .or(self.cancelled_at)
    }

    /// Returns the output file id, treating an empty string as absent.
    pub fn output_file(&self) -> Option<&str> {
        self.output_file_id.as_deref().filter(|id| !id.is_empty())
    }

    /// Returns the error file id, treating an empty string as absent.
    pub fn error_file(&self) -> Option<&str> {
        self.error_file_id.as_deref().filter(|id| !id.is_empty())
    }
}

#[derive(Deserialize)]
struct FileObject {
    id: String,
}

#[derive(Deserialize)]
struct BatchList {
    data: Vec<Batch>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

/// A failed attempt, before it becomes an [`Error::Provider`].
#[derive(Debug)]
struct Failure {
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
    request_timeout: Duration,
    max_attempts: u32,
}

impl OpenAiClient {
    pub fn new(config: &ProviderConfig, api_key: String) -> Result<OpenAiClient> {
        let request_timeout = Duration::from_secs(config.request_timeout_secs);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(request_timeout)
            .build()
            .map_err(|error| Error::Config(format!("cannot build the HTTP client: {error}")))?;
        Ok(OpenAiClient {
            http,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            api_key,
            request_timeout,
            max_attempts: config.max_attempts.max(1),
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.api_key)
    }

    /// Runs `attempt` with retries, mapping the last failure to [`Error::Provider`].
    async fn with_retries<T, F, Fut>(&self, operation: &str, attempt: F) -> Result<T>
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
            .adjust(|failure: &Failure, delay| match (failure.retry_after, delay) {
                (Some(wait), Some(_)) => Some(wait.min(MAX_RETRY_AFTER)),
                (_, delay) => delay,
            })
            .notify(|failure: &Failure, delay| {
                tracing::warn!(operation, error = %failure.message, retry_in_ms = delay.as_millis() as u64, "Provider call failed, retrying");
            })
            .await
            .map_err(|failure| Error::Provider {
                operation: operation.to_owned(),
                message: failure.message,
                retryable: failure.retryable,
            })
    }

    /// Uploads a batch input file (`purpose=batch`) and returns its file id.
    pub async fn upload_file(&self, path: &Path) -> Result<String> {
        let length = tokio::fs::metadata(path)
            .await
            .map_err(|error| {
                Error::io(format!("cannot read input file {}", path.display()), error)
            })?
            .len();
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file: FileObject = self
            .with_retries("upload file", || async {
                let file = tokio::fs::File::open(path).await.map_err(|error| Failure {
                    message: format!("cannot open input file {}: {error}", path.display()),
                    retryable: false,
                    retry_after: None,
                })?;
                let stream = tokio_util::io::ReaderStream::new(file);
                let part = reqwest::multipart::Part::stream_with_length(
                    reqwest::Body::wrap_stream(stream),
                    length,
                )
                .file_name(file_name.clone())
                .mime_str("application/jsonl")
                .map_err(|error| transport_failure(&error))?;
                let form = reqwest::multipart::Form::new()
                    .text("purpose", "batch")
                    .part("file", part);
                let request = self.request(Method::POST, "/v1/files").multipart(form);
                send_json(request).await
            })
            .await?;
        Ok(file.id)
    }

    /// Creates a batch over an uploaded input file.
    pub async fn create_batch(
        &self,
        input_file_id: &str,
        endpoint: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Batch> {
        let body = serde_json::json!({
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        });
        self.with_retries("create batch", || async {
            let request = self
                .request(Method::POST, "/v1/batches")
                .json(&body)
                .timeout(self.request_timeout);
            send_json(request).await
        })
        .await
    }

    pub async fn get_batch(&self, batch_id: &str) -> Result<Batch> {
        let path = format!("/v1/batches/{batch_id}");
        self.with_retries("get batch", || async {
            send_json(
                self.request(Method::GET, &path)
                    .timeout(self.request_timeout),
            )
            .await
        })
        .await
    }

    /// Finds a batch whose metadata carries `job_id`, looking through at most
    /// `max_pages` pages of the newest batches.
    pub async fn find_batch_by_job(&self, job_id: &str, max_pages: usize) -> Result<Option<Batch>> {
        let mut after: Option<String> = None;
        for _ in 0..max_pages {
            let path = match &after {
                Some(id) => format!("/v1/batches?limit=100&after={id}"),
                None => "/v1/batches?limit=100".to_owned(),
            };
            let page: BatchList = self
                .with_retries("list batches", || async {
                    send_json(
                        self.request(Method::GET, &path)
                            .timeout(self.request_timeout),
                    )
                    .await
                })
                .await?;
            let found = page.data.into_iter().find(|batch| {
                batch
                    .metadata
                    .as_ref()
                    .and_then(|metadata| metadata.get("job_id"))
                    .is_some_and(|id| id == job_id)
            });
            if found.is_some() || !page.has_more {
                return Ok(found);
            }
            after = page.last_id;
        }
        Ok(None)
    }

    /// Streams a file's content and calls `on_line` with each line, without the
    /// whole file in memory. A failed download is retried from the start, so
    /// before each attempt `on_line(None)` signals the caller to drop what it counted.
    pub async fn stream_file_lines(
        &self,
        file_id: &str,
        mut on_line: impl FnMut(Option<&[u8]>),
    ) -> Result<()> {
        let path = format!("/v1/files/{file_id}/content");
        let mut attempts = 0;
        loop {
            attempts += 1;
            on_line(None);
            match self.stream_once(&path, &mut on_line).await {
                Ok(()) => return Ok(()),
                Err(failure) if failure.retryable && attempts < self.max_attempts => {
                    let wait = failure
                        .retry_after
                        .unwrap_or(Duration::from_secs(2 * attempts as u64));
                    tracing::warn!(file_id, error = %failure.message, "File download failed, retrying");
                    tokio::time::sleep(wait.min(MAX_RETRY_AFTER)).await;
                }
                Err(failure) => {
                    return Err(Error::Provider {
                        operation: format!("download file {file_id}"),
                        message: failure.message,
                        retryable: failure.retryable,
                    });
                }
            }
        }
    }

    async fn stream_once(
        &self,
        path: &str,
        on_line: &mut impl FnMut(Option<&[u8]>),
    ) -> std::result::Result<(), Failure> {
        let response = self
            .request(Method::GET, path)
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
            on_line(Some(&line));
        }
    }
}

async fn send_json<T: serde::de::DeserializeOwned>(
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
    serde_json::from_slice(&bytes).map_err(|error| Failure {
        message: format!("unexpected response body: {error}"),
        retryable: false,
        retry_after: None,
    })
}

async fn check_status(
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

fn transport_failure(error: &reqwest::Error) -> Failure {
    // reqwest errors name the URL but never the Authorization header.
    Failure {
        message: error.to_string(),
        retryable: true,
        retry_after: None,
    }
}
