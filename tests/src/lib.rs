//! Test harness: one isolated batchgate deployment per test.
//!
//! Each [`TestEnv`] gets its own broker name prefix and Redis key prefix, its
//! own simulator on a loopback port and its own configuration file, so tests
//! run in parallel. `scripts/test.sh` runs the suite in a vhost of its own and
//! deletes it afterwards; [`TestEnv::cleanup`] also deletes each test's queues,
//! exchanges and keys.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchgate_shared::broker::Broker;
use batchgate_shared::config::Config;
use batchgate_shared::manifest::Manifest;
use batchgate_shared::message::{InputRef, JOB_SCHEMA_VERSION, JobMessage};
use batchgate_shared::provider::Provider;
use batchgate_shared::provider::anthropic::AnthropicClient;
use batchgate_shared::provider::openai::OpenAiClient;
use batchgate_shared::store::Store;
use batchgate_simulator::{RunningSimulator, SimulatorConfig};
use lapin::BasicProperties;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use tokio::sync::oneshot;

pub use batchgate_simulator;

/// The API key the tests give the worker; the simulator accepts any bearer token.
pub const TEST_API_KEY: &str = "sk-test-not-a-real-key";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent")
        .to_owned()
}

/// Path of a sample input file in the shared samples folder beside the repository.
pub fn sample(name: &str) -> PathBuf {
    let path = repo_root().join("../shared/samples").join(name);
    assert!(
        path.exists(),
        "sample {} not found: the tests expect ../shared/samples beside the repository",
        path.display()
    );
    path
}

/// Directory of the workspace's built binaries (`target/debug`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

