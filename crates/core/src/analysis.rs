//! Analysis gates, the pure part: checks measured again and again while a
//! wave bakes, each measurement a pass, a fail or inconclusive, the run of
//! measurements a verdict — as Argo Rollouts' `AnalysisRun` does.
//!
//! An [`AnalysisSpec`] (an entry of the rollout strategy's `analysis` list)
//! says what to measure: a metric of the wave's devices against a threshold
//! or against the devices still on the previous version (the baseline), the
//! alerts firing, or a Prometheus query. The server gathers a
//! [`Measurement`] every `interval_secs`, [`measure`] judges it, and
//! [`advance`] adds the outcome to the [`AnalysisRun`] and says whether the
//! check is still running, succeeded (`count` conclusive measurements with at
//! most `failure_limit` failures), failed (more failures than that: the
//! rollout fails), or is inconclusive (more inconclusive measurements than
//! `inconclusive_limit`: the rollout pauses until an operator promotes or
//! aborts it).
//!
//! No data is never a silent pass. A measurement without data, with too few
//! samples or devices, or without a baseline is what `on_no_data` /
//! `on_too_few_samples` say: `inconclusive` by default, or `fail`; `pass` is
//! accepted only when written out (for a metric that is only reported when
//! something goes wrong, say), and the reason recorded says so. A NaN result
//! counts as no data but is never a pass, whatever the setting, nor is a
//! failed Prometheus query (always inconclusive: an outage of the metrics
//! system should pause a rollout, not pass or fail it).

use crate::alert::{Op, Severity};
use crate::model::str_enum;
use crate::telemetry::{lossless_f64, validate_metric_name, Agg, Aggregate};
use crate::validate::is_deceptive;
use crate::Millis;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

str_enum!(
    /// What a measurement that cannot be judged (no data, too few samples or
    /// devices) counts as. `inconclusive` by default; `pass` only when written.
    MissingOutcome, "outcome", {
    Inconclusive => "inconclusive",
    Fail => "fail",
    Pass => "pass",
});

impl Default for MissingOutcome {
    /// `inconclusive`.
    fn default() -> Self {
        MissingOutcome::Inconclusive
    }
}

str_enum!(
    /// The kinds of check, as written in `kind`.
    CheckKind, "analysis kind", {
    Metric => "metric",
    NoFiringAlerts => "no_firing_alerts",
    Prometheus => "prometheus",
});

/// What a measured value must satisfy to pass: `{"op":"<=","threshold":500}`
/// (absolute) or `{"op":"<=","factor":1.1}` (relative: the value must be
/// `op factor × baseline`, the same aggregation over the devices of the
/// rollout's selector still on the previous version). A relative condition
/// is meant for metrics that are not negative (latencies, error rates); a
/// baseline of 0 admits only 0 for `<=`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawCondition", into = "RawCondition")]
pub enum Condition {
    /// `value op threshold`.
    Absolute {
        /// The comparison.
        op: Op,
        /// A finite number.
        threshold: f64,
    },
    /// `value op factor × baseline`.
    Baseline {
        /// The comparison.
        op: Op,
        /// A finite number > 0 (1.1: 10% above the baseline).
        factor: f64,
    },
}

impl Condition {
    /// The comparison.
    pub fn op(self) -> Op {
        match self {
            Condition::Absolute { op, .. } | Condition::Baseline { op, .. } => op,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    factor: Option<f64>,
}

impl TryFrom<RawCondition> for Condition {
    type Error = AnalysisError;
    fn try_from(r: RawCondition) -> Result<Self, AnalysisError> {
        match (r.threshold, r.factor) {
            (Some(threshold), None) => Ok(Condition::Absolute { op: r.op, threshold }),
            (None, Some(factor)) => Ok(Condition::Baseline { op: r.op, factor }),
            (Some(_), Some(_)) => Err(AnalysisError::new("condition", "give threshold or factor, not both")),
            (None, None) => Err(AnalysisError::new(
                "condition",
                "needs a threshold (absolute) or a factor (relative to the baseline)",
            )),
        }
    }
}

impl From<Condition> for RawCondition {
    fn from(c: Condition) -> Self {
        match c {
            Condition::Absolute { op, threshold } => RawCondition { op, threshold: Some(threshold), factor: None },
            Condition::Baseline { op, factor } => RawCondition { op, threshold: None, factor: Some(factor) },
        }
    }
}

/// What a check measures.
#[derive(Debug, Clone, PartialEq)]
pub enum AnalysisKind {
    /// `agg(metric)` over the last `window_secs` of the wave's devices.
    Metric { metric: String, agg: Agg, window_secs: u64, condition: Condition },
    /// No alert of at least `min_severity` firing on the wave's devices.
    NoFiringAlerts { min_severity: Severity },
    /// A PromQL query, run by the server, whose value must be `op threshold`.
    /// The query may contain `{{rollout}}`, `{{wave}}` and `{{version}}`,
    /// see [`render_query`].
    Prometheus { query: String, op: Op, threshold: f64 },
}

impl AnalysisKind {
    /// The kind's name.
    pub fn name(&self) -> CheckKind {
        match self {
            AnalysisKind::Metric { .. } => CheckKind::Metric,
            AnalysisKind::NoFiringAlerts { .. } => CheckKind::NoFiringAlerts,
            AnalysisKind::Prometheus { .. } => CheckKind::Prometheus,
        }
    }
}

/// One check of a wave's analysis. In JSON flat, with the kind's fields
/// beside the common ones, e.g.
/// `{"name":"latency","kind":"metric","metric":"request_ms","agg":"p95","window_secs":300,"condition":{"op":"<=","factor":1.1},"count":5,"interval_secs":60}`,
/// `{"name":"alerts","kind":"no_firing_alerts","min_severity":"critical"}` or
/// `{"name":"errors","kind":"prometheus","query":"sum(rate(errors{version=\"{{version}}\"}[5m]))","condition":{"op":"<","threshold":0.1}}`.
/// A field that does not apply to the kind is refused, as is an unknown one.
/// Structure is checked when it is read; values by [`AnalysisSpec::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSpec", into = "RawSpec")]
pub struct AnalysisSpec {
    /// Names the check in events and errors: 1 to 63 letters, digits, `.`, `_`, `-`.
    pub name: String,
    pub kind: AnalysisKind,
    /// Metric checks: fewer samples than this (from the wave, or the baseline)
    /// is `on_too_few_samples`. Default 1.
    pub min_samples: u64,
    /// Metric checks: fewer devices than this is `on_too_few_samples`. Default 1.
    pub min_devices: u64,
    /// Wait before the first measurement, seconds. Default: one
    /// `interval_secs`, so the wave's devices have sent data on the new
    /// version before it is judged (a measurement at the moment the gate
    /// passes mostly finds none, and pauses the rollout).
    pub initial_delay_secs: u64,
    /// Between two measurements, seconds. Default 60.
    pub interval_secs: u64,
    /// Conclusive (passed or failed) measurements needed to succeed. Default 1.
    pub count: u32,
    /// Failed measurements tolerated; one more fails the check. Default 0.
    /// Less than `count`, so that success always needs a pass.
    pub failure_limit: u32,
    /// Inconclusive measurements tolerated (each is retried at the next
    /// interval and does not count toward `count`); one more makes the check
    /// inconclusive. Default 0.
    pub inconclusive_limit: u32,
    /// No data in the wave (or the baseline), or a NaN. Default `inconclusive`.
    pub on_no_data: MissingOutcome,
    /// Metric checks: too few samples or devices. Default `inconclusive`.
    pub on_too_few_samples: MissingOutcome,
}

/// An invalid check, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct AnalysisError {
    /// The field, as in the JSON (`condition.factor`), or `analysis[0].condition.factor` in a list.
    pub field: String,
    /// Why, without the field.
    pub message: String,
}

impl AnalysisError {
    /// An error about `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        AnalysisError { field: field.to_string(), message: message.into() }
    }

    /// The same error for the check at `index` of the list: `analysis[0].count`.
    pub fn at(self, index: usize) -> Self {
        AnalysisError { field: format!("analysis[{index}].{}", self.field), message: self.message }
    }
}

/// Checks one analysis may have at most.
pub const MAX_CHECKS: usize = 16;
/// The largest `count`, `failure_limit` and `inconclusive_limit`.
pub const MAX_COUNT: u32 = 1000;
/// The longest `interval_secs`: one day.
pub const MAX_INTERVAL_SECS: u64 = 86_400;
/// The longest `window_secs` and `initial_delay_secs`: 30 days.
pub const MAX_WINDOW_SECS: u64 = 30 * 86_400;
/// The longest query, bytes.
pub const MAX_QUERY: usize = 4096;
/// The placeholders a query may contain, as `{{name}}`.
pub const PLACEHOLDERS: [&str; 3] = ["rollout", "wave", "version"];

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    kind: CheckKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agg: Option<Agg>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    window_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    condition: Option<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_devices: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initial_delay_secs: Option<u64>,
    #[serde(default = "sixty")]
    interval_secs: u64,
    #[serde(default = "one_u32")]
    count: u32,
    #[serde(default)]
    failure_limit: u32,
    #[serde(default)]
    inconclusive_limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_no_data: Option<MissingOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_too_few_samples: Option<MissingOutcome>,
}

