//! Which replica drives rollouts: the holder of the `driver` lease row
//! (`otafleet_store::leases`).
//!
//! Every replica runs [`run`]: it tries to take or renew the lease every third
//! of its duration. The holder may act (the driver runs passes and expiry)
//! only until two thirds of the duration after the last *successful* attempt
//! was sent, so a holder that cannot renew (database unreachable, process
//! paused) stops before the lease lapses and anyone else can take over. Every
//! write the driver makes carries the [`Fence`] and is checked in its own
//! transaction, so even a holder that overslept its window cannot write. On
//! shutdown the holder releases the lease at once. The timing rules are the
//! pure [`LeaseClock`] and [`after_attempt`], tested without I/O.

use crate::AppState;
pub use otafleet_core::lease::LeaseClock;
use otafleet_store::{now_ms, Fence, DRIVER_LEASE};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One holding of the lease, as this replica knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub fence: Fence,
    /// This replica acts until then (monotonic clock).
    pub act_until: Instant,
}

/// What an attempt to take or renew the lease came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease.
    Held(Fence),
    /// Another replica holds a live lease.
    Refused,
    /// The database did not answer (error or timeout).
    Failed,
}

/// The term after an attempt sent at `sent`, and whether this replica has just
/// become the leader (a new holding: a token it did not act under before).
/// A failed attempt keeps the current term, which still ends at its own
/// `act_until`: renewing is what extends it.
pub fn after_attempt(
    clock: LeaseClock,
    current: Option<Term>,
    sent: Instant,
    attempt: Attempt,
) -> (Option<Term>, bool) {
    match attempt {
        Attempt::Held(fence) => {
            let new = current.as_ref().is_none_or(|t| t.fence.token != fence.token || t.act_until <= sent);
            (Some(Term { fence, act_until: sent + clock.act_window() }), new)
        }
        Attempt::Refused => (None, false),
        Attempt::Failed => (current, false),
    }
}

/// The fence this replica may act under at `now`, if any.
pub fn acting(term: Option<&Term>, now: Instant) -> Option<&Fence> {
    term.filter(|t| now < t.act_until).map(|t| &t.fence)
}

/// This replica's leadership, shared by the lease task and the driver.
pub struct Leadership {
    pub replica: String,
    pub clock: LeaseClock,
    term: Mutex<Option<Term>>,
}

impl Leadership {
    pub fn new(replica: String, ttl: Duration) -> Self {
        Leadership { replica, clock: LeaseClock::new(ttl), term: Mutex::new(None) }
    }

    fn term(&self) -> std::sync::MutexGuard<'_, Option<Term>> {
        self.term.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fence to drive under now, or None when this replica must not drive.
    pub fn fence(&self) -> Option<Fence> {
        acting(self.term().as_ref(), Instant::now()).cloned()
    }

    pub fn is_leader(&self) -> bool {
        self.fence().is_some()
    }

    fn set_gauge(&self, state: &AppState) {
        let v = i64::from(self.is_leader());
        state.metrics.leader.get_or_create(&vec![("replica".into(), self.replica.clone())]).set(v);
    }
}

/// A replica id for this process: `<hostname>-<pid>-<4 random hex>` (the
/// random part keeps two containers that are both pid 1 on a host of the same
/// name apart).
pub fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "otafleet".into());
    let suffix: u16 = rand::random();
    format!("{host}-{}-{suffix:04x}", std::process::id())
}

