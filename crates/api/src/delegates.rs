//! `/api/v1/delegates`: the delegates (cluster agents, site gateways) that
//! speak the device protocol for many devices (admin only). A delegate's
//! token is shown once, in the answer that creates it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /api/v1/delegates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDelegate {
    /// Unique; also the actor of what it does (`delegate:<name>`).
    pub name: String,
    /// `cluster` or `gateway`.
    pub kind: String,
}

/// A delegate (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delegate {
    pub id: Uuid,
    pub name: String,
    /// `cluster` or `gateway`.
    pub kind: String,
    /// `active` or `revoked`.
    pub state: String,
    pub created_by: String,
    pub created_at: String,
    /// RFC 3339: its last inventory.
    pub last_seen: Option<String>,
    pub revoked_at: Option<String>,
    /// Devices it speaks for (gone ones included).
    pub devices: u64,
}

/// `POST /api/v1/delegates` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedDelegate {
    #[serde(flatten)]
    pub delegate: Delegate,
    /// The secret. Shown only once; only its hash is stored.
    pub token: String,
}
