//! The device protocol's wire types, shared by the server, the agent and the
//! simulated fleet so that the protocol is written down exactly once.

use crate::model::{ActionKind, ActionState, DeviceHealth};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /device/v1/checkin` body. The device is identified by its token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckinRequest {
    /// The version actually running: the registry takes this as the truth.
    pub current_version: Option<String>,
    pub health: Option<DeviceHealth>,
}

/// `POST /device/v1/checkin` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckinResponse {
    pub device_id: Uuid,
    /// The action to perform now, if any.
    pub action: Option<ActionOrder>,
    /// When to check in next if nothing is pushed.
    pub poll_after_secs: u64,
}

/// An artifact of a release as a device needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub name: String,
    pub uri: String,
    pub size: u64,
    pub sha256: String,
}

/// The work handed to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOrder {
    pub action_id: i64,
    pub rollout_id: i64,
    pub kind: ActionKind,
    /// Version to install (for a rollback: the version to go back to).
    pub version: String,
    pub state: ActionState,
    /// Highest sequence number the server accepted for this action; continue above it.
    pub last_seq: i64,
    pub artifacts: Vec<ArtifactRef>,
    /// Detached ed25519 signature of the release manifest, hex, if signed.
    pub signature: Option<String>,
}

/// `POST /device/v1/status` body. Idempotent by `(action_id, seq)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub action_id: i64,
    /// Strictly increasing per action; duplicates and stale reports are ignored.
    pub seq: i64,
    pub state: ActionState,
    pub message: Option<String>,
    /// The version running after this step, if the device knows it.
    pub current_version: Option<String>,
}

/// What the server did with a status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusAck {
    pub action_id: i64,
    /// `applied`, `duplicate` (seq already seen) or `ignored` (not a legal move now).
    pub outcome: String,
    /// The action's state after the report.
    pub state: ActionState,
}
