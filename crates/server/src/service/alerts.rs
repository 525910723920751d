//! The alert evaluator: every `--alert-interval` the leader reads each
//! rule's telemetry windows, has [`otafleet_core::alert::step`] decide each
//! alert's new state, and writes what changed with its events
//! (`Store::apply_alert_changes`, fenced like the driver); with
//! `--alertmanager-url` it then pushes the firing alerts (and the ones that
//! just resolved) to Alertmanager's API. Exactly one replica evaluates: the
//! holder of the driver's lease.
//!
//! A rule's observation is its aggregation over the windows of the finest
//! resolution that start in its window (merged sketches for percentiles),
//! per device or over the group; the time of the latest sample comes from
//! the windows of `max(window, no_data)`. The windows read are the ones
//! written: a sample counts once its window was flushed (the window's end
//! plus `--telemetry-grace`, or `--telemetry-hold`).

use crate::AppState;
use otafleet_core::alert::{self, AlertRule, AlertState, Cause, Scope, Severity, Transition};
use otafleet_core::analysis::summarize;
use otafleet_core::telemetry::{bucket_start, Aggregate};
use otafleet_core::{Millis, Selector};
use otafleet_store::{AlertChange, AlertRuleRecord, CandidateField, Fence, StoreError, WindowRange};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// How alerts are evaluated (`serve --alert-interval`, `--alertmanager-url`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Between two evaluations of every rule.
    pub interval: Duration,
    /// Alertmanager to push firing alerts to (its `/api/v2/alerts`).
    pub alertmanager_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { interval: Duration::from_secs(10), alertmanager_url: None }
    }
}

/// Most windows one rule's evaluation reads.
pub const MAX_WINDOWS: i64 = 2_000_000;

/// What one evaluation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cycle {
    pub rules: usize,
    pub windows: usize,
    pub alerts: usize,
    pub changes: usize,
    pub firing: usize,
}

type Windows = Arc<Vec<(Uuid, i64, Aggregate)>>;

/// The alert a rule raises on one subject, evaluated.
fn evaluate_one(
    rule: &AlertRule,
    windows: &[&(Uuid, i64, Aggregate)],
    from_window: Millis,
    state: AlertState,
    now: Millis,
) -> (AlertState, Option<Transition>, Option<f64>) {
    let last = windows.iter().filter(|(_, _, a)| a.count > 0).map(|(_, _, a)| a.last_ts).max();
    let (value, _, _) =
        summarize(windows.iter().filter(|(_, b, _)| *b >= from_window).map(|(d, _, a)| (*d, a)), rule.agg);
    let (next, t) = alert::step(rule, state, value, last, now);
    (next, t, value)
}

fn event_data(r: &AlertRuleRecord, state: AlertState, value: Option<f64>) -> serde_json::Value {
    let rule = &r.rule;
    let mut data = serde_json::json!({
        "rule_id": r.id,
        "rule": r.name,
        "severity": rule.severity.as_str(),
        "metric": rule.metric,
        "agg": rule.agg.to_string(),
        "op": rule.op.as_str(),
        "threshold": rule.threshold,
        "value": value.filter(|v| v.is_finite()),
    });
    if let AlertState::Firing { cause, .. } = state {
        data["cause"] = cause.as_str().into();
    }
    data
}

/// How the database can pick a per-device rule's candidates: a maximum that
/// must stay below a threshold, or a minimum above it (too hot, too low) are
/// exceeded when one window exceeds them. Other rules (percentiles, `avg`,
/// `sum`, `last`, `count`) read every device's windows.
fn candidate_field(rule: &AlertRule) -> Option<CandidateField> {
    use otafleet_core::telemetry::Agg;
    match (rule.agg, rule.op.is_upper()) {
        (Agg::Max, true) => Some(CandidateField::MaxAbove),
        (Agg::Min, false) => Some(CandidateField::MinBelow),
        _ => None,
    }
}

