//! `/api/v1/enrollment-tokens`: tokens devices present once to enroll
//! themselves (`POST /device/v1/enroll`, whose types are in
//! `otafleet_core::protocol`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// A name for the audit log (default `enrollment`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels every device enrolled with this token gets (they override the device's own).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Lifetime in seconds (default: no expiry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    /// How many devices may enroll with it (default: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<i64>,
}

/// An enrollment token just created, with its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentToken {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub expires_at: Option<String>,
    pub created_by: String,
    pub created_at: String,
    /// The secret to give devices (`otafleet-agent` `enrollment_token`). Shown only once.
    pub token: String,
}

/// An enrollment token as listed and shown: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentTokenInfo {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub state: crate::TokenState,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub expires_at: Option<String>,
    pub created_by: String,
    pub created_at: String,
    /// The last enrollment with it; `null` = never used.
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}
