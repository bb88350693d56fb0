//! Validation and summary of a batch input file before anything is published.
//!
//! The file is read as a stream, so memory grows with the number of distinct
//! `custom_id` values, not with the file size. Gzip input is recognised by its
//! magic bytes and counted uncompressed, as the provider receives it. The same
//! pass plans how the job splits into provider batches ([`PartPlanner`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::ProviderConfig;
use crate::manifest::Manifest;
use crate::pricing::PriceEntry;
use crate::tokens::{Encoding, count_anthropic_prompt_tokens, count_prompt_tokens};

/// Line problems reported before the list is cut short.
const MAX_REPORTED_PROBLEMS: usize = 20;

/// Counts and checksum of a valid input file, for submit and the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSummary {
    pub requests: u64,
    /// Uncompressed size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file as stored (compressed if it is gzip).
    pub sha256: String,
    /// Prompt tokens of every request, counted with the model's tokenizer.
    pub input_tokens: u64,
    /// Sum of each request's output bound (max tokens); zero for embeddings.
    pub max_output_tokens: u64,
    /// Prompt tokens and output bound of the requests whose prompt is above the
    /// price entry's long-context threshold; not included in the two sums above.
    pub long_context_tokens: (u64, u64),
    /// Inputs across all embedding requests (an array input counts each item).
    pub embedding_inputs: u64,
    /// Provider batches the job splits into under the provider's limits.
    pub parts: Vec<PartBounds>,
}

/// A contiguous run of input lines that becomes one provider batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartBounds {
    /// Zero-based index of the part's first input line.
    pub first_line: u64,
    pub requests: u64,
    /// Size of the part as sent to the provider.
    pub bytes: u64,
}

/// Every problem found in an input file, each with its line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid input file {path}:\n{}", .problems.join("\n"))]
pub struct InputError {
    pub path: String,
    pub problems: Vec<String>,
}

/// Opens an input file for line reading, decompressing gzip, while hashing
/// the stored bytes into `hasher`.
pub fn open_input<'h>(
    path: &Path,
    hasher: &'h mut Sha256,
) -> std::io::Result<Box<dyn BufRead + Send + 'h>> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 2];
    let peeked = read_prefix(&mut file, &mut magic)?;
    hasher.update(&magic[..peeked]);
    let chained = std::io::Cursor::new(magic[..peeked].to_vec()).chain(HashingReader {
        inner: file,
        hasher,
    });
    Ok(if peeked == 2 && magic == [0x1f, 0x8b] {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(chained)))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, chained))
    })
}

/// Validates an input file against its manifest and returns its summary.
///
/// Without a price entry (a model missing from the price table), tokens are
/// counted with the model's default tokenizer, and a request without a max
/// tokens bound adds no output tokens. Such a summary cannot give an estimate.
pub fn validate_input(
    path: &Path,
    manifest: &Manifest,
    price: Option<&PriceEntry>,
    limits: &ProviderConfig,
) -> Result<InputSummary, InputError> {
    let fail = |problem: String| InputError {
        path: path.display().to_string(),
        problems: vec![problem],
    };
    let mut hasher = Sha256::new();
    let mut checker = LineChecker::new(manifest, price, limits);
    {
        let mut reader =
            open_input(path, &mut hasher).map_err(|error| fail(format!("cannot read: {error}")))?;
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => checker.check_line(&line),
                Err(error) => return Err(fail(format!("cannot read: {error}"))),
            }
        }
    }
    let mut summary = checker.finish().map_err(|problems| InputError {
        path: path.display().to_string(),
        problems,
    })?;
    summary.sha256 = hex(&hasher.finalize());
    Ok(summary)
}

