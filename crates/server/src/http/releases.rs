//! `/api/v1/releases`: the release catalogue.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::validate;
use super::Page;
use crate::time::rfc3339;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use otafleet_api::{self as api, CreateRelease, ReleaseListQuery};
use otafleet_core::validate as rules;
use otafleet_core::ReleaseKind;
use otafleet_store::{Artifact, NewRelease, Release, Role};

/// A stored release as the API answers it.
pub fn release_view(r: Release) -> api::Release {
    api::Release {
        id: r.id,
        name: r.name,
        version: r.version,
        kind: r.kind,
        compatible: r.compatible,
        signature: r.signature,
        artifacts: r
            .artifacts
            .into_iter()
            .map(|a| api::Artifact { name: a.name, uri: a.uri, size: a.size, sha256: a.sha256, signature: a.signature })
            .collect(),
        image: r.image,
        firmware: r.firmware,
        flash_pod_image: r.flash_pod_image,
        app_spec: r.app_spec.as_deref().and_then(|s| serde_json::from_str(s).ok()),
        created_at: rfc3339(r.created_at),
    }
}

/// An `app` release's spec, checked as `otafleet app` checks it (every
/// rendered object against the Kubernetes schema), stored as JSON with the
/// release's version: the version its pods are labelled with, which the
/// cluster agent reads back.
fn app_spec(kind: ReleaseKind, version: &str, spec: Option<serde_json::Value>) -> ApiResult<Option<String>> {
    let spec = match (kind, spec) {
        (ReleaseKind::App, Some(s)) => s,
        (ReleaseKind::App, None) => {
            return Err(ApiError::invalid("app_spec", "an app release carries its application spec"))
        }
        (_, Some(_)) => return Err(ApiError::invalid("app_spec", "only an app release carries an application spec")),
        (_, None) => return Ok(None),
    };
    let field = |e: otafleet_k8s::app::SpecError| {
        let at = if e.field.starts_with('(') { "app_spec".to_string() } else { format!("app_spec.{}", e.field) };
        ApiError::invalid(&at, e.message)
    };
    let mut spec = otafleet_k8s::app::from_value(spec).map_err(field)?;
    match &spec.version {
        Some(v) if v != version => {
            return Err(ApiError::invalid(
                "app_spec.version",
                format!("'{v}' differs from the release's version '{version}'"),
            ))
        }
        _ => spec.version = Some(version.to_string()),
    }
    otafleet_k8s::app::render(&spec).map_err(field)?;
    serde_json::to_string(&spec).map(Some).map_err(ApiError::internal)
}

