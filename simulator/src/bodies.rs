//! Response bodies of succeeded requests, one shape per endpoint.

use batchgate_shared::tokens::{Encoding, count_prompt_tokens};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use crate::seeding::random_hex;
use crate::validation::{InputRequest, count_embedding_inputs};

/// Completion token limit of a request that sets none.
const DEFAULT_MAX_COMPLETION_TOKENS: u64 = 256;

/// Unix time written as `created` in generated bodies. It is fixed (2026-01-01
/// 00:00:00 UTC) so that output bytes do not depend on when a batch ran.
const GENERATED_CREATED_AT: u64 = 1_767_225_600;

/// Length of each generated embedding vector, whatever `dimensions` the request sets.
const EMBEDDING_DIMENSIONS: usize = 8;

/// Maximum number of words in a generated reply. Reply text is filler, and its
/// length does not match `completion_tokens`.
const MAX_REPLY_WORDS: u64 = 24;

const REPLY_WORDS: [&str; 16] = [
    "simulated",
    "batch",
    "reply",
    "token",
    "request",
    "model",
    "result",
    "line",
    "output",
    "answer",
    "sample",
    "value",
    "field",
    "record",
    "entry",
    "text",
];

/// Builds the 200 body of a request: usage with the real prompt token count, a
/// completion token count drawn from 1..=max, and filler content.
pub(crate) fn success_body(
    endpoint: &str,
    request: &InputRequest,
    rng: &mut StdRng,
    cached_ratio: f64,
) -> Value {
    let encoding = Encoding::for_model(&request.model);
    let prompt_tokens = count_prompt_tokens(encoding, endpoint, &request.body);
    // Truncation is intended: cached tokens are a whole number no larger than the prompt.
    let cached_tokens = (prompt_tokens as f64 * cached_ratio).floor() as u64;

    match endpoint {
        "/v1/embeddings" => embeddings_body(request, rng, prompt_tokens),
        "/v1/responses" => responses_body(request, rng, prompt_tokens, cached_tokens),
        "/v1/completions" => completions_body(request, rng, prompt_tokens),
        _ => chat_body(request, rng, prompt_tokens, cached_tokens),
    }
}

fn chat_body(request: &InputRequest, rng: &mut StdRng, prompt_tokens: u64, cached: u64) -> Value {
    let body = &request.body;
    let completion_tokens =
        draw_completion_tokens(body, &["max_completion_tokens", "max_tokens"], rng);
    let json_mode = is_json_format(body.pointer("/response_format/type"));
    let content = reply_text(rng, completion_tokens, json_mode);
    json!({
        "id": format!("chatcmpl-{}", random_hex(rng)),
        "object": "chat.completion",
        "created": GENERATED_CREATED_AT,
        "model": request.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    })
}

fn responses_body(
    request: &InputRequest,
    rng: &mut StdRng,
    input_tokens: u64,
    cached: u64,
) -> Value {
    let body = &request.body;
    let output_tokens = draw_completion_tokens(body, &["max_output_tokens"], rng);
    let json_mode = is_json_format(body.pointer("/text/format/type"));
    let text = reply_text(rng, output_tokens, json_mode);
    json!({
        "id": format!("resp_{}", random_hex(rng)),
        "object": "response",
        "created_at": GENERATED_CREATED_AT,
        "status": "completed",
        "model": request.model,
        "output": [{
            "type": "message",
            "id": format!("msg_{}", random_hex(rng)),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }],
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    })
}

fn completions_body(request: &InputRequest, rng: &mut StdRng, prompt_tokens: u64) -> Value {
    let completion_tokens = draw_completion_tokens(&request.body, &["max_tokens"], rng);
    let text = reply_text(rng, completion_tokens, false);
    json!({
        "id": format!("cmpl-{}", random_hex(rng)),
        "object": "text_completion",
        "created": GENERATED_CREATED_AT,
        "model": request.model,
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    })
}

