//! The one configuration file, with environment overrides.
//!
//! Unknown keys are rejected so that a misspelt setting fails at start rather
//! than being ignored. API keys are read only from the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::money::Micros;

/// The workload classes every deployment accepts; configuration can add more.
pub const BUILTIN_WORKLOAD_CLASSES: [&str; 5] = [
    "eval",
    "enrichment",
    "summarization",
    "embedding_backfill",
    "content_generation",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub redis: RedisConfig,
    /// Price table file; a relative path is resolved against the configuration file.
    pub price_table: PathBuf,
    #[serde(default)]
    pub accrual: Accrual,
    /// Fractions of a team's limit whose crossing publishes one `budget.threshold` event.
    #[serde(default = "default_alert_fractions")]
    pub budget_alert_fractions: Vec<rust_decimal::Decimal>,
    /// Accept job messages without a `user_id` property, for local development only.
    #[serde(default)]
    pub allow_anonymous_submission: bool,
    /// IANA time zone whose calendar months are the budget months.
    #[serde(default = "default_time_zone")]
    pub budget_time_zone: String,
    #[serde(default)]
    pub workload_classes: Vec<String>,
    pub teams: BTreeMap<String, TeamConfig>,
    #[serde(default)]
    pub providers: ProvidersConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub url: String,
    /// Prefix of every exchange and queue name, so several deployments can share a vhost.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Prefix of every Redis key.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_connect_timeout")]
    pub timeout_secs: u64,
}

/// The period a ledger record and a reservation count towards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accrual {
    /// The month the job was submitted in.
    #[default]
    Submission,
    /// The month the provider completed the batch in.
    Completion,
}

impl Accrual {
    pub fn as_str(self) -> &'static str {
        match self {
            Accrual::Submission => "submission",
            Accrual::Completion => "completion",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    pub cost_center: String,
    /// Monthly budget in USD, as a decimal string such as "500.00".
    pub monthly_budget_usd: String,
    /// RabbitMQ users that may submit jobs for this team. The broker checks a
    /// message's `user_id` against the user that published it.
    #[serde(default)]
    pub amqp_users: Vec<String>,
    /// Jobs whose estimated cost is above this amount (USD, decimal string) are
    /// held for review instead of being reserved.
    #[serde(default)]
    pub review_above_usd: Option<String>,
    /// Jobs with more requests than this are held for review.
    #[serde(default)]
    pub review_above_requests: Option<u64>,
}

/// A team's review threshold: a job above either bound is held for review.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReviewThreshold {
    pub cost: Option<Micros>,
    pub requests: Option<u64>,
}

/// Settings of each provider, with defaults filled in per provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "ProvidersFile")]
pub struct ProvidersConfig {
    pub openai: ProviderConfig,
    pub anthropic: ProviderConfig,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        ProvidersFile::default().into()
    }
}

