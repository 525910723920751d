//! `/api/v1/releases`: the release catalogue.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One artifact of a release (in requests and answers alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    /// Where devices download it (http(s) URL or a server path).
    pub uri: String,
    pub size: i64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    pub signature: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Release {
    pub id: i64,
    pub name: String,
    pub version: String,
    /// `firmware`, `file`, `command`, `container`, `k8s` or `app`.
    #[schema(value_type = String)]
    pub kind: otafleet_core::ReleaseKind,
    pub compatible: Vec<String>,
    pub signature: Option<String>,
    pub artifacts: Vec<Artifact>,
    /// The image a cluster agent sets on its workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The firmware image FlashJob boards are flashed with…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// …by pods of this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash_pod_image: Option<String>,
    /// An `app` release's ROS application spec (see `otafleet app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub app_spec: Option<serde_json::Value>,
    pub created_at: String,
}

/// `POST /api/v1/releases`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRelease {
    /// Defaults to the version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub version: String,
    /// `firmware` (default), `file`, `command`, `container`, `k8s` or `app`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Device types (`device_type` label values) this release fits; empty = all.
    #[serde(default)]
    pub compatible: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// For cluster agents: the image reference they set on workloads (any
    /// kind of release may carry one, so a rollout can span pods and boards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// For FlashJob boards: the firmware image…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// …and the flasher pod's image (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash_pod_image: Option<String>,
    /// `app` releases (required for them, refused for others): the ROS
    /// application spec as an object, as `otafleet app render` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub app_spec: Option<serde_json::Value>,
}

/// `GET /api/v1/releases` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReleaseListQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Cursor: the `next` value of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
}

/// `PUT /api/v1/releases/{id}/artifacts/{name}` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Expected hex SHA-256 of the body: the upload is refused (422) if it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `POST /api/v1/admin/artifacts/gc` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ArtifactGcQuery {
    /// Only report what would be freed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// One stored blob no release references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FreedArtifact {
    pub sha256: String,
    pub size: i64,
}

/// `POST /api/v1/admin/artifacts/gc`: what was (or, on a dry run, would be) freed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactGc {
    pub dry_run: bool,
    pub freed: Vec<FreedArtifact>,
    /// Sum of the freed sizes.
    pub bytes: i64,
}
