//! The live event feed behind `GET /api/v1/events/stream` (Server-Sent
//! Events) and the dashboard.
//!
//! Every replica tails the `events` table itself, so a subscriber on any
//! replica sees every replica's events. One task per process reads the table
//! (at most every [`POLL`], only while someone subscribes: an idle server
//! reads nothing) and broadcasts each new event once, already serialized, to
//! every subscriber; subscribers filter in memory. So a hundred dashboards
//! cost one query per poll, not a hundred.
//!
//! **Ids commit out of order on PostgreSQL**: two transactions take ids 10
//! and 11, 11 commits first, a read sees 11 and not 10. A tail that only asks
//! for `id > newest` would lose 10 for good. [`Cursor`] remembers the ids it
//! jumped over (*gaps*) and asks for them again by id until they show up or
//! [`GAP_PATIENCE`] has passed (a rolled-back transaction leaves a gap that
//! never fills). On SQLite, one writer, ids commit in order and there are no
//! gaps.
//!
//! A subscriber that resumes (`Last-Event-ID`) first reads what it missed
//! from the table, up to where the feed stood when it subscribed, then takes
//! the broadcast: nothing is missed, and an event repeats only in the rare
//! case of a late gap filled after a reconnect (delivery is at least once;
//! ids are unique, clients skip what they have).

use crate::http::events::event_view;
use otafleet_store::{Event, EventQuery, Store};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};
use uuid::Uuid;

/// How often the table is read while someone subscribes.
pub const POLL: Duration = Duration::from_millis(250);
/// How long an id jumped over is waited for.
pub const GAP_PATIENCE: Duration = Duration::from_secs(10);
/// At most this many ids are waited for at once (the newest are kept).
const MAX_GAPS: usize = 1000;
/// Events read per query.
const PAGE: i64 = 1000;

/// One event as the stream sends it: the filter fields and the JSON body
/// (`otafleet_api::Event`), serialized once for every subscriber.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub id: i64,
    pub kind: &'static str,
    pub rollout_id: Option<i64>,
    pub device_id: Option<Uuid>,
    pub json: Arc<str>,
}

impl Streamed {
    pub fn new(e: Event) -> Streamed {
        let (id, kind, rollout_id, device_id) = (e.id, e.kind.as_str(), e.rollout_id, e.device_id);
        let json = serde_json::to_string(&event_view(e)).unwrap_or_else(|_| "{}".into());
        Streamed { id, kind, rollout_id, device_id, json: json.into() }
    }
}

/// What a subscriber wants: every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub rollout_id: Option<i64>,
    pub device_id: Option<Uuid>,
    pub kind: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &Streamed) -> bool {
        self.rollout_id.is_none_or(|r| e.rollout_id == Some(r))
            && self.device_id.is_none_or(|d| e.device_id == Some(d))
            && self.kind.as_deref().is_none_or(|k| k == e.kind)
    }

    fn query(&self, after: i64, limit: i64) -> EventQuery {
        EventQuery {
            rollout_id: self.rollout_id,
            device_id: self.device_id,
            kind: self.kind.clone(),
            after: Some(after),
            limit,
            ..EventQuery::default()
        }
    }
}

/// Where the tail stands: every id up to `high` has been taken, except the
/// `gaps` (id → when it was jumped over, ms on the caller's clock). Pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub high: i64,
    pub gaps: BTreeMap<i64, u64>,
}

impl Cursor {
    pub fn at(high: i64) -> Cursor {
        Cursor { high, gaps: BTreeMap::new() }
    }

    /// Whether the event `id` has been taken.
    pub fn has(&self, id: i64) -> bool {
        id <= self.high && !self.gaps.contains_key(&id)
    }

    /// Takes `id` (read at `now`); false if it was taken before. Ids above
    /// `high` must come in ascending order (as a query by id returns them).
    pub fn take(&mut self, id: i64, now: u64) -> bool {
        if id <= self.high {
            return self.gaps.remove(&id).is_some();
        }
        // Jumped over: from high+1 to id-1, only the newest MAX_GAPS.
        let from = (self.high + 1).max(id - MAX_GAPS as i64);
        for g in from..id {
            self.gaps.insert(g, now);
        }
        while self.gaps.len() > MAX_GAPS {
            self.gaps.pop_first();
        }
        self.high = id;
        true
    }