const fn sixty() -> u64 {
    60
}

const fn one_u32() -> u32 {
    1
}

fn need<T>(v: Option<T>, field: &str, kind: CheckKind) -> Result<T, AnalysisError> {
    v.ok_or_else(|| AnalysisError::new(field, format!("required for a {kind} check")))
}

impl TryFrom<RawSpec> for AnalysisSpec {
    type Error = AnalysisError;
    fn try_from(r: RawSpec) -> Result<Self, AnalysisError> {
        let k = r.kind;
        let present = [
            ("metric", r.metric.is_some()),
            ("agg", r.agg.is_some()),
            ("window_secs", r.window_secs.is_some()),
            ("condition", r.condition.is_some()),
            ("min_severity", r.min_severity.is_some()),
            ("query", r.query.is_some()),
            ("min_samples", r.min_samples.is_some()),
            ("min_devices", r.min_devices.is_some()),
            ("on_no_data", r.on_no_data.is_some()),
            ("on_too_few_samples", r.on_too_few_samples.is_some()),
        ];
        let applies: &[&str] = match k {
            CheckKind::Metric => &[
                "metric",
                "agg",
                "window_secs",
                "condition",
                "min_samples",
                "min_devices",
                "on_no_data",
                "on_too_few_samples",
            ],
            CheckKind::NoFiringAlerts => &["min_severity"],
            CheckKind::Prometheus => &["query", "condition", "on_no_data"],
        };
        if let Some((field, _)) = present.iter().find(|(f, p)| *p && !applies.contains(f)) {
            return Err(AnalysisError::new(field, format!("does not apply to a {k} check")));
        }
        let kind = match k {
            CheckKind::Metric => AnalysisKind::Metric {
                metric: need(r.metric, "metric", k)?,
                agg: need(r.agg, "agg", k)?,
                window_secs: need(r.window_secs, "window_secs", k)?,
                condition: need(r.condition, "condition", k)?,
            },
            CheckKind::NoFiringAlerts => {
                AnalysisKind::NoFiringAlerts { min_severity: r.min_severity.unwrap_or_default() }
            }
            CheckKind::Prometheus => match need(r.condition, "condition", k)? {
                Condition::Absolute { op, threshold } => {
                    AnalysisKind::Prometheus { query: need(r.query, "query", k)?, op, threshold }
                }
                Condition::Baseline { .. } => {
                    return Err(AnalysisError::new(
                        "condition.factor",
                        "a prometheus check compares with a threshold; a baseline applies to metric checks only",
                    ))
                }
            },
        };
        Ok(AnalysisSpec {
            name: r.name,
            kind,
            min_samples: r.min_samples.unwrap_or(1),
            min_devices: r.min_devices.unwrap_or(1),
            initial_delay_secs: r.initial_delay_secs.unwrap_or(r.interval_secs),
            interval_secs: r.interval_secs,
            count: r.count,
            failure_limit: r.failure_limit,
            inconclusive_limit: r.inconclusive_limit,
            on_no_data: r.on_no_data.unwrap_or_default(),
            on_too_few_samples: r.on_too_few_samples.unwrap_or_default(),
        })
    }
}

impl From<AnalysisSpec> for RawSpec {
    /// Every setting that applies written out, defaults included, so the
    /// stored strategy says what was in force.
    fn from(s: AnalysisSpec) -> Self {
        let mut r = RawSpec {
            name: s.name,
            kind: s.kind.name(),
            metric: None,
            agg: None,
            window_secs: None,
            condition: None,
            min_severity: None,
            query: None,
            min_samples: None,
            min_devices: None,
            initial_delay_secs: Some(s.initial_delay_secs),
            interval_secs: s.interval_secs,
            count: s.count,
            failure_limit: s.failure_limit,
            inconclusive_limit: s.inconclusive_limit,
            on_no_data: None,
            on_too_few_samples: None,
        };
        match s.kind {
            AnalysisKind::Metric { metric, agg, window_secs, condition } => {
                r.metric = Some(metric);
                r.agg = Some(agg);
                r.window_secs = Some(window_secs);
                r.condition = Some(condition);
                r.min_samples = Some(s.min_samples);
                r.min_devices = Some(s.min_devices);
                r.on_no_data = Some(s.on_no_data);
                r.on_too_few_samples = Some(s.on_too_few_samples);
            }
            AnalysisKind::NoFiringAlerts { min_severity } => r.min_severity = Some(min_severity),
            AnalysisKind::Prometheus { query, op, threshold } => {
                r.query = Some(query);
                r.condition = Some(Condition::Absolute { op, threshold });
                r.on_no_data = Some(s.on_no_data);
            }
        }
        r
    }
}

fn finite(field: &str, v: f64) -> Result<(), AnalysisError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(AnalysisError::new(field, "must be a finite number"))
    }
}

impl AnalysisSpec {
    /// What the check requires, in words, as the dashboard and the CLI show
    /// it: `p95 of cpu_temp_c over 60 s <= 1.1 × baseline`, `no firing alert
    /// of severity >= critical`, `the query <= 0.1`.
    pub fn condition_text(&self) -> String {
        match &self.kind {
            AnalysisKind::Metric { metric, agg, window_secs, condition } => {
                let rhs = match condition {
                    Condition::Absolute { threshold, .. } => num(*threshold),
                    Condition::Baseline { factor, .. } => format!("{} × baseline", num(*factor)),
                };
                format!("{agg} of {metric} over {window_secs} s {} {rhs}", condition.op())
            }
            AnalysisKind::NoFiringAlerts { min_severity } => format!("no firing alert of severity >= {min_severity}"),
            AnalysisKind::Prometheus { op, threshold, .. } => format!("the query {op} {}", num(*threshold)),
        }
    }

    /// Whether the check compares with the baseline.
    pub fn is_relative(&self) -> bool {
        matches!(self.kind, AnalysisKind::Metric { condition: Condition::Baseline { .. }, .. })
    }

    /// Checks the values, naming the field relative to the check
    /// (`condition.factor: must be > 0`; [`validate_all`] prefixes
    /// `analysis[i].`): the name; a valid metric and aggregation, a window of
    /// 1 s to 30 days, a finite threshold or a finite factor > 0; a query of 1
    /// to 4096 bytes using only the known placeholders; `count` 1 to 1000,
    /// `failure_limit` below `count`, `inconclusive_limit` at most 1000,
    /// `interval_secs` 1 s to 1 day and `initial_delay_secs` at most 30 days.
    pub fn validate(&self) -> Result<(), AnalysisError> {
        crate::validate::identifier(&self.name).map_err(|m| AnalysisError::new("name", m))?;
        match &self.kind {
            AnalysisKind::Metric { metric, agg, window_secs, condition } => {
                validate_metric_name(metric).map_err(|m| AnalysisError::new("metric", m))?;
                agg.validate().map_err(|m| AnalysisError::new("agg", m))?;
                if *window_secs == 0 || *window_secs > MAX_WINDOW_SECS {
                    return Err(AnalysisError::new("window_secs", "must be 1 s to 30 days"));
                }
                match *condition {
                    Condition::Absolute { threshold, .. } => finite("condition.threshold", threshold)?,
                    Condition::Baseline { factor, .. } => {
                        finite("condition.factor", factor)?;
                        if factor <= 0.0 {
                            return Err(AnalysisError::new("condition.factor", "must be > 0"));
                        }
                    }
                }
            }
            AnalysisKind::NoFiringAlerts { .. } => {}
            AnalysisKind::Prometheus { query, threshold, .. } => {
                if query.trim().is_empty() || query.len() > MAX_QUERY {
                    return Err(AnalysisError::new("query", format!("must be 1 to {MAX_QUERY} bytes")));
                }
                if query.chars().any(|c| is_deceptive(c) && c != '\n' && c != '\t') {
                    return Err(AnalysisError::new("query", "must not contain control, bidi or zero-width characters"));
                }
                check_placeholders(query).map_err(|m| AnalysisError::new("query", m))?;
                finite("condition.threshold", *threshold)?;
            }
        }
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(AnalysisError::new("count", format!("must be 1 to {MAX_COUNT}")));
        }
        if self.failure_limit >= self.count {
            return Err(AnalysisError::new(
                "failure_limit",
                format!("must be less than count ({}), or the check could succeed without a pass", self.count),
            ));
        }
        if self.inconclusive_limit > MAX_COUNT {
            return Err(AnalysisError::new("inconclusive_limit", format!("at most {MAX_COUNT}")));
        }
        if self.interval_secs == 0 || self.interval_secs > MAX_INTERVAL_SECS {
            return Err(AnalysisError::new("interval_secs", "must be 1 s to 1 day"));
        }
        if self.initial_delay_secs > MAX_WINDOW_SECS {
            return Err(AnalysisError::new("initial_delay_secs", "at most 30 days"));
        }
        Ok(())
    }
}

