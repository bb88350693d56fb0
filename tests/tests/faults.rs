//! Provider faults injected by the simulator, one test per fault. Each test
//! checks the job's final state, its ledger records (or their absence) and the
//! team's budget counters after settlement.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use batchgate_shared::manifest::Manifest;
use batchgate_shared::message::LedgerRecord;
use batchgate_shared::money::Micros;
use batchgate_shared::replay::ledger_records;
use batchgate_shared::store::BudgetCounters;
use batchgate_tests::batchgate_simulator::{FaultProfile, SimulatorConfig};
use batchgate_tests::{TEST_API_KEY, TestEnv, chat_manifest, sample_head};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

const CHAT_SAMPLE: &str = "catalog-enrichment.openai.jsonl";
const MESSAGES_SAMPLE: &str = "docstring-review.anthropic.jsonl";
const CHAT_TEAM: (&str, &str, &str) = ("data-eng", "CC-1001", "25.00");
const MESSAGES_TEAM: (&str, &str, &str) = ("ml-eval", "CC-3003", "25.00");
const END_STATES: [&str; 5] = [
    "completed",
    "rejected",
    "failed",
    "cancelled",
    "needs_review",
];
const JOB_TIMEOUT: Duration = Duration::from_secs(90);
/// Time without a new message after which a ledger replay stops.
const LEDGER_IDLE: Duration = Duration::from_secs(2);

/// Builds simulator settings with `faults` whose batches end about 1.2 s after creation.
fn fast_simulator(faults: FaultProfile) -> SimulatorConfig {
    SimulatorConfig {
        seed: 17,
        validating_ms: 200,
        in_progress_ms: 800,
        finalizing_ms: 200,
        faults,
        ..SimulatorConfig::default()
    }
}

fn messages_manifest(job_id: &str) -> Manifest {
    Manifest {
        job_id: job_id.to_owned(),
        owner_team: MESSAGES_TEAM.0.to_owned(),
        cost_center: MESSAGES_TEAM.1.to_owned(),
        workload_class: "eval".to_owned(),
        purpose: "grade standard library docstrings".to_owned(),
        provider: "anthropic".to_owned(),
        endpoint: "/v1/messages".to_owned(),
        model: "claude-haiku-4-5".to_owned(),
        completion_window: "24h".to_owned(),
        justification: None,
        expected_output: None,
    }
}

/// Publishes a chat job over the first `lines` lines of the chat sample and
/// returns its job id.
async fn publish_chat_job(env: &TestEnv, name: &str, lines: usize) -> String {
    let input = sample_head(env, CHAT_SAMPLE, lines);
    let job_id = format!("{}-{name}", env.id);
    let manifest = chat_manifest(&job_id, CHAT_TEAM.0, CHAT_TEAM.1);
    env.publish_job(&env.job(manifest, &input)).await;
    job_id
}

/// Publishes an Anthropic Messages job over the first `lines` lines of the
/// Messages sample and returns its job id.
async fn publish_messages_job(env: &TestEnv, name: &str, lines: usize) -> String {
    let input = sample_head(env, MESSAGES_SAMPLE, lines);
    let job_id = format!("{}-{name}", env.id);
    env.publish_job(&env.job(messages_manifest(&job_id), &input))
        .await;
    job_id
}

async fn wait_for_end(env: &TestEnv, job_id: &str) -> HashMap<String, String> {
    env.wait_for_state(job_id, &END_STATES, JOB_TIMEOUT).await
}

/// Replays the ledger and keeps the records of one job.
async fn job_records(env: &TestEnv, job_id: &str) -> Vec<LedgerRecord> {
    let (records, _) = ledger_records(&env.broker, LEDGER_IDLE)
        .await
        .expect("replay the ledger");
    records
        .into_iter()
        .filter(|record| record.job_id == job_id)
        .collect()
}

