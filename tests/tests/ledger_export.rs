//! `batchgate ledger export` and `ledger reprice` against the real broker.
//! The FOCUS CSV has every required column with the right types and sums to
//! the ledger total. The JSON lines follow the JSON Schema. A correction
//! changes the month's total by exactly its difference.

use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

use batchgate_shared::money::Micros;
use batchgate_shared::pricing::{PriceTable, TokenCounts, Usage};
use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, chat_manifest, repo_root, sample_head};

/// FOCUS 1.2 columns the export must have.
const REQUIRED_FOCUS_COLUMNS: [&str; 23] = [
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "BillingCurrency",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ConsumedQuantity",
    "ConsumedUnit",
    "PricingQuantity",
    "PricingUnit",
    "ServiceName",
    "ServiceCategory",
    "SkuId",
    "SkuPriceId",
    "ProviderName",
    "PublisherName",
    "InvoiceIssuerName",
    "Tags",
];

fn check(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ledger_total(env: &TestEnv, month: &str) -> Micros {
    let output = env.cli(&["ledger", "--month", month, "--json", "--idle-ms", "1000"]);
    let ledger: serde_json::Value = serde_json::from_str(&check(&output)).unwrap();
    Micros(ledger["total_billed_cost_micros"].as_i64().unwrap())
}

/// Runs `ledger reprice` for the month and returns its output.
fn reprice(env: &TestEnv, month: &str, reason: &str, dry_run: bool) -> String {
    let mut arguments = vec!["ledger", "reprice", "--month", month, "--by", "finance"];
    arguments.extend(["--reason", reason, "--idle-ms", "1000"]);
    if dry_run {
        arguments.push("--dry-run");
    }
    check(&env.cli(&arguments))
}

fn is_utc_second(text: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%SZ").is_ok()
}

/// Reads a FOCUS CSV export into rows keyed by column name, checking each row's types.
fn focus_rows(path: &std::path::Path) -> Vec<HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    for column in REQUIRED_FOCUS_COLUMNS {
        assert!(
            header.iter().any(|name| name == column),
            "missing FOCUS column {column}"
        );
    }
    for name in &header {
        let focus = REQUIRED_FOCUS_COLUMNS.contains(&name.as_str());
        assert!(
            focus || name.starts_with("x_"),
            "column {name} is neither FOCUS nor x_"
        );
    }
    let mut rows = Vec::new();
    for row in reader.records() {
        let row: HashMap<String, String> = header
            .iter()
            .cloned()
            .zip(row.unwrap().iter().map(str::to_owned))
            .collect();
        for column in ["BilledCost", "EffectiveCost", "ListCost"] {
            let amount = &row[column];
            assert!(
                amount.parse::<rust_decimal::Decimal>().is_ok()
                    && amount.split('.').nth(1).map(str::len) == Some(6),
                "{column} {amount:?} is not a decimal with six places"
            );
        }
        for column in [
            "ChargePeriodStart",
            "ChargePeriodEnd",
            "BillingPeriodStart",
            "BillingPeriodEnd",
        ] {
            assert!(
                is_utc_second(&row[column]),
                "{column} {:?} is not UTC",
                row[column]
            );
        }
        assert!(row["ChargePeriodStart"] < row["ChargePeriodEnd"], "{row:?}");
        assert!(
            row["BillingPeriodStart"] < row["BillingPeriodEnd"],
            "{row:?}"
        );
        assert!(row["ConsumedQuantity"].parse::<u64>().is_ok());
        assert!(row["PricingQuantity"].parse::<u64>().is_ok());
        assert_eq!(row["BillingCurrency"], "USD");
        assert_eq!(row["ChargeCategory"], "Usage");
        let tags: HashMap<String, String> = serde_json::from_str(&row["Tags"]).unwrap();
        assert_eq!(tags["owner_team"], row["x_OwnerTeam"]);
        rows.push(row);
    }
    rows
}