/// Checks a strategy's `analysis` list: at most [`MAX_CHECKS`], distinct
/// names, each valid; fields are named `analysis[i].field`.
pub fn validate_all(specs: &[AnalysisSpec]) -> Result<(), AnalysisError> {
    if specs.len() > MAX_CHECKS {
        return Err(AnalysisError::new("analysis", format!("at most {MAX_CHECKS} checks")));
    }
    for (i, s) in specs.iter().enumerate() {
        s.validate().map_err(|e| e.at(i))?;
        if specs[..i].iter().any(|o| o.name == s.name) {
            return Err(AnalysisError::new("name", format!("'{}' names two checks", s.name)).at(i));
        }
    }
    Ok(())
}

/// Each `{{…}}` of a query template: `Ok(name)` for a known placeholder
/// (spaces inside the braces allowed), `Err(raw)` for anything else, with the
/// byte range.
fn placeholders(template: &str) -> Vec<(std::ops::Range<usize>, Result<&'static str, &str>)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = template[from..].find("{{").map(|o| o + from) {
        let Some(close) = template[open + 2..].find("}}").map(|c| c + open + 2) else {
            out.push((open..template.len(), Err(&template[open..])));
            break;
        };
        let inner = template[open + 2..close].trim();
        let hit = PLACEHOLDERS.iter().find(|p| **p == inner).copied().ok_or(&template[open..close + 2]);
        out.push((open..close + 2, hit));
        from = close + 2;
    }
    out
}

fn check_placeholders(template: &str) -> Result<(), String> {
    match placeholders(template).into_iter().find_map(|(_, p)| p.err()) {
        Some(raw) if !raw.ends_with("}}") => Err(format!("'{{{{' without '}}}}': {}", raw.escape_debug())),
        Some(raw) => Err(format!("unknown placeholder {raw}: use {{{{rollout}}}}, {{{{wave}}}} or {{{{version}}}}")),
        None => Ok(()),
    }
}

/// Escapes text for a PromQL string literal, in double or single quotes
/// (not backticks, which have no escapes): backslash, both quotes and
/// control characters.
pub fn escape_promql(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The query of a template for one rollout's wave: `{{rollout}}`, `{{wave}}`
/// (as the engine counts, from 0) and `{{version}}` (the version rolled out)
/// replaced by their values, escaped with [`escape_promql`] so that they can
/// stand inside a string literal (`version="{{version}}"`). Anything else in
/// braces is left as written; [`AnalysisSpec::validate`] refuses it.
pub fn render_query(template: &str, rollout: i64, wave: usize, version: &str) -> String {
    let mut out = String::with_capacity(template.len() + version.len());
    let mut at = 0;
    for (range, p) in placeholders(template) {
        out.push_str(&template[at..range.start]);
        match p {
            Ok("rollout") => out.push_str(&rollout.to_string()),
            Ok("wave") => out.push_str(&wave.to_string()),
            // The only other placeholder.
            Ok(_version) => out.push_str(&escape_promql(version)),
            Err(raw) => out.push_str(raw),
        }
        at = range.end;
    }
    out.push_str(&template[at..]);
    out
}

/// What the server gathered for one measurement of a metric check.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricMeasurement {
    /// The check's aggregation over its window, across the wave's updated devices.
    pub wave_value: Option<f64>,
    /// Samples behind `wave_value`.
    pub wave_samples: u64,
    /// Devices that sent them.
    pub wave_devices: u64,
    /// The same over the baseline: devices of the rollout's selector still
    /// on the previous version. Read only by a relative condition.
    pub baseline_value: Option<f64>,
    /// Samples behind `baseline_value`.
    pub baseline_samples: u64,
    /// Devices that sent them.
    pub baseline_devices: u64,
}

/// One side (the wave, or the baseline) of a metric measurement from its
/// devices' windows: `(value, samples, devices)`, the aggregation of the
/// windows merged (percentiles from the merged sketches), the samples behind
/// it and the devices that sent them. A window kept at another sketch
/// accuracy than the first is left out rather than misread.
pub fn summarize<'a>(windows: impl IntoIterator<Item = (Uuid, &'a Aggregate)>, agg: Agg) -> (Option<f64>, u64, u64) {
    let mut merged: Option<Aggregate> = None;
    let mut devices = std::collections::HashSet::new();
    for (device, a) in windows {
        if a.count == 0 {
            continue;
        }
        let ok = match &mut merged {
            None => {
                merged = Some(a.clone());
                true
            }
            Some(m) => m.merge(a).is_ok(),
        };
        if ok {
            devices.insert(device);
        }
    }
    match merged {
        Some(m) => (m.value(agg), m.count, devices.len() as u64),
        None => (None, 0, 0),
    }
}

/// What the server gathered for one measurement, of the check's kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Measurement {
    /// For a `metric` check.
    Metric(MetricMeasurement),
    /// The alerts firing on the wave's devices: an id (device or rule) and
    /// the severity of each.
    Alerts { firing: Vec<(String, Severity)> },
    /// The query's value: `Ok(None)` for an empty result, `Err` for a failed query.
    Prometheus { result: Result<Option<f64>, String> },
}

impl Measurement {
    fn kind(&self) -> CheckKind {
        match self {
            Measurement::Metric(_) => CheckKind::Metric,
            Measurement::Alerts { .. } => CheckKind::NoFiringAlerts,
            Measurement::Prometheus { .. } => CheckKind::Prometheus,
        }
    }
}

/// The judgement of one measurement. In JSON `{"outcome":"pass"}` or
/// `{"outcome":"inconclusive","reason":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum MeasureOutcome {
    /// The condition held (or `pass` was chosen for missing data).
    Pass,
    /// The condition did not hold (or `fail` was chosen for missing data).
    Fail,
    /// Could not be judged, and why.
    Inconclusive(String),
}

/// The numbers behind a measurement, for the event log. `threshold` is what
/// `observed` was compared with: the condition's threshold, or
/// `factor × baseline`. Infinite and NaN values are written as `"+Inf"`,
/// `"-Inf"`, `"NaN"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Detail {
    /// The check's name.
    pub name: String,
    #[serde(default, with = "lossless_f64::option", skip_serializing_if = "Option::is_none")]
    pub observed: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<Op>,
    #[serde(default, with = "lossless_f64::option", skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, with = "lossless_f64::option", skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_devices: Option<u64>,
    /// The query a `prometheus` check ran, placeholders filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Alerts that failed a `no_firing_alerts` check, as `id (severity)`, at
    /// most [`MAX_LISTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firing: Vec<String>,
    /// Why, in words: what was compared, or what was missing.
    pub reason: String,
}

/// Alerts listed in a [`Detail`] at most.
pub const MAX_LISTED: usize = 20;
/// The longest measurement reason a run keeps, characters.
const MAX_PROBLEM: usize = 300;
/// The longest query error kept in a reason, characters.
const MAX_ERROR: usize = 500;

/// A measurement judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// What the run counts.
    pub outcome: MeasureOutcome,
    /// What the event log records.
    pub detail: Detail,
}

/// A number as a reason (and the dashboard) shows it: at most four
/// decimals, no trailing zeros (`85.6354`, `440`); the detail keeps the
/// exact value.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// A measurement that cannot be judged, counted as `policy` says (the
/// setting named `setting`); `never_pass` (a NaN) turns a `pass` into
/// `inconclusive`.
fn missing(policy: MissingOutcome, setting: &str, what: String, never_pass: bool, mut detail: Detail) -> Measured {
    let (outcome, reason) = match policy {
        MissingOutcome::Pass if never_pass => {
            let r = format!("{what} (inconclusive: a NaN is never a pass, whatever {setting} says)");
            (MeasureOutcome::Inconclusive(r.clone()), r)
        }
        MissingOutcome::Pass => (MeasureOutcome::Pass, format!("{what} ({setting}: pass)")),
        MissingOutcome::Fail => (MeasureOutcome::Fail, format!("{what} ({setting}: fail)")),
        MissingOutcome::Inconclusive => {
            let r = format!("{what} ({setting}: inconclusive)");
            (MeasureOutcome::Inconclusive(r.clone()), r)
        }
    };
    detail.reason = reason;
    Measured { outcome, detail }
}

