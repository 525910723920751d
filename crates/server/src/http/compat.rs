//! The original OTA Deploy Tracker's API, kept path for path and field for
//! field so its Python CLI and job runner keep working. A tracker "job" is a
//! rollout; this module is the one place where the two vocabularies meet.
//!
//! | tracker status      | rollout                         |
//! |---------------------|---------------------------------|
//! | `pending`           | deploy, `pending`               |
//! | `rollback_pending`  | rollback, `pending`             |
//! | `complete`          | deploy, `succeeded`             |
//! | `rollback_complete` | rollback, `succeeded`           |
//! | other               | the rollout state (`running`, `failed`, …) |

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use crate::service::{self, CreateRollout, ReleaseRef};
use crate::time::rfc3339;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use otafleet_api::tracker::{
    DeployQuery, DeployResponse, Health, Job, RollbackQuery, RollbackResponse, UpdateStatusQuery, UpdateStatusResponse,
};
use otafleet_core::{Preset, RolloutKind, RolloutState, StrategySpec};
use otafleet_store::{Role, Target};

/// The tracker's status word for a rollout.
pub fn job_status(kind: RolloutKind, state: RolloutState) -> &'static str {
    match (kind, state) {
        (RolloutKind::Rollback, RolloutState::Pending) => "rollback_pending",
        (RolloutKind::Rollback, RolloutState::Succeeded) => "rollback_complete",
        (_, RolloutState::Pending) => "pending",
        (_, RolloutState::Succeeded) => "complete",
        (_, s) => s.as_str(),
    }
}

/// The rollout state a tracker status word asks for.
pub fn state_for_status(status: &str) -> Option<RolloutState> {
    Some(match status.to_ascii_lowercase().as_str() {
        "complete" | "completed" | "success" | "successful" | "succeeded" | "done" | "rollback_complete" => {
            RolloutState::Succeeded
        }
        "failed" | "failure" | "error" => RolloutState::Failed,
        "aborted" | "cancelled" | "canceled" => RolloutState::Aborted,
        "running" | "in_progress" | "resumed" => RolloutState::Running,
        "paused" => RolloutState::Paused,
        "pending" | "rollback_pending" => RolloutState::Pending,
        _ => return None,
    })
}

fn check(state: &AppState, caller: &Caller, role: Role) -> ApiResult<()> {
    if state.config.open_compat {
        Ok(())
    } else {
        caller.require(role)
    }
}

fn parse_wave(w: Option<&str>, default: Preset) -> ApiResult<Preset> {
    match w {
        None => Ok(default),
        Some(w) => match w.parse::<Preset>() {
            Ok(Preset::Custom) | Err(_) => {
                Err(ApiError::invalid("wave", format!("unknown wave '{w}', expected canary, blue or green")))
            }
            Ok(w) => Ok(w),
        },
    }
}

fn non_empty_version(v: &str) -> ApiResult<()> {
    super::validate::version("version", v)
}

/// Health check (always open).
#[utoipa::path(get, operation_id = "trackerHealth", path = "/", responses((status = 200, body = Health), (status = 503, body = super::error::ErrorBody)), tag = "tracker")]
pub async fn health(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    state.store.ping().await.map_err(|e| {
        tracing::error!(error = %e, "database ping failed");
        ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "unavailable", "database unavailable")
    })?;
    Ok(Json(Health {
        msg: "OTA Deploy Tracker Running".into(),
        service: "otafleet".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }))
}

/// Create a job: a rollout of that version over the whole fleet with that wave.
#[utoipa::path(post, operation_id = "trackerDeploy", path = "/ota/deploy", params(DeployQuery),
    responses((status = 200, body = DeployResponse), super::error::doc::AuthErrors, super::error::doc::QueryErrors), security(("bearer" = [])), tag = "tracker")]
pub async fn deploy(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DeployQuery>,
) -> ApiResult<Json<DeployResponse>> {
    check(&state, &caller, Role::Operator)?;
    non_empty_version(&q.version)?;
    let wave = parse_wave(q.wave.as_deref(), Preset::Canary)?;
    let r = service::create_rollout(
        &state,
        CreateRollout {
            release: ReleaseRef::EnsureVersion(q.version.clone()),
            kind: RolloutKind::Deploy,
            target: Target::Selector(String::new()),
            strategy: StrategySpec::preset(wave),
            start_at: None,
            actor: caller.actor(),
            executor: otafleet_core::Executor::Driver,
            keep_if_empty: true,
        },
    )
    .await?;
    Ok(Json(DeployResponse {
        job_id: r.id,
        version: r.version,
        status: job_status(r.kind, r.state).to_string(),
        wave: r.preset.as_str().to_string(),
    }))
}