pub fn broker_url() -> String {
    std::env::var("BATCHGATE_TEST_BROKER_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("BATCHGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub struct TestEnv {
    pub id: String,
    pub config: Config,
    pub config_path: PathBuf,
    pub simulator: Option<RunningSimulator>,
    pub broker: Broker,
    pub store: Store,
    pub dir: tempfile::TempDir,
    /// In-process services: the sender stops one, the handle ends when it stopped.
    stops: Vec<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl TestEnv {
    /// Starts a simulator with `simulator` settings and connects to the broker and Redis.
    /// `teams` lists (team, cost center, monthly budget in USD).
    pub async fn new(simulator: SimulatorConfig, teams: &[(&str, &str, &str)]) -> TestEnv {
        TestEnv::with_settings(simulator, teams, "").await
    }

    /// Like [`TestEnv::new`], with `provider_settings` added to both provider
    /// tables (for example `max_requests_per_batch = 40`).
    pub async fn with_settings(
        simulator: SimulatorConfig,
        teams: &[(&str, &str, &str)],
        provider_settings: &str,
    ) -> TestEnv {
        TestEnv::build(simulator, teams, provider_settings, "", &redis_url()).await
    }

    /// Like [`TestEnv::with_settings`], against the Redis server at `redis_url`
    /// (for example one the test starts, stops and restarts itself).
    pub async fn with_redis(
        simulator: SimulatorConfig,
        teams: &[(&str, &str, &str)],
        provider_settings: &str,
        redis_url: &str,
    ) -> TestEnv {
        TestEnv::build(simulator, teams, provider_settings, "", redis_url).await
    }

    /// Like [`TestEnv::new`], with `team_settings` added to every team table
    /// (for example `review_above_requests = 10`).
    pub async fn with_team_settings(
        simulator: SimulatorConfig,
        teams: &[(&str, &str, &str)],
        team_settings: &str,
    ) -> TestEnv {
        TestEnv::build(simulator, teams, "", team_settings, &redis_url()).await
    }

    async fn build(
        simulator: SimulatorConfig,
        teams: &[(&str, &str, &str)],
        provider_settings: &str,
        team_settings: &str,
        redis_url: &str,
    ) -> TestEnv {
        let id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind simulator");
        let simulator = batchgate_simulator::start(simulator, listener)
            .await
            .expect("start simulator");
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut text = format!(
            "price_table = {price:?}\n\n[broker]\nurl = {broker:?}\nprefix = {id:?}\n\n[redis]\nurl = {redis:?}\nprefix = {id:?}\n\n\
             [providers.openai]\nbase_url = {base:?}\nrequest_timeout_secs = 10\nmax_attempts = 3\n{provider_settings}\n\n\
             [providers.anthropic]\nbase_url = {base:?}\nrequest_timeout_secs = 10\nmax_attempts = 3\n{provider_settings}\n\n\
             [worker]\npoll_interval_secs = 1\nprefetch = 8\ncreation_lease_secs = 5\n\n",
            price = repo_root().join("config/prices.toml").display().to_string(),
            broker = broker_url(),
            redis = redis_url,
            base = simulator.base_url(),
        );
        for (team, cost_center, budget) in teams {
            text.push_str(&format!(
                "[teams.{team}]\ncost_center = {cost_center:?}\nmonthly_budget_usd = {budget:?}\n\
                 amqp_users = [\"guest\"]\n{team_settings}\n\n"
            ));
        }
        let config_path = dir.path().join("batchgate.toml");
        std::fs::write(&config_path, &text).expect("write configuration");
        let config = Config::parse(&text).expect("test configuration parses");
        config.check().expect("test configuration is valid");
        let broker = Broker::connect(&config.broker, "batchgate-tests")
            .await
            .expect("connect to RabbitMQ");
        broker
            .declare_topology(&[config.worker.poll_interval_secs])
            .await
            .expect("declare topology");
        let store = Store::connect(&config.redis)
            .await
            .expect("connect to Redis");
        TestEnv {
            id,
            config,
            config_path,
            simulator: Some(simulator),
            broker,
            store,
            dir,
            stops: Vec::new(),
        }
    }

    /// Points this test's configuration at its own copy of the price table,
    /// which the test may then change, and returns the copy's path. Call it
    /// before starting services.
    pub fn use_price_table_copy(&mut self) -> PathBuf {
        let copy = self.dir.path().join("prices.toml");
        std::fs::copy(&self.config.price_table, &copy).expect("copy price table");
        let text = std::fs::read_to_string(&self.config_path).expect("read configuration");
        let original = format!(
            "price_table = {:?}",
            self.config.price_table.display().to_string()
        );
        let replaced = format!("price_table = {:?}", copy.display().to_string());
        assert!(
            text.contains(&original),
            "configuration names the price table"
        );
        std::fs::write(&self.config_path, text.replace(&original, &replaced))
            .expect("write configuration");
        self.config.price_table = copy.clone();
        copy
    }

    pub fn simulator(&self) -> &RunningSimulator {
        self.simulator.as_ref().expect("simulator running")
    }

    /// Runs a scheduler in this process until cleanup.
    pub async fn start_scheduler(&mut self) {
        let scheduler = batchgate_scheduler::Scheduler::connect(self.config.clone())
            .await
            .expect("scheduler connects");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            if let Err(error) = scheduler
                .run(async move {
                    let _ = stopped.await;
                })
                .await
            {
                eprintln!("scheduler stopped with an error: {error}");
            }
            scheduler.broker.close().await;
        });
        self.stops.push((stop, handle));
    }

    /// Runs a worker in this process until cleanup.
    pub async fn start_worker(&mut self) {
        let worker = worker_with_key(self.config.clone()).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            if let Err(error) = worker
                .run(async move {
                    let _ = stopped.await;
                })
                .await
            {
                eprintln!("worker stopped with an error: {error}");
            }
            worker.broker.close().await;
        });
        self.stops.push((stop, handle));
    }

    /// Starts `batchgate-worker` as a separate process with this test's configuration.
    pub fn spawn_worker_process(&self) -> std::process::Child {
        self.spawn_worker_process_with(&[])
    }

    /// Starts `batchgate-worker` with extra environment variables, for example
    /// `BATCHGATE_CRASH_POINT` (the binary must be built with `crash-points`).
    pub fn spawn_worker_process_with(&self, environment: &[(&str, &str)]) -> std::process::Child {
        std::process::Command::new(binary("batchgate-worker"))
            .envs(environment.iter().copied())
            .arg("--config")
            .arg(&self.config_path)
            .env("OPENAI_API_KEY", TEST_API_KEY)
            .env("ANTHROPIC_API_KEY", TEST_API_KEY)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start batchgate-worker")
    }

    /// Runs the `batchgate` command with this test's configuration.
    pub fn cli(&self, arguments: &[&str]) -> std::process::Output {
        std::process::Command::new(binary("batchgate"))
            .arg("--config")
            .arg(&self.config_path)
            .args(arguments)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run batchgate")
    }

    /// Builds a job message for an input file without going through `submit`.
    pub fn job(&self, manifest: Manifest, input: &Path) -> JobMessage {
        JobMessage {
            schema_version: JOB_SCHEMA_VERSION,
            manifest,
            input: InputRef {
                uri: InputRef::file_uri(input).expect("UTF-8 path"),
                sha256: None,
                requests: None,
                bytes: None,
            },
            submitted_at: chrono::Utc::now(),
        }
    }

    pub async fn publish_job(&self, job: &JobMessage) {
        self.broker
            .publish_json(
                &self.broker.names.jobs_exchange(),
                "job.submitted",
                job,
                BasicProperties::default().with_user_id("guest".into()),
            )
            .await
            .expect("publish job");
    }

    /// Waits until the job reaches one of `states`, returning its record.
    pub async fn wait_for_state(
        &self,
        job_id: &str,
        states: &[&str],
        timeout: Duration,
    ) -> std::collections::HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.store.job(job_id).await.expect("read job");
            if job
                .get("state")
                .is_some_and(|state| states.contains(&state.as_str()))
            {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} did not reach {states:?} in {timeout:?}; last record: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops in-process services, deletes this test's queues, exchanges and keys.
    pub async fn cleanup(mut self) {
        // Wait until each service stopped, so none writes keys after they are deleted.
        for (stop, handle) in self.stops.drain(..) {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(15), handle).await;
        }
        let names = &self.broker.names;
        let channel = self.broker.channel().await.expect("channel for cleanup");
        let queues = [
            names.submitted_queue(),
            names.review_queue(),
            names.ready_queue("openai"),
            names.ready_queue("anthropic"),
            names.events_stream(),
            names.ledger_stream(),
            names.poll_due_queue(),
            names.poll_wait_queue(self.config.worker.poll_interval_secs),
            names.dead_queue(),
        ];
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in [
            names.jobs_exchange(),
            names.events_exchange(),
            names.ledger_exchange(),
            names.poll_exchange(),
            names.dead_exchange(),
        ] {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        self.broker.close().await;
        self.store.delete_prefix().await.expect("delete test keys");
        if let Some(simulator) = self.simulator.take() {
            simulator.shutdown().await;
        }
    }
}

