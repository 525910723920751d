//! Analysis measurements: what a rollout's checks measure, gathered at the
//! edge, judged by the core.
//!
//! The engine says which checks are due ([`Decision::Measure`]); the driver
//! calls [`gather`], which reads what each check measures — telemetry
//! windows of the wave's devices and of the baseline, or a Prometheus query
//! — and has [`analysis::measure`] judge it; the store records the results
//! with their numbers ([`otafleet_store::Store::record_analysis`]). Nothing
//! here decides: an error reading is an inconclusive measurement, never a
//! pass.
//!
//! [`Decision::Measure`]: otafleet_core::engine::Decision::Measure

use crate::AppState;
use otafleet_core::analysis::{self, AnalysisKind, AnalysisSpec, Measured, Measurement, MetricMeasurement};
use otafleet_core::telemetry::Agg;
use otafleet_core::Millis;
use otafleet_store::{Rollout, WindowRange};
use std::time::Duration;

/// Where analysis checks look (`serve --prometheus-url`, `--prometheus-timeout`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Prometheus server `prometheus` checks query (its HTTP API,
    /// `/api/v1/query`); without one such checks are refused.
    pub prometheus_url: Option<String>,
    /// How long a query may take before the measurement is inconclusive.
    pub prometheus_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { prometheus_url: None, prometheus_timeout: Duration::from_secs(10) }
    }
}

/// Most telemetry windows one side of a metric measurement reads: the
/// wave's or the baseline's first devices (in id order) past it.
pub const MAX_WINDOWS: i64 = 200_000;

/// Why this server cannot measure a check, naming the field: refused when
/// the rollout is created, so no rollout waits on a check nothing measures.
pub fn unsupported(settings: &Settings, specs: &[AnalysisSpec]) -> Option<(String, String)> {
    specs.iter().enumerate().find_map(|(i, s)| match &s.kind {
        AnalysisKind::Prometheus { .. } if settings.prometheus_url.is_none() => Some((
            format!("strategy.analysis[{i}].kind"),
            "a prometheus check needs a Prometheus server: start otafleet serve with --prometheus-url".to_string(),
        )),
        _ => None,
    })
}

/// Measures checks `checks` (indices into the strategy's `analysis`) of
/// rollout `r`'s current wave at `now` and judges each.
pub async fn gather(state: &AppState, r: &Rollout, checks: &[usize], now: Millis) -> Vec<(usize, Measured)> {
    let mut out = Vec::with_capacity(checks.len());
    let mut flushed: Vec<&str> = Vec::new();
    for &i in checks {
        let Some(spec) = r.strategy.analysis.get(i) else { continue };
        let mut rendered = None;
        let m: Result<Measurement, String> = match &spec.kind {
            AnalysisKind::Metric { metric, agg, window_secs, condition } => {
                if !flushed.contains(&metric.as_str()) {
                    // What this replica holds of the metric's open windows is
                    // written first (merging is additive), so the measurement
                    // sees the samples received up to now, not a minute ago.
                    let held = crate::service::telemetry::Held::Metric(metric);
                    crate::service::telemetry::flush_once(state, held).await;
                    flushed.push(metric);
                }
                let relative = matches!(condition, analysis::Condition::Baseline { .. });
                metric_measurement(state, r, metric, *agg, *window_secs, relative, now)
                    .await
                    .map(Measurement::Metric)
                    .map_err(|e| format!("reading telemetry failed: {e}"))
            }
            AnalysisKind::NoFiringAlerts { .. } => state
                .store
                .firing_alerts_of_wave(r.id, r.current_wave)
                .await
                .map(|firing| Measurement::Alerts {
                    firing: firing.into_iter().map(|(d, rule, s)| (format!("{d}/{rule}"), s)).collect(),
                })
                .map_err(|e| format!("reading the alerts failed: {e}")),
            AnalysisKind::Prometheus { query, .. } => {
                let q = analysis::render_query(query, r.id, r.current_wave as usize, &r.version);
                let result = prometheus(&state.config.analysis, &q, now).await;
                rendered = Some(q);
                Ok(Measurement::Prometheus { result })
            }
        };
        let judged = match m {
            Ok(m) => {
                let mut judged = analysis::measure(spec, &m);
                judged.detail.query = rendered.take();
                judged
            }
            // Nothing could be read: inconclusive, never a pass or a fail.
            Err(reason) => Measured {
                outcome: analysis::MeasureOutcome::Inconclusive(reason.clone()),
                detail: analysis::Detail { name: spec.name.clone(), reason, ..analysis::Detail::default() },
            },
        };
        out.push((i, judged));
    }
    out
}

async fn metric_measurement(
    state: &AppState,
    r: &Rollout,
    metric: &str,
    agg: Agg,
    window_secs: u64,
    relative: bool,
    now: Millis,
) -> Result<MetricMeasurement, String> {
    let settings = &state.config.telemetry;
    let width = settings.resolutions.first().map_or(60_000, |r| r.width_ms);
    let from = otafleet_core::telemetry::bucket_start(now - (window_secs as i64) * 1000, width);
    let range = WindowRange { metric, width_ms: width, from, to: now + 1 };
    let wave = state
        .store
        .wave_windows(r.id, r.current_wave, &r.version, &range, MAX_WINDOWS)
        .await
        .map_err(|e| e.to_string())?;
    let (wave_value, wave_samples, wave_devices) = analysis::summarize(wave.iter().map(|(d, a)| (*d, a)), agg);
    let mut m = MetricMeasurement { wave_value, wave_samples, wave_devices, ..MetricMeasurement::default() };
    if relative {
        let base = state
            .store
            .baseline_windows(r.id, &r.target, r.current_wave, &r.version, &range, MAX_WINDOWS)
            .await
            .map_err(|e| e.to_string())?;
        (m.baseline_value, m.baseline_samples, m.baseline_devices) =
            analysis::summarize(base.iter().map(|(d, a)| (*d, a)), agg);
    }
    Ok(m)
}

