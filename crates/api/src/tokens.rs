//! `/api/v1/tokens`: API tokens (admin only), and the token lifecycle shared
//! with enrollment and device tokens. A secret is shown once, in the answer
//! that creates it; listings and `show` never carry it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// Lifetime in seconds (default: no expiry; at most ten years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub id: i64,
    pub name: String,
    pub role: String,
    /// The secret. Shown only once; only its hash is stored.
    pub token: String,
    /// RFC 3339; `null` = never.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// Whether a token is accepted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
    /// An enrollment token whose uses are spent.
    UsedUp,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
            TokenState::UsedUp => "used_up",
        }
    }
}

impl std::fmt::Display for TokenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API token as listed and shown: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    pub state: TokenState,
    pub created_at: String,
    /// Who created it (`token:<name>`); `null` for the bootstrap token.
    pub created_by: Option<String>,
    /// `null` = never expires.
    pub expires_at: Option<String>,
    /// The last request made with it, to the minute; `null` = never used.
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    /// The bootstrap admin token (`OTAFLEET_ADMIN_TOKEN`); a server started
    /// with another one revokes it.
    pub bootstrap: bool,
}

/// `POST /api/v1/devices/{id}/token` answer: the device's new token. The old
/// one is refused from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceToken {
    pub device_id: Uuid,
    /// The device token for `/device/v1`. Shown only once.
    pub token: String,
}
