//! Enrollment: `POST /api/v1/enrollment-tokens` (operator) creates a token
//! that carries labels; a device presents it once to `POST /device/v1/enroll`
//! and gets its own device token. Both secrets are shown once and stored as
//! SHA-256 hashes.

use super::auth::{bearer, Caller};
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use super::validate;
use super::{parse_id, Page};
use crate::time::{rfc3339, rfc3339_opt};
use crate::{new_secret, AppState};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use otafleet_api::{self as api, CreateEnrollmentToken, TokenState};
use otafleet_core::protocol::{EnrollRequest, EnrollResponse};
use otafleet_store::{EnrollmentToken, NewDevice, NewEnrollmentToken, Role};
use uuid::Uuid;

fn view(t: EnrollmentToken, token: String) -> api::EnrollmentToken {
    api::EnrollmentToken {
        id: t.id,
        name: t.name,
        labels: t.labels,
        max_uses: t.max_uses,
        uses: t.uses,
        expires_at: rfc3339_opt(t.expires_at),
        created_by: t.created_by,
        created_at: rfc3339(t.created_at),
        token,
    }
}

/// A stored enrollment token as listed and shown (never the secret).
pub fn info_view(t: EnrollmentToken, now: i64) -> api::EnrollmentTokenInfo {
    let state = if t.revoked_at.is_some() {
        TokenState::Revoked
    } else if t.expires_at.is_some_and(|e| e <= now) {
        TokenState::Expired
    } else if t.max_uses.is_some_and(|m| t.uses >= m) {
        TokenState::UsedUp
    } else {
        TokenState::Active
    };
    api::EnrollmentTokenInfo {
        id: t.id,
        name: t.name,
        labels: t.labels,
        state,
        max_uses: t.max_uses,
        uses: t.uses,
        expires_at: rfc3339_opt(t.expires_at),
        created_by: t.created_by,
        created_at: rfc3339(t.created_at),
        last_used_at: rfc3339_opt(t.last_used_at),
        revoked_at: rfc3339_opt(t.revoked_at),
    }
}

/// Create an enrollment token; the secret is in the answer, once.
#[utoipa::path(post, operation_id = "createEnrollmentToken", path = "/api/v1/enrollment-tokens", request_body = CreateEnrollmentToken,
    responses((status = 201, body = api::EnrollmentToken), super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateEnrollmentToken>,
) -> ApiResult<(StatusCode, Json<api::EnrollmentToken>)> {
    caller.require(Role::Operator)?;
    let name = body.name.unwrap_or_else(|| "enrollment".into());
    validate::name("name", &name)?;
    validate::labels("labels", &body.labels)?;
    if let Some(n) = body.max_uses {
        if n < 1 {
            return Err(ApiError::invalid("max_uses", "must be at least 1 (omit it for unlimited)"));
        }
    }
    let expires_at = super::tokens::expires_at("expires_in_secs", body.expires_in_secs)?;
    let secret = new_secret("enr");
    let new = NewEnrollmentToken { name, labels: body.labels, max_uses: body.max_uses, expires_at };
    let t = state.store.create_enrollment_token(&new, &secret, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(view(t, secret))))
}

/// Every enrollment token, revoked, expired and used-up ones too, oldest first (`next` is always `null`).
#[utoipa::path(get, operation_id = "listEnrollmentTokens", path = "/api/v1/enrollment-tokens",
    responses((status = 200, body = Page<api::EnrollmentTokenInfo>), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Page<api::EnrollmentTokenInfo>>> {
    caller.require(Role::Operator)?;
    let now = otafleet_store::now_ms();
    let items = state.store.list_enrollment_tokens().await?.into_iter().map(|t| info_view(t, now)).collect();
    Ok(Json(Page { items, next: None }))
}

/// One enrollment token (never its secret).
#[utoipa::path(get, operation_id = "getEnrollmentToken", path = "/api/v1/enrollment-tokens/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = api::EnrollmentTokenInfo), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn get_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::EnrollmentTokenInfo>> {
    caller.require(Role::Operator)?;
    let id = parse_id(&id, "enrollment token")?;
    let t = state
        .store
        .get_enrollment_token(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("enrollment token {id} not found")))?;
    Ok(Json(info_view(t, otafleet_store::now_ms())))
}

/// Revoke an enrollment token: no device can enroll with it any more (devices
/// enrolled with it keep their own tokens). Idempotent.
#[utoipa::path(post, operation_id = "revokeEnrollmentToken", path = "/api/v1/enrollment-tokens/{id}/revoke", params(("id" = i64, Path)),
    responses((status = 200, body = api::EnrollmentTokenInfo), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "devices")]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::EnrollmentTokenInfo>> {
    caller.require(Role::Operator)?;
    let id = parse_id(&id, "enrollment token")?;
    let t = state
        .store
        .revoke_enrollment_token(id, &caller.actor())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("enrollment token {id} not found")))?;
    Ok(Json(info_view(t, otafleet_store::now_ms())))
}

/// The enrollment token a device presents.
pub struct EnrollmentSecret(pub String);

impl FromRequestParts<AppState> for EnrollmentSecret {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        match bearer(parts)? {
            Some(s) => Ok(EnrollmentSecret(s.to_string())),
            None => Err(ApiError::unauthorized("an enrollment token is required (Authorization: Bearer <token>)")),
        }
    }
}

/// Enroll a device with an enrollment token; answers with its own device token, once.
#[utoipa::path(post, operation_id = "deviceEnroll", path = "/device/v1/enroll", request_body = EnrollRequest,
    responses((status = 201, body = EnrollResponse), super::error::doc::DeviceAuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "device")]
pub async fn enroll(
    State(state): State<AppState>,
    EnrollmentSecret(secret): EnrollmentSecret,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    let id = Uuid::now_v7();
    let name = req.name.unwrap_or_else(|| id.to_string());
    if name.trim().is_empty() || name.len() > 128 {
        return Err(ApiError::invalid("name", "name must be 1 to 128 characters"));
    }
    validate::labels("labels", &req.labels)?;
    if let Some(v) = &req.current_version {
        validate::version("current_version", v)?;
    }
    let token = new_secret("dev");
    let new =
        NewDevice { id, name, labels: req.labels, current_version: req.current_version, token: Some(token.clone()) };
    match state.store.enroll_device(&secret, new, otafleet_store::now_ms()).await? {
        Ok(d) => {
            tracing::info!(device = %d.id, name = %d.name, "device enrolled");
            Ok((StatusCode::CREATED, Json(EnrollResponse { device_id: d.id, name: d.name, labels: d.labels, token })))
        }
        Err(refusal @ otafleet_store::EnrollRefusal::TooManyLabels(_)) => {
            Err(ApiError::invalid("labels", refusal.to_string()))
        }
        Err(refusal) => Err(ApiError::unauthorized(refusal.to_string())),
    }
}
