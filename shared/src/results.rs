//! Accounting of provider result files, one line at a time.
//!
//! OpenAI lines are classified by `response.status_code`, not by `error`,
//! because a rejected request can arrive with `error: null` and a 4xx status.
//! Anthropic lines carry `result.type`. Lines may come in any order; a
//! `custom_id` seen twice is counted and billed once.
//!
//! Lines are read into typed structs that skip every field except the ids,
//! status and usage, so the response text is scanned but never allocated. A
//! line whose shape the typed read rejects is read again as a JSON value.
//! Duplicates are found with a 128-bit hash of each `custom_id`, so memory
//! grows by 16 bytes (plus table overhead) per distinct request and not with
//! line length or file size. A provider batch has at most 50,000 (OpenAI) or
//! 100,000 (Anthropic) requests.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

mod files;

pub use files::{FileError, account_files, open as open_result_file};

use crate::message::RequestCounts;
use crate::pricing::{PriceEntry, TokenCounts, Usage};

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

/// An OpenAI result line, read without allocating the response body.
#[derive(Deserialize)]
struct OpenAiLine<'a> {
    #[serde(borrow)]
    custom_id: Option<std::borrow::Cow<'a, str>>,
    response: Option<OpenAiResponse>,
    #[serde(default, borrow)]
    error: Option<LineError<'a>>,
}

#[derive(Deserialize)]
struct OpenAiResponse {
    status_code: u16,
    #[serde(default)]
    body: Option<OpenAiBody>,
}

#[derive(Deserialize)]
struct OpenAiBody {
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

/// Usage of Chat Completions, Responses and Embeddings bodies in one struct.
#[derive(Deserialize, Default)]
struct OpenAiUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<OpenAiDetails>,
    input_tokens_details: Option<OpenAiDetails>,
}

#[derive(Deserialize, Default)]
struct OpenAiDetails {
    cached_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct LineError<'a> {
    #[serde(default, borrow)]
    code: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AnthropicLine<'a> {
    #[serde(borrow)]
    custom_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    result: AnthropicResult<'a>,
}

#[derive(Deserialize)]
struct AnthropicResult<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    message: Option<AnthropicMessage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize, Default)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_creation: Option<AnthropicCacheCreation>,
}

#[derive(Deserialize, Default)]
struct AnthropicCacheCreation {
    ephemeral_5m_input_tokens: Option<u64>,
    ephemeral_1h_input_tokens: Option<u64>,
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
    /// Usage of succeeded requests at or below the long-context threshold.
    pub tokens_succeeded: TokenCounts,
    /// Usage reported on failed requests, billed only where the price table lists `failed`.
    pub tokens_failed: TokenCounts,
    /// Usage of succeeded requests whose prompt is above the long-context threshold.
    pub long_context_succeeded: TokenCounts,
    /// Usage of failed requests whose prompt is above the long-context threshold.
    pub long_context_failed: TokenCounts,
    /// Lines whose `custom_id` had already been counted.
    pub duplicate_lines: u64,
    /// Prompt size (all input classes) above which a request is priced at the
    /// long-context rates; `None` when the model has no such tier.
    pub long_context_above: Option<u64>,
    seen: HashSet<u128>,
}

/// Returns the 128-bit hash of a `custom_id` that duplicate detection keeps.
/// Two distinct ids collide with a probability of about 2^-128 per pair, an
/// estimate that assumes xxh3 mixes like a random function.
fn id_hash(custom_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(custom_id.as_bytes())
}

impl ResultTotals {
    pub fn new(format: ResultFormat) -> ResultTotals {
        ResultTotals {
            format,
            ..ResultTotals::default()
        }
    }

    /// Sets the long-context threshold of the price entry that will price these totals.
    pub fn with_long_context(mut self, above_input_tokens: Option<u64>) -> ResultTotals {
        self.long_context_above = above_input_tokens;
        self
    }

    /// Returns the usage that the price entry's billing rule bills.
    pub fn billed_usage(&self, price: &PriceEntry) -> Usage {
        let mut usage = Usage::default();
        if price.bills("succeeded") {
            usage.base.add(&self.tokens_succeeded);
            usage.long_context.add(&self.long_context_succeeded);
        }
        if price.bills("failed") {
            usage.base.add(&self.tokens_failed);
            usage.long_context.add(&self.long_context_failed);
        }
        usage
    }

    /// Makes room for `requests` more distinct `custom_id` values.
    pub fn reserve(&mut self, requests: usize) {
        self.seen.reserve(requests);
    }

    /// Returns every token the requests used, billed or not, both tiers together.
    pub fn consumed_tokens(&self) -> TokenCounts {
        let mut tokens = self.tokens_succeeded;
        tokens.add(&self.tokens_failed);
        tokens.add(&self.long_context_succeeded);
        tokens.add(&self.long_context_failed);
        tokens
    }