impl ProvidersConfig {
    pub fn get(&self, provider: &str) -> Option<&ProviderConfig> {
        match provider {
            "openai" => Some(&self.openai),
            "anthropic" => Some(&self.anthropic),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub base_url: String,
    pub request_timeout_secs: u64,
    /// Attempts for one provider call before the job step fails.
    pub max_attempts: u32,
    pub max_requests_per_batch: u64,
    /// Largest input file (OpenAI) or create request body (Anthropic), in bytes.
    pub max_file_bytes: u64,
    pub max_embedding_inputs: u64,
    /// Provider batches one worker creates at the same time.
    pub max_concurrent_creates: usize,
    /// Polls one worker runs at the same time.
    pub max_concurrent_polls: usize,
    /// Delay before a batch that failed with `token_limit_exceeded` is created again.
    pub token_limit_retry_secs: u64,
    /// Creations after `token_limit_exceeded` before the part is marked failed.
    pub max_token_limit_retries: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    #[serde(default)]
    openai: ProviderFile,
    #[serde(default)]
    anthropic: ProviderFile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderFile {
    base_url: Option<String>,
    request_timeout_secs: Option<u64>,
    max_attempts: Option<u32>,
    max_requests_per_batch: Option<u64>,
    max_file_bytes: Option<u64>,
    max_embedding_inputs: Option<u64>,
    max_concurrent_creates: Option<usize>,
    max_concurrent_polls: Option<usize>,
    token_limit_retry_secs: Option<u64>,
    max_token_limit_retries: Option<u32>,
}

impl From<ProvidersFile> for ProvidersConfig {
    fn from(file: ProvidersFile) -> Self {
        // Limits as the providers document them: OpenAI 50,000 requests and 200 MB
        // per input file; Anthropic 100,000 requests or 256 MB per batch.
        ProvidersConfig {
            openai: file
                .openai
                .resolve("https://api.openai.com", 50_000, 200_000_000),
            anthropic: file
                .anthropic
                .resolve("https://api.anthropic.com", 100_000, 256_000_000),
        }
    }
}

impl ProviderFile {
    fn resolve(self, base_url: &str, max_requests: u64, max_bytes: u64) -> ProviderConfig {
        ProviderConfig {
            base_url: self.base_url.unwrap_or_else(|| base_url.to_owned()),
            request_timeout_secs: self.request_timeout_secs.unwrap_or(60),
            max_attempts: self.max_attempts.unwrap_or(5),
            max_requests_per_batch: self.max_requests_per_batch.unwrap_or(max_requests),
            max_file_bytes: self.max_file_bytes.unwrap_or(max_bytes),
            max_embedding_inputs: self.max_embedding_inputs.unwrap_or(50_000),
            max_concurrent_creates: self.max_concurrent_creates.unwrap_or(4),
            max_concurrent_polls: self.max_concurrent_polls.unwrap_or(16),
            token_limit_retry_secs: self.token_limit_retry_secs.unwrap_or(600),
            max_token_limit_retries: self.max_token_limit_retries.unwrap_or(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Messages a worker takes from a queue before acknowledging any.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Delay between two polls of one provider batch.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// Time a worker may take to upload the input and create the provider batch
    /// before another worker may take the job over.
    #[serde(default = "default_creation_lease")]
    pub creation_lease_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            prefetch: default_prefetch(),
            poll_interval_secs: default_poll_interval(),
            creation_lease_secs: default_creation_lease(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Seconds between two runs of the reservation reaper; 0 turns it off.
    #[serde(default = "default_reaper_interval")]
    pub reaper_interval_secs: u64,
    /// Age a reservation must reach before the reaper looks at its job.
    #[serde(default = "default_reservation_max_age")]
    pub reservation_max_age_secs: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            prefetch: default_prefetch(),
            reaper_interval_secs: default_reaper_interval(),
            reservation_max_age_secs: default_reservation_max_age(),
        }
    }
}

fn default_reaper_interval() -> u64 {
    300
}

fn default_reservation_max_age() -> u64 {
    3600
}

fn default_alert_fractions() -> Vec<rust_decimal::Decimal> {
    ["0.5", "0.8", "1.0"]
        .iter()
        .map(|fraction| fraction.parse().expect("a valid decimal"))
        .collect()
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

fn default_prefix() -> String {
    "batchgate".to_owned()
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_prefetch() -> u16 {
    8
}
fn default_poll_interval() -> u64 {
    30
}
fn default_creation_lease() -> u64 {
    900
}

/// Environment variables that override a configuration value, with the key they set.
pub const ENV_OVERRIDES: [(&str, &str); 8] = [
    ("BATCHGATE_BROKER_URL", "broker.url"),
    ("BATCHGATE_BROKER_PREFIX", "broker.prefix"),
    ("BATCHGATE_REDIS_URL", "redis.url"),
    ("BATCHGATE_REDIS_PREFIX", "redis.prefix"),
    ("BATCHGATE_PRICE_TABLE", "price_table"),
    ("BATCHGATE_OPENAI_BASE_URL", "providers.openai.base_url"),
    (
        "BATCHGATE_ANTHROPIC_BASE_URL",
        "providers.anthropic.base_url",
    ),
    ("BATCHGATE_POLL_INTERVAL_SECS", "worker.poll_interval_secs"),
];

impl Config {
    /// Loads a configuration file and applies the environment overrides.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Error::Config(format!(
                "cannot read configuration file {}: {error}",
                path.display()
            ))
        })?;
        let mut config = Config::parse(&text)
            .map_err(|error| Error::Config(format!("{}: {error}", path.display())))?;
        config.apply_env(|name| std::env::var(name).ok())?;
        if config.price_table.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.price_table = base.join(&config.price_table);
        }
        config.check()?;
        Ok(config)
    }

    /// Parses configuration text without environment overrides or path resolution.
    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        toml::from_str(text).map_err(|error| error.to_string())
    }

