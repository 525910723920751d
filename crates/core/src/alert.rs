//! Alert rules and their state machine, the pure part: what a rule says
//! ([`AlertRule`], checked by [`AlertRule::validate`]) and how one alert — a
//! rule on one device, or on a group — moves between inactive, pending and
//! firing ([`step`]). The server evaluates each rule every few seconds: it
//! reads the rule's aggregation over its window (an observation), the time of
//! the latest sample, and calls [`step`] with the stored state and `now`,
//! storing the new state and logging the transition, if any.
//!
//! ```text
//!             condition true                held for `for_secs`
//!  Inactive ─────────────────▶ Pending ───────────────────────▶ Firing
//!     ▲  ▲     condition false    │                               │
//!     │  └─────── (Cancelled) ────┘                               │
//!     └──────────────────── (Resolved) ───────────────────────────┘
//!                  the value crossed `clear` (or the condition is false)
//! ```
//!
//! With `for_secs = 0` a true condition fires at once. A rule with
//! `no_data_secs` also fires when no sample came for that long (a silent
//! device is often a broken one); such an alert resolves when samples come
//! back and the condition is false. No data never resolves or cancels an
//! alert: an observation that is missing or NaN is not a "condition false".

use crate::model::str_enum;
use crate::telemetry::{validate_metric_name, Agg};
use crate::Millis;
use serde::{Deserialize, Serialize};

str_enum!(
    /// How bad a firing alert is: `info < warning < critical`.
    Severity, "severity", {
    Info => "info",
    Warning => "warning",
    Critical => "critical",
});

impl Default for Severity {
    /// `warning`.
    fn default() -> Self {
        Severity::Warning
    }
}

str_enum!(
    /// A comparison of an observed value with a threshold: `>`, `>=`, `<`, `<=`.
    Op, "comparison", {
    Gt => ">",
    Ge => ">=",
    Lt => "<",
    Le => "<=",
});

impl Op {
    /// Whether `value op threshold` holds; never for a NaN.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
        }
    }

    /// Whether the comparison is true above the threshold (`>`, `>=`).
    pub fn is_upper(self) -> bool {
        matches!(self, Op::Gt | Op::Ge)
    }
}

str_enum!(
    /// What one alert of a rule is about: every device on its own (`per_device`,
    /// the observation is the device's aggregation) or the group as a whole
    /// (`group`, the aggregation over the group's devices).
    Scope, "alert scope", {
    PerDevice => "per_device",
    Group => "group",
});

impl Default for Scope {
    /// `per_device`.
    fn default() -> Self {
        Scope::PerDevice
    }
}

/// The longest window, `for` and no-data time a rule may have: 30 days.
pub const MAX_RULE_SECS: u64 = 30 * 86_400;

/// An alert rule: fire when `agg(metric)` over the last `window_secs` is
/// `op threshold` for `for_secs`, e.g.
/// `{"metric":"cpu_temp_celsius","agg":"p95","window_secs":300,"op":">","threshold":85,"clear":80,"for_secs":120,"severity":"critical"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// The metric the rule reads (a Prometheus-style name).
    pub metric: String,
    /// What is read from the metric's samples in the window.
    pub agg: Agg,
    /// The span the aggregation is read over, seconds (at least 1).
    pub window_secs: u64,
    /// The comparison that makes the condition true: `value op threshold`.
    pub op: Op,
    /// A finite number.
    pub threshold: f64,
    /// Hysteresis: a firing alert resolves only once the condition with
    /// `clear` in place of `threshold` is false — for `> 85` with `clear: 80`,
    /// once the value is at most 80. On the resolving side of the threshold
    /// or equal to it (at most the threshold for `>`/`>=`, at least for
    /// `<`/`<=`). Without it the alert resolves when the condition is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// How long the condition must hold before the alert fires (0: at once).
    #[serde(default)]
    pub for_secs: u64,
    /// Default `warning`.
    #[serde(default)]
    pub severity: Severity,
    /// Default `per_device`.
    #[serde(default)]
    pub scope: Scope,
    /// Fire also when no sample of the metric came for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data_secs: Option<u64>,
}

/// An invalid rule, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct AlertRuleError {
    /// The field, as in the JSON (`clear`).
    pub field: String,
    /// Why, without the field.
    pub message: String,
}

