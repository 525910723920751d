//! The management API's types: what `/api/v1/*` and the tracker-compatible
//! `/ota/*` endpoints take and answer, and the one error body every failure
//! carries. The server serializes these, the CLI and the simulated fleet
//! deserialize them, and the OpenAPI document (`/api/v1/openapi.json`) is
//! generated from them, so the three cannot drift apart.
//!
//! This crate owns the wire shape only: field names, optional and nullable
//! fields, documentation. It knows nothing of storage or HTTP handling: it
//! must not depend on `otafleet-store` or `otafleet-server`, and conversions
//! from stored rows live in the server. Domain vocabulary (states, presets,
//! strategies) comes from `otafleet-core`. The device protocol
//! (`/device/v1/*`) is in `otafleet_core::protocol`, not here.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod delegates;
pub mod devices;
pub mod enroll;
pub mod error;
pub mod events;
pub mod releases;
pub mod rollouts;
pub mod telemetry;
pub mod tokens;
pub mod tracker;
pub mod webhooks;

pub use alerts::{Alert, AlertListQuery, AlertRule, CreateAlertRule};
pub use delegates::{CreateDelegate, CreatedDelegate, Delegate};
pub use devices::{
    BulkRegister, BulkRegistered, Device, DeviceListQuery, RegisterDevice, RegisteredDevice, UpdateDevice,
};
pub use enroll::{CreateEnrollmentToken, EnrollmentToken, EnrollmentTokenInfo};
pub use error::{ErrorBody, ErrorDetail};
pub use events::{Event, EventListQuery, EventStreamQuery};
pub use releases::{
    Artifact, ArtifactGc, ArtifactGcQuery, CreateRelease, FreedArtifact, Release, ReleaseListQuery, UploadQuery,
};
pub use rollouts::{
    Action, ActionListQuery, AnalysisCheck, AnalysisMeasurement, CreateRollout, Rollout, RolloutListQuery,
    RolloutTarget, WaveProgress,
};
pub use telemetry::{TelemetryAnswer, TelemetryPoint, TelemetryQuery, TelemetrySeries};
pub use tokens::{CreateToken, CreatedToken, DeviceToken, TokenInfo, TokenState};
pub use webhooks::{CreateWebhook, CreatedWebhook, Delivery, DeliveryCounts, DeliveryListQuery, Webhook};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A page of results with the cursor of the next page (`null` on the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    pub next: Option<String>,
}
