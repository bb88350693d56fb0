//! The scheduler and the worker survive a Redis restart: steps that failed
//! while Redis was down are retried, and no reservation, provider batch,
//! ledger record or settlement is applied twice.
//!
//! The test runs its own `redis-server` on a free loopback port, with an
//! append-only file synced on every write, so that it can kill and restart it
//! without touching the Redis that other tests share.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batchgate_shared::money::Micros;
use batchgate_shared::replay::ledger_records;
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, chat_manifest, sample_head};

/// A `redis-server` process owned by the test.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start(dir: &Path, port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (Debian package redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        while client
            .get_connection()
            .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRedis { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server without letting it shut down cleanly.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the job is `completed`, reading through errors while Redis restarts.
async fn wait_completed(env: &TestEnv, job_id: &str) -> std::collections::HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(job) = env.store.job(job_id).await
            && job.get("state").is_some_and(|state| state == "completed")
        {
            return job;
        }
        assert!(Instant::now() < deadline, "job {job_id} did not complete");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_survive_redis_restart() {
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = OwnRedis::start(redis_dir.path(), port);
    let mut env = TestEnv::with_redis(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "5.00")],
        "max_requests_per_batch = 4",
        &redis.url(),
    )
    .await;
    env.start_scheduler().await;
    env.start_worker().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 12);

    let before = format!("{}-before", env.id);
    env.publish_job(&env.job(chat_manifest(&before, "data-eng", "CC-1001"), &input))
        .await;
    env.wait_for_state(&before, &["running"], Duration::from_secs(60))
        .await;

    // Redis goes away while the first job's batches run and a second job arrives.
    redis.kill();
    let during = format!("{}-during", env.id);
    env.publish_job(&env.job(chat_manifest(&during, "data-eng", "CC-1001"), &input))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let redis = OwnRedis::start(redis_dir.path(), port);

    let first = wait_completed(&env, &before).await;
    let second = wait_completed(&env, &during).await;
    let billed = |job: &std::collections::HashMap<String, String>| {
        Micros(job["billed_cost_micros"].parse().unwrap())
    };
    let month = first["month"].clone();
    let counters = env.store.budget("data-eng", &month).await.unwrap().unwrap();
    assert_eq!(counters.reserved, Micros::ZERO, "both reservations settled");
    assert_eq!(
        counters.spent,
        billed(&first) + billed(&second),
        "each job settled once"
    );

    let (records, _) = ledger_records(&env.broker, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        records.len(),
        6,
        "one record per provider batch: {records:#?}"
    );
    let recorded: Micros = records
        .iter()
        .map(|record| record.billed_cost_micros)
        .fold(Micros::ZERO, |sum, cost| sum + cost);
    assert_eq!(recorded, counters.spent);
    assert_eq!(
        env.simulator().batches_created(),
        6,
        "no provider batch created twice"
    );
    env.cleanup().await;
    drop(redis);
}
