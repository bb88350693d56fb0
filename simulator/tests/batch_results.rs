//! Result files of completed batches: contents, usage, failures and determinism.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use batchgate_shared::tokens::{Encoding, count_prompt_tokens};
use batchgate_simulator::SimulatorConfig;
use common::{
    CATALOG_SAMPLE, Client, EMBEDDINGS_SAMPLE, chat_requests, fast_config, sample_lines,
    start_simulator,
};
use serde_json::{Value, json};

/// Parses an input file into `custom_id -> (url, body)` and the ids in file order.
fn parse_input(content: &[u8]) -> (HashMap<String, (String, Value)>, Vec<String>) {
    let text = std::str::from_utf8(content).expect("input is UTF-8");
    let mut requests = HashMap::new();
    let mut order = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let value: Value = serde_json::from_str(line).expect("input line is JSON");
        let custom_id = value["custom_id"].as_str().expect("custom_id").to_owned();
        let url = value["url"].as_str().expect("url").to_owned();
        order.push(custom_id.clone());
        requests.insert(custom_id, (url, value["body"].clone()));
    }
    (requests, order)
}

fn expected_prompt_tokens(url: &str, body: &Value) -> u64 {
    let model = body["model"].as_str().expect("model");
    count_prompt_tokens(Encoding::for_model(model), url, body)
}

fn custom_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|line| line["custom_id"].as_str().expect("custom_id").to_owned())
        .collect()
}

