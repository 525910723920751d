//! The original OTA Deploy Tracker's API (`/` and `/ota/*`), kept field for
//! field so its Python CLI and job runner keep working. A tracker "job" is a
//! rollout; the status words are the tracker's (`pending`, `complete`,
//! `rollback_pending`, `rollback_complete`, or the rollout state).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `GET /` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub msg: String,
    pub service: String,
    pub version: String,
}

/// `POST /ota/deploy` query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeployQuery {
    pub version: String,
    /// `canary` (default), `blue` or `green`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployResponse {
    pub job_id: i64,
    pub version: String,
    pub status: String,
    pub wave: String,
}

/// One entry of `GET /ota/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: i64,
    pub version: String,
    pub wave: String,
    pub status: String,
    pub created_at: String,
}

/// `POST /ota/update_status` query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UpdateStatusQuery {
    pub job_id: i64,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpdateStatusResponse {
    pub status: String,
    pub job_id: i64,
    pub new_status: String,
}

/// `POST /ota/rollback` query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RollbackQuery {
    /// The version to go back to.
    pub version: String,
    /// Scope: `canary`, `blue` or `green` (default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RollbackResponse {
    pub job_id: i64,
    pub version: String,
    pub status: String,
    /// Always `rollback`.
    #[serde(rename = "type")]
    pub kind: String,
}
