//! Delegates: `/api/v1/delegates` (admin) creates, lists, shows and revokes
//! them; `/delegate/v1` is the device protocol spoken by a delegate for its
//! devices, in batches: `PUT inventory` (what it finds, complete: new
//! devices registered as its own, missing ones marked gone), `POST checkin`
//! (many devices' check-ins, answered with their actions) and `POST status`
//! (many reports, applied in order). Each entry goes through the same
//! `service::delivery` calls as a device's own request, so waves, gates and
//! rollback never know who carried it.
//!
//! A delegate token is scoped to the delegate's devices: naming any other
//! device refuses the whole request (404, the field named) and applies
//! nothing; the management API answers it 403 (`auth::Caller`), the device
//! API 401. A revoked delegate's token is refused at once on every replica:
//! it is read from the database on every request (one request per poll per
//! delegate, not per device).

use super::auth::{bearer, Caller};
use super::device_actions::action_order;
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use super::validate;
use crate::service::delivery;
use crate::time::{rfc3339, rfc3339_opt};
use crate::{new_secret, AppState};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use otafleet_api::{CreateDelegate, CreatedDelegate, Delegate as DelegateView, Page};
use otafleet_core::protocol::{
    DelegateAction, DelegateCheckin, DelegateCheckinResponse, DelegateReportAck, DelegateStatus, DelegateStatusAck,
    Inventory, InventoryAck, DELEGATE_MAX_BATCH,
};
use otafleet_core::DelegateKind;
use otafleet_store::{Delegate, InventoryDevice, Role};
use std::collections::HashSet;
use uuid::Uuid;

fn delegate_view(d: Delegate, devices: u64) -> DelegateView {
    DelegateView {
        id: d.id,
        name: d.name,
        kind: d.kind.to_string(),
        state: if d.revoked_at.is_some() { "revoked" } else { "active" }.to_string(),
        created_by: d.created_by,
        created_at: rfc3339(d.created_at),
        last_seen: rfc3339_opt(d.last_seen),
        revoked_at: rfc3339_opt(d.revoked_at),
        devices,
    }
}

/// Create a delegate; its token is in the answer, once.
#[utoipa::path(post, operation_id = "createDelegate", path = "/api/v1/delegates", request_body = CreateDelegate,
    responses((status = 201, body = CreatedDelegate), (status = 409, body = super::error::ErrorBody),
        super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "delegates")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateDelegate>,
) -> ApiResult<(StatusCode, Json<CreatedDelegate>)> {
    caller.require(Role::Admin)?;
    otafleet_core::validate::identifier(&body.name).map_err(|m| ApiError::invalid("name", m))?;
    let kind: DelegateKind = body
        .kind
        .parse()
        .map_err(|e: otafleet_core::model::ParseEnumError| ApiError::invalid("kind", e.to_string()))?;
    let secret = new_secret("otd");
    let d = state.store.create_delegate(&body.name, kind, &secret, &caller.actor(), otafleet_store::now_ms()).await?;
    tracing::info!(delegate = %d.id, name = %d.name, by = %caller.actor(), "delegate created");
    Ok((StatusCode::CREATED, Json(CreatedDelegate { delegate: delegate_view(d, 0), token: secret })))
}

/// Every delegate, revoked ones too, by name (`next` is always `null`).
#[utoipa::path(get, operation_id = "listDelegates", path = "/api/v1/delegates",
    responses((status = 200, body = Page<DelegateView>), super::error::doc::AuthErrors), security(("bearer" = [])), tag = "delegates")]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Page<DelegateView>>> {
    caller.require(Role::Admin)?;
    let counts = state.store.delegate_device_counts().await?;
    let items = state
        .store
        .list_delegates()
        .await?
        .into_iter()
        .map(|d| {
            let n = counts.get(&d.id).copied().unwrap_or(0);
            delegate_view(d, n)
        })
        .collect();
    Ok(Json(Page { items, next: None }))
}

fn parse_delegate_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse().map_err(|_| ApiError::not_found(format!("delegate '{raw}' not found (ids are UUIDs)")))
}

/// One delegate (never its secret).
#[utoipa::path(get, operation_id = "getDelegate", path = "/api/v1/delegates/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = DelegateView), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "delegates")]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DelegateView>> {
    caller.require(Role::Admin)?;
    let id = parse_delegate_id(&id)?;
    let d =
        state.store.get_delegate(id).await?.ok_or_else(|| ApiError::not_found(format!("delegate {id} not found")))?;
    let n = state.store.delegate_device_counts().await?.get(&id).copied().unwrap_or(0);
    Ok(Json(delegate_view(d, n)))
}