#[tokio::test]
async fn chat_batch_completes_with_tokenizer_usage() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let content = sample_lines(CATALOG_SAMPLE, 50);
    let (inputs, input_order) = parse_input(&content);

    let batch = client.run_batch(content, "/v1/chat/completions").await;

    assert_eq!(batch["status"], "completed");
    assert_eq!(
        batch["request_counts"],
        json!({"total": 50, "completed": 50, "failed": 0})
    );
    assert!(batch["error_file_id"].is_null());
    assert!(batch["errors"].is_null());
    assert!(batch["in_progress_at"].is_u64());
    assert!(batch["finalizing_at"].is_u64());
    assert!(batch["completed_at"].is_u64());
    let created_at = batch["created_at"].as_u64().expect("created_at");
    assert_eq!(
        batch["expires_at"].as_u64(),
        Some(created_at + 24 * 60 * 60)
    );
    assert_eq!(batch["metadata"], json!({"test": "simulator"}));

    let output_file_id = batch["output_file_id"].as_str().expect("output_file_id");
    let file = client
        .get_json(&format!("/v1/files/{output_file_id}"))
        .await;
    assert_eq!(file["purpose"], "batch_output");
    let lines = client.download_lines(output_file_id).await;
    assert_eq!(lines.len(), 50);

    let output_order = custom_ids(&lines);
    let unique: HashSet<&String> = output_order.iter().collect();
    assert_eq!(unique.len(), 50, "custom_ids in the output are unique");
    let input_ids: HashSet<&String> = input_order.iter().collect();
    assert_eq!(unique, input_ids);
    assert_ne!(
        output_order, input_order,
        "output order must not be the input order"
    );

    for line in &lines {
        let custom_id = line["custom_id"].as_str().expect("custom_id");
        let (url, body) = &inputs[custom_id];
        assert!(line["id"].as_str().expect("id").starts_with("batch_req_"));
        assert!(line["error"].is_null());
        let response = &line["response"];
        assert_eq!(response["status_code"], 200);
        assert!(response["request_id"].is_string());
        let response_body = &response["body"];
        assert_eq!(response_body["object"], "chat.completion");
        assert_eq!(response_body["model"], body["model"]);
        assert_eq!(response_body["choices"][0]["finish_reason"], "stop");
        assert_eq!(response_body["choices"][0]["message"]["role"], "assistant");

        let usage = &response_body["usage"];
        let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens");
        let completion = usage["completion_tokens"]
            .as_u64()
            .expect("completion_tokens");
        let max_tokens = body["max_tokens"]
            .as_u64()
            .expect("max_tokens in the sample");
        assert_eq!(
            prompt,
            expected_prompt_tokens(url, body),
            "prompt tokens of {custom_id}"
        );
        assert!(
            (1..=max_tokens).contains(&completion),
            "completion tokens {completion}"
        );
        assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn catalog_sample_completes_in_full() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let content = std::fs::read(CATALOG_SAMPLE).expect("read the catalog sample");
    let (inputs, _) = parse_input(&content);

    let batch = client.run_batch(content, "/v1/chat/completions").await;

    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["request_counts"]["total"], 2000);
    let lines = client
        .download_lines(batch["output_file_id"].as_str().expect("output_file_id"))
        .await;
    assert_eq!(lines.len(), 2000);
    let ids: HashSet<String> = custom_ids(&lines).into_iter().collect();
    assert_eq!(ids.len(), 2000);
    for line in &lines {
        let custom_id = line["custom_id"].as_str().expect("custom_id");
        let (url, body) = &inputs[custom_id];
        let prompt = line["response"]["body"]["usage"]["prompt_tokens"].as_u64();
        assert_eq!(
            prompt,
            Some(expected_prompt_tokens(url, body)),
            "{custom_id}"
        );
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn embeddings_sample_completes() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let content = std::fs::read(EMBEDDINGS_SAMPLE).expect("read the embeddings sample");
    let (inputs, _) = parse_input(&content);

    let batch = client.run_batch(content, "/v1/embeddings").await;

    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["request_counts"]["completed"], 5000);
    let lines = client
        .download_lines(batch["output_file_id"].as_str().expect("output_file_id"))
        .await;
    assert_eq!(lines.len(), 5000);
    for line in &lines {
        let custom_id = line["custom_id"].as_str().expect("custom_id");
        let (url, body) = &inputs[custom_id];
        let response_body = &line["response"]["body"];
        assert_eq!(response_body["object"], "list");
        assert_eq!(response_body["data"].as_array().map(Vec::len), Some(1));
        assert_eq!(response_body["data"][0]["object"], "embedding");
        assert!(response_body["data"][0]["embedding"].is_array());
        let usage = &response_body["usage"];
        let prompt = usage["prompt_tokens"].as_u64();
        assert_eq!(
            prompt,
            Some(expected_prompt_tokens(url, body)),
            "{custom_id}"
        );
        assert_eq!(usage["total_tokens"].as_u64(), prompt);
        assert!(usage.get("completion_tokens").is_none());
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn responses_body_has_responses_usage() {
    let simulator = start_simulator(SimulatorConfig {
        cached_ratio: 0.5,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);
    let mut content = String::new();
    for index in 0..5 {
        let line = json!({
            "custom_id": format!("resp-{index}"),
            "method": "POST",
            "url": "/v1/responses",
            "body": {
                "model": "gpt-6-luna",
                "instructions": "Reply in one sentence.",
                "input": format!("What is package {index} for?"),
                "max_output_tokens": 7,
            },
        });
        content.push_str(&format!("{line}\n"));
    }
    let (inputs, _) = parse_input(content.as_bytes());

    let batch = client
        .run_batch(content.into_bytes(), "/v1/responses")
        .await;

    let lines = client
        .download_lines(batch["output_file_id"].as_str().expect("output_file_id"))
        .await;
    assert_eq!(lines.len(), 5);
    for line in &lines {
        let custom_id = line["custom_id"].as_str().expect("custom_id");
        let (url, body) = &inputs[custom_id];
        let response_body = &line["response"]["body"];
        assert_eq!(response_body["object"], "response");
        assert_eq!(
            response_body["output"][0]["content"][0]["type"],
            "output_text"
        );
        let usage = &response_body["usage"];
        let input_tokens = usage["input_tokens"].as_u64().expect("input_tokens");
        let output_tokens = usage["output_tokens"].as_u64().expect("output_tokens");
        assert_eq!(input_tokens, expected_prompt_tokens(url, body));
        assert_eq!(
            usage["input_tokens_details"]["cached_tokens"],
            input_tokens / 2
        );
        assert!(
            (1..=7).contains(&output_tokens),
            "output tokens {output_tokens}"
        );
        assert_eq!(usage["output_tokens_details"]["reasoning_tokens"], 0);
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(input_tokens + output_tokens)
        );
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn failure_ratio_fills_error_file() {
    let simulator = start_simulator(SimulatorConfig {
        failure_ratio: 0.2,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);
    let content = chat_requests(200, 50);
    let (inputs, _) = parse_input(&content);

    let batch = client.run_batch(content, "/v1/chat/completions").await;

    assert_eq!(batch["status"], "completed");
    let completed = batch["request_counts"]["completed"]
        .as_u64()
        .expect("completed");
    let failed = batch["request_counts"]["failed"].as_u64().expect("failed");
    assert_eq!(completed + failed, 200);
    assert!(
        failed > 0,
        "a 0.2 failure ratio over 200 requests fails some"
    );

    let output = client
        .download_lines(batch["output_file_id"].as_str().expect("output_file_id"))
        .await;
    let errors = client
        .download_lines(batch["error_file_id"].as_str().expect("error_file_id"))
        .await;
    assert_eq!(output.len() as u64, completed);
    assert_eq!(errors.len() as u64, failed);

    let mut status_codes = HashSet::new();
    for line in &errors {
        assert!(line["error"].is_null(), "rejected requests keep error null");
        let status = line["response"]["status_code"]
            .as_u64()
            .expect("status_code");
        assert_ne!(status, 200);
        status_codes.insert(status);
        let error = &line["response"]["body"]["error"];
        let expected_type = if status == 500 {
            "server_error"
        } else {
            "invalid_request_error"
        };
        assert_eq!(error["type"], expected_type);
        assert!(error["message"].is_string());
        assert!(error["code"].is_null());
    }
    assert_eq!(status_codes, HashSet::from([400, 500]));

    let mut all_ids: Vec<String> = custom_ids(&output);
    all_ids.extend(custom_ids(&errors));
    let all_ids: HashSet<String> = all_ids.into_iter().collect();
    let input_ids: HashSet<String> = inputs.keys().cloned().collect();
    assert_eq!(all_ids, input_ids);
    simulator.shutdown().await;
}

#[tokio::test]
async fn full_failure_ratio_has_no_output_file() {
    let simulator = start_simulator(SimulatorConfig {
        failure_ratio: 1.0,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);

    let batch = client
        .run_batch(chat_requests(20, 50), "/v1/chat/completions")
        .await;

    assert_eq!(batch["status"], "completed");
    assert!(batch["output_file_id"].is_null());
    assert_eq!(
        batch["request_counts"],
        json!({"total": 20, "completed": 0, "failed": 20})
    );
    let errors = client
        .download_lines(batch["error_file_id"].as_str().expect("error_file_id"))
        .await;
    assert_eq!(errors.len(), 20);
    simulator.shutdown().await;
}

#[tokio::test]
async fn body_without_messages_fails_with_400() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let content = concat!(
        r#"{"custom_id":"ok","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-6-luna","messages":[{"role":"user","content":"hi"}]}}"#,
        "\n",
        r#"{"custom_id":"no-messages","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-6-luna"}}"#,
        "\n",
    );

    let batch = client
        .run_batch(content.as_bytes().to_vec(), "/v1/chat/completions")
        .await;

    assert_eq!(
        batch["request_counts"],
        json!({"total": 2, "completed": 1, "failed": 1})
    );
    let errors = client
        .download_lines(batch["error_file_id"].as_str().expect("error_file_id"))
        .await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "no-messages");
    assert_eq!(errors[0]["response"]["status_code"], 400);
    assert_eq!(errors[0]["response"]["body"]["error"]["param"], "messages");
    simulator.shutdown().await;
}

/// Runs one batch on a new simulator and returns the output and error file bytes.
async fn result_bytes(seed: u64, content: Vec<u8>) -> (String, String) {
    let simulator = start_simulator(SimulatorConfig {
        seed,
        failure_ratio: 0.2,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);
    let batch = client.run_batch(content, "/v1/chat/completions").await;
    let output = client
        .download_text(batch["output_file_id"].as_str().expect("output_file_id"))
        .await;
    let errors = client
        .download_text(batch["error_file_id"].as_str().expect("error_file_id"))
        .await;
    simulator.shutdown().await;
    (output, errors)
}

#[tokio::test]
async fn same_seed_gives_identical_files() {
    let content = sample_lines(CATALOG_SAMPLE, 100);

    let first = result_bytes(7, content.clone()).await;
    // A pause puts the second run in another second, so wall-clock time cannot
    // leak into the output unnoticed.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = result_bytes(7, content.clone()).await;
    let other_seed = result_bytes(8, content).await;

    assert_eq!(first.0, second.0, "output files of the same seed");
    assert_eq!(first.1, second.1, "error files of the same seed");
    assert_ne!(first.0, other_seed.0, "output files of different seeds");
}

#[tokio::test]
async fn progress_counts_grow_while_in_progress() {
    let simulator = start_simulator(SimulatorConfig {
        validating_ms: 0,
        in_progress_ms: 1_500,
        finalizing_ms: 1_000,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);
    let file = client.upload(chat_requests(100, 20)).await;
    let batch = client
        .create_batch(
            file["id"].as_str().expect("file id"),
            "/v1/chat/completions",
        )
        .await;
    let batch_id = batch["id"].as_str().expect("batch id");

    let mut previous = 0;
    let mut saw_partial = false;
    loop {
        let batch = client.get_json(&format!("/v1/batches/{batch_id}")).await;
        let completed = batch["request_counts"]["completed"]
            .as_u64()
            .expect("completed");
        assert!(
            completed >= previous,
            "completed went from {previous} to {completed}"
        );
        previous = completed;
        match batch["status"].as_str().expect("status") {
            "in_progress" => saw_partial |= completed > 0 && completed < 100,
            "finalizing" => {
                assert_eq!(completed, 100, "finalizing reports every request as done");
                assert!(batch["output_file_id"].is_null());
                break;
            }
            // A slow poll can miss the finalizing phase.
            "completed" => {
                assert_eq!(completed, 100);
                break;
            }
            status => panic!("unexpected status {status} before finalizing"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_partial, "no partial count was seen while in_progress");
    simulator.shutdown().await;
}