/// Evaluates every rule once at `now` and writes what changed.
pub async fn evaluate(state: &AppState, fence: &Fence, now: Millis) -> Result<Cycle, StoreError> {
    let rules = state.store.list_alert_rules().await?;
    let current = state.store.list_alerts(None, false).await?;
    let mut states: HashMap<(i64, Option<Uuid>), AlertState> =
        current.iter().map(|a| ((a.rule_id, a.device_id), a.state)).collect();
    let width = state.config.telemetry.resolutions.first().map_or(60_000, |r| r.width_ms);
    let mut reads: HashMap<(String, String, Millis, bool), Windows> = HashMap::new();
    let mut cycle = Cycle { rules: rules.len(), ..Cycle::default() };
    let mut changes = Vec::new();
    for r in &rules {
        let rule = &r.rule;
        let span_secs = rule.window_secs.max(rule.no_data_secs.unwrap_or(0).saturating_add(width as u64 / 1000 * 2));
        let from = bucket_start(now - span_secs as i64 * 1000, width);
        let from_window = bucket_start(now - rule.window_secs as i64 * 1000, width);
        let sketches = rule.agg.quantile().is_some();
        let selector = Selector::parse(&r.selector)
            .map_err(|e| StoreError::Corrupt(format!("alert rule {}: selector: {e}", r.id)))?;
        let range = WindowRange { metric: &rule.metric, width_ms: width, from, to: now + 1 };
        let held: BTreeSet<Option<Uuid>> = states.keys().filter(|(id, _)| *id == r.id).map(|(_, s)| *s).collect();
        let windows = match (rule.scope, candidate_field(rule)) {
            // The database picks the devices that are hot or silent; only
            // theirs and those of alerts already held are read.
            (Scope::PerDevice, Some(field)) => {
                let silent_before = rule.no_data_secs.map(|n| now - n as i64 * 1000 + 1);
                let mut ids = state
                    .store
                    .alert_candidates(&selector, &range, from_window, field, rule.threshold, silent_before, MAX_WINDOWS)
                    .await?;
                ids.extend(held.iter().flatten().copied());
                ids.sort_unstable();
                ids.dedup();
                let w = Arc::new(state.store.device_windows(&ids, &range, sketches).await?);
                cycle.windows += w.len();
                w
            }
            _ => {
                let key = (rule.metric.clone(), r.selector.clone(), from, sketches);
                match reads.get(&key) {
                    Some(w) => w.clone(),
                    None => {
                        let w = Arc::new(state.store.selector_windows(&selector, &range, sketches, MAX_WINDOWS).await?);
                        cycle.windows += w.len();
                        reads.insert(key, w.clone());
                        w
                    }
                }
            }
        };
        let mut subjects: HashMap<Option<Uuid>, Vec<&(Uuid, i64, Aggregate)>> = HashMap::new();
        match rule.scope {
            Scope::PerDevice => {
                for w in windows.iter() {
                    subjects.entry(Some(w.0)).or_default().push(w);
                }
            }
            Scope::Group => {
                subjects.insert(None, windows.iter().collect());
            }
        }
        // Alerts held for subjects with no window now (a silent device) are evaluated too.
        for s in held {
            subjects.entry(s).or_default();
        }
        cycle.alerts += subjects.len();
        for (subject, ws) in subjects {
            let before = states.get(&(r.id, subject)).copied().unwrap_or_default();
            let (after, transition, value) = evaluate_one(rule, &ws, from_window, before, now);
            if after == before {
                continue;
            }
            states.insert((r.id, subject), after);
            changes.push(AlertChange {
                rule_id: r.id,
                device_id: subject,
                state: after,
                transition,
                value,
                data: event_data(r, after, value),
            });
        }
    }
    cycle.changes = changes.len();
    cycle.firing = states.values().filter(|s| s.is_firing()).count();
    // In transactions of at most 5,000 changes.
    for chunk in changes.chunks(5_000) {
        state.store.apply_alert_changes(chunk, fence, now).await?;
    }
    if let Some(url) = &state.config.alerts.alertmanager_url {
        let resolved: Vec<&AlertChange> =
            changes.iter().filter(|c| c.transition == Some(Transition::Resolved)).collect();
        if let Err(e) = push(url, &rules, &states, &resolved, now).await {
            tracing::warn!(error = %e, "could not push alerts to Alertmanager");
        }
    }
    Ok(cycle)
}