/// Revoke a delegate's token: refused from the next request on, on every
/// replica. Its devices stay in the registry. Idempotent.
#[utoipa::path(post, operation_id = "revokeDelegate", path = "/api/v1/delegates/{id}/revoke", params(("id" = Uuid, Path)),
    responses((status = 200, body = DelegateView), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "delegates")]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DelegateView>> {
    caller.require(Role::Admin)?;
    let id = parse_delegate_id(&id)?;
    let d = state
        .store
        .revoke_delegate(id, &caller.actor(), otafleet_store::now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("delegate {id} not found")))?;
    tracing::info!(delegate = %d.id, name = %d.name, by = %caller.actor(), "delegate revoked");
    let n = state.store.delegate_device_counts().await?.get(&id).copied().unwrap_or(0);
    Ok(Json(delegate_view(d, n)))
}

/// The delegate a `/delegate/v1` request comes from.
pub struct DelegateCaller(pub Delegate);

impl FromRequestParts<AppState> for DelegateCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let secret = bearer(parts)?.ok_or_else(|| ApiError::unauthorized("a delegate token is required"))?;
        match state.store.find_delegate(secret).await? {
            Some(d) if d.revoked_at.is_none() => Ok(DelegateCaller(d)),
            Some(d) => Err(ApiError::unauthorized(format!("delegate '{}' is revoked", d.name))),
            None => Err(ApiError::unauthorized("unknown delegate token")),
        }
    }
}

fn batch_size(field: &str, n: usize) -> ApiResult<()> {
    if n > DELEGATE_MAX_BATCH {
        return Err(ApiError::invalid(field, format!("at most {DELEGATE_MAX_BATCH} entries per request")));
    }
    Ok(())
}

/// Refuses the request if any device is not one of the delegate's own.
async fn in_scope<'a>(
    state: &AppState,
    delegate: &Delegate,
    field: &str,
    ids: impl Iterator<Item = &'a Uuid>,
) -> ApiResult<()> {
    let own: HashSet<Uuid> = state.store.delegate_device_ids(delegate.id).await?;
    for (i, id) in ids.enumerate() {
        if !own.contains(id) {
            let e = ApiError::not_found(format!("device {id} is not one of delegate '{}''s devices", delegate.name));
            return Err(ApiError { field: Some(format!("{field}[{i}].device_id")), ..e });
        }
    }
    Ok(())
}

/// Everything the delegate speaks for, complete: new devices are registered
/// as its own, changed names and labels written, missing ones marked gone.
#[utoipa::path(put, operation_id = "delegateInventory", path = "/delegate/v1/inventory", request_body = Inventory,
    responses((status = 200, body = InventoryAck), (status = 409, description = "a listed device belongs to someone else", body = super::error::ErrorBody),
        super::error::doc::DeviceAuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "delegate")]
pub async fn inventory(
    State(state): State<AppState>,
    DelegateCaller(delegate): DelegateCaller,
    ApiJson(body): ApiJson<Inventory>,
) -> ApiResult<Json<InventoryAck>> {
    batch_size("devices", body.devices.len())?;
    let mut seen = HashSet::with_capacity(body.devices.len());
    let mut devices = Vec::with_capacity(body.devices.len());
    for (i, d) in body.devices.into_iter().enumerate() {
        let f = |x: &str| format!("devices[{i}].{x}");
        if !seen.insert(d.device_id) {
            return Err(ApiError::invalid(&f("device_id"), format!("device {} is listed twice", d.device_id)));
        }
        validate::name(&f("name"), &d.name)?;
        validate::labels(&f("labels"), &d.labels)?;
        if let Some(v) = &d.current_version {
            validate::version(&f("current_version"), v)?;
        }
        devices.push(InventoryDevice {
            id: d.device_id,
            name: d.name,
            labels: d.labels,
            current_version: d.current_version,
        });
    }
    let out = state.store.sync_inventory(&delegate, &devices, otafleet_store::now_ms()).await?;
    if out.registered > 0 || !out.gone.is_empty() || out.returned > 0 {
        tracing::info!(delegate = %delegate.name, registered = out.registered, gone = out.gone.len(),
            returned = out.returned, "delegate inventory");
    }
    Ok(Json(InventoryAck {
        registered: out.registered,
        updated: out.updated,
        returned: out.returned,
        unchanged: out.unchanged,
        gone: out.gone,
    }))
}

/// Many devices' check-ins: each recorded as the device's own
/// (`service::delivery::checkin`), answered with the actions of those that have one.
#[utoipa::path(post, operation_id = "delegateCheckin", path = "/delegate/v1/checkin", request_body = DelegateCheckin,
    responses((status = 200, body = DelegateCheckinResponse), (status = 404, description = "a device that is not the delegate's", body = super::error::ErrorBody),
        super::error::doc::DeviceAuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "delegate")]
