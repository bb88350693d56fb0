//! Accounting of provider result files, one line at a time.
//!
//! OpenAI lines are classified by `response.status_code`, not by `error`,
//! because a rejected request can arrive with `error: null` and a 4xx status.
//! Anthropic lines carry `result.type`. Lines may come in any order; a
//! `custom_id` seen twice is counted and billed once.
//!
//! NOTE: memory grows with the number of distinct `custom_id` values (one
//! set entry each, to catch duplicates), not with the file size.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use crate::message::RequestCounts;
use crate::pricing::{PriceEntry, TokenCounts};

/// Layout of a provider's result lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResultFormat {
    #[default]
    OpenAi,
    Anthropic,
}

impl ResultFormat {
    pub fn for_provider(provider: &str) -> ResultFormat {
        if provider == "anthropic" {
            ResultFormat::Anthropic
        } else {
            ResultFormat::OpenAi
        }
    }
}

#[derive(Deserialize)]
struct OpenAiLine {
    custom_id: Option<String>,
    response: Option<OpenAiResponse>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct OpenAiResponse {
    status_code: u16,
    #[serde(default)]
    body: Value,
}

#[derive(Deserialize)]
struct AnthropicLine {
    custom_id: Option<String>,
    result: AnthropicResult,
}

#[derive(Deserialize)]
struct AnthropicResult {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Value,
    #[serde(default)]
    error: Value,
}

/// Outcome of one request.
enum Outcome {
    Succeeded(TokenCounts),
    Failed {
        retryable: bool,
        tokens: TokenCounts,
    },
    Expired,
    Cancelled,
}

/// Running totals over the result lines of one provider batch.
#[derive(Debug, Default)]
pub struct ResultTotals {
    pub format: ResultFormat,
    pub requests: RequestCounts,
    /// Usage of succeeded requests.
    pub tokens_succeeded: TokenCounts,
    /// Usage reported on failed requests, billed only where the price table lists `failed`.
    pub tokens_failed: TokenCounts,
    /// Lines whose `custom_id` had already been counted.
    pub duplicate_lines: u64,
    seen: HashSet<String>,
}

impl ResultTotals {
    pub fn new(format: ResultFormat) -> ResultTotals {
        ResultTotals {
            format,
            ..ResultTotals::default()
        }
    }

    /// Returns the usage that the price entry's billing rule bills.
    pub fn billed_tokens(&self, price: &PriceEntry) -> TokenCounts {
        let mut tokens = TokenCounts::default();
        if price.bills("succeeded") {
            tokens.add(&self.tokens_succeeded);
        }
        if price.bills("failed") {
            tokens.add(&self.tokens_failed);
        }
        tokens
    }

    /// Adds the totals of a later file of the same batch, read with
    /// [`ResultTotals::add_line_after`] so that it repeats no `custom_id`.
    pub fn merge(&mut self, other: ResultTotals) {
        self.seen.extend(other.seen);
        self.requests.add(&other.requests);
        self.tokens_succeeded.add(&other.tokens_succeeded);
        self.tokens_failed.add(&other.tokens_failed);
        self.duplicate_lines += other.duplicate_lines;
    }

    /// Adds one result line. A line that cannot be read returns a description of
    /// the problem, and the caller reports it with its file and line number.
    pub fn add_line(&mut self, line: &[u8]) -> Result<(), String> {
        self.add_line_after(line, None)
    }

    /// Adds one result line of a later file of the same batch: a `custom_id`
    /// already counted in `earlier` files is a duplicate and adds nothing.
    pub fn add_line_after(
        &mut self,
        line: &[u8],
        earlier: Option<&ResultTotals>,
    ) -> Result<(), String> {
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            return Ok(());
        }
        let (custom_id, outcome) = match self.format {
            ResultFormat::OpenAi => parse_openai(trimmed)?,
            ResultFormat::Anthropic => parse_anthropic(trimmed)?,
        };
        if earlier.is_some_and(|earlier| earlier.seen.contains(&custom_id))
            || !self.seen.insert(custom_id)
        {
            self.duplicate_lines += 1;
            return Ok(());
        }
        self.requests.total += 1;
        match outcome {
            Outcome::Succeeded(tokens) => {
                self.requests.succeeded += 1;
                self.tokens_succeeded.add(&tokens);
            }
            Outcome::Failed { retryable, tokens } => {
                self.requests.failed += 1;
                self.requests.failed_retryable += u64::from(retryable);
                self.tokens_failed.add(&tokens);
            }
            Outcome::Expired => self.requests.expired += 1,
            Outcome::Cancelled => self.requests.cancelled += 1,
        }
        Ok(())
    }
}

