//! `/api/v1/tokens`: API tokens (admin only): create (the secret is in the
//! answer, once), list, show, revoke. A revoked token is refused by this
//! process from the next request on (`Caches::forget_token`).

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use super::{parse_id, Page};
use crate::time::{rfc3339, rfc3339_opt};
use crate::{new_secret, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use otafleet_api::{CreateToken, CreatedToken, TokenInfo, TokenState};
use otafleet_store::{NewToken, Role, TokenRecord};

/// Longest accepted token lifetime: ten years.
pub const MAX_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// The expiry time of a token created now with `expires_in_secs` (None = never).
pub fn expires_at(field: &str, expires_in_secs: Option<u64>) -> ApiResult<Option<i64>> {
    match expires_in_secs {
        Some(0) => Err(ApiError::invalid(field, "must be at least 1 (omit it for no expiry)")),
        Some(s) if s > MAX_LIFETIME_SECS => {
            Err(ApiError::invalid(field, format!("at most {MAX_LIFETIME_SECS} (ten years)")))
        }
        Some(s) => Ok(Some(otafleet_store::now_ms() + s as i64 * 1000)),
        None => Ok(None),
    }
}

/// A stored token as the API shows it (never the secret).
pub fn token_view(t: TokenRecord, now: i64) -> TokenInfo {
    let state = if t.revoked_at.is_some() {
        TokenState::Revoked
    } else if t.is_valid_at(now) {
        TokenState::Active
    } else {
        TokenState::Expired
    };
    TokenInfo {
        id: t.id,
        name: t.name,
        role: t.role.to_string(),
        state,
        created_at: rfc3339(t.created_at),
        created_by: t.created_by,
        expires_at: rfc3339_opt(t.expires_at),
        last_used_at: rfc3339_opt(t.last_used_at),
        revoked_at: rfc3339_opt(t.revoked_at),
        bootstrap: t.bootstrap,
    }
}

/// Create an API token; the secret is in the answer, once.
#[utoipa::path(post, operation_id = "createToken", path = "/api/v1/tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "tokens")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    caller.require(Role::Admin)?;
    let role: Role = body.role.parse().map_err(|m: String| ApiError::invalid("role", m))?;
    super::validate::name("name", &body.name)?;
    let expires_at = expires_at("expires_in_secs", body.expires_in_secs)?;
    let secret = new_secret("ota");
    let actor = caller.actor();
    let new = NewToken { name: &body.name, role, secret: &secret, expires_at, created_by: Some(&actor) };
    let t = state.store.create_token_with(&new).await?;
    let created = CreatedToken {
        id: t.id,
        name: t.name,
        role: t.role.to_string(),
        token: secret,
        expires_at: rfc3339_opt(t.expires_at),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Every API token, revoked and expired ones too, oldest first (`next` is always `null`).
#[utoipa::path(get, operation_id = "listTokens", path = "/api/v1/tokens",
    responses((status = 200, body = Page<TokenInfo>), super::error::doc::AuthErrors), security(("bearer" = [])), tag = "tokens")]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Page<TokenInfo>>> {
    caller.require(Role::Admin)?;
    let now = otafleet_store::now_ms();
    let items = state.store.list_tokens().await?.into_iter().map(|t| token_view(t, now)).collect();
    Ok(Json(Page { items, next: None }))
}

async fn find(state: &AppState, raw: &str) -> ApiResult<TokenRecord> {
    let id = parse_id(raw, "token")?;
    state.store.get_token(id).await?.ok_or_else(|| ApiError::not_found(format!("token {id} not found")))
}

/// One API token (never its secret).
#[utoipa::path(get, operation_id = "getToken", path = "/api/v1/tokens/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = TokenInfo), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "tokens")]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    caller.require(Role::Admin)?;
    Ok(Json(token_view(find(&state, &id).await?, otafleet_store::now_ms())))
}

/// Revoke an API token: refused from the next request on. Idempotent; the row stays, for the audit log.
#[utoipa::path(post, operation_id = "revokeToken", path = "/api/v1/tokens/{id}/revoke", params(("id" = i64, Path)),
    responses((status = 200, body = TokenInfo), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "tokens")]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    caller.require(Role::Admin)?;
    let id = parse_id(&id, "token")?;
    let t = state
        .store
        .revoke_token(id, &caller.actor())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("token {id} not found")))?;
    state.caches.forget_token(t.id);
    tracing::info!(token = t.id, name = %t.name, by = %caller.actor(), "API token revoked");
    Ok(Json(token_view(t, otafleet_store::now_ms())))
}