pub async fn checkin(
    State(state): State<AppState>,
    DelegateCaller(delegate): DelegateCaller,
    ApiJson(body): ApiJson<DelegateCheckin>,
) -> ApiResult<Json<DelegateCheckinResponse>> {
    batch_size("devices", body.devices.len())?;
    for (i, d) in body.devices.iter().enumerate() {
        if let Some(v) = &d.current_version {
            validate::version(&format!("devices[{i}].current_version"), v)?;
        }
    }
    in_scope(&state, &delegate, "devices", body.devices.iter().map(|d| &d.device_id)).await?;
    let now = otafleet_store::now_ms();
    let mut actions = Vec::new();
    for d in body.devices {
        state.metrics.checkins.inc();
        if let Some(a) = delivery::checkin(&state, d.device_id, d.current_version.as_deref(), d.health, now).await? {
            actions.push(DelegateAction { device_id: d.device_id, action: action_order(&state, a).await?.0 });
        }
    }
    Ok(Json(DelegateCheckinResponse { actions, poll_after_secs: state.config.poll_interval_secs }))
}

/// Many status reports, applied in order, each as its device's own
/// (`service::delivery::report`, idempotent by `(action_id, seq)`); they
/// share the group commit. Each gets its own ack: a report the server
/// refuses (an action that is not its device's, an illegal move) is
/// `refused` with the reason, and the others are applied regardless.
#[utoipa::path(post, operation_id = "delegateStatus", path = "/delegate/v1/status", request_body = DelegateStatus,
    responses((status = 200, body = DelegateStatusAck), (status = 404, description = "a device that is not the delegate's", body = super::error::ErrorBody),
        super::error::doc::DeviceAuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "delegate")]
pub async fn status(
    State(state): State<AppState>,
    DelegateCaller(delegate): DelegateCaller,
    ApiJson(body): ApiJson<DelegateStatus>,
) -> ApiResult<Json<DelegateStatusAck>> {
    batch_size("reports", body.reports.len())?;
    for (i, r) in body.reports.iter().enumerate() {
        super::device_api::check_report(&format!("reports[{i}].report."), &r.report)?;
    }
    in_scope(&state, &delegate, "reports", body.reports.iter().map(|r| &r.device_id)).await?;
    let ids: Vec<(Uuid, i64)> = body.reports.iter().map(|r| (r.device_id, r.report.action_id)).collect();
    // Submitted together, in order: the writer applies them in one commit.
    let results =
        futures::future::join_all(body.reports.into_iter().map(|r| delivery::report(&state, r.device_id, r.report)))
            .await;
    let mut acks = Vec::with_capacity(results.len());
    for ((device_id, action_id), r) in ids.into_iter().zip(results) {
        acks.push(match r {
            Ok((outcome, action)) => {
                let name = super::device_api::outcome_name(outcome);
                state.metrics.status_reports.get_or_create(&vec![("outcome".into(), name.into())]).inc();
                DelegateReportAck {
                    device_id,
                    action_id,
                    outcome: name.to_string(),
                    state: Some(action.state),
                    error: None,
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                if e.status.is_server_error() {
                    return Err(e);
                }
                DelegateReportAck {
                    device_id,
                    action_id,
                    outcome: "refused".into(),
                    state: None,
                    error: Some(e.message),
                }
            }
        });
    }
    Ok(Json(DelegateStatusAck { acks }))
}

/// One of the delegate's devices' actions, with the release's signed
/// manifest and the order signed for that device, as the device itself
/// would get it from `GET /device/v1/actions/{id}`: what a gateway relays to
/// the device unchanged, so the device verifies the server's signature end to
/// end. A device that is not the delegate's, or an action that is not the
/// device's, answers 404.
#[utoipa::path(get, operation_id = "delegateDeviceAction", path = "/delegate/v1/devices/{device_id}/actions/{id}",
    params(("device_id" = Uuid, Path), ("id" = i64, Path, description = "action id")),
    responses((status = 200, body = otafleet_core::protocol::ActionDetail),
        (status = 404, body = super::error::ErrorBody), super::error::doc::DeviceAuthErrors),
    security(("bearer" = [])), tag = "delegate")]
pub async fn device_action(
    State(state): State<AppState>,
    DelegateCaller(delegate): DelegateCaller,
    Path((device, id)): Path<(String, String)>,
) -> ApiResult<Json<otafleet_core::protocol::ActionDetail>> {
    let not_found = || ApiError::not_found(format!("action {id} not found for device {device}"));
    let device: Uuid = device.parse().map_err(|_| not_found())?;
    in_scope(&state, &delegate, "device", std::iter::once(&device)).await.map_err(|_| not_found())?;
    let id = super::parse_id(&id, "action")?;
    let a = state.store.get_action(id).await?.filter(|a| a.device_id == device).ok_or_else(not_found)?;
    Ok(Json(super::device_actions::action_detail(&state, a, otafleet_store::now_ms()).await?))
}
