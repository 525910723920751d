//! `/api/v1/devices`: the device registry.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::validate;
use super::Page;
use crate::time::{rfc3339, rfc3339_opt};
use crate::{new_secret, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use otafleet_api::{
    self as api, BulkRegister, BulkRegistered, DeviceListQuery, RegisterDevice, RegisteredDevice, UpdateDevice,
};
use otafleet_core::Selector;
use otafleet_store::{Device, DeviceQuery, DeviceSort, NewDevice, Role};
use uuid::Uuid;

/// A stored device as the API answers it.
pub fn device_view(d: Device) -> api::Device {
    api::Device {
        id: d.id,
        name: d.name,
        labels: d.labels,
        current_version: d.current_version,
        previous_version: d.previous_version,
        desired_version: d.desired_version,
        health: d.health,
        last_seen: rfc3339_opt(d.last_seen),
        delegate_id: d.delegate_id,
        gone_at: rfc3339_opt(d.gone_at),
        created_at: rfc3339(d.created_at),
        updated_at: rfc3339(d.updated_at),
    }
}

pub const MAX_BULK: usize = 10_000;

fn to_new(r: RegisterDevice, field: &str) -> ApiResult<NewDevice> {
    let id = r.id.unwrap_or_else(Uuid::now_v7);
    let name = r.name.unwrap_or_else(|| id.to_string());
    validate::name(&format!("{field}name"), &name)?;
    validate::labels(&format!("{field}labels"), &r.labels)?;
    if let Some(v) = &r.current_version {
        validate::version(&format!("{field}current_version"), v)?;
    }
    Ok(NewDevice { id, name, labels: r.labels, current_version: r.current_version, token: Some(new_secret("dev")) })
}

fn registered(d: Device, token: String) -> RegisteredDevice {
    RegisteredDevice { device: device_view(d), token }
}

/// Register one device.
#[utoipa::path(post, operation_id = "registerDevice", path = "/api/v1/devices", request_body = RegisterDevice,
    responses((status = 201, body = RegisteredDevice), (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RegisterDevice>,
) -> ApiResult<(StatusCode, Json<RegisteredDevice>)> {
    caller.require(Role::Operator)?;
    let new = to_new(body, "")?;
    let token = new.token.clone().unwrap_or_default();
    let mut stored = state.store.insert_devices(std::slice::from_ref(&new), &caller.actor()).await?;
    let d = stored.pop().ok_or_else(|| ApiError::internal("insert returned nothing"))?;
    Ok((StatusCode::CREATED, Json(registered(d, token))))
}

/// Register many devices at once (all or none, at most 10,000).
#[utoipa::path(post, operation_id = "registerDevicesBulk", path = "/api/v1/devices/bulk", request_body = BulkRegister,
    responses((status = 201, body = BulkRegistered), (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn bulk_register(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BulkRegister>,
) -> ApiResult<(StatusCode, Json<BulkRegistered>)> {
    caller.require(Role::Operator)?;
    if body.devices.is_empty() || body.devices.len() > MAX_BULK {
        return Err(ApiError::invalid("devices", format!("give 1 to {MAX_BULK} devices")));
    }
    let mut news = Vec::with_capacity(body.devices.len());
    let mut seen = std::collections::HashSet::new();
    for (i, d) in body.devices.into_iter().enumerate() {
        let n = to_new(d, &format!("devices[{i}]."))?;
        if !seen.insert(n.id) {
            return Err(ApiError::invalid(&format!("devices[{i}].id"), format!("device {} appears twice", n.id)));
        }
        news.push(n);
    }
    let stored = state.store.insert_devices(&news, &caller.actor()).await?;
    let devices = stored.into_iter().zip(news).map(|(d, n)| registered(d, n.token.unwrap_or_default())).collect();
    Ok((StatusCode::CREATED, Json(BulkRegistered { devices })))
}

/// List devices, filtered by a label selector, paginated by id.
#[utoipa::path(get, operation_id = "listDevices", path = "/api/v1/devices", params(DeviceListQuery),
    responses((status = 200, body = Page<api::Device>), super::error::doc::AuthErrors, super::error::doc::QueryErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DeviceListQuery>,
) -> ApiResult<Json<Page<api::Device>>> {
    caller.require(Role::Viewer)?;
    let selector = match q.selector.as_deref() {
        Some(s) => Selector::parse(s).map_err(|e| ApiError::invalid("selector", e.to_string()))?,
        None => Selector::default(),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let (sort, descending) = match q.sort.as_deref() {
        None => (DeviceSort::Id, false),
        Some(raw) => {
            let (name, descending) = match raw.strip_prefix('-') {
                Some(n) => (n, true),
                None => (raw, false),
            };
            let sort = DeviceSort::NAMES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).ok_or_else(|| {
                let names: Vec<&str> = DeviceSort::NAMES.iter().map(|(n, _)| *n).collect();
                ApiError::invalid("sort", format!("must be one of {} (a leading '-' for descending)", names.join(", ")))
            })?;
            (sort, descending)
        }
    };
    let keyset = sort == DeviceSort::Id && !descending;
    if q.after.is_some() && !keyset {
        return Err(ApiError::invalid("after", "pages only the default order (id); use offset with sort"));
    }
    let offset = q.offset.unwrap_or(0);
    if !(0..=1_000_000).contains(&offset) {
        return Err(ApiError::invalid("offset", "must be between 0 and 1000000"));
    }
    let search = match q.q {
        Some(t) if t.chars().count() > 200 => return Err(ApiError::invalid("q", "at most 200 characters")),
        Some(t) if t.chars().any(char::is_control) => {
            return Err(ApiError::invalid("q", "must not contain control characters"))
        }
        t => t.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
    };
    let query = DeviceQuery { selector, after: q.after, limit, search, sort, descending, offset };
    let devices = state.store.list_devices(&query).await?;
    let full = devices.len() as i64 == limit;
    let next = match (full, keyset && offset == 0) {
        (false, _) => None,
        (true, true) => devices.last().map(|d| d.id.to_string()),
        (true, false) => Some((offset + limit).to_string()),
    };
    Ok(Json(Page { items: devices.into_iter().map(device_view).collect(), next }))
}

fn parse_uuid(raw: &str) -> ApiResult<Uuid> {
    raw.parse().map_err(|_| ApiError::not_found(format!("device '{raw}' not found (ids are UUIDs)")))
}

/// Get one device.
#[utoipa::path(get, operation_id = "getDevice", path = "/api/v1/devices/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = api::Device), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Device>> {
    caller.require(Role::Viewer)?;
    let id = parse_uuid(&id)?;
    let d = state.store.get_device(id).await?.ok_or_else(|| ApiError::not_found(format!("device {id} not found")))?;
    Ok(Json(device_view(d)))
}

/// Update a device's labels (merge; `null` removes a label).
#[utoipa::path(patch, operation_id = "updateDevice", path = "/api/v1/devices/{id}", params(("id" = Uuid, Path)), request_body = UpdateDevice,
    responses((status = 200, body = api::Device), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateDevice>,
) -> ApiResult<Json<api::Device>> {
    caller.require(Role::Operator)?;
    let id = parse_uuid(&id)?;
    let d = state.store.get_device(id).await?.ok_or_else(|| ApiError::not_found(format!("device {id} not found")))?;
    let mut labels = d.labels;
    for (k, v) in body.labels {
        match v {
            Some(v) => labels.insert(k, v),
            None => labels.remove(&k),
        };
    }
    validate::labels("labels", &labels)?;
    let d = state
        .store
        .set_device_labels(id, &labels, &caller.actor())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("device {id} not found")))?;
    Ok(Json(device_view(d)))
}

/// Replace a device's token: the answer carries the new one (once); the old
/// one is refused from the next request on. The agent must be given the new
/// token (its `identity.json`).
#[utoipa::path(post, operation_id = "rotateDeviceToken", path = "/api/v1/devices/{id}/token", params(("id" = Uuid, Path)),
    responses((status = 200, body = api::DeviceToken), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn rotate_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::DeviceToken>> {
    caller.require(Role::Operator)?;
    let id = parse_uuid(&id)?;
    let token = new_secret("dev");
    if !state.store.rotate_device_token(id, &token, &caller.actor()).await? {
        return Err(ApiError::not_found(format!("device {id} not found")));
    }
    crate::service::delivery::device_token_rotated(&state, id);
    tracing::info!(device = %id, by = %caller.actor(), "device token rotated");
    Ok(Json(api::DeviceToken { device_id: id, token }))
}

/// Delete a device; its unfinished actions are skipped.
#[utoipa::path(delete, operation_id = "deleteDevice", path = "/api/v1/devices/{id}", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn delete(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Operator)?;
    let id = parse_uuid(&id)?;
    if state.store.delete_device(id, &caller.actor()).await? {
        crate::service::delivery::device_deleted(&state, id);
        state.telemetry.forget(id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("device {id} not found")))
    }
}
