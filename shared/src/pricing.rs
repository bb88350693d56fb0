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
    /// Higher rates for requests with a long prompt; none when the model has no such tier.
    #[serde(default)]
    pub long_context: Option<LongContext>,
}

/// A long-context tier: a request whose prompt (all input classes together)
/// is above `above_input_tokens` is priced whole at the multiplied rates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContext {
    pub above_input_tokens: u64,
    /// Factor on every input-side rate: input, cached input and cache writes.
    pub input_multiplier: Decimal,
    pub output_multiplier: Decimal,
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
    /// Returns the prompt size: every input-side class together.
    pub fn prompt(&self) -> u64 {
        self.input + self.cached_input + self.cache_write + self.cache_write_1h
    }

    /// Returns every token of every class.
    pub fn total(&self) -> u64 {
        self.prompt() + self.output
    }

    pub fn add(&mut self, other: &TokenCounts) {
        self.input += other.input;
        self.cached_input += other.cached_input;
        self.cache_write += other.cache_write;
        self.cache_write_1h += other.cache_write_1h;
        self.output += other.output;
    }
}

/// Billed token counts split by pricing tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub base: TokenCounts,
    /// Tokens of requests above the long-context threshold.
    pub long_context: TokenCounts,
}

impl Usage {
    /// Returns both tiers added together.
    pub fn total(&self) -> TokenCounts {
        let mut total = self.base;
        total.add(&self.long_context);
        total
    }
}

/// A priced record, with its discounts. `list` prices every token at the
/// standard rate of its class, with cached input at the plain input rate.
/// `cache_discount` is what the standard cached-input rate saves on that.
/// `billed` uses the batch rates, and the batch discount is the rest, so
/// `list - cache_discount - batch_discount == billed` exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub list: Micros,
    pub cache_discount: Micros,
    pub billed: Micros,
}

impl Cost {
    /// Returns all discounts together: `list - discount == billed`.
    pub fn discount(&self) -> Micros {
        self.list - self.billed
    }

    /// Returns the batch discount: standard rates (with the cache discount) minus billed.
    pub fn batch_discount(&self) -> Micros {
        self.list - self.cache_discount - self.billed
    }
}

/// The price table file as the services use it: read again whenever its
/// modification time or size changes, so that a new dated entry or a price
/// for a held job's model applies without a restart.
pub struct PriceBook {
    path: std::path::PathBuf,
    loaded: std::sync::Mutex<LoadedTable>,
}

/// The file stamp a table was read at, and the table.
type LoadedTable = (
    Option<(std::time::SystemTime, u64)>,
    std::sync::Arc<PriceTable>,
);

impl PriceBook {
    pub fn load(path: &Path) -> Result<PriceBook> {
        let stamp = file_stamp(path);
        let table = PriceTable::load(path)?;
        Ok(PriceBook {
            path: path.to_owned(),
            loaded: std::sync::Mutex::new((stamp, std::sync::Arc::new(table))),
        })
    }

    /// Returns the current table. A file that changed is read again. When it
    /// no longer reads or parses, the previous table stays, with a warning.
    pub fn current(&self) -> std::sync::Arc<PriceTable> {
        let stamp = file_stamp(&self.path);
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if stamp.is_some() && stamp != loaded.0 {
            match PriceTable::load(&self.path) {
                Ok(table) => {
                    tracing::info!(path = %self.path.display(), "Price table read again after a change");
                    *loaded = (stamp, std::sync::Arc::new(table));
                }
                Err(error) => {
                    tracing::warn!(error = %error, path = %self.path.display(), "Changed price table is invalid; keeping the previous one");
                    loaded.0 = stamp;
                }
            }
        }
        std::sync::Arc::clone(&loaded.1)
    }
}

