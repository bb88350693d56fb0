//! The dated price table and the pricing of token counts.
//!
//! Rates are decimal USD per million tokens, which is the same number as
//! micro-USD per token, so a cost in micro-USD is tokens times the rate.

use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::money::Micros;
use crate::tokens::Encoding;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    pub schema_version: u32,
    #[serde(rename = "price")]
    pub entries: Vec<PriceEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    pub provider: String,
    pub model: String,
    /// First UTC day on which these prices apply.
    pub effective_from: NaiveDate,
    pub currency: String,
    /// Source of the prices, for the reader who has to defend them.
    pub source: String,
    /// BPE encoding for the pre-flight estimate (`o200k_base`, `cl100k_base`).
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Output bound used in the estimate for requests that set no max tokens.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Factor on the counted prompt tokens in the estimate, for providers whose
    /// tokenizer is not public (the count is then an approximation).
    #[serde(default = "one")]
    pub estimate_input_factor: Decimal,
    /// Request outcomes whose usage is billed (`succeeded`, `failed`).
    #[serde(default = "succeeded_only")]
    pub billed_outcomes: Vec<String>,
    /// Standard (interactive) rates: the list price.
    pub standard: Rates,
    /// Batch rates: what a provider batch is billed.
    pub batch: Rates,
}

fn one() -> Decimal {
    Decimal::ONE
}

fn succeeded_only() -> Vec<String> {
    vec!["succeeded".to_owned()]
}

/// USD per million tokens for each token class; a missing class cannot be priced.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    pub input: Decimal,
    #[serde(default)]
    pub cached_input: Option<Decimal>,
    /// Cache writes: OpenAI's, or Anthropic's 5-minute cache.
    #[serde(default)]
    pub cache_write: Option<Decimal>,
    /// Anthropic's 1-hour cache writes.
    #[serde(default)]
    pub cache_write_1h: Option<Decimal>,
    #[serde(default)]
    pub output: Option<Decimal>,
}

/// Token counts by class, each counted once: `input` excludes cached and cache-write tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    #[serde(default)]
    pub cache_write_1h: u64,
    pub output: u64,
}

impl TokenCounts {
    pub fn add(&mut self, other: &TokenCounts) {
        self.input += other.input;
        self.cached_input += other.cached_input;
        self.cache_write += other.cache_write;
        self.cache_write_1h += other.cache_write_1h;
        self.output += other.output;
    }
}

/// A priced record: list cost at standard rates, billed cost at batch rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub list: Micros,
    pub billed: Micros,
}

impl Cost {
    /// Returns the discount, so that `list - discount == billed` exactly.
    pub fn discount(&self) -> Micros {
        self.list - self.billed
    }
}

impl PriceTable {
    pub fn load(path: &Path) -> Result<PriceTable> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Error::Config(format!(
                "cannot read price table {}: {error}",
                path.display()
            ))
        })?;
        let table: PriceTable = toml::from_str(&text)
            .map_err(|error| Error::Config(format!("price table {}: {error}", path.display())))?;
        table
            .check()
            .map_err(|error| Error::Config(format!("price table {}: {error}", path.display())))?;
        Ok(table)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.schema_version != 1 {
            return Err(format!(
                "unsupported schema_version {}; this build reads 1",
                self.schema_version
            ));
        }
        for entry in &self.entries {
            if let Some(name) = &entry.tokenizer
                && Encoding::from_name(name).is_none()
            {
                return Err(format!(
                    "{} {}: unknown tokenizer {name:?}; known: o200k_base, cl100k_base",
                    entry.provider, entry.model
                ));
            }
        }
        Ok(())
    }

    /// Finds the entry in force at `at`: the latest `effective_from` on or before it.
    pub fn lookup(&self, provider: &str, model: &str, at: DateTime<Utc>) -> Option<&PriceEntry> {
        let day = at.date_naive();
        self.entries
            .iter()
            .filter(|entry| entry.provider == provider && entry.model == model)
            .filter(|entry| entry.effective_from <= day)
            .max_by_key(|entry| entry.effective_from)
    }

    /// Finds the newest entry for a model, whatever its date.
    pub fn latest(&self, provider: &str, model: &str) -> Option<&PriceEntry> {
        self.entries
            .iter()
            .filter(|entry| entry.provider == provider && entry.model == model)
            .max_by_key(|entry| entry.effective_from)
    }
}

impl PriceEntry {
    pub fn encoding(&self) -> Encoding {
        self.tokenizer
            .as_deref()
            .and_then(Encoding::from_name)
            .unwrap_or_else(|| Encoding::for_model(&self.model))
    }

