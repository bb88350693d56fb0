//! A job from submission to one ledger record, against the real broker and
//! Redis and the provider simulator.

use std::str::FromStr;
use std::time::Duration;

use batchgate_shared::replay::ledger_records;
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TEST_API_KEY, TestEnv, chat_manifest, sample_head};
use rust_decimal::Decimal;
use serde_json::Value;

fn fast_simulator(failure_ratio: f64) -> SimulatorConfig {
    SimulatorConfig {
        seed: 7,
        validating_ms: 200,
        in_progress_ms: 1500,
        finalizing_ms: 200,
        failure_ratio,
        ..SimulatorConfig::default()
    }
}

/// Reads the batch-rate price of a class straight from the price table file.
fn batch_rate(model: &str, class: &str) -> Decimal {
    let text =
        std::fs::read_to_string(batchgate_tests::repo_root().join("config/prices.toml")).unwrap();
    let table: toml::Value = toml::from_str(&text).unwrap();
    let entry = table["price"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["model"].as_str() == Some(model))
        .max_by_key(|entry| entry["effective_from"].as_str().unwrap().to_owned())
        .unwrap();
    Decimal::from_str(entry["batch"][class].as_str().unwrap()).unwrap()
}

async fn provider_get(env: &TestEnv, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", env.simulator().base_url()))
        .bearer_auth(TEST_API_KEY)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_produces_one_exactly_priced_record() {
    let mut env = TestEnv::new(fast_simulator(0.1), &[("data-eng", "CC-1001", "25.00")]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 300);
    let job_id = format!("{}-enrich", env.id);
    env.publish_job(&env.job(chat_manifest(&job_id, "data-eng", "CC-1001"), &input))
        .await;

    let job = env
        .wait_for_state(
            &job_id,
            &["completed", "failed", "rejected"],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(job["state"], "completed", "job record: {job:?}");
    assert_eq!(job["parts"], "1");
    let part = env.store.part(&job_id, 0).await.unwrap();
    assert_eq!(part["state"], "ended");
    let batch_id = part["provider_batch_id"].clone();

    // Price the simulator's own output file independently of batchgate's code.
    let batch: Value = provider_get(&env, &format!("/v1/batches/{batch_id}"))
        .await
        .json()
        .await
        .unwrap();
    let output_file = batch["output_file_id"].as_str().expect("output file");
    let output = provider_get(&env, &format!("/v1/files/{output_file}/content"))
        .await
        .text()
        .await
        .unwrap();
    let (mut input_tokens, mut output_tokens, mut succeeded) = (0u64, 0u64, 0u64);
    for line in output.lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        if line["response"]["status_code"] != 200 {
            continue;
        }
        let usage = &line["response"]["body"]["usage"];
        succeeded += 1;
        input_tokens += usage["prompt_tokens"].as_u64().unwrap();
        output_tokens += usage["completion_tokens"].as_u64().unwrap();
    }
    let expected_micros = Decimal::from(input_tokens) * batch_rate("gpt-6-luna", "input")
        + Decimal::from(output_tokens) * batch_rate("gpt-6-luna", "output");
    let expected = expected_micros
        .round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero);

    let (records, _) = ledger_records(&env.broker, Duration::from_secs(2))
        .await
        .unwrap();
    let records: Vec<_> = records
        .into_iter()
        .filter(|record| record.job_id == job_id)
        .collect();
    assert_eq!(records.len(), 1, "one ledger record per provider batch");
    let record = &records[0];
    assert_eq!(record.provider_batch_id, batch_id);
    assert_eq!(Decimal::from(record.billed_cost_micros.0), expected);
    assert_eq!(record.requests.total, 300);
    assert_eq!(record.requests.succeeded, succeeded);
    assert_eq!(record.requests.failed, 300 - succeeded);
    assert!(
        record.requests.failed > 0,
        "a 10 % failure ratio over 300 requests fails some"
    );
    assert!(record.amounts_add_up(), "{record:?}");
    assert_eq!(record.tokens.input, input_tokens);
    assert_eq!(record.tokens.output, output_tokens);

    // Settlement replaced the estimate with the billed cost exactly.
    let month = job["month"].clone();
    let budget = env.store.budget("data-eng", &month).await.unwrap().unwrap();
    assert_eq!(budget.reserved.0, 0);
    assert_eq!(budget.spent, record.billed_cost_micros);
    assert_eq!(env.simulator().batches_created(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_job_id_is_rejected() {
    let mut env = TestEnv::new(fast_simulator(0.0), &[("data-eng", "CC-1001", "25.00")]).await;
    env.start_scheduler().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 5);
    let job_id = format!("{}-dup", env.id);
    env.publish_job(&env.job(chat_manifest(&job_id, "data-eng", "CC-1001"), &input))
        .await;
    env.wait_for_state(&job_id, &["accepted"], Duration::from_secs(30))
        .await;
    let mut second = env.job(chat_manifest(&job_id, "data-eng", "CC-1001"), &input);
    second.manifest.purpose = "a different job reusing the id".to_owned();
    env.publish_job(&second).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let history = env.store.history(&job_id).await.unwrap();
        if history
            .iter()
            .any(|event| event.contains("job.rejected") && event.contains("already used"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no duplicate rejection in {history:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let job = env.store.job(&job_id).await.unwrap();
    assert_eq!(job["state"], "accepted", "the first job is untouched");
    let reservations = env
        .store
        .reservations("data-eng", &job["month"])
        .await
        .unwrap();
    assert_eq!(reservations.len(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_rejection_names_amounts() {
    let mut env = TestEnv::new(fast_simulator(0.0), &[("search", "CC-2002", "0.001")]).await;
    env.start_scheduler().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 50);
    let job_id = format!("{}-big", env.id);
    env.publish_job(&env.job(chat_manifest(&job_id, "search", "CC-2002"), &input))
        .await;
    let job = env
        .wait_for_state(&job_id, &["rejected"], Duration::from_secs(30))
        .await;
    let reason = &job["reason"];
    assert!(reason.contains("over budget"), "{reason}");
    assert!(reason.contains("limit 0.001000 USD"), "{reason}");
    assert!(reason.contains("reserved 0.000000 USD"), "{reason}");
    assert!(reason.contains("spent 0.000000 USD"), "{reason}");
    assert!(reason.contains("estimated cost"), "{reason}");
    let budget = env
        .store
        .budget("search", &job["month"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(budget.reserved.0, 0);
    env.cleanup().await;
}
