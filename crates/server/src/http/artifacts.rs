//! Artifact storage and download.
//!
//! `PUT /api/v1/releases/{id}/artifacts/{name}` (operator) streams the request
//! body to a temporary file under the data dir while hashing it, then renames
//! it to `artifacts/<sha256>`: content-addressed (the same bytes uploaded
//! twice are stored once) and never held in memory. The release records the
//! artifact with the uri `/device/v1/artifacts/<sha256>`.
//!
//! A refused upload stores nothing; an interrupted one leaves no temporary
//! file (the guard is dropped with the handler's future, finished or not, and
//! [`sweep_tmp`] clears what a crash left at the next start). Blobs no
//! release references any more (an artifact replaced by another upload of
//! its name) are freed by `POST /api/v1/admin/artifacts/gc` ([`gc`]).
//!
//! `GET /device/v1/artifacts/{sha256}` (device token) serves the file with
//! HTTP Range support (tower-http's `ServeFile`: 206 + `Content-Range`, 416 for
//! unsatisfiable ranges), so an agent resumes an interrupted download from the
//! bytes it already has.

use super::device_api::DeviceCaller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use super::releases::release_view;
use super::validate;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use otafleet_api::{self as api, ArtifactGcQuery, UploadQuery};
use otafleet_store::{Artifact, Release, Role};
use sha2::{Digest, Sha256};
use std::path::{Path as FsPath, PathBuf};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

use super::auth::Caller;

/// Where an artifact with this digest lives under the data dir.
pub fn artifact_path(data_dir: &FsPath, sha256: &str) -> PathBuf {
    data_dir.join("artifacts").join(sha256)
}

/// The device-facing uri of an uploaded artifact.
pub fn artifact_uri(sha256: &str) -> String {
    format!("/device/v1/artifacts/{sha256}")
}

use otafleet_core::validate::is_sha256;

/// A release by numeric id or by version.
pub async fn find_release(state: &AppState, id: &str) -> ApiResult<Release> {
    let r = match id.parse::<i64>() {
        Ok(n) => match state.store.get_release(n).await? {
            Some(r) => Some(r),
            None => state.store.get_release_by_version(id).await?,
        },
        Err(_) => state.store.get_release_by_version(id).await?,
    };
    r.ok_or_else(|| ApiError::not_found(format!("release '{id}' not found")))
}

/// Uploads hold this shared while a finished upload's blob is moved into
/// `artifacts/` and recorded, garbage collection exclusively: a blob is
/// never collected between its rename and its row.
static BLOBS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A temporary upload file, removed when dropped unless it was kept. Drop
/// also runs when the handler's future is dropped unfinished (the client went
/// away and hyper cancelled the request), so no path leaves it behind.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &FsPath {
        self.0.as_deref().unwrap_or(FsPath::new(""))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes every temporary upload file under the data dir: left over from
/// a crash or a kill while an upload streamed. Run at server start, before
/// the server listens. Answers (files, bytes) removed.
pub fn sweep_tmp(data_dir: &FsPath) -> std::io::Result<(usize, u64)> {
    let dir = data_dir.join("tmp");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let (mut n, mut bytes) = (0, 0);
    for e in entries {
        let e = e?;
        let meta = e.metadata()?;
        if meta.is_file() {
            std::fs::remove_file(e.path())?;
            n += 1;
            bytes += meta.len();
        }
    }
    Ok((n, bytes))
}