/// Evaluates every `interval` while this replica leads, until `stop`.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.config.alerts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(fence) = state.leader.fence() else { continue };
        let started = std::time::Instant::now();
        match evaluate(&state, &fence, otafleet_store::now_ms()).await {
            Ok(c) => {
                state.metrics.alert_cycle_seconds.set(started.elapsed().as_secs_f64());
                if c.changes > 0 {
                    tracing::info!(
                        rules = c.rules,
                        alerts = c.alerts,
                        changes = c.changes,
                        firing = c.firing,
                        "alerts evaluated"
                    );
                }
            }
            Err(StoreError::Fenced(_)) => {}
            Err(e) => tracing::warn!(error = %e, "alert evaluation failed"),
        }
    }
}

/// The Alertmanager alerts (API v2) of the firing alerts and of the ones
/// that resolved in this evaluation (with `endsAt`). Alertmanager expects
/// firing alerts again before its `resolve_timeout`: every evaluation sends
/// them all.
pub fn alertmanager_alerts(
    rules: &[AlertRuleRecord],
    states: &HashMap<(i64, Option<Uuid>), AlertState>,
    resolved: &[&AlertChange],
    now: Millis,
) -> serde_json::Value {
    let by_id: HashMap<i64, &AlertRuleRecord> = rules.iter().map(|r| (r.id, r)).collect();
    let one =
        |r: &AlertRuleRecord, device: Option<Uuid>, starts: Option<Millis>, ends: Option<Millis>, cause: Cause| {
            let mut labels = serde_json::json!({
                "alertname": r.name,
                "severity": r.rule.severity.as_str(),
                "metric": r.rule.metric,
                "source": "otafleet",
            });
            if let Some(d) = device {
                labels["device"] = d.to_string().into();
            }
            let summary = format!(
                "{} of {} {} {} ({})",
                r.rule.agg,
                r.rule.metric,
                r.rule.op,
                r.rule.threshold,
                if cause == Cause::NoData { "no data" } else { "threshold" }
            );
            let mut a = serde_json::json!({"labels": labels, "annotations": {"summary": summary}});
            if let Some(t) = starts {
                a["startsAt"] = crate::time::rfc3339(t).into();
            }
            if let Some(t) = ends {
                a["endsAt"] = crate::time::rfc3339(t).into();
            }
            a
        };
    let mut out = Vec::new();
    let mut firing: Vec<(&(i64, Option<Uuid>), &AlertState)> = states.iter().filter(|(_, s)| s.is_firing()).collect();
    firing.sort_by_key(|(k, _)| **k);
    for ((rule_id, device), s) in firing {
        let (Some(r), AlertState::Firing { since, cause }) = (by_id.get(rule_id), s) else { continue };
        out.push(one(r, *device, Some(*since), None, *cause));
    }
    for c in resolved {
        let Some(r) = by_id.get(&c.rule_id) else { continue };
        out.push(one(r, c.device_id, None, Some(now), Cause::Threshold));
    }
    serde_json::Value::Array(out)
}

async fn push(
    url: &str,
    rules: &[AlertRuleRecord],
    states: &HashMap<(i64, Option<Uuid>), AlertState>,
    resolved: &[&AlertChange],
    now: Millis,
) -> Result<(), String> {
    let body = alertmanager_alerts(rules, states, resolved, now);
    if body.as_array().is_some_and(|a| a.is_empty()) {
        return Ok(());
    }
    let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
    let resp = super::outbound_client()
        .post(&endpoint)
        .timeout(Duration::from_secs(10))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("{endpoint}: HTTP {status}: {}", text.chars().take(300).collect::<String>()));
    }
    Ok(())
}

