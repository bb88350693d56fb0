//! OpenAI Files and Batches: upload the part's JSONL, create the batch with the
//! job's tags in `metadata`, poll it, and read its output and error files.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::http::{FileBody, HttpClient, send_json, transport_failure};
use super::{BatchState, PartRequest, Provider, ProviderBatch, ResultSink, unix_time};
use crate::config::ProviderConfig;
use crate::error::Result;

/// Pages of the newest batches searched for one created before a crash.
const RECOVERY_LIST_PAGES: usize = 5;

#[derive(Debug, Clone, Deserialize)]
struct Batch {
    id: String,
    status: String,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    request_counts: Option<RequestCounts>,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(default)]
    completed_at: Option<i64>,
    #[serde(default)]
    failed_at: Option<i64>,
    #[serde(default)]
    expired_at: Option<i64>,
    #[serde(default)]
    cancelled_at: Option<i64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    errors: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct RequestCounts {
    total: u64,
    completed: u64,
    failed: u64,
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

impl Batch {
    fn normalise(self) -> ProviderBatch {
        let state = match self.status.as_str() {
            "completed" => BatchState::Completed,
            "expired" => BatchState::Expired,
            "cancelled" => BatchState::Cancelled,
            "failed" => {
                let first = self
                    .errors
                    .as_ref()
                    .and_then(|errors| errors.pointer("/data/0"));
                let code = first
                    .and_then(|error| error.get("code"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let message = first
                    .and_then(|error| error.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported no reason")
                    .to_owned();
                BatchState::Failed { code, message }
            }
            _ => BatchState::Running,
        };
        let counts = self.request_counts.unwrap_or_default();
        let ended = self
            .completed_at
            .or(self.failed_at)
            .or(self.expired_at)
            .or(self.cancelled_at);
        let non_empty = |id: Option<String>| id.filter(|id| !id.is_empty());
        ProviderBatch {
            id: self.id,
            status: self.status,
            state,
            created_at: unix_time(self.created_at),
            ended_at: unix_time(ended),
            requests_total: counts.total,
            requests_done: counts.completed + counts.failed,
            output_file_id: non_empty(self.output_file_id),
            error_file_id: non_empty(self.error_file_id),
        }
    }
}

#[derive(Clone)]
pub struct OpenAiClient {
    http: HttpClient,
    api_key: String,
}

impl OpenAiClient {
    pub fn new(config: &ProviderConfig, api_key: String) -> Result<OpenAiClient> {
        Ok(OpenAiClient {
            http: HttpClient::new(config)?,
            api_key,
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .http
            .request(method, self.http.url(path))
            .bearer_auth(&self.api_key)
    }

    async fn upload_file(&self, path: &std::path::Path) -> Result<String> {
        let content = FileBody::read(path).await?;
        let file: FileObject = self
            .http
            .with_retries("upload file", || async {
                let part = reqwest::multipart::Part::stream_with_length(
                    content.body().await?,
                    content.length(),
                )
                .file_name("batch-input.jsonl")
                .mime_str("application/jsonl")
                .map_err(|error| transport_failure(&error))?;
                let form = reqwest::multipart::Form::new()
                    .text("purpose", "batch")
                    .part("file", part);
                send_json(self.request(Method::POST, "/v1/files").multipart(form)).await
            })
            .await?;
        Ok(file.id)
    }

    async fn list_page(&self, after: Option<&str>) -> Result<BatchList> {
        let path = match after {
            Some(id) => format!("/v1/batches?limit=100&after={id}"),
            None => "/v1/batches?limit=100".to_owned(),
        };
        self.http
            .with_retries("list batches", || async {
                send_json(
                    self.request(Method::GET, &path)
                        .timeout(self.http.request_timeout),
                )
                .await
            })
            .await
    }
}

/// Returns the job's tags as batch metadata (at most 16 pairs, values up to 512 characters).
fn metadata(part: &PartRequest<'_>) -> BTreeMap<String, String> {
    let manifest = &part.job.manifest;
    BTreeMap::from([
        ("job_id".to_owned(), manifest.job_id.clone()),
        (
            "part".to_owned(),
            format!("{}/{}", part.part_index + 1, part.parts_total),
        ),
        ("owner_team".to_owned(), manifest.owner_team.clone()),
        ("cost_center".to_owned(), manifest.cost_center.clone()),
        ("workload_class".to_owned(), manifest.workload_class.clone()),
        (
            "purpose".to_owned(),
            manifest.purpose.chars().take(512).collect(),
        ),
        ("submitted_by".to_owned(), "batchgate".to_owned()),
    ])
}

#[async_trait::async_trait]
impl Provider for OpenAiClient {
    fn name(&self) -> &'static str {
        "openai"
    }

    /// Uploads the part's JSONL (`purpose=batch`) and creates the batch over it.
    async fn create_batch(&self, part: &PartRequest<'_>) -> Result<ProviderBatch> {
        let file_id = self.upload_file(part.file).await?;
        let body = serde_json::json!({
            "input_file_id": file_id,
            "endpoint": part.job.manifest.endpoint,
            "completion_window": part.job.manifest.completion_window,
            "metadata": metadata(part),
        });
        let batch: Batch = self
            .http
            .with_retries("create batch", || async {
                let request = self
                    .request(Method::POST, "/v1/batches")
                    .json(&body)
                    .timeout(self.http.request_timeout);
                send_json(request).await
            })
            .await?;
        Ok(batch.normalise())
    }

    /// Matches `metadata.job_id` and `metadata.part` among the newest batches.
    async fn find_batches(
        &self,
        part: &PartRequest<'_>,
        _intent_at: DateTime<Utc>,
    ) -> Result<Vec<ProviderBatch>> {
        let expected = metadata(part);
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..RECOVERY_LIST_PAGES {
            let page = self.list_page(after.as_deref()).await?;
            for batch in page.data {
                let tags = batch.metadata.as_ref();
                let tag = |key: &str| tags.and_then(|tags| tags.get(key));
                if tag("job_id") == expected.get("job_id") && tag("part") == expected.get("part") {
                    found.push(batch.normalise());
                }
            }
            if !page.has_more {
                break;
            }
            after = page.last_id;
        }
        Ok(found)
    }

    async fn get_batch(&self, batch_id: &str) -> Result<ProviderBatch> {
        let path = format!("/v1/batches/{batch_id}");
        let batch: Batch = self
            .http
            .with_retries("get batch", || async {
                send_json(
                    self.request(Method::GET, &path)
                        .timeout(self.http.request_timeout),
                )
                .await
            })
            .await?;
        Ok(batch.normalise())
    }

    async fn cancel_batch(&self, batch_id: &str) -> Result<ProviderBatch> {
        let path = format!("/v1/batches/{batch_id}/cancel");
        let batch: Batch = self
            .http
            .with_retries("cancel batch", || async {
                send_json(
                    self.request(Method::POST, &path)
                        .timeout(self.http.request_timeout),
                )
                .await
            })
            .await?;
        Ok(batch.normalise())
    }

    /// Streams the output file, then the error file; either may be absent.
    async fn stream_results(&self, batch: &ProviderBatch, sink: &mut dyn ResultSink) -> Result<()> {
        for file_id in [&batch.output_file_id, &batch.error_file_id]
            .into_iter()
            .flatten()
        {
            let path = format!("/v1/files/{file_id}/content");
            self.http
                .stream_lines(file_id, || self.request(Method::GET, &path), sink)
                .await?;
        }
        Ok(())
    }
}