    /// Applies the overrides in [`ENV_OVERRIDES`] read through `lookup`.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(url) = lookup("BATCHGATE_BROKER_URL") {
            self.broker.url = url;
        }
        if let Some(prefix) = lookup("BATCHGATE_BROKER_PREFIX") {
            self.broker.prefix = prefix;
        }
        if let Some(url) = lookup("BATCHGATE_REDIS_URL") {
            self.redis.url = url;
        }
        if let Some(prefix) = lookup("BATCHGATE_REDIS_PREFIX") {
            self.redis.prefix = prefix;
        }
        if let Some(path) = lookup("BATCHGATE_PRICE_TABLE") {
            self.price_table = PathBuf::from(path);
        }
        if let Some(url) = lookup("BATCHGATE_OPENAI_BASE_URL") {
            self.providers.openai.base_url = url;
        }
        if let Some(url) = lookup("BATCHGATE_ANTHROPIC_BASE_URL") {
            self.providers.anthropic.base_url = url;
        }
        if let Some(secs) = lookup("BATCHGATE_POLL_INTERVAL_SECS") {
            self.worker.poll_interval_secs = secs.parse().map_err(|_| {
                Error::Config(format!(
                    "invalid BATCHGATE_POLL_INTERVAL_SECS {secs:?}: expected whole seconds"
                ))
            })?;
        }
        Ok(())
    }

    /// Checks values that the file format cannot express.
    pub fn check(&self) -> Result<()> {
        if self.teams.is_empty() {
            return Err(Error::Config(
                "no teams configured: add at least one [teams.NAME] table".into(),
            ));
        }
        for (name, team) in &self.teams {
            team.monthly_budget_usd.parse::<Micros>().map_err(|error| {
                Error::Config(format!("teams.{name}.monthly_budget_usd: {error}"))
            })?;
            if let Some(amount) = &team.review_above_usd {
                amount.parse::<Micros>().map_err(|error| {
                    Error::Config(format!("teams.{name}.review_above_usd: {error}"))
                })?;
            }
        }
        for fraction in &self.budget_alert_fractions {
            let valid =
                *fraction > rust_decimal::Decimal::ZERO && *fraction <= rust_decimal::Decimal::ONE;
            if !valid
                || (fraction * rust_decimal::Decimal::from(1000)).fract()
                    != rust_decimal::Decimal::ZERO
            {
                return Err(Error::Config(format!(
                    "budget_alert_fractions: {fraction} must be above 0, at most 1 and a multiple of 0.001"
                )));
            }
        }
        crate::period::Periods::new(&self.budget_time_zone)
            .map_err(|error| Error::Config(format!("budget_time_zone: {error}")))?;
        if self.worker.poll_interval_secs == 0 {
            return Err(Error::Config(
                "worker.poll_interval_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Returns the budget months of the configured time zone (UTC if it is invalid,
    /// which [`Config::check`] reports).
    pub fn periods(&self) -> crate::period::Periods {
        crate::period::Periods::new(&self.budget_time_zone).unwrap_or_default()
    }

    /// Returns the alert thresholds in per mille of the limit.
    pub fn alert_per_mille(&self) -> Vec<u32> {
        use rust_decimal::prelude::ToPrimitive;
        self.budget_alert_fractions
            .iter()
            .filter_map(|fraction| (fraction * rust_decimal::Decimal::from(1000)).to_u32())
            .collect()
    }

    /// Returns the team's monthly budget limit.
    pub fn team_budget(&self, team: &str) -> Option<Micros> {
        self.teams.get(team)?.monthly_budget_usd.parse().ok()
    }

    /// Returns the team's review threshold; an unknown team has none.
    pub fn review_threshold(&self, team: &str) -> ReviewThreshold {
        let Some(team) = self.teams.get(team) else {
            return ReviewThreshold::default();
        };
        ReviewThreshold {
            cost: team
                .review_above_usd
                .as_deref()
                .and_then(|amount| amount.parse().ok()),
            requests: team.review_above_requests,
        }
    }

    /// Reports whether `class` is a built-in or configured workload class.
    pub fn is_workload_class(&self, class: &str) -> bool {
        BUILTIN_WORKLOAD_CLASSES.contains(&class)
            || self.workload_classes.iter().any(|c| c == class)
    }

    /// Lists every accepted workload class, built-in ones first.
    pub fn workload_class_list(&self) -> Vec<String> {
        BUILTIN_WORKLOAD_CLASSES
            .iter()
            .map(|class| class.to_string())
            .chain(self.workload_classes.iter().cloned())
            .collect()
    }
}

/// Reads a provider's API key from its environment variable
/// (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`); returns `None` when it is unset.
pub fn api_key(provider: &str) -> Option<String> {
    let variable = format!("{}_API_KEY", provider.to_ascii_uppercase());
    std::env::var(variable)
        .ok()
        .filter(|key| !key.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
price_table = "prices.toml"
[broker]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
[redis]
url = "redis://127.0.0.1:6379"
[teams.search]
cost_center = "CC-2002"
monthly_budget_usd = "40.00"
"#;

    #[test]
    fn parses_minimal_file() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.team_budget("search"), Some(Micros(40_000_000)));
        assert_eq!(config.accrual, Accrual::Submission);
        assert_eq!(config.broker.prefix, "batchgate");
    }

    #[test]
    fn rejects_unknown_key() {
        let error = Config::parse(&format!("{MINIMAL}\n[teams.search.extra]\n")).unwrap_err();
        assert!(error.contains("unknown field"), "{error}");
        let error = Config::parse(&MINIMAL.replace("[redis]", "[redis]\nport = 1")).unwrap_err();
        assert!(error.contains("port"), "{error}");
    }

    #[test]
    fn environment_overrides_file() {
        let mut config = Config::parse(MINIMAL).unwrap();
        config
            .apply_env(|name| {
                (name == "BATCHGATE_REDIS_URL").then(|| "redis://10.0.0.1".to_owned())
            })
            .unwrap();
        assert_eq!(config.redis.url, "redis://10.0.0.1");
    }

    #[test]
    fn rejects_bad_budget() {
        let config = Config::parse(&MINIMAL.replace("40.00", "forty")).unwrap();
        let error = config.check().unwrap_err().to_string();
        assert!(error.contains("teams.search.monthly_budget_usd"), "{error}");
    }
}

#[cfg(test)]
mod shipped_files {
    use super::*;

    #[test]
    fn shipped_configuration_and_prices_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let config = Config::load(&root.join("config/batchgate.toml")).unwrap();
        let prices = crate::pricing::PriceTable::load(&config.price_table).unwrap();
        for team in ["data-eng", "search", "ml-eval"] {
            assert!(config.team_budget(team).is_some(), "team {team}");
        }
        assert!(prices.latest("openai", "gpt-6-luna").is_some());
        assert!(prices.latest("openai", "text-embedding-3-small").is_some());
    }
}
