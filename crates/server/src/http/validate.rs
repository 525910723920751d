//! The core's input rules (`otafleet_core::validate`) at the HTTP edge: a
//! refusal becomes a 422 naming the request field.

use super::error::{ApiError, ApiResult};
use otafleet_core::selector::Labels;
use otafleet_core::validate as rules;

pub fn version(field: &str, v: &str) -> ApiResult<()> {
    rules::version(v).map_err(|m| ApiError::invalid(field, m))
}

pub fn name(field: &str, n: &str) -> ApiResult<()> {
    rules::name(n).map_err(|m| ApiError::invalid(field, m))
}

/// `prefix` names the labels object (`labels`, `devices[3].labels`); a bad
/// label is reported as `prefix.key`.
pub fn labels(prefix: &str, labels: &Labels) -> ApiResult<()> {
    rules::labels(labels).map_err(|(key, m)| match key {
        Some(k) => ApiError::invalid(&format!("{prefix}.{k}"), m),
        None => ApiError::invalid(prefix, m),
    })
}

pub fn artifact_name(field: &str, n: &str) -> ApiResult<()> {
    rules::artifact_name(n).map_err(|m| ApiError::invalid(field, m))
}

/// `allow_http`: the server's `--allow-http-artifacts`.
pub fn artifact_uri(field: &str, uri: &str, allow_http: bool) -> ApiResult<()> {
    rules::artifact_uri(uri, allow_http).map_err(|m| ApiError::invalid(field, m))
}

pub fn signature(field: &str, s: &str) -> ApiResult<()> {
    rules::signature(s).map_err(|m| ApiError::invalid(field, m))
}

pub fn artifact_size(field: &str, n: i64) -> ApiResult<()> {
    rules::artifact_size(n).map_err(|m| ApiError::invalid(field, m))
}
