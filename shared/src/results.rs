//! Accounting of OpenAI batch output and error files, one line at a time.
//!
//! Each line is classified by `response.status_code`, not by `error`, because
//! a rejected request can arrive with `error: null` and a 4xx status. Lines may
//! come in any order; a `custom_id` seen twice is counted and billed once.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use crate::message::RequestCounts;
use crate::pricing::TokenCounts;

#[derive(Deserialize)]
struct ResultLine {
    custom_id: Option<String>,
    response: Option<ResultResponse>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ResultResponse {
    status_code: u16,
    #[serde(default)]
    body: Value,
}

/// Running totals over the lines of a provider batch's result files.
#[derive(Debug, Default)]
pub struct ResultTotals {
    pub requests: RequestCounts,
    pub tokens: TokenCounts,
    /// Lines whose `custom_id` had already been counted.
    pub duplicate_lines: u64,
    seen: HashSet<String>,
}

impl ResultTotals {
    /// Adds the totals of another file of the same batch.
    pub fn merge(&mut self, other: ResultTotals) {
        for custom_id in other.seen {
            if !self.seen.insert(custom_id) {
                self.duplicate_lines += 1;
            }
        }
        self.requests.total += other.requests.total;
        self.requests.succeeded += other.requests.succeeded;
        self.requests.failed += other.requests.failed;
        self.requests.expired += other.requests.expired;
        self.tokens.add(&other.tokens);
        self.duplicate_lines += other.duplicate_lines;
    }

    /// Adds one result line. A line that cannot be read returns a description of
    /// the problem, and the caller reports it with its file and line number.
    pub fn add_line(&mut self, line: &[u8]) -> Result<(), String> {
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            return Ok(());
        }
        let parsed: ResultLine = serde_json::from_slice(trimmed)
            .map_err(|error| format!("malformed result line: {error}"))?;
        let custom_id = parsed.custom_id.ok_or("result line has no custom_id")?;
        if !self.seen.insert(custom_id) {
            self.duplicate_lines += 1;
            return Ok(());
        }
        self.requests.total += 1;
        match parsed.response {
            Some(response) if response.status_code == 200 => {
                self.requests.succeeded += 1;
                self.tokens.add(&usage_of(&response.body));
            }
            Some(_) => self.requests.failed += 1,
            None => {
                let code = parsed
                    .error
                    .as_ref()
                    .and_then(|error| error.get("code"))
                    .and_then(Value::as_str);
                if code == Some("batch_expired") {
                    self.requests.expired += 1;
                } else {
                    self.requests.failed += 1;
                }
            }
        }
        Ok(())
    }
}

/// Normalises the usage of a response body into token classes counted once.
///
/// Chat Completions report cached and cache-write tokens inside `prompt_tokens`,
/// and Responses report cached tokens inside `input_tokens`, so both are
/// subtracted from the plain input. Reasoning tokens are already inside the
/// output count. Embeddings report `prompt_tokens` only.
pub fn usage_of(body: &Value) -> TokenCounts {
    let Some(usage) = body.get("usage") else {
        return TokenCounts::default();
    };
    let number = |value: Option<&Value>| value.and_then(Value::as_u64).unwrap_or(0);
    if usage.get("input_tokens").is_some() {
        let details = usage.get("input_tokens_details");
        let input = number(usage.get("input_tokens"));
        let cached = number(details.and_then(|d| d.get("cached_tokens")));
        return TokenCounts {
            input: input.saturating_sub(cached),
            cached_input: cached,
            cache_write: 0,
            output: number(usage.get("output_tokens")),
        };
    }
    let details = usage.get("prompt_tokens_details");
    let prompt = number(usage.get("prompt_tokens"));
    let cached = number(details.and_then(|d| d.get("cached_tokens")));
    let cache_write = number(details.and_then(|d| d.get("cache_write_tokens")));
    TokenCounts {
        input: prompt.saturating_sub(cached + cache_write),
        cached_input: cached,
        cache_write,
        output: number(usage.get("completion_tokens")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_status_code() {
        let mut totals = ResultTotals::default();
        let ok = br#"{"custom_id":"a","response":{"status_code":200,"body":{"usage":{"prompt_tokens":10,"completion_tokens":4}}},"error":null}"#;
        let rejected = br#"{"custom_id":"b","response":{"status_code":400,"body":{"error":{"message":"bad"}}},"error":null}"#;
        let expired = br#"{"custom_id":"c","response":null,"error":{"code":"batch_expired","message":"expired"}}"#;
        for line in [&ok[..], &rejected[..], &expired[..], &ok[..]] {
            totals.add_line(line).unwrap();
        }
        assert_eq!(
            totals.requests,
            RequestCounts {
                total: 3,
                succeeded: 1,
                failed: 1,
                expired: 1
            }
        );
        assert_eq!(totals.duplicate_lines, 1);
        assert_eq!(
            totals.tokens,
            TokenCounts {
                input: 10,
                cached_input: 0,
                cache_write: 0,
                output: 4
            }
        );
    }

    #[test]
    fn cached_tokens_are_not_counted_as_input() {
        let body: Value = serde_json::json!({"usage": {"prompt_tokens": 100, "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
            "completion_tokens_details": {"reasoning_tokens": 5}}});
        assert_eq!(
            usage_of(&body),
            TokenCounts {
                input: 10,
                cached_input: 60,
                cache_write: 30,
                output: 7
            }
        );
    }

    #[test]
    fn responses_usage_is_normalised() {
        let body: Value = serde_json::json!({"usage": {"input_tokens": 50, "output_tokens": 9,
            "input_tokens_details": {"cached_tokens": 20}}});
        assert_eq!(
            usage_of(&body),
            TokenCounts {
                input: 30,
                cached_input: 20,
                cache_write: 0,
                output: 9
            }
        );
    }

    #[test]
    fn malformed_line_is_an_error() {
        let mut totals = ResultTotals::default();
        assert!(totals.add_line(b"{\"custom_id\": \"x\", ").is_err());
    }
}
