//! A worker killed with SIGKILL while its provider batch runs: another worker
//! finishes the job with one provider batch and one ledger record.

use std::time::{Duration, Instant};

use batchgate_shared::replay::{ledger_records, read_stream};
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, chat_manifest, sample_head};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_replaced_without_duplicates() {
    let simulator = SimulatorConfig {
        seed: 11,
        validating_ms: 300,
        in_progress_ms: 6_000,
        finalizing_ms: 500,
        failure_ratio: 0.05,
        ..SimulatorConfig::default()
    };
    let mut env = TestEnv::new(simulator, &[("data-eng", "CC-1001", "25.00")]).await;
    env.start_scheduler().await;
    let mut first = env.spawn_worker_process();
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 200);
    let job_id = format!("{}-crash", env.id);
    env.publish_job(&env.job(chat_manifest(&job_id, "data-eng", "CC-1001"), &input))
        .await;

    // Kill the worker once it has polled the running batch at least once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let part = env.store.part(&job_id, 0).await.unwrap();
        if part.get("state").map(String::as_str) == Some("running")
            && part.contains_key("last_polled_at")
        {
            assert_ne!(
                part["provider_status"], "completed",
                "the batch finished before the kill; lengthen in_progress_ms"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never polled: {part:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill().expect("SIGKILL the worker");
    first.wait().unwrap();

    let mut second = env.spawn_worker_process();
    let job = env
        .wait_for_state(
            &job_id,
            &["completed", "failed", "needs_review"],
            Duration::from_secs(60),
        )
        .await;
    second.kill().ok();
    second.wait().ok();
    assert_eq!(job["state"], "completed", "{job:?}");

    assert_eq!(
        env.simulator().batches_created(),
        1,
        "exactly one provider batch"
    );
    let raw = read_stream(
        &env.broker,
        &env.broker.names.ledger_stream(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let published = raw
        .iter()
        .filter(|body| String::from_utf8_lossy(body).contains(&job_id))
        .count();
    assert_eq!(
        published, 1,
        "the ledger stream holds one message for the job, before any deduplication"
    );
    let (records, _) = ledger_records(&env.broker, Duration::from_secs(2))
        .await
        .unwrap();
    let records: Vec<_> = records
        .iter()
        .filter(|record| record.job_id == job_id)
        .collect();
    assert_eq!(records.len(), 1, "exactly one ledger record");
    let part = env.store.part(&job_id, 0).await.unwrap();
    assert_eq!(records[0].provider_batch_id, part["provider_batch_id"]);
    assert_eq!(records[0].requests.total, 200);
    let budget = env
        .store
        .budget("data-eng", &job["month"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(budget.reserved.0, 0);
    assert_eq!(budget.spent, records[0].billed_cost_micros);
    env.cleanup().await;
}
