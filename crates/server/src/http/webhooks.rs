//! `/api/v1/webhooks` (admin only): create (the signing secret is in the
//! answer, once), list, show, delete; each webhook's delivery log, and a
//! redelivery on request. Delivering is `service::webhooks`.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::{parse_id, Page};
use crate::time::{rfc3339, rfc3339_opt};
use crate::{new_secret, AppState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use otafleet_api::{self as api, CreateWebhook, CreatedWebhook, DeliveryListQuery};
use otafleet_core::validate as rules;
use otafleet_core::webhook::EventFilter;
use otafleet_store::{Delivery, DeliveryCounts, DeliveryState, NewWebhook, Role, Webhook};

/// Webhooks one server keeps at most.
pub const MAX_WEBHOOKS: usize = 100;

fn counts_view(c: DeliveryCounts) -> api::DeliveryCounts {
    api::DeliveryCounts { pending: c.pending, delivered: c.delivered, failed: c.failed }
}

/// A stored webhook as the API shows it (never the secret).
pub fn webhook_view(w: Webhook, counts: DeliveryCounts) -> api::Webhook {
    api::Webhook {
        id: w.id,
        url: w.url,
        events: w.events,
        description: w.description,
        created_at: rfc3339(w.created_at),
        created_by: w.created_by,
        after_event_id: w.after_event_id,
        deliveries: counts_view(counts),
    }
}

pub fn delivery_view(d: Delivery) -> api::Delivery {
    api::Delivery {
        id: d.id,
        webhook_id: d.webhook_id,
        event_id: d.event_id,
        event_kind: d.event_kind,
        state: d.state.as_str().to_string(),
        attempts: d.attempts,
        next_attempt_at: if d.state == DeliveryState::Pending { rfc3339_opt(d.next_attempt_at) } else { None },
        last_attempt_at: rfc3339_opt(d.last_attempt_at),
        last_status: d.last_status,
        last_error: d.last_error,
        last_duration_ms: d.last_duration_ms,
        created_at: rfc3339(d.created_at),
        delivered_at: rfc3339_opt(d.delivered_at),
    }
}

/// Create a webhook: every event matching `events` from now on is POSTed to
/// `url`, signed; the secret is in the answer, once.
#[utoipa::path(post, operation_id = "createWebhook", path = "/api/v1/webhooks", request_body = CreateWebhook,
    responses((status = 201, body = CreatedWebhook),
        (status = 409, description = "the server keeps 100 webhooks at most", body = super::error::ErrorBody),
        super::error::doc::AuthErrors, super::error::doc::JsonBodyErrors),
    security(("bearer" = [])), tag = "webhooks")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> ApiResult<(StatusCode, Json<CreatedWebhook>)> {
    caller.require(Role::Admin)?;
    rules::webhook_url(&body.url).map_err(|m| ApiError::invalid("url", m))?;
    reqwest::Url::parse(&body.url).map_err(|e| ApiError::invalid("url", format!("not a URL: {e}")))?;
    let filter = EventFilter::parse(&body.events).map_err(|m| ApiError::invalid("events", m))?;
    let description = body.description.unwrap_or_default();
    rules::description(&description).map_err(|m| ApiError::invalid("description", m))?;
    if state.store.list_webhooks().await?.len() >= MAX_WEBHOOKS {
        return Err(ApiError::conflict(format!("at most {MAX_WEBHOOKS} webhooks; delete one first")));
    }
    let secret = new_secret("whsec");
    let actor = caller.actor();
    let new = NewWebhook {
        url: &body.url,
        events: filter.to_strings(),
        description: &description,
        secret: &secret,
        created_by: &actor,
    };
    let w = state.store.create_webhook(&new).await?;
    tracing::info!(webhook = w.id, url = %w.url, by = %actor, "webhook created");
    let created = CreatedWebhook {
        id: w.id,
        url: w.url,
        events: w.events,
        description: w.description,
        created_at: rfc3339(w.created_at),
        secret,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Every webhook, oldest first, with its deliveries by state (`next` is always `null`).
#[utoipa::path(get, operation_id = "listWebhooks", path = "/api/v1/webhooks",
    responses((status = 200, body = Page<api::Webhook>), super::error::doc::AuthErrors), security(("bearer" = [])), tag = "webhooks")]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Page<api::Webhook>>> {
    caller.require(Role::Admin)?;
    let counts = state.store.delivery_counts().await?;
    let items = state
        .store
        .list_webhooks()
        .await?
        .into_iter()
        .map(|w| {
            let c = counts.get(&w.id).copied().unwrap_or_default();
            webhook_view(w, c)
        })
        .collect();
    Ok(Json(Page { items, next: None }))
}