    /// Prices token counts at list and batch rates, rounding each once, half away from zero.
    pub fn price(&self, tokens: &TokenCounts) -> Result<Cost> {
        let list = rate_sum(&self.standard, tokens)
            .map_err(|class| self.missing_rate("standard", class))?;
        let billed =
            rate_sum(&self.batch, tokens).map_err(|class| self.missing_rate("batch", class))?;
        Ok(Cost {
            list: Micros::round_from_micro_decimal(list),
            billed: Micros::round_from_micro_decimal(billed),
        })
    }

    /// Estimates the batch cost of a job from its prompt tokens and output bound,
    /// rounding up so the reservation never understates it.
    pub fn estimate(&self, input_tokens: u64, max_output_tokens: u64) -> Result<Micros> {
        let tokens = TokenCounts {
            output: max_output_tokens,
            ..TokenCounts::default()
        };
        let output =
            rate_sum(&self.batch, &tokens).map_err(|class| self.missing_rate("batch", class))?;
        let input = Decimal::from(input_tokens) * self.estimate_input_factor * self.batch.input;
        Ok(Micros::ceil_from_micro_decimal(input + output))
    }

    /// Reports whether usage of requests with this outcome is billed.
    pub fn bills(&self, outcome: &str) -> bool {
        self.billed_outcomes.iter().any(|billed| billed == outcome)
    }

    fn missing_rate(&self, tier: &str, class: &str) -> Error {
        Error::Invalid(format!(
            "price table has no {tier} {class} rate for {} {} (effective {}), but the usage has {class} tokens",
            self.provider, self.model, self.effective_from
        ))
    }
}

/// Sums tokens times rate per class, in micro-USD; returns the class lacking a rate.
fn rate_sum(rates: &Rates, tokens: &TokenCounts) -> std::result::Result<Decimal, &'static str> {
    let classes = [
        ("input", tokens.input, Some(rates.input)),
        ("cached_input", tokens.cached_input, rates.cached_input),
        ("cache_write", tokens.cache_write, rates.cache_write),
        (
            "cache_write_1h",
            tokens.cache_write_1h,
            rates.cache_write_1h,
        ),
        ("output", tokens.output, rates.output),
    ];
    let mut total = Decimal::ZERO;
    for (class, count, rate) in classes {
        if count == 0 {
            continue;
        }
        let rate = rate.ok_or(class)?;
        total += Decimal::from(count) * rate;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> PriceEntry {
        PriceEntry {
            provider: "openai".into(),
            model: "gpt-6-luna".into(),
            effective_from: NaiveDate::from_ymd_opt(2026, 9, 1).unwrap(),
            currency: "USD".into(),
            source: "test".into(),
            tokenizer: None,
            max_output_tokens: None,
            estimate_input_factor: Decimal::ONE,
            billed_outcomes: succeeded_only(),
            standard: Rates {
                input: Decimal::new(10, 2),
                cached_input: Some(Decimal::new(1, 2)),
                cache_write: None,
                cache_write_1h: None,
                output: Some(Decimal::new(50, 2)),
            },
            batch: Rates {
                input: Decimal::new(5, 2),
                cached_input: Some(Decimal::new(5, 3)),
                cache_write: None,
                cache_write_1h: None,
                output: Some(Decimal::new(25, 2)),
            },
        }
    }

    #[test]
    fn prices_each_class_and_keeps_discount_exact() {
        let tokens = TokenCounts {
            input: 1_000_000,
            cached_input: 100,
            output: 3,
            ..TokenCounts::default()
        };
        let cost = entry().price(&tokens).unwrap();
        // 1,000,000 x 0.10 + 100 x 0.01 + 3 x 0.50 = 100,002.5 -> 100,003 (half away from zero)
        assert_eq!(cost.list, Micros(100_003));
        // 1,000,000 x 0.05 + 100 x 0.005 + 3 x 0.25 = 50,001.25 -> 50,001
        assert_eq!(cost.billed, Micros(50_001));
        assert_eq!(cost.list - cost.discount(), cost.billed);
    }

    #[test]
    fn missing_rate_is_an_error() {
        let tokens = TokenCounts {
            cache_write: 5,
            ..TokenCounts::default()
        };
        let error = entry().price(&tokens).unwrap_err().to_string();
        assert!(error.contains("cache_write"), "{error}");
    }

    #[test]
    fn estimate_rounds_up() {
        assert_eq!(entry().estimate(3, 1).unwrap(), Micros(1)); // 0.15 + 0.25 = 0.4 -> 1
    }
}

#[cfg(test)]
mod split_tests;
