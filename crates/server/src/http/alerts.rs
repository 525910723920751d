//! `/api/v1/alerts`: alert rules (operators create and delete them, viewers
//! read them) and the alerts pending or firing. Evaluating them is
//! `service::alerts`; their history is the `alert.*` events.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::{parse_id, Page};
use crate::time::rfc3339;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use otafleet_api::{self as api, AlertListQuery, CreateAlertRule};
use otafleet_core::alert::{AlertRule, AlertState, Op, Scope, Severity};
use otafleet_core::telemetry::Agg;
use otafleet_core::Selector;
use otafleet_store::{AlertRecord, AlertRuleRecord, NewAlertRule, Role};

/// Rules one server keeps at most.
pub const MAX_RULES: usize = 1000;

pub fn rule_view(r: AlertRuleRecord) -> api::AlertRule {
    let rule = r.rule;
    api::AlertRule {
        id: r.id,
        name: r.name,
        selector: r.selector,
        metric: rule.metric,
        agg: rule.agg.to_string(),
        window_secs: rule.window_secs,
        op: rule.op.to_string(),
        threshold: rule.threshold,
        clear: rule.clear,
        for_secs: rule.for_secs,
        severity: rule.severity.to_string(),
        scope: rule.scope.to_string(),
        no_data_secs: rule.no_data_secs,
        created_by: r.created_by,
        created_at: rfc3339(r.created_at),
    }
}

pub fn alert_view(a: AlertRecord) -> api::Alert {
    let (state, since, cause) = match a.state {
        AlertState::Pending { since } => ("pending", since, None),
        AlertState::Firing { since, cause } => ("firing", since, Some(cause.to_string())),
        AlertState::Inactive => ("inactive", a.updated_at, None),
    };
    api::Alert {
        rule_id: a.rule_id,
        rule: a.rule_name,
        severity: a.severity.to_string(),
        device_id: a.device_id,
        state: state.to_string(),
        since: rfc3339(since),
        cause,
        value: a.value,
    }
}

/// The name a rule gets when none is given: `cpu_temp_c-max-gt-80`.
fn default_name(b: &CreateAlertRule) -> String {
    let op = match b.op.trim() {
        ">" => "gt",
        ">=" => "ge",
        "<" => "lt",
        "<=" => "le",
        _ => "op",
    };
    let threshold = b.threshold.to_string().replace(['-', '.'], "_");
    let mut name = format!("{}-{}-{op}-{threshold}", b.metric, b.agg.trim());
    name.retain(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    name.chars().take(63).collect()
}

/// The request as a core rule, every field checked and named.
fn to_rule(b: &CreateAlertRule) -> Result<AlertRule, ApiError> {
    let agg: Agg =
        b.agg.trim().parse().map_err(|e: otafleet_core::telemetry::ParseAggError| ApiError::invalid("agg", e.0))?;
    let op = b.op.trim().parse::<Op>().map_err(|e| ApiError::invalid("op", e.to_string()))?;
    let severity = match &b.severity {
        Some(s) => s.trim().parse::<Severity>().map_err(|e| ApiError::invalid("severity", e.to_string()))?,
        None => Severity::default(),
    };
    let scope = match &b.scope {
        Some(s) => s.trim().parse::<Scope>().map_err(|e| ApiError::invalid("scope", e.to_string()))?,
        None => Scope::default(),
    };
    let rule = AlertRule {
        metric: b.metric.trim().to_string(),
        agg,
        window_secs: b.window_secs,
        op,
        threshold: b.threshold,
        clear: b.clear,
        for_secs: b.for_secs.unwrap_or(0),
        severity,
        scope,
        no_data_secs: b.no_data_secs,
    };
    rule.validate().map_err(|e| ApiError::invalid(&e.field, e.message))?;
    Ok(rule)
}

/// Create an alert rule (operator). It is evaluated from the next
/// evaluation on, by the replica that drives rollouts.
#[utoipa::path(post, operation_id = "createAlertRule", path = "/api/v1/alerts/rules", request_body = CreateAlertRule,
    responses((status = 201, body = api::AlertRule),
        (status = 409, description = "the name is taken, or the server keeps 1,000 rules", body = super::error::ErrorBody),
        super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "alerts")]