/// The firing alerts by severity, every severity listed.
pub fn count_by_severity<'a>(firing: impl IntoIterator<Item = &'a Severity>) -> Vec<(Severity, i64)> {
    let mut counts: Vec<(Severity, i64)> = Severity::ALL.iter().map(|s| (*s, 0)).collect();
    for s in firing {
        if let Some(c) = counts.iter_mut().find(|(k, _)| k == s) {
            c.1 += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: serde_json::Value) -> AlertRule {
        let r: AlertRule = serde_json::from_value(json).unwrap();
        r.validate().unwrap();
        r
    }

    fn window(device: u128, bucket: Millis, values: &[f64]) -> (Uuid, i64, Aggregate) {
        let mut a = Aggregate::new();
        for v in values {
            a.add(*v, bucket + 1);
        }
        (Uuid::from_u128(device), bucket, a)
    }

    #[test]
    fn one_alert_reads_its_window_and_the_last_sample() {
        let r = rule(serde_json::json!({"metric":"t","agg":"max","window_secs":10,"op":">","threshold":80,
                                         "for_secs":0,"no_data_secs":30}));
        let old = window(1, 0, &[95.0]);
        let recent = window(1, 20_000, &[70.0]);
        // The hot window is older than the rule's window: not counted.
        let (s, t, v) = evaluate_one(&r, &[&old, &recent], 20_000, AlertState::Inactive, 25_000);
        assert_eq!((s, t, v), (AlertState::Inactive, None, Some(70.0)));
        let hot = window(1, 20_000, &[85.0]);
        let (s, t, _) = evaluate_one(&r, &[&hot], 20_000, AlertState::Inactive, 25_000);
        assert!(s.is_firing() && t == Some(Transition::Firing));
        // Silent for 30 s since its last sample at 20,001: no-data alert.
        let (s, t, _) = evaluate_one(&r, &[&recent], 60_000, AlertState::Inactive, 50_002);
        assert_eq!((s, t), (AlertState::Firing { since: 50_002, cause: Cause::NoData }, Some(Transition::Firing)));
    }

    #[test]
    fn alertmanager_gets_firing_alerts_and_the_resolved() {
        let r = AlertRuleRecord {
            id: 7,
            name: "hot".into(),
            selector: "device_type=robot".into(),
            rule: rule(serde_json::json!({"metric":"cpu_temp_c","agg":"max","window_secs":60,"op":">","threshold":80,
                                          "severity":"critical"})),
            created_by: "admin".into(),
            created_at: 0,
        };
        let d1 = Uuid::from_u128(1);
        let d2 = Uuid::from_u128(2);
        let states: HashMap<(i64, Option<Uuid>), AlertState> = [
            ((7, Some(d1)), AlertState::Firing { since: 1_000, cause: Cause::Threshold }),
            ((7, Some(Uuid::from_u128(3))), AlertState::Pending { since: 1_000 }),
        ]
        .into();
        let change = AlertChange {
            rule_id: 7,
            device_id: Some(d2),
            state: AlertState::Inactive,
            transition: Some(Transition::Resolved),
            value: Some(70.0),
            data: serde_json::Value::Null,
        };
        let body = alertmanager_alerts(&[r], &states, &[&change], 5_000);
        let a = body.as_array().unwrap();
        assert_eq!(a.len(), 2, "the pending one is not sent: {body}");
        assert_eq!(a[0]["labels"]["alertname"], "hot");
        assert_eq!(a[0]["labels"]["severity"], "critical");
        assert_eq!(a[0]["labels"]["device"], d1.to_string());
        assert_eq!(a[0]["startsAt"], "1970-01-01T00:00:01.000Z");
        assert!(a[0].get("endsAt").is_none());
        assert_eq!(a[1]["labels"]["device"], d2.to_string());
        assert_eq!(a[1]["endsAt"], "1970-01-01T00:00:05.000Z");
    }
}
