//! Results of an ended message batch in Anthropic's JSONL format, one
//! `{"custom_id","result":{"type",...}}` line per request.

use batchgate_shared::tokens::{Encoding, count_anthropic_prompt_tokens};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use crate::anthropic::batch::{CacheRatios, MessageOutcome, Unprocessed};
use crate::bodies::reply_text;
use crate::faults::FaultProfile;
use crate::line_faults::{ResultLine, damage_and_join};
use crate::plan::Plan;
use crate::seeding::{Stream, random_hex, stream_rng};

/// Inputs of result generation that come from the batch rather than the request.
#[derive(Debug, Clone)]
pub(crate) struct ResultSettings {
    pub(crate) seed: u64,
    pub(crate) sequence: u64,
    pub(crate) cache: CacheRatios,
    /// Result type of the requests after the first `done`.
    pub(crate) unprocessed: Unprocessed,
    /// Faults that damage the results.
    pub(crate) faults: FaultProfile,
}

/// Token usage of one succeeded request. The three input fields add up to the
/// prompt token count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) input_tokens: u64,
    pub(crate) cache_write_5m_tokens: u64,
    pub(crate) cache_write_1h_tokens: u64,
    pub(crate) cache_read_tokens: u64,
}

/// Splits `prompt_tokens` into uncached input, cache writes and cache reads.
///
/// The write and read shares are rounded down, and the uncached input takes the
/// rest, so the parts always add up to `prompt_tokens`. `SimulatorConfig::validate`
/// keeps the write and read ratios at a sum of at most 1.0, and the `min` guards
/// against rounding in that sum.
pub(crate) fn split_usage(prompt_tokens: u64, cache: CacheRatios) -> Usage {
    // Truncation is intended: each share is a whole number no larger than the prompt.
    let cache_write = ((prompt_tokens as f64 * cache.write).floor() as u64).min(prompt_tokens);
    let cache_read =
        ((prompt_tokens as f64 * cache.read).floor() as u64).min(prompt_tokens - cache_write);
    let cache_write_1h =
        ((cache_write as f64 * cache.one_hour_share).floor() as u64).min(cache_write);
    Usage {
        input_tokens: prompt_tokens - cache_write - cache_read,
        cache_write_5m_tokens: cache_write - cache_write_1h,
        cache_write_1h_tokens: cache_write_1h,
        cache_read_tokens: cache_read,
    }
}

/// Generates one result line per request in processing order: the outcome of
/// the first `done` requests and `canceled` or `expired` for the others. Then
/// applies the duplicate and malformed line faults.
///
/// Each line depends only on the settings and the request, so the same seed,
/// sequence number and input always give the same bytes.
pub(crate) fn generate_results(
    plan: &Plan<MessageOutcome>,
    done: usize,
    settings: &ResultSettings,
) -> Vec<u8> {
    let mut lines = Vec::with_capacity(plan.len());
    for (index, planned) in plan.requests.iter().enumerate() {
        let request = &planned.request;
        let result = if index >= done {
            match settings.unprocessed {
                Unprocessed::Canceled => json!({"type": "canceled"}),
                Unprocessed::Expired => json!({"type": "expired"}),
            }
        } else {
            match &planned.outcome {
                MessageOutcome::Succeeded => {
                    let mut rng = stream_rng(
                        settings.seed,
                        settings.sequence,
                        Stream::Content,
                        &request.custom_id,
                    );
                    json!({
                        "type": "succeeded",
                        "message": message_body(&request.body, &mut rng, settings.cache),
                    })
                }
                MessageOutcome::Errored {
                    error_type,
                    message,
                } => json!({
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {"type": error_type, "message": message},
                    },
                }),
            }
        };
        let succeeded = result["type"] == "succeeded";
        let line = json!({"custom_id": request.custom_id, "result": result});
        lines.push(ResultLine {
            bytes: line.to_string().into_bytes(),
            succeeded,
        });
    }

    let mut fault_rng = stream_rng(settings.seed, settings.sequence, Stream::Fault, "");
    damage_and_join(
        lines,
        settings.faults.duplicate_custom_id,
        settings.faults.malformed_line_at,
        &mut fault_rng,
    )
}

/// Builds the message of a succeeded request: usage with the tokenizer's prompt
/// count split by the cache ratios, output tokens drawn from 1..=max_tokens, and
/// filler text. `plan_requests` has already checked `model` and `max_tokens`.
fn message_body(params: &Value, rng: &mut StdRng, cache: CacheRatios) -> Value {
    let prompt_tokens = count_anthropic_prompt_tokens(Encoding::O200kBase, params);
    let usage = split_usage(prompt_tokens, cache);
    let max_tokens = params
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1);
    let output_tokens = rng.random_range(1..=max_tokens);
    let id = format!("msg_{}", random_hex(rng));
    let text = reply_text(rng, output_tokens, false);
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": params.get("model"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": usage.input_tokens,
            "cache_creation_input_tokens": usage.cache_write_5m_tokens + usage.cache_write_1h_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": usage.cache_write_5m_tokens,
                "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
            },
            "output_tokens": output_tokens,
            "service_tier": "batch",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratios(write: f64, read: f64, one_hour_share: f64) -> CacheRatios {
        CacheRatios {
            write,
            read,
            one_hour_share,
        }
    }

    #[test]
    fn split_usage_adds_up() {
        for prompt in [0, 1, 7, 100, 12_345] {
            for cache in [
                ratios(0.0, 0.0, 0.0),
                ratios(0.3, 0.5, 0.5),
                ratios(0.7, 0.3, 1.0),
                ratios(1.0, 0.0, 0.25),
            ] {
                let usage = split_usage(prompt, cache);
                let total = usage.input_tokens
                    + usage.cache_write_5m_tokens
                    + usage.cache_write_1h_tokens
                    + usage.cache_read_tokens;
                assert_eq!(total, prompt, "prompt {prompt} with {cache:?}");
            }
        }
    }

    #[test]
    fn split_usage_rounds_shares_down() {
        let usage = split_usage(10, ratios(0.25, 0.35, 0.5));
        assert_eq!(usage.cache_write_5m_tokens + usage.cache_write_1h_tokens, 2);
        assert_eq!(usage.cache_write_1h_tokens, 1);
        assert_eq!(usage.cache_read_tokens, 3);
        assert_eq!(usage.input_tokens, 5);
    }
}