/// Takes and renews the driver's lease until `stop` turns true, then releases
/// it at once if held. A driver transaction still in flight keeps its fence
/// checked (on PostgreSQL it holds the lease row, so the release waits for its
/// commit): nothing written under the old fence can land after the release.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let me = state.leader.clone();
    let clock = me.clock;
    me.set_gauge(&state);
    // One process owns a SQLite database: the first attempt takes the lease
    // outright instead of waiting out a crashed predecessor's.
    let mut take = state.store.backend() == otafleet_store::Backend::Sqlite;
    loop {
        if *stop.borrow() {
            break;
        }
        let sent = Instant::now();
        let store = &state.store;
        let request = async {
            if std::mem::take(&mut take) {
                store.take_lease(DRIVER_LEASE, &me.replica, clock.ttl, now_ms()).await.map(Some)
            } else {
                store.acquire_or_renew_lease(DRIVER_LEASE, &me.replica, clock.ttl, now_ms()).await
            }
        };
        let attempt = match tokio::time::timeout(clock.act_window(), request).await {
            Ok(Ok(Some(fence))) => Attempt::Held(fence),
            Ok(Ok(None)) => Attempt::Refused,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not renew the driver's lease");
                Attempt::Failed
            }
            Err(_) => {
                tracing::warn!("renewing the driver's lease timed out");
                Attempt::Failed
            }
        };
        let (was, became, token) = {
            let mut term = me.term();
            let was = acting(term.as_ref(), sent).is_some();
            let (next, became) = after_attempt(clock, term.take(), sent, attempt);
            let token = next.as_ref().map(|t| t.fence.token);
            *term = next;
            (was, became, token)
        };
        if became {
            tracing::info!(replica = %me.replica, token, "this replica now drives rollouts");
            state.metrics.leader_takeovers.inc();
            state.driver_wake.notify_one();
        } else if was && !me.is_leader() {
            tracing::warn!(replica = %me.replica, "lost the driver's lease: no longer driving rollouts");
        }
        me.set_gauge(&state);
        let wait = (sent + clock.renew_interval()).saturating_duration_since(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
    let held = me.term().take();
    me.set_gauge(&state);
    if let Some(t) = held {
        match state.store.release_lease(DRIVER_LEASE, &t.fence.holder, t.fence.token).await {
            Ok(true) => tracing::info!(replica = %me.replica, "released the driver's lease"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not release the driver's lease; it lapses on its own"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(token: i64) -> Fence {
        Fence { name: "driver".into(), holder: "a".into(), token, expires_at: 0 }
    }

    #[test]
    fn renews_every_third_and_acts_for_two_thirds() {
        let c = LeaseClock::new(Duration::from_secs(9));
        assert_eq!(c.renew_interval(), Duration::from_secs(3));
        assert_eq!(c.act_window(), Duration::from_secs(6));
        // One renewal may fail and the holder still acts until the next; it
        // stops a third of the lease before the lease lapses for the others.
        assert!(c.renew_interval() < c.act_window());
        assert_eq!(c.ttl - c.act_window(), c.renew_interval());
        assert!(c.act_window() < c.ttl);
        assert_eq!(LeaseClock::new(Duration::ZERO).renew_interval(), Duration::from_millis(10));
    }

    #[test]
    fn a_holder_that_cannot_renew_stops_before_the_lease_lapses() {
        let c = LeaseClock::new(Duration::from_secs(9));
        let t0 = Instant::now();
        let (term, became) = after_attempt(c, None, t0, Attempt::Held(fence(1)));
        assert!(became);
        assert_eq!(acting(term.as_ref(), t0 + Duration::from_secs(5)), Some(&fence(1)));
        // The next renewals fail: the term is kept but ends on its own, at two
        // thirds of the lease after the last successful attempt was sent.
        let (term, became) = after_attempt(c, term, t0 + Duration::from_secs(3), Attempt::Failed);
        assert!(!became);
        let (term, _) = after_attempt(c, term, t0 + Duration::from_secs(6), Attempt::Failed);
        assert!(acting(term.as_ref(), t0 + Duration::from_millis(5_999)).is_some());
        assert_eq!(acting(term.as_ref(), t0 + Duration::from_secs(6)), None);
        assert_eq!(acting(term.as_ref(), t0 + c.ttl), None, "not acting when others may take over");
    }

    #[test]
    fn renewing_extends_and_only_a_new_holding_counts_as_a_takeover() {
        let c = LeaseClock::new(Duration::from_secs(9));
        let t0 = Instant::now();
        let (term, _) = after_attempt(c, None, t0, Attempt::Held(fence(1)));
        let t1 = t0 + Duration::from_secs(3);
        let (term, became) = after_attempt(c, term, t1, Attempt::Held(fence(1)));
        assert!(!became, "a renewal");
        assert_eq!(term.as_ref().map(|t| t.act_until), Some(t1 + Duration::from_secs(6)));
        // A new token (the lease lapsed and was taken again) is a new holding.
        let (term, became) = after_attempt(c, term, t1 + Duration::from_secs(3), Attempt::Held(fence(2)));
        assert!(became);
        // Another replica holds it: this one stops at once.
        let (term, became) = after_attempt(c, term, t1 + Duration::from_secs(4), Attempt::Refused);
        assert!(!became);
        assert_eq!(term, None);
        assert_eq!(acting(None, t0), None);
    }

    #[test]
    fn renewing_after_the_window_closed_is_a_new_holding() {
        let c = LeaseClock::new(Duration::from_secs(9));
        let t0 = Instant::now();
        let (term, _) = after_attempt(c, None, t0, Attempt::Held(fence(1)));
        // Same token (nobody took it meanwhile), but this replica had stopped acting.
        let (_, became) = after_attempt(c, term, t0 + Duration::from_secs(7), Attempt::Held(fence(1)));
        assert!(became);
    }
}
