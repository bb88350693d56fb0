//! Batch listing, cancellation, the `/_sim/` test hooks and shutdown.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use batchgate_simulator::SimulatorConfig;
use common::{Client, chat_requests, fast_config, start_simulator};
use serde_json::{Value, json};

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
    let file = client.upload(chat_requests(2, 10)).await;
    let file_id = file["id"].as_str().expect("file id");
    let mut created = Vec::new();
    for _ in 0..5 {
        let batch = client.create_batch(file_id, "/v1/chat/completions").await;
        created.push(batch["id"].as_str().expect("id").to_owned());
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let all = client.get_json("/v1/batches").await;
    assert_eq!(all["object"], "list");
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all["has_more"], false);

    let page_one = client.get_json("/v1/batches?limit=2").await;
    assert_eq!(ids(&page_one), newest_first[0..2]);
    assert_eq!(page_one["has_more"], true);
    assert_eq!(page_one["first_id"], newest_first[0].as_str());
    assert_eq!(page_one["last_id"], newest_first[1].as_str());

    let cursor = page_one["last_id"].as_str().expect("last_id");
    let page_two = client
        .get_json(&format!("/v1/batches?limit=2&after={cursor}"))
        .await;
    assert_eq!(ids(&page_two), newest_first[2..4]);
    assert_eq!(page_two["has_more"], true);

    let cursor = page_two["last_id"].as_str().expect("last_id");
    let page_three = client
        .get_json(&format!("/v1/batches?limit=2&after={cursor}"))
        .await;
    assert_eq!(ids(&page_three), newest_first[4..]);
    assert_eq!(page_three["has_more"], false);

    let oldest = &newest_first[4];
    let empty = client
        .get_json(&format!("/v1/batches?after={oldest}"))
        .await;
    assert_eq!(ids(&empty), Vec::<String>::new());
    assert!(empty["first_id"].is_null());
    assert!(empty["last_id"].is_null());
    assert_eq!(empty["has_more"], false);

    for query in ["limit=0", "limit=101", "limit=abc", "after=batch_unknown"] {
        let response = client.get(&format!("/v1/batches?{query}")).await;
        assert_eq!(response.status(), 400, "query {query}");
    }
    simulator.shutdown().await;
}

