//! A job published from Python with pika, written only from the JSON Schema
//! and the README, runs to a ledger record.

use std::time::Duration;

use batchgate_shared::replay::ledger_records;
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, broker_url, repo_root, sample_head};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_published_job_is_billed() {
    let simulator = SimulatorConfig {
        seed: 3,
        validating_ms: 200,
        in_progress_ms: 1000,
        finalizing_ms: 200,
        ..SimulatorConfig::default()
    };
    let mut env = TestEnv::new(simulator, &[("ml-eval", "CC-3003", "10.00")]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 40);
    let job_id = format!("{}-pika", env.id);

    let output = std::process::Command::new("python3")
        .arg(repo_root().join("tests/python/publish_job.py"))
        .args([
            "--amqp-url",
            &broker_url(),
            "--prefix",
            &env.id,
            "--job-id",
            &job_id,
        ])
        .args([
            "--team",
            "ml-eval",
            "--cost-center",
            "CC-3003",
            "--workload-class",
            "eval",
        ])
        .args([
            "--input",
            input.to_str().unwrap(),
            "--purpose",
            "contract test from Python",
        ])
        .output()
        .expect("run python3 (make test installs pika when it is missing)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "publish_job.py failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), job_id);

    let job = env
        .wait_for_state(
            &job_id,
            &["completed", "rejected", "failed"],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(job["state"], "completed", "{job:?}");
    let (records, _) = ledger_records(&env.broker, Duration::from_secs(2))
        .await
        .unwrap();
    let records: Vec<_> = records
        .into_iter()
        .filter(|record| record.job_id == job_id)
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].owner_team, "ml-eval");
    assert_eq!(records[0].workload_class, "eval");
    assert_eq!(records[0].requests.total, 40);
    assert!(records[0].billed_cost_micros.0 > 0);
    env.cleanup().await;
}
