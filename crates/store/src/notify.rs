//! Cache coherence between replicas: PostgreSQL `LISTEN/NOTIFY`.
//!
//! A change that makes what another replica's caches hold stale (an action
//! released, reported, timed out or failed by a check-in; a token revoked; a
//! device token rotated; a device deleted) sends a [`Change`] on
//! [`CHANNEL`] *inside the transaction that makes the change*: PostgreSQL
//! delivers a transaction's notifications at its commit and drops them on a
//! rollback, so a listener never hears of a change that is not committed, and
//! hears of every committed one after it is visible to its next read. Each
//! message names the [`Store`] that sent it ([`Store::origin`]), so a
//! replica skips its own (it updated its caches itself, right after the
//! commit). On SQLite one process owns the database and nothing is sent.
//!
//! [`Listener`] is the receiving side, on its own connection (a `PgListener`
//! from the same URL: the `Any` pool cannot `LISTEN`). Notifications are not
//! queued for a listener that is not connected: whoever uses it must assume
//! that anything may have changed when it (re)connects or loses its connection.

use crate::{Backend, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The one channel all replicas of a database listen on.
pub const CHANNEL: &str = "otafleet_caches";

/// A NOTIFY payload must stay under 8000 bytes: device lists are cut into
/// messages of at most this many ids (37 bytes each as JSON).
const DEVICES_PER_MESSAGE: usize = 150;

/// Rollout ids per message (at most 20 bytes each as JSON).
const ROLLOUTS_PER_MESSAGE: usize = 300;

/// What changed, as far as other replicas' caches are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The actions of these devices changed (released, reported, timed out,
    /// failed): what a cache holds about their in-flight action and version is stale.
    Actions { devices: Vec<Uuid> },
    /// These rollouts or their actions changed (their revision moved): the
    /// leader's driver looks at them again.
    Rollouts { ids: Vec<i64> },
    /// An API token was revoked.
    TokenRevoked { id: i64 },
    /// A device's token was replaced.
    DeviceToken { device: Uuid },
    /// A device was deleted.
    DeviceDeleted { device: Uuid },
    /// A listener's own heartbeat: proves the connection still delivers.
    Ping { n: u64 },
}

/// A received [`Change`] and the store that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub origin: String,
    #[serde(flatten)]
    pub change: Change,
}

impl Change {
    /// The payloads this change is sent as (device lists cut to fit).
    fn payloads(&self, origin: &str) -> Result<Vec<String>> {
        let one = |change: Change| {
            serde_json::to_string(&Notice { origin: origin.to_string(), change })
                .map_err(|e| StoreError::Invalid(format!("notification: {e}")))
        };
        match self {
            Change::Actions { devices } if devices.len() > DEVICES_PER_MESSAGE => {
                devices.chunks(DEVICES_PER_MESSAGE).map(|c| one(Change::Actions { devices: c.to_vec() })).collect()
            }
            Change::Actions { devices } if devices.is_empty() => Ok(Vec::new()),
            Change::Rollouts { ids } if ids.len() > ROLLOUTS_PER_MESSAGE => {
                ids.chunks(ROLLOUTS_PER_MESSAGE).map(|c| one(Change::Rollouts { ids: c.to_vec() })).collect()
            }
            Change::Rollouts { ids } if ids.is_empty() => Ok(Vec::new()),
            other => Ok(vec![one(other.clone())?]),
        }
    }
}

/// Sends `change` inside the caller's transaction (delivered at its commit).
/// Nothing on SQLite.
pub(crate) async fn send(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    origin: &str,
    change: &Change,
) -> Result<()> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    let payloads = change.payloads(origin)?;
    if payloads.is_empty() {
        return Ok(());
    }
    let all = serde_json::to_string(&payloads).map_err(|e| StoreError::Invalid(format!("notification: {e}")))?;
    // One statement however many messages (a release of 100,000 actions is ~700).
    sqlx::query("SELECT pg_notify($1, p) FROM jsonb_array_elements_text(CAST($2 AS jsonb)) AS p")
        .bind(CHANNEL)
        .bind(all)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// Sends `change` on its own (outside any transaction): for changes
    /// already committed, and for heartbeats. Nothing on SQLite.
    pub async fn notify(&self, change: &Change) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        send(&mut conn, self.backend, &self.origin, change).await
    }

    /// The name this store signs its notifications with (unique per `connect`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Starts listening on [`CHANNEL`] on a connection of its own.
    /// PostgreSQL only (`Invalid` on SQLite, which has no other writer).
    pub async fn listen(&self) -> Result<Listener> {
        let url = match (&self.backend, &self.url) {
            (Backend::Postgres, Some(u)) => u.to_string(),
            _ => return Err(StoreError::Invalid("only PostgreSQL has notifications".into())),
        };
        let mut inner = sqlx::postgres::PgListener::connect(&url).await?;
        inner.listen(CHANNEL).await?;
        Ok(Listener { inner })
    }
}

/// What [`Listener::next`] received.
#[derive(Debug)]
pub enum Received {
    Notice(Notice),
    /// The connection was lost: notifications sent meanwhile are gone. Drop
    /// this listener and [`Store::listen`] again.
    Lost,
}

/// The receiving end of [`CHANNEL`].
pub struct Listener {
    inner: sqlx::postgres::PgListener,
}

impl Listener {
    /// Waits for the next notification. A payload that is not a [`Notice`]
    /// (another version's, or someone's `NOTIFY` by hand) is skipped.
    pub async fn next(&mut self) -> Result<Received> {
        loop {
            match self.inner.try_recv().await? {
                None => return Ok(Received::Lost),
                Some(n) => match serde_json::from_str::<Notice>(n.payload()) {
                    Ok(notice) => return Ok(Received::Notice(notice)),
                    Err(e) => tracing::warn!(error = %e, payload = n.payload(), "ignoring an unknown notification"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_device_lists_are_cut_to_fit_a_payload() {
        let devices: Vec<Uuid> = (0..1000u128).map(Uuid::from_u128).collect();
        let p = Change::Actions { devices: devices.clone() }.payloads("replica-with-a-long-name-0123456789").unwrap();
        assert_eq!(p.len(), 1000usize.div_ceil(DEVICES_PER_MESSAGE));
        assert!(p.iter().all(|s| s.len() < 8000), "{}", p.iter().map(String::len).max().unwrap_or(0));
        let back: Vec<Uuid> = p
            .iter()
            .flat_map(|s| match serde_json::from_str::<Notice>(s).unwrap().change {
                Change::Actions { devices } => devices,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(back, devices);
        assert!(Change::Actions { devices: vec![] }.payloads("o").unwrap().is_empty());
        let t = Change::TokenRevoked { id: 7 }.payloads("o").unwrap();
        assert_eq!(serde_json::from_str::<Notice>(&t[0]).unwrap().change, Change::TokenRevoked { id: 7 });
    }
}
