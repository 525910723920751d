//! `/api/v1/rollouts`: create, inspect and steer rollouts.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::validate;
use super::{parse_id, Page};
use crate::service::{self, CreateRollout, ReleaseRef};
use crate::time::{parse_rfc3339, rfc3339, rfc3339_opt};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use otafleet_api::{self as api, ActionListQuery, RolloutListQuery};
use otafleet_core::effects::Command;
use otafleet_core::{ActionState, RolloutState};
use otafleet_store::{Action, ActionQuery, Role, Rollout, RolloutQuery, Target, WaveProgress};

fn wave_view(w: WaveProgress) -> api::WaveProgress {
    api::WaveProgress {
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

fn target_view(t: Target) -> api::RolloutTarget {
    match t {
        Target::Selector(s) => api::RolloutTarget::Selector(s),
        Target::Devices(d) => api::RolloutTarget::Devices(d),
    }
}

/// A stored rollout as the API answers it; `progress` only on single-rollout answers.
pub fn rollout_view(r: Rollout, progress: Option<Vec<WaveProgress>>) -> api::Rollout {
    let analysis = analysis_view(&r);
    api::Rollout {
        id: r.id,
        release_id: r.release_id,
        version: r.version,
        kind: r.kind,
        preset: r.preset,
        wave: r.preset,
        target: target_view(r.target),
        strategy: r.strategy,
        state: r.state,
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
        progress: progress.map(|p| p.into_iter().map(wave_view).collect()),
        analysis,
    }
}

/// The current wave's checks, as the engine reads them.
fn analysis_view(r: &Rollout) -> Vec<api::AnalysisCheck> {
    use otafleet_core::analysis::{AnalysisRun, Verdict};
    let (wave, waves) = (r.current_wave.max(0) as usize, r.waves.max(0) as usize);
    r.strategy
        .analysis
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let run =
                r.gate_passed_at.map(|p| r.analysis.get(i).cloned().unwrap_or_else(|| AnalysisRun::start(spec, p)));
            let applies = otafleet_core::engine::check_applies(wave, waves, r.covers_target, spec);
            let (verdict, next_at) = match run.as_ref().map(|run| run.verdict(spec)) {
                _ if !applies => ("not_applicable", None),
                None => ("waiting", None),
                // Nothing more will be measured.
                Some(Verdict::Running { .. }) if !r.state.is_active() => ("cancelled", None),
                Some(Verdict::Running { next_at }) => ("running", Some(rfc3339(next_at))),
                Some(Verdict::Succeeded) => ("succeeded", None),
                Some(Verdict::Failed { .. }) => ("failed", None),
                Some(Verdict::Inconclusive { .. }) => ("inconclusive", None),
            };
            let run = run.unwrap_or_default();
            let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
            let last = run.last.map(|d| api::AnalysisMeasurement {
                observed: finite(d.observed),
                threshold: finite(d.threshold),
                baseline: finite(d.baseline),
                samples: d.samples,
                devices: d.devices,
                reason: d.reason,
            });
            api::AnalysisCheck {
                name: spec.name.clone(),
                kind: spec.kind.name().to_string(),
                condition: spec.condition_text(),
                verdict: verdict.to_string(),
                passed: run.passed,
                failed: run.failed,
                inconclusive: run.inconclusive,
                next_at,
                last_problem: run.last_problem,
                last,
            }
        })
        .collect()
}

/// A stored action as the API answers it.
pub fn action_view(a: Action) -> api::Action {
    api::Action {
        id: a.id,
        rollout_id: a.rollout_id,
        device_id: a.device_id,
        wave: a.wave,
        kind: a.kind,
        state: a.state,
        from_version: a.from_version,
        to_version: a.to_version,
        attempts: a.attempts,
        error: a.error,
        updated_at: rfc3339(a.updated_at),
    }
}

async fn view(state: &AppState, r: Rollout) -> ApiResult<api::Rollout> {
    let progress = state.store.wave_progress(r.id).await?;
    Ok(rollout_view(r, Some(progress)))
}

/// Create a rollout of a release over a selector or a list of devices.
#[utoipa::path(post, operation_id = "createRollout", path = "/api/v1/rollouts", request_body = api::CreateRollout,
    responses((status = 201, body = api::Rollout), super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "rollouts")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<api::CreateRollout>,
) -> ApiResult<(StatusCode, Json<api::Rollout>)> {
    caller.require(Role::Operator)?;
    let release = match (body.version, body.release_id) {
        (Some(v), None) => {
            validate::version("version", &v)?;
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
            executor: body.executor.unwrap_or(otafleet_core::Executor::Driver),
            keep_if_empty: false,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(&state, r).await?)))
}

