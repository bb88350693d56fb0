//! The Anthropic Message Batches API: lifecycle, results, usage, validation,
//! cancel and listing.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use batchgate_shared::tokens::{Encoding, count_anthropic_prompt_tokens};
use batchgate_simulator::SimulatorConfig;
use chrono::DateTime;
use common::{
    ANTHROPIC_VERSION, API_KEY, Client, fast_config, message_requests, sample_message_requests,
    start_simulator,
};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

/// Asserts Anthropic's error body shape and returns `error.type`.
async fn error_type(response: reqwest::Response, expected_status: u16) -> String {
    assert_eq!(response.status(), expected_status);
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["type"], "error", "body {body}");
    assert!(body["error"]["message"].is_string(), "body {body}");
    body["error"]["type"]
        .as_str()
        .expect("error type")
        .to_owned()
}

fn params_by_custom_id(requests: &Value) -> HashMap<String, Value> {
    requests
        .as_array()
        .expect("requests array")
        .iter()
        .map(|request| {
            let custom_id = request["custom_id"].as_str().expect("custom_id").to_owned();
            (custom_id, request["params"].clone())
        })
        .collect()
}

fn custom_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|line| line["custom_id"].as_str().expect("custom_id").to_owned())
        .collect()
}

fn assert_rfc3339(value: &Value, field: &str) {
    let text = value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {value}"));
    assert!(
        DateTime::parse_from_rfc3339(text).is_ok(),
        "{field} is not RFC 3339: {text}"
    );
}

