//! `/device/v1`: the device protocol. A device authenticates with its own
//! token and can only see and report on its own actions.

use super::auth::bearer;
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::service::delivery;
use crate::AppState;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::Json;
use otafleet_core::protocol::{
    CheckinRequest, CheckinResponse, StatusAck, StatusReport, TelemetryAccepted, TelemetryBatch,
};
use otafleet_store::ReportOutcome;
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
/// See `service::delivery::checkin` for how it is answered.
#[utoipa::path(post, operation_id = "deviceCheckin", path = "/device/v1/checkin", request_body = CheckinRequest,
    responses((status = 200, body = CheckinResponse), super::error::doc::DeviceAuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "device")]
pub async fn checkin(
    State(state): State<AppState>,
    DeviceCaller(device): DeviceCaller,
    ApiJson(req): ApiJson<CheckinRequest>,
) -> ApiResult<Json<CheckinResponse>> {
    if let Some(v) = &req.current_version {
        super::validate::version("current_version", v)?;
    }
    state.metrics.checkins.inc();
    let now = otafleet_store::now_ms();
    let action = delivery::checkin(&state, device, req.current_version.as_deref(), req.health, now).await?;
    let action = match action {
        Some(a) => Some(super::device_actions::action_order(&state, a).await?.0),
        None => None,
    };
    Ok(Json(CheckinResponse { device_id: device, action, poll_after_secs: state.config.poll_interval_secs }))
}

/// Report progress on an action. Idempotent by `(action_id, seq)`.
#[utoipa::path(post, operation_id = "deviceStatus", path = "/device/v1/status", request_body = StatusReport,
    responses((status = 200, body = StatusAck), (status = 404, body = super::error::ErrorBody), super::error::doc::DeviceAuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "device")]
pub async fn status(
    State(state): State<AppState>,
    DeviceCaller(device): DeviceCaller,
    ApiJson(report): ApiJson<StatusReport>,
) -> ApiResult<Json<StatusAck>> {
    check_report("", &report)?;
    let (outcome, action) = delivery::report(&state, device, report).await?;
    let name = outcome_name(outcome);
    state.metrics.status_reports.get_or_create(&vec![("outcome".into(), name.into())]).inc();
    Ok(Json(StatusAck { action_id: action.id, outcome: name.to_string(), state: action.state }))
}

/// The rules a status report's fields follow; `prefix` names where the
/// report is in the body (`reports[3].report.` in a delegate's batch).
pub fn check_report(prefix: &str, report: &StatusReport) -> ApiResult<()> {
    if report.seq < 1 {
        return Err(ApiError::invalid(&format!("{prefix}seq"), "sequence numbers start at 1"));
    }
    if let Some(m) = &report.message {
        if m.len() > 4096 {
            return Err(ApiError::invalid(&format!("{prefix}message"), "at most 4096 bytes"));
        }
    }
    if let Some(v) = &report.current_version {
        super::validate::version(&format!("{prefix}current_version"), v)?;
    }
    Ok(())
}

/// How an outcome is named on the wire and in metrics.
pub fn outcome_name(outcome: ReportOutcome) -> &'static str {
    match outcome {
        ReportOutcome::Applied => "applied",
        ReportOutcome::Duplicate => "duplicate",
        ReportOutcome::Ignored => "ignored",
    }
}

/// Report measurements: a batch of samples, taken whole or refused whole
/// (each bad sample named), aggregated into the device's telemetry windows.
#[utoipa::path(post, operation_id = "deviceTelemetry", path = "/device/v1/telemetry", request_body = TelemetryBatch,
    responses((status = 202, body = TelemetryAccepted),
        (status = 429, description = "over the device's sample rate; see Retry-After", body = super::error::ErrorBody),
        super::error::doc::DeviceAuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "device")]
pub async fn telemetry(
    State(state): State<AppState>,
    DeviceCaller(device): DeviceCaller,
    ApiJson(batch): ApiJson<TelemetryBatch>,
) -> ApiResult<(axum::http::StatusCode, Json<TelemetryAccepted>)> {
    match crate::service::telemetry::ingest(&state, device, &batch.samples).await {
        Ok(accepted) => Ok((axum::http::StatusCode::ACCEPTED, Json(TelemetryAccepted { accepted }))),
        Err(e) => Err(telemetry_error(&state, e)),
    }
}

/// What a refused batch is answered, over HTTP and on the MQTT ack topic.
pub fn telemetry_error(state: &AppState, e: crate::service::telemetry::IngestError) -> ApiError {
    use crate::service::telemetry::{IngestError, Refusal};
    match e {
        IngestError::Refused(Refusal::Invalid { field, message }) => ApiError::invalid(&field, message),
        IngestError::Refused(Refusal::TooMany { retry_after_secs }) => ApiError::too_many(
            format!(
                "over this device's telemetry rate ({} samples/s); retry after {retry_after_secs} s",
                state.config.telemetry.rate
            ),
            retry_after_secs,
        ),
        IngestError::Store(e) => e.into(),
    }
}