/// List rollouts, newest first.
#[utoipa::path(get, operation_id = "listRollouts", path = "/api/v1/rollouts", params(RolloutListQuery),
    responses((status = 200, body = Page<api::Rollout>), super::error::doc::AuthErrors, super::error::doc::QueryErrors),
    security(("bearer" = [])), tag = "rollouts")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RolloutListQuery>,
) -> ApiResult<Json<Page<api::Rollout>>> {
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
    let rs = state
        .store
        .list_rollouts(&RolloutQuery { state: st, release_id: q.release_id, before: q.before, limit })
        .await?;
    let next = (rs.len() as i64 == limit).then(|| rs.last().map(|r| r.id.to_string())).flatten();
    Ok(Json(Page { items: rs.into_iter().map(|r| rollout_view(r, None)).collect(), next }))
}

async fn load(state: &AppState, raw: &str) -> ApiResult<Rollout> {
    let id = parse_id(raw, "rollout")?;
    state.store.get_rollout(id).await?.ok_or_else(|| ApiError::not_found(format!("rollout {id} not found")))
}

/// Get one rollout with per-wave progress.
#[utoipa::path(get, operation_id = "getRollout", path = "/api/v1/rollouts/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = api::Rollout), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "rollouts")]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Rollout>> {
    caller.require(Role::Viewer)?;
    let r = load(&state, &id).await?;
    Ok(Json(view(&state, r).await?))
}

/// The per-device actions of a rollout.
#[utoipa::path(get, operation_id = "listRolloutActions", path = "/api/v1/rollouts/{id}/actions", params(("id" = i64, Path), ActionListQuery),
    responses((status = 200, body = Page<api::Action>), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors, super::error::doc::QueryErrors),
    security(("bearer" = [])), tag = "rollouts")]
pub async fn actions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ActionListQuery>,
) -> ApiResult<Json<Page<api::Action>>> {
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
    Ok(Json(Page { items: acts.into_iter().map(action_view).collect(), next }))
}

/// An operator's command on a rollout: `core::effects::command` decides, the
/// store applies, the driver looks again.
async fn control(state: &AppState, caller: &Caller, raw: &str, command: Command<'_>) -> ApiResult<Json<api::Rollout>> {
    caller.require(Role::Operator)?;
    let r = load(state, raw).await?;
    let r = state.store.steer_rollout(r.id, command, &caller.actor()).await?;
    state.driver_wake.notify_one();
    Ok(Json(view(state, r).await?))
}

/// Pause: no new device starts; devices in flight finish.
#[utoipa::path(post, operation_id = "pauseRollout", path = "/api/v1/rollouts/{id}/pause", params(("id" = i64, Path)),
    responses((status = 200, body = api::Rollout), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors), security(("bearer" = [])), tag = "rollouts")]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Rollout>> {
    let reason = format!("paused by {}", caller.actor());
    control(&state, &caller, &id, Command::SetState { to: RolloutState::Paused, reason: Some(&reason) }).await
}

/// Resume a paused rollout.
#[utoipa::path(post, operation_id = "resumeRollout", path = "/api/v1/rollouts/{id}/resume", params(("id" = i64, Path)),
    responses((status = 200, body = api::Rollout), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors), security(("bearer" = [])), tag = "rollouts")]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Rollout>> {
    let reason = format!("resumed by {}", caller.actor());
    control(&state, &caller, &id, Command::SetState { to: RolloutState::Running, reason: Some(&reason) }).await
}

/// Abort: scheduled devices are skipped; updated devices are rolled back unless auto_rollback is off.
#[utoipa::path(post, operation_id = "abortRollout", path = "/api/v1/rollouts/{id}/abort", params(("id" = i64, Path)),
    responses((status = 200, body = api::Rollout), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors), security(("bearer" = [])), tag = "rollouts")]
pub async fn abort(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Rollout>> {
    let reason = format!("aborted by {}", caller.actor());
    control(&state, &caller, &id, Command::SetState { to: RolloutState::Aborted, reason: Some(&reason) }).await
}

/// Promote: skip the remaining bake time of the current wave.
#[utoipa::path(post, operation_id = "promoteRollout", path = "/api/v1/rollouts/{id}/promote", params(("id" = i64, Path)),
    responses((status = 200, body = api::Rollout), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors), security(("bearer" = [])), tag = "rollouts")]
pub async fn promote(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Rollout>> {
    control(&state, &caller, &id, Command::Promote).await
}

/// Roll back every device this rollout updated (aborting it if still active).
#[utoipa::path(post, operation_id = "rollbackRollout", path = "/api/v1/rollouts/{id}/rollback", params(("id" = i64, Path)),
    responses((status = 200, body = api::Rollout), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors), security(("bearer" = [])), tag = "rollouts")]
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Rollout>> {
    control(&state, &caller, &id, Command::Rollback).await
}
