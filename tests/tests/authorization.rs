//! Per-team RabbitMQ users: the broker checks `user_id`, the scheduler checks
//! that the user may submit for the job's team.

use std::process::Command;
use std::time::Duration;

use batchgate_scheduler::Scheduler;
use batchgate_shared::broker::Broker;
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, broker_url, chat_manifest, sample_head};
use lapin::BasicProperties;

fn rabbitmqctl(arguments: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .arg("-q")
        .args(arguments)
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {arguments:?} failed");
}

/// Returns the vhost of the test broker URL, decoded (`%2f` is `/`).
fn vhost() -> String {
    let url = broker_url();
    let path = url.rsplit_once('/').map(|(_, path)| path).unwrap_or("%2f");
    if path.is_empty() || path == "%2f" || path == "%2F" {
        "/".to_owned()
    } else {
        path.to_owned()
    }
}

/// Publishes a job for `team` through `broker`, with `user_id` if given.
async fn publish(
    env: &TestEnv,
    broker: &Broker,
    input: &std::path::Path,
    job_id: &str,
    team: &str,
    user_id: Option<&str>,
) -> batchgate_shared::Result<()> {
    let cost_center = if team == "data-eng" {
        "CC-1001"
    } else {
        "CC-2002"
    };
    let job = env.job(chat_manifest(job_id, team, cost_center), input);
    let mut properties = BasicProperties::default();
    if let Some(user_id) = user_id {
        properties = properties.with_user_id(user_id.into());
    }
    broker
        .publish_json(
            &broker.names.jobs_exchange(),
            "job.submitted",
            &job,
            properties,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_users_are_enforced() {
    let env = TestEnv::new(
        SimulatorConfig::default(),
        &[
            ("data-eng", "CC-1001", "25.00"),
            ("search", "CC-2002", "25.00"),
        ],
    )
    .await;
    let user = format!("bg-{}", env.id);
    rabbitmqctl(&["add_user", &user, "team-password"]);
    rabbitmqctl(&["set_permissions", "-p", &vhost(), &user, ".*", ".*", ".*"]);

    let mut config = env.config.clone();
    config.teams.get_mut("data-eng").unwrap().amqp_users = vec![user.clone()];
    let scheduler = Scheduler::connect(config.clone()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        let _ = scheduler
            .run(async move {
                let _ = stopped.await;
            })
            .await;
        scheduler.broker.close().await;
    });

    let mut team_broker = config.broker.clone();
    team_broker.url = broker_url().replacen("guest:guest@", &format!("{user}:team-password@"), 1);
    let team = Broker::connect(&team_broker, "team-publisher")
        .await
        .unwrap();
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 3);
    let own = format!("{}-own", env.id);
    publish(&env, &team, &input, &own, "data-eng", Some(&user))
        .await
        .unwrap();
    let other = format!("{}-other", env.id);
    publish(&env, &team, &input, &other, "search", Some(&user))
        .await
        .unwrap();
    let anonymous = format!("{}-anonymous", env.id);
    publish(&env, &env.broker, &input, &anonymous, "data-eng", None)
        .await
        .unwrap();

    let job = env
        .wait_for_state(&own, &["accepted", "rejected"], Duration::from_secs(30))
        .await;
    assert_eq!(job["state"], "accepted", "{job:?}");
    let job = env
        .wait_for_state(&other, &["accepted", "rejected"], Duration::from_secs(30))
        .await;
    assert_eq!(job["state"], "rejected");
    assert!(
        job["reason"].contains(&format!("{user:?} may not submit jobs for team search")),
        "{}",
        job["reason"]
    );
    let job = env
        .wait_for_state(
            &anonymous,
            &["accepted", "rejected"],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(job["state"], "rejected");
    assert!(job["reason"].contains("no user_id"), "{}", job["reason"]);

    // guest cannot pretend to be the team's user: the broker refuses the message.
    let forged = format!("{}-forged", env.id);
    let refused = publish(&env, &env.broker, &input, &forged, "data-eng", Some(&user)).await;
    assert!(refused.is_err(), "the broker accepted a forged user_id");

    let _ = stop.send(());
    let _ = running.await;
    team.close().await;
    rabbitmqctl(&["delete_user", &user]);
    env.cleanup().await;
}