/// Returns a file's modification time and size, or `None` when it cannot be read.
fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
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

    /// Prices base-tier token counts; see [`PriceEntry::price_usage`].
    pub fn price(&self, tokens: &TokenCounts) -> Result<Cost> {
        self.price_usage(&Usage {
            base: *tokens,
            ..Usage::default()
        })
    }

    /// Prices usage at list, standard and batch rates. Each of the three sums
    /// is rounded once, half away from zero, and the discounts are their
    /// differences, so the breakdown adds up to the micro-dollar.
    pub fn price_usage(&self, usage: &Usage) -> Result<Cost> {
        let list = self
            .tier_sum(&self.standard, usage, true)
            .map_err(|class| self.missing_rate("standard", class))?;
        let standard = self
            .tier_sum(&self.standard, usage, false)
            .map_err(|class| self.missing_rate("standard", class))?;
        let billed = self
            .tier_sum(&self.batch, usage, false)
            .map_err(|class| self.missing_rate("batch", class))?;
        let list = Micros::round_from_micro_decimal(list);
        Ok(Cost {
            list,
            cache_discount: list - Micros::round_from_micro_decimal(standard),
            billed: Micros::round_from_micro_decimal(billed),
        })
    }

    /// Sums both tiers of usage at `rates`, in micro-USD.
    fn tier_sum(
        &self,
        rates: &Rates,
        usage: &Usage,
        cache_at_input_rate: bool,
    ) -> std::result::Result<Decimal, &'static str> {
        let base = rate_sum(
            rates,
            &usage.base,
            cache_at_input_rate,
            (Decimal::ONE, Decimal::ONE),
        )?;
        let multipliers = self
            .long_context
            .as_ref()
            .map_or((Decimal::ONE, Decimal::ONE), |tier| {
                (tier.input_multiplier, tier.output_multiplier)
            });
        let long = rate_sum(rates, &usage.long_context, cache_at_input_rate, multipliers)?;
        Ok(base + long)
    }

    /// Returns the long-context threshold in prompt tokens, if the model has one.
    pub fn long_context_above(&self) -> Option<u64> {
        self.long_context
            .as_ref()
            .map(|tier| tier.above_input_tokens)
    }

    /// Estimates the batch cost of a job from its prompt tokens and output
    /// bound, rounding up so the reservation never understates it.
    pub fn estimate(&self, input_tokens: u64, max_output_tokens: u64) -> Result<Micros> {
        self.estimate_tiers(input_tokens, max_output_tokens, (0, 0))
    }

    /// Estimates as [`PriceEntry::estimate`], with the long-context requests'
    /// prompt tokens and output bound given apart in `long` and not included
    /// in the first two arguments.
    pub fn estimate_tiers(
        &self,
        input_tokens: u64,
        max_output_tokens: u64,
        long: (u64, u64),
    ) -> Result<Micros> {
        let output_rate = match self.batch.output {
            Some(rate) => rate,
            None if max_output_tokens == 0 && long.1 == 0 => Decimal::ZERO,
            None => return Err(self.missing_rate("batch", "output")),
        };
        let (input_multiplier, output_multiplier) = self
            .long_context
            .as_ref()
            .map_or((Decimal::ONE, Decimal::ONE), |tier| {
                (tier.input_multiplier, tier.output_multiplier)
            });
        let input_rate = self.estimate_input_factor * self.batch.input;
        let base = Decimal::from(input_tokens) * input_rate
            + Decimal::from(max_output_tokens) * output_rate;
        let long = Decimal::from(long.0) * input_rate * input_multiplier
            + Decimal::from(long.1) * output_rate * output_multiplier;
        Ok(Micros::ceil_from_micro_decimal(base + long))
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

/// Sums tokens times rate per class, in micro-USD, with the input-side and
/// output multipliers applied. With `cache_at_input_rate`, cached input is
/// priced at the plain input rate. Returns the class lacking a rate.
fn rate_sum(
    rates: &Rates,
    tokens: &TokenCounts,
    cache_at_input_rate: bool,
    (input_multiplier, output_multiplier): (Decimal, Decimal),
) -> std::result::Result<Decimal, &'static str> {
    let cached_rate = if cache_at_input_rate {
        Some(rates.input)
    } else {
        rates.cached_input
    };
    let classes = [
        ("input", tokens.input, Some(rates.input), input_multiplier),
        (
            "cached_input",
            tokens.cached_input,
            cached_rate,
            input_multiplier,
        ),
        (
            "cache_write",
            tokens.cache_write,
            rates.cache_write,
            input_multiplier,
        ),
        (
            "cache_write_1h",
            tokens.cache_write_1h,
            rates.cache_write_1h,
            input_multiplier,
        ),
        ("output", tokens.output, rates.output, output_multiplier),
    ];
    let mut total = Decimal::ZERO;
    for (class, count, rate, multiplier) in classes {
        if count == 0 {
            continue;
        }
        let rate = rate.ok_or(class)?;
        total += Decimal::from(count) * rate * multiplier;
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
            long_context: None,
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
        // List prices cached input at the input rate:
        // 1,000,000 x 0.10 + 100 x 0.10 + 3 x 0.50 = 100,011.5 -> 100,012 (half away from zero).
        assert_eq!(cost.list, Micros(100_012));
        // At the standard cached rate: 1,000,000 x 0.10 + 100 x 0.01 + 3 x 0.50 = 100,002.5 -> 100,003.
        assert_eq!(cost.list - cost.cache_discount, Micros(100_003));
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

#[cfg(test)]
mod breakdown_tests {
    use super::*;

    fn table_entry(model: &str) -> PriceEntry {
        let table: PriceTable = toml::from_str(include_str!("../../config/prices.toml")).unwrap();
        table.latest("openai", model).unwrap().clone()
    }

    #[test]
    fn cached_input_priced_at_cached_rate() {
        // gpt-6-luna: standard input 0.10, cached 0.01; batch input 0.05, cached 0.005.
        let tokens = TokenCounts {
            input: 1_000,
            cached_input: 10_000,
            output: 100,
            ..TokenCounts::default()
        };
        let cost = table_entry("gpt-6-luna").price(&tokens).unwrap();
        // List: 11,000 x 0.10 + 100 x 0.50 = 1,150.
        assert_eq!(cost.list, Micros(1_150));
        // Standard with the cache discount: 1,000 x 0.10 + 10,000 x 0.01 + 100 x 0.50 = 250.
        assert_eq!(cost.cache_discount, Micros(900));
        // Batch: 1,000 x 0.05 + 10,000 x 0.005 + 100 x 0.25 = 125. At the plain batch
        // input rate, the cached tokens would bill 550 + 25 = 575.
        assert_eq!(cost.billed, Micros(125));
        assert_eq!(cost.batch_discount(), Micros(125));
        assert_eq!(
            cost.list - cost.cache_discount - cost.batch_discount(),
            cost.billed
        );
    }

    #[test]
    fn long_context_multiplies_whole_request() {
        let mut entry = table_entry("gpt-6-luna");
        entry.long_context = Some(LongContext {
            above_input_tokens: 272_000,
            input_multiplier: Decimal::TWO,
            output_multiplier: Decimal::new(15, 1),
        });
        let request = TokenCounts {
            input: 300_000,
            cached_input: 10_000,
            output: 1_000,
            ..TokenCounts::default()
        };
        let base = entry.price(&request).unwrap();
        let long = entry
            .price_usage(&Usage {
                long_context: request,
                ..Usage::default()
            })
            .unwrap();
        // Batch: (300,000 x 0.05 + 10,000 x 0.005) x 2 + 1,000 x 0.25 x 1.5 = 30,100 + 375.
        assert_eq!(long.billed, Micros(30_475));
        assert_eq!(base.billed, Micros(15_300));
        assert_eq!(
            long.list - long.cache_discount - long.batch_discount(),
            long.billed
        );
        // The estimate prices long-context requests the same way, rounded up.
        let estimate = entry.estimate_tiers(0, 0, (310_000, 1_000)).unwrap();
        assert_eq!(estimate, Micros(31_375));
    }
}

#[cfg(test)]
mod book_tests {
    use super::*;

    #[test]
    fn changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.toml");
        let shipped = include_str!("../../config/prices.toml");
        std::fs::write(&path, shipped).unwrap();
        let book = PriceBook::load(&path).unwrap();
        assert!(book.current().latest("openai", "gpt-7").is_none());

        let added = "\n[[price]]\nprovider = \"openai\"\nmodel = \"gpt-7\"\neffective_from = \"2026-12-01\"\n\
                     currency = \"USD\"\nsource = \"test\"\nstandard = { input = \"1\" }\nbatch = { input = \"0.5\" }\n";
        std::fs::write(&path, format!("{shipped}{added}")).unwrap();
        assert!(book.current().latest("openai", "gpt-7").is_some());

        // An invalid edit keeps the table that was read last.
        std::fs::write(&path, "schema_version = ").unwrap();
        assert!(book.current().latest("openai", "gpt-7").is_some());
    }
}
