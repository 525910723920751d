//! `/api/v1/rollouts`: create, inspect and steer rollouts.

use super::auth::Caller;
use super::devices::validate_version;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::{parse_id, Page};
use crate::service::{self, CreateRollout, ReleaseRef};
use crate::time::{parse_rfc3339, rfc3339, rfc3339_opt};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use otafleet_core::{ActionState, RolloutState, StrategySpec};
use otafleet_store::{Action, ActionQuery, Role, Rollout, RolloutQuery, Target, WaveProgress};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Serialize, ToSchema)]
pub struct WaveView {
    pub wave: i64,
    pub total: i64,
    pub scheduled: i64,
    pub in_flight: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub rollbacks: i64,
    pub rolled_back: i64,
}

impl From<WaveProgress> for WaveView {
    fn from(w: WaveProgress) -> Self {
        WaveView {
            wave: w.wave,
            total: w.total,
            scheduled: w.scheduled,
            in_flight: w.in_flight,
            succeeded: w.succeeded,
            failed: w.failed,
            skipped: w.skipped,
            rollbacks: w.rollbacks,
            rolled_back: w.rolled_back,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RolloutView {
    pub id: i64,
    pub release_id: i64,
    pub version: String,
    /// `deploy` or `rollback`.
    pub kind: String,
    /// The preset asked for: `canary`, `blue`, `green` or `custom`.
    pub preset: String,
    /// The same preset under the original tracker's word; kept for existing clients.
    pub wave: String,
    #[schema(value_type = Object)]
    pub target: Target,
    #[schema(value_type = Object)]
    pub strategy: otafleet_core::Strategy,
    /// `pending`, `running`, `paused`, `succeeded`, `failed`, `aborted` or `rolled_back`.
    pub state: String,
    pub current_wave: i64,
    pub waves: i64,
    pub start_at: Option<String>,
    pub gate_passed_at: Option<String>,
    pub promote: bool,
    pub rollback_requested: bool,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// Per-wave counts (on single-rollout answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Vec<WaveView>>,
}

impl RolloutView {
    pub fn new(r: Rollout, progress: Option<Vec<WaveProgress>>) -> Self {
        RolloutView {
            id: r.id,
            release_id: r.release_id,
            version: r.version,
            kind: r.kind.as_str().to_string(),
            preset: r.preset.as_str().to_string(),
            wave: r.preset.as_str().to_string(),
            target: r.target,
            strategy: r.strategy,
            state: r.state.as_str().to_string(),
            current_wave: r.current_wave,
            waves: r.waves,
            start_at: rfc3339_opt(r.start_at),
            gate_passed_at: rfc3339_opt(r.gate_passed_at),
            promote: r.promote,
            rollback_requested: r.rollback_requested,
            reason: r.reason,
            created_by: r.created_by,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            finished_at: rfc3339_opt(r.finished_at),
            progress: progress.map(|p| p.into_iter().map(Into::into).collect()),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ActionView {
    pub id: i64,
    pub rollout_id: i64,
    pub device_id: Uuid,
    pub wave: i64,
    /// `install` or `rollback`.
    pub kind: String,
    pub state: String,
    pub from_version: Option<String>,
    pub to_version: String,
    pub attempts: i64,
    pub error: Option<String>,
    pub updated_at: String,
}

impl From<Action> for ActionView {
    fn from(a: Action) -> Self {
        ActionView {
            id: a.id,
            rollout_id: a.rollout_id,
            device_id: a.device_id,
            wave: a.wave,
            kind: a.kind.as_str().to_string(),
            state: a.state.as_str().to_string(),
            from_version: a.from_version,
            to_version: a.to_version,
            attempts: a.attempts,
            error: a.error,
            updated_at: rfc3339(a.updated_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRolloutBody {
    /// Release version (or give `release_id`).
    pub version: Option<String>,
    pub release_id: Option<i64>,
    /// Label selector of target devices (default: the whole fleet).
    pub selector: Option<String>,
    /// Explicit device ids instead of a selector.
    pub devices: Option<Vec<Uuid>>,
    /// Strategy: `{"wave": "canary"}`, `{"wave": "blue", "count": 5}`, `{"steps": [1, "10%", "100%"], "bake_time_secs": 300}`…
    #[schema(value_type = Object)]
    pub strategy: Option<StrategySpec>,
    /// RFC 3339 time before which the rollout does not start.
    pub start_at: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Filter by state.
    pub state: Option<String>,
    pub limit: Option<i64>,
    /// Cursor: the `next` value of the previous page.
    pub before: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ActionsQuery {
    pub state: Option<String>,
    pub limit: Option<i64>,
    pub after: Option<i64>,
}

async fn view(state: &AppState, r: Rollout) -> ApiResult<RolloutView> {
    let progress = state.store.wave_progress(r.id).await?;
    Ok(RolloutView::new(r, Some(progress)))
}

/// Create a rollout of a release over a selector or a list of devices.
#[utoipa::path(post, path = "/api/v1/rollouts", request_body = CreateRolloutBody,
    responses((status = 201, body = RolloutView), (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])), tag = "rollouts")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRolloutBody>,
) -> ApiResult<(StatusCode, Json<RolloutView>)> {
    caller.require(Role::Operator)?;
    let release = match (body.version, body.release_id) {
        (Some(v), None) => {
            validate_version("version", &v)?;
            ReleaseRef::Version(v)
        }
        (None, Some(id)) => ReleaseRef::Id(id),
        (Some(_), Some(_)) => return Err(ApiError::invalid("version", "give either version or release_id, not both")),
        (None, None) => return Err(ApiError::invalid("version", "a release version (or release_id) is required")),
    };
    let target = match (body.selector, body.devices) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("selector", "give either selector or devices, not both")),
        (_, Some(d)) if d.is_empty() => return Err(ApiError::invalid("devices", "must not be empty")),
        (_, Some(d)) if d.len() > 100_000 => return Err(ApiError::invalid("devices", "at most 100000 devices")),
        (_, Some(d)) => Target::Devices(d),
        (s, None) => Target::Selector(s.unwrap_or_default()),
    };
    let start_at =
        body.start_at.as_deref().map(parse_rfc3339).transpose().map_err(|m| ApiError::invalid("start_at", m))?;
    let r = service::create_rollout(
        &state,
        CreateRollout {
            release,
            kind: otafleet_core::RolloutKind::Deploy,
            target,
            strategy: body.strategy.unwrap_or_default(),
            start_at,
            actor: caller.actor(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(&state, r).await?)))
}

/// List rollouts, newest first.
#[utoipa::path(get, path = "/api/v1/rollouts", params(ListQuery),
    responses((status = 200, body = Page<RolloutView>), (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])), tag = "rollouts")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<RolloutView>>> {
    caller.require(Role::Viewer)?;
    let st = q
        .state
        .as_deref()
        .map(str::parse::<RolloutState>)
        .transpose()
        .map_err(|e| ApiError::invalid("state", e.to_string()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let rs = state.store.list_rollouts(&RolloutQuery { state: st, before: q.before, limit }).await?;
    let next = (rs.len() as i64 == limit).then(|| rs.last().map(|r| r.id.to_string())).flatten();
    Ok(Json(Page { items: rs.into_iter().map(|r| RolloutView::new(r, None)).collect(), next }))
}

async fn load(state: &AppState, raw: &str) -> ApiResult<Rollout> {
    let id = parse_id(raw, "rollout")?;
    state.store.get_rollout(id).await?.ok_or_else(|| ApiError::not_found(format!("rollout {id} not found")))
}

/// Get one rollout with per-wave progress.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutView), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])), tag = "rollouts")]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    caller.require(Role::Viewer)?;
    let r = load(&state, &id).await?;
    Ok(Json(view(&state, r).await?))
}

/// The per-device actions of a rollout.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}/actions", params(("id" = i64, Path), ActionsQuery),
    responses((status = 200, body = Page<ActionView>), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])), tag = "rollouts")]
pub async fn actions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ActionsQuery>,
) -> ApiResult<Json<Page<ActionView>>> {
    caller.require(Role::Viewer)?;
    let r = load(&state, &id).await?;
    let st = q
        .state
        .as_deref()
        .map(str::parse::<ActionState>)
        .transpose()
        .map_err(|e| ApiError::invalid("state", e.to_string()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 10000"));
    }
    let acts = state
        .store
        .list_actions(&ActionQuery { rollout_id: Some(r.id), device_id: None, state: st, after: q.after, limit })
        .await?;
    let next = (acts.len() as i64 == limit).then(|| acts.last().map(|a| a.id.to_string())).flatten();
    Ok(Json(Page { items: acts.into_iter().map(Into::into).collect(), next }))
}

async fn control(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    to: RolloutState,
    reason: &str,
) -> ApiResult<Json<RolloutView>> {
    caller.require(Role::Operator)?;
    let r = load(state, raw).await?;
    let r = state
        .store
        .set_rollout_state(r.id, to, Some(&format!("{reason} by {}", caller.actor())), &caller.actor())
        .await?;
    state.driver_wake.notify_one();
    Ok(Json(view(state, r).await?))
}

/// Pause: no new device starts; devices in flight finish.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/pause", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutView), (status = 409, body = super::error::ErrorBody)), security(("bearer" = [])), tag = "rollouts")]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    control(&state, &caller, &id, RolloutState::Paused, "paused").await
}

