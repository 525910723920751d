//! `GET /device/v1/actions/{id}`: one of the calling device's actions with the
//! release's signed manifest. Another device's action answers 404, like an
//! action that does not exist, so ids leak nothing.
//!
//! [`order_extras`] is the one place where a release becomes the manifest and
//! signature handed to devices; [`action_detail`] the one place where a stored
//! action becomes a device's order.

use super::device_api::DeviceCaller;
use super::error::{ApiError, ApiResult};
use crate::{signing, AppState};
use axum::extract::{Path, State};
use axum::Json;
use otafleet_core::protocol::{ActionDetail, ActionOrder, ArtifactRef};
use otafleet_store::{Action, Release};

/// The canonical manifest of a release and its signature (None when the
/// server has no signing key: agents refuse such releases).
pub async fn order_extras(state: &AppState, release: &Release) -> (String, Option<String>) {
    signing::sign_release(state.config.release_signer.as_ref(), release)
}

/// A stored action as the device sees it.
pub async fn action_detail(state: &AppState, a: Action) -> ApiResult<ActionDetail> {
    let release = state.caches.release(&state.store, &a.to_version).await?;
    let (artifacts, manifest, signature) = match release {
        Some(r) => {
            let (manifest, signature) = order_extras(state, &r).await;
            let artifacts = r
                .artifacts
                .into_iter()
                .map(|x| ArtifactRef { name: x.name, uri: x.uri, size: x.size.max(0) as u64, sha256: x.sha256 })
                .collect();
            (artifacts, Some(manifest), signature)
        }
        None => (Vec::new(), None, None),
    };
    let order = ActionOrder {
        action_id: a.id,
        rollout_id: a.rollout_id,
        kind: a.kind,
        version: a.to_version,
        state: a.state,
        last_seq: a.last_seq,
        artifacts,
        signature,
    };
    Ok(ActionDetail { order, manifest })
}

/// One of this device's actions, with the signed release manifest.
#[utoipa::path(get, operation_id = "getDeviceAction", path = "/device/v1/actions/{id}", params(("id" = i64, Path, description = "action id")),
    responses((status = 200, body = otafleet_core::protocol::ActionDetail),
        (status = 404, body = super::error::ErrorBody), super::error::doc::DeviceAuthErrors),
    security(("bearer" = [])), tag = "device")]
pub async fn get_one(
    State(state): State<AppState>,
    DeviceCaller(device): DeviceCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<ActionDetail>> {
    let id = super::parse_id(&id, "action")?;
    let a = state
        .store
        .get_action(id)
        .await?
        .filter(|a| a.device_id == device)
        .ok_or_else(|| ApiError::not_found(format!("action {id} not found for this device")))?;
    Ok(Json(action_detail(&state, a).await?))
}
