//! Anthropic Message Batches: create from the part's request list, poll
//! `processing_status`, and stream the results JSONL.
//!
//! Anthropic batches carry no metadata, so the job id lives in batchgate's own
//! records. A batch created before a crash is found again by its creation time
//! and request count.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;

use super::http::{FileBody, HttpClient, send_json};
use super::{BatchState, PartRequest, Provider, ProviderBatch, ResultSink};
use crate::config::ProviderConfig;
use crate::error::{Error, Result};

/// API version sent in `anthropic-version`.
const API_VERSION: &str = "2023-06-01";

/// Pages of the newest batches searched for one created before a crash.
const RECOVERY_LIST_PAGES: usize = 5;

/// Clock difference tolerated between this host and the provider when a
/// batch's `created_at` is compared with the recorded intent.
const CLOCK_SKEW_SECS: i64 = 120;

#[derive(Debug, Clone, Deserialize)]
struct MessageBatch {
    id: String,
    processing_status: String,
    #[serde(default)]
    request_counts: RequestCounts,
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct RequestCounts {
    #[serde(default)]
    processing: u64,
    #[serde(default)]
    succeeded: u64,
    #[serde(default)]
    errored: u64,
    #[serde(default)]
    canceled: u64,
    #[serde(default)]
    expired: u64,
}

#[derive(Deserialize)]
struct BatchList {
    data: Vec<MessageBatch>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

impl MessageBatch {
    fn normalise(self) -> ProviderBatch {
        let counts = self.request_counts;
        let total = counts.processing
            + counts.succeeded
            + counts.errored
            + counts.canceled
            + counts.expired;
        let state = match self.processing_status.as_str() {
            "ended" if counts.canceled > 0 => BatchState::Cancelled,
            "ended" if counts.expired > 0 => BatchState::Expired,
            "ended" => BatchState::Completed,
            _ => BatchState::Running,
        };
        ProviderBatch {
            id: self.id,
            status: self.processing_status,
            state,
            created_at: self.created_at,
            ended_at: self.ended_at,
            requests_total: total,
            requests_done: total - counts.processing,
            output_file_id: None,
            error_file_id: None,
        }
    }
}

#[derive(Clone)]
pub struct AnthropicClient {
    http: HttpClient,
    api_key: String,
}

impl AnthropicClient {
    pub fn new(config: &ProviderConfig, api_key: String) -> Result<AnthropicClient> {
        Ok(AnthropicClient {
            http: HttpClient::new(config)?,
            api_key,
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .http
            .request(method, self.http.url(path))
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", API_VERSION)
    }

    async fn call(&self, operation: &str, method: Method, path: &str) -> Result<MessageBatch> {
        self.http
            .with_retries(operation, || async {
                send_json(
                    self.request(method.clone(), path)
                        .timeout(self.http.request_timeout),
                )
                .await
            })
            .await
    }
}

#[async_trait::async_trait]
impl Provider for AnthropicClient {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    /// Sends the part file, which contains the create body `{"requests": [...]}`.
    async fn create_batch(&self, part: &PartRequest<'_>) -> Result<ProviderBatch> {
        let content = FileBody::read(part.file).await?;
        let batch: MessageBatch = self
            .http
            .with_retries("create message batch", || async {
                let request = self
                    .request(Method::POST, "/v1/messages/batches")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(reqwest::header::CONTENT_LENGTH, content.length())
                    .body(content.body().await?);
                send_json(request).await
            })
            .await
            .map_err(|error| match error {
                Error::Provider { message, .. } if message.contains("413") => Error::Provider {
                    operation: "create message batch".into(),
                    message: format!("{message}: the part is larger than the provider accepts; lower max_file_bytes"),
                    retryable: false,
                },
                other => other,
            })?;
        Ok(batch.normalise())
    }

    /// Lists batches created since the intent with the part's request count.
    async fn find_batches(
        &self,
        part: &PartRequest<'_>,
        intent_at: DateTime<Utc>,
    ) -> Result<Vec<ProviderBatch>> {
        let earliest = intent_at - chrono::Duration::seconds(CLOCK_SKEW_SECS);
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..RECOVERY_LIST_PAGES {
            let path = match &after {
                Some(id) => format!("/v1/messages/batches?limit=100&after_id={id}"),
                None => "/v1/messages/batches?limit=100".to_owned(),
            };
            let page: BatchList = self
                .http
                .with_retries("list message batches", || async {
                    send_json(
                        self.request(Method::GET, &path)
                            .timeout(self.http.request_timeout),
                    )
                    .await
                })
                .await?;
            let mut older_seen = false;
            for batch in page.data {
                if batch.created_at.is_none_or(|created| created < earliest) {
                    older_seen = true;
                    continue;
                }
                let candidate = batch.normalise();
                if candidate.requests_total == part.requests {
                    found.push(candidate);
                }
            }
            // The list is newest first, so an older batch ends the search.
            if older_seen || !page.has_more {
                break;
            }
            after = page.last_id;
        }
        Ok(found)
    }

    async fn get_batch(&self, batch_id: &str) -> Result<ProviderBatch> {
        let path = format!("/v1/messages/batches/{batch_id}");
        Ok(self
            .call("get message batch", Method::GET, &path)
            .await?
            .normalise())
    }

    async fn cancel_batch(&self, batch_id: &str) -> Result<ProviderBatch> {
        let path = format!("/v1/messages/batches/{batch_id}/cancel");
        Ok(self
            .call("cancel message batch", Method::POST, &path)
            .await?
            .normalise())
    }

    /// Streams the results JSONL, split on newlines whatever its content type.
    /// The results path is built from the configured base URL rather than taken
    /// from `results_url`, so the API key goes to no other host.
    async fn stream_results(&self, batch: &ProviderBatch, sink: &mut dyn ResultSink) -> Result<()> {
        let path = format!("/v1/messages/batches/{}/results", batch.id);
        self.http
            .stream_lines(&batch.id, || self.request(Method::GET, &path), sink)
            .await
    }
}
