//! `/api/v1/tokens`: API tokens (admin only).

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::{new_secret, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use otafleet_api::{CreateToken, CreatedToken};
use otafleet_store::Role;

/// Create an API token.
#[utoipa::path(post, operation_id = "createToken", path = "/api/v1/tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors), security(("bearer" = [])), tag = "tokens")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    caller.require(Role::Admin)?;
    let role: Role = body.role.parse().map_err(|m: String| ApiError::invalid("role", m))?;
    if body.name.trim().is_empty() || body.name.len() > 128 {
        return Err(ApiError::invalid("name", "name must be 1 to 128 characters"));
    }
    let secret = new_secret("ota");
    let t = state.store.create_token(&body.name, role, &secret).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { id: t.id, name: t.name, role: t.role.to_string(), token: secret })))
}
