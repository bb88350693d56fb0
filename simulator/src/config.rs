//! Simulator settings and the partial update that `POST /_sim/config` accepts.

use serde::{Deserialize, Serialize};

use crate::faults::FaultProfile;

/// Settings of one simulator instance.
///
/// A batch copies the settings in force when it is created, so a later change
/// through `POST /_sim/config` affects only batches created after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimulatorConfig {
    /// Seed of every random draw (output order, failures, token counts, text).
    pub seed: u64,
    /// Time in ms that a new batch stays `validating`.
    pub validating_ms: u64,
    /// Time in ms that a batch stays `in_progress`.
    pub in_progress_ms: u64,
    /// Time in ms that a batch stays `finalizing`, and also `cancelling`.
    pub finalizing_ms: u64,
    /// Probability in 0.0..=1.0 that a request fails (with a 400 or a 500).
    pub failure_ratio: f64,
    /// Share in 0.0..=1.0 of prompt tokens reported as `cached_tokens` (OpenAI).
    pub cached_ratio: f64,
    /// Share in 0.0..=1.0 of an Anthropic request's prompt tokens reported as
    /// `cache_creation_input_tokens`.
    pub anthropic_cache_write_ratio: f64,
    /// Share in 0.0..=1.0 of an Anthropic request's prompt tokens reported as
    /// `cache_read_input_tokens`. With the write ratio it adds up to at most 1.0.
    pub anthropic_cache_read_ratio: f64,
    /// Share in 0.0..=1.0 of the cache write tokens reported as
    /// `ephemeral_1h_input_tokens`, the rest being `ephemeral_5m_input_tokens`.
    pub anthropic_cache_1h_share: f64,
    /// Run-level fault profile, used by every batch that gets no per-batch profile.
    pub faults: FaultProfile,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            seed: 0,
            validating_ms: 1_000,
            in_progress_ms: 3_000,
            finalizing_ms: 1_000,
            failure_ratio: 0.0,
            cached_ratio: 0.0,
            anthropic_cache_write_ratio: 0.0,
            anthropic_cache_read_ratio: 0.0,
            anthropic_cache_1h_share: 0.0,
            faults: FaultProfile::default(),
        }
    }
}

impl SimulatorConfig {
    /// Checks that every ratio is finite and within 0.0..=1.0, that the Anthropic
    /// cache write and read ratios add up to at most 1.0, and the fault profile.
    pub fn validate(&self) -> Result<(), String> {
        check_ratio("failure_ratio", self.failure_ratio)?;
        check_ratio("cached_ratio", self.cached_ratio)?;
        check_ratio(
            "anthropic_cache_write_ratio",
            self.anthropic_cache_write_ratio,
        )?;
        check_ratio(
            "anthropic_cache_read_ratio",
            self.anthropic_cache_read_ratio,
        )?;
        check_ratio("anthropic_cache_1h_share", self.anthropic_cache_1h_share)?;
        let cached_share = self.anthropic_cache_write_ratio + self.anthropic_cache_read_ratio;
        // The tolerance accepts pairs such as 0.7 and 0.3 whose f64 sum rounds above 1.0.
        if cached_share > 1.0 + 1e-9 {
            return Err(format!(
                "invalid anthropic_cache_write_ratio {} with anthropic_cache_read_ratio {}: \
                 together they must be at most 1.0",
                self.anthropic_cache_write_ratio, self.anthropic_cache_read_ratio
            ));
        }
        self.faults.validate()
    }
}

fn check_ratio(name: &str, value: f64) -> Result<(), String> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "invalid {name} {value}: expected a number from 0.0 to 1.0"
        ))
    }
}

/// Body of `POST /_sim/config`: each field that is present replaces the current value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigPatch {
    seed: Option<u64>,
    validating_ms: Option<u64>,
    in_progress_ms: Option<u64>,
    finalizing_ms: Option<u64>,
    failure_ratio: Option<f64>,
    cached_ratio: Option<f64>,
    anthropic_cache_write_ratio: Option<f64>,
    anthropic_cache_read_ratio: Option<f64>,
    anthropic_cache_1h_share: Option<f64>,
    faults: Option<FaultProfile>,
}

impl ConfigPatch {
    /// Returns whether the patch replaces the fault profile.
    pub(crate) fn has_faults(&self) -> bool {
        self.faults.is_some()
    }

    /// Returns `config` with the fields of this patch applied, or an error if the
    /// result is invalid. A `faults` field replaces the whole fault profile.
    pub(crate) fn apply(&self, config: &SimulatorConfig) -> Result<SimulatorConfig, String> {
        let updated = SimulatorConfig {
            seed: self.seed.unwrap_or(config.seed),
            validating_ms: self.validating_ms.unwrap_or(config.validating_ms),
            in_progress_ms: self.in_progress_ms.unwrap_or(config.in_progress_ms),
            finalizing_ms: self.finalizing_ms.unwrap_or(config.finalizing_ms),
            failure_ratio: self.failure_ratio.unwrap_or(config.failure_ratio),
            cached_ratio: self.cached_ratio.unwrap_or(config.cached_ratio),
            anthropic_cache_write_ratio: self
                .anthropic_cache_write_ratio
                .unwrap_or(config.anthropic_cache_write_ratio),
            anthropic_cache_read_ratio: self
                .anthropic_cache_read_ratio
                .unwrap_or(config.anthropic_cache_read_ratio),
            anthropic_cache_1h_share: self
                .anthropic_cache_1h_share
                .unwrap_or(config.anthropic_cache_1h_share),
            faults: self.faults.clone().unwrap_or_else(|| config.faults.clone()),
        };
        updated.validate()?;
        Ok(updated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_replaces_only_given_fields() {
        let patch: ConfigPatch = serde_json::from_str(r#"{"failure_ratio":0.5}"#).unwrap();
        let updated = patch.apply(&SimulatorConfig::default()).unwrap();
        assert_eq!(updated.failure_ratio, 0.5);
        assert_eq!(
            updated.validating_ms,
            SimulatorConfig::default().validating_ms
        );
    }

    #[test]
    fn patch_rejects_ratio_above_one() {
        let patch: ConfigPatch = serde_json::from_str(r#"{"cached_ratio":1.5}"#).unwrap();
        let error = patch.apply(&SimulatorConfig::default()).unwrap_err();
        assert!(error.contains("cached_ratio"), "{error}");
    }

    #[test]
    fn patch_rejects_cache_ratios_above_one_together() {
        let patch: ConfigPatch = serde_json::from_str(
            r#"{"anthropic_cache_write_ratio":0.6,"anthropic_cache_read_ratio":0.5}"#,
        )
        .unwrap();
        let error = patch.apply(&SimulatorConfig::default()).unwrap_err();
        assert!(error.contains("at most 1.0"), "{error}");
    }

    #[test]
    fn config_without_new_fields_deserializes() {
        let config: SimulatorConfig = serde_json::from_str(r#"{"seed":5}"#).unwrap();
        assert_eq!(config.seed, 5);
        assert_eq!(config.faults, FaultProfile::default());
    }
}
