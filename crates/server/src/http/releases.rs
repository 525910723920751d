//! `/api/v1/releases`: the release catalogue.

use super::auth::Caller;
use super::devices::validate_version;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::Page;
use crate::time::rfc3339;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use otafleet_store::{Artifact, NewRelease, Release, Role};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const KINDS: &[&str] = &["firmware", "file", "command", "container", "k8s"];

#[derive(Serialize, Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct ArtifactBody {
    pub name: String,
    /// Where devices download it (http(s) URL or a server path).
    pub uri: String,
    pub size: i64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    pub signature: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ReleaseView {
    pub id: i64,
    pub name: String,
    pub version: String,
    pub kind: String,
    pub compatible: Vec<String>,
    pub signature: Option<String>,
    pub artifacts: Vec<ArtifactBody>,
    pub created_at: String,
}

impl From<Release> for ReleaseView {
    fn from(r: Release) -> Self {
        ReleaseView {
            id: r.id,
            name: r.name,
            version: r.version,
            kind: r.kind,
            compatible: r.compatible,
            signature: r.signature,
            artifacts: r
                .artifacts
                .into_iter()
                .map(|a| ArtifactBody {
                    name: a.name,
                    uri: a.uri,
                    size: a.size,
                    sha256: a.sha256,
                    signature: a.signature,
                })
                .collect(),
            created_at: rfc3339(r.created_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRelease {
    /// Defaults to the version.
    pub name: Option<String>,
    pub version: String,
    /// `firmware` (default), `file`, `command`, `container` or `k8s`.
    pub kind: Option<String>,
    /// Device types (`device_type` label values) this release fits; empty = all.
    #[serde(default)]
    pub compatible: Vec<String>,
    pub signature: Option<String>,
    #[serde(default)]
    pub artifacts: Vec<ArtifactBody>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub limit: Option<i64>,
    /// Cursor: the `next` value of the previous page.
    pub before: Option<i64>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Create a release.
#[utoipa::path(post, path = "/api/v1/releases", request_body = CreateRelease,
    responses((status = 201, body = ReleaseView), (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])), tag = "releases")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRelease>,
) -> ApiResult<(StatusCode, Json<ReleaseView>)> {
    caller.require(Role::Operator)?;
    validate_version("version", &body.version)?;
    let kind = body.kind.unwrap_or_else(|| "firmware".into());
    if !KINDS.contains(&kind.as_str()) {
        return Err(ApiError::invalid("kind", format!("unknown kind '{kind}', expected one of: {}", KINDS.join(", "))));
    }
    let name = body.name.unwrap_or_else(|| body.version.clone());
    if name.trim().is_empty() || name.len() > 128 {
        return Err(ApiError::invalid("name", "name must be 1 to 128 characters"));
    }
    let mut artifacts = Vec::with_capacity(body.artifacts.len());
    for (i, a) in body.artifacts.into_iter().enumerate() {
        let f = |x: &str| format!("artifacts[{i}].{x}");
        if a.name.trim().is_empty() {
            return Err(ApiError::invalid(&f("name"), "must not be empty"));
        }
        if a.uri.trim().is_empty() {
            return Err(ApiError::invalid(&f("uri"), "must not be empty"));
        }
        if a.size < 0 {
            return Err(ApiError::invalid(&f("size"), "must not be negative"));
        }
        let sha = a.sha256.to_ascii_lowercase();
        if !is_hex(&sha, 64) {
            return Err(ApiError::invalid(&f("sha256"), "must be 64 hex characters"));
        }
        artifacts.push(Artifact { name: a.name, uri: a.uri, size: a.size, sha256: sha, signature: a.signature });
    }
    for (i, c) in body.compatible.iter().enumerate() {
        otafleet_core::selector::validate_label_value(c)
            .map_err(|m| ApiError::invalid(&format!("compatible[{i}]"), m))?;
    }
    let new = NewRelease {
        name,
        version: body.version,
        kind,
        compatible: body.compatible,
        signature: body.signature,
        artifacts,
    };
    let r = state.store.insert_release(&new, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}

/// List releases, newest first.
#[utoipa::path(get, path = "/api/v1/releases", params(ListQuery),
    responses((status = 200, body = Page<ReleaseView>)), security(("bearer" = [])), tag = "releases")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<ReleaseView>>> {
    caller.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let rs = state.store.list_releases(q.before, limit).await?;
    let next = (rs.len() as i64 == limit).then(|| rs.last().map(|r| r.id.to_string())).flatten();
    Ok(Json(Page { items: rs.into_iter().map(Into::into).collect(), next }))
}

/// Get a release by id or by version.
#[utoipa::path(get, path = "/api/v1/releases/{id}", params(("id" = String, Path, description = "numeric id or version")),
    responses((status = 200, body = ReleaseView), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])), tag = "releases")]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ReleaseView>> {
    caller.require(Role::Viewer)?;
    let r = match id.parse::<i64>() {
        Ok(n) => match state.store.get_release(n).await? {
            Some(r) => Some(r),
            None => state.store.get_release_by_version(&id).await?,
        },
        Err(_) => state.store.get_release_by_version(&id).await?,
    };
    Ok(Json(r.ok_or_else(|| ApiError::not_found(format!("release '{id}' not found")))?.into()))
}
