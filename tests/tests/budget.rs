//! Budget reservations under concurrency, against the real Redis and broker.

use std::time::Duration;

use batchgate_shared::money::Micros;
use batchgate_shared::replay::read_stream;
use batchgate_shared::store::Reservation;
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, chat_manifest, sample_head};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_exceed_limit() {
    let env = TestEnv::new(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "1.00")],
    )
    .await;
    let limit = Micros(1_000_000);
    let amounts: Vec<Micros> = (0..32)
        .map(|index| Micros(45_000 + (index * 7_919) % 40_000))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, amount) in amounts.iter().copied().enumerate() {
        let store = env.store.clone();
        tasks.spawn(async move {
            let job_id = format!("job-{index}");
            (
                job_id.clone(),
                amount,
                store
                    .reserve("data-eng", "2026-12", &job_id, amount, limit)
                    .await
                    .unwrap(),
            )
        });
    }
    let mut accepted = Vec::new();
    let mut rejected = 0;
    while let Some(result) = tasks.join_next().await {
        let (job_id, amount, reservation) = result.unwrap();
        match reservation {
            Reservation::Reserved(counters) => {
                assert!(counters.reserved + counters.spent <= limit);
                accepted.push((job_id, amount));
            }
            Reservation::OverBudget(counters) => {
                assert!(counters.reserved + counters.spent + amount > limit);
                rejected += 1;
            }
            Reservation::AlreadyReserved(_) => panic!("every job id is new"),
        }
    }
    let counters = env
        .store
        .budget("data-eng", "2026-12")
        .await
        .unwrap()
        .unwrap();
    let accepted_total: Micros = accepted.iter().map(|(_, amount)| *amount).sum();
    assert_eq!(counters.reserved, accepted_total);
    assert!(counters.reserved <= limit);
    assert!(
        rejected > 0,
        "the amounts add up to more than the limit, so some must be rejected"
    );

    // A repeated reservation changes nothing.
    let (first_job, first_amount) = accepted[0].clone();
    let again = env
        .store
        .reserve("data-eng", "2026-12", &first_job, first_amount, limit)
        .await
        .unwrap();
    assert!(matches!(again, Reservation::AlreadyReserved(_)));
    assert_eq!(
        env.store
            .budget("data-eng", "2026-12")
            .await
            .unwrap()
            .unwrap()
            .reserved,
        accepted_total
    );

    // Settlement replaces each estimate with its actual cost, exactly once.
    let mut spent = Micros::ZERO;
    for (index, (job_id, amount)) in accepted.iter().enumerate() {
        let actual = Micros(amount.0 - 1_000 - index as i64);
        assert!(
            env.store
                .settle("data-eng", "2026-12", job_id, actual)
                .await
                .unwrap()
        );
        assert!(
            !env.store
                .settle("data-eng", "2026-12", job_id, actual)
                .await
                .unwrap(),
            "second settlement applied"
        );
        spent = spent + actual;
    }
    let counters = env
        .store
        .budget("data-eng", "2026-12")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counters.reserved, Micros::ZERO);
    assert_eq!(counters.spent, spent);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_admit_only_what_fits() {
    let mut env = TestEnv::new(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "25.00")],
    )
    .await;
    env.start_scheduler().await;
    env.start_scheduler().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 20);

    // Learn one job's estimate, then set a limit that fits exactly ten more.
    let probe = format!("{}-probe", env.id);
    env.publish_job(&env.job(chat_manifest(&probe, "data-eng", "CC-1001"), &input))
        .await;
    let job = env
        .wait_for_state(&probe, &["accepted"], Duration::from_secs(30))
        .await;
    let estimate = Micros(job["estimate_micros"].parse().unwrap());
    let month = job["month"].clone();
    env.store.release("data-eng", &month, &probe).await.unwrap();
    let limit = Micros(estimate.0 * 10 + estimate.0 / 2);
    let budget_key = format!("{}:budget:{{data-eng}}:{month}", env.id);
    let client = redis::Client::open(batchgate_tests::redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&budget_key)
        .arg("limit")
        .arg(limit.0)
        .query_async(&mut connection)
        .await
        .unwrap();

    let job_ids: Vec<String> = (0..32)
        .map(|index| format!("{}-c{index}", env.id))
        .collect();
    let publishes = job_ids.iter().map(|job_id| {
        let job = env.job(chat_manifest(job_id, "data-eng", "CC-1001"), &input);
        let env = &env;
        async move { env.publish_job(&job).await }
    });
    futures::future::join_all(publishes).await;

    let mut accepted = 0;
    for job_id in &job_ids {
        let job = env
            .wait_for_state(job_id, &["accepted", "rejected"], Duration::from_secs(60))
            .await;
        if job["state"] == "accepted" {
            accepted += 1;
        } else {
            assert!(job["reason"].contains("over budget"), "{job:?}");
        }
    }
    let counters = env.store.budget("data-eng", &month).await.unwrap().unwrap();
    assert_eq!(accepted, 10);
    assert_eq!(counters.reserved, Micros(estimate.0 * 10));
    assert!(counters.reserved + counters.spent <= counters.limit);

    // Ten of 10.5 estimates reserved crosses 50 % and 80 % once each, never 100 %.
    let events = read_stream(
        &env.broker,
        &env.broker.names.events_stream(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let thresholds: Vec<String> = events
        .iter()
        .filter_map(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
        .filter(|event| event["event"] == "budget.threshold" && event["team"] == "data-eng")
        .map(|event| event["threshold"].as_str().unwrap_or_default().to_owned())
        .collect();
    let count = |threshold: &str| thresholds.iter().filter(|seen| *seen == threshold).count();
    assert_eq!(count("0.500"), 1, "{thresholds:?}");
    assert_eq!(count("0.800"), 1, "{thresholds:?}");
    assert_eq!(count("1.000"), 0, "{thresholds:?}");
    env.cleanup().await;
}
