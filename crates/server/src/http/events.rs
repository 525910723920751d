//! `/api/v1/events`: the audit log.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use super::Page;
use crate::time::rfc3339;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use otafleet_store::{Event, EventQuery, Role};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    pub at: String,
    pub kind: String,
    pub rollout_id: Option<i64>,
    pub device_id: Option<Uuid>,
    pub action_id: Option<i64>,
    pub actor: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        EventView {
            id: e.id,
            at: rfc3339(e.at),
            kind: e.kind,
            rollout_id: e.rollout_id,
            device_id: e.device_id,
            action_id: e.action_id,
            actor: e.actor,
            data: e.data,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub rollout_id: Option<i64>,
    pub device_id: Option<Uuid>,
    /// e.g. `rollout.failed`, `action.succeeded`.
    pub kind: Option<String>,
    /// Cursor: events after this id (oldest first).
    pub after: Option<i64>,
    pub limit: Option<i64>,
}

/// Events, oldest first.
#[utoipa::path(get, path = "/api/v1/events", params(ListQuery),
    responses((status = 200, body = Page<EventView>)), security(("bearer" = [])), tag = "events")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<EventView>>> {
    caller.require(Role::Viewer)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 10000"));
    }
    let evs = state
        .store
        .list_events(&EventQuery {
            rollout_id: q.rollout_id,
            device_id: q.device_id,
            kind: q.kind,
            after: q.after,
            limit,
        })
        .await?;
    let next = (evs.len() as i64 == limit).then(|| evs.last().map(|e| e.id.to_string())).flatten();
    Ok(Json(Page { items: evs.into_iter().map(Into::into).collect(), next }))
}
