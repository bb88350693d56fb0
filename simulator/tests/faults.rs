//! Fault profiles: injected call failures and delays, slow and expiring batches,
//! and damaged result files, at run level and for single batches.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use batchgate_simulator::{FaultProfile, SimulatorConfig};
use common::{Client, chat_requests, fast_config, message_requests, start_simulator};
use reqwest::header::RETRY_AFTER;
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";

fn faulty_config(faults: FaultProfile) -> SimulatorConfig {
    SimulatorConfig {
        faults,
        ..fast_config()
    }
}

fn retry_after(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(RETRY_AFTER)
        .map(|value| value.to_str().expect("ASCII header").to_owned())
}

/// Splits a body into its newline-separated lines, keeping a last line without
/// a newline.
fn raw_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
}

fn parses(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok()
}

/// Runs an OpenAI chat batch of `count` requests and returns the batch object.
async fn run_openai(client: &Client, count: usize) -> Value {
    client.run_batch(chat_requests(count, 10), CHAT).await
}

/// Runs an Anthropic batch of `count` requests and returns the batch object.
async fn run_anthropic(client: &Client, count: usize) -> Value {
    client.run_message_batch(&message_requests(count, 10)).await
}

async fn openai_output_text(client: &Client, batch: &Value) -> String {
    let file_id = batch["output_file_id"].as_str().expect("output_file_id");
    client.download_text(file_id).await
}

async fn anthropic_results_text(client: &Client, batch: &Value) -> String {
    client
        .message_batch_results(batch["id"].as_str().expect("id"))
        .await
}

#[tokio::test]
async fn rate_limit_gets_429_then_normal() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        rate_limit_requests: 2,
        retry_after_secs: 7,
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);

    // Hooks and unauthenticated calls do not spend the budget.
    client.get_hook("/_sim/stats").await;
    let no_key = client
        .http
        .get(client.url("/v1/batches"))
        .send()
        .await
        .expect("send");
    assert_eq!(no_key.status(), 401);

    for attempt in 1..=2 {
        let response = client.get("/v1/batches").await;
        assert_eq!(response.status(), 429, "attempt {attempt}");
        assert_eq!(retry_after(&response).as_deref(), Some("7"));
        let body: Value = response.json().await.expect("error body");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    }
    assert_eq!(client.get("/v1/batches").await.status(), 200);

    // A new run-level profile restarts the count, here for Anthropic calls.
    let set = client
        .post_hook(
            "/_sim/faults",
            &json!({"rate_limit_requests": 1, "retry_after_secs": 3}),
        )
        .await;
    assert_eq!(set.status(), 200);
    let limited = client.anthropic_get("/v1/messages/batches").await;
    assert_eq!(limited.status(), 429);
    assert_eq!(retry_after(&limited).as_deref(), Some("3"));
    let body: Value = limited.json().await.expect("error body");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        client.anthropic_get("/v1/messages/batches").await.status(),
        200
    );

    let stats = client.get_hook("/_sim/stats").await;
    assert_eq!(stats["faults"]["rate_limited_responses"], 3);
    assert_eq!(stats["faults"]["rate_limit_requests_remaining"], 0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn server_errors_then_normal() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        server_error_requests: 2,
        server_error_status: 503,
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);

    for attempt in 1..=2 {
        let response = client.get("/v1/batches").await;
        assert_eq!(response.status(), 503, "attempt {attempt}");
        assert_eq!(retry_after(&response), None);
        let body: Value = response.json().await.expect("error body");
        assert_eq!(body["error"]["type"], "server_error");
    }
    assert_eq!(client.get("/v1/batches").await.status(), 200);

    client
        .post_hook("/_sim/faults", &json!({"server_error_requests": 1}))
        .await;
    let failed = client.anthropic_get("/v1/messages/batches").await;
    assert_eq!(failed.status(), 500);
    let body: Value = failed.json().await.expect("error body");
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(
        client.anthropic_get("/v1/messages/batches").await.status(),
        200
    );
    simulator.shutdown().await;
}