pub async fn create_rule(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateAlertRule>,
) -> ApiResult<(StatusCode, Json<api::AlertRule>)> {
    caller.require(Role::Operator)?;
    let rule = to_rule(&body)?;
    let name = body.name.clone().map(|n| n.trim().to_string()).unwrap_or_else(|| default_name(&body));
    otafleet_core::validate::identifier(&name).map_err(|m| ApiError::invalid("name", m))?;
    let selector = body.selector.as_deref().unwrap_or("").trim().to_string();
    let parsed = Selector::parse(&selector).map_err(|e| ApiError::invalid("selector", e.to_string()))?;
    if state.store.list_alert_rules().await?.len() >= MAX_RULES {
        return Err(ApiError::conflict(format!("at most {MAX_RULES} alert rules; delete one first")));
    }
    let actor = caller.actor();
    let printed = parsed.to_string();
    let r = state
        .store
        .create_alert_rule(&NewAlertRule { name: &name, selector: &printed, rule: &rule, created_by: &actor })
        .await?;
    tracing::info!(rule = r.id, name = %r.name, by = %actor, "alert rule created");
    Ok((StatusCode::CREATED, Json(rule_view(r))))
}

/// Every alert rule, oldest first (`next` is always `null`).
#[utoipa::path(get, operation_id = "listAlertRules", path = "/api/v1/alerts/rules",
    responses((status = 200, body = Page<api::AlertRule>), super::error::doc::AuthErrors), security(("bearer" = [])), tag = "alerts")]
pub async fn list_rules(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Page<api::AlertRule>>> {
    caller.require(Role::Viewer)?;
    let items = state.store.list_alert_rules().await?.into_iter().map(rule_view).collect();
    Ok(Json(Page { items, next: None }))
}

/// One alert rule.
#[utoipa::path(get, operation_id = "getAlertRule", path = "/api/v1/alerts/rules/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = api::AlertRule), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "alerts")]
pub async fn get_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::AlertRule>> {
    caller.require(Role::Viewer)?;
    let id = parse_id(&id, "alert rule")?;
    let r = state
        .store
        .get_alert_rule(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("alert rule {id} not found")))?;
    Ok(Json(rule_view(r)))
}

/// Delete an alert rule (operator) and its alerts.
#[utoipa::path(delete, operation_id = "deleteAlertRule", path = "/api/v1/alerts/rules/{id}", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "alerts")]
pub async fn delete_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    let id = parse_id(&id, "alert rule")?;
    match state.store.delete_alert_rule(id, &caller.actor()).await? {
        Some(r) => {
            tracing::info!(rule = r.id, name = %r.name, by = %caller.actor(), "alert rule deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::not_found(format!("alert rule {id} not found"))),
    }
}

/// The alerts pending or firing, firing first (`next` is always `null`).
/// Their history: `GET /api/v1/events?kind=alert.firing` and the other `alert.*` kinds.
#[utoipa::path(get, operation_id = "listAlerts", path = "/api/v1/alerts", params(AlertListQuery),
    responses((status = 200, body = Page<api::Alert>), super::error::doc::AuthErrors, super::error::doc::QueryErrors),
    security(("bearer" = [])), tag = "alerts")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AlertListQuery>,
) -> ApiResult<Json<Page<api::Alert>>> {
    caller.require(Role::Viewer)?;
    let wanted = match q.state.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s @ ("firing" | "pending")) => Some(s.to_string()),
        Some(other) => return Err(ApiError::invalid("state", format!("'{other}' is not firing or pending"))),
    };
    let items = state
        .store
        .list_alerts(q.rule_id, wanted.as_deref() == Some("firing"))
        .await?
        .into_iter()
        .map(alert_view)
        .filter(|a| wanted.as_deref().is_none_or(|w| a.state == w))
        .collect();
    Ok(Json(Page { items, next: None }))
}