/// Reads the budget counters of the job's team in the job's budget month.
async fn job_budget(env: &TestEnv, team: &str, job: &HashMap<String, String>) -> BudgetCounters {
    env.store
        .budget(team, &job["month"])
        .await
        .expect("read the budget")
        .expect("the team has a budget for the job's month")
}

fn micros_field(record: &HashMap<String, String>, field: &str) -> Micros {
    let value = record
        .get(field)
        .unwrap_or_else(|| panic!("field {field} missing from {record:?}"));
    Micros(
        value
            .parse()
            .unwrap_or_else(|_| panic!("field {field} is not an integer: {value:?}")),
    )
}

fn simulator_url(env: &TestEnv, path: &str) -> String {
    format!("{}{path}", env.simulator().base_url())
}

/// Returns the simulator's `GET /_sim/stats` counters.
async fn simulator_stats(env: &TestEnv) -> Value {
    reqwest::get(simulator_url(env, "/_sim/stats"))
        .await
        .expect("request simulator stats")
        .json()
        .await
        .expect("simulator stats are JSON")
}

/// Queues a fault profile for the next batch that the simulator creates.
async fn queue_next_batch_faults(env: &TestEnv, profile: Value) {
    let response = reqwest::Client::new()
        .post(simulator_url(env, "/_sim/next-batch-faults"))
        .json(&profile)
        .send()
        .await
        .expect("queue a per-batch fault profile");
    assert!(
        response.status().is_success(),
        "next-batch-faults returned {}",
        response.status()
    );
}

async fn openai_get(env: &TestEnv, path: &str) -> reqwest::Response {
    let response = reqwest::Client::new()
        .get(simulator_url(env, path))
        .bearer_auth(TEST_API_KEY)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {path} failed: {error}"));
    assert!(
        response.status().is_success(),
        "GET {path} returned {}",
        response.status()
    );
    response
}

async fn openai_batch(env: &TestEnv, batch_id: &str) -> Value {
    openai_get(env, &format!("/v1/batches/{batch_id}"))
        .await
        .json()
        .await
        .expect("batch object is JSON")
}

/// Downloads the output file of an OpenAI batch, which must have one.
async fn openai_output_file(env: &TestEnv, batch_id: &str) -> String {
    let batch = openai_batch(env, batch_id).await;
    let file_id = batch["output_file_id"]
        .as_str()
        .unwrap_or_else(|| panic!("batch {batch_id} has no output file: {batch}"));
    openai_get(env, &format!("/v1/files/{file_id}/content"))
        .await
        .text()
        .await
        .expect("output file is text")
}

/// Downloads the results of an ended Anthropic message batch.
async fn anthropic_results(env: &TestEnv, batch_id: &str) -> String {
    let path = format!("/v1/messages/batches/{batch_id}/results");
    let response = reqwest::Client::new()
        .get(simulator_url(env, &path))
        .header("x-api-key", TEST_API_KEY)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {path} failed: {error}"));
    assert!(
        response.status().is_success(),
        "GET {path} returned {}",
        response.status()
    );
    response.text().await.expect("results are text")
}

