//! `/device/v1`: the device protocol. A device authenticates with its own
//! token and can only see and report on its own actions.

use super::auth::bearer;
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::cache::Inbox;
use crate::AppState;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::Json;
use otafleet_core::protocol::{CheckinRequest, CheckinResponse, StatusAck, StatusReport};
use otafleet_core::DeviceHealth;
use otafleet_store::{ReportOutcome, StoreError};
use uuid::Uuid;

/// The id of the device a request comes from.
pub struct DeviceCaller(pub Uuid);

impl FromRequestParts<AppState> for DeviceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let secret = bearer(parts)?.ok_or_else(|| ApiError::unauthorized("a device token is required"))?;
        match state.caches.device_id(&state.store, secret).await? {
            Some(d) => Ok(DeviceCaller(d)),
            None => Err(ApiError::unauthorized("unknown device token")),
        }
    }
}

/// Check in: report the running version and health; get the action to perform, if any.
///
/// The common case — the device runs the version we know — is answered from
/// the caches (on PostgreSQL with one indexed read); last-seen and health are
/// written in batches. A changed version takes the transactional path
/// (`Store::checkin`), which also detects a device that rolled back on its own.
#[utoipa::path(post, path = "/device/v1/checkin", request_body(content = Object, description = "CheckinRequest"),
    responses((status = 200, description = "CheckinResponse"), (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])), tag = "device")]
pub async fn checkin(
    State(state): State<AppState>,
    DeviceCaller(device): DeviceCaller,
    ApiJson(req): ApiJson<CheckinRequest>,
) -> ApiResult<Json<CheckinResponse>> {
    if let Some(v) = &req.current_version {
        super::devices::validate_version("current_version", v)?;
    }
    state.metrics.checkins.inc();
    let now = otafleet_store::now_ms();
    let reported = req.current_version.as_deref();
    let mut known = state.caches.live(device).is_some_and(|l| reported.is_none() || l.version.as_deref() == reported);
    if !known {
        // Not cached (or another version): what does the registry say?
        match state.store.get_device(device).await? {
            Some(d) if reported.is_none() || d.current_version.as_deref() == reported => {
                state.caches.set_live(device, d.current_version);
                known = true;
            }
            Some(_) => {}
            None => {
                state.caches.forget_device(device);
                return Err(ApiError::unauthorized("unknown device token"));
            }
        }
    }
    let action = if known {
        state.caches.saw(device, req.health.unwrap_or(DeviceHealth::Unknown));
        match state.caches.inbox(device) {
            Inbox::Empty => None,
            Inbox::Known(a) => Some(*a),
            Inbox::Disabled => state.store.inflight_action(device).await?,
            Inbox::Maybe(generation) => {
                let a = state.store.inflight_action(device).await?;
                state.caches.inbox_found(device, generation, a.as_ref());
                a
            }
        }
    } else {
        // The device runs another version than recorded: the transactional path
        // records it and fails any install it silently undid.
        let c = match state.store.checkin(device, reported, req.health, now).await {
            Err(StoreError::NotFound(_)) => {
                state.caches.forget_device(device);
                return Err(ApiError::unauthorized("unknown device token"));
            }
            other => other?,
        };
        state.caches.set_live(device, c.device.current_version.clone());
        // The store may have failed the action the inbox holds: read it again next time.
        state.caches.inbox_unknown(&[device]);
        // An install the device silently undid has just failed: the gate may move.
        state.driver_wake.notify_one();
        c.action
    };
    let action = match action {
        Some(a) => Some(super::device_actions::action_detail(&state, a).await?.order),
        None => None,
    };
    Ok(Json(CheckinResponse { device_id: device, action, poll_after_secs: state.config.poll_interval_secs }))
}

/// Report progress on an action. Idempotent by `(action_id, seq)`.
#[utoipa::path(post, path = "/device/v1/status", request_body(content = Object, description = "StatusReport"),
    responses((status = 200, description = "StatusAck"), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])), tag = "device")]
pub async fn status(
    State(state): State<AppState>,
    DeviceCaller(device): DeviceCaller,
    ApiJson(report): ApiJson<StatusReport>,
) -> ApiResult<Json<StatusAck>> {
    if report.seq < 1 {
        return Err(ApiError::invalid("seq", "sequence numbers start at 1"));
    }
    if let Some(m) = &report.message {
        if m.len() > 4096 {
            return Err(ApiError::invalid("message", "at most 4096 bytes"));
        }
    }
    let current_version = report.current_version.clone();
    let (outcome, action) = state.reports.submit(device, report).await?;
    let name = match outcome {
        ReportOutcome::Applied => "applied",
        ReportOutcome::Duplicate => "duplicate",
        ReportOutcome::Ignored => "ignored",
    };
    state.metrics.status_reports.get_or_create(&vec![("outcome".into(), name.into())]).inc();
    if outcome == ReportOutcome::Applied {
        // Keep the cached version in step with what the store just wrote.
        if action.state == otafleet_core::ActionState::Succeeded {
            state.caches.set_live(device, Some(action.to_version.clone()));
        } else if current_version.is_some() {
            state.caches.set_live(device, current_version);
        }
        state.caches.inbox_reported(&action);
        state.driver_wake.notify_one();
    } else if outcome == ReportOutcome::Ignored {
        // The stored action moved on without this process following it (e.g. a
        // timeout): what the inbox holds for the device may be stale.
        state.caches.inbox_unknown(&[device]);
    }
    Ok(Json(StatusAck { action_id: action.id, outcome: name.to_string(), state: action.state }))
}