/// Resume a paused rollout.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutView), (status = 409, body = super::error::ErrorBody)), security(("bearer" = [])), tag = "rollouts")]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    control(&state, &caller, &id, RolloutState::Running, "resumed").await
}

/// Abort: scheduled devices are skipped; updated devices are rolled back unless auto_rollback is off.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/abort", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutView), (status = 409, body = super::error::ErrorBody)), security(("bearer" = [])), tag = "rollouts")]
pub async fn abort(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    control(&state, &caller, &id, RolloutState::Aborted, "aborted").await
}

/// Promote: skip the remaining bake time of the current wave.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/promote", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutView), (status = 409, body = super::error::ErrorBody)), security(("bearer" = [])), tag = "rollouts")]
pub async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    caller.require(Role::Operator)?;
    let r = load(&state, &id).await?;
    let r = state.store.promote_rollout(r.id, &caller.actor()).await?;
    state.driver_wake.notify_one();
    Ok(Json(view(&state, r).await?))
}

/// Roll back every device this rollout updated (aborting it if still active).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/rollback", params(("id" = i64, Path)),
    responses((status = 200, body = RolloutView), (status = 409, body = super::error::ErrorBody)), security(("bearer" = [])), tag = "rollouts")]
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutView>> {
    caller.require(Role::Operator)?;
    let r = load(&state, &id).await?;
    let r = state.store.rollback_rollout(r.id, &caller.actor()).await?;
    state.driver_wake.notify_one();
    Ok(Json(view(&state, r).await?))
}