fn parse_openai(line: &[u8]) -> Result<(String, Outcome), String> {
    let parsed: OpenAiLine =
        serde_json::from_slice(line).map_err(|error| format!("malformed result line: {error}"))?;
    let custom_id = parsed.custom_id.ok_or("result line has no custom_id")?;
    let outcome = match parsed.response {
        Some(response) if response.status_code == 200 => {
            Outcome::Succeeded(openai_usage(&response.body))
        }
        Some(response) => Outcome::Failed {
            retryable: response.status_code == 429 || response.status_code >= 500,
            tokens: openai_usage(&response.body),
        },
        None => {
            let code = parsed
                .error
                .as_ref()
                .and_then(|error| error.get("code"))
                .and_then(Value::as_str);
            match code {
                Some("batch_expired") => Outcome::Expired,
                Some("batch_cancelled") => Outcome::Cancelled,
                _ => Outcome::Failed {
                    retryable: false,
                    tokens: TokenCounts::default(),
                },
            }
        }
    };
    Ok((custom_id, outcome))
}

fn parse_anthropic(line: &[u8]) -> Result<(String, Outcome), String> {
    let parsed: AnthropicLine =
        serde_json::from_slice(line).map_err(|error| format!("malformed result line: {error}"))?;
    let custom_id = parsed.custom_id.ok_or("result line has no custom_id")?;
    let outcome = match parsed.result.kind.as_str() {
        "succeeded" => Outcome::Succeeded(anthropic_usage(&parsed.result.message)),
        "errored" => {
            // The error object nests as {"type": "error", "error": {"type": ...}}.
            let error = &parsed.result.error;
            let kind = error
                .pointer("/error/type")
                .or_else(|| error.get("type"))
                .and_then(Value::as_str);
            let retryable = matches!(kind, Some("overloaded_error" | "api_error"));
            Outcome::Failed {
                retryable,
                tokens: TokenCounts::default(),
            }
        }
        "canceled" => Outcome::Cancelled,
        "expired" => Outcome::Expired,
        other => return Err(format!("unknown result type {other:?}")),
    };
    Ok((custom_id, outcome))
}

/// Normalises OpenAI usage into token classes counted once.
///
/// Chat Completions report cached and cache-write tokens inside `prompt_tokens`,
/// and Responses report cached tokens inside `input_tokens`, so both are
/// subtracted from the plain input. Reasoning tokens are already inside the
/// output count. Embeddings report `prompt_tokens` only.
pub fn openai_usage(body: &Value) -> TokenCounts {
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
            output: number(usage.get("output_tokens")),
            ..TokenCounts::default()
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
        ..TokenCounts::default()
    }
}

/// Normalises Anthropic usage. Its classes are already separate: `input_tokens`
/// excludes cache reads and writes, so nothing is subtracted. Cache writes are
/// split into the 5-minute and 1-hour caches when the breakdown is present,
/// and count as 5-minute writes otherwise.
pub fn anthropic_usage(message: &Value) -> TokenCounts {
    let Some(usage) = message.get("usage") else {
        return TokenCounts::default();
    };
    let number = |value: Option<&Value>| value.and_then(Value::as_u64).unwrap_or(0);
    let cache_creation = usage.get("cache_creation");
    let (write_5m, write_1h) = match cache_creation {
        Some(breakdown) if breakdown.is_object() => (
            number(breakdown.get("ephemeral_5m_input_tokens")),
            number(breakdown.get("ephemeral_1h_input_tokens")),
        ),
        _ => (number(usage.get("cache_creation_input_tokens")), 0),
    };
    TokenCounts {
        input: number(usage.get("input_tokens")),
        cached_input: number(usage.get("cache_read_input_tokens")),
        cache_write: write_5m,
        cache_write_1h: write_1h,
        output: number(usage.get("output_tokens")),
    }
}

#[cfg(test)]
mod tests;
