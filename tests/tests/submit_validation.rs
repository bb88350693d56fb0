//! `batchgate submit` rejects bad manifests and input files before publishing,
//! naming the field or the line.

use batchgate_tests::batchgate_simulator::SimulatorConfig;
use batchgate_tests::{TestEnv, sample};

const GOOD_MANIFEST: &str = r#"
job_id = "JOB"
owner_team = "data-eng"
cost_center = "CC-1001"
workload_class = "enrichment"
purpose = "validation test"
provider = "openai"
endpoint = "/v1/chat/completions"
model = "gpt-6-luna"
"#;

fn line(custom_id: &str) -> String {
    format!(
        r#"{{"custom_id":"{custom_id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"gpt-6-luna","max_tokens":20,"messages":[{{"role":"user","content":"hi"}}]}}}}"#
    )
}

struct Case {
    name: &'static str,
    manifest: String,
    input: String,
    expected: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let good_input = format!("{}\n{}\n", line("a"), line("b"));
    let manifest = |from: &str, to: &str| GOOD_MANIFEST.replace(from, to);
    let without = |field: &str| {
        GOOD_MANIFEST
            .lines()
            .filter(|line| !line.starts_with(&format!("{field} =")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    vec![
        Case {
            name: "missing cost center",
            manifest: without("cost_center"),
            input: good_input.clone(),
            expected: &["cost_center"],
        },
        Case {
            name: "missing owner team",
            manifest: without("owner_team"),
            input: good_input.clone(),
            expected: &["owner_team"],
        },
        Case {
            name: "missing workload class",
            manifest: without("workload_class"),
            input: good_input.clone(),
            expected: &["workload_class"],
        },
        Case {
            name: "missing purpose",
            manifest: without("purpose"),
            input: good_input.clone(),
            expected: &["purpose"],
        },
        Case {
            name: "missing job id",
            manifest: without("job_id"),
            input: good_input.clone(),
            expected: &["job_id"],
        },
        Case {
            name: "empty purpose",
            manifest: manifest("validation test", ""),
            input: good_input.clone(),
            expected: &["purpose", "empty"],
        },
        Case {
            name: "unknown team",
            manifest: manifest("\"data-eng\"", "\"nobody\""),
            input: good_input.clone(),
            expected: &["owner_team", "nobody"],
        },
        Case {
            name: "wrong cost center",
            manifest: manifest("CC-1001", "CC-9"),
            input: good_input.clone(),
            expected: &["cost_center", "CC-9"],
        },
        Case {
            name: "unknown workload class",
            manifest: manifest("\"enrichment\"", "\"mining\""),
            input: good_input.clone(),
            expected: &["workload_class", "mining"],
        },
        Case {
            name: "bad job id",
            manifest: manifest("\"JOB\"", "\"has space\""),
            input: good_input.clone(),
            expected: &["job_id"],
        },
        Case {
            name: "unknown provider",
            manifest: manifest("\"openai\"", "\"acme\""),
            input: good_input.clone(),
            expected: &["provider", "acme"],
        },
        Case {
            name: "unknown endpoint",
            manifest: manifest("/v1/chat/completions", "/v1/images"),
            input: good_input.clone(),
            expected: &["endpoint"],
        },
        Case {
            name: "unpriced model without justification",
            manifest: manifest("gpt-6-luna", "gpt-0"),
            input: good_input.replace("gpt-6-luna", "gpt-0"),
            expected: &["justification", "model gpt-0 is not in the price table"],
        },
        Case {
            name: "unknown manifest key",
            manifest: format!("{GOOD_MANIFEST}color = \"red\"\n"),
            input: good_input.clone(),
            expected: &["color"],
        },
        Case {
            name: "line not json",
            manifest: GOOD_MANIFEST.into(),
            input: format!("{}\nnot json\n", line("a")),
            expected: &["line 2", "not valid JSON"],
        },
        Case {
            name: "duplicate custom id",
            manifest: GOOD_MANIFEST.into(),
            input: format!("{}\n{}\n", line("a"), line("a")),
            expected: &["line 2", "duplicate custom_id", "line 1"],
        },
        Case {
            name: "url differs",
            manifest: GOOD_MANIFEST.into(),
            input: format!(
                "{}\n{}\n",
                line("a"),
                line("b").replace("/v1/chat/completions", "/v1/embeddings")
            ),
            expected: &["line 2", "url"],
        },
        Case {
            name: "second model",
            manifest: GOOD_MANIFEST.into(),
            input: format!(
                "{}\n{}\n",
                line("a"),
                line("b").replace("gpt-6-luna", "gpt-6.2-sol")
            ),
            expected: &["line 2", "model", "one model"],
        },
        Case {
            name: "missing custom id",
            manifest: GOOD_MANIFEST.into(),
            input: line("a").replace("\"custom_id\":\"a\",", "") + "\n",
            expected: &["line 1", "custom_id"],
        },
        Case {
            name: "wrong method",
            manifest: GOOD_MANIFEST.into(),
            input: line("a").replace("POST", "GET") + "\n",
            expected: &["line 1", "method"],
        },
        Case {
            name: "missing body",
            manifest: GOOD_MANIFEST.into(),
            input: r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions"}"#.to_owned()
                + "\n",
            expected: &["line 1", "body"],
        },
        Case {
            name: "empty line",
            manifest: GOOD_MANIFEST.into(),
            input: format!("{}\n\n{}\n", line("a"), line("b")),
            expected: &["line 2", "empty line"],
        },
        Case {
            name: "empty file",
            manifest: GOOD_MANIFEST.into(),
            input: String::new(),
            expected: &["no requests"],
        },
        Case {
            name: "bad max tokens",
            manifest: GOOD_MANIFEST.into(),
            input: line("a").replace("\"max_tokens\":20", "\"max_tokens\":-3") + "\n",
            expected: &["line 1", "max tokens"],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_rejects_each_invalid_case() {
    let env = TestEnv::new(
        SimulatorConfig::default(),
        &[("data-eng", "CC-1001", "25.00")],
    )
    .await;
    for (index, case) in cases().into_iter().enumerate() {
        let manifest_path = env.dir.path().join(format!("case-{index}.toml"));
        let input_path = env.dir.path().join(format!("case-{index}.jsonl"));
        std::fs::write(
            &manifest_path,
            case.manifest
                .replace("\"JOB\"", &format!("\"{}-{index}\"", env.id)),
        )
        .unwrap();
        std::fs::write(&input_path, &case.input).unwrap();
        let output = env.cli(&[
            "submit",
            "--manifest",
            manifest_path.to_str().unwrap(),
            "--input",
            input_path.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "case {:?} should fail with exit code 2; stderr: {stderr}",
            case.name
        );
        assert!(
            output.stdout.is_empty(),
            "case {:?} printed a job id",
            case.name
        );
        for expected in case.expected {
            assert!(
                stderr.contains(expected),
                "case {:?}: stderr does not mention {expected:?}: {stderr}",
                case.name
            );
        }
    }

    // Nothing reached the broker.
    let channel = env.broker.channel().await.unwrap();
    let queue = channel
        .queue_declare(
            env.broker.names.submitted_queue().as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_publishes_valid_job_after_confirm() {
    let env = TestEnv::new(SimulatorConfig::default(), &[("search", "CC-2002", "5.00")]).await;
    let manifest_path = env.dir.path().join("embeddings.toml");
    let job_id = format!("{}-embeddings", env.id);
    let manifest = GOOD_MANIFEST
        .replace("\"JOB\"", &format!("\"{job_id}\""))
        .replace("data-eng", "search")
        .replace("CC-1001", "CC-2002")
        .replace("\"enrichment\"", "\"embedding_backfill\"")
        .replace("/v1/chat/completions", "/v1/embeddings")
        .replace("gpt-6-luna", "text-embedding-3-small");
    std::fs::write(&manifest_path, manifest).unwrap();
    let input = sample("package-embeddings.openai.jsonl");
    let output = env.cli(&[
        "submit",
        "--manifest",
        manifest_path.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), job_id);
    assert!(stderr.contains("5000 requests"), "{stderr}");

    let channel = env.broker.channel().await.unwrap();
    let message = channel
        .basic_get(
            env.broker.names.submitted_queue().as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the job message is on the submitted queue");
    let job: batchgate_shared::message::JobMessage =
        serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(job.manifest.job_id, job_id);
    assert_eq!(job.input.requests, Some(5000));
    assert!(job.input.uri.starts_with("file:///"));
    env.cleanup().await;
}

#[test]
fn unreachable_broker_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("batchgate.toml");
    let prices = batchgate_tests::repo_root().join("config/prices.toml");
    std::fs::write(
        &config,
        format!(
            "price_table = {:?}\n[broker]\nurl = \"amqp://guest:hunter2@127.0.0.1:1/%2f\"\nconnect_timeout_secs = 3\n\
             [redis]\nurl = \"redis://127.0.0.1:6379\"\n[teams.search]\ncost_center = \"CC-2002\"\nmonthly_budget_usd = \"1\"\n",
            prices.display().to_string()
        ),
    )
    .unwrap();
    let manifest = dir.path().join("m.toml");
    std::fs::write(
        &manifest,
        GOOD_MANIFEST
            .replace("\"JOB\"", "\"unreachable\"")
            .replace("data-eng", "search")
            .replace("CC-1001", "CC-2002"),
    )
    .unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, line("a") + "\n").unwrap();
    let output = std::process::Command::new(batchgate_tests::binary("batchgate"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "submit",
            "--manifest",
            manifest.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("amqp://guest:***@127.0.0.1:1/%2f"),
        "{stderr}"
    );
    assert!(stderr.contains("rabbitmq-server"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

const ANTHROPIC_MANIFEST: &str = r#"
job_id = "JOB"
owner_team = "ml-eval"
cost_center = "CC-3003"
workload_class = "eval"
purpose = "validation test"
provider = "anthropic"
endpoint = "/v1/messages"
model = "claude-haiku-4-5"
"#;

fn anthropic_line(custom_id: &str) -> String {
    format!(
        r#"{{"custom_id":"{custom_id}","params":{{"model":"claude-haiku-4-5","max_tokens":50,"messages":[{{"role":"user","content":"hi"}}]}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_rejects_invalid_anthropic_input() {
    let env = TestEnv::new(
        SimulatorConfig::default(),
        &[("ml-eval", "CC-3003", "10.00")],
    )
    .await;
    let cases: [(&str, String, &[&str]); 6] = [
        (
            "custom id with a dot",
            anthropic_line("doc.1") + "\n",
            &["line 1", "custom_id", "doc.1"],
        ),
        (
            "custom id too long",
            anthropic_line(&"x".repeat(65)) + "\n",
            &["line 1", "custom_id"],
        ),
        (
            "missing max tokens",
            anthropic_line("a").replace(r#""max_tokens":50,"#, "") + "\n",
            &["line 1", "max_tokens"],
        ),
        (
            "other model",
            anthropic_line("a").replace("claude-haiku-4-5", "claude-opus-4-8") + "\n",
            &["line 1", "model"],
        ),
        (
            "missing messages",
            anthropic_line("a").replace(r#","messages":[{"role":"user","content":"hi"}]"#, "")
                + "\n",
            &["line 1", "messages"],
        ),
        (
            "openai shape",
            line("a") + "\n",
            &["line 1", "unexpected key"],
        ),
    ];
    for (index, (name, input, expected)) in cases.iter().enumerate() {
        let manifest_path = env.dir.path().join(format!("anthropic-{index}.toml"));
        let input_path = env.dir.path().join(format!("anthropic-{index}.jsonl"));
        std::fs::write(
            &manifest_path,
            ANTHROPIC_MANIFEST.replace("\"JOB\"", &format!("\"{}-a{index}\"", env.id)),
        )
        .unwrap();
        std::fs::write(&input_path, input).unwrap();
        let output = env.cli(&[
            "submit",
            "--manifest",
            manifest_path.to_str().unwrap(),
            "--input",
            input_path.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "case {name:?}: {stderr}");
        for expected in *expected {
            assert!(
                stderr.contains(expected),
                "case {name:?}: stderr does not mention {expected:?}: {stderr}"
            );
        }
    }

    // The manifest of the other provider's endpoint is rejected by field.
    let manifest_path = env.dir.path().join("anthropic-endpoint.toml");
    let manifest = ANTHROPIC_MANIFEST
        .replace("\"JOB\"", "\"endpoint-case\"")
        .replace("/v1/messages", "/v1/chat/completions");
    std::fs::write(&manifest_path, manifest).unwrap();
    let input_path = env.dir.path().join("anthropic-0.jsonl");
    let output = env.cli(&[
        "submit",
        "--manifest",
        manifest_path.to_str().unwrap(),
        "--input",
        input_path.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("endpoint"), "{stderr}");
    env.cleanup().await;
}

#[test]
fn refused_login_is_not_called_down() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("batchgate.toml");
    let prices = batchgate_tests::repo_root().join("config/prices.toml");
    let url = batchgate_tests::broker_url().replacen("guest:guest@", "guest:wrong-password@", 1);
    std::fs::write(
        &config,
        format!(
            "price_table = {:?}\n[broker]\nurl = {url:?}\nconnect_timeout_secs = 5\n\
             [redis]\nurl = \"redis://127.0.0.1:6379\"\n[teams.search]\ncost_center = \"CC-2002\"\nmonthly_budget_usd = \"1\"\n",
            prices.display().to_string()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(batchgate_tests::binary("batchgate"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "ledger",
            "--month",
            "2026-12",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused the connection"), "{stderr}");
    assert!(
        stderr.contains("Check the user, password and vhost"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-password"),
        "the password leaked: {stderr}"
    );
}
