//! The webhook worker: turns events into signed HTTP deliveries.
//!
//! It runs on every replica and works only while this replica holds the
//! driver's lease (`crate::leader`), and every write it makes carries the
//! lease's fence, so exactly one replica delivers. Each pass:
//!
//! 1. **Fan-out.** Reads the events after its [`Cursor`] (the same cursor the
//!    live stream uses, which waits for ids PostgreSQL commits out of order)
//!    and writes one delivery per (webhook, matching event), moving the stored
//!    cursor in the same transaction. The stored cursor stops short of any id
//!    still awaited, and a delivery that exists already is not written again,
//!    so a new leader re-reading a little is harmless.
//! 2. **Sending.** Claims each webhook's due deliveries (at most
//!    [`Settings::concurrency`] in flight per webhook, so one slow receiver
//!    cannot hold up the others) and POSTs each in a task of its own with a
//!    timeout; the answer is recorded, and a failure is retried after the
//!    backoff of `otafleet_core::webhook::RetryPolicy` until it is given up.
//!
//! None of this is on the path of a check-in, a status report or the
//! driver's step: those only append events, as they always did. A receiver
//! that fails or hangs costs this worker's tasks and a few small writes per
//! attempt, nothing else.

use super::stream::{Cursor, GAP_PATIENCE};
use crate::http::events::event_view;
use crate::AppState;
use otafleet_core::webhook::{self, EventFilter, RetryPolicy};
use otafleet_store::{Attempt, AttemptOutcome, Delivery, Event, EventQuery, Fence, NewDelivery, StoreError, Webhook};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How the worker delivers (`otafleet serve --webhook-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub retry: RetryPolicy,
    /// Longest wait for a receiver's answer.
    pub timeout: Duration,
    /// Deliveries in flight at once per webhook.
    pub concurrency: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { retry: RetryPolicy::default(), timeout: Duration::from_secs(10), concurrency: 4 }
    }
}

/// How often the worker looks for new events and due deliveries.
const POLL: Duration = Duration::from_millis(500);
/// Events read per query, and queries per pass at most (so sending goes on
/// while a large backlog is fanned out).
const PAGE: i64 = 1000;
const PAGES_PER_PASS: usize = 20;

/// Deliveries in flight, per webhook.
type InFlight = Arc<Mutex<HashMap<i64, usize>>>;

/// The worker; runs until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let settings = state.config.webhooks;
    let client = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("otafleet-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks disabled: could not build the HTTP client");
            return;
        }
    };
    let in_flight: InFlight = Default::default();
    let clock = Instant::now();
    let mut cursor: Option<Cursor> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        match state.leader.fence() {
            None => cursor = None,
            Some(fence) => {
                if let Err(e) = pass(&state, &client, &fence, &in_flight, &mut cursor, clock).await {
                    cursor = None;
                    match e {
                        StoreError::Fenced(_) => {}
                        e => tracing::warn!(error = %e, "webhooks: a pass failed; trying again"),
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn pass(
    state: &AppState,
    client: &reqwest::Client,
    fence: &Fence,
    in_flight: &InFlight,
    cursor: &mut Option<Cursor>,
    clock: Instant,
) -> Result<(), StoreError> {
    let hooks = state.store.list_webhooks().await?;
    if hooks.is_empty() {
        *cursor = None;
        return Ok(());
    }
    let hooks: Vec<(Arc<Webhook>, EventFilter)> = hooks
        .into_iter()
        .filter_map(|h| match EventFilter::parse(&h.events) {
            Ok(f) => Some((Arc::new(h), f)),
            Err(e) => {
                tracing::warn!(webhook = h.id, error = %e, "webhooks: skipping a webhook with unusable patterns");
                None
            }
        })
        .collect();
    fan_out(state, fence, &hooks, cursor, clock.elapsed().as_millis() as u64).await?;
    send_due(state, client, fence, &hooks, in_flight).await
}

/// Step 1: new events → deliveries, and the stored cursor moved.
async fn fan_out(
    state: &AppState,
    fence: &Fence,
    hooks: &[(Arc<Webhook>, EventFilter)],
    cursor: &mut Option<Cursor>,
    now: u64,
) -> Result<(), StoreError> {
    let store = &state.store;
    let mut c = match cursor.take() {
        Some(c) => c,
        None => {
            // A webhook gets nothing from before it existed: start no lower
            // than the oldest webhook's start.
            let oldest = hooks.iter().map(|(h, _)| h.after_event_id).min().unwrap_or(0);
            Cursor::at(store.webhook_cursor().await?.max(oldest))
        }
    };
    let before = stored_position(&c);
    let mut rows: Vec<Event> = Vec::new();
    if !c.gaps.is_empty() {
        let ids: Vec<i64> = c.gaps.keys().copied().collect();
        rows.extend(store.events_by_ids(&ids).await?);
    }
    let mut high = c.high;
    for _ in 0..PAGES_PER_PASS {
        let page = store.list_events(&EventQuery { after: Some(high), limit: PAGE, ..Default::default() }).await?;
        let full = page.len() as i64 == PAGE;
        high = page.last().map_or(high, |e| e.id);
        rows.extend(page);
        if !full {
            break;
        }
    }
    c.expire(now, GAP_PATIENCE.as_millis() as u64);
    let mut deliveries = Vec::new();
    for e in &rows {
        if !c.take(e.id, now) {
            continue;
        }
        for (h, filter) in hooks {
            if e.id > h.after_event_id && filter.matches(e.kind) {
                deliveries.push(NewDelivery { webhook_id: h.id, event_id: e.id, event_kind: e.kind });
            }
        }
    }
    let stored = stored_position(&c);
    if !deliveries.is_empty() || stored > before {
        store.fan_out(fence, &deliveries, stored).await?;
    }
    *cursor = Some(c);
    Ok(())
}

/// Where a new leader may start reading: below every id still awaited.
fn stored_position(c: &Cursor) -> i64 {
    c.gaps.keys().next().map_or(c.high, |g| g - 1)
}

/// Step 2: claim and send what is due, per webhook within its concurrency.
async fn send_due(
    state: &AppState,
    client: &reqwest::Client,
    fence: &Fence,
    hooks: &[(Arc<Webhook>, EventFilter)],
    in_flight: &InFlight,
) -> Result<(), StoreError> {
    let settings = state.config.webhooks;
    for (hook, _) in hooks {
        let busy = in_flight.lock().unwrap().get(&hook.id).copied().unwrap_or(0);
        let free = settings.concurrency.saturating_sub(busy);
        if free == 0 {
            continue;
        }
        let now = otafleet_store::now_ms();
        // Claimed until well past the attempt's timeout: a leader that dies
        // mid-request leaves it to the next one.
        let until = now + settings.timeout.as_millis() as i64 * 2 + 5_000;
        let claimed = state.store.claim_deliveries(fence, hook.id, now, until, free as i64).await?;
        if claimed.is_empty() {
            continue;
        }
        let ids: Vec<i64> = claimed.iter().map(|d| d.event_id).collect();
        let mut events: HashMap<i64, Event> =
            state.store.events_by_ids(&ids).await?.into_iter().map(|e| (e.id, e)).collect();
        *in_flight.lock().unwrap().entry(hook.id).or_default() += claimed.len();
        for d in claimed {
            let event = events.remove(&d.event_id);
            let job = Job { state: state.clone(), client: client.clone(), fence: fence.clone(), hook: hook.clone() };
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let hook_id = job.hook.id;
                job.deliver(d, event).await;
                if let Some(n) = in_flight.lock().unwrap().get_mut(&hook_id) {
                    *n = n.saturating_sub(1);
                }
            });
        }
    }
    Ok(())
}

struct Job {
    state: AppState,
    client: reqwest::Client,
    fence: Fence,
    hook: Arc<Webhook>,
}

impl Job {
    /// One attempt of `d` and its record.
    async fn deliver(self, d: Delivery, event: Option<Event>) {
        let retry = self.state.config.webhooks.retry;
        let started = Instant::now();
        let (status, error) = match event {
            None => (None, Some(format!("event {} no longer exists", d.event_id))),
            Some(e) => self.post(&d, e).await,
        };
        let at = otafleet_store::now_ms();
        let ok = status.is_some_and(|s| webhook::delivered(s as u16));
        let outcome = if ok {
            AttemptOutcome::Delivered
        } else {
            match retry.next(d.attempts.max(1) as u32) {
                // Up to a tenth more, so deliveries that failed together do not all come back together.
                Some(wait) => {
                    let jitter = rand::random::<f64>() * 0.1;
                    AttemptOutcome::RetryAt(at + (wait.as_millis() as f64 * (1.0 + jitter)) as i64)
                }
                None => AttemptOutcome::GiveUp,
            }
        };
        let label = match outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::RetryAt(_) => "retried",
            AttemptOutcome::GiveUp => "failed",
        };
        self.state.metrics.webhook_attempts.get_or_create(&vec![("outcome".into(), label.into())]).inc();
        if !ok {
            tracing::info!(
                webhook = self.hook.id,
                delivery = d.id,
                attempt = d.attempts,
                status,
                error = error.as_deref(),
                outcome = label,
                "webhook delivery failed"
            );
        }
        let attempt = Attempt { at, status, error, duration_ms: started.elapsed().as_millis() as i64, outcome };
        match self.state.store.record_attempt(&self.fence, d.id, &attempt).await {
            Ok(_) => {}
            // The lease moved on: the claim lapses and the next leader tries again.
            Err(StoreError::Fenced(_)) => {}
            Err(e) => tracing::warn!(delivery = d.id, error = %e, "webhooks: could not record an attempt"),
        }
    }

    /// POSTs the event; the receiver's status, or why there is none.
    async fn post(&self, d: &Delivery, e: Event) -> (Option<i64>, Option<String>) {
        let kind = e.kind.as_str();
        let body = match serde_json::to_vec(&event_view(e)) {
            Ok(b) => b,
            Err(err) => return (None, Some(format!("serializing the event: {err}"))),
        };
        let t = otafleet_store::now_ms() / 1000;
        let sig = webhook::sign(self.hook.secret.as_bytes(), t, &body);
        let res = self
            .client
            .post(&self.hook.url)
            .header("content-type", "application/json")
            .header(webhook::SIGNATURE_HEADER, sig)
            .header(webhook::EVENT_HEADER, kind)
            .header(webhook::DELIVERY_HEADER, d.id.to_string())
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) => {
                let status = r.status();
                let error = (!webhook::delivered(status.as_u16())).then(|| format!("HTTP {status}"));
                (Some(i64::from(status.as_u16())), error)
            }
            Err(err) => {
                let why = if err.is_timeout() {
                    "timed out".to_string()
                } else if err.is_connect() {
                    format!("could not connect: {}", root_cause(&err))
                } else {
                    root_cause(&err)
                };
                (None, Some(why))
            }
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
