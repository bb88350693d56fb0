//! A worker that dies between the provider's create call and recording the
//! batch id: its successor finds the batch instead of creating another.
//!
//! Needs `batchgate-worker` built with `--features batchgate-worker/crash-points`,
//! as `make test` does.

use std::time::Duration;

use batchgate_shared::manifest::Manifest;
use batchgate_shared::replay::ledger_records;
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, chat_manifest, sample_head};

async fn crash_after_create(manifest: fn(&str) -> Manifest, sample: &str, lines: usize) {
    let simulator = SimulatorConfig {
        seed: 9,
        validating_ms: 200,
        in_progress_ms: 1500,
        finalizing_ms: 200,
        ..SimulatorConfig::default()
    };
    let teams = [
        ("data-eng", "CC-1001", "25.00"),
        ("ml-eval", "CC-3003", "25.00"),
    ];
    let mut env = TestEnv::new(simulator, &teams).await;
    env.start_scheduler().await;
    let input = sample_head(&env, sample, lines);
    let job_id = format!("{}-crash-create", env.id);
    env.publish_job(&env.job(manifest(&job_id), &input)).await;

    let mut crashing = env.spawn_worker_process_with(&[("BATCHGATE_CRASH_POINT", "after_create")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = crashing.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            crashing.kill().ok();
            let job = env.store.job(&job_id).await.unwrap();
            let part = env.store.part(&job_id, 0).await.unwrap();
            panic!(
                "the worker did not abort at the crash point (was it built with --features \
                 batchgate-worker/crash-points?); job {job:?}, part {part:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !status.success(),
        "the worker should abort at the crash point"
    );
    assert_eq!(
        env.simulator().batches_created(),
        1,
        "the crashed worker created the batch"
    );
    let part = env.store.part(&job_id, 0).await.unwrap();
    assert_eq!(part["state"], "creating", "the batch id was never recorded");

    let mut successor = env.spawn_worker_process();
    let job = env
        .wait_for_state(
            &job_id,
            &["completed", "failed", "needs_review"],
            Duration::from_secs(60),
        )
        .await;
    successor.kill().ok();
    successor.wait().ok();
    assert_eq!(job["state"], "completed", "{job:?}");
    assert_eq!(
        env.simulator().batches_created(),
        1,
        "no second provider batch"
    );
    let (records, _) = ledger_records(&env.broker, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        records
            .iter()
            .filter(|record| record.job_id == job_id)
            .count(),
        1
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_batch_found_after_crash() {
    let manifest = |job_id: &str| chat_manifest(job_id, "data-eng", "CC-1001");
    crash_after_create(manifest, "catalog-enrichment.openai.jsonl", 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_batch_found_after_crash() {
    let manifest = |job_id: &str| Manifest {
        job_id: job_id.to_owned(),
        owner_team: "ml-eval".to_owned(),
        cost_center: "CC-3003".to_owned(),
        workload_class: "eval".to_owned(),
        purpose: "grade docstrings".to_owned(),
        provider: "anthropic".to_owned(),
        endpoint: "/v1/messages".to_owned(),
        model: "claude-haiku-4-5".to_owned(),
        completion_window: "24h".to_owned(),
        justification: None,
        expected_output: None,
    };
    crash_after_create(manifest, "docstring-review.anthropic.jsonl", 25).await;
}
