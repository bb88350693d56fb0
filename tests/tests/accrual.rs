//! Budgets follow the accrual convention: a job's cost goes to the budget of
//! the month it accrues in, which under `completion` can be a later month
//! than the one whose budget reserved it. Runs against the real Redis.

use batchgate_shared::message::{JobEvent, event};
use batchgate_shared::money::Micros;
use batchgate_shared::rebuild::{BilledRecord, rebuild_from};
use batchgate_tests::TestEnv;
use batchgate_tests::batchgate_simulator::SimulatorConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_accrual_moves_spent_to_next_month() {
    let env = TestEnv::new(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "5.00")],
    )
    .await;
    let limit = Micros(5_000_000);
    // Reserved in November; the batch ended in December and billed 0.7 USD.
    env.store
        .reserve("data-eng", "2026-11", "job-1", Micros(1_000_000), limit)
        .await
        .unwrap();
    let charges = vec![("2026-12".to_owned(), Micros(700_000))];
    let settled = env
        .store
        .settle_split("data-eng", "2026-11", "job-1", &charges, Some(limit))
        .await
        .unwrap();
    assert!(settled);
    let again = env
        .store
        .settle_split("data-eng", "2026-11", "job-1", &charges, Some(limit))
        .await
        .unwrap();
    assert!(!again, "a job settles once");

    let november = env
        .store
        .budget("data-eng", "2026-11")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(november.reserved, Micros::ZERO);
    assert_eq!(november.spent, Micros::ZERO);
    let december = env
        .store
        .budget("data-eng", "2026-12")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(december.spent, Micros(700_000));
    assert_eq!(
        december.limit, limit,
        "a month without counters gets the configured limit"
    );

    // A rebuild from the streams puts the cost in the same months.
    let mut accepted = JobEvent::new(event::ACCEPTED, "job-1", "data-eng", "accepted");
    accepted.detail = serde_json::json!({"month": "2026-11", "estimate_micros": 1_000_000});
    let completed = JobEvent::new(event::COMPLETED, "job-1", "data-eng", "completed");
    let events = vec![
        serde_json::to_vec(&accepted).unwrap(),
        serde_json::to_vec(&completed).unwrap(),
    ];
    let records = vec![BilledRecord {
        job_id: "job-1".into(),
        team: "data-eng".into(),
        accrual_period: "2026-12".into(),
        billed: Micros(700_000),
    }];
    for (month, counters) in [("2026-11", november), ("2026-12", december)] {
        let rebuilt = rebuild_from(&env.config, month, &events, &records);
        assert_eq!(rebuilt[0].counters, counters, "{month}");
    }
    env.cleanup().await;
}
