//! Rejected API calls and input files that fail validation.

mod common;

use common::{API_KEY, Client, chat_requests, fast_config, start_simulator};
use serde_json::{Map, Value, json};

/// Asserts OpenAI's error body shape and returns the `error` object.
async fn error_object(response: reqwest::Response, expected_status: u16) -> Value {
    assert_eq!(response.status(), expected_status);
    let body: Value = response.json().await.expect("error body is JSON");
    let error = body["error"].clone();
    assert!(error["message"].is_string(), "error message in {body}");
    assert!(error["type"].is_string(), "error type in {body}");
    assert!(error.get("param").is_some(), "error param in {body}");
    assert!(error["code"].is_null(), "error code in {body}");
    error
}

#[tokio::test]
async fn missing_bearer_token_gets_401() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);

    let without_header = client
        .http
        .get(client.url("/v1/batches"))
        .send()
        .await
        .expect("send");
    let error = error_object(without_header, 401).await;
    assert_eq!(error["type"], "invalid_request_error");

    let cases = [
        ("empty key", "Bearer "),
        ("basic scheme", "Basic dXNlcjpwYXNz"),
        ("no scheme", API_KEY),
    ];
    for (case, header) in cases {
        let response = client
            .http
            .get(client.url("/v1/files/file-any"))
            .header("Authorization", header)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 401, "{case}");
    }

    let upload = client
        .http
        .post(client.url("/v1/files"))
        .body("purpose=batch")
        .send()
        .await
        .expect("send");
    assert_eq!(upload.status(), 401, "upload without a key");
    simulator.shutdown().await;
}

#[tokio::test]
async fn unknown_ids_get_404() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);

    let error = error_object(client.get("/v1/files/file-missing").await, 404).await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("file-missing"),
        "message names the id: {error}"
    );

    error_object(client.get("/v1/files/file-missing/content").await, 404).await;
    error_object(client.get("/v1/batches/batch_missing").await, 404).await;
    error_object(
        client
            .post_json("/v1/batches/batch_missing/cancel", &json!({}))
            .await,
        404,
    )
    .await;
    error_object(client.get("/v1/no-such-endpoint").await, 404).await;

    let body = json!({
        "input_file_id": "file-missing",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    });
    let error = error_object(client.post_json("/v1/batches", &body).await, 404).await;
    assert_eq!(error["param"], "input_file_id");
    simulator.shutdown().await;
}

#[tokio::test]
async fn upload_checks_purpose_and_file() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);

    let response = client
        .upload_with_purpose(chat_requests(1, 10), "fine-tune")
        .await;
    let error = error_object(response, 400).await;
    assert_eq!(error["param"], "purpose");

    let form = reqwest::multipart::Form::new().text("purpose", "batch");
    let response = client
        .http
        .post(client.url("/v1/files"))
        .bearer_auth(API_KEY)
        .multipart(form)
        .send()
        .await
        .expect("send");
    let error = error_object(response, 400).await;
    assert_eq!(error["param"], "file");

    let response = client
        .http
        .post(client.url("/v1/files"))
        .bearer_auth(API_KEY)
        .body("not multipart")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16() / 100, 4, "non-multipart upload");

    let file = client.upload(chat_requests(3, 10)).await;
    assert!(file["id"].as_str().expect("id").starts_with("file-"));
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["filename"], "input.jsonl");
    assert_eq!(
        file["bytes"].as_u64(),
        Some(chat_requests(3, 10).len() as u64)
    );
    assert!(file["created_at"].is_u64());
    let file_id = file["id"].as_str().expect("id");
    assert_eq!(client.get_json(&format!("/v1/files/{file_id}")).await, file);
    assert_eq!(
        client.download_text(file_id).await.into_bytes(),
        chat_requests(3, 10)
    );

    let deleted = client
        .http
        .delete(client.url(&format!("/v1/files/{file_id}")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        client.get(&format!("/v1/files/{file_id}")).await.status(),
        404
    );
    simulator.shutdown().await;
}