fn billed_sum(rows: &[HashMap<String, String>]) -> Micros {
    rows.iter()
        .map(|row| Micros::from_decimal(row["BilledCost"].parse().unwrap()).unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_correction_keep_totals_exact() {
    let simulator = SimulatorConfig {
        failure_ratio: 0.1,
        cached_ratio: 0.4,
        ..SimulatorConfig::default()
    };
    let mut env = TestEnv::new(
        simulator,
        &[
            ("data-eng", "CC-1001", "5.00"),
            ("search", "CC-2002", "5.00"),
        ],
    )
    .await;
    let prices = env.use_price_table_copy();
    env.start_scheduler().await;
    env.start_worker().await;
    let input = sample_head(&env, "catalog-enrichment.openai.jsonl", 30);
    let mut month = String::new();
    for (team, cost_center) in [("data-eng", "CC-1001"), ("search", "CC-2002")] {
        let job_id = format!("{}-{team}", env.id);
        env.publish_job(&env.job(chat_manifest(&job_id, team, cost_center), &input))
            .await;
        let job = env
            .wait_for_state(&job_id, &["completed"], Duration::from_secs(60))
            .await;
        month = job["month"].clone();
    }
    let before = ledger_total(&env, &month);
    assert!(before > Micros::ZERO);

    let focus = env.dir.path().join("focus.csv");
    let focus_path = focus.to_str().unwrap();
    check(&env.cli(&[
        "ledger",
        "export",
        "--month",
        &month,
        "--format",
        "focus-csv",
        "--output",
        focus_path,
        "--idle-ms",
        "1000",
    ]));
    let rows = focus_rows(&focus);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        billed_sum(&rows),
        before,
        "BilledCost sums to the ledger total"
    );
    for row in &rows {
        assert_eq!(row["BillingPeriodStart"], format!("{month}-01T00:00:00Z"));
        assert_eq!(row["ChargeClass"], "");
    }

    // Every JSON line validates against the schema in the repository.
    let jsonl = check(&env.cli(&[
        "ledger",
        "export",
        "--month",
        &month,
        "--format",
        "jsonl",
        "--idle-ms",
        "1000",
    ]));
    assert_eq!(jsonl.lines().count(), 2);
    let lines_path = env.dir.path().join("records.jsonl");
    std::fs::write(&lines_path, &jsonl).unwrap();
    let schema = repo_root().join("schema/ledger-record.v2.json");
    let validated = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             for line in open(sys.argv[2]):\n    jsonschema.validate(json.loads(line), schema)\n",
        )
        .arg(&schema)
        .arg(&lines_path)
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "{}",
        String::from_utf8_lossy(&validated.stderr)
    );

    let plain = check(&env.cli(&[
        "ledger",
        "export",
        "--month",
        &month,
        "--format",
        "csv",
        "--idle-ms",
        "1000",
    ]));
    assert!(plain.starts_with("record_id,charge_class,"), "{plain}");
    assert_eq!(plain.lines().count(), 3);

    // The output rate of the entry in force was wrong: fix it in place and reprice.
    let table = std::fs::read_to_string(&prices).unwrap();
    let luna = table.find("model = \"gpt-6-luna\"").unwrap();
    let (head, tail) = table.split_at(luna);
    let fixed = format!(
        "{head}{}",
        tail.replacen("output = \"0.25\"", "output = \"0.30\"", 1)
    );
    std::fs::write(&prices, fixed).unwrap();
    let corrected_price = PriceTable::load(&prices)
        .unwrap()
        .latest("openai", "gpt-6-luna")
        .unwrap()
        .clone();
    let records: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut expected_difference = Micros::ZERO;
    for record in &records {
        let tokens: TokenCounts = serde_json::from_value(record["x_Tokens"].clone()).unwrap();
        let cost = corrected_price
            .price_usage(&Usage {
                base: tokens,
                ..Usage::default()
            })
            .unwrap();
        let billed: Micros = record["BilledCost"].as_str().unwrap().parse().unwrap();
        expected_difference = expected_difference + (cost.billed - billed);
    }
    assert!(expected_difference > Micros::ZERO);
    let spent_before = env
        .store
        .budget("data-eng", &month)
        .await
        .unwrap()
        .unwrap()
        .spent;

    let dry = reprice(&env, &month, "output rate fixed", true);
    assert!(dry.contains("not published"), "{dry}");
    assert_eq!(
        ledger_total(&env, &month),
        before,
        "a dry run publishes nothing"
    );
    let published = reprice(&env, &month, "output rate fixed", false);
    assert!(published.contains("published 2 corrections"), "{published}");
    let after = ledger_total(&env, &month);
    assert_eq!(
        after - before,
        expected_difference,
        "the total moves by exactly the corrections"
    );
    let spent_after = env
        .store
        .budget("data-eng", &month)
        .await
        .unwrap()
        .unwrap()
        .spent;
    assert!(
        spent_after > spent_before,
        "the correction reaches the budget"
    );

    let again = reprice(&env, &month, "output rate fixed", false);
    assert!(again.contains("no record of"), "{again}");
    assert_eq!(
        ledger_total(&env, &month),
        after,
        "a second run corrects nothing"
    );

    // A price changed and changed back gets a correction each time, and the
    // total returns to the same amount.
    let current = std::fs::read_to_string(&prices).unwrap();
    let luna = current.find("model = \"gpt-6-luna\"").unwrap();
    let (head, tail) = current.split_at(luna);
    let raised_table = format!(
        "{head}{}",
        tail.replacen("output = \"0.30\"", "output = \"0.35\"", 1)
    );
    std::fs::write(&prices, raised_table).unwrap();
    let raised = reprice(&env, &month, "raised", false);
    assert!(raised.contains("published 2 corrections"), "{raised}");
    assert!(ledger_total(&env, &month) > after);
    std::fs::write(&prices, &current).unwrap();
    let restored = reprice(&env, &month, "raised in error", false);
    assert!(restored.contains("published 2 corrections"), "{restored}");
    assert_eq!(ledger_total(&env, &month), after, "back to the fixed price");

    check(&env.cli(&[
        "ledger",
        "export",
        "--month",
        &month,
        "--output",
        focus_path,
        "--idle-ms",
        "1000",
    ]));
    let rows = focus_rows(&focus);
    assert_eq!(rows.len(), 8);
    assert_eq!(billed_sum(&rows), after);
    let corrections: Vec<_> = rows
        .iter()
        .filter(|row| row["ChargeClass"] == "Correction")
        .collect();
    assert_eq!(corrections.len(), 6);
    for correction in corrections {
        assert!(
            rows.iter()
                .any(|row| row["x_RecordId"] == correction["x_CorrectsRecordId"])
        );
        assert!(correction["x_CorrectionReason"].ends_with("(by finance)"));
    }
    env.cleanup().await;
}