fn compared(pass: bool, mut detail: Detail, reason: String) -> Measured {
    detail.reason = format!("{reason}: {}", if pass { "pass" } else { "fail" });
    Measured { outcome: if pass { MeasureOutcome::Pass } else { MeasureOutcome::Fail }, detail }
}

/// Judges one measurement of `spec`. A measurement of another kind than the
/// check's is inconclusive (a caller's mistake, never a pass).
pub fn measure(spec: &AnalysisSpec, m: &Measurement) -> Measured {
    let mut d = Detail { name: spec.name.clone(), ..Detail::default() };
    match (&spec.kind, m) {
        (AnalysisKind::Metric { metric, agg, condition, .. }, Measurement::Metric(mm)) => {
            measure_metric(spec, &format!("{agg} of {metric}"), *condition, mm, d)
        }
        (AnalysisKind::NoFiringAlerts { min_severity }, Measurement::Alerts { firing }) => {
            let hits: Vec<&(String, Severity)> = firing.iter().filter(|(_, s)| s >= min_severity).collect();
            d.firing = hits.iter().take(MAX_LISTED).map(|(id, s)| format!("{id} ({s})")).collect();
            let reason = if hits.is_empty() {
                format!("no alert firing at {min_severity} or above")
            } else {
                let more = if hits.len() > MAX_LISTED { ", …" } else { "" };
                let n = hits.len();
                let noun = if n == 1 { "alert" } else { "alerts" };
                format!("{n} {noun} firing at {min_severity} or above: {}{more}", d.firing.join(", "))
            };
            compared(hits.is_empty(), d, reason)
        }
        (AnalysisKind::Prometheus { op, threshold, .. }, Measurement::Prometheus { result }) => {
            (d.op, d.threshold) = (Some(*op), Some(*threshold));
            match result {
                Err(e) => {
                    let e: String = e.chars().take(MAX_ERROR).collect();
                    d.reason = format!("query failed: {e}");
                    Measured { outcome: MeasureOutcome::Inconclusive(d.reason.clone()), detail: d }
                }
                Ok(None) => {
                    missing(spec.on_no_data, "on_no_data", "no data: the query returned nothing".into(), false, d)
                }
                Ok(Some(v)) => {
                    d.observed = Some(*v);
                    if v.is_nan() {
                        return missing(spec.on_no_data, "on_no_data", "the query returned NaN".into(), true, d);
                    }
                    compared(
                        op.holds(*v, *threshold),
                        d,
                        format!("the query returned {}, needs {op} {}", num(*v), num(*threshold)),
                    )
                }
            }
        }
        (kind, m) => {
            d.reason = format!("a {} measurement for a {} check", m.kind(), kind.name());
            Measured { outcome: MeasureOutcome::Inconclusive(d.reason.clone()), detail: d }
        }
    }
}

fn measure_metric(
    spec: &AnalysisSpec,
    label: &str,
    condition: Condition,
    m: &MetricMeasurement,
    mut d: Detail,
) -> Measured {
    let op = condition.op();
    (d.op, d.samples, d.devices) = (Some(op), Some(m.wave_samples), Some(m.wave_devices));
    let no_data = |what: String, nan: bool, d: Detail| missing(spec.on_no_data, "on_no_data", what, nan, d);
    let too_few = |what: String, d: Detail| missing(spec.on_too_few_samples, "on_too_few_samples", what, false, d);
    // A NaN first: whatever else is wrong, it must never pass.
    let value = match m.wave_value {
        Some(v) if v.is_nan() => {
            d.observed = Some(v);
            return no_data(format!("{label} is NaN"), true, d);
        }
        Some(v) if m.wave_samples > 0 && m.wave_devices > 0 => v,
        _ => return no_data(format!("no data: no samples for {label} from the wave's devices"), false, d),
    };
    d.observed = Some(value);
    if m.wave_samples < spec.min_samples {
        return too_few(
            format!("too few samples: {} from the wave, min_samples is {}", m.wave_samples, spec.min_samples),
            d,
        );
    }
    if m.wave_devices < spec.min_devices {
        return too_few(
            format!("too few devices: {} in the wave, min_devices is {}", m.wave_devices, spec.min_devices),
            d,
        );
    }
    match condition {
        Condition::Absolute { threshold, .. } => {
            d.threshold = Some(threshold);
            compared(op.holds(value, threshold), d, format!("{label} is {}, needs {op} {}", num(value), num(threshold)))
        }
        Condition::Baseline { factor, .. } => {
            (d.factor, d.baseline_samples, d.baseline_devices) =
                (Some(factor), Some(m.baseline_samples), Some(m.baseline_devices));
            let baseline = match m.baseline_value {
                Some(b) if !b.is_finite() => {
                    d.baseline = Some(b);
                    return no_data(format!("the baseline's {label} is {b}, not a finite number"), true, d);
                }
                Some(b) if m.baseline_samples > 0 && m.baseline_devices > 0 => b,
                _ => return no_data("baseline has no data".into(), false, d),
            };
            d.baseline = Some(baseline);
            if m.baseline_samples < spec.min_samples {
                let n = m.baseline_samples;
                return too_few(
                    format!("too few samples: {n} from the baseline, min_samples is {}", spec.min_samples),
                    d,
                );
            }
            if m.baseline_devices < spec.min_devices {
                let n = m.baseline_devices;
                return too_few(
                    format!("too few devices: {n} in the baseline, min_devices is {}", spec.min_devices),
                    d,
                );
            }
            let limit = factor * baseline;
            if !limit.is_finite() {
                return no_data(format!("{factor} × baseline {baseline} is not a finite number"), true, d);
            }
            d.threshold = Some(limit);
            compared(
                op.holds(value, limit),
                d,
                format!("{label} is {}, needs {op} {} ({factor} × baseline {})", num(value), num(limit), num(baseline)),
            )
        }
    }
}

/// Where a check's run of measurements stands: the counts so far, when the
/// next measurement is due, and why the last one that was not a pass was
/// not. Stored with the rollout's wave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRun {
    /// Measurements that passed.
    pub passed: u32,
    /// Measurements that failed.
    pub failed: u32,
    /// Measurements that were inconclusive.
    pub inconclusive: u32,
    /// When to measure next.
    pub next_at: Millis,
    /// The reason of the latest failed or inconclusive measurement (its
    /// numbers), quoted by the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem: Option<String>,
    /// The numbers of the latest measurement, whatever its outcome, for
    /// whoever shows the run (the API, the dashboard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Detail>,
}

/// What a check's run says. In JSON `{"verdict":"running","next_at":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Measure again at `next_at`.
    Running { next_at: Millis },
    /// `count` conclusive measurements, at most `failure_limit` failed.
    Succeeded,
    /// More than `failure_limit` measurements failed: the rollout fails.
    Failed { reason: String },
    /// More than `inconclusive_limit` measurements were inconclusive: the
    /// rollout pauses for an operator to promote or abort it.
    Inconclusive { reason: String },
}

impl Verdict {
    /// Whether the run is over (anything but running).
    pub fn is_final(&self) -> bool {
        !matches!(self, Verdict::Running { .. })
    }
}

fn secs_to_ms(secs: u64) -> Millis {
    Millis::try_from(secs.saturating_mul(1000)).unwrap_or(Millis::MAX)
}

impl AnalysisRun {
    /// A new run started at `now` (a wave's bake begins, or an operator asked
    /// to analyse again): nothing measured, the first measurement after
    /// `initial_delay_secs`.
    pub fn start(spec: &AnalysisSpec, now: Millis) -> AnalysisRun {
        AnalysisRun { next_at: now.saturating_add(secs_to_ms(spec.initial_delay_secs)), ..AnalysisRun::default() }
    }

    /// Measurements so far.
    pub fn measurements(&self) -> u32 {
        self.passed.saturating_add(self.failed).saturating_add(self.inconclusive)
    }

    /// Whether a measurement is due at `now`.
    pub fn is_due(&self, now: Millis) -> bool {
        now >= self.next_at
    }

    /// The verdict of the counts so far.
    pub fn verdict(&self, spec: &AnalysisSpec) -> Verdict {
        let n = self.measurements();
        let last = self.last_problem.as_deref().map_or(String::new(), |l| format!("; last: {l}"));
        if self.failed > spec.failure_limit {
            Verdict::Failed {
                reason: format!(
                    "{} of {n} measurements of '{}' failed, more than failure_limit {}{last}",
                    self.failed, spec.name, spec.failure_limit
                ),
            }
        } else if self.inconclusive > spec.inconclusive_limit {
            Verdict::Inconclusive {
                reason: format!(
                    "{} of {n} measurements of '{}' inconclusive, more than inconclusive_limit {}{last}",
                    self.inconclusive, spec.name, spec.inconclusive_limit
                ),
            }
        } else if self.passed.saturating_add(self.failed) >= spec.count {
            Verdict::Succeeded
        } else {
            Verdict::Running { next_at: self.next_at }
        }
    }
}