#[tokio::test]
async fn cancel_keeps_done_requests_only() {
    let simulator = start_simulator(SimulatorConfig {
        validating_ms: 0,
        in_progress_ms: 3_000,
        finalizing_ms: 200,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);
    let content = chat_requests(100, 10);
    let file = client.upload(content).await;
    let batch = client
        .create_batch(
            file["id"].as_str().expect("file id"),
            "/v1/chat/completions",
        )
        .await;
    let batch_id = batch["id"].as_str().expect("batch id").to_owned();

    // Wait until some requests are done, then cancel well before the end.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let batch = client.get_json(&format!("/v1/batches/{batch_id}")).await;
        if batch["request_counts"]["completed"].as_u64() > Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "no request completed in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = client
        .post_json(&format!("/v1/batches/{batch_id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let cancelling: Value = response.json().await.expect("batch object");
    assert_eq!(cancelling["status"], "cancelling");
    assert!(cancelling["cancelling_at"].is_u64());

    let cancelled = client.wait_until_terminal(&batch_id).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["cancelled_at"].is_u64());
    assert!(cancelled["completed_at"].is_null());
    let done = cancelled["request_counts"]["completed"]
        .as_u64()
        .expect("completed");
    assert_eq!(cancelled["request_counts"]["total"], 100);
    assert_eq!(cancelled["request_counts"]["failed"], 0);
    assert!(done > 0, "no request was done before the cancel");
    assert!(done < 100, "every request was done before the cancel");

    let lines = client
        .download_lines(
            cancelled["output_file_id"]
                .as_str()
                .expect("output_file_id"),
        )
        .await;
    assert_eq!(lines.len() as u64, done);
    let unique: HashSet<&str> = lines
        .iter()
        .map(|line| line["custom_id"].as_str().expect("custom_id"))
        .collect();
    assert_eq!(unique.len() as u64, done);

    let again = client
        .post_json(&format!("/v1/batches/{batch_id}/cancel"), &json!({}))
        .await;
    assert_eq!(again.status(), 200, "cancelling a cancelled batch again");
    let again: Value = again.json().await.expect("batch object");
    assert_eq!(again["status"], "cancelled");
    simulator.shutdown().await;
}

#[tokio::test]
async fn cancel_during_validation_has_no_files() {
    let simulator = start_simulator(SimulatorConfig {
        validating_ms: 5_000,
        ..fast_config()
    })
    .await;
    let client = Client::new(&simulator);
    let file = client.upload(chat_requests(5, 10)).await;
    let batch = client
        .create_batch(
            file["id"].as_str().expect("file id"),
            "/v1/chat/completions",
        )
        .await;
    let batch_id = batch["id"].as_str().expect("batch id");

    let response = client
        .post_json(&format!("/v1/batches/{batch_id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let cancelled = client.wait_until_terminal(batch_id).await;

    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["in_progress_at"].is_null());
    assert!(cancelled["output_file_id"].is_null());
    assert!(cancelled["error_file_id"].is_null());
    assert_eq!(cancelled["request_counts"]["total"], 0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn cancel_completed_batch_gets_409() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    let batch = client
        .run_batch(chat_requests(3, 10), "/v1/chat/completions")
        .await;
    let batch_id = batch["id"].as_str().expect("batch id");

    let response = client
        .post_json(&format!("/v1/batches/{batch_id}/cancel"), &json!({}))
        .await;

    assert_eq!(response.status(), 409);
    let after = client.get_json(&format!("/v1/batches/{batch_id}")).await;
    assert_eq!(after["status"], "completed");
    simulator.shutdown().await;
}

#[tokio::test]
async fn stats_count_uploads_and_batches() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);

    let empty: Value = client
        .http
        .get(client.url("/_sim/stats"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("stats body");
    assert_eq!(empty["files_uploaded"], 0);
    assert_eq!(empty["batches_created"], 0);
    assert_eq!(empty["batches_by_status"]["completed"], 0);

    let batch = client
        .run_batch(chat_requests(3, 10), "/v1/chat/completions")
        .await;
    assert_eq!(batch["status"], "completed");
    let invalid = client
        .run_batch(b"not json\n".to_vec(), "/v1/chat/completions")
        .await;
    assert_eq!(invalid["status"], "failed");

    // Stats need no API key, and generated result files are not uploads.
    let stats: Value = client
        .http
        .get(client.url("/_sim/stats"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("stats body");
    assert_eq!(stats["files_uploaded"], 2);
    assert_eq!(stats["batches_created"], 2);
    assert_eq!(stats["batches_by_status"]["completed"], 1);
    assert_eq!(stats["batches_by_status"]["failed"], 1);
    assert_eq!(stats["batches_by_status"]["in_progress"], 0);
    assert_eq!(simulator.batches_created(), 2);
    simulator.shutdown().await;
}

#[tokio::test]
async fn config_hook_changes_new_batches() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);

    let response = client
        .http
        .post(client.url("/_sim/config"))
        .json(&json!({"failure_ratio": 1.0}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let config: Value = response.json().await.expect("config body");
    assert_eq!(config["failure_ratio"], 1.0);
    assert_eq!(config["validating_ms"], fast_config().validating_ms);

    let batch = client
        .run_batch(chat_requests(4, 10), "/v1/chat/completions")
        .await;
    assert_eq!(batch["request_counts"]["failed"], 4);
    assert!(batch["output_file_id"].is_null());

    for invalid in [json!({"failure_ratio": 2.0}), json!({"unknown": 1})] {
        let response = client
            .http
            .post(client.url("/_sim/config"))
            .json(&invalid)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400, "config update {invalid}");
    }
    let current: Value = client
        .http
        .get(client.url("/_sim/config"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("config body");
    assert_eq!(current["failure_ratio"], 1.0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_listener() {
    let simulator = start_simulator(fast_config()).await;
    let client = Client::new(&simulator);
    assert_eq!(client.get("/v1/batches").await.status(), 200);

    let started = Instant::now();
    simulator.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );

    let fresh = reqwest::Client::new();
    let result = fresh.get(client.url("/v1/batches")).send().await;
    assert!(
        result.is_err(),
        "the simulator still answers after shutdown"
    );
}
