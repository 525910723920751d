//! `/api/v1/events`: the audit log.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use super::Page;
use crate::time::rfc3339;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use otafleet_api::{self as api, EventListQuery};
use otafleet_store::{Event, EventQuery, Role};

/// A stored event as the API answers it.
pub fn event_view(e: Event) -> api::Event {
    api::Event {
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

/// Events, oldest first.
#[utoipa::path(get, operation_id = "listEvents", path = "/api/v1/events", params(EventListQuery),
    responses((status = 200, body = Page<api::Event>), super::error::doc::AuthErrors, super::error::doc::QueryErrors), security(("bearer" = [])), tag = "events")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EventListQuery>,
) -> ApiResult<Json<Page<api::Event>>> {
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
    Ok(Json(Page { items: evs.into_iter().map(event_view).collect(), next }))
}
