//! Validation and summary of a batch input file before anything is published.
//!
//! The file is read as a stream, so memory grows with the number of distinct
//! `custom_id` values, not with the file size. Gzip input is recognised by its
//! magic bytes and counted uncompressed, as the provider receives it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::ProviderConfig;
use crate::manifest::Manifest;
use crate::pricing::PriceEntry;
use crate::tokens::count_prompt_tokens;

/// Line problems reported before the list is cut short.
const MAX_REPORTED_PROBLEMS: usize = 20;

/// Counts and checksum of a valid input file, for submit and the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSummary {
    pub requests: u64,
    /// Uncompressed size in bytes, as uploaded to the provider.
    pub bytes: u64,
    /// SHA-256 of the file as stored (compressed if it is gzip).
    pub sha256: String,
    /// Prompt tokens of every request, counted with the model's tokenizer.
    pub input_tokens: u64,
    /// Sum of each request's output bound (max tokens); zero for embeddings.
    pub max_output_tokens: u64,
    /// Inputs across all embedding requests (an array input counts each item).
    pub embedding_inputs: u64,
}

/// Every problem found in an input file, each with its line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid input file {path}:\n{}", .problems.join("\n"))]
pub struct InputError {
    pub path: String,
    pub problems: Vec<String>,
}

/// Validates an OpenAI batch input file against its manifest and returns its summary.
pub fn validate_openai_input(
    path: &Path,
    manifest: &Manifest,
    price: &PriceEntry,
    limits: &ProviderConfig,
) -> Result<InputSummary, InputError> {
    let fail = |problem: String| InputError {
        path: path.display().to_string(),
        problems: vec![problem],
    };
    let file = File::open(path).map_err(|error| fail(format!("cannot open: {error}")))?;
    let mut hashing = HashingReader {
        inner: file,
        hasher: Sha256::new(),
    };
    let mut magic = [0u8; 2];
    let peeked = read_prefix(&mut hashing, &mut magic)
        .map_err(|error| fail(format!("cannot read: {error}")))?;
    let chained = std::io::Cursor::new(magic[..peeked].to_vec()).chain(&mut hashing);
    let reader: Box<dyn BufRead + '_> = if peeked == 2 && magic == [0x1f, 0x8b] {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(chained)))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, chained))
    };

    let mut checker = LineChecker::new(manifest, price);
    read_lines(reader, &mut checker).map_err(|error| fail(format!("cannot read: {error}")))?;
    let mut summary = checker.finish(limits).map_err(|problems| InputError {
        path: path.display().to_string(),
        problems,
    })?;
    summary.sha256 = hex(&hashing.hasher.finalize());
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

fn read_lines(mut reader: impl BufRead, checker: &mut LineChecker) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        checker.check_line(&line);
    }
}

struct LineChecker<'a> {
    manifest: &'a Manifest,
    price: &'a PriceEntry,
    line_number: u64,
    seen: HashMap<String, u64>,
    problems: Vec<String>,
    problem_count: usize,
    summary: InputSummary,
}

impl<'a> LineChecker<'a> {
    fn new(manifest: &'a Manifest, price: &'a PriceEntry) -> Self {
        LineChecker {
            manifest,
            price,
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
                embedding_inputs: 0,
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
        if let Err(problem) = self.check_request(text) {
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

    fn check_request(&mut self, text: &[u8]) -> Result<(), String> {
        let value: Value =
            serde_json::from_slice(text).map_err(|error| format!("not valid JSON: {error}"))?;
        let Value::Object(request) = value else {
            return Err("not a JSON object".to_owned());
        };
        if let Some(key) = request
            .keys()
            .find(|key| !["custom_id", "method", "url", "body"].contains(&key.as_str()))
        {
            return Err(format!(
                "unexpected key {key:?}: a request has custom_id, method, url and body"
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
        match body.get("model") {
            Some(Value::String(model)) if *model == self.manifest.model => {}
            other => {
                return Err(format!(
                    "model {} differs from the manifest model {:?}; a batch holds one model",
                    describe(other),
                    self.manifest.model
                ));
            }
        }
        self.count(body)
    }

    fn count(&mut self, body: &Value) -> Result<(), String> {
        let endpoint = self.manifest.endpoint.as_str();
        self.summary.requests += 1;
        self.summary.input_tokens += count_prompt_tokens(self.price.encoding(), endpoint, body);
        if endpoint == "/v1/embeddings" {
            self.summary.embedding_inputs += match body.get("input") {
                Some(Value::Array(items)) if items.iter().all(Value::is_array) => {
                    items.len() as u64
                }
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                    items.len() as u64
                }
                _ => 1,
            };
            return Ok(());
        }
        let bound_keys = ["max_completion_tokens", "max_output_tokens", "max_tokens"];
        let bound = bound_keys.iter().find_map(|key| body.get(*key));
        let bound = match bound {
            Some(value) => value
                .as_u64()
                .filter(|tokens| *tokens > 0)
                .ok_or_else(|| format!("max tokens must be a positive integer, found {value}"))?,
            None => self.price.max_output_tokens.ok_or_else(|| {
                format!(
                    "request sets no max tokens and the price table has no max_output_tokens for {}, \
                     so its output cannot be bounded",
                    self.manifest.model
                )
            })?,
        };
        self.summary.max_output_tokens += bound;
        Ok(())
    }

    fn finish(mut self, limits: &ProviderConfig) -> Result<InputSummary, Vec<String>> {
        if self.problem_count > self.problems.len() {
            let more = self.problem_count - self.problems.len();
            self.problems.push(format!("... and {more} more problems"));
        }
        if self.problems.is_empty() {
            if self.summary.requests == 0 {
                self.problems.push("the file holds no requests".to_owned());
            }
            self.check_limits(limits);
        }
        if self.problems.is_empty() {
            Ok(self.summary)
        } else {
            Err(self.problems)
        }
    }

    fn check_limits(&mut self, limits: &ProviderConfig) {
        let summary = &self.summary;
        if summary.requests > limits.max_requests_per_batch {
            self.problems.push(format!(
                "{} requests exceed the provider's {} per batch",
                summary.requests, limits.max_requests_per_batch
            ));
        }
        if summary.bytes > limits.max_file_bytes {
            self.problems.push(format!(
                "{} bytes exceed the provider's {} per input file",
                summary.bytes, limits.max_file_bytes
            ));
        }
        if summary.embedding_inputs > limits.max_embedding_inputs {
            self.problems.push(format!(
                "{} embedding inputs exceed the provider's {} per batch",
                summary.embedding_inputs, limits.max_embedding_inputs
            ));
        }
    }
}

fn describe(value: Option<&Value>) -> String {
    match value {
        None => "(missing)".to_owned(),
        Some(value) => value.to_string(),
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        Ok(read)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
