//! `/api/v1/telemetry`: the fleet's measurements, merged per group and step
//! (see `service::telemetry`).

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use crate::service::telemetry::{self, GroupBy, Query};
use crate::time::{parse_rfc3339, rfc3339};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use otafleet_api::{TelemetryAnswer, TelemetryPoint, TelemetryQuery, TelemetrySeries};
use otafleet_core::telemetry::{validate_metric_name, Agg};
use otafleet_core::Selector;
use otafleet_store::Role;

/// Most points one series may have.
pub const MAX_POINTS: i64 = 10_000;

/// Aggregate a metric over the devices a selector matches, per step and group.
#[utoipa::path(get, operation_id = "queryTelemetry", path = "/api/v1/telemetry/query", params(TelemetryQuery),
    responses((status = 200, body = TelemetryAnswer), super::error::doc::AuthErrors, super::error::doc::QueryErrors),
    security(("bearer" = [])), tag = "telemetry")]
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TelemetryQuery>,
) -> ApiResult<Json<TelemetryAnswer>> {
    caller.require(Role::Viewer)?;
    validate_metric_name(&q.metric).map_err(|m| ApiError::invalid("metric", m))?;
    let selector = match q.selector.as_deref() {
        Some(s) => Selector::parse(s).map_err(|e| ApiError::invalid("selector", e.to_string()))?,
        None => Selector::default(),
    };
    let now = otafleet_store::now_ms();
    let to = match q.to.as_deref() {
        Some(t) => parse_rfc3339(t).map_err(|m| ApiError::invalid("to", m))?,
        None => now,
    };
    let from = match q.from.as_deref() {
        Some(t) => parse_rfc3339(t).map_err(|m| ApiError::invalid("from", m))?,
        None => to - 3_600_000,
    };
    if from >= to {
        return Err(ApiError::invalid("from", "must be before to"));
    }
    let step = otafleet_core::duration::parse(q.step.as_deref().unwrap_or("1m"))
        .map_err(|e| ApiError::invalid("step", e.to_string()))?;
    let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX);
    if step_ms < 1_000 {
        return Err(ApiError::invalid("step", "must be at least 1s"));
    }
    if (to - from) / step_ms > MAX_POINTS {
        return Err(ApiError::invalid("step", format!("gives more than {MAX_POINTS} points over from..to")));
    }
    let agg: Agg = match q.agg.as_deref() {
        Some(a) => a.parse().map_err(|e: otafleet_core::telemetry::ParseAggError| ApiError::invalid("agg", e.0))?,
        None => Agg::Avg,
    };
    let by = GroupBy::parse(q.by.as_deref()).map_err(|m| ApiError::invalid("by", m))?;
    let query = Query { metric: q.metric.clone(), selector, from, to, step_ms, agg, by };
    let answer = telemetry::query(&state, &query, now).await?.map_err(|(field, m)| ApiError::invalid(field, m))?;
    Ok(Json(TelemetryAnswer {
        metric: q.metric,
        agg: agg.to_string(),
        step_secs: (step_ms / 1000) as u64,
        resolution_secs: (answer.resolution_ms / 1000) as u64,
        series: answer
            .series
            .into_iter()
            .map(|s| TelemetrySeries {
                group: s.group,
                points: s
                    .points
                    .into_iter()
                    .map(|p| TelemetryPoint {
                        t: rfc3339(p.t),
                        value: p.value,
                        samples: p.samples,
                        devices: p.devices as u64,
                    })
                    .collect(),
            })
            .collect(),
    }))
}
