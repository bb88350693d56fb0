//! `batchgate submit`: everything is checked before anything is published.

use std::path::PathBuf;
use std::process::ExitCode;

use batchgate_shared::broker::Broker;
use batchgate_shared::config::Config;
use batchgate_shared::input::validate_input;
use batchgate_shared::manifest::Manifest;
use batchgate_shared::message::{InputRef, JOB_SCHEMA_VERSION, JobMessage};
use batchgate_shared::pricing::PriceTable;
use batchgate_shared::review::hold_reasons;
use batchgate_shared::store::Store;
use chrono::Utc;
use lapin::BasicProperties;

use crate::Failure;

#[derive(clap::Args)]
pub struct SubmitArguments {
    /// Manifest file (TOML, or JSON starting with `{`).
    #[arg(long)]
    manifest: PathBuf,
    /// Input file in the provider's batch format (JSONL, optionally gzip).
    #[arg(long)]
    input: PathBuf,
}

pub async fn run(config: &Config, arguments: SubmitArguments) -> Result<ExitCode, Failure> {
    // The scheduler rejects a reused job id in any case. Checking here first turns
    // the common mistake into an immediate error, before the input is read.
    let store = Store::connect(&config.redis).await?;
    let manifest = std::fs::read_to_string(&arguments.manifest)
        .ok()
        .and_then(|text| Manifest::parse(&text).ok());
    if let Some(manifest) = manifest {
        let existing = store.job(&manifest.job_id).await?;
        if let Some(state) = existing.get("state") {
            return Err(Failure::Invalid(format!(
                "job id {} is already used (state {state}); every job needs a new job id",
                manifest.job_id
            )));
        }
    }
    let job = prepare(config, &arguments)?;
    let broker = Broker::connect(&config.broker, "batchgate-submit").await?;
    broker
        .declare_topology(&[config.worker.poll_interval_secs])
        .await?;
    let mut properties =
        BasicProperties::default().with_message_id(job.manifest.job_id.as_str().into());
    // The broker accepts a user_id only if it names the connection's own user.
    if let Some(user) = Broker::user_name(&config.broker.url) {
        properties = properties.with_user_id(user.as_str().into());
    }
    broker
        .publish_json(
            &broker.names.jobs_exchange(),
            "job.submitted",
            &job,
            properties,
        )
        .await?;
    broker.close().await;
    println!("{}", job.manifest.job_id);
    Ok(ExitCode::SUCCESS)
}

/// Validates the manifest and input and builds the job message.
fn prepare(config: &Config, arguments: &SubmitArguments) -> Result<JobMessage, Failure> {
    let manifest_path = arguments.manifest.display();
    let text = std::fs::read_to_string(&arguments.manifest).map_err(|error| {
        Failure::Invalid(format!("cannot read manifest {manifest_path}: {error}"))
    })?;
    let manifest = Manifest::parse(&text)
        .map_err(|error| Failure::Invalid(format!("invalid manifest {manifest_path}: {error}")))?;
    let prices = PriceTable::load(&config.price_table)
        .map_err(|error| Failure::Invalid(error.to_string()))?;
    manifest
        .validate(config)
        .map_err(|error| Failure::Invalid(format!("invalid manifest {manifest_path}: {error}")))?;
    let price = prices.latest(&manifest.provider, &manifest.model);

    let input = std::fs::canonicalize(&arguments.input).map_err(|error| {
        Failure::Invalid(format!(
            "cannot read input file {}: {error}",
            arguments.input.display()
        ))
    })?;
    let limits = config.providers.get(&manifest.provider).ok_or_else(|| {
        Failure::Invalid(format!("provider {} is not configured", manifest.provider))
    })?;
    let summary = validate_input(&input, &manifest, price, limits)
        .map_err(|error| Failure::Invalid(error.to_string()))?;
    let estimate = match price {
        Some(price) => Some(price.estimate_tiers(
            summary.input_tokens,
            summary.max_output_tokens,
            summary.long_context_tokens,
        )?),
        None => None,
    };
    eprintln!(
        "validated {}: {} requests in {} provider {}, {} bytes, {} prompt tokens; estimated batch cost {}",
        input.display(),
        summary.requests,
        summary.parts.len(),
        if summary.parts.len() == 1 {
            "batch"
        } else {
            "batches"
        },
        summary.bytes,
        summary.input_tokens,
        match estimate {
            Some(estimate) => format!("at most {estimate} USD"),
            None => "unknown".to_owned(),
        }
    );
    let reasons = hold_reasons(
        config.review_threshold(&manifest.owner_team),
        &manifest.owner_team,
        &manifest.model,
        estimate,
        summary.requests,
    );
    if !reasons.is_empty() {
        manifest.check_review_fields(&reasons).map_err(|error| {
            Failure::Invalid(format!("invalid manifest {manifest_path}: {error}"))
        })?;
        eprintln!(
            "the job will be held for review ({}); nothing is reserved until `batchgate review approve` runs",
            reasons.join("; ")
        );
    }
    let uri = InputRef::file_uri(&input)
        .ok_or_else(|| Failure::Invalid(format!("input path {} is not UTF-8", input.display())))?;
    Ok(JobMessage {
        schema_version: JOB_SCHEMA_VERSION,
        manifest,
        input: InputRef {
            uri,
            sha256: Some(summary.sha256),
            requests: Some(summary.requests),
            bytes: Some(summary.bytes),
        },
        submitted_at: Utc::now(),
    })
}
