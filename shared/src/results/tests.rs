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

/// One usage shape per row: the line's usage, and the token classes it must
/// count. The traps: cached tokens counted again as input, cache-creation
/// tokens counted both as input and as cache writes.
#[test]
fn usage_shapes_count_each_token_once() {
    let cases: [(&str, ResultFormat, Value, TokenCounts); 6] = [
        (
            "chat with cached and cache-write tokens inside prompt_tokens",
            ResultFormat::OpenAi,
            json!({"prompt_tokens": 1000, "completion_tokens": 50,
                "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 300},
                "completion_tokens_details": {"reasoning_tokens": 40}}),
            TokenCounts {
                input: 100,
                cached_input: 600,
                cache_write: 300,
                cache_write_1h: 0,
                output: 50,
            },
        ),
        (
            "chat whose reasoning tokens are inside completion_tokens",
            ResultFormat::OpenAi,
            json!({"prompt_tokens": 10, "completion_tokens": 90,
                "completion_tokens_details": {"reasoning_tokens": 80}}),
            TokenCounts {
                input: 10,
                output: 90,
                ..TokenCounts::default()
            },
        ),
        (
            "responses with cached tokens inside input_tokens",
            ResultFormat::OpenAi,
            json!({"input_tokens": 500, "output_tokens": 20,
                "input_tokens_details": {"cached_tokens": 400},
                "output_tokens_details": {"reasoning_tokens": 5}}),
            TokenCounts {
                input: 100,
                cached_input: 400,
                output: 20,
                ..TokenCounts::default()
            },
        ),
        (
            "embeddings with prompt tokens only",
            ResultFormat::OpenAi,
            json!({"prompt_tokens": 33, "total_tokens": 33}),
            TokenCounts {
                input: 33,
                ..TokenCounts::default()
            },
        ),
        (
            "anthropic classes that add up, nothing subtracted",
            ResultFormat::Anthropic,
            json!({"input_tokens": 12, "cache_creation_input_tokens": 700,
                "cache_read_input_tokens": 3000, "output_tokens": 40,
                "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 500}}),
            TokenCounts {
                input: 12,
                cached_input: 3000,
                cache_write: 200,
                cache_write_1h: 500,
                output: 40,
            },
        ),
        (
            "anthropic cache writes without the breakdown",
            ResultFormat::Anthropic,
            json!({"input_tokens": 12, "cache_creation_input_tokens": 700, "output_tokens": 1}),
            TokenCounts {
                input: 12,
                cache_write: 700,
                output: 1,
                ..TokenCounts::default()
            },
        ),
    ];
    for (name, format, usage, expected) in cases {
        let line = match format {
            ResultFormat::OpenAi => json!({"custom_id": "r1", "response": {"status_code": 200,
                "body": {"choices": [{"message": {"content": "usage: \"prompt_tokens\": 9"}}], "usage": usage}}}),
            ResultFormat::Anthropic => json!({"custom_id": "r1", "result": {"type": "succeeded",
                "message": {"content": [{"type": "text", "text": "x"}], "usage": usage}}}),
        };
        let mut totals = ResultTotals::new(format);
        totals.add_line(line.to_string().as_bytes()).unwrap();
        assert_eq!(totals.tokens_succeeded, expected, "{name}");
        // The typed read and the JSON-value read agree.
        let value = match format {
            ResultFormat::OpenAi => openai_usage(&line["response"]["body"]),
            ResultFormat::Anthropic => anthropic_usage(&line["result"]["message"]),
        };
        assert_eq!(value, expected, "{name}: value read");
    }
}

#[test]
fn odd_body_shapes_fall_back_to_value_read() {
    let mut totals = ResultTotals::new(ResultFormat::OpenAi);
    let text_body = br#"{"custom_id":"a","response":{"status_code":500,"body":"upstream timeout"},"error":null}"#;
    totals.add_line(text_body).unwrap();
    assert_eq!(totals.requests.failed, 1);
    assert_eq!(totals.requests.failed_retryable, 1);
    let no_status = br#"{"custom_id":"b","response":{"body":{}}}"#;
    let error = totals.add_line(no_status).unwrap_err();
    assert!(error.contains("status_code"), "{error}");
}

#[test]
fn long_prompts_go_to_the_long_context_tier() {
    let mut totals = ResultTotals::new(ResultFormat::OpenAi).with_long_context(Some(1000));
    let line = |id: &str, prompt: u64, cached: u64| {
        json!({"custom_id": id, "response": {"status_code": 200, "body": {"usage": {
            "prompt_tokens": prompt, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": cached}}}}})
        .to_string()
    };
    totals.add_line(line("at", 1000, 0).as_bytes()).unwrap();
    // Cached tokens count towards the prompt size: 700 + 400 cached is above 1000.
    totals
        .add_line(line("above", 1100, 400).as_bytes())
        .unwrap();
    assert_eq!(totals.tokens_succeeded.input, 1000);
    assert_eq!(totals.long_context_succeeded.input, 700);
    assert_eq!(totals.long_context_succeeded.cached_input, 400);
}

#[test]
fn anthropic_lines_are_not_openai_lines() {
    let mut totals = ResultTotals::new(ResultFormat::OpenAi);
    let anthropic = br#"{"custom_id":"a","result":{"type":"succeeded","message":{"usage":{"input_tokens":3,"output_tokens":1}}}}"#;
    let error = totals.add_line(anthropic).unwrap_err();
    assert!(error.contains("not an OpenAI batch result line"), "{error}");
    // An error-file line has no response but an error object, and stays valid.
    let expired = br#"{"custom_id":"b","response":null,"error":{"code":"batch_expired"}}"#;
    totals.add_line(expired).unwrap();
    assert_eq!(totals.requests.expired, 1);
}