    /// Adds the totals of a later file of the same batch, read with
    /// [`ResultTotals::add_line_after`] so that it repeats no `custom_id`.
    pub fn merge(&mut self, other: ResultTotals) {
        self.add_counts(&other);
        self.seen.extend(other.seen);
    }

    /// Adds the request, token and duplicate counts of `other`, but not its
    /// `custom_id`s, for totals that share none.
    pub fn add_counts(&mut self, other: &ResultTotals) {
        self.requests.add(&other.requests);
        self.tokens_succeeded.add(&other.tokens_succeeded);
        self.tokens_failed.add(&other.tokens_failed);
        self.long_context_succeeded
            .add(&other.long_context_succeeded);
        self.long_context_failed.add(&other.long_context_failed);
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
        let (hash, outcome) = match self.format {
            ResultFormat::OpenAi => parse_openai(trimmed)?,
            ResultFormat::Anthropic => parse_anthropic(trimmed)?,
        };
        if earlier.is_some_and(|earlier| earlier.seen.contains(&hash)) || !self.seen.insert(hash) {
            self.duplicate_lines += 1;
            return Ok(());
        }
        self.requests.total += 1;
        let is_long = |tokens: &TokenCounts| {
            self.long_context_above
                .is_some_and(|above| tokens.prompt() > above)
        };
        match outcome {
            Outcome::Succeeded(tokens) => {
                self.requests.succeeded += 1;
                if is_long(&tokens) {
                    self.long_context_succeeded.add(&tokens);
                } else {
                    self.tokens_succeeded.add(&tokens);
                }
            }
            Outcome::Failed { retryable, tokens } => {
                self.requests.failed += 1;
                self.requests.failed_retryable += u64::from(retryable);
                if is_long(&tokens) {
                    self.long_context_failed.add(&tokens);
                } else {
                    self.tokens_failed.add(&tokens);
                }
            }
            Outcome::Expired => self.requests.expired += 1,
            Outcome::Cancelled => self.requests.cancelled += 1,
        }
        Ok(())
    }
}

/// Problem of a line with neither a response nor an error, for example an
/// Anthropic result read as an OpenAI one.
const NOT_OPENAI: &str = "result line has neither a response nor an error object, so it is not an OpenAI batch result line";

/// Reads an OpenAI line with the typed structs, or as a JSON value when the
/// typed read rejects its shape (for example a body that is not an object).
fn parse_openai(line: &[u8]) -> Result<(u128, Outcome), String> {
    match serde_json::from_slice::<OpenAiLine>(line) {
        Ok(parsed) => {
            let custom_id = parsed.custom_id.ok_or("result line has no custom_id")?;
            let outcome = match parsed.response {
                None if parsed.error.is_none() => return Err(NOT_OPENAI.to_owned()),
                Some(response) => {
                    let usage = response
                        .body
                        .and_then(|body| body.usage)
                        .map(|usage| usage.tokens())
                        .unwrap_or_default();
                    openai_outcome(response.status_code, usage)
                }
                None => openai_error_outcome(parsed.error.and_then(|error| error.code).as_deref()),
            };
            Ok((id_hash(&custom_id), outcome))
        }
        Err(_) => parse_openai_value(line),
    }
}

fn openai_outcome(status_code: u16, tokens: TokenCounts) -> Outcome {
    if status_code == 200 {
        Outcome::Succeeded(tokens)
    } else {
        Outcome::Failed {
            retryable: status_code == 429 || status_code >= 500,
            tokens,
        }
    }
}

fn openai_error_outcome(code: Option<&str>) -> Outcome {
    match code {
        Some("batch_expired") => Outcome::Expired,
        Some("batch_cancelled") => Outcome::Cancelled,
        _ => Outcome::Failed {
            retryable: false,
            tokens: TokenCounts::default(),
        },
    }
}

fn parse_openai_value(line: &[u8]) -> Result<(u128, Outcome), String> {
    let parsed: Value =
        serde_json::from_slice(line).map_err(|error| format!("malformed result line: {error}"))?;
    let custom_id = parsed
        .get("custom_id")
        .and_then(Value::as_str)
        .ok_or("result line has no custom_id")?;
    let no_error = parsed.get("error").is_none_or(Value::is_null);
    let outcome = match parsed
        .get("response")
        .filter(|response| !response.is_null())
    {
        None if no_error => return Err(NOT_OPENAI.to_owned()),
        Some(response) => {
            let status = response
                .get("status_code")
                .and_then(Value::as_u64)
                .ok_or("result line has a response without a numeric status_code")?;
            let body = response.get("body").cloned().unwrap_or_default();
            openai_outcome(
                u16::try_from(status).unwrap_or(u16::MAX),
                openai_usage(&body),
            )
        }
        None => openai_error_outcome(parsed.pointer("/error/code").and_then(Value::as_str)),
    };
    Ok((id_hash(custom_id), outcome))
}