/// Upload an artifact's bytes to a release (streamed, stored by SHA-256).
///
/// Everything that can refuse the upload without its bytes (name, release,
/// a rollout using the release) is decided before the body is read.
#[utoipa::path(put, operation_id = "uploadArtifact", path = "/api/v1/releases/{id}/artifacts/{name}",
    params(("id" = String, Path, description = "release id or version"), ("name" = String, Path, description = "artifact name"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = api::Release), (status = 400, description = "the upload was interrupted", body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors, super::error::doc::QueryErrors),
    security(("bearer" = [])), tag = "releases")]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<api::Release>)> {
    caller.require(Role::Operator)?;
    validate::artifact_name("name", &name)?;
    let expected = q.sha256.map(|s| s.to_ascii_lowercase());
    if let Some(e) = &expected {
        if !is_sha256(e) {
            return Err(ApiError::invalid("sha256", "must be 64 hex characters"));
        }
    }
    let release = find_release(&state, &id).await?;
    state.store.ensure_release_unused(release.id).await?;
    let data_dir = state.config.data_dir.clone();
    let tmp_dir = data_dir.join("tmp");
    let dir = data_dir.join("artifacts");
    for d in [&tmp_dir, &dir] {
        tokio::fs::create_dir_all(d).await.map_err(|e| ApiError::internal(format!("creating {}: {e}", d.display())))?;
    }
    let mut tmp = TempFile(Some(tmp_dir.join(format!("upload-{}", uuid::Uuid::new_v4()))));
    let mut file = tokio::fs::File::create(tmp.path())
        .await
        .map_err(|e| ApiError::internal(format!("creating {}: {e}", tmp.path().display())))?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the upload was interrupted: {e}")))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(|e| ApiError::internal(format!("writing the upload: {e}")))?;
    }
    file.sync_all().await.map_err(|e| ApiError::internal(format!("syncing the upload: {e}")))?;
    drop(file);
    let sha256 = hex::encode(hasher.finalize());
    if let Some(e) = expected {
        if e != sha256 {
            return Err(ApiError::invalid("sha256", format!("the body's SHA-256 is {sha256}, not {e}")));
        }
    }
    let artifact = Artifact { name, uri: artifact_uri(&sha256), size: size as i64, sha256, signature: None };
    let _blobs = BLOBS.read().await;
    let target = artifact_path(&data_dir, &artifact.sha256);
    let fresh = !tokio::fs::try_exists(&target).await.unwrap_or(false);
    tokio::fs::rename(tmp.path(), &target)
        .await
        .map_err(|e| ApiError::internal(format!("storing {}: {e}", target.display())))?;
    tmp.0 = None;
    let r = match state.store.put_artifact(release.id, &artifact, &caller.actor()).await {
        Ok(r) => r,
        Err(e) => {
            // Refused after all (a rollout started meanwhile): a blob this
            // upload brought and nothing references goes again.
            if fresh && !state.store.artifact_known(&artifact.sha256).await.unwrap_or(true) {
                let _ = tokio::fs::remove_file(&target).await;
            }
            return Err(e.into());
        }
    };
    tracing::info!(release = %r.version, artifact = %artifact.name, size, "artifact uploaded");
    Ok((StatusCode::CREATED, Json(release_view(r))))
}

/// Delete stored artifact blobs that no release references (admin).
#[utoipa::path(post, operation_id = "collectArtifacts", path = "/api/v1/admin/artifacts/gc", params(ArtifactGcQuery),
    responses((status = 200, body = api::ArtifactGc), super::error::doc::AuthErrors, super::error::doc::QueryErrors),
    security(("bearer" = [])), tag = "releases")]
pub async fn gc(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ArtifactGcQuery>,
) -> ApiResult<Json<api::ArtifactGc>> {
    caller.require(Role::Admin)?;
    let dry_run = q.dry_run.unwrap_or(false);
    let _blobs = BLOBS.write().await;
    let keep = state.store.referenced_artifacts().await?;
    let dir = state.config.data_dir.join("artifacts");
    let mut freed = Vec::new();
    let mut entries = match tokio::fs::read_dir(&dir).await {
        Ok(e) => Some(e),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ApiError::internal(format!("reading {}: {e}", dir.display()))),
    };
    while let Some(rd) = entries.as_mut() {
        let Some(e) =
            rd.next_entry().await.map_err(|e| ApiError::internal(format!("reading {}: {e}", dir.display())))?
        else {
            break;
        };
        let Some(sha) = e.file_name().to_str().filter(|n| is_sha256(n)).map(str::to_string) else { continue };
        if keep.contains(&sha) {
            continue;
        }
        let meta = e.metadata().await.map_err(|e| ApiError::internal(format!("reading {sha}: {e}")))?;
        if !meta.is_file() {
            continue;
        }
        if !dry_run {
            tokio::fs::remove_file(e.path()).await.map_err(|e| ApiError::internal(format!("deleting {sha}: {e}")))?;
        }
        freed.push(api::FreedArtifact { sha256: sha, size: meta.len() as i64 });
    }
    freed.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    let bytes = freed.iter().map(|f| f.size).sum();
    if !dry_run {
        tracing::info!(blobs = freed.len(), bytes, "unreferenced artifacts deleted");
    }
    Ok(Json(api::ArtifactGc { dry_run, freed, bytes }))
}

/// Download an uploaded artifact by SHA-256; supports `Range` to resume.
#[utoipa::path(get, operation_id = "downloadArtifact", path = "/device/v1/artifacts/{sha256}", params(("sha256" = String, Path, description = "hex SHA-256")),
    responses((status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the requested range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = super::error::ErrorBody), (status = 416, description = "range not satisfiable"), super::error::doc::DeviceAuthErrors),
    security(("bearer" = [])), tag = "device")]
pub async fn download(
    State(state): State<AppState>,
    DeviceCaller(_device): DeviceCaller,
    Path(sha256): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    if !is_sha256(&sha256) {
        return Err(ApiError::not_found(format!("artifact '{sha256}' not found (give its lowercase hex SHA-256)")));
    }
    let path = artifact_path(&state.config.data_dir, &sha256);
    if !state.store.artifact_known(&sha256).await? || !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Err(ApiError::not_found(format!("artifact {sha256} not found")));
    }
    let res = tower_http::services::ServeFile::new(path).oneshot(req).await.map_err(ApiError::internal)?;
    Ok(res.map(Body::new).into_response())
}