/// Returns the batch rates of the newest price table entry for `model`, in
/// micro-USD per token (which equals the table's USD per million tokens).
fn batch_rates(model: &str) -> HashMap<String, Decimal> {
    let path = batchgate_tests::repo_root().join("config/prices.toml");
    let text = std::fs::read_to_string(&path).expect("read the price table");
    let table: toml::Table = toml::from_str(&text).expect("price table is TOML");
    let entries = table["price"].as_array().expect("price entries");
    let newest = entries
        .iter()
        .filter(|entry| entry["model"].as_str() == Some(model))
        .max_by_key(|entry| entry["effective_from"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no price entry for {model}"));
    let rates = newest["batch"].as_table().expect("batch rates");
    rates
        .iter()
        .map(|(class, rate)| {
            let rate = rate.as_str().expect("rates are decimal strings");
            (
                class.clone(),
                Decimal::from_str(rate).expect("decimal rate"),
            )
        })
        .collect()
}

/// Token totals and the expected billed cost of succeeded result lines,
/// counted once per `custom_id`.
#[derive(Debug, Default)]
struct PricedResults {
    lines: u64,
    distinct_succeeded: u64,
    input: u64,
    cached_input: u64,
    cache_write: u64,
    cache_write_1h: u64,
    output: u64,
    billed_micros: Decimal,
}

fn number(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// Prices the succeeded lines of an OpenAI chat output file. Cached tokens
/// are inside `prompt_tokens`, so they are taken out of the plain input.
fn price_openai_output(output: &str, model: &str) -> PricedResults {
    let mut priced = PricedResults::default();
    let mut seen = HashSet::new();
    for line in output.lines() {
        priced.lines += 1;
        let line: Value = serde_json::from_str(line).expect("output line is JSON");
        let custom_id = line["custom_id"].as_str().expect("custom_id").to_owned();
        if line["response"]["status_code"] != 200 || !seen.insert(custom_id) {
            continue;
        }
        let usage = &line["response"]["body"]["usage"];
        let cached = number(&usage["prompt_tokens_details"]["cached_tokens"]);
        priced.distinct_succeeded += 1;
        priced.input += number(&usage["prompt_tokens"]) - cached;
        priced.cached_input += cached;
        priced.output += number(&usage["completion_tokens"]);
    }
    let rates = batch_rates(model);
    let mut cost = Decimal::from(priced.input) * rates["input"]
        + Decimal::from(priced.output) * rates["output"];
    if priced.cached_input > 0 {
        cost += Decimal::from(priced.cached_input) * rates["cached_input"];
    }
    priced.billed_micros = cost.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    priced
}

/// Prices the succeeded lines of Anthropic results. Anthropic reports its
/// token classes separately, so none is subtracted from another.
fn price_anthropic_results(results: &str, model: &str) -> PricedResults {
    let mut priced = PricedResults::default();
    let mut seen = HashSet::new();
    for line in results.lines() {
        priced.lines += 1;
        let line: Value = serde_json::from_str(line).expect("result line is JSON");
        let custom_id = line["custom_id"].as_str().expect("custom_id").to_owned();
        if line["result"]["type"] != "succeeded" || !seen.insert(custom_id) {
            continue;
        }
        let usage = &line["result"]["message"]["usage"];
        priced.distinct_succeeded += 1;
        priced.input += number(&usage["input_tokens"]);
        priced.cached_input += number(&usage["cache_read_input_tokens"]);
        priced.cache_write += number(&usage["cache_creation"]["ephemeral_5m_input_tokens"]);
        priced.cache_write_1h += number(&usage["cache_creation"]["ephemeral_1h_input_tokens"]);
        priced.output += number(&usage["output_tokens"]);
    }
    let rates = batch_rates(model);
    let cost = Decimal::from(priced.input) * rates["input"]
        + Decimal::from(priced.cached_input) * rates["cached_input"]
        + Decimal::from(priced.cache_write) * rates["cache_write"]
        + Decimal::from(priced.cache_write_1h) * rates["cache_write_1h"]
        + Decimal::from(priced.output) * rates["output"];
    priced.billed_micros = cost.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    priced
}

/// Returns the `custom_id` of each JSONL line, in file order.
fn custom_ids(jsonl: &str) -> Vec<String> {
    jsonl
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).expect("line is JSON");
            line["custom_id"].as_str().expect("custom_id").to_owned()
        })
        .collect()
}

