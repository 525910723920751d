//! Bearer-token authentication. A [`Caller`] is extracted per request; handlers
//! state the role they need with [`Caller::require`]. Tokens are looked up by
//! their SHA-256; no token is 401, a too-weak role is 403.

use super::error::ApiError;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use otafleet_store::{Role, TokenRecord};

/// Who is calling, if anyone.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: Option<TokenRecord>,
}

impl Caller {
    /// The caller's name for the event log.
    pub fn actor(&self) -> String {
        match &self.token {
            Some(t) => format!("token:{}", t.name),
            None => "anonymous".into(),
        }
    }

    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        match &self.token {
            None => Err(ApiError::unauthorized("a bearer token is required (Authorization: Bearer <token>)")),
            Some(t) if t.role < role => {
                Err(ApiError::forbidden(format!("this needs the {role} role; the token '{}' has {}", t.name, t.role)))
            }
            Some(_) => Ok(()),
        }
    }
}

/// The bearer secret of a request, if it carries one.
pub fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(v) = parts.headers.get(AUTHORIZATION) else { return Ok(None) };
    let v = v.to_str().map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    match v.split_once(' ') {
        Some((scheme, secret)) if scheme.eq_ignore_ascii_case("bearer") && !secret.trim().is_empty() => {
            Ok(Some(secret.trim()))
        }
        _ => Err(ApiError::unauthorized("expected 'Authorization: Bearer <token>'")),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // The dashboard's session cookie stands in for the bearer token on
        // reads only (its `EventSource` cannot set headers); a change with a
        // cookie alone is anonymous, so no other site can make one (`ui`).
        let cookie = match parts.method {
            axum::http::Method::GET | axum::http::Method::HEAD => crate::ui::session_secret(&parts.headers),
            _ => None,
        };
        let secret = match (bearer(parts)?, cookie.as_deref()) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => return Ok(Caller { token: None }),
        };
        match state.caches.token(&state.store, secret).await? {
            Some(t) => Ok(Caller { token: Some(t) }),
            // A delegate's token is known, but only on `/delegate/v1`.
            None => match state.store.find_delegate(secret).await? {
                Some(d) if d.revoked_at.is_none() => {
                    Err(ApiError::forbidden(format!("the token of delegate '{}' may only call /delegate/v1", d.name)))
                }
                _ => Err(ApiError::unauthorized("unknown, revoked or expired token")),
            },
        }
    }
}
