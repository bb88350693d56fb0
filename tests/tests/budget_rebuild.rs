//! Redis loses everything: `batchgate budget rebuild` restores the counters
//! from the event and ledger streams.

use std::time::Duration;

use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, chat_manifest, sample_head};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_restores_counters_after_loss() {
    let simulator = SimulatorConfig {
        seed: 4,
        validating_ms: 100,
        in_progress_ms: 600,
        finalizing_ms: 100,
        failure_ratio: 0.1,
        ..SimulatorConfig::default()
    };
    let mut env = TestEnv::new(
        simulator,
        &[
            ("data-eng", "CC-1001", "25.00"),
            ("search", "CC-2002", "0.001"),
        ],
    )
    .await;
    env.start_scheduler().await;
    env.start_worker().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 30);

    // Two completed jobs, one over budget, and a limit change.
    let done: Vec<String> = (0..2)
        .map(|index| format!("{}-done{index}", env.id))
        .collect();
    for job_id in &done {
        env.publish_job(&env.job(chat_manifest(job_id, "data-eng", "CC-1001"), &input))
            .await;
    }
    let rejected = format!("{}-over", env.id);
    env.publish_job(&env.job(chat_manifest(&rejected, "search", "CC-2002"), &input))
        .await;
    let mut month = String::new();
    for job_id in &done {
        let job = env
            .wait_for_state(job_id, &["completed"], Duration::from_secs(60))
            .await;
        month = job["month"].clone();
    }
    env.wait_for_state(&rejected, &["rejected"], Duration::from_secs(60))
        .await;
    let set = env.cli(&[
        "budget", "set", "--team", "data-eng", "--month", &month, "--limit", "30", "--by", "test",
    ]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );

    // One job still in flight: its provider batch stays in finalizing for a minute.
    let faults = serde_json::json!({"finalizing_extra_ms": 60_000});
    reqwest::Client::new()
        .post(format!(
            "{}/_sim/next-batch-faults",
            env.simulator().base_url()
        ))
        .json(&faults)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let inflight = format!("{}-inflight", env.id);
    env.publish_job(&env.job(chat_manifest(&inflight, "data-eng", "CC-1001"), &input))
        .await;
    env.wait_for_state(&inflight, &["running"], Duration::from_secs(30))
        .await;
    let before = env.store.budget("data-eng", &month).await.unwrap().unwrap();
    let reservations_before = env.store.reservations("data-eng", &month).await.unwrap();
    assert!(
        before.reserved.0 > 0,
        "the in-flight job holds a reservation"
    );
    assert!(before.spent.0 > 0, "the completed jobs were billed");

    // Lose every budget key, then rebuild.
    let client = redis::Client::open(batchgate_tests::redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:budget*", env.id))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        env.store
            .budget("data-eng", &month)
            .await
            .unwrap()
            .is_none()
    );

    let rebuild = env.cli(&["budget", "rebuild", "--month", &month, "--idle-ms", "1500"]);
    assert!(
        rebuild.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    let after = env.store.budget("data-eng", &month).await.unwrap().unwrap();
    assert_eq!(
        after, before,
        "rebuilt counters equal the counters before the loss"
    );
    assert_eq!(
        env.store.reservations("data-eng", &month).await.unwrap(),
        reservations_before
    );
    let search = env.store.budget("search", &month).await.unwrap().unwrap();
    assert_eq!(
        search.reserved.0 + search.spent.0,
        0,
        "the rejected job holds nothing"
    );

    // Settling a job again after the rebuild changes nothing.
    assert!(
        !env.store
            .settle("data-eng", &month, &done[0], before.spent)
            .await
            .unwrap()
    );
    env.cleanup().await;
}