#[tokio::test]
async fn rate_limits_come_before_server_errors() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        rate_limit_requests: 1,
        server_error_requests: 1,
        server_error_status: 502,
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);

    assert_eq!(client.get("/v1/batches").await.status(), 429);
    assert_eq!(client.get("/v1/batches").await.status(), 502);
    assert_eq!(client.get("/v1/batches").await.status(), 200);
    simulator.shutdown().await;
}

#[tokio::test]
async fn response_delay_lets_clients_time_out() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        response_delay_ms: 400,
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);

    let started = Instant::now();
    assert_eq!(client.get("/v1/batches").await.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "OpenAI call took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(
        client.anthropic_get("/v1/messages/batches").await.status(),
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(400));

    let impatient = client
        .http
        .get(client.url("/v1/batches"))
        .bearer_auth(common::API_KEY)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    let error = impatient.expect_err("a 100 ms timeout fires before the delayed response");
    assert!(error.is_timeout(), "error {error}");

    // Hooks are never delayed, and clearing the profile removes the delay.
    client.post_hook("/_sim/faults", &json!({})).await;
    let started = Instant::now();
    assert_eq!(client.get("/v1/batches").await.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(400));
    simulator.shutdown().await;
}

#[tokio::test]
async fn finalizing_extra_keeps_openai_batch_finalizing() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        finalizing_extra_ms: 1_500,
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);
    let file = client.upload(chat_requests(3, 10)).await;
    let batch = client
        .create_batch(file["id"].as_str().expect("file id"), CHAT)
        .await;
    let batch_id = batch["id"].as_str().expect("id");

    // Without the fault the batch completes about 300 ms after creation.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = client.get_json(&format!("/v1/batches/{batch_id}")).await;
    assert_eq!(still["status"], "finalizing");
    assert_eq!(still["request_counts"]["completed"], 3);

    let done = client.wait_until_terminal(batch_id).await;
    assert_eq!(done["status"], "completed");
    let finalizing_at = done["finalizing_at"].as_u64().expect("finalizing_at");
    let completed_at = done["completed_at"].as_u64().expect("completed_at");
    assert!(completed_at > finalizing_at, "{done}");
    simulator.shutdown().await;
}

#[tokio::test]
async fn finalizing_extra_keeps_anthropic_batch_in_progress() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        finalizing_extra_ms: 1_500,
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);
    let batch = client.create_message_batch(&message_requests(3, 5)).await;
    let batch_id = batch["id"].as_str().expect("id");

    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = client
        .anthropic_get_json(&format!("/v1/messages/batches/{batch_id}"))
        .await;
    assert_eq!(still["processing_status"], "in_progress");
    assert_eq!(still["request_counts"]["processing"], 3);

    let ended = client.wait_until_ended(batch_id).await;
    assert_eq!(ended["request_counts"]["succeeded"], 3);
    simulator.shutdown().await;
}

#[tokio::test]
async fn empty_error_file_id_without_failures() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        empty_error_file_id: true,
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);
    let file = client.upload(chat_requests(4, 10)).await;
    let created = client
        .create_batch(file["id"].as_str().expect("file id"), CHAT)
        .await;
    assert!(created["error_file_id"].is_null(), "before completion");

    let batch = client
        .wait_until_terminal(created["id"].as_str().expect("id"))
        .await;

    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["error_file_id"], "");
    assert!(batch["output_file_id"].is_string());
    assert_eq!(batch["request_counts"]["failed"], 0);

    // With failures the error file exists and its id is reported as usual.
    client
        .post_hook(
            "/_sim/faults",
            &json!({"empty_error_file_id": true, "all_requests_fail": true}),
        )
        .await;
    let failing = run_openai(&client, 2).await;
    let error_file_id = failing["error_file_id"].as_str().expect("error_file_id");
    assert!(error_file_id.starts_with("file-"), "{failing}");
    simulator.shutdown().await;
}

