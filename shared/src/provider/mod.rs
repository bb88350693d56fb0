//! Provider batch APIs behind one trait.
//!
//! Each provider maps its own statuses onto [`BatchState`], so the worker
//! handles OpenAI and Anthropic batches with the same code. Base URLs, limits
//! and timeouts come from the configuration; prices and billing rules from the
//! price table.

pub mod anthropic;
mod http;
pub mod openai;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::Result;
use crate::message::JobMessage;

/// Providers this build can run batches at.
pub const PROVIDERS: [&str; 2] = ["openai", "anthropic"];

/// A provider batch's status, normalised across providers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Accepted and not ended: validating, running, finalizing or cancelling.
    Running,
    /// Every request ended.
    Completed,
    /// Ended with partial results because the completion window ran out.
    Expired,
    /// Ended with partial results because it was cancelled.
    Cancelled,
    /// Ended without results: validation failed or the provider refused to run it.
    Failed {
        code: Option<String>,
        message: String,
    },
}

impl BatchState {
    pub fn is_ended(&self) -> bool {
        *self != BatchState::Running
    }
}

/// A provider batch as last read from the provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderBatch {
    pub id: String,
    /// The provider's own status string (`in_progress`, `finalizing`, `ended`, ...).
    pub status: String,
    pub state: BatchState,
    pub created_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub requests_total: u64,
    /// Requests that ended so far, when the provider reports it before the end.
    pub requests_done: u64,
    /// OpenAI only: result files, with an empty id already treated as absent.
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
}

/// One part of a job, ready to be created as a provider batch.
pub struct PartRequest<'a> {
    pub job: &'a JobMessage,
    pub part_index: u32,
    pub parts_total: u32,
    /// The part's requests in the provider's create format (see each provider).
    pub file: &'a Path,
    pub requests: u64,
}

/// Receives result lines while a provider batch's results stream in.
pub trait ResultSink: Send {
    /// Starts (or restarts, after a failed download) reading the file `name`:
    /// anything counted from it so far must be dropped.
    fn start_file(&mut self, name: &str);
    fn line(&mut self, line: &[u8]);
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;

    async fn create_batch(&self, part: &PartRequest<'_>) -> Result<ProviderBatch>;

    /// Lists batches that may be this part's, created at or after `intent_at`
    /// by an earlier attempt that died before recording the batch id. The
    /// caller skips the ones already recorded for some part.
    async fn find_batches(
        &self,
        part: &PartRequest<'_>,
        intent_at: DateTime<Utc>,
    ) -> Result<Vec<ProviderBatch>>;

    async fn get_batch(&self, batch_id: &str) -> Result<ProviderBatch>;

    async fn cancel_batch(&self, batch_id: &str) -> Result<ProviderBatch>;

    /// Streams every result line of an ended batch into `sink`.
    async fn stream_results(&self, batch: &ProviderBatch, sink: &mut dyn ResultSink) -> Result<()>;
}

/// Builds a client for each provider whose API key is set, keyed by name.
pub fn clients_from_env(config: &Config) -> Result<Vec<(String, Arc<dyn Provider>)>> {
    let mut clients: Vec<(String, Arc<dyn Provider>)> = Vec::new();
    if let Some(key) = crate::config::api_key("openai") {
        clients.push((
            "openai".into(),
            Arc::new(openai::OpenAiClient::new(&config.providers.openai, key)?),
        ));
    }
    if let Some(key) = crate::config::api_key("anthropic") {
        let client = anthropic::AnthropicClient::new(&config.providers.anthropic, key)?;
        clients.push(("anthropic".into(), Arc::new(client)));
    }
    Ok(clients)
}

/// Converts Unix seconds to a UTC timestamp.
pub(crate) fn unix_time(seconds: Option<i64>) -> Option<DateTime<Utc>> {
    seconds.and_then(|seconds| DateTime::from_timestamp(seconds, 0))
}
