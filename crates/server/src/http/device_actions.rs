//! `GET /device/v1/actions/{id}`: one of the calling device's actions with the
//! release's signed manifest and the device's signed order. Another device's
//! action answers 404, like an action that does not exist, so ids leak nothing.
//!
//! [`order_extras`] is the one place where a release becomes the manifest and
//! signature handed to devices; [`action_order`] the one place where a stored
//! action becomes a device's order, and [`action_detail`] where that order is
//! signed for the device.

use super::device_api::DeviceCaller;
use super::error::{ApiError, ApiResult};
use crate::{signing, AppState};
use axum::extract::{Path, State};
use axum::Json;
use otafleet_core::protocol::{order_kind, ActionDetail, ActionOrder, ArtifactRef, Order};
use otafleet_store::{Action, Release};

/// The canonical manifest of a release and its signature (None when the
/// server has no signing key: agents refuse such releases).
pub async fn order_extras(state: &AppState, release: &Release) -> (String, Option<String>) {
    signing::sign_release(state.config.release_signer.as_ref(), release)
}

/// A stored action as the device sees it (what a check-in hands out), with
/// the release it names, if it exists.
pub async fn action_order(state: &AppState, a: Action) -> ApiResult<(ActionOrder, Option<(Release, String)>)> {
    let release = state.caches.release(&state.store, &a.to_version).await?;
    let rollout = state.caches.rollout_kind(&state.store, a.rollout_id).await?;
    let kind = rollout.map_or(a.kind, |r| order_kind(a.kind, r));
    let target = release.as_ref().map(|r| (r.image.clone(), r.firmware.clone(), r.flash_pod_image.clone()));
    let (image, firmware, flash_pod_image) = target.unwrap_or_default();
    let app_spec = release.as_ref().and_then(|r| r.app_spec.as_deref()).and_then(|s| serde_json::from_str(s).ok());
    let (artifacts, manifest, signature) = match release {
        Some(r) => {
            let (manifest, signature) = order_extras(state, &r).await;
            let artifacts = r
                .artifacts
                .iter()
                .map(|x| ArtifactRef {
                    name: x.name.clone(),
                    uri: x.uri.clone(),
                    size: x.size.max(0) as u64,
                    sha256: x.sha256.clone(),
                })
                .collect();
            (artifacts, Some((r, manifest)), signature)
        }
        None => (Vec::new(), None, None),
    };
    let order = ActionOrder {
        action_id: a.id,
        rollout_id: a.rollout_id,
        kind,
        version: a.to_version,
        state: a.state,
        last_seq: a.last_seq,
        artifacts,
        signature,
        image,
        firmware,
        flash_pod_image,
        app_spec,
    };
    Ok((order, manifest))
}

/// A stored action as the device fetches it: the order, the signed manifest,
/// and the device's order signed now, valid for `--order-ttl`. The order
/// names exactly the action's kind and the release's artifacts (none when
/// the version has no release: a rollback the device can only do locally).
pub async fn action_detail(state: &AppState, a: Action, now_ms: i64) -> ApiResult<ActionDetail> {
    let device_id = a.device_id;
    let (order, release) = action_order(state, a).await?;
    let issued_at = now_ms.div_euclid(1000);
    let signed = Order {
        action_id: order.action_id,
        artifacts: release.as_ref().map(|(r, _)| signing::manifest(r).artifacts).unwrap_or_default(),
        device_id,
        expires_at: issued_at.saturating_add(state.config.order_ttl.as_secs().min(i64::MAX as u64) as i64),
        issued_at,
        kind: order.kind,
        rollout_id: order.rollout_id,
        version: order.version.clone(),
    };
    let (signed_order, order_signature) = signing::sign_order(state.config.release_signer.as_ref(), &signed).unzip();
    Ok(ActionDetail { order, manifest: release.map(|(_, m)| m), signed_order, order_signature })
}

/// One of this device's actions, with the signed release manifest and the
/// device's signed order.
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
    Ok(Json(action_detail(&state, a, otafleet_store::now_ms()).await?))
}