#[tokio::test]
async fn token_limit_exceeded_fails_without_files() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        token_limit_exceeded: true,
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);
    let file = client.upload(chat_requests(3, 10)).await;
    let created = client
        .create_batch(file["id"].as_str().expect("file id"), CHAT)
        .await;
    assert_eq!(created["status"], "validating");

    let batch = client
        .wait_until_terminal(created["id"].as_str().expect("id"))
        .await;

    assert_eq!(batch["status"], "failed");
    assert_eq!(batch["errors"]["data"][0]["code"], "token_limit_exceeded");
    assert!(batch["errors"]["data"][0]["message"].is_string());
    assert!(batch["output_file_id"].is_null());
    assert!(batch["error_file_id"].is_null());
    assert!(batch["failed_at"].is_u64());
    assert!(batch["in_progress_at"].is_null());
    assert_eq!(batch["request_counts"]["total"], 0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn malformed_line_at_n() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        malformed_line_at: Some(3),
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);

    let openai = run_openai(&client, 5).await;
    let anthropic = run_anthropic(&client, 5).await;
    let texts = [
        ("openai", openai_output_text(&client, &openai).await),
        (
            "anthropic",
            anthropic_results_text(&client, &anthropic).await,
        ),
    ];

    for (provider, text) in &texts {
        let lines = raw_lines(text);
        assert_eq!(lines.len(), 5, "{provider}");
        assert!(text.ends_with('\n'), "{provider}");
        for (index, line) in lines.iter().enumerate() {
            let expect_valid = index != 2;
            assert_eq!(
                parses(line),
                expect_valid,
                "{provider} line {}: {line}",
                index + 1
            );
        }
        assert!(lines[2].starts_with('{'), "{provider}: {}", lines[2]);
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn truncation_stops_mid_line() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        truncate_results_at_line: Some(3),
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);

    let openai = run_openai(&client, 5).await;
    let output_file_id = openai["output_file_id"].as_str().expect("output_file_id");
    let file = client
        .get_json(&format!("/v1/files/{output_file_id}"))
        .await;
    let anthropic = run_anthropic(&client, 5).await;
    let texts = [
        ("openai", openai_output_text(&client, &openai).await),
        (
            "anthropic",
            anthropic_results_text(&client, &anthropic).await,
        ),
    ];

    for (provider, text) in &texts {
        assert!(!text.ends_with('\n'), "{provider} ends with a newline");
        let lines = raw_lines(text);
        assert_eq!(lines.len(), 3, "{provider}: {text}");
        assert!(parses(lines[0]), "{provider} line 1");
        assert!(parses(lines[1]), "{provider} line 2");
        assert!(!parses(lines[2]), "{provider} line 3: {}", lines[2]);
        assert!(!lines[2].is_empty(), "{provider} line 3 is empty");
    }
    // The file object reports the whole file, longer than the download.
    let full_bytes = file["bytes"].as_u64().expect("bytes");
    assert!(full_bytes > texts[0].1.len() as u64);
    simulator.shutdown().await;
}

