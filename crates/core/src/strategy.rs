//! Rollout strategies: the presets of the original tracker (`canary`, `blue`,
//! `green`) and custom steps, with the health gate of each wave.
//!
//! [`StrategySpec`] is what an operator writes (every field optional);
//! [`StrategySpec::resolve`] validates it into a [`Strategy`], which is what the
//! planner and the engine read and what the store keeps.

use crate::analysis::{self, AnalysisSpec};
use crate::window::Window;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

crate::model::str_enum!(
    /// The preset a rollout was asked for: the original tracker's wave vocabulary
    /// (`canary`, `blue`, `green`), or `custom` for explicit steps. Not to be confused
    /// with a wave *index* (`current_wave`, `actions.wave`): a preset plans one or
    /// more waves. The tracker API and the stored JSON of old rollouts call it `wave`.
    Preset, "preset", {
    Canary => "canary",
    Blue => "blue",
    Green => "green",
    Custom => "custom",
});

/// The size a wave grows the rollout to: cumulative, like Argo's `setWeight`.
/// `[1, "10%", "100%"]` means one device, then up to 10% of targets, then all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    Count(u64),
    Percent(f64),
}

impl Step {
    /// How many of `total` devices the rollout covers once this step is done.
    pub fn cumulative(self, total: u64) -> u64 {
        match self {
            Step::Count(n) => n.min(total),
            Step::Percent(p) => {
                if total == 0 || p <= 0.0 {
                    0
                } else {
                    ((p / 100.0 * total as f64).ceil() as u64).clamp(1, total)
                }
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Count(n) => write!(f, "{n}"),
            Step::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Step {
    type Err = StrategyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let step = if let Some(p) = s.strip_suffix('%') {
            let p: f64 =
                p.trim().parse().map_err(|_| StrategyError::new("steps", format!("'{s}' is not a percentage")))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(StrategyError::new("steps", format!("percentage '{s}' must be in (0, 100]")));
            }
            Step::Percent(p)
        } else {
            let n: u64 = s.parse().map_err(|_| {
                StrategyError::new("steps", format!("'{s}' is neither a device count nor a percentage"))
            })?;
            if n == 0 {
                return Err(StrategyError::new("steps", "a step must cover at least one device"));
            }
            Step::Count(n)
        };
        Ok(step)
    }
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Step::Count(n) => s.serialize_u64(*n),
            Step::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("a step is a device count (e.g. 1) or a percentage string (e.g. \"10%\")")
        })? {
            Raw::N(n) => Step::from_str(&n.to_string()).map_err(serde::de::Error::custom),
            Raw::S(s) => Step::from_str(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// The health gate applied to every wave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// Fraction of a wave's devices that must succeed before the next wave starts.
    pub success_threshold: f64,
    /// The rollout fails when the failed fraction of a wave exceeds this.
    pub failure_threshold: f64,
    /// Seconds to wait after a wave passed its gate before the next one starts.
    pub bake_time_secs: u64,
    /// Seconds a device has, from being notified, to finish its action.
    pub timeout_secs: u64,
    /// How many times a timed-out or failed device is tried again.
    pub retries: u32,
    /// First retry delay; doubles each attempt, capped at one hour.
    pub backoff_secs: u64,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            success_threshold: 0.95,
            failure_threshold: 0.05,
            bake_time_secs: 0,
            timeout_secs: 300,
            retries: 1,
            backoff_secs: 5,
        }
    }
}

impl Gate {
    /// Delay before attempt `attempt + 1` (attempt counts from 1).
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        let b = crate::backoff::Backoff::new(Duration::from_secs(self.backoff_secs), Duration::from_secs(3600));
        b.delay(attempt).as_millis() as i64
    }
}

/// A validated strategy, stored with the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    #[serde(alias = "wave")]
    pub preset: Preset,
    /// Cumulative sizes of the waves, relative to the rollout's eligible devices.
    pub steps: Vec<Step>,
    pub gate: Gate,
    /// Devices released together within a wave (0 = the whole wave at once).
    pub batch_size: u64,
    /// Seconds between two batches of one wave.
    pub batch_delay_secs: u64,
    /// Devices in flight at once across the rollout (0 = unlimited).
    pub max_parallel: u64,
    /// Roll updated devices back when the rollout fails or is aborted.
    pub auto_rollback: bool,
    /// Seed of the device order; the same seed gives the same plan.
    pub seed: u64,
    /// Maintenance windows; empty means always open.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Checks measured while each wave bakes, from what the devices measure
    /// (see [`crate::analysis`]); empty: the health gate alone decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<AnalysisSpec>,
}

impl Strategy {
    pub fn wave_count(&self) -> usize {
        self.steps.len()
    }