/// Runs an instant query at `now` against Prometheus' HTTP API: the value of
/// a scalar or of a one-series vector, `None` for an empty vector, an error
/// for anything else (a failed request, an error answer, several series).
pub async fn prometheus(settings: &Settings, query: &str, now: Millis) -> Result<Option<f64>, String> {
    let base = settings.prometheus_url.as_deref().ok_or("no --prometheus-url is set")?;
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let time = format!("{:.3}", now as f64 / 1000.0);
    let resp = super::outbound_client()
        .get(&url)
        .query(&[("query", query), ("time", time.as_str())])
        .timeout(settings.prometheus_timeout)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body: serde_json::Value =
        resp.json().await.map_err(|e| format!("{url}: HTTP {status}, not a Prometheus answer: {e}"))?;
    parse_answer(&body).map_err(|e| if status.is_success() { e } else { format!("HTTP {status}: {e}") })
}

fn sample_value(v: &serde_json::Value) -> Result<f64, String> {
    // `[<unix time>, "<value>"]`; the value is a string so it can be NaN or ±Inf.
    let text = v.get(1).and_then(|x| x.as_str()).ok_or("a sample without a value")?;
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        t => t.parse().map_err(|_| format!("'{t}' is not a number")),
    }
}

/// The value of a Prometheus `/api/v1/query` answer (see [`prometheus`]).
pub fn parse_answer(body: &serde_json::Value) -> Result<Option<f64>, String> {
    if body.get("status").and_then(|s| s.as_str()) != Some("success") {
        let kind = body.get("errorType").and_then(|s| s.as_str()).unwrap_or("error");
        let msg = body.get("error").and_then(|s| s.as_str()).unwrap_or("no error message");
        return Err(format!("{kind}: {msg}"));
    }
    let data = body.get("data").ok_or("an answer without data")?;
    match data.get("resultType").and_then(|t| t.as_str()) {
        Some("scalar") => sample_value(data.get("result").ok_or("a scalar without a value")?).map(Some),
        Some("vector") => {
            let series = data.get("result").and_then(|r| r.as_array()).ok_or("a vector without a result")?;
            match series.as_slice() {
                [] => Ok(None),
                [one] => sample_value(one.get("value").ok_or("a series without a value")?).map(Some),
                many => Err(format!(
                    "the query returned {} series; a check needs one value: aggregate it, e.g. sum(…) or max(…)",
                    many.len()
                )),
            }
        }
        other => Err(format!(
            "the query returned a {}; a check needs a scalar or a one-series vector",
            other.unwrap_or("result of no type")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prometheus_answers_are_read_strictly() {
        let vector =
            |result: serde_json::Value| json!({"status":"success","data":{"resultType":"vector","result":result}});
        assert_eq!(parse_answer(&vector(json!([]))), Ok(None));
        assert_eq!(parse_answer(&vector(json!([{"metric":{},"value":[1.5,"0.25"]}]))), Ok(Some(0.25)));
        assert!(parse_answer(&vector(json!([{"metric":{},"value":[1.5,"NaN"]}]))).unwrap().unwrap().is_nan());
        assert_eq!(parse_answer(&vector(json!([{"metric":{},"value":[1.5,"+Inf"]}]))), Ok(Some(f64::INFINITY)));
        let two = vector(json!([{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]));
        assert!(parse_answer(&two).unwrap_err().contains("2 series"));
        let scalar = json!({"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}});
        assert_eq!(parse_answer(&scalar), Ok(Some(3.0)));
        let matrix = json!({"status":"success","data":{"resultType":"matrix","result":[]}});
        assert!(parse_answer(&matrix).unwrap_err().contains("matrix"));
        let err = json!({"status":"error","errorType":"bad_data","error":"parse error at char 5"});
        assert_eq!(parse_answer(&err), Err("bad_data: parse error at char 5".to_string()));
        assert!(parse_answer(&vector(json!([{"metric":{},"value":[1,"x"]}]))).unwrap_err().contains("not a number"));
    }

    #[test]
    fn checks_this_server_cannot_measure_are_named() {
        let specs: Vec<AnalysisSpec> = serde_json::from_value(json!([
            {"name":"t","kind":"metric","metric":"cpu_temp_c","agg":"max","window_secs":60,"condition":{"op":"<","threshold":80}},
            {"name":"p","kind":"prometheus","query":"up","condition":{"op":">","threshold":0}}
        ]))
        .unwrap();
        let none = Settings::default();
        let (field, message) = unsupported(&none, &specs).unwrap();
        assert_eq!(field, "strategy.analysis[1].kind");
        assert!(message.contains("--prometheus-url"));
        let with = Settings { prometheus_url: Some("http://127.0.0.1:9090".into()), ..Settings::default() };
        assert_eq!(unsupported(&with, &specs), None);
    }
}
