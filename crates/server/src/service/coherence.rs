//! Coherence between replicas on PostgreSQL: the listener task.
//!
//! Other replicas' changes arrive as notifications (`otafleet_store::notify`,
//! sent in the transaction of each change) and are applied to the caches by
//! `delivery::changed_elsewhere`; this replica's own are skipped (it updated
//! its caches right after its commit). A heartbeat (a `Ping` this replica
//! sends itself every second) proves the connection still delivers: when it
//! is lost, errs, or three seconds pass without a message, the caches stop
//! answering from memory (`delivery::desynced`), a new listener connects,
//! and once its `LISTEN` is in place the caches forget what they knew
//! (`delivery::resync`) and serve from memory again. See `caches` for the
//! rules. On SQLite there is nothing to listen to: one process owns the database.

use super::delivery;
use crate::AppState;
use otafleet_store::notify::{Change, Listener, Received};
use otafleet_store::Backend;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often this replica sends itself a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long without any message before the connection counts as lost.
const SILENCE: Duration = Duration::from_secs(3);

/// Starts listening, before the caches are warmed (so no change committed
/// after the warming read is missed). None on SQLite.
pub async fn listen(state: &AppState) -> anyhow::Result<Option<Listener>> {
    if state.store.backend() != Backend::Postgres {
        return Ok(None);
    }
    Ok(Some(state.store.listen().await?))
}

/// Applies other replicas' changes until `stop` turns true; reconnects (and
/// resyncs the caches) whenever notifications may have been lost.
pub async fn run(state: AppState, mut listener: Listener, mut stop: watch::Receiver<bool>) {
    let pinger = tokio::spawn(heartbeat(state.clone()));
    let reconnect = otafleet_rt::Retry::new(Duration::from_millis(100), Duration::from_secs(5)).jitter(0.2);
    loop {
        let why = tokio::select! {
            why = receive(&state, &mut listener) => why,
            _ = stop.wait_for(|s| *s) => break,
        };
        tracing::warn!(reason = %why, "cache notifications lost: serving from the database until listening again");
        delivery::desynced(&state);
        state.metrics.cache_resyncs.inc();
        let mut attempts = reconnect.start();
        listener = loop {
            let next = async {
                let l = state.store.listen().await?;
                delivery::resync(&state).await?;
                anyhow::Ok(l)
            };
            let r = tokio::select! {
                r = next => r,
                _ = stop.wait_for(|s| *s) => {
                    pinger.abort();
                    return;
                }
            };
            match r {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(error = %e, "could not listen for cache notifications; retrying");
                    attempts.wait().await;
                }
            }
        };
        tracing::info!("listening for cache notifications again; caches resynced");
    }
    pinger.abort();
}

/// Receives until the connection is (or looks) lost; returns why.
async fn receive(state: &AppState, listener: &mut Listener) -> String {
    let origin = state.store.origin().to_string();
    let mut last_own = Instant::now();
    loop {
        let received = match tokio::time::timeout(SILENCE, listener.next()).await {
            Err(_) => return format!("no notification for {} s", SILENCE.as_secs()),
            Ok(Err(e)) => return e.to_string(),
            Ok(Ok(Received::Lost)) => return "connection lost".into(),
            Ok(Ok(Received::Notice(n))) => n,
        };
        if received.origin == origin {
            if matches!(received.change, Change::Ping { .. }) {
                last_own = Instant::now();
            }
        } else {
            delivery::changed_elsewhere(state, &received.change);
        }
        // Others' messages keep arriving but our heartbeats do not: our
        // notifications (or the ones we should hear) are not getting through.
        if last_own.elapsed() > SILENCE {
            return format!("no heartbeat for {} s", SILENCE.as_secs());
        }
    }
}

async fn heartbeat(state: AppState) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        if let Err(e) = state.store.notify(&Change::Ping { n }).await {
            tracing::debug!(error = %e, "could not send the cache heartbeat");
        }
    }
}