// NOTE: embeddings are always float arrays, even when the request sets
// `encoding_format: "base64"`.
fn embeddings_body(request: &InputRequest, rng: &mut StdRng, prompt_tokens: u64) -> Value {
    let inputs = count_embedding_inputs(request.body.get("input"));
    let data: Vec<Value> = (0..inputs)
        .map(|index| {
            json!({
                "object": "embedding",
                "index": index,
                "embedding": unit_vector(rng),
            })
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

/// Draws a random unit vector, rounded to 6 decimals to keep result lines short.
fn unit_vector(rng: &mut StdRng) -> Vec<f64> {
    let mut vector: Vec<f64> = (0..EMBEDDING_DIMENSIONS)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x = (*x / norm * 1e6).round() / 1e6;
        }
    }
    vector
}

/// Draws a completion token count uniformly from 1..=max, where max is the first
/// of `limit_fields` that the body sets. `Plan::new` has already rejected limits
/// below 1.
fn draw_completion_tokens(body: &Value, limit_fields: &[&str], rng: &mut StdRng) -> u64 {
    let max = limit_fields
        .iter()
        .find_map(|field| body.get(*field).and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_COMPLETION_TOKENS)
        .max(1);
    rng.random_range(1..=max)
}

fn is_json_format(format_type: Option<&Value>) -> bool {
    matches!(
        format_type.and_then(Value::as_str),
        Some("json_object" | "json_schema")
    )
}

/// Builds filler text, wrapped in a JSON object when the request sets a JSON
/// response format.
pub(crate) fn reply_text(rng: &mut StdRng, completion_tokens: u64, json_mode: bool) -> String {
    let word_count = completion_tokens.min(MAX_REPLY_WORDS);
    let words: Vec<&str> = (0..word_count)
        .map(|_| REPLY_WORDS[rng.random_range(0..REPLY_WORDS.len())])
        .collect();
    let text = words.join(" ");
    if json_mode {
        json!({ "reply": text }).to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn request(body: Value) -> InputRequest {
        InputRequest {
            custom_id: "r".to_owned(),
            model: "gpt-6-luna".to_owned(),
            body,
        }
    }

    #[test]
    fn chat_usage_respects_max_completion_tokens() {
        let body = json!({"model": "gpt-6-luna", "max_completion_tokens": 5, "max_tokens": 500,
            "messages": [{"role": "user", "content": "hello"}]});
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let value = success_body(
                "/v1/chat/completions",
                &request(body.clone()),
                &mut rng,
                0.0,
            );
            let completion = value["usage"]["completion_tokens"].as_u64().unwrap();
            assert!(
                (1..=5).contains(&completion),
                "completion tokens {completion}"
            );
        }
    }

    #[test]
    fn chat_json_mode_content_is_json() {
        let body = json!({"model": "gpt-6-luna", "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "hello"}]});
        let mut rng = StdRng::seed_from_u64(1);
        let value = success_body("/v1/chat/completions", &request(body), &mut rng, 0.0);
        let content = value["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(content).unwrap();
        assert!(parsed["reply"].is_string());
    }

    #[test]
    fn embeddings_one_vector_per_input() {
        let body = json!({"model": "text-embedding-3-small", "input": ["a", "b", "c"]});
        let mut rng = StdRng::seed_from_u64(1);
        let value = success_body("/v1/embeddings", &request(body), &mut rng, 0.0);
        assert_eq!(value["data"].as_array().unwrap().len(), 3);
        assert!(value["usage"].get("completion_tokens").is_none());
    }

    #[test]
    fn cached_ratio_scales_cached_tokens() {
        let body = json!({"model": "gpt-6-luna",
            "messages": [{"role": "user", "content": "one two three four five six seven"}]});
        let mut rng = StdRng::seed_from_u64(1);
        let value = success_body("/v1/chat/completions", &request(body), &mut rng, 0.5);
        let prompt = value["usage"]["prompt_tokens"].as_u64().unwrap();
        let cached = value["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        assert_eq!(cached, prompt / 2);
    }
}
