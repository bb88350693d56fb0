//! `batchgate cost`: price local result files as the worker would record them.

use std::path::PathBuf;
use std::process::ExitCode;

use batchgate_shared::money::Micros;
use batchgate_shared::pricing::{PriceEntry, PriceTable, TokenCounts};
use batchgate_shared::results::{ResultFormat, account_files};
use chrono::{DateTime, NaiveDate, Utc};

use crate::Failure;
use crate::status::print_output;

#[derive(clap::Args)]
pub struct CostArguments {
    /// Result files of one provider batch (output file first, then the error
    /// file), JSONL or gzip-compressed JSONL.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Provider whose result format the files have: openai or anthropic.
    #[arg(long)]
    pub provider: String,
    /// Model to price; by default the model named in the first result line
    /// that has one, matched to the longest price-table model it starts with.
    #[arg(long)]
    pub model: Option<String>,
    /// Day (YYYY-MM-DD, UTC) whose price entry applies: the batch's creation day.
    /// Default: today.
    #[arg(long)]
    pub at: Option<NaiveDate>,
    /// Price table file; by default the one the configuration names.
    #[arg(long)]
    pub price_table: Option<PathBuf>,
    /// Accounting threads; by default one per CPU.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(price_table: &std::path::Path, arguments: CostArguments) -> Result<ExitCode, Failure> {
    let format = match arguments.provider.as_str() {
        "openai" => ResultFormat::OpenAi,
        "anthropic" => ResultFormat::Anthropic,
        other => {
            return Err(Failure::Invalid(format!(
                "unsupported provider {other:?}; supported: openai, anthropic"
            )));
        }
    };
    let table =
        PriceTable::load(price_table).map_err(|error| Failure::Invalid(error.to_string()))?;
    let at: DateTime<Utc> = match arguments.at {
        Some(day) => day.and_hms_opt(12, 0, 0).unwrap_or_default().and_utc(),
        None => Utc::now(),
    };
    let model = match &arguments.model {
        Some(model) => model.clone(),
        None => detect_model(&table, &arguments.provider, &arguments.files, format)?,
    };
    let price = table
        .lookup(&arguments.provider, &model, at)
        .ok_or_else(|| {
            Failure::Invalid(format!(
                "the price table {} has no {} {model} entry in force on {}",
                price_table.display(),
                arguments.provider,
                at.date_naive()
            ))
        })?
        .clone();

    let threads = arguments.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    let totals = account_files(
        &arguments.files,
        format,
        price.long_context_above(),
        threads,
    )
    .map_err(|error| Failure::Invalid(format!("cannot price the results: {error}")))?;

    let usage = totals.billed_usage(&price);
    let cost = price.price_usage(&usage)?;
    let report = Report {
        provider: arguments.provider.clone(),
        model,
        price_effective_from: price.effective_from,
        currency: price.currency.clone(),
        requests: totals.requests,
        duplicate_lines: totals.duplicate_lines,
        tokens: usage.total(),
        long_context_tokens: usage.long_context,
        list_cost: cost.list,
        cache_discount: cost.cache_discount,
        batch_discount: cost.batch_discount(),
        billed_cost: cost.billed,
    };
    if arguments.json {
        print_output(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        print_output(&report.text(&price));
    }
    Ok(ExitCode::SUCCESS)
}

/// Report of `cost`: the fields of a ledger record that the files determine.
#[derive(serde::Serialize)]
struct Report {
    provider: String,
    model: String,
    price_effective_from: NaiveDate,
    currency: String,
    requests: batchgate_shared::message::RequestCounts,
    duplicate_lines: u64,
    /// Billed tokens by class, both tiers together.
    tokens: TokenCounts,
    long_context_tokens: TokenCounts,
    #[serde(with = "batchgate_shared::money::decimal_string")]
    list_cost: Micros,
    #[serde(with = "batchgate_shared::money::decimal_string")]
    cache_discount: Micros,
    #[serde(with = "batchgate_shared::money::decimal_string")]
    batch_discount: Micros,
    #[serde(with = "batchgate_shared::money::decimal_string")]
    billed_cost: Micros,
}

impl Report {
    fn text(&self, price: &PriceEntry) -> String {
        let requests = &self.requests;
        let tokens = &self.tokens;
        let mut out = format!(
            "price entry      {} {}, effective {} ({})\n",
            self.provider, self.model, self.price_effective_from, price.source
        );
        out.push_str(&format!(
            "requests         {} total: {} succeeded, {} failed ({} retryable), {} expired, {} cancelled; {} duplicate lines\n",
            requests.total,
            requests.succeeded,
            requests.failed,
            requests.failed_retryable,
            requests.expired,
            requests.cancelled,
            self.duplicate_lines
        ));
        out.push_str(&format!(
            "billed tokens    input {}, cached input {}, cache write {}, cache write 1h {}, output {}\n",
            tokens.input, tokens.cached_input, tokens.cache_write, tokens.cache_write_1h, tokens.output
        ));
        if self.long_context_tokens.total() > 0 {
            out.push_str(&format!(
                "  long context   {} prompt and {} output tokens at the long-context rates\n",
                self.long_context_tokens.prompt(),
                self.long_context_tokens.output
            ));
        }
        for (label, amount) in [
            ("list cost", self.list_cost),
            ("cache discount", self.cache_discount),
            ("batch discount", self.batch_discount),
            ("billed cost", self.billed_cost),
        ] {
            out.push_str(&format!("{label:<16} {amount:>14} {}\n", self.currency));
        }
        out
    }
}

/// Finds the model named in the first result line that has one, and matches
/// it to the longest price-table model of the provider that it starts with
/// (providers return dated snapshot names such as `gpt-6-luna-2026-09-01`).
fn detect_model(
    table: &PriceTable,
    provider: &str,
    files: &[PathBuf],
    format: ResultFormat,
) -> Result<String, Failure> {
    use batchgate_shared::results::open_result_file;
    use std::io::BufRead;
    let pointer = match format {
        ResultFormat::OpenAi => "/response/body/model",
        ResultFormat::Anthropic => "/result/message/model",
    };
    let mut named = None;
    'files: for path in files {
        let file = open_result_file(path).map_err(|error| {
            Failure::Invalid(format!("cannot read {}: {error}", path.display()))
        })?;
        for line in std::io::BufReader::new(file).lines().take(1000) {
            let Ok(line) = line else { break };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(model) = value.pointer(pointer).and_then(serde_json::Value::as_str) {
                named = Some(model.to_owned());
                break 'files;
            }
        }
    }
    let Some(named) = named else {
        return Err(Failure::Invalid(format!(
            "no result line in the first 1000 of each file names a model at {pointer}, where {provider} \
             results have it; check --provider, or pass --model"
        )));
    };
    table
        .entries
        .iter()
        .filter(|entry| entry.provider == provider && named.starts_with(&entry.model))
        .map(|entry| entry.model.clone())
        .max_by_key(String::len)
        .ok_or_else(|| {
            Failure::Invalid(format!(
                "the results name model {named:?}, which matches no {provider} model of the price table; pass --model"
            ))
        })
}
