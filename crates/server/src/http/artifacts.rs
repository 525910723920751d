//! Artifact storage and download.
//!
//! `PUT /api/v1/releases/{id}/artifacts/{name}` (operator) streams the request
//! body to a temporary file under the data dir while hashing it, then renames
//! it to `artifacts/<sha256>`: content-addressed (the same bytes uploaded
//! twice are stored once) and never held in memory. The release records the
//! artifact with the uri `/device/v1/artifacts/<sha256>`.
//!
//! `GET /device/v1/artifacts/{sha256}` (device token) serves the file with
//! HTTP Range support (tower-http's `ServeFile`: 206 + `Content-Range`, 416 for
//! unsatisfiable ranges), so an agent resumes an interrupted download from the
//! bytes it already has.

use super::device_api::DeviceCaller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use super::releases::release_view;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use otafleet_api::{self as api, UploadQuery};
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

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

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

/// Removes a temporary upload file when dropped unless it was kept.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Upload an artifact's bytes to a release (streamed, stored by SHA-256).
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
    if name.trim().is_empty() || name.len() > 128 || name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name", "artifact names are 1 to 128 characters without slashes"));
    }
    let expected = q.sha256.map(|s| s.to_ascii_lowercase());
    if let Some(e) = &expected {
        if !is_sha256(e) {
            return Err(ApiError::invalid("sha256", "must be 64 hex characters"));
        }
    }
    let release = find_release(&state, &id).await?;
    let data_dir = state.config.data_dir.clone();
    let tmp_dir = data_dir.join("tmp");
    let dir = data_dir.join("artifacts");
    for d in [&tmp_dir, &dir] {
        tokio::fs::create_dir_all(d).await.map_err(|e| ApiError::internal(format!("creating {}: {e}", d.display())))?;
    }
    let tmp = TempFile(Some(tmp_dir.join(format!("upload-{}", uuid::Uuid::new_v4()))));
    let tmp_path = tmp.0.clone().unwrap_or_default();
    let mut file = tokio::fs::File::create(&tmp_path)
        .await
        .map_err(|e| ApiError::internal(format!("creating {}: {e}", tmp_path.display())))?;
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
    let target = artifact_path(&data_dir, &sha256);
    tokio::fs::rename(&tmp_path, &target)
        .await
        .map_err(|e| ApiError::internal(format!("storing {}: {e}", target.display())))?;
    let mut tmp = tmp;
    tmp.0 = None;
    let artifact = Artifact { name, uri: artifact_uri(&sha256), size: size as i64, sha256, signature: None };
    let r = state.store.put_artifact(release.id, &artifact, &caller.actor()).await?;
    tracing::info!(release = %r.version, artifact = %artifact.name, size, "artifact uploaded");
    Ok((StatusCode::CREATED, Json(release_view(r))))
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