/// Waits until part 0 of the job records its provider batch id and returns it.
async fn wait_for_batch_id(env: &TestEnv, job_id: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let part = env.store.part(job_id, 0).await.expect("read part 0");
        if let Some(batch_id) = part.get("provider_batch_id") {
            return batch_id.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no provider batch recorded in {timeout:?}: {part:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the job to end while sampling part 0's `provider_status`, and
/// returns the job record with every status seen.
async fn wait_recording_statuses(
    env: &TestEnv,
    job_id: &str,
) -> (HashMap<String, String>, HashSet<String>) {
    let deadline = Instant::now() + JOB_TIMEOUT;
    let mut statuses = HashSet::new();
    loop {
        let part = env.store.part(job_id, 0).await.expect("read part 0");
        if let Some(status) = part.get("provider_status") {
            statuses.insert(status.clone());
        }
        let job = env.store.job(job_id).await.expect("read the job");
        if job
            .get("state")
            .is_some_and(|state| END_STATES.contains(&state.as_str()))
        {
            return (job, statuses);
        }
        assert!(
            Instant::now() < deadline,
            "job {job_id} did not end in {JOB_TIMEOUT:?}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// NOTE: the simulator sends the 429 of a rate-limited upload before reading the
// streamed body, then closes the connection. The worker's body write fails with a
// broken pipe, so it never reads the 429 and retries after its own backoff delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_create_waits_retry_after() {
    let faults = FaultProfile {
        rate_limit_requests: 2,
        retry_after_secs: 2,
        ..FaultProfile::default()
    };
    let mut env = TestEnv::new(fast_simulator(faults), &[CHAT_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let started = Instant::now();
    let job_id = publish_chat_job(&env, "rate-limit", 20).await;

    // The first two calls (the upload and its first retry) get 429 with
    // `Retry-After: 2`, so the batch cannot exist before 2 × 2 s have passed.
    let batch_id = wait_for_batch_id(&env, &job_id, JOB_TIMEOUT).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "the batch was created after {waited:?}, before two Retry-After waits of 2 s"
    );
    let stats = simulator_stats(&env).await;
    assert_eq!(stats["faults"]["rate_limited_responses"], 2, "{stats}");
    assert_eq!(stats["batches_created"], 1, "{stats}");

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "completed", "{job:?}");
    let records = job_records(&env, &job_id).await;
    assert_eq!(records.len(), 1, "one ledger record: {records:?}");
    let record = &records[0];
    assert_eq!(record.provider_batch_id, batch_id);
    assert_eq!(record.requests.total, 20);
    assert_eq!(record.requests.succeeded, 20);
    assert!(record.billed_cost_micros > Micros::ZERO);
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, record.billed_cost_micros);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_polls_wait_retry_after() {
    let mut env = TestEnv::new(fast_simulator(FaultProfile::default()), &[CHAT_TEAM]).await;
    // The first two calls that name the batch, its first two polls, get 429
    // with `Retry-After: 3`. The create call is not affected.
    queue_next_batch_faults(
        &env,
        json!({"rate_limit_requests": 2, "retry_after_secs": 3}),
    )
    .await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_chat_job(&env, "poll-rate-limit", 20).await;

    let batch_id = wait_for_batch_id(&env, &job_id, JOB_TIMEOUT).await;
    let created = Instant::now();
    let job = wait_for_end(&env, &job_id).await;
    let polled_for = created.elapsed();
    assert_eq!(job["state"], "completed", "{job:?}");
    assert!(
        polled_for >= Duration::from_secs(6),
        "the job ended {polled_for:?} after its batch was created, before two Retry-After waits of 3 s"
    );
    let stats = simulator_stats(&env).await;
    assert_eq!(stats["faults"]["rate_limited_responses"], 2, "{stats}");
    assert_eq!(stats["batches_created"], 1, "{stats}");

    let records = job_records(&env, &job_id).await;
    assert_eq!(records.len(), 1, "one ledger record: {records:?}");
    let record = &records[0];
    assert_eq!(record.provider_batch_id, batch_id);
    assert_eq!(record.requests.total, 20);
    assert_eq!(record.requests.succeeded, 20);
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, record.billed_cost_micros);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_fail_job_and_release() {
    let faults = FaultProfile {
        server_error_requests: 1_000,
        server_error_status: 503,
        ..FaultProfile::default()
    };
    let mut env = TestEnv::new(fast_simulator(faults), &[CHAT_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_chat_job(&env, "server-errors", 20).await;

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "failed", "{job:?}");
    let reason = &job["reason"];
    assert!(
        reason.contains("cannot create the provider batch"),
        "{reason}"
    );
    assert!(reason.contains("HTTP 503"), "{reason}");
    let part = env.store.part(&job_id, 0).await.unwrap();
    assert_eq!(part["state"], "failed", "{part:?}");
    assert!(
        !part.contains_key("provider_batch_id"),
        "no batch was created: {part:?}"
    );

    // The harness sets max_attempts = 3, and the upload is the only call made.
    let stats = simulator_stats(&env).await;
    assert_eq!(stats["faults"]["server_error_responses"], 3, "{stats}");
    assert_eq!(stats["files_uploaded"], 0, "{stats}");
    assert_eq!(stats["batches_created"], 0, "{stats}");

    let records = job_records(&env, &job_id).await;
    assert!(records.is_empty(), "no ledger record: {records:?}");
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, Micros::ZERO);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_finalizing_batch_still_completes() {
    let faults = FaultProfile {
        finalizing_extra_ms: 3_000,
        ..FaultProfile::default()
    };
    let mut env = TestEnv::new(fast_simulator(faults), &[CHAT_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_chat_job(&env, "finalizing", 20).await;

    let (job, statuses) = wait_recording_statuses(&env, &job_id).await;
    assert_eq!(job["state"], "completed", "{job:?}");
    assert!(
        statuses.contains("finalizing"),
        "the worker polled the batch while it was finalizing: {statuses:?}"
    );
    // Timestamps are whole Unix seconds, and finalizing lasts 0.2 s + 3 s.
    let part = env.store.part(&job_id, 0).await.unwrap();
    let batch = openai_batch(&env, &part["provider_batch_id"]).await;
    let finalizing_at = batch["finalizing_at"].as_i64().expect("finalizing_at");
    let completed_at = batch["completed_at"].as_i64().expect("completed_at");
    assert!(
        completed_at - finalizing_at >= 3,
        "the batch finalized for at least 3 s: {batch}"
    );

    let records = job_records(&env, &job_id).await;
    assert_eq!(records.len(), 1, "one ledger record: {records:?}");
    let record = &records[0];
    assert_eq!(record.provider_status, "completed");
    assert_eq!(record.requests.total, 20);
    assert_eq!(record.requests.succeeded, 20);
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, record.billed_cost_micros);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_without_output_file_bills_nothing() {
    let faults = FaultProfile {
        all_requests_fail: true,
        ..FaultProfile::default()
    };
    let mut env = TestEnv::new(fast_simulator(faults), &[CHAT_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_chat_job(&env, "no-output", 20).await;

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "completed", "{job:?}");
    let part = env.store.part(&job_id, 0).await.unwrap();
    let batch = openai_batch(&env, &part["provider_batch_id"]).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert!(batch["output_file_id"].is_null(), "{batch}");

    let records = job_records(&env, &job_id).await;
    assert_eq!(records.len(), 1, "one ledger record: {records:?}");
    let record = &records[0];
    assert_eq!(record.requests.total, 20);
    assert_eq!(record.requests.failed, 20);
    assert_eq!(record.requests.succeeded, 0);
    assert_eq!(record.billed_cost_micros, Micros::ZERO);
    assert_eq!(micros_field(&job, "billed_cost_micros"), Micros::ZERO);
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, Micros::ZERO);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_error_file_id_is_skipped() {
    let faults = FaultProfile {
        empty_error_file_id: true,
        ..FaultProfile::default()
    };
    let mut env = TestEnv::new(fast_simulator(faults), &[CHAT_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_chat_job(&env, "empty-error-file", 20).await;

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "completed", "{job:?}");
    let part = env.store.part(&job_id, 0).await.unwrap();
    let batch = openai_batch(&env, &part["provider_batch_id"]).await;
    assert_eq!(batch["error_file_id"], "", "{batch}");

    let records = job_records(&env, &job_id).await;
    assert_eq!(records.len(), 1, "one ledger record: {records:?}");
    let record = &records[0];
    assert_eq!(record.requests.total, 20);
    assert_eq!(record.requests.succeeded, 20);
    assert_eq!(record.requests.failed, 0);
    assert!(record.billed_cost_micros > Micros::ZERO);
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, record.billed_cost_micros);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_limit_failure_defers_and_recreates() {
    let teams = [CHAT_TEAM];
    let simulator = fast_simulator(FaultProfile::default());
    let mut env = TestEnv::with_settings(simulator, &teams, "token_limit_retry_secs = 1").await;
    queue_next_batch_faults(&env, json!({"token_limit_exceeded": true})).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_chat_job(&env, "token-limit", 20).await;

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "completed", "{job:?}");
    let part = env.store.part(&job_id, 0).await.unwrap();
    assert_eq!(part["state"], "ended", "{part:?}");
    assert_eq!(part["deferrals"], "1", "{part:?}");
    let first_batch_id = part["previous_batch_ids"].clone();
    let second_batch_id = part["provider_batch_id"].clone();
    assert_ne!(first_batch_id, second_batch_id);
    let first_batch = openai_batch(&env, &first_batch_id).await;
    assert_eq!(first_batch["status"], "failed", "{first_batch}");
    assert_eq!(
        first_batch["errors"]["data"][0]["code"], "token_limit_exceeded",
        "{first_batch}"
    );
    let stats = simulator_stats(&env).await;
    assert_eq!(stats["openai"]["batches_created"], 2, "{stats}");

    let records = job_records(&env, &job_id).await;
    assert_eq!(records.len(), 1, "one ledger record: {records:?}");
    let record = &records[0];
    assert_eq!(
        record.provider_batch_id, second_batch_id,
        "the failed batch {first_batch_id} is never billed"
    );
    assert_eq!(record.requests.total, 20);
    assert_eq!(record.requests.succeeded, 20);
    assert_eq!(
        micros_field(&job, "billed_cost_micros"),
        record.billed_cost_micros
    );
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, record.billed_cost_micros);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_result_line_needs_review() {
    let faults = FaultProfile {
        malformed_line_at: Some(5),
        ..FaultProfile::default()
    };
    let mut env = TestEnv::new(fast_simulator(faults), &[CHAT_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_chat_job(&env, "malformed", 20).await;

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "needs_review", "{job:?}");
    assert!(job["reason"].contains("line 5:"), "{}", job["reason"]);
    let part = env.store.part(&job_id, 0).await.unwrap();
    assert_eq!(part["state"], "needs_review", "{part:?}");
    assert!(part["reason"].contains("line 5:"), "{}", part["reason"]);

    let records = job_records(&env, &job_id).await;
    assert!(records.is_empty(), "no ledger record: {records:?}");
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, micros_field(&job, "estimate_micros"));
    assert_eq!(budget.spent, Micros::ZERO);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_results_need_review() {
    let faults = FaultProfile {
        truncate_results_at_line: Some(7),
        ..FaultProfile::default()
    };
    let mut env = TestEnv::new(fast_simulator(faults), &[CHAT_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_chat_job(&env, "truncated", 20).await;

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "needs_review", "{job:?}");
    assert!(job["reason"].contains("line 7:"), "{}", job["reason"]);
    let part = env.store.part(&job_id, 0).await.unwrap();
    assert_eq!(part["state"], "needs_review", "{part:?}");
    assert!(part["reason"].contains("line 7:"), "{}", part["reason"]);

    let records = job_records(&env, &job_id).await;
    assert!(records.is_empty(), "no ledger record: {records:?}");
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, micros_field(&job, "estimate_micros"));
    assert_eq!(budget.spent, Micros::ZERO);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_custom_id_billed_once() {
    let faults = FaultProfile {
        duplicate_custom_id: true,
        ..FaultProfile::default()
    };
    let simulator = SimulatorConfig {
        failure_ratio: 0.1,
        ..fast_simulator(faults)
    };
    let mut env = TestEnv::new(simulator, &[CHAT_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_chat_job(&env, "duplicate", 40).await;

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "completed", "{job:?}");
    let part = env.store.part(&job_id, 0).await.unwrap();
    assert_eq!(part["duplicate_result_lines"], "1", "{part:?}");

    // Price the simulator's output file here, counting each custom_id once,
    // and compare with what batchgate billed.
    let output = openai_output_file(&env, &part["provider_batch_id"]).await;
    let expected = price_openai_output(&output, "gpt-6-luna");
    assert_eq!(
        expected.lines,
        expected.distinct_succeeded + 1,
        "the output file repeats one line"
    );
    let input = sample_head(&env, CHAT_SAMPLE, 40);
    let input_order = custom_ids(&std::fs::read_to_string(input).unwrap());
    let output_order = custom_ids(&output);
    let succeeded_in_input_order: Vec<&String> = input_order
        .iter()
        .filter(|custom_id| output_order.contains(custom_id))
        .collect();
    let mut first_seen = HashSet::new();
    let distinct_output_order: Vec<&String> = output_order
        .iter()
        .filter(|custom_id| first_seen.insert(*custom_id))
        .collect();
    assert_ne!(
        distinct_output_order, succeeded_in_input_order,
        "the simulator returns results in another order than the input"
    );

    let records = job_records(&env, &job_id).await;
    assert_eq!(records.len(), 1, "one ledger record: {records:?}");
    let record = &records[0];
    assert_eq!(record.requests.total, 40);
    assert_eq!(record.duplicate_result_lines, 1);
    assert_eq!(record.requests.succeeded, expected.distinct_succeeded);
    assert_eq!(record.requests.failed, 40 - expected.distinct_succeeded);
    assert_eq!(record.tokens.input, expected.input);
    assert_eq!(record.tokens.output, expected.output);
    assert_eq!(
        Decimal::from(record.billed_cost_micros.0),
        expected.billed_micros
    );
    assert!(record.amounts_add_up(), "{record:?}");
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, record.billed_cost_micros);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_batch_bills_finished_requests() {
    // The batch expires at 1.2 s, a third of the way through its 3 s of progress.
    let faults = FaultProfile {
        expire_after_ms: Some(1_200),
        ..FaultProfile::default()
    };
    let simulator = SimulatorConfig {
        in_progress_ms: 3_000,
        ..fast_simulator(faults)
    };
    let mut env = TestEnv::new(simulator, &[CHAT_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_chat_job(&env, "expired", 40).await;

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "completed", "{job:?}");
    let part = env.store.part(&job_id, 0).await.unwrap();
    let output = openai_output_file(&env, &part["provider_batch_id"]).await;
    let expected = price_openai_output(&output, "gpt-6-luna");

    let records = job_records(&env, &job_id).await;
    assert_eq!(records.len(), 1, "one ledger record: {records:?}");
    let record = &records[0];
    assert_eq!(record.provider_status, "expired");
    assert_eq!(record.requests.total, 40);
    assert!(record.requests.expired > 0, "{:?}", record.requests);
    assert!(record.requests.succeeded > 0, "{:?}", record.requests);
    assert_eq!(record.requests.succeeded, expected.distinct_succeeded);
    assert_eq!(
        record.requests.succeeded + record.requests.failed + record.requests.expired,
        40,
        "{:?}",
        record.requests
    );
    assert!(record.billed_cost_micros > Micros::ZERO);
    assert_eq!(
        Decimal::from(record.billed_cost_micros.0),
        expected.billed_micros,
        "only the succeeded requests are billed"
    );
    let budget = job_budget(&env, CHAT_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, record.billed_cost_micros);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_cache_classes_are_billed() {
    let simulator = SimulatorConfig {
        anthropic_cache_write_ratio: 0.2,
        anthropic_cache_read_ratio: 0.3,
        anthropic_cache_1h_share: 0.5,
        ..fast_simulator(FaultProfile::default())
    };
    let mut env = TestEnv::new(simulator, &[MESSAGES_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_messages_job(&env, "cache", 30).await;

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "completed", "{job:?}");
    let part = env.store.part(&job_id, 0).await.unwrap();
    let results = anthropic_results(&env, &part["provider_batch_id"]).await;
    let expected = price_anthropic_results(&results, "claude-haiku-4-5");

    let records = job_records(&env, &job_id).await;
    assert_eq!(records.len(), 1, "one ledger record: {records:?}");
    let record = &records[0];
    assert_eq!(record.provider, "anthropic");
    assert_eq!(record.provider_status, "ended");
    assert_eq!(record.requests.total, 30);
    assert_eq!(record.requests.succeeded, 30);
    assert!(record.tokens.cache_write_1h > 0, "{:?}", record.tokens);
    assert!(record.tokens.cache_write > 0, "{:?}", record.tokens);
    assert!(record.tokens.cached_input > 0, "{:?}", record.tokens);
    assert_eq!(record.tokens.input, expected.input);
    assert_eq!(record.tokens.cached_input, expected.cached_input);
    assert_eq!(record.tokens.cache_write, expected.cache_write);
    assert_eq!(record.tokens.cache_write_1h, expected.cache_write_1h);
    assert_eq!(record.tokens.output, expected.output);
    assert_eq!(
        Decimal::from(record.billed_cost_micros.0),
        expected.billed_micros
    );
    let budget = job_budget(&env, MESSAGES_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, record.billed_cost_micros);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_errored_results_count_failed() {
    let simulator = SimulatorConfig {
        failure_ratio: 0.3,
        ..fast_simulator(FaultProfile::default())
    };
    let mut env = TestEnv::new(simulator, &[MESSAGES_TEAM]).await;
    env.start_scheduler().await;
    env.start_worker().await;
    let job_id = publish_messages_job(&env, "errored", 40).await;

    let job = wait_for_end(&env, &job_id).await;
    assert_eq!(job["state"], "completed", "{job:?}");
    let part = env.store.part(&job_id, 0).await.unwrap();
    let results = anthropic_results(&env, &part["provider_batch_id"]).await;
    let mut errored = 0;
    let mut retryable = 0;
    for line in results.lines() {
        let line: Value = serde_json::from_str(line).expect("result line is JSON");
        if line["result"]["type"] != "errored" {
            continue;
        }
        errored += 1;
        let kind = &line["result"]["error"]["error"]["type"];
        if kind == "overloaded_error" || kind == "api_error" {
            retryable += 1;
        }
    }
    let expected = price_anthropic_results(&results, "claude-haiku-4-5");

    let records = job_records(&env, &job_id).await;
    assert_eq!(records.len(), 1, "one ledger record: {records:?}");
    let record = &records[0];
    assert_eq!(record.requests.total, 40);
    assert!(record.requests.failed > 0, "{:?}", record.requests);
    assert!(
        record.requests.failed_retryable > 0,
        "{:?}",
        record.requests
    );
    assert_eq!(record.requests.failed, errored);
    assert_eq!(record.requests.failed_retryable, retryable);
    assert_eq!(record.requests.succeeded, 40 - errored);
    assert_eq!(
        Decimal::from(record.billed_cost_micros.0),
        expected.billed_micros,
        "errored requests are not billed"
    );
    let budget = job_budget(&env, MESSAGES_TEAM.0, &job).await;
    assert_eq!(budget.reserved, Micros::ZERO);
    assert_eq!(budget.spent, record.billed_cost_micros);
    env.cleanup().await;
}
