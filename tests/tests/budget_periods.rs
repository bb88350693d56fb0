//! Budget months follow the configured time zone at the month boundary.

use std::time::Duration;

use batchgate_scheduler::{Admission, Scheduler};
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, chat_manifest, sample_head};
use chrono::{DateTime, Utc};

/// 2026-11-30 23:59 in Los Angeles (UTC-8 in winter).
fn last_minute_of_november() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T07:59:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// 2026-12-01 00:01 in Los Angeles.
fn first_minute_of_december() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T08:01:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_count_to_local_month() {
    let env = TestEnv::new(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "25.00")],
    )
    .await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 3);
    let mut config = env.config.clone();
    config.budget_time_zone = "America/Los_Angeles".to_owned();

    for (suffix, clock, month) in [
        (
            "late",
            last_minute_of_november as fn() -> DateTime<Utc>,
            "2026-11",
        ),
        (
            "early",
            first_minute_of_december as fn() -> DateTime<Utc>,
            "2026-12",
        ),
    ] {
        let mut scheduler = Scheduler::connect(config.clone()).await.unwrap();
        scheduler.clock = clock;
        let job_id = format!("{}-{suffix}", env.id);
        let body =
            serde_json::to_vec(&env.job(chat_manifest(&job_id, "data-eng", "CC-1001"), &input))
                .unwrap();
        let admission = tokio::time::timeout(
            Duration::from_secs(30),
            scheduler.admit(&body, Some("guest")),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(
            matches!(admission, Admission::Accepted { .. }),
            "{admission:?}"
        );
        let job = env.store.job(&job_id).await.unwrap();
        assert_eq!(job["month"], month, "{suffix}");
        let reservations = env.store.reservations("data-eng", month).await.unwrap();
        assert!(
            reservations.contains_key(&job_id),
            "{suffix}: reserved against {month}"
        );
        scheduler.broker.close().await;
    }
    env.cleanup().await;
}
