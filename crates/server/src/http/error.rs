//! The one error type of the HTTP edge. Every failure becomes a status code and
//! a JSON body `{"error": {"code", "message", "field"?}}`; internal errors are
//! logged with their detail and answered with a generic 500. The body type
//! is [`otafleet_api::ErrorBody`], shared with the clients.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
pub use otafleet_api::{ErrorBody, ErrorDetail};
use otafleet_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), field: None, retry_after: None }
    }
    /// 429: over a rate limit; try again after `retry_after` seconds.
    pub fn too_many(message: impl Into<String>, retry_after: u64) -> Self {
        ApiError { retry_after: Some(retry_after), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message) }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 422 naming the field at fault.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError { field: Some(field.to_string()), ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message) }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal server error")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Invalid(m) => ApiError::bad_request(m),
            StoreError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::service::ServiceError> for ApiError {
    fn from(e: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError as E;
        match e {
            E::Invalid { field, message } if field.is_empty() => ApiError::bad_request(message),
            E::Invalid { field, message } => ApiError::invalid(&field, message),
            E::Unauthenticated(m) => ApiError::unauthorized(m),
            E::NotFound(m) => ApiError::not_found(m),
            E::Conflict(m) => ApiError::conflict(m),
            E::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            E::Internal(e) => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(ErrorBody::new(self.code, self.message, self.field))).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The error answers an operation can give because of how it takes its input,
/// for the `responses(...)` of the OpenAPI annotations: each is the
/// [`ErrorBody`] with the status the extractor or the auth check answers.
pub mod doc {
    use std::collections::BTreeMap;
    use utoipa::openapi::{ContentBuilder, RefOr, Response, ResponseBuilder};

    fn error(description: &str) -> RefOr<Response> {
        let body = ContentBuilder::new().schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))));
        ResponseBuilder::new().description(description).content("application/json", body.build()).build().into()
    }

    fn map(items: &[(&str, &str)]) -> BTreeMap<String, RefOr<Response>> {
        items.iter().map(|(s, d)| (s.to_string(), error(d))).collect()
    }

    /// A management API operation: a bearer API token with a role.
    pub struct AuthErrors;
    impl utoipa::IntoResponses for AuthErrors {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            map(&[("401", "no, an unknown, a revoked or an expired token"), ("403", "the token's role is too weak")])
        }
    }

    /// A device API operation: the device's own token (or an enrollment token).
    pub struct DeviceAuthErrors;
    impl utoipa::IntoResponses for DeviceAuthErrors {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            map(&[("401", "no, an unknown or a replaced token")])
        }
    }

    /// An operation taking a JSON body (`extract::ApiJson`).
    pub struct JsonBodyErrors;
    impl utoipa::IntoResponses for JsonBodyErrors {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            map(&[
                ("400", "malformed JSON"),
                ("413", "the body is larger than the limit"),
                ("415", "the body is not application/json"),
                ("422", "a field is missing or invalid (named in `field`)"),
            ])
        }
    }

    /// An operation taking query parameters (`extract::ApiQuery`).
    pub struct QueryErrors;
    impl utoipa::IntoResponses for QueryErrors {
        fn responses() -> BTreeMap<String, RefOr<Response>> {
            map(&[("422", "a query parameter is missing or invalid (named in `field`)")])
        }
    }
}
