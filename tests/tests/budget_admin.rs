//! `batchgate budget show` and `budget set` against the real Redis and broker.

use batchgate_shared::money::Micros;
use batchgate_tests::TestEnv;
use batchgate_tests::batchgate_simulator::SimulatorConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_set_changes_limit_and_records_event() {
    let env = TestEnv::new(
        SimulatorConfig::default(),
        &[
            ("search", "CC-2002", "5.00"),
            ("data-eng", "CC-1001", "9.00"),
        ],
    )
    .await;

    let shown = env.cli(&["budget", "show", "--month", "2026-11", "--json"]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let search = rows.iter().find(|row| row["team"] == "search").unwrap();
    assert_eq!(search["limit_micros"], 5_000_000);
    assert_eq!(search["remaining_micros"], 5_000_000);
    assert_eq!(search["period_start"], "2026-11-01T00:00:00Z");
    assert_eq!(search["period_end"], "2026-12-01T00:00:00Z");

    env.store
        .reserve(
            "search",
            "2026-11",
            "job-1",
            Micros(1_500_000),
            Micros(5_000_000),
        )
        .await
        .unwrap();
    let set = env.cli(&[
        "budget",
        "set",
        "--team",
        "search",
        "--month",
        "2026-11",
        "--limit",
        "7.25",
        "--by",
        "finance-bot",
    ]);
    let stdout = String::from_utf8_lossy(&set.stdout);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(
        stdout.contains("limit 7.250000 USD (was 5.000000 USD)"),
        "{stdout}"
    );
    let counters = env
        .store
        .budget("search", "2026-11")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counters.limit, Micros(7_250_000));
    assert_eq!(
        counters.reserved,
        Micros(1_500_000),
        "the reservation stays"
    );

    let history = env.store.budget_history("search", "2026-11").await.unwrap();
    assert_eq!(history.len(), 1);
    let event: serde_json::Value = serde_json::from_str(&history[0]).unwrap();
    assert_eq!(event["event"], "budget.limit_set");
    assert_eq!(event["by"], "finance-bot");
    assert_eq!(event["previous_limit_micros"], 5_000_000);
    assert_eq!(event["limit_micros"], 7_250_000);

    let shown = env.cli(&["budget", "show", "--team", "search", "--month", "2026-11"]);
    let table = String::from_utf8_lossy(&shown.stdout);
    assert!(table.contains("7.250000"), "{table}");
    assert!(
        table.contains("5.750000"),
        "remaining is limit - reserved - spent: {table}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_rejects_bad_arguments() {
    let env = TestEnv::new(SimulatorConfig::default(), &[("search", "CC-2002", "5.00")]).await;
    let cases: [(&[&str], &str); 4] = [
        (
            &["budget", "show", "--team", "nobody"],
            "unknown team \"nobody\"",
        ),
        (
            &[
                "budget", "set", "--team", "nobody", "--month", "2026-11", "--limit", "1",
            ],
            "unknown team",
        ),
        (
            &[
                "budget", "set", "--team", "search", "--month", "2026-13", "--limit", "1",
            ],
            "invalid --month",
        ),
        (
            &[
                "budget", "set", "--team", "search", "--month", "2026-11", "--limit", "-4",
            ],
            "--limit",
        ),
    ];
    for (arguments, expected) in cases {
        let output = env.cli(arguments);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}: {stderr}");
        assert!(stderr.contains(expected), "{arguments:?}: {stderr}");
    }
    assert!(
        env.store
            .budget("search", "2026-11")
            .await
            .unwrap()
            .is_none(),
        "nothing was written"
    );
    env.cleanup().await;
}
