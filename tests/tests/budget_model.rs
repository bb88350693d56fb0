//! The budget model against the real Redis: concurrency from two schedulers
//! and 64 submitters, and a property test over random operation sequences.

use std::time::Duration;

use batchgate_shared::input::validate_input;
use batchgate_shared::message::{JobEvent, event};
use batchgate_shared::money::Micros;
use batchgate_shared::pricing::PriceTable;
use batchgate_shared::rebuild::{BilledRecord, rebuild_from};
use batchgate_shared::store::{BudgetCounters, Reservation};
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, chat_manifest, repo_root, sample_head};
use proptest::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_jobs_of_fresh_team_fit_budget() {
    // Learn the estimate of one job first, so the team's configured budget fits exactly ten.
    let probe = TestEnv::new(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "1.00")],
    )
    .await;
    let input = sample_head(&probe, "catalog-enrichment.openai.jsonl", 12);
    let prices = PriceTable::load(&repo_root().join("config/prices.toml")).unwrap();
    let manifest = chat_manifest("probe", "data-eng", "CC-1001");
    let price = prices.latest("openai", "gpt-6-luna").unwrap();
    let summary = validate_input(
        &input,
        &manifest,
        Some(price),
        &probe.config.providers.openai,
    )
    .unwrap();
    let estimate = price
        .estimate(summary.input_tokens, summary.max_output_tokens)
        .unwrap();
    let budget = Micros(estimate.0 * 10 + estimate.0 / 2);
    let input_text = std::fs::read(&input).unwrap();
    probe.cleanup().await;

    let mut env = TestEnv::new(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", &budget.to_string())],
    )
    .await;
    let input = env.dir.path().join("input.jsonl");
    std::fs::write(&input, input_text).unwrap();
    env.start_scheduler().await;
    env.start_scheduler().await;
    let job_ids: Vec<String> = (0..64)
        .map(|index| format!("{}-s{index}", env.id))
        .collect();
    let publishes = job_ids.iter().map(|job_id| {
        let job = env.job(chat_manifest(job_id, "data-eng", "CC-1001"), &input);
        let env = &env;
        async move { env.publish_job(&job).await }
    });
    futures::future::join_all(publishes).await;

    let mut accepted = 0;
    let mut month = String::new();
    for job_id in &job_ids {
        let job = env
            .wait_for_state(job_id, &["accepted", "rejected"], Duration::from_secs(90))
            .await;
        month = job["month"].clone();
        if job["state"] == "accepted" {
            accepted += 1;
        }
    }
    let counters = env.store.budget("data-eng", &month).await.unwrap().unwrap();
    assert_eq!(accepted, 10);
    assert_eq!(counters.limit, budget);
    assert_eq!(counters.reserved, Micros(estimate.0 * 10));
    env.cleanup().await;
}

#[derive(Debug, Clone)]
enum Operation {
    Reserve {
        job: usize,
        amount: i64,
    },
    Settle {
        job: usize,
        percent: i64,
    },
    Release {
        job: usize,
    },
    /// Redis loses the team's keys and `budget rebuild` restores them.
    Rebuild,
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        4 => (0usize..12, 1i64..400_000).prop_map(|(job, amount)| Operation::Reserve { job, amount }),
        3 => (0usize..12, 0i64..=100).prop_map(|(job, percent)| Operation::Settle { job, percent }),
        2 => (0usize..12).prop_map(|job| Operation::Release { job }),
        1 => Just(Operation::Rebuild),
    ]
}

/// Returns the body of a job event as the scheduler or worker publishes it.
fn event_body(name: &str, job_id: &str, detail: serde_json::Value) -> Vec<u8> {
    let mut event = JobEvent::new(name, job_id, "data-eng", name);
    event.detail = detail;
    serde_json::to_vec(&event).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn budget_invariants_hold(operations in prop::collection::vec(operation(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let env = TestEnv::new(SimulatorConfig::default(), &[("data-eng", "CC-1001", "1.00")]).await;
            let limit = Micros(1_000_000);
            // Jobs with a reservation that has not been settled, and their amounts.
            let mut reserved_amounts = std::collections::HashMap::new();
            let mut settled_total = Micros::ZERO;
            let mut settled = std::collections::HashSet::new();
            // What the services publish: the events and ledger records a rebuild reads.
            let mut events: Vec<Vec<u8>> = Vec::new();
            let mut records: Vec<BilledRecord> = Vec::new();
            for operation in &operations {
                let settlement = match operation {
                    Operation::Settle { job, percent } => Some((*job, *percent)),
                    Operation::Release { job } => Some((*job, 0)),
                    _ => None,
                };
                match operation {
                    Operation::Reserve { job, amount } => {
                        let job_id = format!("job-{job}");
                        let outcome = env.store.reserve("data-eng", "2026-12", &job_id, Micros(*amount), limit).await.unwrap();
                        if let Reservation::Reserved(_) = outcome {
                            assert!(!settled.contains(&job_id), "{job_id} reserved again after settling");
                            reserved_amounts.insert(job_id.clone(), *amount);
                            let detail = serde_json::json!({"month": "2026-12", "estimate_micros": amount});
                            events.push(event_body(event::ACCEPTED, &job_id, detail));
                        }
                    }
                    Operation::Settle { .. } | Operation::Release { .. } => {
                        let (job, percent) = settlement.unwrap();
                        let job_id = format!("job-{job}");
                        let reservation = reserved_amounts.remove(&job_id);
                        let actual = Micros(reservation.unwrap_or(0) * percent / 100);
                        let applied = env.store.settle("data-eng", "2026-12", &job_id, actual).await.unwrap();
                        if reservation.is_some() {
                            assert!(applied, "{job_id} had a reservation but did not settle");
                            assert!(settled.insert(job_id.clone()), "{job_id} settled twice");
                            settled_total = settled_total + actual;
                            if actual > Micros::ZERO {
                                records.push(BilledRecord {
                                    job_id: job_id.clone(),
                                    team: "data-eng".into(),
                                    accrual_period: "2026-12".into(),
                                    billed: actual,
                                });
                            }
                            events.push(event_body(event::COMPLETED, &job_id, serde_json::Value::Null));
                        }
                    }
                    Operation::Rebuild => {
                        let before = env.store.budget("data-eng", "2026-12").await.unwrap();
                        env.store.delete_prefix().await.unwrap();
                        let rebuilt = rebuild_from(&env.config, "2026-12", &events, &records);
                        let team = rebuilt.iter().find(|budget| budget.team == "data-eng").unwrap();
                        env.store.restore_budget("data-eng", "2026-12", team).await.unwrap();
                        let after = env.store.budget("data-eng", "2026-12").await.unwrap();
                        assert_eq!(after.unwrap(), before.unwrap_or(BudgetCounters { limit, ..Default::default() }));
                    }
                }
                if let Some(counters) = env.store.budget("data-eng", "2026-12").await.unwrap() {
                    assert!(counters.reserved + counters.spent <= counters.limit, "{counters:?} after {operation:?}");
                    assert!(counters.reserved.0 >= 0, "{counters:?}");
                }
            }
            let counters = env.store.budget("data-eng", "2026-12").await.unwrap().unwrap_or_default();
            assert_eq!(counters.spent, settled_total, "spent equals the sum of settled costs");
            env.cleanup().await;
        });
    }
}