/// All jobs, newest first. Rendered once per change of the event log and
/// served with an ETag, so pollers that send `If-None-Match` get a 304.
#[utoipa::path(get, operation_id = "trackerJobs", path = "/ota/jobs", responses((status = 200, body = Vec<Job>), (status = 304), super::error::doc::AuthErrors), security(("bearer" = [])), tag = "tracker")]
pub async fn jobs(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    check(&state, &caller, Role::Viewer)?;
    let validator = state.store.last_event_id().await?;
    let etag = format!("W/\"jobs-{validator}\"");
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let body = match state.caches.jobs(validator) {
        Some(b) => b,
        None => {
            let jobs: Vec<Job> = state
                .store
                .rollout_summaries()
                .await?
                .into_iter()
                .map(|r| Job {
                    id: r.id,
                    version: r.version,
                    wave: r.preset.as_str().to_string(),
                    status: job_status(r.kind, r.state).to_string(),
                    created_at: rfc3339(r.created_at),
                })
                .collect();
            let b = axum::body::Bytes::from(serde_json::to_vec(&jobs).map_err(ApiError::internal)?);
            state.caches.set_jobs(validator, b.clone());
            b
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json".to_string()), (header::ETAG, etag)], body).into_response())
}

/// Set a job's status (used by the tracker's external job runner). A job the
/// driver runs (one with devices of ours) answers 409.
#[utoipa::path(post, operation_id = "trackerUpdateStatus", path = "/ota/update_status", params(UpdateStatusQuery),
    responses((status = 200, body = UpdateStatusResponse), (status = 404, body = super::error::ErrorBody),
    (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors, super::error::doc::QueryErrors), security(("bearer" = [])), tag = "tracker")]
pub async fn update_status(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UpdateStatusQuery>,
) -> ApiResult<Json<UpdateStatusResponse>> {
    check(&state, &caller, Role::Operator)?;
    let to = state_for_status(&q.status).ok_or_else(|| {
        ApiError::invalid(
            "status",
            format!("unknown status '{}', expected e.g. complete, failed, aborted, running, paused", q.status),
        )
    })?;
    let r = state
        .store
        .get_rollout(q.job_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Job not found: {}", q.job_id)))?;
    if r.waves > 0 {
        // Its devices report their own progress and the driver decides its
        // state: an outside word would end it with actions still in flight.
        return Err(ApiError::conflict(format!(
            "job {} is run by otafleet's rollout driver, whose devices report their own progress; \
             update_status is for jobs of an external executor (steer this one with \
             /api/v1/rollouts/{}/pause, /resume, /abort or /rollback)",
            r.id, r.id
        )));
    }
    let r = if r.state == to {
        r
    } else {
        state
            .store
            .set_rollout_state(r.id, to, Some(&format!("status '{}' reported", q.status)), &caller.actor())
            .await?
    };
    state.driver_wake.notify_one();
    Ok(Json(UpdateStatusResponse {
        status: "success".into(),
        job_id: r.id,
        new_status: job_status(r.kind, r.state).to_string(),
    }))
}

/// Roll devices back to `version`: a rollback job over the wave's scope.
/// Its waves are planned like a deploy's, and every device gets a signed
/// *rollback* order (`protocol::order_kind`), the same kind as the engine's
/// automatic rollback actions, so real agents go back even to an older
/// version than the newest they ever installed.
#[utoipa::path(post, operation_id = "trackerRollback", path = "/ota/rollback", params(RollbackQuery),
    responses((status = 200, body = RollbackResponse), super::error::doc::AuthErrors, super::error::doc::QueryErrors), security(("bearer" = [])), tag = "tracker")]
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RollbackQuery>,
) -> ApiResult<Json<RollbackResponse>> {
    check(&state, &caller, Role::Operator)?;
    non_empty_version(&q.version)?;
    let wave = parse_wave(q.wave.as_deref(), Preset::Green)?;
    let r = service::create_rollout(
        &state,
        CreateRollout {
            release: ReleaseRef::EnsureVersion(q.version.clone()),
            kind: RolloutKind::Rollback,
            target: Target::Selector(String::new()),
            strategy: StrategySpec { auto_rollback: Some(false), ..StrategySpec::preset(wave) },
            start_at: None,
            actor: caller.actor(),
            executor: otafleet_core::Executor::Driver,
            keep_if_empty: true,
        },
    )
    .await?;
    Ok(Json(RollbackResponse {
        job_id: r.id,
        version: r.version,
        status: job_status(r.kind, r.state).to_string(),
        kind: "rollback".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_words_map_both_ways() {
        assert_eq!(job_status(RolloutKind::Deploy, RolloutState::Pending), "pending");
        assert_eq!(job_status(RolloutKind::Rollback, RolloutState::Pending), "rollback_pending");
        assert_eq!(job_status(RolloutKind::Deploy, RolloutState::Succeeded), "complete");
        assert_eq!(job_status(RolloutKind::Rollback, RolloutState::Succeeded), "rollback_complete");
        assert_eq!(job_status(RolloutKind::Deploy, RolloutState::RolledBack), "rolled_back");
        // What the original job runner sends is understood.
        assert_eq!(state_for_status("complete"), Some(RolloutState::Succeeded));
        assert_eq!(state_for_status("rollback_complete"), Some(RolloutState::Succeeded));
        assert_eq!(state_for_status("FAILED"), Some(RolloutState::Failed));
        assert_eq!(state_for_status("whatever"), None);
        // Every state renders, and what renders parses back to the same state.
        for s in RolloutState::ALL {
            let word = job_status(RolloutKind::Deploy, *s);
            if let Some(back) = state_for_status(word) {
                assert_eq!(back, *s, "{word}");
            }
        }
    }

    #[test]
    fn waves_of_the_tracker_only() {
        assert_eq!(parse_wave(None, Preset::Canary).unwrap(), Preset::Canary);
        assert_eq!(parse_wave(Some("blue"), Preset::Canary).unwrap(), Preset::Blue);
        assert_eq!(parse_wave(Some("custom"), Preset::Canary).unwrap_err().field.as_deref(), Some("wave"));
        assert_eq!(parse_wave(Some("purple"), Preset::Canary).unwrap_err().field.as_deref(), Some("wave"));
    }
}
