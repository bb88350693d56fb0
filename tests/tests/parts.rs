//! Jobs split into several provider batches, and cancellation.

use std::time::Duration;

use batchgate_shared::money::Micros;
use batchgate_shared::replay::ledger_records;
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, chat_manifest, sample_head};

fn simulator(in_progress_ms: u64) -> SimulatorConfig {
    SimulatorConfig {
        seed: 5,
        validating_ms: 200,
        in_progress_ms,
        finalizing_ms: 200,
        failure_ratio: 0.05,
        ..SimulatorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_job_runs_as_several_batches() {
    let teams = [("data-eng", "CC-1001", "25.00")];
    let mut env =
        TestEnv::with_settings(simulator(1000), &teams, "max_requests_per_batch = 40").await;
    env.start_scheduler().await;
    env.start_worker().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 100);
    let job_id = format!("{}-split", env.id);
    env.publish_job(&env.job(chat_manifest(&job_id, "data-eng", "CC-1001"), &input))
        .await;

    let job = env
        .wait_for_state(
            &job_id,
            &["completed", "failed", "needs_review"],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(job["state"], "completed", "{job:?}");
    assert_eq!(job["parts"], "3");
    let parts = env.store.parts(&job_id).await.unwrap();
    let sizes: Vec<&str> = parts.iter().map(|part| part["requests"].as_str()).collect();
    assert_eq!(sizes, ["40", "40", "20"]);
    assert_eq!(env.simulator().batches_created(), 3);

    let (records, _) = ledger_records(&env.broker, Duration::from_secs(2))
        .await
        .unwrap();
    let mut records: Vec<_> = records
        .into_iter()
        .filter(|record| record.job_id == job_id)
        .collect();
    records.sort_by_key(|record| record.part_index);
    assert_eq!(records.len(), 3, "one ledger record per provider batch");
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record.part_index, index as u32);
        assert_eq!(record.parts_total, 3);
        assert_eq!(record.provider_batch_id, parts[index]["provider_batch_id"]);
    }
    let total_requests: u64 = records.iter().map(|record| record.requests.total).sum();
    assert_eq!(total_requests, 100);
    let billed: Micros = records.iter().map(|record| record.billed_cost_micros).sum();
    assert_eq!(job["billed_cost_micros"], billed.0.to_string());
    let budget = env
        .store
        .budget("data-eng", &job["month"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, billed);

    let status = env.cli(&["status", &job_id]);
    let printed = String::from_utf8_lossy(&status.stdout);
    for part in &parts {
        assert!(
            printed.contains(&part["provider_batch_id"]),
            "status lists every part: {printed}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_job_bills_completed_requests_only() {
    let mut env = TestEnv::new(simulator(8_000), &[("data-eng", "CC-1001", "25.00")]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 200);
    let job_id = format!("{}-cancel", env.id);
    env.publish_job(&env.job(chat_manifest(&job_id, "data-eng", "CC-1001"), &input))
        .await;

    // Cancel once the batch has finished some requests but not all.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let part = env.store.part(&job_id, 0).await.unwrap();
        let done: u64 = part
            .get("requests_done")
            .and_then(|done| done.parse().ok())
            .unwrap_or(0);
        if done > 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the batch made no progress: {part:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = env.cli(&["cancel", &job_id, "--by", "test"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let job = env
        .wait_for_state(
            &job_id,
            &["cancelled", "completed", "failed"],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(job["state"], "cancelled", "{job:?}");
    let (records, _) = ledger_records(&env.broker, Duration::from_secs(2))
        .await
        .unwrap();
    let records: Vec<_> = records
        .into_iter()
        .filter(|record| record.job_id == job_id)
        .collect();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.provider_status, "cancelled");
    assert!(record.requests.succeeded > 0, "{:?}", record.requests);
    assert!(
        record.requests.succeeded + record.requests.failed < 200,
        "{:?}",
        record.requests
    );
    assert!(record.requests.cancelled > 0, "{:?}", record.requests);
    assert_eq!(
        record.requests.total, 200,
        "every request is accounted for: {:?}",
        record.requests
    );
    assert!(record.billed_cost_micros.0 > 0);
    let budget = env
        .store
        .budget("data-eng", &job["month"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, record.billed_cost_micros);

    let again = env.cli(&["cancel", &job_id]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "cancelling an ended job is rejected"
    );
    env.cleanup().await;
}
