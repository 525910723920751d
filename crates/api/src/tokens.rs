//! `/api/v1/tokens`: API tokens (admin only).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub id: i64,
    pub name: String,
    pub role: String,
    /// The secret. Shown only once; only its hash is stored.
    pub token: String,
}