fn read_prefix(reader: &mut impl Read, buffer: &mut [u8; 2]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let read = reader.read(&mut buffer[filled..])?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

/// Splits lines into parts so that each stays within the provider's limits on
/// requests, bytes and embedding inputs. Submit, the scheduler and the worker
/// all plan with it, so they agree on the parts.
#[derive(Debug, Clone)]
pub struct PartPlanner {
    provider: String,
    max_requests: u64,
    max_bytes: u64,
    max_embedding_inputs: u64,
    parts: Vec<PartBounds>,
    embedding_inputs: u64,
    next_line: u64,
}

/// Bytes of Anthropic's create body around the requests: `{"requests":[` and `]}`.
const ANTHROPIC_BODY_FRAME: u64 = 15;

impl PartPlanner {
    pub fn new(provider: &str, limits: &ProviderConfig) -> PartPlanner {
        PartPlanner {
            provider: provider.to_owned(),
            max_requests: limits.max_requests_per_batch.max(1),
            max_bytes: limits.max_file_bytes,
            max_embedding_inputs: limits.max_embedding_inputs,
            parts: Vec::new(),
            embedding_inputs: 0,
            next_line: 0,
        }
    }

    /// Returns the bytes a request line of `line_bytes` (newline excluded) adds to a part.
    pub fn request_bytes(&self, line_bytes: u64, first_in_part: bool) -> u64 {
        if self.provider == "anthropic" {
            line_bytes + u64::from(!first_in_part)
        } else {
            line_bytes + 1
        }
    }

    fn empty_part_bytes(&self) -> u64 {
        if self.provider == "anthropic" {
            ANTHROPIC_BODY_FRAME
        } else {
            0
        }
    }

    /// Adds the next request line; returns an error when the line alone exceeds a limit.
    pub fn add(&mut self, line_bytes: u64, embedding_inputs: u64) -> Result<(), String> {
        let alone = self.empty_part_bytes() + self.request_bytes(line_bytes, true);
        if alone > self.max_bytes {
            return Err(format!(
                "request of {line_bytes} bytes exceeds the provider's {} bytes per batch",
                self.max_bytes
            ));
        }
        if embedding_inputs > self.max_embedding_inputs {
            return Err(format!(
                "{embedding_inputs} embedding inputs exceed the provider's {} per batch",
                self.max_embedding_inputs
            ));
        }
        let fits = self.parts.last().is_some_and(|part| {
            part.requests < self.max_requests
                && part.bytes + self.request_bytes(line_bytes, false) <= self.max_bytes
                && self.embedding_inputs + embedding_inputs <= self.max_embedding_inputs
        });
        if fits {
            let added = self.request_bytes(line_bytes, false);
            let part = self
                .parts
                .last_mut()
                .expect("a part exists when the line fits");
            part.requests += 1;
            part.bytes += added;
            self.embedding_inputs += embedding_inputs;
        } else {
            self.parts.push(PartBounds {
                first_line: self.next_line,
                requests: 1,
                bytes: alone,
            });
            self.embedding_inputs = embedding_inputs;
        }
        self.next_line += 1;
        Ok(())
    }

    pub fn finish(self) -> Vec<PartBounds> {
        self.parts
    }
}

struct LineChecker<'a> {
    manifest: &'a Manifest,
    price: Option<&'a PriceEntry>,
    encoding: Encoding,
    planner: PartPlanner,
    line_number: u64,
    seen: HashMap<String, u64>,
    problems: Vec<String>,
    problem_count: usize,
    summary: InputSummary,
}

impl<'a> LineChecker<'a> {
    fn new(manifest: &'a Manifest, price: Option<&'a PriceEntry>, limits: &ProviderConfig) -> Self {
        LineChecker {
            manifest,
            price,
            encoding: price.map_or_else(
                || Encoding::for_model(&manifest.model),
                PriceEntry::encoding,
            ),
            planner: PartPlanner::new(&manifest.provider, limits),
            line_number: 0,
            seen: HashMap::new(),
            problems: Vec::new(),
            problem_count: 0,
            summary: InputSummary {
                requests: 0,
                bytes: 0,
                sha256: String::new(),
                input_tokens: 0,
                max_output_tokens: 0,
                long_context_tokens: (0, 0),
                embedding_inputs: 0,
                parts: Vec::new(),
            },
        }
    }

