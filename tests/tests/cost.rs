//! `batchgate cost` prices a provider batch's downloaded result files to the
//! same totals that the worker recorded in the ledger for that batch.

use std::time::Duration;

use batchgate_shared::replay::ledger_records;
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TEST_API_KEY, TestEnv, chat_manifest, sample_head};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_matches_worker_record() {
    let simulator = SimulatorConfig {
        failure_ratio: 0.2,
        cached_ratio: 0.5,
        ..SimulatorConfig::default()
    };
    let mut env = TestEnv::new(simulator, &[("data-eng", "CC-1001", "5.00")]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 40);
    let job_id = format!("{}-cost", env.id);
    env.publish_job(&env.job(chat_manifest(&job_id, "data-eng", "CC-1001"), &input))
        .await;
    env.wait_for_state(&job_id, &["completed"], Duration::from_secs(60))
        .await;
    let (records, _) = ledger_records(&env.broker, Duration::from_secs(2))
        .await
        .unwrap();
    let record = records
        .iter()
        .find(|record| record.job_id == job_id)
        .unwrap();
    assert!(
        record.requests.failed > 0,
        "the simulator failed some requests"
    );
    assert!(
        record.tokens.cached_input > 0,
        "the simulator cached some input"
    );

    // Download the batch's output and error files as an analyst would.
    let client = reqwest::Client::new();
    let base = env.simulator().base_url().to_owned();
    let get = |path: String| {
        let request = client
            .get(format!("{base}{path}"))
            .bearer_auth(TEST_API_KEY);
        async move { request.send().await.unwrap().error_for_status().unwrap() }
    };
    let batch: serde_json::Value = get(format!("/v1/batches/{}", record.provider_batch_id))
        .await
        .json()
        .await
        .unwrap();
    let mut files = Vec::new();
    for key in ["output_file_id", "error_file_id"] {
        let Some(file_id) = batch[key].as_str().filter(|id| !id.is_empty()) else {
            continue;
        };
        let content = get(format!("/v1/files/{file_id}/content"))
            .await
            .bytes()
            .await
            .unwrap();
        let path = env.dir.path().join(format!("{key}.jsonl"));
        std::fs::write(&path, content).unwrap();
        files.push(path.to_str().unwrap().to_owned());
    }
    assert_eq!(files.len(), 2, "both an output and an error file: {batch}");

    let day = record.price_effective_from.to_string();
    let mut arguments = vec![
        "cost",
        "--provider",
        "openai",
        "--json",
        "--model",
        "gpt-6-luna",
    ];
    arguments.extend(["--at", &day]);
    arguments.extend(files.iter().map(String::as_str));
    let output = env.cli(&arguments);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["requests"]["succeeded"], record.requests.succeeded);
    assert_eq!(report["requests"]["failed"], record.requests.failed);
    assert_eq!(
        report["tokens"],
        serde_json::to_value(record.tokens).unwrap()
    );
    assert_eq!(report["billed_cost"], record.billed_cost_micros.to_string());
    assert_eq!(report["list_cost"], record.list_cost_micros.to_string());

    // Without --model, the model named in the results is matched to the price table.
    let mut detected = vec!["cost", "--provider", "openai", "--json"];
    detected.extend(files.iter().map(String::as_str));
    let output = env.cli(&detected);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["model"], "gpt-6-luna");

    // A gzip-compressed output file gives the same totals, model included.
    let gzipped = std::process::Command::new("gzip")
        .args(["--keep", "--force", &files[0]])
        .status()
        .unwrap();
    assert!(gzipped.success());
    let gzip_path = format!("{}.gz", files[0]);
    let mut compressed = vec!["cost", "--provider", "openai", "--json", "--at", &day];
    compressed.extend([gzip_path.as_str(), files[1].as_str()]);
    let output = env.cli(&compressed);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["billed_cost"], record.billed_cost_micros.to_string());

    // Results read with the other provider's layout are an error, not a zero bill.
    let wrong = env.cli(&[
        "cost",
        "--provider",
        "anthropic",
        "--model",
        "claude-haiku-4-5",
        &files[0],
    ]);
    assert_eq!(wrong.status.code(), Some(2));

    // A damaged file is named with its line.
    let damaged = env.dir.path().join("damaged.jsonl");
    std::fs::write(&damaged, "{\"custom_id\": \"a\"\n").unwrap();
    let output = env.cli(&[
        "cost",
        "--provider",
        "openai",
        "--model",
        "gpt-6-luna",
        damaged.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("damaged.jsonl line 1"), "{stderr}");
    env.cleanup().await;
}
