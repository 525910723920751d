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

/// Whether release artifacts may name `http://` URLs (`serve
/// --allow-http-artifacts`). Process-wide, set once by the CLI before the
/// server starts; off by default.
static ALLOW_HTTP_ARTIFACTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Allows (or refuses again) `http://` artifact URIs in this process.
pub fn set_allow_http_artifacts(allow: bool) {
    ALLOW_HTTP_ARTIFACTS.store(allow, std::sync::atomic::Ordering::Relaxed);
}

fn allow_http_artifacts() -> bool {
    ALLOW_HTTP_ARTIFACTS.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn artifact_name(field: &str, n: &str) -> ApiResult<()> {
    rules::artifact_name(n).map_err(|m| ApiError::invalid(field, m))
}

pub fn artifact_uri(field: &str, uri: &str) -> ApiResult<()> {
    rules::artifact_uri(uri, allow_http_artifacts()).map_err(|m| ApiError::invalid(field, m))
}

pub fn signature(field: &str, s: &str) -> ApiResult<()> {
    rules::signature(s).map_err(|m| ApiError::invalid(field, m))
}

pub fn artifact_size(field: &str, n: i64) -> ApiResult<()> {
    rules::artifact_size(n).map_err(|m| ApiError::invalid(field, m))
}