    fn check_line(&mut self, raw: &[u8]) {
        self.line_number += 1;
        self.summary.bytes += raw.len() as u64;
        let text = raw.strip_suffix(b"\n").unwrap_or(raw);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            self.problem("empty line: every line must hold one request".to_owned());
            return;
        }
        let checked = match self.manifest.provider.as_str() {
            "anthropic" => self.check_anthropic(text),
            _ => self.check_openai(text),
        };
        let planned = checked
            .and_then(|embedding_inputs| self.planner.add(text.len() as u64, embedding_inputs));
        if let Err(problem) = planned {
            self.problem(problem);
        }
    }

    fn problem(&mut self, problem: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_REPORTED_PROBLEMS {
            self.problems
                .push(format!("line {}: {problem}", self.line_number));
        }
    }

    /// Parses a line as a JSON object with exactly `keys` and a new `custom_id`.
    fn parse_request(
        &mut self,
        text: &[u8],
        keys: &[&str],
    ) -> Result<serde_json::Map<String, Value>, String> {
        let value: Value =
            serde_json::from_slice(text).map_err(|error| format!("not valid JSON: {error}"))?;
        let Value::Object(request) = value else {
            return Err("not a JSON object".to_owned());
        };
        if let Some(key) = request.keys().find(|key| !keys.contains(&key.as_str())) {
            return Err(format!(
                "unexpected key {key:?}: a request has {}",
                keys.join(", ")
            ));
        }
        let custom_id = match request.get("custom_id") {
            Some(Value::String(id)) if !id.is_empty() => id,
            Some(_) => return Err("custom_id must be a non-empty string".to_owned()),
            None => return Err("missing custom_id".to_owned()),
        };
        if let Some(first) = self.seen.get(custom_id) {
            return Err(format!(
                "duplicate custom_id {custom_id:?}, first used on line {first}"
            ));
        }
        self.seen.insert(custom_id.clone(), self.line_number);
        Ok(request)
    }

    fn check_model(&self, body: &Value) -> Result<(), String> {
        match body.get("model") {
            Some(Value::String(model)) if *model == self.manifest.model => Ok(()),
            other => Err(format!(
                "model {} differs from the manifest model {:?}; a batch holds one model",
                describe(other),
                self.manifest.model
            )),
        }
    }

    /// Checks an OpenAI line; returns its embedding input count.
    fn check_openai(&mut self, text: &[u8]) -> Result<u64, String> {
        let request = self.parse_request(text, &["custom_id", "method", "url", "body"])?;
        match request.get("method") {
            Some(Value::String(method)) if method == "POST" => {}
            other => {
                return Err(format!(
                    "method must be \"POST\", found {}",
                    describe(other)
                ));
            }
        }
        match request.get("url") {
            Some(Value::String(url)) if *url == self.manifest.endpoint => {}
            other => {
                return Err(format!(
                    "url {} differs from the manifest endpoint {:?}",
                    describe(other),
                    self.manifest.endpoint
                ));
            }
        }
        let Some(body) = request.get("body").filter(|body| body.is_object()) else {
            return Err("missing body object".to_owned());
        };
        self.check_model(body)?;

        let endpoint = self.manifest.endpoint.as_str();
        let input_tokens = count_prompt_tokens(self.encoding, endpoint, body);
        if endpoint == "/v1/embeddings" {
            let inputs = match body.get("input") {
                Some(Value::Array(items))
                    if items.iter().all(|item| item.is_array() || item.is_string()) =>
                {
                    items.len() as u64
                }
                _ => 1,
            };
            self.count(input_tokens, 0, inputs);
            return Ok(inputs);
        }
        let bound = ["max_completion_tokens", "max_output_tokens", "max_tokens"]
            .iter()
            .find_map(|key| body.get(*key));
        let bound = self.output_bound(bound)?;
        self.count(input_tokens, bound, 0);
        Ok(0)
    }

    /// Checks an Anthropic Message Batches line (`{custom_id, params}`).
    fn check_anthropic(&mut self, text: &[u8]) -> Result<u64, String> {
        let request = self.parse_request(text, &["custom_id", "params"])?;
        let custom_id = request
            .get("custom_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let valid_id = custom_id.len() <= 64
            && custom_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_id {
            return Err(format!(
                "custom_id {custom_id:?} is invalid for Anthropic: use 1 to 64 letters, digits, '_' or '-'"
            ));
        }
        let Some(params) = request.get("params").filter(|params| params.is_object()) else {
            return Err("missing params object".to_owned());
        };
        self.check_model(params)?;
        if !params.get("messages").is_some_and(Value::is_array) {
            return Err("params.messages must be an array".to_owned());
        }
        let Some(bound) = params.get("max_tokens") else {
            return Err("params.max_tokens is missing; Anthropic requires it".to_owned());
        };
        let bound = self.output_bound(Some(bound))?;
        let input_tokens = count_anthropic_prompt_tokens(self.encoding, params);
        self.count(input_tokens, bound, 0);
        Ok(0)
    }

    fn output_bound(&self, bound: Option<&Value>) -> Result<u64, String> {
        match bound {
            Some(value) => value
                .as_u64()
                .filter(|tokens| *tokens > 0)
                .ok_or_else(|| format!("max tokens must be a positive integer, found {value}")),
            None if self.price.is_none() => Ok(0),
            None => self.price.and_then(|price| price.max_output_tokens).ok_or_else(|| {
                format!(
                    "request sets no max tokens and the price table has no max_output_tokens for {}, \
                     so its output cannot be bounded",
                    self.manifest.model
                )
            }),
        }
    }

    fn count(&mut self, input_tokens: u64, max_output_tokens: u64, embedding_inputs: u64) {
        self.summary.requests += 1;
        let threshold = self.price.and_then(PriceEntry::long_context_above);
        if threshold.is_some_and(|above| input_tokens > above) {
            self.summary.long_context_tokens.0 += input_tokens;
            self.summary.long_context_tokens.1 += max_output_tokens;
        } else {
            self.summary.input_tokens += input_tokens;
            self.summary.max_output_tokens += max_output_tokens;
        }
        self.summary.embedding_inputs += embedding_inputs;
    }

    fn finish(mut self) -> Result<InputSummary, Vec<String>> {
        if self.problem_count > self.problems.len() {
            let more = self.problem_count - self.problems.len();
            self.problems.push(format!("... and {more} more problems"));
        }
        if self.problems.is_empty() && self.summary.requests == 0 {
            self.problems.push("the file holds no requests".to_owned());
        }
        if !self.problems.is_empty() {
            return Err(self.problems);
        }
        self.summary.parts = self.planner.finish();
        Ok(self.summary)
    }
}