#[tokio::test]
async fn create_batch_validates_fields() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let file = client.upload(chat_requests(2, 10)).await;
    let file_id = file["id"].as_str().expect("file id");
    let valid = json!({
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    });

    let too_many_pairs: Map<String, Value> = (0..17)
        .map(|index| (format!("key{index}"), json!("value")))
        .collect();
    let cases = [
        (
            "unsupported endpoint",
            "endpoint",
            json!("/v1/images/generations"),
        ),
        ("other window", "completion_window", json!("48h")),
        (
            "17 metadata pairs",
            "metadata",
            Value::Object(too_many_pairs),
        ),
        (
            "long metadata key",
            "metadata",
            json!({"k".repeat(65): "v"}),
        ),
        (
            "long metadata value",
            "metadata",
            json!({"k": "v".repeat(513)}),
        ),
        ("number metadata value", "metadata", json!({"k": 1})),
        ("file id of wrong type", "input_file_id", json!(17)),
    ];
    for (case, field, value) in cases {
        let mut body = valid.clone();
        body[field] = value;
        let response = client.post_json("/v1/batches", &body).await;
        assert_eq!(response.status(), 400, "{case}");
        let error: Value = response.json().await.expect("error body");
        assert_eq!(error["error"]["param"], field, "{case}");
    }

    let mut missing_window = valid.clone();
    missing_window
        .as_object_mut()
        .expect("object")
        .remove("completion_window");
    let response = client.post_json("/v1/batches", &missing_window).await;
    assert_eq!(response.status(), 400, "missing completion_window");

    let not_json = client
        .http
        .post(client.url("/v1/batches"))
        .bearer_auth(API_KEY)
        .body("{")
        .send()
        .await
        .expect("send");
    error_object(not_json, 400).await;

    let max_pairs: Map<String, Value> = (0..16)
        .map(|index| (format!("{index:0>64}"), json!("v".repeat(512))))
        .collect();
    let mut at_limits = valid.clone();
    at_limits["metadata"] = Value::Object(max_pairs.clone());
    let response = client.post_json("/v1/batches", &at_limits).await;
    assert_eq!(response.status(), 200, "metadata at the limits");
    let batch: Value = response.json().await.expect("batch object");
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["status"], "validating");
    assert!(batch["id"].as_str().expect("id").starts_with("batch_"));
    assert_eq!(batch["metadata"], Value::Object(max_pairs));
    assert_eq!(
        batch["request_counts"],
        json!({"total": 0, "completed": 0, "failed": 0})
    );
    assert!(batch["output_file_id"].is_null());
    assert!(batch["error_file_id"].is_null());
    simulator.shutdown().await;
}

/// Runs a batch on `content` and asserts that it fails validation.
async fn failed_batch(client: &Client, content: &str, endpoint: &str) -> Value {
    let batch = client
        .run_batch(content.as_bytes().to_vec(), endpoint)
        .await;
    assert_eq!(batch["status"], "failed", "batch {batch}");
    assert!(batch["failed_at"].is_u64());
    assert!(batch["in_progress_at"].is_null());
    assert!(batch["output_file_id"].is_null());
    assert!(batch["error_file_id"].is_null());
    assert_eq!(batch["errors"]["object"], "list");
    batch
}

#[tokio::test]
async fn mismatched_url_fails_batch_with_line() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let content = concat!(
        r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-6-luna","messages":[]}}"#,
        "\n",
        r#"{"custom_id":"b","method":"POST","url":"/v1/embeddings","body":{"model":"gpt-6-luna","input":"x"}}"#,
        "\n",
    );

    let file = client.upload(content.as_bytes().to_vec()).await;
    let created = client
        .create_batch(
            file["id"].as_str().expect("file id"),
            "/v1/chat/completions",
        )
        .await;
    assert_eq!(created["status"], "validating");
    assert!(created["errors"].is_null());
    let batch = client
        .wait_until_terminal(created["id"].as_str().expect("batch id"))
        .await;

    assert_eq!(batch["status"], "failed");
    let errors = batch["errors"]["data"].as_array().expect("errors.data");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["line"], 2);
    assert_eq!(errors[0]["code"], "mismatched_endpoint");
    assert_eq!(errors[0]["param"], "url");
    assert!(errors[0]["message"].is_string());
    assert_eq!(batch["request_counts"]["total"], 0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn invalid_lines_fail_batch() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let chat = |custom_id: &str, model: &str| {
        json!({
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        })
        .to_string()
    };
    let cases = [
        (
            "not JSON",
            format!("{}\n{{oops\n", chat("a", "m")),
            "invalid_json_line",
            2,
        ),
        (
            "duplicate id",
            format!("{}\n{}\n", chat("a", "m"), chat("a", "m")),
            "duplicate_custom_id",
            2,
        ),
        (
            "two models",
            format!("{}\n{}\n", chat("a", "m"), chat("b", "n")),
            "mismatched_model",
            2,
        ),
        (
            "GET method",
            chat("a", "m").replace("POST", "GET"),
            "invalid_value",
            1,
        ),
    ];
    for (case, content, code, line) in cases {
        let batch = failed_batch(&client, &content, "/v1/chat/completions").await;
        let first = &batch["errors"]["data"][0];
        assert_eq!(first["code"], code, "{case}");
        assert_eq!(first["line"], line, "{case}");
    }

    let batch = failed_batch(&client, "\n\n", "/v1/chat/completions").await;
    assert_eq!(batch["errors"]["data"][0]["code"], "empty_file");
    assert!(batch["errors"]["data"][0]["line"].is_null());
    simulator.shutdown().await;
}
