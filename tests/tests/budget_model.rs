//! The budget model against the real Redis: concurrency from two schedulers
//! and 64 submitters, and a property test over random operation sequences.

use std::time::Duration;

use batchgate_shared::input::validate_input;
use batchgate_shared::money::Micros;
use batchgate_shared::pricing::PriceTable;
use batchgate_shared::store::Reservation;
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
    Reserve { job: usize, amount: i64 },
    Settle { job: usize, percent: i64 },
    Release { job: usize },
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        (0usize..12, 1i64..400_000).prop_map(|(job, amount)| Operation::Reserve { job, amount }),
        (0usize..12, 0i64..=100).prop_map(|(job, percent)| Operation::Settle { job, percent }),
        (0usize..12).prop_map(|job| Operation::Release { job }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn budget_invariants_hold(operations in prop::collection::vec(operation(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let env = TestEnv::new(SimulatorConfig::default(), &[("data-eng", "CC-1001", "1.00")]).await;
            let limit = Micros(1_000_000);
            let mut reserved_amounts = std::collections::HashMap::new();
            let mut settled_total = Micros::ZERO;
            let mut settled = std::collections::HashSet::new();
            for operation in &operations {
                match operation {
                    Operation::Reserve { job, amount } => {
                        let job_id = format!("job-{job}");
                        let outcome = env.store.reserve("data-eng", "2026-12", &job_id, Micros(*amount), limit).await.unwrap();
                        if let Reservation::Reserved(_) = outcome {
                            reserved_amounts.insert(job_id, *amount);
                        }
                    }
                    Operation::Settle { job, percent } => {
                        let job_id = format!("job-{job}");
                        let actual = Micros(reserved_amounts.get(&job_id).copied().unwrap_or(0) * percent / 100);
                        if env.store.settle("data-eng", "2026-12", &job_id, actual).await.unwrap() {
                            assert!(settled.insert(job_id.clone()), "{job_id} settled twice");
                            settled_total = settled_total + actual;
                        }
                    }
                    Operation::Release { job } => {
                        let job_id = format!("job-{job}");
                        if env.store.release("data-eng", "2026-12", &job_id).await.unwrap() {
                            assert!(settled.insert(job_id.clone()), "{job_id} settled twice");
                        }
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