#[tokio::test]
async fn lifecycle_counts_move_only_at_end() {
    let simulator = start_simulator(SimulatorConfig {
        in_progress_ms: 600,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);
    let requests = message_requests(20, 16);

    let created = client.create_message_batch(&requests).await;
    let batch_id = created["id"].as_str().expect("id").to_owned();
    assert!(batch_id.starts_with("msgbatch_"), "id {batch_id}");
    assert_eq!(created["type"], "message_batch");
    assert_eq!(created["processing_status"], "in_progress");
    assert_eq!(
        created["request_counts"],
        json!({"processing": 20, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
    );
    assert!(created["results_url"].is_null());
    assert!(created["ended_at"].is_null());
    assert!(created["cancel_initiated_at"].is_null());
    assert!(created["archived_at"].is_null());
    assert_rfc3339(&created, "created_at");
    assert_rfc3339(&created, "expires_at");

    // Every poll before the end shows all requests as processing.
    let ended = loop {
        let batch = client
            .anthropic_get_json(&format!("/v1/messages/batches/{batch_id}"))
            .await;
        if batch["processing_status"] == "ended" {
            break batch;
        }
        assert_eq!(batch["processing_status"], "in_progress");
        assert_eq!(batch["request_counts"]["processing"], 20, "{batch}");
        assert_eq!(batch["request_counts"]["succeeded"], 0, "{batch}");
        assert!(batch["results_url"].is_null());
        tokio::time::sleep(Duration::from_millis(40)).await;
    };

    assert_eq!(
        ended["request_counts"],
        json!({"processing": 0, "succeeded": 20, "errored": 0, "canceled": 0, "expired": 0})
    );
    assert_rfc3339(&ended, "ended_at");
    let expected_url = format!(
        "{}/v1/messages/batches/{batch_id}/results",
        simulator.base_url()
    );
    assert_eq!(ended["results_url"], expected_url.as_str());

    let lines = client.message_batch_result_lines(&batch_id).await;
    assert_eq!(lines.len(), 20);
    let returned = custom_ids(&lines);
    let expected: Vec<String> = (0..20).map(|index| format!("msg-{index:04}")).collect();
    assert_ne!(
        returned, expected,
        "results are in input order, not shuffled"
    );
    let unique: HashSet<&String> = returned.iter().collect();
    assert_eq!(unique, expected.iter().collect::<HashSet<_>>());

    for line in &lines {
        let result = &line["result"];
        assert_eq!(result["type"], "succeeded", "line {line}");
        let message = &result["message"];
        assert!(
            message["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("msg_")),
            "message id in {line}"
        );
        assert_eq!(message["type"], "message");
        assert_eq!(message["role"], "assistant");
        assert_eq!(message["model"], "claude-haiku-4-5");
        assert_eq!(message["stop_reason"], "end_turn");
        assert_eq!(message["content"][0]["type"], "text");
        assert!(message["content"][0]["text"].is_string());
        let output = message["usage"]["output_tokens"]
            .as_u64()
            .expect("output tokens");
        assert!((1..=16).contains(&output), "output tokens {output}");
    }
    assert_eq!(simulator.batches_created(), 1);
    simulator.shutdown().await;
}

#[tokio::test]
async fn usage_adds_up_to_tokenizer_count() {
    let simulator = start_simulator(SimulatorConfig {
        anthropic_cache_write_ratio: 0.3,
        anthropic_cache_read_ratio: 0.45,
        anthropic_cache_1h_share: 0.5,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);
    let requests = sample_message_requests(40);
    let params = params_by_custom_id(&requests);

    let batch = client.run_message_batch(&requests).await;
    let lines = client
        .message_batch_result_lines(batch["id"].as_str().expect("id"))
        .await;

    assert_eq!(lines.len(), 40);
    for line in &lines {
        let custom_id = line["custom_id"].as_str().expect("custom_id");
        let request = &params[custom_id];
        let usage = &line["result"]["message"]["usage"];
        let prompt = count_anthropic_prompt_tokens(Encoding::O200kBase, request);
        let input = usage["input_tokens"].as_u64().expect("input_tokens");
        let write = usage["cache_creation_input_tokens"]
            .as_u64()
            .expect("cache_creation_input_tokens");
        let read = usage["cache_read_input_tokens"]
            .as_u64()
            .expect("cache_read_input_tokens");
        let write_5m = usage["cache_creation"]["ephemeral_5m_input_tokens"]
            .as_u64()
            .expect("ephemeral_5m_input_tokens");
        let write_1h = usage["cache_creation"]["ephemeral_1h_input_tokens"]
            .as_u64()
            .expect("ephemeral_1h_input_tokens");

        assert_eq!(
            input + write + read,
            prompt,
            "usage of {custom_id}: {usage}"
        );
        assert_eq!(write_5m + write_1h, write, "cache writes of {custom_id}");
        assert_eq!(write, (prompt as f64 * 0.3).floor() as u64, "{custom_id}");
        assert_eq!(read, (prompt as f64 * 0.45).floor() as u64, "{custom_id}");
        assert_eq!(write_1h, (write as f64 * 0.5).floor() as u64, "{custom_id}");
        assert_eq!(usage["service_tier"], "batch");
        let max_tokens = request["max_tokens"].as_u64().expect("max_tokens");
        let output = usage["output_tokens"].as_u64().expect("output_tokens");
        assert!((1..=max_tokens).contains(&output), "output {output}");
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn results_have_no_content_type() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let batch = client.run_message_batch(&message_requests(3, 8)).await;
    let batch_id = batch["id"].as_str().expect("id");

    let response = client
        .anthropic_get(&format!("/v1/messages/batches/{batch_id}/results"))
        .await;

    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get(CONTENT_TYPE).is_none(),
        "content-type {:?}",
        response.headers().get(CONTENT_TYPE)
    );
    let text = response.text().await.expect("body");
    assert_eq!(text.split('\n').filter(|line| !line.is_empty()).count(), 3);
    assert!(text.ends_with('\n'));
    simulator.shutdown().await;
}

#[tokio::test]
async fn same_seed_gives_identical_results() {
    let mut results = Vec::new();
    for _ in 0..2 {
        let simulator = start_simulator(SimulatorConfig {
            failure_ratio: 0.3,
            ..fast_config()
        })
        .await;
        let client = Client::new(&simulator);
        let batch = client.run_message_batch(&message_requests(30, 50)).await;
        results.push(
            client
                .message_batch_results(batch["id"].as_str().expect("id"))
                .await,
        );
        simulator.shutdown().await;
    }
    assert_eq!(results[0], results[1]);
}

#[tokio::test]
async fn invalid_custom_id_gets_400() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let params = json!({"model": "claude-haiku-4-5", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]});
    let too_long = "x".repeat(65);
    let cases = [
        (
            "space",
            json!([{"custom_id": "has space", "params": params}]),
        ),
        ("empty", json!([{"custom_id": "", "params": params}])),
        (
            "too long",
            json!([{"custom_id": too_long, "params": params}]),
        ),
        ("dot", json!([{"custom_id": "a.b", "params": params}])),
        ("number", json!([{"custom_id": 7, "params": params}])),
        ("missing", json!([{"params": params}])),
        (
            "duplicate",
            json!([{"custom_id": "a", "params": params}, {"custom_id": "a", "params": params}]),
        ),
    ];
    for (case, requests) in cases {
        let response = client
            .anthropic_post("/v1/messages/batches", &json!({ "requests": requests }))
            .await;
        assert_eq!(
            error_type(response, 400).await,
            "invalid_request_error",
            "case {case}"
        );
    }

    for body in [json!({}), json!({"requests": []}), json!({"requests": "x"})] {
        let response = client.anthropic_post("/v1/messages/batches", &body).await;
        assert_eq!(
            error_type(response, 400).await,
            "invalid_request_error",
            "body {body}"
        );
    }
    assert_eq!(simulator.batches_created(), 0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn too_many_requests_gets_413() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let requests: Vec<Value> = (0..100_001)
        .map(|index| json!({"custom_id": format!("r{index}"), "params": {}}))
        .collect();

    let response = client
        .anthropic_post("/v1/messages/batches", &json!({ "requests": requests }))
        .await;

    assert_eq!(error_type(response, 413).await, "request_too_large");
    assert_eq!(simulator.batches_created(), 0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn invalid_params_give_errored_results() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let messages = json!([{"role": "user", "content": "hi"}]);
    let requests = json!([
        {"custom_id": "ok", "params": {"model": "m", "max_tokens": 5, "messages": messages}},
        {"custom_id": "no-model", "params": {"max_tokens": 5, "messages": messages}},
        {"custom_id": "no-max-tokens", "params": {"model": "m", "messages": messages}},
        {"custom_id": "no-messages", "params": {"model": "m", "max_tokens": 5}},
    ]);

    let batch = client.run_message_batch(&requests).await;

    assert_eq!(batch["request_counts"]["succeeded"], 1);
    assert_eq!(batch["request_counts"]["errored"], 3);
    let lines = client
        .message_batch_result_lines(batch["id"].as_str().expect("id"))
        .await;
    let by_id: HashMap<String, &Value> = lines
        .iter()
        .map(|line| (line["custom_id"].as_str().expect("id").to_owned(), line))
        .collect();
    assert_eq!(by_id["ok"]["result"]["type"], "succeeded");
    for (custom_id, field) in [
        ("no-model", "model"),
        ("no-max-tokens", "max_tokens"),
        ("no-messages", "messages"),
    ] {
        let result = &by_id[custom_id]["result"];
        assert_eq!(result["type"], "errored", "{custom_id}");
        assert_eq!(result["error"]["type"], "error", "{custom_id}");
        assert_eq!(
            result["error"]["error"]["type"], "invalid_request_error",
            "{custom_id}"
        );
        let message = result["error"]["error"]["message"]
            .as_str()
            .expect("message");
        assert!(message.contains(field), "{custom_id}: {message}");
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn failure_ratio_mixes_error_types() {
    let simulator = start_simulator(SimulatorConfig {
        failure_ratio: 1.0,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);

    let batch = client.run_message_batch(&message_requests(60, 5)).await;

    assert_eq!(batch["request_counts"]["errored"], 60);
    let lines = client
        .message_batch_result_lines(batch["id"].as_str().expect("id"))
        .await;
    let types: HashSet<&str> = lines
        .iter()
        .map(|line| {
            line["result"]["error"]["error"]["type"]
                .as_str()
                .expect("error type")
        })
        .collect();
    let expected = HashSet::from(["overloaded_error", "api_error", "invalid_request_error"]);
    assert_eq!(types, expected);
    simulator.shutdown().await;
}

#[tokio::test]
async fn cancel_gives_canceled_results() {
    let simulator = start_simulator(SimulatorConfig {
        validating_ms: 0,
        in_progress_ms: 4_000,
        finalizing_ms: 200,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);
    let batch = client.create_message_batch(&message_requests(100, 5)).await;
    let batch_id = batch["id"].as_str().expect("id").to_owned();

    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let response = client
        .anthropic_post(
            &format!("/v1/messages/batches/{batch_id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let canceling: Value = response.json().await.expect("batch object");
    assert_eq!(canceling["processing_status"], "canceling");
    assert_rfc3339(&canceling, "cancel_initiated_at");
    assert_eq!(canceling["request_counts"]["processing"], 100);

    let ended = client.wait_until_ended(&batch_id).await;
    let counts = &ended["request_counts"];
    let succeeded = counts["succeeded"].as_u64().expect("succeeded");
    let canceled = counts["canceled"].as_u64().expect("canceled");
    assert!(
        succeeded > 0,
        "no request finished before the cancel: {counts}"
    );
    assert!(canceled > 0, "no request was canceled: {counts}");
    assert_eq!(succeeded + canceled, 100);
    assert_eq!(counts["processing"], 0);

    let lines = client.message_batch_result_lines(&batch_id).await;
    assert_eq!(lines.len(), 100);
    let canceled_lines = lines
        .iter()
        .filter(|line| line["result"] == json!({"type": "canceled"}))
        .count();
    assert_eq!(canceled_lines as u64, canceled);

    let again = client
        .anthropic_post(
            &format!("/v1/messages/batches/{batch_id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(error_type(again, 400).await, "invalid_request_error");
    simulator.shutdown().await;
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|batch| batch["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn list_pages_newest_first() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let mut created = Vec::new();
    for _ in 0..5 {
        let batch = client.create_message_batch(&message_requests(1, 5)).await;
        created.push(batch["id"].as_str().expect("id").to_owned());
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let all = client.anthropic_get_json("/v1/messages/batches").await;
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all["has_more"], false);
    assert_eq!(all["first_id"], newest_first[0].as_str());
    assert_eq!(all["last_id"], newest_first[4].as_str());

    let page_one = client
        .anthropic_get_json("/v1/messages/batches?limit=2")
        .await;
    assert_eq!(ids(&page_one), newest_first[0..2]);
    assert_eq!(page_one["has_more"], true);

    let cursor = page_one["last_id"].as_str().expect("last_id");
    let page_two = client
        .anthropic_get_json(&format!("/v1/messages/batches?limit=2&after_id={cursor}"))
        .await;
    assert_eq!(ids(&page_two), newest_first[2..4]);
    assert_eq!(page_two["has_more"], true);

    let cursor = page_two["last_id"].as_str().expect("last_id");
    let page_three = client
        .anthropic_get_json(&format!("/v1/messages/batches?limit=2&after_id={cursor}"))
        .await;
    assert_eq!(ids(&page_three), newest_first[4..]);
    assert_eq!(page_three["has_more"], false);

    // Paging back towards newer batches with before_id.
    let cursor = page_three["first_id"].as_str().expect("first_id");
    let back_one = client
        .anthropic_get_json(&format!("/v1/messages/batches?limit=2&before_id={cursor}"))
        .await;
    assert_eq!(ids(&back_one), newest_first[2..4]);
    assert_eq!(back_one["has_more"], true);
    let cursor = back_one["first_id"].as_str().expect("first_id");
    let back_two = client
        .anthropic_get_json(&format!("/v1/messages/batches?limit=2&before_id={cursor}"))
        .await;
    assert_eq!(ids(&back_two), newest_first[0..2]);
    assert_eq!(back_two["has_more"], false);

    let newest = &newest_first[0];
    let empty = client
        .anthropic_get_json(&format!("/v1/messages/batches?before_id={newest}"))
        .await;
    assert_eq!(ids(&empty), Vec::<String>::new());
    assert!(empty["first_id"].is_null());
    assert_eq!(empty["has_more"], false);

    let both = format!("after_id={newest}&before_id={newest}");
    for query in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "after_id=msgbatch_unknown",
        &both,
    ] {
        let response = client
            .anthropic_get(&format!("/v1/messages/batches?{query}"))
            .await;
        assert_eq!(
            error_type(response, 400).await,
            "invalid_request_error",
            "query {query}"
        );
    }
    let largest = client
        .anthropic_get("/v1/messages/batches?limit=1000")
        .await;
    assert_eq!(largest.status(), 200);
    simulator.shutdown().await;
}

#[tokio::test]
async fn auth_headers_are_required() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let url = client.url("/v1/messages/batches");

    let no_key = client
        .http
        .get(&url)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .send()
        .await
        .expect("send");
    assert_eq!(error_type(no_key, 401).await, "authentication_error");

    let empty_key = client
        .http
        .get(&url)
        .header("x-api-key", " ")
        .header("anthropic-version", ANTHROPIC_VERSION)
        .send()
        .await
        .expect("send");
    assert_eq!(error_type(empty_key, 401).await, "authentication_error");

    let bearer_only = client
        .http
        .get(&url)
        .bearer_auth(API_KEY)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .send()
        .await
        .expect("send");
    assert_eq!(error_type(bearer_only, 401).await, "authentication_error");

    let no_version = client
        .http
        .get(&url)
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(error_type(no_version, 400).await, "invalid_request_error");

    let old_version = client
        .http
        .get(&url)
        .header("x-api-key", API_KEY)
        .header("anthropic-version", "2020-01-01")
        .send()
        .await
        .expect("send");
    assert_eq!(error_type(old_version, 400).await, "invalid_request_error");

    let valid = client
        .anthropic(Method::GET, "/v1/messages/batches")
        .send()
        .await;
    assert_eq!(valid.expect("send").status(), 200);
    simulator.shutdown().await;
}

#[tokio::test]
async fn unknown_and_unfinished_batches_get_errors() {
    let simulator = start_simulator(SimulatorConfig {
        in_progress_ms: 30_000,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);

    for path in [
        "/v1/messages/batches/msgbatch_missing",
        "/v1/messages/batches/msgbatch_missing/results",
    ] {
        let response = client.anthropic_get(path).await;
        assert_eq!(error_type(response, 404).await, "not_found_error", "{path}");
    }
    let cancel = client
        .anthropic_post("/v1/messages/batches/msgbatch_missing/cancel", &json!({}))
        .await;
    assert_eq!(error_type(cancel, 404).await, "not_found_error");

    let batch = client.create_message_batch(&message_requests(2, 5)).await;
    let batch_id = batch["id"].as_str().expect("id");
    let early = client
        .anthropic_get(&format!("/v1/messages/batches/{batch_id}/results"))
        .await;
    assert_eq!(error_type(early, 400).await, "invalid_request_error");
    simulator.shutdown().await;
}

#[tokio::test]
async fn stats_count_both_providers() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);

    client.run_message_batch(&message_requests(2, 5)).await;
    let openai = client
        .run_batch(common::chat_requests(2, 5), "/v1/chat/completions")
        .await;
    assert_eq!(openai["status"], "completed");

    let stats = client.get_hook("/_sim/stats").await;
    assert_eq!(stats["batches_created"], 2);
    assert_eq!(stats["openai"]["batches_created"], 1);
    assert_eq!(stats["openai"]["batches_by_status"]["completed"], 1);
    assert_eq!(stats["batches_by_status"]["completed"], 1);
    assert_eq!(stats["anthropic"]["batches_created"], 1);
    assert_eq!(
        stats["anthropic"]["batches_by_processing_status"],
        json!({"in_progress": 0, "canceling": 0, "ended": 1})
    );
    assert_eq!(simulator.batches_created(), 2);
    simulator.shutdown().await;
}