    /// Whether a new device may start at `now` (inside a window, or no windows).
    pub fn window_open(&self, now: crate::Millis) -> bool {
        self.windows.is_empty() || self.windows.iter().any(|w| w.contains(now))
    }

    /// The next time at or after `now` a window opens (None if open now or never).
    pub fn next_window_open(&self, now: crate::Millis) -> Option<crate::Millis> {
        if self.window_open(now) {
            return None;
        }
        self.windows.iter().filter_map(|w| w.next_open(now)).min()
    }
}

/// An invalid strategy, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct StrategyError {
    pub field: String,
    pub message: String,
}

impl StrategyError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        StrategyError { field: field.to_string(), message: message.into() }
    }
}

/// What an operator writes. Every field is optional; `resolve` fills defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    /// `canary` (1 device), `blue` (`count`/`percent`, default 2), `green` (all), or
    /// `custom` (requires `steps`). Defaults to `custom` when steps are given, else `green`.
    /// The API also accepts it as `wave`, the original tracker's word.
    #[serde(alias = "wave")]
    pub preset: Option<Preset>,
    pub count: Option<u64>,
    pub percent: Option<f64>,
    pub steps: Option<Vec<Step>>,
    pub success_threshold: Option<f64>,
    pub failure_threshold: Option<f64>,
    pub bake_time_secs: Option<u64>,
    pub timeout_secs: Option<u64>,
    pub retries: Option<u32>,
    pub backoff_secs: Option<u64>,
    pub batch_size: Option<u64>,
    pub batch_delay_secs: Option<u64>,
    pub max_parallel: Option<u64>,
    pub auto_rollback: Option<bool>,
    pub seed: Option<u64>,
    /// e.g. `["Mon-Fri 22:00-04:00 UTC"]`
    pub windows: Option<Vec<String>>,
    /// Analysis checks measured while each wave bakes; a failed check fails
    /// the rollout, an inconclusive one pauses it.
    pub analysis: Option<Vec<AnalysisSpec>>,
}

/// Devices a `blue` wave takes when neither count nor percent is given (as the original tracker).
pub const BLUE_DEFAULT_COUNT: u64 = 2;

impl StrategySpec {
    pub fn preset(preset: Preset) -> Self {
        StrategySpec { preset: Some(preset), ..Default::default() }
    }