    /// Stops waiting for ids jumped over more than `patience` ms before `now`.
    pub fn expire(&mut self, now: u64, patience: u64) {
        self.gaps.retain(|_, at| now.saturating_sub(*at) <= patience);
    }
}

struct Shared {
    cursor: Cursor,
    /// Whether the cursor has been placed at the table's end.
    started: bool,
}

/// The process's feed; see the module documentation.
pub struct Feed {
    tx: broadcast::Sender<Arc<[Streamed]>>,
    shared: Mutex<Shared>,
    wake: Notify,
    /// Set when the server stops: the tail and every stream end (a graceful
    /// shutdown waits for open responses, and a stream never ends by itself).
    closed: tokio::sync::watch::Sender<bool>,
}

/// A subscription: the position it started from and the broadcast after it.
pub struct Subscription {
    pub rx: broadcast::Receiver<Arc<[Streamed]>>,
    pub from: Cursor,
}

impl Feed {
    pub fn new() -> Arc<Feed> {
        let (tx, _) = broadcast::channel(1024);
        Arc::new(Feed {
            tx,
            shared: Mutex::new(Shared { cursor: Cursor::default(), started: false }),
            wake: Notify::new(),
            closed: tokio::sync::watch::channel(false).0,
        })
    }

    /// Ends the tail and every stream.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once the server stops.
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Subscribes; starts the tail reading if it was idle. `None` until the
    /// tail has placed itself at the end of the table (a moment after start,
    /// or after a time without subscribers).
    pub fn subscribe(&self) -> Option<Subscription> {
        let shared = self.shared.lock().unwrap();
        let sub = shared.started.then(|| Subscription { rx: self.tx.subscribe(), from: shared.cursor.clone() });
        drop(shared);
        self.wake.notify_one();
        sub
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Every event up to this id (but the awaited gaps) was committed and
    /// broadcast before now; 0 while the tail is idle.
    pub fn position(&self) -> i64 {
        let s = self.shared.lock().unwrap();
        if s.started {
            s.cursor.gaps.keys().next().map_or(s.cursor.high, |g| g - 1)
        } else {
            0
        }
    }

    /// The tail: reads new events and filled gaps while anyone subscribes,
    /// sleeps (no reads) otherwise. Runs until the process stops.
    pub async fn run(self: Arc<Feed>, store: Store) {
        let mut stop = self.closed.subscribe();
        let clock = std::time::Instant::now();
        let now = || clock.elapsed().as_millis() as u64;
        loop {
            if *stop.borrow() {
                return;
            }
            let idle = {
                // Checked and set under the lock `subscribe` takes: going
                // idle forgets the position, so the next subscriber waits
                // for a fresh one instead of a broadcast of everything
                // written while nobody listened.
                let mut s = self.shared.lock().unwrap();
                if s.started && self.tx.receiver_count() == 0 {
                    s.started = false;
                    true
                } else {
                    false
                }
            };
            let started = self.shared.lock().unwrap().started;
            if idle {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            if !started {
                match store.last_event_id().await {
                    Ok(high) => {
                        let mut s = self.shared.lock().unwrap();
                        s.cursor = Cursor::at(high);
                        s.started = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "event stream: reading the newest event"),
                }
            } else if let Err(e) = self.read(&store, now()).await {
                tracing::warn!(error = %e, "event stream: reading new events");
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One read: the gaps still awaited, then everything after `high`.
    async fn read(&self, store: &Store, now: u64) -> otafleet_store::Result<()> {
        let cursor = self.shared.lock().unwrap().cursor.clone();
        let mut rows = Vec::new();
        if !cursor.gaps.is_empty() {
            let ids: Vec<i64> = cursor.gaps.keys().copied().collect();
            rows.extend(store.events_by_ids(&ids).await?);
        }
        let mut high = cursor.high;
        loop {
            let page = store.list_events(&Filter::default().query(high, PAGE)).await?;
            let full = page.len() as i64 == PAGE;
            high = page.last().map_or(high, |e| e.id);
            rows.extend(page);
            if !full {
                break;
            }
        }
        let mut s = self.shared.lock().unwrap();
        s.cursor.expire(now, GAP_PATIENCE.as_millis() as u64);
        let mut batch = Vec::with_capacity(rows.len());
        for e in rows {
            if s.cursor.take(e.id, now) {
                batch.push(Streamed::new(e));
            }
        }
        if !batch.is_empty() {
            // Sent under the lock: a subscriber's starting cursor is exactly
            // what it will not receive.
            let _ = self.tx.send(batch.into());
        }
        Ok(())
    }
}

/// One page of what a subscriber resuming after `at` must read from the
/// table before it takes the broadcast: events in `(at, from.high]` that
/// match, less `from`'s gaps (they come through the broadcast once filled).
/// The cursor for the next page, if there is more.
pub async fn backlog(
    store: &Store,
    filter: &Filter,
    at: i64,
    from: &Cursor,
) -> otafleet_store::Result<(Vec<Streamed>, Option<i64>)> {
    if at >= from.high {
        return Ok((Vec::new(), None));
    }
    let page = store.list_events(&filter.query(at, PAGE)).await?;
    let next = (page.len() as i64 == PAGE).then(|| page.last().map(|e| e.id)).flatten().filter(|n| *n < from.high);
    let events =
        page.into_iter().filter(|e| e.id <= from.high && !from.gaps.contains_key(&e.id)).map(Streamed::new).collect();
    Ok((events, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_jumped_over_are_awaited_then_given_up() {
        let mut c = Cursor::at(10);
        assert!(c.take(11, 0));
        assert!(c.take(14, 0), "12 and 13 not committed yet");
        assert_eq!(c.gaps.keys().copied().collect::<Vec<_>>(), vec![12, 13]);
        assert!(!c.has(12) && c.has(11) && c.has(14));
        assert!(!c.take(11, 1), "taken once");
        assert!(c.take(13, 1), "a late commit is taken");
        assert!(!c.take(13, 2));
        c.expire(20_000, 10_000);
        assert!(c.gaps.is_empty(), "12 never came (a rolled-back transaction)");
        assert!(!c.take(12, 20_001), "given up: not taken any more");
    }

    #[test]
    fn a_huge_jump_keeps_only_the_newest_gaps() {
        let mut c = Cursor::at(0);
        assert!(c.take(1_000_000, 0));
        assert_eq!(c.gaps.len(), MAX_GAPS);
        assert_eq!(*c.gaps.keys().next().unwrap(), 1_000_000 - MAX_GAPS as i64);
    }

    proptest! {
        /// Ids committed in any order, read in batches as a tail reads them
        /// (gaps by id, then ascending after high): each id is taken exactly
        /// once, and none is lost while its gap is awaited.
        #[test]
        fn every_committed_id_is_taken_exactly_once(order in Just((1..=60i64).collect::<Vec<_>>()).prop_shuffle(),
                                                     cuts in proptest::collection::vec(0usize..60, 0..8)) {
            let mut cuts = cuts;
            cuts.push(60);
            cuts.sort();
            let mut committed = std::collections::BTreeSet::new();
            let mut c = Cursor::at(0);
            let mut taken = Vec::new();
            let mut start = 0;
            for cut in cuts {
                for id in &order[start..cut.max(start)] {
                    committed.insert(*id);
                }
                start = cut.max(start);
                // One read: awaited gaps that have committed, then ids above high.
                let gaps: Vec<i64> = c.gaps.keys().copied().filter(|g| committed.contains(g)).collect();
                let above: Vec<i64> = committed.range(c.high + 1..).copied().collect();
                for id in gaps.into_iter().chain(above) {
                    if c.take(id, 0) {
                        taken.push(id);
                    }
                }
            }
            taken.sort();
            prop_assert_eq!(taken, (1..=60).collect::<Vec<_>>());
        }
    }
}