/// Adds one measurement's outcome, taken at `now`, to `run`: the new run and
/// its verdict. The next measurement is due `interval_secs` after `now`. A
/// run already over is returned as it is, with its verdict, so a repeated
/// call changes nothing. The run keeps `detail` (this measurement's
/// numbers) as its `last`; the verdict's reason gives the counts, and quotes
/// the detail's reason if the measurement was not a pass, so a paused or
/// failed rollout says what was measured.
pub fn advance(
    spec: &AnalysisSpec,
    run: AnalysisRun,
    outcome: &MeasureOutcome,
    detail: Option<&Detail>,
    now: Millis,
) -> (AnalysisRun, Verdict) {
    let before = run.verdict(spec);
    if before.is_final() {
        return (run, before);
    }
    let mut run = run;
    match outcome {
        MeasureOutcome::Pass => run.passed = run.passed.saturating_add(1),
        MeasureOutcome::Fail => run.failed = run.failed.saturating_add(1),
        MeasureOutcome::Inconclusive(_) => run.inconclusive = run.inconclusive.saturating_add(1),
    }
    if *outcome != MeasureOutcome::Pass {
        run.last_problem = detail.map(|d| d.reason.chars().take(MAX_PROBLEM).collect());
    }
    run.last = detail.cloned();
    run.next_at = now.saturating_add(secs_to_ms(spec.interval_secs));
    let verdict = run.verdict(spec);
    (run, verdict)
}