async fn find(state: &AppState, raw: &str) -> ApiResult<Webhook> {
    let id = parse_id(raw, "webhook")?;
    state.store.get_webhook(id).await?.ok_or_else(|| ApiError::not_found(format!("webhook {id} not found")))
}

/// One webhook (never its secret).
#[utoipa::path(get, operation_id = "getWebhook", path = "/api/v1/webhooks/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = api::Webhook), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "webhooks")]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Webhook>> {
    caller.require(Role::Admin)?;
    let w = find(&state, &id).await?;
    let c = state.store.delivery_counts().await?.get(&w.id).copied().unwrap_or_default();
    Ok(Json(webhook_view(w, c)))
}

/// Delete a webhook and its delivery log; nothing more is sent to it.
#[utoipa::path(delete, operation_id = "deleteWebhook", path = "/api/v1/webhooks/{id}", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "webhooks")]
pub async fn delete(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    let id = parse_id(&id, "webhook")?;
    match state.store.delete_webhook(id, &caller.actor()).await? {
        Some(w) => {
            tracing::info!(webhook = w.id, url = %w.url, by = %caller.actor(), "webhook deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::not_found(format!("webhook {id} not found"))),
    }
}

/// A webhook's delivery log, newest first: each event's delivery with its
/// attempts and the last answer.
#[utoipa::path(get, operation_id = "listWebhookDeliveries", path = "/api/v1/webhooks/{id}/deliveries",
    params(("id" = i64, Path), DeliveryListQuery),
    responses((status = 200, body = Page<api::Delivery>), (status = 404, body = super::error::ErrorBody),
        super::error::doc::AuthErrors, super::error::doc::QueryErrors),
    security(("bearer" = [])), tag = "webhooks")]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveryListQuery>,
) -> ApiResult<Json<Page<api::Delivery>>> {
    caller.require(Role::Admin)?;
    let w = find(&state, &id).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let st =
        q.state.as_deref().map(str::parse::<DeliveryState>).transpose().map_err(|m| ApiError::invalid("state", m))?;
    let items = state.store.list_deliveries(w.id, st, q.before, limit).await?;
    let next = (items.len() as i64 == limit).then(|| items.last().map(|d| d.id.to_string())).flatten();
    Ok(Json(Page { items: items.into_iter().map(delivery_view).collect(), next }))
}

/// Send a delivery again now (one that failed, or was delivered and is
/// wanted again); 409 while it is still pending.
#[utoipa::path(post, operation_id = "redeliverWebhookDelivery", path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    params(("id" = i64, Path), ("delivery_id" = i64, Path)),
    responses((status = 200, body = api::Delivery), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), super::error::doc::AuthErrors),
    security(("bearer" = [])), tag = "webhooks")]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, delivery_id)): Path<(String, String)>,
) -> ApiResult<Json<api::Delivery>> {
    caller.require(Role::Admin)?;
    let w = find(&state, &id).await?;
    let did = parse_id(&delivery_id, "delivery")?;
    match state.store.redeliver(w.id, did).await? {
        Some(d) => Ok(Json(delivery_view(d))),
        None => match state.store.get_delivery(w.id, did).await? {
            Some(_) => Err(ApiError::conflict(format!("delivery {did} is pending already"))),
            None => Err(ApiError::not_found(format!("delivery {did} of webhook {} not found", w.id))),
        },
    }
}