/// Reads an Anthropic line with the typed structs, or as a JSON value when
/// the typed read rejects its shape.
fn parse_anthropic(line: &[u8]) -> Result<(u128, Outcome), String> {
    let Ok(parsed) = serde_json::from_slice::<AnthropicLine>(line) else {
        return parse_anthropic_value(line);
    };
    let custom_id = parsed.custom_id.ok_or("result line has no custom_id")?;
    let usage = parsed
        .result
        .message
        .and_then(|message| message.usage)
        .map(|usage| usage.tokens())
        .unwrap_or_default();
    let error = parsed.result.error.unwrap_or_default();
    let outcome = anthropic_outcome(&parsed.result.kind, usage, &error)?;
    Ok((id_hash(&custom_id), outcome))
}

fn parse_anthropic_value(line: &[u8]) -> Result<(u128, Outcome), String> {
    let parsed: Value =
        serde_json::from_slice(line).map_err(|error| format!("malformed result line: {error}"))?;
    let custom_id = parsed
        .get("custom_id")
        .and_then(Value::as_str)
        .ok_or("result line has no custom_id")?;
    let result = parsed
        .get("result")
        .ok_or("result line has no result object")?;
    let kind = result
        .get("type")
        .and_then(Value::as_str)
        .ok_or("result line has no result.type")?;
    let usage = anthropic_usage(result.get("message").unwrap_or(&Value::Null));
    let error = result.get("error").cloned().unwrap_or_default();
    let outcome = anthropic_outcome(kind, usage, &error)?;
    Ok((id_hash(custom_id), outcome))
}

fn anthropic_outcome(kind: &str, usage: TokenCounts, error: &Value) -> Result<Outcome, String> {
    let outcome = match kind {
        "succeeded" => Outcome::Succeeded(usage),
        "errored" => {
            // The error object nests as {"type": "error", "error": {"type": ...}}.
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
    Ok(outcome)
}

impl OpenAiUsage {
    /// Returns the token classes, each counted once. See [`openai_usage`].
    fn tokens(&self) -> TokenCounts {
        if let Some(input) = self.input_tokens {
            let cached = self
                .input_tokens_details
                .as_ref()
                .and_then(|details| details.cached_tokens)
                .unwrap_or(0);
            return TokenCounts {
                input: input.saturating_sub(cached),
                cached_input: cached,
                output: self.output_tokens.unwrap_or(0),
                ..TokenCounts::default()
            };
        }
        let details = self.prompt_tokens_details.as_ref();
        let cached = details
            .and_then(|details| details.cached_tokens)
            .unwrap_or(0);
        let cache_write = details
            .and_then(|details| details.cache_write_tokens)
            .unwrap_or(0);
        TokenCounts {
            input: self
                .prompt_tokens
                .unwrap_or(0)
                .saturating_sub(cached + cache_write),
            cached_input: cached,
            cache_write,
            output: self.completion_tokens.unwrap_or(0),
            ..TokenCounts::default()
        }
    }
}

impl AnthropicUsage {
    /// Returns the token classes, each counted once. See [`anthropic_usage`].
    fn tokens(&self) -> TokenCounts {
        let (write_5m, write_1h) = match &self.cache_creation {
            Some(breakdown) => (
                breakdown.ephemeral_5m_input_tokens.unwrap_or(0),
                breakdown.ephemeral_1h_input_tokens.unwrap_or(0),
            ),
            None => (self.cache_creation_input_tokens.unwrap_or(0), 0),
        };
        TokenCounts {
            input: self.input_tokens.unwrap_or(0),
            cached_input: self.cache_read_input_tokens.unwrap_or(0),
            cache_write: write_5m,
            cache_write_1h: write_1h,
            output: self.output_tokens.unwrap_or(0),
        }
    }
}

/// Normalises OpenAI usage into token classes counted once.
///
/// Chat Completions report cached and cache-write tokens inside `prompt_tokens`,
/// and Responses report cached tokens inside `input_tokens`, so both are
/// subtracted from the plain input. Reasoning tokens are already inside the
/// output count. Embeddings report `prompt_tokens` only.
pub fn openai_usage(body: &Value) -> TokenCounts {
    body.get("usage")
        .and_then(|usage| OpenAiUsage::deserialize(usage).ok())
        .unwrap_or_default()
        .tokens()
}

/// Normalises Anthropic usage. Its classes are already separate: `input_tokens`
/// excludes cache reads and writes, so nothing is subtracted. Cache writes are
/// split into the 5-minute and 1-hour caches when the breakdown is present,
/// and count as 5-minute writes otherwise.
pub fn anthropic_usage(message: &Value) -> TokenCounts {
    message
        .get("usage")
        .and_then(|usage| AnthropicUsage::deserialize(usage).ok())
        .unwrap_or_default()
        .tokens()
}

#[cfg(test)]
mod tests;
