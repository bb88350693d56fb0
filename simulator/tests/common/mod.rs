//! Helpers shared by the integration tests: a simulator on a free loopback port
//! and small OpenAI and Anthropic clients written with reqwest.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use batchgate_simulator::{RunningSimulator, SimulatorConfig};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

pub const API_KEY: &str = "sk-test-simulator";

pub const CATALOG_SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/samples/catalog-enrichment.openai.jsonl"
);
pub const EMBEDDINGS_SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/samples/package-embeddings.openai.jsonl"
);

/// Maximum time that a test waits for a batch to reach a status.
const WAIT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Settings with short phases so that a batch finishes in about 0.3 s.
pub fn fast_config() -> SimulatorConfig {
    SimulatorConfig {
        seed: 42,
        validating_ms: 50,
        in_progress_ms: 200,
        finalizing_ms: 50,
        failure_ratio: 0.0,
        cached_ratio: 0.0,
        ..SimulatorConfig::default()
    }
}

pub async fn start_simulator(config: SimulatorConfig) -> RunningSimulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    batchgate_simulator::start(config, listener)
        .await
        .expect("start the simulator")
}

/// A client of one simulator.
pub struct Client {
    pub base_url: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(simulator: &RunningSimulator) -> Client {
        Client {
            base_url: simulator.base_url().to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Uploads `content` with `purpose=batch` and returns the file object.
    pub async fn upload(&self, content: Vec<u8>) -> Value {
        let response = self.upload_with_purpose(content, "batch").await;
        assert_eq!(response.status(), 200, "upload status");
        response.json().await.expect("file object")
    }

    pub async fn upload_with_purpose(&self, content: Vec<u8>, purpose: &str) -> reqwest::Response {
        let part = Part::bytes(content).file_name("input.jsonl");
        let form = Form::new()
            .text("purpose", purpose.to_owned())
            .part("file", part);
        self.http
            .post(self.url("/v1/files"))
            .bearer_auth(API_KEY)
            .multipart(form)
            .send()
            .await
            .expect("send upload")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .expect("send POST")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("send GET")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "status of GET {path}");
        response.json().await.expect("JSON body")
    }

    /// Creates a batch and returns the batch object, asserting a 200.
    pub async fn create_batch(&self, input_file_id: &str, endpoint: &str) -> Value {
        let body = json!({
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": {"test": "simulator"},
        });
        let response = self.post_json("/v1/batches", &body).await;
        assert_eq!(response.status(), 200, "create batch status");
        response.json().await.expect("batch object")
    }

    /// Uploads `content`, creates a batch and waits until it is terminal.
    pub async fn run_batch(&self, content: Vec<u8>, endpoint: &str) -> Value {
        let file = self.upload(content).await;
        let file_id = file["id"].as_str().expect("file id");
        let batch = self.create_batch(file_id, endpoint).await;
        let batch_id = batch["id"].as_str().expect("batch id");
        self.wait_until_terminal(batch_id).await
    }

    /// Polls a batch until its status is `completed`, `failed`, `expired` or `cancelled`.
    pub async fn wait_until_terminal(&self, batch_id: &str) -> Value {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let batch = self.get_json(&format!("/v1/batches/{batch_id}")).await;
            let status = batch["status"].as_str().expect("status").to_owned();
            if matches!(
                status.as_str(),
                "completed" | "failed" | "expired" | "cancelled"
            ) {
                return batch;
            }
            assert!(
                Instant::now() < deadline,
                "batch {batch_id} still {status} after {WAIT_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Downloads a file and returns its lines parsed as JSON.
    pub async fn download_lines(&self, file_id: &str) -> Vec<Value> {
        let text = self.download_text(file_id).await;
        text.lines()
            .map(|line| serde_json::from_str(line).expect("result line is JSON"))
            .collect()
    }

    pub async fn download_text(&self, file_id: &str) -> String {
        let response = self.get(&format!("/v1/files/{file_id}/content")).await;
        assert_eq!(response.status(), 200, "download status of {file_id}");
        response.text().await.expect("file content")
    }
}

/// Reads the first `count` lines of a sample file, with a trailing newline.
pub fn sample_lines(path: &str, count: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {path}: {error}"));
    let mut lines: String = text.lines().take(count).collect::<Vec<_>>().join("\n");
    lines.push('\n');
    lines.into_bytes()
}

/// Builds `count` chat requests with `max_tokens` and distinct prompts.
pub fn chat_requests(count: usize, max_tokens: u64) -> Vec<u8> {
    let mut content = String::new();
    for index in 0..count {
        let line = json!({
            "custom_id": format!("req-{index:04}"),
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-6-luna",
                "max_tokens": max_tokens,
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": format!("Describe item number {index}.")},
                ],
            },
        });
        content.push_str(&line.to_string());
        content.push('\n');
    }
    content.into_bytes()
}

pub const ANTHROPIC_SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/samples/docstring-review.anthropic.jsonl"
);

