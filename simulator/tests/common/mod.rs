//! Helpers shared by the integration tests: a simulator on a free loopback port
//! and a small OpenAI client written with reqwest.

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
