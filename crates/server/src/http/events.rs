//! `/api/v1/events`: the audit log, as pages and as a live stream (Server-Sent
//! Events, fed by `service::stream`).

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use super::Page;
use crate::service::stream::{self, Filter, Streamed};
use crate::time::rfc3339;
use crate::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{self, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use otafleet_api::{self as api, EventListQuery, EventStreamQuery};
use otafleet_core::EventKind;
use otafleet_store::{Event, EventQuery, Role};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

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
            actor: q.actor,
            after: q.after,
            limit,
            ..Default::default()
        })
        .await?;
    let next = (evs.len() as i64 == limit).then(|| evs.last().map(|e| e.id.to_string())).flatten();
    Ok(Json(Page { items: evs.into_iter().map(event_view).collect(), next }))
}

/// The live event stream (Server-Sent Events): each event as `id:` (its id),
/// `event:` (its kind) and `data:` (the `Event` JSON), filtered like the
/// list. A client that reconnects sends `Last-Event-ID` (browsers'
/// `EventSource` does it by itself) and first gets every matching event it
/// missed. Delivery is at least once: skip ids you have. A comment line
/// every 15 s keeps proxies from closing an idle stream. With `summary=true`
/// the `action.*` events are replaced by at most one `actions.summary` event
/// every 500 ms (what dashboards of large rollouts use).
#[utoipa::path(get, operation_id = "streamEvents", path = "/api/v1/events/stream",
    params(EventStreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id (wins over `after`)")),
    responses((status = 200, description = "an endless `text/event-stream`; `data` is an `Event`",
            content_type = "text/event-stream", body = String),
        super::error::doc::AuthErrors, super::error::doc::QueryErrors,
        (status = 503, description = "the server is starting or stopping", body = super::error::ErrorBody)),
    security(("bearer" = [])), tag = "events")]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventStreamQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>> {
    caller.require(Role::Viewer)?;
    let resume =
        match headers.get("last-event-id") {
            None => None,
            Some(v) => {
                Some(v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()).filter(|n| *n >= 0).ok_or_else(
                    || ApiError::invalid("Last-Event-ID", "must be an event id (a non-negative integer)"),
                )?)
            }
        };
    if let Some(a) = q.after {
        if a < 0 {
            return Err(ApiError::invalid("after", "must be an event id (a non-negative integer)"));
        }
    }
    if let Some(k) = &q.kind {
        k.parse::<EventKind>().map_err(|e| ApiError::invalid("kind", e.to_string()))?;
    }
    let filter = Filter { rollout_id: q.rollout_id, device_id: q.device_id, kind: q.kind };
    let sub = subscribe(&state).await?;
    let after = resume.or(q.after);
    let (tx, rx) = mpsc::channel::<sse::Event>(256);
    let out = Out { tx, summary: q.summary.unwrap_or(false).then(Summary::default) };
    tokio::spawn(pump(state, filter, after, sub, out));
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A subscription to the feed, waiting a moment for it to start.
async fn subscribe(state: &AppState) -> ApiResult<stream::Subscription> {
    for _ in 0..100 {
        if let Some(sub) = state.feed.subscribe() {
            return Ok(sub);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ApiError::unavailable("the event stream is not ready yet; retry"))
}

fn sse_event(e: &Streamed) -> sse::Event {
    sse::Event::default().id(e.id.to_string()).event(e.kind).data(&*e.json)
}

/// How often a summary of action events is sent at most.
pub const SUMMARY_EVERY: Duration = Duration::from_millis(500);

/// Action events held back for the next `actions.summary`.
#[derive(Debug, Default)]
struct Summary {
    count: u64,
    rollouts: std::collections::BTreeSet<i64>,
    last_id: i64,
    /// When the first held-back event came: the summary goes out by then + [`SUMMARY_EVERY`].
    since: Option<tokio::time::Instant>,
}

/// Where a stream's events go: straight to the client, or, for action
/// events in summary mode, into the next summary.
struct Out {
    tx: mpsc::Sender<sse::Event>,
    summary: Option<Summary>,
}

impl Out {
    /// Sends (or holds back) one event; false when the client is gone.
    async fn send(&mut self, e: &Streamed) -> bool {
        if let Some(s) = self.summary.as_mut() {
            if e.kind.starts_with("action.") {
                s.count += 1;
                s.rollouts.extend(e.rollout_id);
                s.last_id = s.last_id.max(e.id);
                s.since.get_or_insert_with(tokio::time::Instant::now);
                return true;
            }
            // Anything else keeps its place after the actions before it.
            if !self.flush().await {
                return false;
            }
        }
        self.tx.send(sse_event(e)).await.is_ok()
    }

    /// Sends the summary held back, if any; false when the client is gone.
    async fn flush(&mut self) -> bool {
        let Some(s) = self.summary.as_mut() else { return true };
        if s.count == 0 {
            return true;
        }
        let data = serde_json::json!({"count": s.count, "rollout_ids": s.rollouts});
        let ev = sse::Event::default().id(s.last_id.to_string()).event("actions.summary").data(data.to_string());
        *s = Summary::default();
        self.tx.send(ev).await.is_ok()
    }

    /// When the held-back summary is due.
    fn due(&self) -> Option<tokio::time::Instant> {
        self.summary.as_ref().and_then(|s| s.since).map(|t| t + SUMMARY_EVERY)
    }
}

/// Sends what the client missed, then the feed, until the client leaves or
/// the server stops. After falling behind the broadcast (a slow client), it
/// reads what it lost from the table again.
async fn pump(state: AppState, filter: Filter, after: Option<i64>, mut sub: stream::Subscription, mut out: Out) {
    let closing = state.feed.closing();
    tokio::pin!(closing);
    let open = sse::Event::default().comment(format!("otafleet event stream, at event {}", sub.from.high));
    if out.tx.send(open).await.is_err() {
        return;
    }
    let mut resume = after;
    loop {
        // What was missed, from the table.
        if let Some(mut at) = resume.take() {
            loop {
                let (events, next) = match stream::backlog(&state.store, &filter, at, &sub.from).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: reading missed events");
                        return;
                    }
                };
                for e in &events {
                    if !out.send(e).await {
                        return;
                    }
                }
                match next {
                    Some(n) => at = n,
                    None => break,
                }
            }
            if !out.flush().await {
                return;
            }
        }
        // Then live.
        let mut high = sub.from.high;
        loop {
            let due = out.due();
            let batch = tokio::select! {
                b = sub.rx.recv() => b,
                _ = async { tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)).await }, if due.is_some() => {
                    if !out.flush().await {
                        return;
                    }
                    continue;
                }
                _ = out.tx.closed() => return,
                _ = &mut closing => return,
            };
            match batch {
                Ok(batch) => {
                    for e in batch.iter().filter(|e| filter.matches(e)) {
                        if !out.send(e).await {
                            return;
                        }
                    }
                    high = batch.iter().map(|e| e.id).fold(high, i64::max);
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "event stream: a slow client fell behind; reading from the table");
                    break;
                }
                Err(RecvError::Closed) => return,
            }
        }
        match subscribe(&state).await {
            Ok(s) => sub = s,
            Err(_) => return,
        }
        resume = Some(high);
    }
}