fn describe(value: Option<&Value>) -> String {
    match value {
        None => "(missing)".to_owned(),
        Some(value) => value.to_string(),
    }
}

struct HashingReader<'h, R> {
    inner: R,
    hasher: &'h mut Sha256,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        Ok(read)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProvidersConfig;

    fn limits(max_requests: u64, max_bytes: u64) -> ProviderConfig {
        let mut config = ProvidersConfig::default().openai;
        config.max_requests_per_batch = max_requests;
        config.max_file_bytes = max_bytes;
        config
    }

    #[test]
    fn planner_splits_on_request_count() {
        let mut planner = PartPlanner::new("openai", &limits(2, 1_000));
        for _ in 0..5 {
            planner.add(9, 0).unwrap();
        }
        let parts = planner.finish();
        let sizes: Vec<u64> = parts.iter().map(|part| part.requests).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert_eq!(parts[2].first_line, 4);
        assert_eq!(parts[0].bytes, 20);
    }

    #[test]
    fn planner_splits_on_bytes_and_rejects_huge_lines() {
        let mut planner = PartPlanner::new("openai", &limits(100, 25));
        for _ in 0..3 {
            planner.add(9, 0).unwrap();
        }
        assert_eq!(planner.clone().finish().len(), 2);
        assert!(planner.add(30, 0).is_err());
    }

    #[test]
    fn planner_counts_anthropic_body_frame() {
        let mut planner = PartPlanner::new("anthropic", &limits(100, 1_000));
        planner.add(10, 0).unwrap();
        planner.add(10, 0).unwrap();
        // {"requests":[ + line + , + line + ]}
        assert_eq!(planner.finish()[0].bytes, 15 + 10 + 1 + 10);
    }
}