async fn worker_with_key(config: Config) -> Arc<batchgate_worker::Worker> {
    let openai = OpenAiClient::new(&config.providers.openai, TEST_API_KEY.to_owned())
        .expect("OpenAI client");
    let anthropic = AnthropicClient::new(&config.providers.anthropic, TEST_API_KEY.to_owned())
        .expect("Anthropic client");
    let providers: Vec<(String, Arc<dyn Provider>)> = vec![
        ("openai".into(), Arc::new(openai)),
        ("anthropic".into(), Arc::new(anthropic)),
    ];
    batchgate_worker::Worker::connect_with_providers(config, providers)
        .await
        .expect("worker connects")
}

/// Builds a manifest for `team` with the given job id, for the chat sample.
pub fn chat_manifest(job_id: &str, team: &str, cost_center: &str) -> Manifest {
    Manifest {
        job_id: job_id.to_owned(),
        owner_team: team.to_owned(),
        cost_center: cost_center.to_owned(),
        workload_class: "enrichment".to_owned(),
        purpose: "classify Debian packages for the catalog".to_owned(),
        provider: "openai".to_owned(),
        endpoint: "/v1/chat/completions".to_owned(),
        model: "gpt-6-luna".to_owned(),
        completion_window: "24h".to_owned(),
        justification: None,
        expected_output: None,
    }
}

/// Writes the first `count` lines of a sample to a file in the test's directory.
pub fn sample_head(env: &TestEnv, name: &str, count: usize) -> PathBuf {
    let text = std::fs::read_to_string(sample(name)).expect("read sample");
    let head: String = text
        .lines()
        .take(count)
        .map(|line| format!("{line}\n"))
        .collect();
    let path = env.dir.path().join(format!("head-{count}-{name}"));
    std::fs::write(&path, head).expect("write sample head");
    path
}