/// Counts each `custom_id` in JSONL text.
fn custom_id_counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in raw_lines(text) {
        let value: Value = serde_json::from_str(line).expect("line is JSON");
        let custom_id = value["custom_id"].as_str().expect("custom_id").to_owned();
        *counts.entry(custom_id).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn duplicate_custom_id_repeats_one_line() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        duplicate_custom_id: true,
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);

    let openai = run_openai(&client, 5).await;
    assert_eq!(openai["request_counts"]["completed"], 5);
    let anthropic = run_anthropic(&client, 5).await;
    assert_eq!(anthropic["request_counts"]["succeeded"], 5);
    let texts = [
        ("openai", openai_output_text(&client, &openai).await),
        (
            "anthropic",
            anthropic_results_text(&client, &anthropic).await,
        ),
    ];

    for (provider, text) in &texts {
        assert_eq!(raw_lines(text).len(), 6, "{provider}");
        let counts = custom_id_counts(text);
        assert_eq!(counts.len(), 5, "{provider}");
        let repeated: Vec<&String> = counts
            .iter()
            .filter(|(_, count)| **count == 2)
            .map(|(custom_id, _)| custom_id)
            .collect();
        assert_eq!(repeated.len(), 1, "{provider}: {counts:?}");
        let copies: Vec<&str> = raw_lines(text)
            .into_iter()
            .filter(|line| line.contains(&format!("\"{}\"", repeated[0])))
            .collect();
        assert_eq!(copies[0], copies[1], "{provider} copies differ");
        let copy: Value = serde_json::from_str(copies[0]).expect("line is JSON");
        match *provider {
            "openai" => assert_eq!(copy["response"]["status_code"], 200),
            _ => assert_eq!(copy["result"]["type"], "succeeded"),
        }
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn expiry_keeps_partial_openai_results() {
    let simulator = start_simulator(SimulatorConfig {
        validating_ms: 0,
        in_progress_ms: 2_000,
        faults: FaultProfile {
            expire_after_ms: Some(1_000),
            ..FaultProfile::default()
        },
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);

    let batch = run_openai(&client, 40).await;

    assert_eq!(batch["status"], "expired");
    assert!(batch["expired_at"].is_u64());
    assert!(batch["completed_at"].is_null());
    let counts = &batch["request_counts"];
    let completed = counts["completed"].as_u64().expect("completed");
    let failed = counts["failed"].as_u64().expect("failed");
    assert_eq!(counts["total"], 40);
    assert_eq!(completed + failed, 40);
    assert!(
        completed > 0,
        "no request completed before the expiry: {counts}"
    );
    assert!(completed < 40, "no request expired: {counts}");

    let output = client
        .download_lines(batch["output_file_id"].as_str().expect("output_file_id"))
        .await;
    let errors = client
        .download_lines(batch["error_file_id"].as_str().expect("error_file_id"))
        .await;
    assert_eq!(output.len() as u64, completed);
    assert_eq!(errors.len() as u64, failed);
    for line in &errors {
        assert!(line["response"].is_null(), "line {line}");
        assert_eq!(line["error"]["code"], "batch_expired");
        assert!(line["error"]["message"].is_string());
    }
    let mut all_ids: Vec<&str> = output
        .iter()
        .chain(&errors)
        .map(|line| line["custom_id"].as_str().expect("custom_id"))
        .collect();
    all_ids.sort_unstable();
    all_ids.dedup();
    assert_eq!(all_ids.len(), 40);
    simulator.shutdown().await;
}

#[tokio::test]
async fn expiry_keeps_partial_anthropic_results() {
    let simulator = start_simulator(SimulatorConfig {
        validating_ms: 0,
        in_progress_ms: 2_000,
        faults: FaultProfile {
            expire_after_ms: Some(1_000),
            ..FaultProfile::default()
        },
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);

    let batch = run_anthropic(&client, 40).await;

    let counts = &batch["request_counts"];
    let succeeded = counts["succeeded"].as_u64().expect("succeeded");
    let expired = counts["expired"].as_u64().expect("expired");
    assert_eq!(succeeded + expired, 40);
    assert!(
        succeeded > 0,
        "no request succeeded before the expiry: {counts}"
    );
    assert!(expired > 0, "no request expired: {counts}");
    assert_eq!(counts["canceled"], 0);

    let lines = client
        .message_batch_result_lines(batch["id"].as_str().expect("id"))
        .await;
    assert_eq!(lines.len(), 40);
    let mut by_type: HashMap<String, u64> = HashMap::new();
    for line in &lines {
        let result_type = line["result"]["type"].as_str().expect("type").to_owned();
        *by_type.entry(result_type).or_default() += 1;
    }
    assert_eq!(by_type.get("succeeded").copied(), Some(succeeded));
    assert_eq!(by_type.get("expired").copied(), Some(expired));
    simulator.shutdown().await;
}

#[tokio::test]
async fn all_requests_fail_like_full_ratio() {
    let simulator = start_simulator(faulty_config(FaultProfile {
        all_requests_fail: true,
        ..FaultProfile::default()
    }))
    .await;
    let client = Client::new(&simulator);

    let openai = run_openai(&client, 6).await;
    assert_eq!(openai["status"], "completed");
    assert!(openai["output_file_id"].is_null());
    assert_eq!(openai["request_counts"]["failed"], 6);
    let errors = client
        .download_lines(openai["error_file_id"].as_str().expect("error_file_id"))
        .await;
    assert_eq!(errors.len(), 6);

    let anthropic = run_anthropic(&client, 6).await;
    assert_eq!(anthropic["request_counts"]["errored"], 6);
    assert_eq!(anthropic["request_counts"]["succeeded"], 0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn per_batch_profile_applies_to_one_batch() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);

    for profile in [
        json!({"all_requests_fail": true}),
        json!({"duplicate_custom_id": true}),
    ] {
        let response = client.post_hook("/_sim/next-batch-faults", &profile).await;
        assert_eq!(response.status(), 200, "queue {profile}");
    }
    let queued = client.get_hook("/_sim/next-batch-faults").await;
    assert_eq!(queued["queued"].as_array().map(Vec::len), Some(2));

    // The queue is shared by both providers and used in order.
    let first = run_anthropic(&client, 4).await;
    assert_eq!(first["request_counts"]["errored"], 4);
    let second = run_openai(&client, 4).await;
    assert_eq!(second["request_counts"]["completed"], 4);
    let second_lines = raw_lines(&openai_output_text(&client, &second).await).len();
    assert_eq!(second_lines, 5, "the second batch has the duplicate");
    let third = run_anthropic(&client, 4).await;
    assert_eq!(third["request_counts"]["succeeded"], 4);
    let third_lines = raw_lines(&anthropic_results_text(&client, &third).await).len();
    assert_eq!(third_lines, 4, "the third batch has no fault");

    let stats = client.get_hook("/_sim/stats").await;
    assert_eq!(stats["faults"]["next_batch_faults_queued"], 0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn per_batch_call_faults_hit_only_that_batch() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    client
        .post_hook(
            "/_sim/next-batch-faults",
            &json!({"rate_limit_requests": 1, "retry_after_secs": 9, "server_error_requests": 1}),
        )
        .await;

    let faulty = client.create_message_batch(&message_requests(2, 5)).await;
    let faulty_id = faulty["id"].as_str().expect("id");
    let healthy = client.create_message_batch(&message_requests(2, 5)).await;
    let healthy_id = healthy["id"].as_str().expect("id");

    // Calls that do not name the faulty batch are unaffected.
    assert_eq!(
        client.anthropic_get("/v1/messages/batches").await.status(),
        200
    );
    let healthy_path = format!("/v1/messages/batches/{healthy_id}");
    assert_eq!(client.anthropic_get(&healthy_path).await.status(), 200);

    let faulty_path = format!("/v1/messages/batches/{faulty_id}");
    let limited = client.anthropic_get(&faulty_path).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(retry_after(&limited).as_deref(), Some("9"));
    assert_eq!(client.anthropic_get(&faulty_path).await.status(), 500);
    assert_eq!(client.anthropic_get(&faulty_path).await.status(), 200);
    simulator.shutdown().await;
}

#[tokio::test]
async fn fault_hooks_validate_profiles() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);

    for invalid in [
        json!({"server_error_status": 504}),
        json!({"malformed_line_at": 0}),
        json!({"truncate_results_at_line": 0}),
        json!({"rate_limit": 1}),
        json!([]),
    ] {
        for path in ["/_sim/faults", "/_sim/next-batch-faults"] {
            let response = client.post_hook(path, &invalid).await;
            assert_eq!(response.status(), 400, "{path} with {invalid}");
        }
    }

    let set = client
        .post_hook(
            "/_sim/faults",
            &json!({"expire_after_ms": 5000, "server_error_requests": 2}),
        )
        .await;
    assert_eq!(set.status(), 200);
    let current = client.get_hook("/_sim/faults").await;
    assert_eq!(current["expire_after_ms"], 5000);
    assert_eq!(current["server_error_requests"], 2);
    assert_eq!(current["server_error_status"], 500);
    assert_eq!(current["rate_limit_requests"], 0);
    let config = client.get_hook("/_sim/config").await;
    assert_eq!(config["faults"], current);

    client
        .post_hook(
            "/_sim/next-batch-faults",
            &json!({"all_requests_fail": true}),
        )
        .await;
    let cleared = client
        .http
        .delete(client.url("/_sim/next-batch-faults"))
        .send()
        .await
        .expect("send DELETE");
    assert_eq!(cleared.status(), 200);
    let queued = client.get_hook("/_sim/next-batch-faults").await;
    assert_eq!(queued["queued"], json!([]));
    simulator.shutdown().await;
}