/// The verdict of a wave's analysis from its checks' verdicts: failed if any
/// failed, else inconclusive if any is, else running (until the earliest
/// `next_at`) if any runs, else succeeded — also for no checks at all, as a
/// wave without analysis passes on its health gate alone.
pub fn combine(verdicts: &[Verdict]) -> Verdict {
    if let Some(v) = verdicts.iter().find(|v| matches!(v, Verdict::Failed { .. })) {
        return v.clone();
    }
    if let Some(v) = verdicts.iter().find(|v| matches!(v, Verdict::Inconclusive { .. })) {
        return v.clone();
    }
    verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Running { next_at } => Some(*next_at),
            _ => None,
        })
        .min()
        .map_or(Verdict::Succeeded, |next_at| Verdict::Running { next_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(json: &str) -> AnalysisSpec {
        let s: AnalysisSpec = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
        s.validate().unwrap_or_else(|e| panic!("{json}: {e}"));
        s
    }

    fn absolute() -> AnalysisSpec {
        spec(
            r#"{"name":"latency","kind":"metric","metric":"request_ms","agg":"p95","window_secs":300,
                "condition":{"op":"<=","threshold":500},"min_samples":10,"min_devices":2}"#,
        )
    }

    fn relative() -> AnalysisSpec {
        spec(
            r#"{"name":"latency","kind":"metric","metric":"request_ms","agg":"p95","window_secs":300,
                "condition":{"op":"<=","factor":1.1},"min_samples":10,"min_devices":2}"#,
        )
    }

    fn wave(value: Option<f64>, samples: u64, devices: u64) -> Measurement {
        Measurement::Metric(MetricMeasurement {
            wave_value: value,
            wave_samples: samples,
            wave_devices: devices,
            ..Default::default()
        })
    }

    fn with_baseline(value: f64, baseline: Option<f64>, samples: u64, devices: u64) -> Measurement {
        Measurement::Metric(MetricMeasurement {
            wave_value: Some(value),
            wave_samples: 100,
            wave_devices: 5,
            baseline_value: baseline,
            baseline_samples: samples,
            baseline_devices: devices,
        })
    }

    fn inconclusive(m: &Measured) -> &str {
        match &m.outcome {
            MeasureOutcome::Inconclusive(r) => r,
            o => panic!("expected inconclusive, got {o:?}: {}", m.detail.reason),
        }
    }

    #[test]
    fn specs_read_with_defaults_and_round_trip() {
        let s = absolute();
        assert_eq!(
            s.kind,
            AnalysisKind::Metric {
                metric: "request_ms".into(),
                agg: Agg::P95,
                window_secs: 300,
                condition: Condition::Absolute { op: Op::Le, threshold: 500.0 }
            }
        );
        assert_eq!(
            (s.count, s.failure_limit, s.inconclusive_limit, s.interval_secs, s.initial_delay_secs),
            (1, 0, 0, 60, 60)
        );
        assert_eq!((s.on_no_data, s.on_too_few_samples), (MissingOutcome::Inconclusive, MissingOutcome::Inconclusive));
        for s in [absolute(), relative(), alerts(), prometheus()] {
            let json = serde_json::to_value(&s).unwrap();
            assert_eq!(serde_json::from_value::<AnalysisSpec>(json.clone()).unwrap(), s, "{json}");
        }
        let json = serde_json::to_value(alerts()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name":"alerts","kind":"no_firing_alerts","min_severity":"critical",
                "initial_delay_secs":60,"interval_secs":60,"count":3,"failure_limit":0,"inconclusive_limit":0})
        );
        let a = spec(r#"{"name":"a","kind":"no_firing_alerts"}"#);
        assert_eq!(a.kind, AnalysisKind::NoFiringAlerts { min_severity: Severity::Warning });
    }

    #[test]
    fn conditions_read_as_words() {
        assert_eq!(absolute().condition_text(), "p95 of request_ms over 300 s <= 500");
        assert_eq!(relative().condition_text(), "p95 of request_ms over 300 s <= 1.1 × baseline");
        assert_eq!(alerts().condition_text(), "no firing alert of severity >= critical");
        assert_eq!(prometheus().condition_text(), "the query < 0.1");
    }

    #[test]
    fn a_run_keeps_the_numbers_of_its_latest_measurement() {
        let s = absolute();
        let run = AnalysisRun::start(&s, 0);
        let bad = measure(&s, &wave(Some(620.0), 40, 4));
        let (run, _) = advance(&s, run, &bad.outcome, Some(&bad.detail), 60_000);
        assert_eq!(run.last.as_ref().and_then(|d| d.observed), Some(620.0));
        assert_eq!(run.last_problem.as_deref(), Some(bad.detail.reason.as_str()));
        // A pass replaces the numbers, and leaves the last problem quoted.
        let s = AnalysisSpec { count: 3, failure_limit: 1, ..absolute() };
        let good = measure(&s, &wave(Some(410.0), 40, 4));
        let (run, _) = advance(&s, run, &good.outcome, Some(&good.detail), 120_000);
        assert_eq!(
            run.last.as_ref().map(|d| (d.observed, d.threshold, d.samples)),
            Some((Some(410.0), Some(500.0), Some(40)))
        );
        assert_eq!(run.last_problem.as_deref(), Some(bad.detail.reason.as_str()));
        // Stored and read back alike; a run stored before `last` existed reads without it.
        let json = serde_json::to_value(&run).unwrap();
        assert_eq!(serde_json::from_value::<AnalysisRun>(json).unwrap(), run);
        let old: AnalysisRun = serde_json::from_str(r#"{"passed":1,"failed":0,"inconclusive":0,"next_at":5}"#).unwrap();
        assert_eq!(old.last, None);
    }

    #[test]
    fn structure_errors_name_the_field() {
        let cases = [
            (
                r#"{"name":"x","kind":"metric","agg":"p95","window_secs":1,"condition":{"op":"<","threshold":1}}"#,
                "metric: required",
            ),
            (
                r#"{"name":"x","kind":"metric","metric":"m","window_secs":1,"condition":{"op":"<","threshold":1}}"#,
                "agg: required",
            ),
            (
                r#"{"name":"x","kind":"metric","metric":"m","agg":"p95","condition":{"op":"<","threshold":1}}"#,
                "window_secs: required",
            ),
            (r#"{"name":"x","kind":"metric","metric":"m","agg":"p95","window_secs":1}"#, "condition: required"),
            (
                r#"{"name":"x","kind":"metric","metric":"m","agg":"p95","window_secs":1,"condition":{"op":"<"}}"#,
                "condition: needs",
            ),
            (
                r#"{"name":"x","kind":"metric","metric":"m","agg":"p95","window_secs":1,"condition":{"op":"<","threshold":1,"factor":2}}"#,
                "not both",
            ),
            (
                r#"{"name":"x","kind":"metric","metric":"m","agg":"p95","window_secs":1,"condition":{"op":"<","threshold":1},"query":"up"}"#,
                "query: does not apply to a metric check",
            ),
            (r#"{"name":"x","kind":"no_firing_alerts","metric":"m"}"#, "metric: does not apply"),
            (r#"{"name":"x","kind":"no_firing_alerts","on_no_data":"pass"}"#, "on_no_data: does not apply"),
            (r#"{"name":"x","kind":"prometheus","condition":{"op":"<","threshold":1}}"#, "query: required"),
            (
                r#"{"name":"x","kind":"prometheus","query":"up","condition":{"op":"<","factor":1}}"#,
                "condition.factor: a prometheus check",
            ),
            (
                r#"{"name":"x","kind":"prometheus","query":"up","condition":{"op":"<","threshold":1},"min_samples":3}"#,
                "min_samples: does not apply",
            ),
            (
                r#"{"name":"x","kind":"prometheus","query":"up","condition":{"op":"<","threshold":1},"failure_limt":1}"#,
                "unknown field",
            ),
            (r#"{"name":"x","kind":"graphite"}"#, "unknown analysis kind 'graphite'"),
            (
                r#"{"name":"x","kind":"prometheus","query":"up","condition":{"op":"<","threshold":1},"on_no_data":"ignore"}"#,
                "unknown outcome",
            ),
        ];
        for (json, want) in cases {
            let e = serde_json::from_str::<AnalysisSpec>(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn value_errors_name_the_field() {
        let with = |f: &dyn Fn(&mut AnalysisSpec)| {
            let mut s = relative();
            f(&mut s);
            s.validate().unwrap_err().to_string()
        };
        let set_condition = |c: Condition| {
            move |s: &mut AnalysisSpec| {
                if let AnalysisKind::Metric { condition, .. } = &mut s.kind {
                    *condition = c;
                }
            }
        };
        assert_eq!(
            with(&set_condition(Condition::Baseline { op: Op::Le, factor: 0.0 })),
            "condition.factor: must be > 0"
        );
        assert_eq!(
            with(&set_condition(Condition::Baseline { op: Op::Le, factor: -1.0 })),
            "condition.factor: must be > 0"
        );
        assert!(with(&set_condition(Condition::Baseline { op: Op::Le, factor: f64::NAN }))
            .starts_with("condition.factor: must be a finite"));
        assert!(with(&set_condition(Condition::Absolute { op: Op::Le, threshold: f64::INFINITY }))
            .starts_with("condition.threshold"));
        assert!(with(&|s| s.name = String::new()).starts_with("name:"));
        assert!(with(&|s| s.name = "a b".into()).starts_with("name:"));
        assert!(with(&|s| s.count = 0).starts_with("count:"));
        assert!(with(&|s| s.count = MAX_COUNT + 1).starts_with("count:"));
        assert!(with(&|s| s.failure_limit = 1).starts_with("failure_limit: must be less than count (1)"));
        assert!(with(&|s| s.inconclusive_limit = MAX_COUNT + 1).starts_with("inconclusive_limit:"));
        assert!(with(&|s| s.interval_secs = 0).starts_with("interval_secs:"));
        assert!(with(&|s| s.interval_secs = MAX_INTERVAL_SECS + 1).starts_with("interval_secs:"));
        assert!(with(&|s| s.initial_delay_secs = MAX_WINDOW_SECS + 1).starts_with("initial_delay_secs:"));
        let metric = |f: fn(&mut String, &mut Agg, &mut u64)| {
            move |s: &mut AnalysisSpec| {
                if let AnalysisKind::Metric { metric, agg, window_secs, .. } = &mut s.kind {
                    f(metric, agg, window_secs);
                }
            }
        };
        assert!(with(&metric(|m, _, _| *m = "request-ms".into())).starts_with("metric:"));
        assert!(with(&metric(|_, a, _| *a = Agg::Percentile(101.0))).starts_with("agg:"));
        assert!(with(&metric(|_, _, w| *w = 0)).starts_with("window_secs:"));
        assert!(with(&metric(|_, _, w| *w = MAX_WINDOW_SECS + 1)).starts_with("window_secs:"));
        let query = |q: &str| {
            let mut s = prometheus();
            if let AnalysisKind::Prometheus { query, .. } = &mut s.kind {
                *query = q.into();
            }
            s.validate().map_err(|e| e.to_string())
        };
        assert_eq!(query("sum(x{v=\"{{ version }}\",r=\"{{rollout}}\",w=\"{{wave}}\"})\n"), Ok(()));
        assert_eq!(query("up{a=\"{b}\"}"), Ok(()));
        let e = query("up{v=\"{{release}}\"}").unwrap_err();
        assert!(e.starts_with("query: unknown placeholder {{release}}: use {{rollout}}"), "{e}");
        assert!(query("up{v=\"{{version\"}").unwrap_err().contains("without"));
        assert!(query(" ").unwrap_err().starts_with("query: must be 1 to 4096"));
        assert!(query(&"u".repeat(MAX_QUERY + 1)).is_err());
        assert!(query("up\u{202e}").unwrap_err().contains("bidi"));
        let mut p = prometheus();
        if let AnalysisKind::Prometheus { threshold, .. } = &mut p.kind {
            *threshold = f64::NAN;
        }
        assert!(p.validate().unwrap_err().to_string().starts_with("condition.threshold"));
    }

    #[test]
    fn the_list_is_validated_with_indices() {
        let mut bad = relative();
        bad.name = "second".into();
        if let AnalysisKind::Metric { condition, .. } = &mut bad.kind {
            *condition = Condition::Baseline { op: Op::Le, factor: 0.0 };
        }
        assert_eq!(
            validate_all(&[absolute(), bad]).unwrap_err().to_string(),
            "analysis[1].condition.factor: must be > 0"
        );
        assert_eq!(validate_all(&[absolute(), alerts(), prometheus()]), Ok(()));
        assert_eq!(validate_all(&[]), Ok(()));
        let e = validate_all(&[absolute(), relative()]).unwrap_err();
        assert_eq!(e.field, "analysis[1].name");
        assert_eq!(validate_all(&vec![alerts(); MAX_CHECKS + 1]).unwrap_err().field, "analysis");
    }

    #[test]
    fn absolute_metric_checks_pass_fail_and_lack_data() {
        let s = absolute();
        let m = measure(&s, &wave(Some(420.0), 50, 3));
        assert_eq!(m.outcome, MeasureOutcome::Pass);
        assert_eq!(m.detail.reason, "p95 of request_ms is 420, needs <= 500: pass");
        assert_eq!(
            (m.detail.observed, m.detail.threshold, m.detail.samples, m.detail.devices),
            (Some(420.0), Some(500.0), Some(50), Some(3))
        );
        assert_eq!(measure(&s, &wave(Some(500.0), 50, 3)).outcome, MeasureOutcome::Pass);
        let m = measure(&s, &wave(Some(501.0), 50, 3));
        assert_eq!(m.outcome, MeasureOutcome::Fail);
        assert!(m.detail.reason.ends_with(": fail"));
        // No data, however it shows.
        for w in [wave(None, 0, 0), wave(None, 50, 3), wave(Some(1.0), 0, 3), wave(Some(1.0), 50, 0)] {
            let m = measure(&s, &w);
            assert!(inconclusive(&m).starts_with("no data"), "{w:?}");
        }
        // NaN.
        let m = measure(&s, &wave(Some(f64::NAN), 50, 3));
        assert!(inconclusive(&m).contains("NaN"));
        // Too few samples, too few devices.
        assert!(inconclusive(&measure(&s, &wave(Some(1.0), 9, 3))).starts_with("too few samples: 9 from the wave"));
        assert!(inconclusive(&measure(&s, &wave(Some(1.0), 10, 1))).starts_with("too few devices: 1 in the wave"));
        assert_eq!(measure(&s, &wave(Some(1.0), 10, 2)).outcome, MeasureOutcome::Pass);
        // An infinite value compares (a histogram quantile in the top bucket).
        assert_eq!(measure(&s, &wave(Some(f64::INFINITY), 50, 3)).outcome, MeasureOutcome::Fail);
    }

    #[test]
    fn the_operator_chooses_what_missing_data_counts_as() {
        let mut s = absolute();
        s.on_no_data = MissingOutcome::Fail;
        s.on_too_few_samples = MissingOutcome::Fail;
        let m = measure(&s, &wave(None, 0, 0));
        assert_eq!(m.outcome, MeasureOutcome::Fail);
        assert!(m.detail.reason.ends_with("(on_no_data: fail)"), "{}", m.detail.reason);
        assert_eq!(measure(&s, &wave(Some(f64::NAN), 50, 3)).outcome, MeasureOutcome::Fail);
        assert_eq!(measure(&s, &wave(Some(1.0), 1, 3)).outcome, MeasureOutcome::Fail);
        // Pass only when written, and the reason says so; a NaN still never passes.
        s.on_no_data = MissingOutcome::Pass;
        s.on_too_few_samples = MissingOutcome::Pass;
        let m = measure(&s, &wave(None, 0, 0));
        assert_eq!(m.outcome, MeasureOutcome::Pass);
        assert!(m.detail.reason.ends_with("(on_no_data: pass)"));
        assert_eq!(measure(&s, &wave(Some(1.0), 1, 3)).outcome, MeasureOutcome::Pass);
        let m = measure(&s, &wave(Some(f64::NAN), 50, 3));
        assert!(inconclusive(&m).contains("never a pass"));
    }

    #[test]
    fn relative_checks_compare_with_the_baseline() {
        let s = relative();
        let m = measure(&s, &with_baseline(430.0, Some(400.0), 80, 4));
        assert_eq!(m.outcome, MeasureOutcome::Pass, "{}", m.detail.reason);
        assert_eq!(m.detail.reason, "p95 of request_ms is 430, needs <= 440 (1.1 × baseline 400): pass");
        assert_eq!((m.detail.baseline, m.detail.factor), (Some(400.0), Some(1.1)));
        assert_eq!((m.detail.baseline_samples, m.detail.baseline_devices), (Some(80), Some(4)));
        let m = measure(&s, &with_baseline(450.0, Some(400.0), 80, 4));
        assert_eq!(m.outcome, MeasureOutcome::Fail);
        assert_eq!(m.detail.threshold, Some(1.1 * 400.0));
        // Baseline missing: no baseline devices, or no value.
        for b in [
            with_baseline(1.0, None, 80, 4),
            with_baseline(1.0, Some(400.0), 80, 0),
            with_baseline(1.0, Some(400.0), 0, 4),
        ] {
            assert!(inconclusive(&measure(&s, &b)).starts_with("baseline has no data"), "{b:?}");
        }
        let mut fail = relative();
        fail.on_no_data = MissingOutcome::Fail;
        assert_eq!(measure(&fail, &with_baseline(1.0, None, 0, 0)).outcome, MeasureOutcome::Fail);
        // A baseline that is NaN or infinite is no data, and never a pass.
        let mut pass = relative();
        pass.on_no_data = MissingOutcome::Pass;
        for b in [f64::NAN, f64::INFINITY] {
            assert!(inconclusive(&measure(&pass, &with_baseline(1.0, Some(b), 80, 4))).contains("not a finite number"));
        }
        assert!(inconclusive(&measure(&pass, &with_baseline(1.0, Some(f64::MAX), 80, 4))).contains("not a finite"));
        // Too few in the baseline.
        assert!(inconclusive(&measure(&s, &with_baseline(1.0, Some(1.0), 9, 4))).contains("from the baseline"));
        assert!(inconclusive(&measure(&s, &with_baseline(1.0, Some(1.0), 80, 1))).contains("in the baseline"));
        // An absolute check ignores the baseline.
        assert_eq!(measure(&absolute(), &with_baseline(1.0, None, 0, 0)).outcome, MeasureOutcome::Pass);
        // A lower bound: throughput at least 0.9 × baseline.
        let mut low = relative();
        low.kind = AnalysisKind::Metric {
            metric: "rps".into(),
            agg: Agg::Avg,
            window_secs: 60,
            condition: Condition::Baseline { op: Op::Ge, factor: 0.9 },
        };
        assert_eq!(measure(&low, &with_baseline(95.0, Some(100.0), 80, 4)).outcome, MeasureOutcome::Pass);
        assert_eq!(measure(&low, &with_baseline(85.0, Some(100.0), 80, 4)).outcome, MeasureOutcome::Fail);
    }

    fn alerts() -> AnalysisSpec {
        spec(r#"{"name":"alerts","kind":"no_firing_alerts","min_severity":"critical","count":3}"#)
    }

    fn prometheus() -> AnalysisSpec {
        spec(
            r#"{"name":"errors","kind":"prometheus","query":"sum(rate(errors{version=\"{{version}}\"}[5m]))",
                "condition":{"op":"<","threshold":0.1}}"#,
        )
    }

    #[test]
    fn alert_checks_fail_on_firing_alerts_of_the_severity() {
        let s = alerts();
        let none = measure(&s, &Measurement::Alerts { firing: vec![] });
        assert_eq!(none.outcome, MeasureOutcome::Pass);
        assert_eq!(none.detail.reason, "no alert firing at critical or above: pass");
        let low = vec![("dev-1".to_string(), Severity::Warning), ("dev-2".to_string(), Severity::Info)];
        assert_eq!(measure(&s, &Measurement::Alerts { firing: low.clone() }).outcome, MeasureOutcome::Pass);
        let mut hot = low;
        hot.push(("dev-3/cpu_temp".to_string(), Severity::Critical));
        let m = measure(&s, &Measurement::Alerts { firing: hot });
        assert_eq!(m.outcome, MeasureOutcome::Fail);
        assert_eq!(m.detail.firing, vec!["dev-3/cpu_temp (critical)"]);
        let many: Vec<(String, Severity)> = (0..30).map(|i| (format!("d{i}"), Severity::Critical)).collect();
        let m = measure(&s, &Measurement::Alerts { firing: many });
        assert_eq!(m.detail.firing.len(), MAX_LISTED);
        assert!(m.detail.reason.starts_with("30 alerts firing") && m.detail.reason.contains("…"));
    }

    #[test]
    fn prometheus_checks_treat_errors_and_empty_results_apart() {
        let s = prometheus();
        let q = |r: Result<Option<f64>, String>| measure(&s, &Measurement::Prometheus { result: r });
        assert_eq!(q(Ok(Some(0.05))).outcome, MeasureOutcome::Pass);
        assert_eq!(q(Ok(Some(0.1))).outcome, MeasureOutcome::Fail);
        assert!(inconclusive(&q(Ok(None))).starts_with("no data: the query returned nothing"));
        assert!(inconclusive(&q(Ok(Some(f64::NAN)))).contains("NaN"));
        assert!(inconclusive(&q(Err("connection refused".into()))).starts_with("query failed: connection refused"));
        assert_eq!(inconclusive(&q(Err("x".repeat(10_000)))).chars().count(), "query failed: ".len() + MAX_ERROR);
        let mut fail = prometheus();
        fail.on_no_data = MissingOutcome::Fail;
        let f = |r| measure(&fail, &Measurement::Prometheus { result: r }).outcome;
        assert_eq!(f(Ok(None)), MeasureOutcome::Fail);
        assert_eq!(f(Ok(Some(f64::NAN))), MeasureOutcome::Fail);
        assert!(matches!(f(Err("timeout".into())), MeasureOutcome::Inconclusive(_)), "an error is never a fail");
        // The detail keeps an infinity as text.
        let m = q(Ok(Some(f64::INFINITY)));
        assert_eq!(m.outcome, MeasureOutcome::Fail);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["detail"]["observed"], "+Inf");
        assert_eq!(json["outcome"], serde_json::json!({"outcome":"fail"}));
        assert_eq!(serde_json::from_value::<Measured>(json).unwrap(), m);
    }

    #[test]
    fn reasons_round_their_numbers() {
        assert_eq!(num(440.00000000000006), "440");
        assert_eq!(num(85.6353649471301), "85.6354");
        assert_eq!(num(-0.00001), "0");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(f64::INFINITY), "inf");
    }

    #[test]
    fn sides_are_summarized_by_merging_their_windows() {
        let mut a = Aggregate::new();
        let mut b = Aggregate::new();
        for v in 1..=50 {
            a.add(v as f64, v);
        }
        for v in 51..=100 {
            b.add(v as f64, v);
        }
        let d1 = Uuid::from_u128(1);
        let d2 = Uuid::from_u128(2);
        let empty = Aggregate::new();
        let (value, samples, devices) = summarize([(d1, &a), (d2, &b), (d1, &a), (d2, &empty)], Agg::Max);
        assert_eq!((value, samples, devices), (Some(100.0), 150, 2));
        let (p50, _, _) = summarize([(d1, &a), (d2, &b)], "p50".parse().unwrap());
        assert!((p50.unwrap() - 50.0).abs() <= 50.0 * 0.01 + 1.0, "{p50:?}");
        assert_eq!(summarize([(d1, &empty)], Agg::Avg), (None, 0, 0));
        assert_eq!(summarize(std::iter::empty(), Agg::Count), (None, 0, 0));
        // A window of another accuracy is left out, with its device.
        let mut odd = Aggregate::with_accuracy(0.05, 100).unwrap();
        odd.add(1e6, 1);
        assert_eq!(summarize([(d1, &a), (d2, &odd)], Agg::Max), (Some(50.0), 50, 1));
    }

    #[test]
    fn a_measurement_of_the_wrong_kind_is_inconclusive() {
        let m = measure(&absolute(), &Measurement::Alerts { firing: vec![] });
        assert_eq!(inconclusive(&m), "a no_firing_alerts measurement for a metric check");
        assert!(matches!(measure(&alerts(), &wave(Some(1.0), 1, 1)).outcome, MeasureOutcome::Inconclusive(_)));
    }

    #[test]
    fn queries_render_with_escaped_values() {
        let t = r#"sum(rate(errors{rollout="{{rollout}}",wave="{{ wave }}",version="{{version}}"}[5m]))"#;
        assert_eq!(render_query(t, 42, 1, "1.2.3"), r#"sum(rate(errors{rollout="42",wave="1",version="1.2.3"}[5m]))"#);
        assert_eq!(render_query(r#"v="{{version}}""#, 1, 0, r#"a"b\c'd"#), r#"v="a\"b\\c\'d""#);
        assert_eq!(render_query("{{version}}{{version}}", 1, 0, "x\n"), "x\\nx\\n");
        assert_eq!(render_query("up{{unknown}} {{version", 1, 0, "v"), "up{{unknown}} {{version");
        assert_eq!(render_query("no placeholders", 1, 0, "v"), "no placeholders");
        assert_eq!(escape_promql("\u{1}"), "\\u0001");
    }

    fn run_all(spec: &AnalysisSpec, outcomes: &[MeasureOutcome]) -> Vec<Verdict> {
        let mut run = AnalysisRun::start(spec, 0);
        let mut now = run.next_at;
        outcomes
            .iter()
            .map(|o| {
                let (r, v) = advance(spec, run.clone(), o, None, now);
                run = r;
                now += 60_000;
                v
            })
            .collect()
    }

    #[test]
    fn runs_succeed_after_count_and_fail_past_the_limit() {
        let mut s = absolute();
        s.count = 3;
        s.failure_limit = 1;
        s.initial_delay_secs = 30;
        assert_eq!(AnalysisRun::start(&s, 1000).next_at, 31_000);
        use MeasureOutcome::{Fail, Pass};
        let running = |t: Millis| Verdict::Running { next_at: t };
        let run = AnalysisRun::start(&s, 0);
        assert_eq!(run.verdict(&s), running(30_000));
        assert!(!run.is_due(29_999) && run.is_due(30_000));
        assert_eq!(run_all(&s, &[Pass, Pass, Pass]), vec![running(90_000), running(150_000), Verdict::Succeeded]);
        assert_eq!(run_all(&s, &[Pass, Fail, Pass]).last(), Some(&Verdict::Succeeded));
        let v = run_all(&s, &[Fail, Pass, Fail]);
        assert_eq!(v[1], running(150_000));
        assert!(
            matches!(&v[2], Verdict::Failed { reason } if reason == "2 of 3 measurements of 'latency' failed, more than failure_limit 1"),
            "{v:?}"
        );
        // Failed as soon as the failures exceed the limit, before `count`.
        s.count = 10;
        let v = run_all(&s, &[Fail, Fail]);
        assert!(matches!(v[1], Verdict::Failed { .. }));
        // A run that is over does not change.
        let (run, v) = advance(&s, AnalysisRun { failed: 2, ..AnalysisRun::default() }, &Pass, None, 5);
        assert_eq!(run, AnalysisRun { failed: 2, ..AnalysisRun::default() });
        assert!(matches!(v, Verdict::Failed { .. }));
    }

    #[test]
    fn inconclusive_measurements_are_retried_up_to_the_limit_then_pause() {
        let mut s = absolute();
        s.count = 2;
        s.inconclusive_limit = 1;
        let inc = || MeasureOutcome::Inconclusive("no data".into());
        use MeasureOutcome::Pass;
        // One tolerated: it does not count toward `count`.
        let v = run_all(&s, &[Pass, inc(), Pass]);
        assert!(matches!(v[1], Verdict::Running { .. }));
        assert_eq!(v[2], Verdict::Succeeded);
        let v = run_all(&s, &[inc(), Pass, inc()]);
        assert!(
            matches!(&v[2], Verdict::Inconclusive { reason } if reason == "2 of 3 measurements of 'latency' inconclusive, more than inconclusive_limit 1"),
            "{v:?}"
        );
        // With the default limit of 0 the first inconclusive measurement pauses.
        let v = run_all(&absolute(), &[inc()]);
        assert!(matches!(v[0], Verdict::Inconclusive { .. }));
    }

    #[test]
    fn verdicts_combine() {
        let r = |t| Verdict::Running { next_at: t };
        let failed = Verdict::Failed { reason: "f".into() };
        let inc = Verdict::Inconclusive { reason: "i".into() };
        assert_eq!(combine(&[]), Verdict::Succeeded);
        assert_eq!(combine(&[Verdict::Succeeded, Verdict::Succeeded]), Verdict::Succeeded);
        assert_eq!(combine(&[Verdict::Succeeded, r(5), r(3)]), r(3));
        assert_eq!(combine(&[r(5), inc.clone(), Verdict::Succeeded]), inc);
        assert_eq!(combine(&[inc.clone(), r(1), failed.clone()]), failed);
        assert_eq!(serde_json::to_value(r(5)).unwrap(), serde_json::json!({"verdict":"running","next_at":5}));
        assert_eq!(serde_json::to_value(&failed).unwrap(), serde_json::json!({"verdict":"failed","reason":"f"}));
    }

    fn outcome() -> impl Strategy<Value = MeasureOutcome> {
        prop_oneof![
            Just(MeasureOutcome::Pass),
            Just(MeasureOutcome::Fail),
            Just(MeasureOutcome::Inconclusive("x".into()))
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Success needs `count` conclusive measurements with failures within
        /// the limit, hence at least one pass; failure comes exactly when the
        /// failures pass the limit; the verdict is final once given.
        #[test]
        fn the_run_obeys_its_limits(count in 1u32..6, failure_limit in 0u32..5, inconclusive_limit in 0u32..3,
                                    outcomes in proptest::collection::vec(outcome(), 1..20)) {
            let mut s = absolute();
            s.count = count;
            s.failure_limit = failure_limit.min(count - 1);
            s.inconclusive_limit = inconclusive_limit;
            prop_assert_eq!(s.validate(), Ok(()));
            let mut run = AnalysisRun::start(&s, 0);
            let mut last: Option<Verdict> = None;
            for (i, o) in outcomes.iter().enumerate() {
                let (r, v) = advance(&s, run.clone(), o, None, i as Millis);
                if let Some(prev) = last.as_ref().filter(|p| p.is_final()) {
                    prop_assert_eq!(&v, prev);
                    prop_assert_eq!(&r, &run);
                    continue;
                }
                match &v {
                    Verdict::Succeeded => {
                        prop_assert_eq!(r.passed + r.failed, s.count);
                        prop_assert!(r.failed <= s.failure_limit && r.passed >= 1);
                    }
                    Verdict::Failed { .. } => prop_assert_eq!(r.failed, s.failure_limit + 1),
                    Verdict::Inconclusive { .. } => prop_assert_eq!(r.inconclusive, s.inconclusive_limit + 1),
                    Verdict::Running { next_at } => {
                        prop_assert_eq!(*next_at, i as Millis + 60_000);
                        prop_assert!(r.passed + r.failed < s.count);
                    }
                }
                run = r;
                last = Some(v);
            }
        }

        /// No measurement without a finite value passes unless `pass` was
        /// written for it, and NaN never passes.
        #[test]
        fn missing_data_never_passes_silently(value in prop_oneof![Just(None), Just(Some(f64::NAN)), (0.0..1000.0f64).prop_map(Some)],
                                              samples in 0u64..20, devices in 0u64..4,
                                              baseline in prop_oneof![Just(None), Just(Some(f64::NAN)), (0.0..1000.0f64).prop_map(Some)],
                                              bsamples in 0u64..20, bdevices in 0u64..4,
                                              no_data in prop_oneof![Just(MissingOutcome::Inconclusive), Just(MissingOutcome::Fail), Just(MissingOutcome::Pass)],
                                              too_few in prop_oneof![Just(MissingOutcome::Inconclusive), Just(MissingOutcome::Fail)]) {
            let mut s = relative();
            s.on_no_data = no_data;
            s.on_too_few_samples = too_few;
            let m = MetricMeasurement { wave_value: value, wave_samples: samples, wave_devices: devices,
                                        baseline_value: baseline, baseline_samples: bsamples, baseline_devices: bdevices };
            let out = measure(&s, &Measurement::Metric(m));
            if out.outcome == MeasureOutcome::Pass {
                let complete = value.is_some_and(f64::is_finite) && baseline.is_some_and(f64::is_finite)
                    && samples >= s.min_samples && devices >= s.min_devices
                    && bsamples >= s.min_samples && bdevices >= s.min_devices;
                prop_assert!(complete || (no_data == MissingOutcome::Pass && out.detail.reason.contains("on_no_data: pass")),
                             "{:?} {}", m, out.detail.reason);
                prop_assert!(!value.is_some_and(f64::is_nan), "{:?} {}", m, out.detail.reason);
                // A NaN baseline passes only when the wave had no data at all.
                prop_assert!(!baseline.is_some_and(f64::is_nan) || out.detail.reason.starts_with("no data"));
            }
        }
    }
}
