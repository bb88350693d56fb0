//! The reaper releases reservations whose job is gone, and only those.

use batchgate_shared::money::Micros;
use batchgate_shared::period::Periods;
use batchgate_tests::TestEnv;
use batchgate_tests::batchgate_simulator::SimulatorConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaper_releases_orphaned_reservations() {
    let env = TestEnv::new(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "10.00")],
    )
    .await;
    let month = Periods::default().containing(chrono::Utc::now()).month;
    let limit = Micros(10_000_000);
    for (job_id, amount) in [
        ("ghost", 100_000),
        ("live", 200_000),
        ("ended", 300_000),
        ("done", 400_000),
    ] {
        env.store
            .reserve("data-eng", &month, job_id, Micros(amount), limit)
            .await
            .unwrap();
    }
    env.store
        .set_job_fields("live", &[("state", "running".to_owned())])
        .await
        .unwrap();
    env.store
        .set_job_fields("ended", &[("state", "failed".to_owned())])
        .await
        .unwrap();
    env.store
        .set_job_fields(
            "done",
            &[
                ("state", "completed".to_owned()),
                ("billed_cost_micros", "123456".to_owned()),
            ],
        )
        .await
        .unwrap();

    // Younger than the minimum age: nothing happens.
    let output = env.cli(&["budget", "reap", "--max-age-secs", "3600"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        env.store
            .budget("data-eng", &month)
            .await
            .unwrap()
            .unwrap()
            .reserved,
        Micros(1_000_000)
    );

    let output = env.cli(&["budget", "reap", "--max-age-secs", "0"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("released 3 reservations"), "{stdout}");
    let counters = env.store.budget("data-eng", &month).await.unwrap().unwrap();
    assert_eq!(
        counters.reserved,
        Micros(200_000),
        "only the running job keeps its reservation"
    );
    assert_eq!(
        counters.spent,
        Micros(123_456),
        "the completed job is settled with its billed cost"
    );
    let reservations = env.store.reservations("data-eng", &month).await.unwrap();
    assert_eq!(reservations.keys().collect::<Vec<_>>(), ["live"]);

    let history = env.store.budget_history("data-eng", &month).await.unwrap();
    let released: Vec<serde_json::Value> = history
        .iter()
        .map(|json| serde_json::from_str(json).unwrap())
        .collect();
    assert_eq!(released.len(), 3);
    assert!(
        released
            .iter()
            .all(|event| event["event"] == "budget.reservation_released")
    );
    assert!(
        released
            .iter()
            .any(|event| event["job_id"] == "ghost"
                && event["reason"] == "the job record is missing")
    );

    // A second run finds nothing more to release.
    let again = env.cli(&["budget", "reap", "--max-age-secs", "0"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("released 0 reservations"));
    env.cleanup().await;
}
