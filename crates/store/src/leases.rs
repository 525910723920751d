//! Leases: leadership as a row in the database, with a fencing token.
//!
//! A lease (`leases.name`, e.g. [`DRIVER_LEASE`]) is held by one `holder`
//! until `expires_at`. Taking a free or lapsed lease increments its `token`;
//! renewing a live one keeps it. The holder's writes carry the [`Fence`] it
//! got and [`check_fence`] re-reads the row inside the write transaction, so a
//! holder whose lease lapsed (paused, partitioned) cannot write any more once
//! another replica may have taken over. A row in a table works through any
//! connection pooler (PgBouncer in transaction mode drops session advisory
//! locks) and on SQLite the same way.
//!
//! Time is the callers' wall clock in Unix ms: replicas' clocks must agree to
//! well within the lease's duration (the holder stops acting after two thirds
//! of it; see `otafleet_server::leader`).

use crate::{Backend, Result, RowExt, Store, StoreError};
use std::time::Duration;

/// The lease of the rollout driver.
pub const DRIVER_LEASE: &str = "driver";

/// Proof of holding a lease, as of one acquisition or renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease.
    pub name: String,
    /// Who holds it (a replica id).
    pub holder: String,
    /// The fencing token: larger for every new holding of the lease.
    pub token: i64,
    /// Until when the lease holds without renewal (Unix ms).
    pub expires_at: i64,
}

/// Refuses the transaction unless `fence` still holds at `now`: the same
/// holder and token, not expired. On PostgreSQL the row is locked
/// (`FOR SHARE`) until the transaction ends, so a takeover waits for this
/// transaction and this transaction never commits after a takeover; on
/// SQLite the write transaction already excludes every other writer.
pub(crate) async fn check_fence(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    fence: &Fence,
    now: i64,
) -> Result<()> {
    let lock = match backend {
        Backend::Postgres => " FOR SHARE",
        Backend::Sqlite => "",
    };
    let row = sqlx::query(&format!(
        "SELECT token FROM leases WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > $4{lock}"
    ))
    .bind(&fence.name)
    .bind(&fence.holder)
    .bind(fence.token)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced(format!(
            "lease '{}' (token {}) is no longer held by {}",
            fence.name, fence.token, fence.holder
        ))),
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4).max(1)
}

impl Store {
    /// Takes lease `name` for `holder` until `now + ttl` if it is free, lapsed
    /// or already `holder`'s, in one statement. Returns the fence, or None when
    /// another holder's lease is still live. The token grows when the lease is
    /// taken (free or lapsed, whoever held it), and stays when a live lease is
    /// renewed by its holder. Concurrent callers on PostgreSQL serialize on the
    /// row (`INSERT … ON CONFLICT DO UPDATE … WHERE`): at most one wins.
    pub async fn acquire_or_renew_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<Option<Fence>> {
        let expires_at = now.saturating_add(ttl_ms(ttl));
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET \
               token = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > $4 \
                            THEN leases.token ELSE leases.token + 1 END, \
               holder = excluded.holder, \
               expires_at = excluded.expires_at \
             WHERE leases.expires_at <= $4 OR leases.holder = excluded.holder \
             RETURNING token, expires_at",
        )
        .bind(name)
        .bind(holder)
        .bind(expires_at)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let fence = match row {
            Some(r) => Some(Fence {
                name: name.to_string(),
                holder: holder.to_string(),
                token: r.i64("token")?,
                expires_at: r.i64("expires_at")?,
            }),
            None => None,
        };
        tx.commit().await?;
        Ok(fence)
    }

    /// Takes lease `name` whoever holds it, with a larger token. Only for a
    /// database one process owns (SQLite): a process starting on it knows any
    /// earlier holder is gone (it crashed or stopped), so waiting for its lease
    /// to lapse would only delay the resume after a `kill -9`.
    pub async fn take_lease(&self, name: &str, holder: &str, ttl: Duration, now: i64) -> Result<Fence> {
        let expires_at = now.saturating_add(ttl_ms(ttl));
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET token = leases.token + 1, holder = excluded.holder, \
               expires_at = excluded.expires_at \
             RETURNING token, expires_at",
        )
        .bind(name)
        .bind(holder)
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        let fence = Fence {
            name: name.to_string(),
            holder: holder.to_string(),
            token: row.i64("token")?,
            expires_at: row.i64("expires_at")?,
        };
        tx.commit().await?;
        Ok(fence)
    }

    /// Gives lease `name` up at once if `holder` still holds it with `token`
    /// (the row stays, expired, so tokens keep growing). Returns whether it did.
    pub async fn release_lease(&self, name: &str, holder: &str, token: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3")
            .bind(name)
            .bind(holder)
            .bind(token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Who holds lease `name` at `now`, if anyone (for diagnostics and tests).
    pub async fn lease_holder(&self, name: &str, now: i64) -> Result<Option<Fence>> {
        let row = sqlx::query("SELECT holder, token, expires_at FROM leases WHERE name = $1 AND expires_at > $2")
            .bind(name)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(Some(Fence {
                name: name.to_string(),
                holder: r.string("holder")?,
                token: r.i64("token")?,
                expires_at: r.i64("expires_at")?,
            })),
            None => Ok(None),
        }
    }
}
