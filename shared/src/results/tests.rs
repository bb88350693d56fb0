use serde_json::{Value, json};

use super::*;

#[test]
fn openai_lines_are_classified_by_status_code() {
    let mut totals = ResultTotals::new(ResultFormat::OpenAi);
    let ok = br#"{"custom_id":"a","response":{"status_code":200,"body":{"usage":{"prompt_tokens":10,"completion_tokens":4}}},"error":null}"#;
    let rejected = br#"{"custom_id":"b","response":{"status_code":400,"body":{"error":{"message":"bad"}}},"error":null}"#;
    let expired = br#"{"custom_id":"c","response":null,"error":{"code":"batch_expired","message":"expired"}}"#;
    for line in [&ok[..], &rejected[..], &expired[..], &ok[..]] {
        totals.add_line(line).unwrap();
    }
    assert_eq!(totals.requests.total, 3);
    assert_eq!(totals.requests.succeeded, 1);
    assert_eq!(totals.requests.failed, 1);
    assert_eq!(totals.requests.expired, 1);
    assert_eq!(totals.duplicate_lines, 1);
    assert_eq!(
        totals.tokens_succeeded,
        TokenCounts {
            input: 10,
            output: 4,
            ..TokenCounts::default()
        }
    );
}

#[test]
fn openai_cached_tokens_are_not_counted_as_input() {
    let body: Value = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 5}}});
    let expected = TokenCounts {
        input: 10,
        cached_input: 60,
        cache_write: 30,
        cache_write_1h: 0,
        output: 7,
    };
    assert_eq!(openai_usage(&body), expected);
}

#[test]
fn openai_responses_usage_is_normalised() {
    let body: Value = json!({"usage": {"input_tokens": 50, "output_tokens": 9,
        "input_tokens_details": {"cached_tokens": 20}}});
    assert_eq!(
        openai_usage(&body),
        TokenCounts {
            input: 30,
            cached_input: 20,
            output: 9,
            ..TokenCounts::default()
        }
    );
}

#[test]
fn openai_embeddings_have_input_only() {
    let body: Value = json!({"usage": {"prompt_tokens": 12, "total_tokens": 12}});
    assert_eq!(
        openai_usage(&body),
        TokenCounts {
            input: 12,
            ..TokenCounts::default()
        }
    );
}

#[test]
fn anthropic_cache_classes_add_up_without_subtraction() {
    let message = json!({"usage": {"input_tokens": 40, "cache_creation_input_tokens": 30,
        "cache_read_input_tokens": 20, "output_tokens": 5,
        "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20}}});
    let expected = TokenCounts {
        input: 40,
        cached_input: 20,
        cache_write: 10,
        cache_write_1h: 20,
        output: 5,
    };
    assert_eq!(anthropic_usage(&message), expected);
}

#[test]
fn anthropic_cache_writes_without_breakdown_are_5_minute() {
    let message = json!({"usage": {"input_tokens": 1, "cache_creation_input_tokens": 30, "output_tokens": 2}});
    assert_eq!(anthropic_usage(&message).cache_write, 30);
    assert_eq!(anthropic_usage(&message).cache_write_1h, 0);
}

#[test]
fn anthropic_outcomes_are_classified() {
    let mut totals = ResultTotals::new(ResultFormat::Anthropic);
    let lines = [
        json!({"custom_id": "a", "result": {"type": "succeeded", "message": {"usage": {"input_tokens": 3, "output_tokens": 4}}}}),
        json!({"custom_id": "b", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}}}),
        json!({"custom_id": "c", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}}}),
        json!({"custom_id": "d", "result": {"type": "canceled"}}),
        json!({"custom_id": "e", "result": {"type": "expired"}}),
    ];
    for line in &lines {
        totals.add_line(line.to_string().as_bytes()).unwrap();
    }
    assert_eq!(totals.requests.total, 5);
    assert_eq!(totals.requests.succeeded, 1);
    assert_eq!(totals.requests.failed, 2);
    assert_eq!(totals.requests.failed_retryable, 1);
    assert_eq!(totals.requests.cancelled, 1);
    assert_eq!(totals.requests.expired, 1);
    assert_eq!(totals.tokens_succeeded.output, 4);
}

#[test]
fn malformed_and_truncated_lines_are_errors() {
    let mut totals = ResultTotals::new(ResultFormat::OpenAi);
    assert!(totals.add_line(b"{\"custom_id\": \"x\", ").is_err());
    let mut totals = ResultTotals::new(ResultFormat::Anthropic);
    assert!(
        totals
            .add_line(br#"{"custom_id":"x","result":{"type":"mystery"}}"#)
            .is_err()
    );
}

#[test]
fn id_in_both_files_is_billed_once() {
    let mut output = ResultTotals::new(ResultFormat::OpenAi);
    let ok = br#"{"custom_id":"a","response":{"status_code":200,"body":{"usage":{"prompt_tokens":10}}},"error":null}"#;
    output.add_line(ok).unwrap();
    let mut errors = ResultTotals::new(ResultFormat::OpenAi);
    let failed = br#"{"custom_id":"a","response":{"status_code":500,"body":{}},"error":null}"#;
    errors.add_line_after(failed, Some(&output)).unwrap();
    output.merge(errors);
    assert_eq!(output.duplicate_lines, 1);
    assert_eq!(output.requests.total, 1);
    assert_eq!(output.requests.succeeded, 1);
    assert_eq!(output.requests.failed, 0);
    assert_eq!(output.tokens_succeeded.input, 10);
}