/// Create a release.
#[utoipa::path(post, operation_id = "createRelease", path = "/api/v1/releases", request_body = CreateRelease,
    responses((status = 201, body = api::Release), (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "releases")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRelease>,
) -> ApiResult<(StatusCode, Json<api::Release>)> {
    caller.require(Role::Operator)?;
    validate::version("version", &body.version)?;
    let kind: ReleaseKind = match body.kind.as_deref() {
        None => ReleaseKind::Firmware,
        Some(k) => k.parse().map_err(|_| {
            let expected: Vec<&str> = ReleaseKind::ALL.iter().map(|k| k.as_str()).collect();
            ApiError::invalid("kind", format!("unknown kind '{k}', expected one of: {}", expected.join(", ")))
        })?,
    };
    let name = body.name.unwrap_or_else(|| body.version.clone());
    if name.trim().is_empty() || name.len() > 128 {
        return Err(ApiError::invalid("name", "name must be 1 to 128 characters"));
    }
    if let Some(sig) = &body.signature {
        validate::signature("signature", sig)?;
    }
    if body.artifacts.len() > rules::MAX_ARTIFACTS {
        return Err(ApiError::invalid("artifacts", format!("at most {} artifacts per release", rules::MAX_ARTIFACTS)));
    }
    let mut artifacts: Vec<Artifact> = Vec::with_capacity(body.artifacts.len());
    for (i, a) in body.artifacts.into_iter().enumerate() {
        let f = |x: &str| format!("artifacts[{i}].{x}");
        validate::artifact_name(&f("name"), &a.name)?;
        if artifacts.iter().any(|b| b.name == a.name) {
            return Err(ApiError::invalid(&f("name"), format!("'{}' is listed twice; names are unique", a.name)));
        }
        validate::artifact_uri(&f("uri"), &a.uri, state.config.allow_http_artifacts)?;
        validate::artifact_size(&f("size"), a.size)?;
        let sha = a.sha256.to_ascii_lowercase();
        if !rules::is_sha256(&sha) {
            return Err(ApiError::invalid(&f("sha256"), "must be 64 hex characters"));
        }
        if let Some(own) = a.uri.strip_prefix(rules::SERVER_ARTIFACT_PREFIX) {
            if own != sha {
                return Err(ApiError::invalid(&f("uri"), "a server path must name the artifact's own sha256"));
            }
        }
        if let Some(sig) = &a.signature {
            validate::signature(&f("signature"), sig)?;
        }
        artifacts.push(Artifact { name: a.name, uri: a.uri, size: a.size, sha256: sha, signature: a.signature });
    }
    for (i, c) in body.compatible.iter().enumerate() {
        otafleet_core::selector::validate_label_value(c)
            .map_err(|m| ApiError::invalid(&format!("compatible[{i}]"), m))?;
    }
    for (field, image) in
        [("image", &body.image), ("firmware", &body.firmware), ("flash_pod_image", &body.flash_pod_image)]
    {
        if let Some(image) = image {
            rules::image(image).map_err(|m| ApiError::invalid(field, m))?;
        }
    }
    // What a delegate applies: an image to workloads, a firmware (flashed by
    // pods of the flasher image) to boards. One release may carry both, so a
    // rollout can span pods and boards.
    if body.firmware.is_some() != body.flash_pod_image.is_some() {
        let missing = if body.firmware.is_none() { "firmware" } else { "flash_pod_image" };
        return Err(ApiError::invalid(missing, "firmware and flash_pod_image go together"));
    }
    let app_spec = app_spec(kind, &body.version, body.app_spec)?;
    let new = NewRelease {
        name,
        version: body.version,
        kind,
        compatible: body.compatible,
        signature: body.signature,
        artifacts,
        image: body.image,
        firmware: body.firmware,
        flash_pod_image: body.flash_pod_image,
        app_spec,
    };
    let r = state.store.insert_release(&new, &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(release_view(r))))
}

/// List releases, newest first.
#[utoipa::path(get, operation_id = "listReleases", path = "/api/v1/releases", params(ReleaseListQuery),
    responses((status = 200, body = Page<api::Release>), super::error::doc::AuthErrors, super::error::doc::QueryErrors), security(("bearer" = [])), tag = "releases")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ReleaseListQuery>,
) -> ApiResult<Json<Page<api::Release>>> {
    caller.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let rs = state.store.list_releases(q.before, limit).await?;
    let next = (rs.len() as i64 == limit).then(|| rs.last().map(|r| r.id.to_string())).flatten();
    Ok(Json(Page { items: rs.into_iter().map(release_view).collect(), next }))
}

/// Get a release by id or by version.
#[utoipa::path(get, operation_id = "getRelease", path = "/api/v1/releases/{id}", params(("id" = String, Path, description = "numeric id or version")),
    responses((status = 200, body = api::Release), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "releases")]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Release>> {
    caller.require(Role::Viewer)?;
    let r = match id.parse::<i64>() {
        Ok(n) => match state.store.get_release(n).await? {
            Some(r) => Some(r),
            None => state.store.get_release_by_version(&id).await?,
        },
        Err(_) => state.store.get_release_by_version(&id).await?,
    };
    Ok(Json(release_view(r.ok_or_else(|| ApiError::not_found(format!("release '{id}' not found")))?)))
}
