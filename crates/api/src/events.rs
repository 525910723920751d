//! `/api/v1/events`: the audit log.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: i64,
    pub at: String,
    /// `rollout.created`, `action.succeeded`, `device.registered`, … (`otafleet_core::EventKind`).
    #[schema(value_type = String)]
    pub kind: otafleet_core::EventKind,
    pub rollout_id: Option<i64>,
    pub device_id: Option<Uuid>,
    pub action_id: Option<i64>,
    pub actor: String,
    /// Details of the event; `null` for events that have none (e.g. `device.deleted`).
    #[schema(value_type = Option<Object>)]
    pub data: serde_json::Value,
}

/// `GET /api/v1/events` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventListQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<Uuid>,
    /// e.g. `rollout.failed`, `action.succeeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Who caused it, as events name them: `token:<name>`, `device:<id>`, `driver`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Cursor: events after this id (oldest first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// `GET /api/v1/events/stream` query: which events to send. Without
/// `after` (or a `Last-Event-ID` header, which wins), only events from now on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventStreamQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<Uuid>,
    /// One kind, e.g. `action.failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Resume: send the events after this id first (the id of the last event received).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// Summarize device actions: instead of every `action.*` event (one or
    /// more per device of a rollout), at most one `actions.summary` event
    /// every 500 ms, with data `{"count": n, "rollout_ids": [...]}` and the
    /// id of the newest event it stands for. Other events come as they are.
    /// What a dashboard of a large rollout wants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<bool>,
}
