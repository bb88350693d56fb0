//! Jobs held for review, against the real broker and Redis. Jobs above a
//! team's review threshold, or with an unpriced model, wait without a
//! reservation for a decision from `batchgate review`.

use std::time::Duration;

use batchgate_shared::broker::REASON_HEADER;
use batchgate_shared::manifest::Manifest;
use batchgate_shared::message::JobEvent;
use batchgate_shared::money::Micros;
use batchgate_shared::review::DECISION_ROUTING_KEY;
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, chat_manifest, sample_head};

const WAIT: Duration = Duration::from_secs(60);

fn reviewed_manifest(job_id: &str) -> Manifest {
    let mut manifest = chat_manifest(job_id, "data-eng", "CC-1001");
    manifest.justification = Some("quarterly catalog refresh agreed with the search team".into());
    manifest.expected_output =
        Some("one category per package, loaded into the catalog table".into());
    manifest
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn events(env: &TestEnv, job_id: &str) -> Vec<JobEvent> {
    env.store
        .history(job_id)
        .await
        .unwrap()
        .iter()
        .map(|json| serde_json::from_str(json).unwrap())
        .collect()
}

async fn reserved(env: &TestEnv, month: &str) -> Micros {
    env.store
        .budget("data-eng", month)
        .await
        .unwrap()
        .map(|counters| counters.reserved)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_job_runs_after_approval() {
    let mut env = TestEnv::with_team_settings(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "5.00")],
        "review_above_requests = 10",
    )
    .await;
    env.start_scheduler().await;
    env.start_worker().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 12);
    let small = sample_head(&env, "catalog-enrichment.openai.jsonl", 10);

    // At the threshold a job runs without review.
    let job_id = format!("{}-small", env.id);
    env.publish_job(&env.job(chat_manifest(&job_id, "data-eng", "CC-1001"), &small))
        .await;
    env.wait_for_state(&job_id, &["completed"], WAIT).await;

    let job_id = format!("{}-large", env.id);
    env.publish_job(&env.job(reviewed_manifest(&job_id), &input))
        .await;
    let held_job = env.wait_for_state(&job_id, &["held"], WAIT).await;
    assert!(
        held_job["hold_reasons"]
            .contains("12 requests are above team data-eng's review threshold of 10"),
        "{held_job:?}"
    );
    let month = held_job["month"].clone();
    assert_eq!(
        reserved(&env, &month).await,
        Micros::ZERO,
        "a held job reserves nothing"
    );
    assert!(
        !env.store
            .reservations("data-eng", &month)
            .await
            .unwrap()
            .contains_key(&job_id)
    );

    let listed = env.cli(&["review", "list", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["job_id"], job_id.as_str());
    assert_eq!(listed[0]["requests"], 12);
    assert!(
        listed[0]["justification"]
            .as_str()
            .unwrap()
            .contains("quarterly")
    );
    assert!(
        listed[0]["expected_output"]
            .as_str()
            .unwrap()
            .contains("catalog table")
    );
    let table = env.cli(&["review", "list"]);
    assert!(stdout(&table).contains(&job_id), "{}", stdout(&table));

    let approved = env.cli(&[
        "review",
        "approve",
        &job_id,
        "--by",
        "alice",
        "--note",
        "within plan",
    ]);
    assert!(
        approved.status.success(),
        "{}{}",
        stdout(&approved),
        stderr(&approved)
    );
    assert!(
        stdout(&approved).contains("approved by alice"),
        "{}",
        stdout(&approved)
    );
    let done = env.wait_for_state(&job_id, &["completed"], WAIT).await;
    assert!(
        done["billed_cost_micros"].parse::<i64>().unwrap() > 0,
        "{done:?}"
    );
    assert_eq!(reserved(&env, &month).await, Micros::ZERO, "settled");

    let history = events(&env, &job_id).await;
    let names: Vec<&str> = history.iter().map(|event| event.event.as_str()).collect();
    let position = |name: &str| names.iter().position(|event| *event == name);
    assert!(
        position("job.held") < position("job.review_approved"),
        "{names:?}"
    );
    assert!(
        position("job.review_approved") < position("job.accepted"),
        "{names:?}"
    );
    assert!(position("job.completed").is_some(), "{names:?}");
    let approval = &history[position("job.review_approved").unwrap()];
    assert_eq!(approval.detail["by"], "alice");
    assert_eq!(approval.detail["text"], "within plan");
    assert_eq!(approval.detail["amqp_user"], "guest");

    let listed = env.cli(&["review", "list"]);
    assert!(
        stdout(&listed).contains("no jobs are held"),
        "{}",
        stdout(&listed)
    );
    let again = env.cli(&["review", "approve", &job_id, "--by", "alice"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("is not held for review (state completed)"),
        "{}",
        stderr(&again)
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_job_without_justification_is_rejected() {
    let mut env = TestEnv::with_team_settings(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "5.00")],
        "review_above_usd = \"0.0001\"",
    )
    .await;
    env.start_scheduler().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 12);

    // A publisher that skips `submit` is rejected by the scheduler.
    let job_id = format!("{}-bare", env.id);
    env.publish_job(&env.job(chat_manifest(&job_id, "data-eng", "CC-1001"), &input))
        .await;
    let rejected = env.wait_for_state(&job_id, &["rejected"], WAIT).await;
    assert!(
        rejected["reason"]
            .contains("manifest field justification: required because the job needs review"),
        "{rejected:?}"
    );
    assert!(
        rejected["reason"].contains("above team data-eng's review threshold of 0.0001"),
        "{rejected:?}"
    );

    // `submit` rejects it before publishing and names the missing field.
    let manifest = env.dir.path().join("manifest.toml");
    let mut unjustified = chat_manifest(&format!("{}-cli", env.id), "data-eng", "CC-1001");
    unjustified.expected_output = Some("categories".into());
    std::fs::write(&manifest, toml::to_string(&unjustified).unwrap()).unwrap();
    let submitted = env.cli(&[
        "submit",
        "--manifest",
        manifest.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(submitted.status.code(), Some(2), "{}", stderr(&submitted));
    assert!(
        stderr(&submitted).contains("justification: required"),
        "{}",
        stderr(&submitted)
    );

    // With both fields, submit reports that the job waits for review.
    let justified = reviewed_manifest(&format!("{}-ok", env.id));
    std::fs::write(&manifest, toml::to_string(&justified).unwrap()).unwrap();
    let submitted = env.cli(&[
        "submit",
        "--manifest",
        manifest.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(submitted.status.success(), "{}", stderr(&submitted));
    assert!(
        stderr(&submitted).contains("will be held for review"),
        "{}",
        stderr(&submitted)
    );
    env.wait_for_state(&justified.job_id, &["held"], WAIT).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_and_cancellation_end_held_jobs() {
    // Every job is held by cost, and the budget is below one job's estimate.
    let mut env = TestEnv::with_team_settings(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "0.0001")],
        "review_above_usd = \"0.00001\"",
    )
    .await;
    env.start_scheduler().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 12);
    let ids: Vec<String> = ["reject", "budget", "cancel"]
        .iter()
        .map(|name| format!("{}-{name}", env.id))
        .collect();
    for job_id in &ids {
        env.publish_job(&env.job(reviewed_manifest(job_id), &input))
            .await;
    }
    for job_id in &ids {
        env.wait_for_state(job_id, &["held"], WAIT).await;
    }

    let empty = env.cli(&["review", "reject", &ids[0], "--by", "bob", "--reason", " "]);
    assert_eq!(empty.status.code(), Some(2), "{}", stderr(&empty));
    let rejected = env.cli(&[
        "review",
        "reject",
        &ids[0],
        "--by",
        "bob",
        "--reason",
        "use the 10 % sample first",
    ]);
    assert!(
        rejected.status.success(),
        "{}{}",
        stdout(&rejected),
        stderr(&rejected)
    );
    let job = env.wait_for_state(&ids[0], &["rejected"], WAIT).await;
    assert_eq!(
        job["reason"],
        "rejected in review by bob: use the 10 % sample first"
    );
    let history = events(&env, &ids[0]).await;
    assert!(
        history
            .iter()
            .any(|event| event.event == "job.review_rejected" && event.detail["by"] == "bob")
    );

    // Approval does not lift the budget: the job is rejected as over budget.
    let approved = env.cli(&["review", "approve", &ids[1], "--by", "carol"]);
    assert_eq!(approved.status.code(), Some(1), "{}", stdout(&approved));
    assert!(
        stdout(&approved).contains("approved by carol, but the job was rejected: over budget"),
        "{}",
        stdout(&approved)
    );
    let job = env.wait_for_state(&ids[1], &["rejected"], WAIT).await;
    assert!(job["reason"].starts_with("over budget"), "{job:?}");
    assert_eq!(reserved(&env, &job["month"]).await, Micros::ZERO);

    let cancelled = env.cli(&["cancel", &ids[2], "--by", "dave"]);
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    let job = env.wait_for_state(&ids[2], &["cancelled"], WAIT).await;
    assert!(
        job["reason"].contains("cancelled by dave while held"),
        "{job:?}"
    );
    let late = env.cli(&["review", "approve", &ids[2], "--by", "carol"]);
    assert_eq!(late.status.code(), Some(2));
    assert!(env.store.held_jobs().await.unwrap().is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpriced_model_waits_for_a_price() {
    let mut env = TestEnv::new(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "5.00")],
    )
    .await;
    let prices = env.use_price_table_copy();
    env.start_scheduler().await;
    env.start_worker().await;
    // The sample's requests, sent to a model the price table does not know.
    let text: String =
        std::fs::read_to_string(sample_head(&env, "catalog-enrichment.openai.jsonl", 6))
            .unwrap()
            .lines()
            .map(|line| {
                let mut request: serde_json::Value = serde_json::from_str(line).unwrap();
                request["body"]["model"] = "gpt-6-nova".into();
                format!("{request}\n")
            })
            .collect();
    let input = env.dir.path().join("nova.jsonl");
    std::fs::write(&input, text).unwrap();
    let job_id = format!("{}-nova", env.id);
    let mut manifest = reviewed_manifest(&job_id);
    manifest.model = "gpt-6-nova".into();
    env.publish_job(&env.job(manifest, &input)).await;
    let held_job = env.wait_for_state(&job_id, &["held"], WAIT).await;
    assert!(
        held_job["hold_reasons"].contains("gpt-6-nova is not in the price table"),
        "{held_job:?}"
    );
    assert!(!held_job.contains_key("estimate_micros"), "{held_job:?}");
    assert_eq!(reserved(&env, &held_job["month"]).await, Micros::ZERO);

    let still_held = env.cli(&["review", "approve", &job_id, "--by", "erin"]);
    assert_eq!(still_held.status.code(), Some(1), "{}", stdout(&still_held));
    assert!(
        stdout(&still_held).contains("still missing from the price table"),
        "{}",
        stdout(&still_held)
    );
    env.wait_for_state(&job_id, &["held"], WAIT).await;
    let listed = env.cli(&["review", "list", "--json"]);
    assert!(stdout(&listed).contains(&job_id), "the job stays listed");

    let mut table = std::fs::read_to_string(&prices).unwrap();
    table.push_str(
        "\n[[price]]\nprovider = \"openai\"\nmodel = \"gpt-6-nova\"\neffective_from = \"2026-01-01\"\n\
         currency = \"USD\"\nsource = \"test\"\ntokenizer = \"o200k_base\"\n\
         standard = { input = \"0.20\", output = \"1.00\" }\nbatch = { input = \"0.10\", output = \"0.50\" }\n",
    );
    std::fs::write(&prices, table).unwrap();
    let approved = env.cli(&["review", "approve", &job_id, "--by", "erin"]);
    assert!(
        approved.status.success(),
        "{}{}",
        stdout(&approved),
        stderr(&approved)
    );
    let done = env.wait_for_state(&job_id, &["completed"], WAIT).await;
    assert!(
        done["billed_cost_micros"].parse::<i64>().unwrap() > 0,
        "{done:?}"
    );
    env.cleanup().await;
}

/// Reads every message of the dead-letter queue as (reason, body).
async fn dead_letters(env: &TestEnv) -> Vec<(String, String)> {
    use lapin::options::BasicGetOptions;
    let channel = env.broker.channel().await.unwrap();
    let queue = env.broker.names.dead_queue();
    let mut letters = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let reason = message
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(REASON_HEADER).cloned())
            .map(|value| match value {
                lapin::types::AMQPValue::LongString(text) => text.to_string(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&message.delivery.data).into_owned();
        letters.push((reason, body));
    }
    letters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_decisions_are_dead_lettered() {
    let mut env = TestEnv::with_team_settings(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "5.00")],
        "review_above_requests = 10",
    )
    .await;
    env.start_scheduler().await;
    let exchange = env.broker.names.jobs_exchange();
    let properties = || lapin::BasicProperties::default().with_user_id("guest".into());
    env.broker
        .publish_bytes(&exchange, DECISION_ROUTING_KEY, b"approve it", properties())
        .await
        .unwrap();
    let future_version = serde_json::json!({"schema_version": 9, "decision_id": "d", "job_id": "j",
        "verdict": "approve", "by": "alice", "at": "2026-12-04T00:00:00Z"});
    env.broker
        .publish_bytes(
            &exchange,
            DECISION_ROUTING_KEY,
            future_version.to_string().as_bytes(),
            properties(),
        )
        .await
        .unwrap();

    // The scheduler keeps working: a held job is still approved afterwards.
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 12);
    let job_id = format!("{}-after", env.id);
    env.publish_job(&env.job(reviewed_manifest(&job_id), &input))
        .await;
    env.wait_for_state(&job_id, &["held"], WAIT).await;
    let approved = env.cli(&["review", "approve", &job_id, "--by", "alice"]);
    assert!(approved.status.success(), "{}", stderr(&approved));

    let letters = dead_letters(&env).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters[0].0.starts_with("invalid review decision"),
        "{letters:?}"
    );
    assert_eq!(letters[0].1, "approve it", "the body is kept as it was");
    assert!(
        letters[1]
            .0
            .contains("unsupported review decision schema_version 9"),
        "{letters:?}"
    );
    env.cleanup().await;
}
