//! The job manifest: who pays, why, and what is sent to which provider.

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Endpoints an OpenAI batch accepts that batchgate can price.
pub const OPENAI_ENDPOINTS: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/completions",
];

/// The Anthropic Message Batches API takes Messages requests only.
pub const ANTHROPIC_ENDPOINTS: [&str; 1] = ["/v1/messages"];

/// Returns the endpoints batchgate accepts for a provider, or `None` for an unknown provider.
pub fn endpoints_of(provider: &str) -> Option<&'static [&'static str]> {
    match provider {
        "openai" => Some(&OPENAI_ENDPOINTS),
        "anthropic" => Some(&ANTHROPIC_ENDPOINTS),
        _ => None,
    }
}

/// Maximum `purpose`, so that it fits an OpenAI metadata value (512 characters).
pub const MAX_PURPOSE_CHARS: usize = 512;

/// Maximum `justification` and `expected_output`, each.
pub const MAX_REVIEW_TEXT_CHARS: usize = 4000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Idempotency key of the job: resubmitting the same id never charges twice.
    pub job_id: String,
    pub owner_team: String,
    pub cost_center: String,
    pub workload_class: String,
    pub purpose: String,
    pub provider: String,
    pub endpoint: String,
    pub model: String,
    #[serde(default = "default_completion_window")]
    pub completion_window: String,
    /// Reason the job is worth its cost. Required when the job is held for review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// Output the job produces and who uses it. Required when the job is held for review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_output: Option<String>,
}

/// Fields every manifest must have.
pub const REQUIRED_FIELDS: [&str; 8] = [
    "job_id",
    "owner_team",
    "cost_center",
    "workload_class",
    "purpose",
    "provider",
    "endpoint",
    "model",
];

fn default_completion_window() -> String {
    "24h".to_owned()
}

/// A manifest problem, naming the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest field {field}: {reason}")]
pub struct ManifestError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        field,
        reason: reason.into(),
    }
}

/// Checks that a job id is 1 to 64 letters, digits, `-`, `_` or `.`, starting with a
/// letter or digit, so it fits provider metadata and custom id prefixes.
pub fn check_job_id(job_id: &str) -> Result<(), String> {
    let valid_start = job_id
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let valid_chars = job_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if job_id.is_empty() || job_id.len() > 64 || !valid_start || !valid_chars {
        return Err(format!(
            "invalid job id {job_id:?}: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

impl Manifest {
    /// Parses a manifest file's text: TOML, or JSON when it starts with `{`.
    /// A missing field is reported by name before any other problem.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let json = text.trim_start().starts_with('{');
        let keys: Vec<String> = if json {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|error| error.to_string())?;
            value
                .as_object()
                .map(|object| object.keys().cloned().collect())
                .unwrap_or_default()
        } else {
            let table: toml::Table = toml::from_str(text).map_err(|error| error.to_string())?;
            table.keys().cloned().collect()
        };
        let missing: Vec<&str> = REQUIRED_FIELDS
            .iter()
            .copied()
            .filter(|field| !keys.iter().any(|key| key == field))
            .collect();
        if !missing.is_empty() {
            return Err(format!("missing field {}", missing.join(", ")));
        }
        if json {
            serde_json::from_str(text).map_err(|error| error.to_string())
        } else {
            toml::from_str(text).map_err(|error| error.to_string())
        }
    }

    /// Checks every tag against the configuration. A model missing from the
    /// price table is not an error here: such a job is held for review.
    pub fn validate(&self, config: &Config) -> Result<(), ManifestError> {
        let required = [
            ("job_id", &self.job_id),
            ("owner_team", &self.owner_team),
            ("cost_center", &self.cost_center),
            ("workload_class", &self.workload_class),
            ("purpose", &self.purpose),
            ("provider", &self.provider),
            ("endpoint", &self.endpoint),
            ("model", &self.model),
        ];
        for (field, value) in required {
            if value.trim().is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
        }
        check_job_id(&self.job_id).map_err(|reason| invalid("job_id", reason))?;

        let Some(team) = config.teams.get(&self.owner_team) else {
            let known: Vec<&str> = config.teams.keys().map(String::as_str).collect();
            return Err(invalid(
                "owner_team",
                format!(
                    "unknown team {:?}; configured teams: {}",
                    self.owner_team,
                    known.join(", ")
                ),
            ));
        };
        if team.cost_center != self.cost_center {
            return Err(invalid(
                "cost_center",
                format!(
                    "{:?} is not the cost center of team {} ({})",
                    self.cost_center, self.owner_team, team.cost_center
                ),
            ));
        }
        if !config.is_workload_class(&self.workload_class) {
            return Err(invalid(
                "workload_class",
                format!(
                    "unknown class {:?}; accepted: {}",
                    self.workload_class,
                    config.workload_class_list().join(", ")
                ),
            ));
        }
        if self.purpose.chars().count() > MAX_PURPOSE_CHARS {
            return Err(invalid(
                "purpose",
                format!("longer than {MAX_PURPOSE_CHARS} characters"),
            ));
        }
        let endpoints = endpoints_of(&self.provider).ok_or_else(|| {
            invalid(
                "provider",
                format!(
                    "unsupported provider {:?}; supported: openai, anthropic",
                    self.provider
                ),
            )
        })?;
        if !endpoints.contains(&self.endpoint.as_str()) {
            return Err(invalid(
                "endpoint",
                format!(
                    "unsupported endpoint {:?} for {}; supported: {}",
                    self.endpoint,
                    self.provider,
                    endpoints.join(", ")
                ),
            ));
        }
        if self.completion_window != "24h" {
            return Err(invalid(
                "completion_window",
                format!(
                    "unsupported window {:?}; provider batches accept only \"24h\"",
                    self.completion_window
                ),
            ));
        }
        for (field, value) in [
            ("justification", &self.justification),
            ("expected_output", &self.expected_output),
        ] {
            if value
                .as_deref()
                .is_some_and(|text| text.chars().count() > MAX_REVIEW_TEXT_CHARS)
            {
                return Err(invalid(
                    field,
                    format!("longer than {MAX_REVIEW_TEXT_CHARS} characters"),
                ));
            }
        }
        Ok(())
    }

    /// Checks that a job held for review has a justification and an expected
    /// output. `reasons` lists why it is held, for the error message.
    pub fn check_review_fields(&self, reasons: &[String]) -> Result<(), ManifestError> {
        for (field, value) in [
            ("justification", &self.justification),
            ("expected_output", &self.expected_output),
        ] {
            if value.as_deref().is_none_or(|text| text.trim().is_empty()) {
                return Err(invalid(
                    field,
                    format!(
                        "required because the job needs review ({}); add justification and expected_output to the manifest",
                        reasons.join("; ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_are_named() {
        let error = Manifest::parse("job_id = \"a\"\nowner_team = \"t\"\n").unwrap_err();
        assert!(
            error.starts_with("missing field cost_center, workload_class"),
            "{error}"
        );
        let error = Manifest::parse("{\"job_id\": \"a\"}").unwrap_err();
        assert!(error.contains("owner_team"), "{error}");
    }
}