impl AlertRuleError {
    /// An error about `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        AlertRuleError { field: field.to_string(), message: message.into() }
    }
}

fn secs_to_ms(secs: u64) -> Millis {
    Millis::try_from(secs.saturating_mul(1000)).unwrap_or(Millis::MAX)
}

impl AlertRule {
    /// Checks the rule: a valid metric name, a percentile in `[0, 100]`, a
    /// window of 1 s to 30 days, finite `threshold` and `clear`, `clear` on
    /// the resolving side of the threshold, `for_secs` of at most 30 days and
    /// `no_data_secs` of 1 s to 30 days.
    pub fn validate(&self) -> Result<(), AlertRuleError> {
        validate_metric_name(&self.metric).map_err(|m| AlertRuleError::new("metric", m))?;
        self.agg.validate().map_err(|m| AlertRuleError::new("agg", m))?;
        if self.window_secs == 0 {
            return Err(AlertRuleError::new("window_secs", "must be at least 1"));
        }
        for (field, v) in [
            ("window_secs", Some(self.window_secs)),
            ("for_secs", Some(self.for_secs)),
            ("no_data_secs", self.no_data_secs),
        ] {
            if v.is_some_and(|v| v > MAX_RULE_SECS) {
                return Err(AlertRuleError::new(field, "at most 30 days"));
            }
        }
        if self.no_data_secs == Some(0) {
            return Err(AlertRuleError::new("no_data_secs", "must be at least 1 (leave it out for no no-data alert)"));
        }
        if !self.threshold.is_finite() {
            return Err(AlertRuleError::new("threshold", "must be a finite number"));
        }
        if let Some(clear) = self.clear {
            if !clear.is_finite() {
                return Err(AlertRuleError::new("clear", "must be a finite number"));
            }
            let (ok, side) = if self.op.is_upper() {
                (clear <= self.threshold, "at most")
            } else {
                (clear >= self.threshold, "at least")
            };
            if !ok {
                return Err(AlertRuleError::new(
                    "clear",
                    format!(
                        "must be {side} the threshold ({}) for op {}: the alert resolves once the value is back past it",
                        self.threshold, self.op
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the device (or group) counts as silent at `now`: the rule has
    /// `no_data_secs` and the last sample is at least that old. A series that
    /// never reported (`None`) is not silent: there is no time to count from.
    /// To alert on devices that never report, pass the time they enrolled
    /// (or the rule was created) as their last sample.
    pub fn silent(&self, last_sample_at: Option<Millis>, now: Millis) -> bool {
        match (self.no_data_secs, last_sample_at) {
            (Some(n), Some(t)) => now.saturating_sub(t) >= secs_to_ms(n),
            _ => false,
        }
    }
}

str_enum!(
    /// Why an alert fires: its condition held (`threshold`), or no sample
    /// came for `no_data_secs` (`no_data`).
    Cause, "alert cause", {
    Threshold => "threshold",
    NoData => "no_data",
});

impl Default for Cause {
    /// `threshold`.
    fn default() -> Self {
        Cause::Threshold
    }
}

/// Where one alert stands. In JSON `{"state":"pending","since":…}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AlertState {
    /// Nothing wrong (or nothing known).
    #[default]
    Inactive,
    /// The condition holds since `since`, not yet for `for_secs`.
    Pending { since: Millis },
    /// Firing since `since` (when it fired, not when it became pending).
    /// `cause` tells a no-data alert from a threshold one, because they
    /// resolve differently: a no-data alert needs samples back and the
    /// threshold condition false; a threshold alert needs the value past
    /// `clear`.
    Firing {
        since: Millis,
        #[serde(default)]
        cause: Cause,
    },
}

impl AlertState {
    /// Whether the alert fires.
    pub fn is_firing(self) -> bool {
        matches!(self, AlertState::Firing { .. })
    }
}

str_enum!(
    /// A change of an alert's state worth an event. `cancelled` is a pending
    /// alert whose condition became false before `for_secs`: it is reported
    /// (rather than dropped silently, as Prometheus does) so that a list of
    /// pending alerts can be kept exact from the events alone.
    Transition, "alert transition", {
    Pending => "pending",
    Firing => "firing",
    Resolved => "resolved",
    Cancelled => "cancelled",
});

/// One evaluation of `rule` at `now`: the alert's new state and the
/// transition, if the state changed kind (`None` when it stays; a no-data
/// alert whose samples came back with the condition true turns into a
/// threshold alert without a transition).
///
/// `observation` is the rule's aggregation over its window (`None`: no data
/// in the window; a NaN counts as no data, never as a false condition);
/// `last_sample_at` the time of the latest sample of the metric (for
/// `no_data_secs`, see [`AlertRule::silent`]).
///
/// - *Inactive*: silent → firing (no data); condition true → pending, or
///   firing at once with `for_secs = 0`.
/// - *Pending*: silent → firing (no data); condition true for `for_secs`
///   since `since` → firing; false → inactive (`cancelled`); no data → stays
///   pending (and fires only on a true condition once `for_secs` passed).
/// - *Firing, threshold*: resolves when a value is past `clear` (the
///   condition with `clear` for `threshold` is false); no data keeps it firing.
/// - *Firing, no data*: stays while silent; once samples come back, resolves
///   if the condition is false, carries on as a threshold alert if it is
///   true, stays if there is still no value.
pub fn step(
    rule: &AlertRule,
    state: AlertState,
    observation: Option<f64>,
    last_sample_at: Option<Millis>,
    now: Millis,
) -> (AlertState, Option<Transition>) {
    let silent = rule.silent(last_sample_at, now);
    let value = observation.filter(|v| !v.is_nan());
    // None: not known.
    let hot = value.map(|v| rule.op.holds(v, rule.threshold));
    let fire = |cause| (AlertState::Firing { since: now, cause }, Some(Transition::Firing));
    match state {
        AlertState::Inactive => match (silent, hot) {
            (true, _) => fire(Cause::NoData),
            (false, Some(true)) if rule.for_secs == 0 => fire(Cause::Threshold),
            (false, Some(true)) => (AlertState::Pending { since: now }, Some(Transition::Pending)),
            (false, _) => (state, None),
        },
        AlertState::Pending { since } => match (silent, hot) {
            (true, _) => fire(Cause::NoData),
            (false, Some(true)) if now.saturating_sub(since) >= secs_to_ms(rule.for_secs) => fire(Cause::Threshold),
            (false, Some(false)) => (AlertState::Inactive, Some(Transition::Cancelled)),
            (false, _) => (state, None),
        },
        AlertState::Firing { cause: Cause::Threshold, .. } => {
            let clear = rule.clear.unwrap_or(rule.threshold);
            match value {
                Some(v) if !rule.op.holds(v, clear) => (AlertState::Inactive, Some(Transition::Resolved)),
                _ => (state, None),
            }
        }
        AlertState::Firing { since, cause: Cause::NoData } => match (silent, hot) {
            (false, Some(false)) => (AlertState::Inactive, Some(Transition::Resolved)),
            (false, Some(true)) => (AlertState::Firing { since, cause: Cause::Threshold }, None),
            _ => (state, None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Millis = 1000;

    fn rule() -> AlertRule {
        AlertRule {
            metric: "cpu_temp_celsius".into(),
            agg: Agg::P95,
            window_secs: 300,
            op: Op::Gt,
            threshold: 85.0,
            clear: None,
            for_secs: 60,
            severity: Severity::Critical,
            scope: Scope::PerDevice,
            no_data_secs: None,
        }
    }

    /// Runs `(observation, last_sample_at, now)` steps from inactive and
    /// returns the transitions and the final state.
    fn run(rule: &AlertRule, steps: &[(Option<f64>, Option<Millis>, Millis)]) -> (Vec<Option<Transition>>, AlertState) {
        let mut state = AlertState::Inactive;
        let mut out = Vec::new();
        for &(obs, last, now) in steps {
            let (s, t) = step(rule, state, obs, last, now);
            state = s;
            out.push(t);
        }
        (out, state)
    }

    #[test]
    fn severities_order_and_everything_parses() {
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
        assert_eq!(">=".parse::<Op>(), Ok(Op::Ge));
        assert!("=>".parse::<Op>().is_err());
        let r: AlertRule = serde_json::from_str(
            r#"{"metric":"cpu_temp_celsius","agg":"p95","window_secs":300,"op":">","threshold":85,"for_secs":60,"severity":"critical"}"#,
        )
        .unwrap();
        assert_eq!(r, rule());
        assert_eq!(r.validate(), Ok(()));
        let back: AlertRule = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let minimal: AlertRule =
            serde_json::from_str(r#"{"metric":"up","agg":"last","window_secs":60,"op":"<","threshold":1}"#).unwrap();
        assert_eq!((minimal.severity, minimal.scope, minimal.for_secs), (Severity::Warning, Scope::PerDevice, 0));
        assert!(serde_json::from_str::<AlertRule>(
            r#"{"metric":"up","agg":"last","window_secs":60,"op":"<","threshold":1,"fo_secs":1}"#
        )
        .is_err());
        let firing = AlertState::Firing { since: 5, cause: Cause::NoData };
        let json = serde_json::to_string(&firing).unwrap();
        assert_eq!(json, r#"{"state":"firing","since":5,"cause":"no_data"}"#);
        assert_eq!(serde_json::from_str::<AlertState>(&json).unwrap(), firing);
        assert_eq!(
            serde_json::from_str::<AlertState>(r#"{"state":"firing","since":5}"#).unwrap(),
            AlertState::Firing { since: 5, cause: Cause::Threshold }
        );
        assert_eq!(serde_json::to_string(&AlertState::Inactive).unwrap(), r#"{"state":"inactive"}"#);
    }

    #[test]
    fn invalid_rules_name_their_field() {
        let cases: Vec<(AlertRule, &str)> = vec![
            (AlertRule { metric: "cpu-temp".into(), ..rule() }, "metric"),
            (AlertRule { agg: Agg::Percentile(120.0), ..rule() }, "agg"),
            (AlertRule { window_secs: 0, ..rule() }, "window_secs"),
            (AlertRule { window_secs: MAX_RULE_SECS + 1, ..rule() }, "window_secs"),
            (AlertRule { for_secs: MAX_RULE_SECS + 1, ..rule() }, "for_secs"),
            (AlertRule { no_data_secs: Some(0), ..rule() }, "no_data_secs"),
            (AlertRule { no_data_secs: Some(MAX_RULE_SECS + 1), ..rule() }, "no_data_secs"),
            (AlertRule { threshold: f64::NAN, ..rule() }, "threshold"),
            (AlertRule { threshold: f64::INFINITY, ..rule() }, "threshold"),
            (AlertRule { clear: Some(f64::NAN), ..rule() }, "clear"),
            (AlertRule { clear: Some(90.0), ..rule() }, "clear"),
            (AlertRule { op: Op::Lt, threshold: 10.0, clear: Some(5.0), ..rule() }, "clear"),
        ];
        for (r, field) in cases {
            assert_eq!(r.validate().unwrap_err().field, field, "{r:?}");
        }
        let e = AlertRule { clear: Some(90.0), ..rule() }.validate().unwrap_err().to_string();
        assert!(e.starts_with("clear: must be at most the threshold (85) for op >"), "{e}");
        for ok in [
            AlertRule { clear: Some(80.0), ..rule() },
            AlertRule { clear: Some(85.0), ..rule() },
            AlertRule { op: Op::Le, threshold: 10.0, clear: Some(15.0), ..rule() },
            AlertRule { no_data_secs: Some(600), ..rule() },
        ] {
            assert_eq!(ok.validate(), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let r = rule();
        let (t, end) = run(
            &r,
            &[
                (Some(80.0), Some(0), 0),
                (Some(90.0), Some(10 * S), 10 * S),
                (Some(91.0), Some(40 * S), 40 * S),
                (Some(92.0), Some(69 * S), 69 * S),
                (Some(92.0), Some(70 * S), 70 * S),
                (Some(99.0), Some(80 * S), 80 * S),
                (Some(85.0), Some(90 * S), 90 * S),
            ],
        );
        use Transition::*;
        assert_eq!(t, vec![None, Some(Pending), None, None, Some(Firing), None, Some(Resolved)]);
        assert_eq!(end, AlertState::Inactive);
        // The firing state records when it fired.
        let (s, _) = step(&r, AlertState::Pending { since: 0 }, Some(90.0), Some(0), 60 * S);
        assert_eq!(s, AlertState::Firing { since: 60 * S, cause: Cause::Threshold });
    }

    #[test]
    fn for_zero_fires_at_once() {
        let r = AlertRule { for_secs: 0, ..rule() };
        assert_eq!(
            step(&r, AlertState::Inactive, Some(86.0), Some(0), 5),
            (AlertState::Firing { since: 5, cause: Cause::Threshold }, Some(Transition::Firing))
        );
        assert_eq!(step(&r, AlertState::Inactive, Some(85.0), Some(0), 5), (AlertState::Inactive, None));
    }

    #[test]
    fn a_pending_alert_that_recovers_is_cancelled() {
        let (t, end) = run(&rule(), &[(Some(90.0), Some(0), 0), (Some(70.0), Some(30 * S), 30 * S)]);
        assert_eq!(t, vec![Some(Transition::Pending), Some(Transition::Cancelled)]);
        assert_eq!(end, AlertState::Inactive);
        // And pending again starts the `for` clock anew.
        let (t, end) = run(
            &rule(),
            &[
                (Some(90.0), None, 0),
                (Some(70.0), None, 30 * S),
                (Some(90.0), None, 40 * S),
                (Some(90.0), None, 80 * S),
            ],
        );
        assert_eq!(t[3], None);
        assert_eq!(end, AlertState::Pending { since: 40 * S });
    }

    #[test]
    fn hysteresis_clears_only_past_clear() {
        let r = AlertRule { clear: Some(80.0), for_secs: 0, ..rule() };
        let (t, end) = run(
            &r,
            &[(Some(90.0), None, 0), (Some(84.0), None, S), (Some(80.5), None, 2 * S), (Some(80.0), None, 3 * S)],
        );
        assert_eq!(t, vec![Some(Transition::Firing), None, None, Some(Transition::Resolved)]);
        assert_eq!(end, AlertState::Inactive);
        // `>=` with clear: still firing at exactly the clear value.
        let ge = AlertRule { op: Op::Ge, ..r.clone() };
        let firing = AlertState::Firing { since: 0, cause: Cause::Threshold };
        assert_eq!(step(&ge, firing, Some(80.0), None, S), (firing, None));
        assert_eq!(step(&ge, firing, Some(79.9), None, S).1, Some(Transition::Resolved));
        // A lower bound: fire below 10, resolve at 15 or above.
        let low = AlertRule { op: Op::Lt, threshold: 10.0, clear: Some(15.0), for_secs: 0, ..rule() };
        let (t, _) = run(
            &low,
            &[(Some(5.0), None, 0), (Some(12.0), None, S), (Some(14.9), None, 2 * S), (Some(15.0), None, 3 * S)],
        );
        assert_eq!(t, vec![Some(Transition::Firing), None, None, Some(Transition::Resolved)]);
        // Without clear, it resolves as soon as the condition is false.
        let plain = AlertRule { for_secs: 0, ..rule() };
        let (t, _) = run(&plain, &[(Some(90.0), None, 0), (Some(84.0), None, S)]);
        assert_eq!(t, vec![Some(Transition::Firing), Some(Transition::Resolved)]);
    }

    #[test]
    fn no_data_fires_and_resolves_when_samples_return() {
        let r = AlertRule { no_data_secs: Some(600), ..rule() };
        let (t, end) = run(
            &r,
            &[
                (Some(50.0), Some(0), 0),
                (None, Some(0), 599 * S),
                (None, Some(0), 600 * S),
                (None, Some(0), 900 * S),
                // A sample came, but none in the window yet: stays.
                (None, Some(950 * S), 951 * S),
                (Some(50.0), Some(960 * S), 960 * S),
            ],
        );
        use Transition::*;
        assert_eq!(t, vec![None, None, Some(Firing), None, None, Some(Resolved)]);
        assert_eq!(end, AlertState::Inactive);
        // Samples back with the condition true: it carries on as a threshold alert,
        // which then needs the value to fall to resolve.
        let nodata = AlertState::Firing { since: 600 * S, cause: Cause::NoData };
        let (s, tr) = step(&r, nodata, Some(95.0), Some(700 * S), 700 * S);
        assert_eq!((s, tr), (AlertState::Firing { since: 600 * S, cause: Cause::Threshold }, None));
        // A pending alert whose device goes silent fires for no data.
        let (s, tr) = step(&r, AlertState::Pending { since: 0 }, None, Some(0), 600 * S);
        assert_eq!((s, tr), (AlertState::Firing { since: 600 * S, cause: Cause::NoData }, Some(Firing)));
        // A threshold alert stays firing while the device is silent.
        let hot = AlertState::Firing { since: 0, cause: Cause::Threshold };
        assert_eq!(step(&r, hot, None, Some(0), 10_000 * S), (hot, None));
        // Never reported: not silent.
        assert_eq!(step(&r, AlertState::Inactive, None, None, 10_000 * S), (AlertState::Inactive, None));
        // Without no_data_secs silence is just no data.
        assert_eq!(step(&rule(), AlertState::Inactive, None, Some(0), 10_000 * S), (AlertState::Inactive, None));
    }

    #[test]
    fn nan_is_no_data_never_a_false_condition() {
        let r = AlertRule { for_secs: 0, ..rule() };
        let firing = AlertState::Firing { since: 0, cause: Cause::Threshold };
        assert_eq!(step(&r, firing, Some(f64::NAN), Some(0), S), (firing, None));
        assert_eq!(step(&r, firing, None, Some(0), S), (firing, None));
        let pending = AlertState::Pending { since: 0 };
        let r60 = rule();
        assert_eq!(step(&r60, pending, Some(f64::NAN), Some(0), S), (pending, None));
        assert_eq!(step(&r60, pending, None, Some(0), 120 * S), (pending, None), "no data does not fire either");
        assert_eq!(step(&r, AlertState::Inactive, Some(f64::NAN), Some(0), S), (AlertState::Inactive, None));
        let nodata = AlertState::Firing { since: 0, cause: Cause::NoData };
        let rn = AlertRule { no_data_secs: Some(60), ..r };
        assert_eq!(step(&rn, nodata, Some(f64::NAN), Some(S), 2 * S), (nodata, None));
        // Infinity is a value, and compares.
        assert_eq!(step(&rn, AlertState::Inactive, Some(f64::INFINITY), Some(S), 2 * S).1, Some(Transition::Firing));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever the observations, only legal moves happen, a transition is
        /// reported exactly when the state's kind changes, and firing needs
        /// `for_secs` of pending or silence.
        #[test]
        fn only_legal_moves(obs in proptest::collection::vec(
                                (prop_oneof![Just(None), Just(Some(f64::NAN)), (0.0..100.0f64).prop_map(Some)],
                                 0i64..40_000, any::<bool>()), 1..60),
                            clear in prop_oneof![Just(None), (50.0..=85.0f64).prop_map(Some)],
                            for_secs in 0u64..30, no_data in prop_oneof![Just(None), (1u64..60).prop_map(Some)]) {
            let r = AlertRule { clear, for_secs, no_data_secs: no_data, ..rule() };
            prop_assert_eq!(r.validate(), Ok(()));
            let (mut state, mut now, mut last) = (AlertState::Inactive, 0, None);
            for (o, dt, sampled) in obs {
                now += dt;
                if sampled { last = Some(now); }
                let (next, t) = step(&r, state, o, last, now);
                let kind = |s: AlertState| match s { AlertState::Inactive => 0, AlertState::Pending { .. } => 1, AlertState::Firing { .. } => 2 };
                prop_assert_eq!(t.is_some(), kind(next) != kind(state), "{:?} -> {:?}", state, next);
                match (state, next) {
                    (AlertState::Pending { since }, AlertState::Firing { cause: Cause::Threshold, .. }) => {
                        prop_assert!(now - since >= (for_secs * 1000) as i64);
                    }
                    (_, AlertState::Firing { cause: Cause::NoData, .. }) if !state.is_firing() => {
                        prop_assert!(r.silent(last, now));
                    }
                    (AlertState::Firing { .. }, AlertState::Pending { .. }) => prop_assert!(false, "firing → pending"),
                    (_, AlertState::Inactive) if state != AlertState::Inactive => {
                        // Only a number resolves or cancels.
                        prop_assert!(o.is_some_and(|v| !v.is_nan()));
                    }
                    _ => {}
                }
                state = next;
            }
        }
    }
}