/// The `anthropic-version` header value that the simulator requires.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

impl Client {
    /// Starts an Anthropic API request with `x-api-key` and `anthropic-version`.
    pub fn anthropic(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("x-api-key", API_KEY)
            .header("anthropic-version", ANTHROPIC_VERSION)
    }

    pub async fn anthropic_get(&self, path: &str) -> reqwest::Response {
        self.anthropic(reqwest::Method::GET, path)
            .send()
            .await
            .expect("send GET")
    }

    pub async fn anthropic_post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.anthropic(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("send POST")
    }

    pub async fn anthropic_get_json(&self, path: &str) -> Value {
        let response = self.anthropic_get(path).await;
        assert_eq!(response.status(), 200, "status of GET {path}");
        response.json().await.expect("JSON body")
    }

    /// Creates a message batch from a `requests` array, asserting a 200.
    pub async fn create_message_batch(&self, requests: &Value) -> Value {
        let response = self
            .anthropic_post("/v1/messages/batches", &json!({ "requests": requests }))
            .await;
        assert_eq!(response.status(), 200, "create message batch status");
        response.json().await.expect("message batch object")
    }

    /// Polls a message batch until its processing status is `ended`.
    pub async fn wait_until_ended(&self, batch_id: &str) -> Value {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let batch = self
                .anthropic_get_json(&format!("/v1/messages/batches/{batch_id}"))
                .await;
            if batch["processing_status"] == "ended" {
                return batch;
            }
            assert!(
                Instant::now() < deadline,
                "message batch {batch_id} not ended after {WAIT_TIMEOUT:?}: {batch}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Creates a message batch and waits until it has ended.
    pub async fn run_message_batch(&self, requests: &Value) -> Value {
        let batch = self.create_message_batch(requests).await;
        self.wait_until_ended(batch["id"].as_str().expect("batch id"))
            .await
    }

    /// Downloads the results of a message batch as text, asserting a 200.
    pub async fn message_batch_results(&self, batch_id: &str) -> String {
        let response = self
            .anthropic_get(&format!("/v1/messages/batches/{batch_id}/results"))
            .await;
        assert_eq!(response.status(), 200, "results status of {batch_id}");
        response.text().await.expect("results body")
    }

    /// Downloads the results of a message batch and parses each line as JSON.
    pub async fn message_batch_result_lines(&self, batch_id: &str) -> Vec<Value> {
        self.message_batch_results(batch_id)
            .await
            .lines()
            .map(|line| serde_json::from_str(line).expect("result line is JSON"))
            .collect()
    }

    /// Sends a JSON body to a test hook, which needs no API key.
    pub async fn post_hook(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("send hook POST")
    }

    pub async fn get_hook(&self, path: &str) -> Value {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("send hook GET");
        assert_eq!(response.status(), 200, "status of GET {path}");
        response.json().await.expect("hook body")
    }
}

/// Builds `count` valid message batch requests with `max_tokens` and distinct prompts.
pub fn message_requests(count: usize, max_tokens: u64) -> Value {
    let requests: Vec<Value> = (0..count)
        .map(|index| {
            json!({
                "custom_id": format!("msg-{index:04}"),
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": max_tokens,
                    "system": "Answer briefly.",
                    "messages": [
                        {"role": "user", "content": format!("Describe item number {index}.")},
                    ],
                },
            })
        })
        .collect();
    Value::Array(requests)
}

/// Reads the first `count` requests of the Anthropic sample file.
pub fn sample_message_requests(count: usize) -> Value {
    let text = std::fs::read_to_string(ANTHROPIC_SAMPLE)
        .unwrap_or_else(|error| panic!("read {ANTHROPIC_SAMPLE}: {error}"));
    let requests: Vec<Value> = text
        .lines()
        .take(count)
        .map(|line| serde_json::from_str(line).expect("sample line is JSON"))
        .collect();
    Value::Array(requests)
}