    /// Validates and fills defaults. `default_seed` is used when no seed is given
    /// (the server passes a random one and stores the resolved seed with the
    /// rollout, so its plan can be reproduced).
    pub fn resolve(&self, default_seed: u64) -> Result<Strategy, StrategyError> {
        let preset = match (self.preset, &self.steps) {
            (Some(w), _) => w,
            (None, Some(_)) => Preset::Custom,
            (None, None) => Preset::Green,
        };
        if self.count.is_some() && self.percent.is_some() {
            return Err(StrategyError::new("count", "give either count or percent, not both"));
        }
        if (self.count.is_some() || self.percent.is_some()) && preset != Preset::Blue {
            let f = if self.count.is_some() { "count" } else { "percent" };
            return Err(StrategyError::new(f, "count and percent apply to the blue wave only"));
        }
        if self.steps.is_some() && preset != Preset::Custom {
            return Err(StrategyError::new("steps", format!("steps cannot be combined with the {preset} preset")));
        }
        let steps = match preset {
            Preset::Canary => vec![Step::Count(1)],
            Preset::Blue => match (self.count, self.percent) {
                (Some(0), _) => return Err(StrategyError::new("count", "must be at least 1")),
                (Some(n), _) => vec![Step::Count(n)],
                (_, Some(p)) if !(p > 0.0 && p <= 100.0) => {
                    return Err(StrategyError::new("percent", "must be in (0, 100]"))
                }
                (_, Some(p)) => vec![Step::Percent(p)],
                _ => vec![Step::Count(BLUE_DEFAULT_COUNT)],
            },
            Preset::Green => vec![Step::Percent(100.0)],
            Preset::Custom => {
                let steps = self.steps.clone().ok_or_else(|| {
                    StrategyError::new("steps", "a custom strategy needs steps, e.g. [1, \"10%\", \"100%\"]")
                })?;
                if steps.is_empty() {
                    return Err(StrategyError::new("steps", "must not be empty"));
                }
                if steps.len() > 100 {
                    return Err(StrategyError::new("steps", "at most 100 steps"));
                }
                steps
            }
        };
        let d = Gate::default();
        let frac = |name: &str, v: Option<f64>, default: f64| -> Result<f64, StrategyError> {
            match v {
                None => Ok(default),
                Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
                Some(x) => Err(StrategyError::new(name, format!("{x} is not a fraction in [0, 1]"))),
            }
        };
        let gate = Gate {
            success_threshold: frac("success_threshold", self.success_threshold, d.success_threshold)?,
            failure_threshold: frac("failure_threshold", self.failure_threshold, d.failure_threshold)?,
            bake_time_secs: self.bake_time_secs.unwrap_or(d.bake_time_secs),
            timeout_secs: match self.timeout_secs {
                Some(0) => return Err(StrategyError::new("timeout_secs", "must be at least 1")),
                Some(t) => t,
                None => d.timeout_secs,
            },
            retries: match self.retries {
                Some(r) if r > 100 => return Err(StrategyError::new("retries", "at most 100")),
                Some(r) => r,
                None => d.retries,
            },
            backoff_secs: self.backoff_secs.unwrap_or(d.backoff_secs),
        };
        const THIRTY_DAYS: u64 = 86_400 * 30;
        for (name, v) in [
            ("bake_time_secs", gate.bake_time_secs),
            ("timeout_secs", gate.timeout_secs),
            ("backoff_secs", gate.backoff_secs),
            ("batch_delay_secs", self.batch_delay_secs.unwrap_or(0)),
        ] {
            if v > THIRTY_DAYS {
                return Err(StrategyError::new(name, "at most 30 days"));
            }
        }
        let windows = self
            .windows
            .iter()
            .flatten()
            .map(|w| w.parse::<Window>().map_err(|e| StrategyError::new("windows", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let analysis = self.analysis.clone().unwrap_or_default();
        analysis::validate_all(&analysis).map_err(|e| StrategyError::new(&e.field, e.message))?;
        Ok(Strategy {
            preset,
            steps,
            gate,
            batch_size: self.batch_size.unwrap_or(0),
            batch_delay_secs: self.batch_delay_secs.unwrap_or(0),
            max_parallel: self.max_parallel.unwrap_or(0),
            auto_rollback: self.auto_rollback.unwrap_or(true),
            seed: self.seed.unwrap_or(default_seed),
            windows,
            analysis,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve_like_the_original_tracker() {
        let c = StrategySpec::preset(Preset::Canary).resolve(1).unwrap();
        assert_eq!(c.steps, vec![Step::Count(1)]);
        let b = StrategySpec::preset(Preset::Blue).resolve(1).unwrap();
        assert_eq!(b.steps, vec![Step::Count(2)]);
        let g = StrategySpec::preset(Preset::Green).resolve(1).unwrap();
        assert_eq!(g.steps, vec![Step::Percent(100.0)]);
        assert!(g.auto_rollback);
    }

    #[test]
    fn steps_parse_from_json() {
        let spec: StrategySpec = serde_json::from_str(r#"{"steps":[1,"10%","50%","100%"],"max_parallel":5}"#).unwrap();
        let s = spec.resolve(7).unwrap();
        assert_eq!(s.preset, Preset::Custom);
        assert_eq!(s.steps, vec![Step::Count(1), Step::Percent(10.0), Step::Percent(50.0), Step::Percent(100.0)]);
        assert_eq!(s.seed, 7);
        assert_eq!(serde_json::to_value(&s.steps).unwrap(), serde_json::json!([1, "10%", "50%", "100%"]));
    }

    #[test]
    fn bad_specs_name_their_field() {
        let cases = [
            (r#"{"steps":[0]}"#, "steps"),
            (r#"{"steps":["150%"]}"#, "steps"),
            (r#"{"wave":"canary","count":3}"#, "count"),
            (r#"{"wave":"blue","percent":0}"#, "percent"),
            (r#"{"success_threshold":1.5}"#, "success_threshold"),
            (r#"{"wave":"custom"}"#, "steps"),
            (r#"{"windows":["Funday 1-2"]}"#, "windows"),
            (r#"{"timeout_secs":0}"#, "timeout_secs"),
        ];
        for (json, field) in cases {
            let err = match serde_json::from_str::<StrategySpec>(json) {
                Ok(spec) => spec.resolve(0).unwrap_err().field,
                Err(_) => "steps".to_string(),
            };
            assert_eq!(err, field, "{json}");
        }
        assert!(serde_json::from_str::<StrategySpec>(r#"{"bogus":1}"#).is_err());
    }

    #[test]
    fn percent_steps_round_up_and_cap() {
        assert_eq!(Step::Percent(10.0).cumulative(5), 1);
        assert_eq!(Step::Percent(10.0).cumulative(100_000), 10_000);
        assert_eq!(Step::Percent(100.0).cumulative(3), 3);
        assert_eq!(Step::Count(5).cumulative(3), 3);
        assert_eq!(Step::Percent(50.0).cumulative(0), 0);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let g = Gate { backoff_secs: 5, ..Gate::default() };
        assert_eq!(g.backoff_ms(1), 5_000);
        assert_eq!(g.backoff_ms(2), 10_000);
        assert_eq!(g.backoff_ms(3), 20_000);
        assert_eq!(g.backoff_ms(40), 3_600_000);
    }
}
