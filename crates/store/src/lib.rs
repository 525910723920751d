//! otafleet-store: persistence on SQLite (the embedded default) and PostgreSQL.
//!
//! One concrete [`Store`] over sqlx's `Any` driver, so every query is written once
//! and behaves the same on both engines. The portable subset we keep to: integers
//! are `BIGINT`/`INTEGER` read as `i64`, booleans are 0/1, timestamps are Unix
//! milliseconds, UUIDs and JSON are text, placeholders are `$N`. The two schema
//! dialects live side by side in `migrations/{sqlite,postgres}` and are embedded
//! in the binary. Every state transition is written together with its event in
//! one transaction (see `rollouts/`); SQLite write transactions use
//! `BEGIN IMMEDIATE` so concurrent writers wait instead of failing.
#![forbid(unsafe_code)]

mod alerts;
mod artifacts;
mod delegates;
mod devices;
mod enroll;
mod events;
mod leases;
pub mod notify;
mod releases;
mod rollouts;
mod sql;
mod telemetry;
mod tokens;
mod webhooks;

pub use alerts::{AlertChange, AlertRecord, AlertRuleRecord, NewAlertRule};
pub use delegates::{Delegate, InventoryDevice, InventoryOutcome};
pub use devices::{Device, DeviceQuery, DeviceSort, FleetCounts, NewDevice, TargetDevice, VersionMoves};
pub use enroll::{EnrollRefusal, EnrollmentToken, NewEnrollmentToken};
pub use events::{Event, EventQuery, NewEvent};
pub use leases::{Fence, DRIVER_LEASE};
pub use releases::{Artifact, NewArtifact, NewRelease, Release};
pub use rollouts::{
    Action, ActionQuery, Checkin, NewRollout, Parts, ReportOutcome, Rollout, RolloutQuery, RolloutSummary, Step,
    Target, WaveProgress,
};
pub use telemetry::{CandidateField, DeviceWindow, TelemetryWindow, WindowRange};
pub use tokens::{hash_token, Bootstrap, NewToken, Role, TokenRecord};
pub use webhooks::{
    Attempt, AttemptOutcome, Delivery, DeliveryCounts, DeliveryState, NewDelivery, NewWebhook, Webhook,
};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};
use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database url '{0}': use sqlite://PATH or postgres://…")]
    BadUrl(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store (or the writer in front of it) is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// A leader's write was refused: its lease lapsed or changed hands, so
    /// another replica may be acting (see `leases`). Nothing was written.
    #[error("fenced: {0}")]
    Fenced(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Current wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer at a time; queueing writers here hands the lock
    /// over at once, where SQLite's busy handler would sleep and poll.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Signs this store's notifications (see [`notify`]); unique per `connect`.
    origin: std::sync::Arc<str>,
    /// The PostgreSQL URL, for the listener's own connection.
    url: Option<std::sync::Arc<String>>,
    /// Whether writes get their lock (see [`WriteHealth`]).
    write_health: std::sync::Arc<WriteHealthState>,
    /// Signalled after every commit that changed a rollout or its actions.
    changed: std::sync::Arc<tokio::sync::Notify>,
}

/// How long a SQLite write may wait for the lock while no writer of this
/// process holds it before it counts as stuck (`/readyz` says so).
const WRITE_LOCK_PATIENCE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct WriteHealthState {
    /// Unix ms since which a write has been waiting for the lock; 0: none.
    waiting_since: std::sync::atomic::AtomicI64,
    /// Times the idle connections were closed to free a stuck lock.
    heals: std::sync::atomic::AtomicU64,
}

/// Whether the database's write lock is being handed out (SQLite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteHealth {
    /// Since when (Unix ms) a write has waited more than a second for the
    /// lock although no writer of this process held it: a leaked transaction
    /// or another process.
    pub stuck_since: Option<i64>,
    /// Times the idle connections were closed to free a lock held with no
    /// writer of ours (a transaction left open by a cancelled request).
    pub heals: u64,
}

fn migrator(backend: Backend) -> Migrator {
    let sqls: [(i64, &'static str, &'static str); 19] = match backend {
        Backend::Sqlite => [
            (1, "init", include_str!("../migrations/sqlite/0001_init.sql")),
            (2, "agent", include_str!("../migrations/sqlite/0002_agent.sql")),
            (3, "action_counts", include_str!("../migrations/sqlite/0003_action_counts.sql")),
            (4, "preset", include_str!("../migrations/sqlite/0004_preset.sql")),
            (5, "leases", include_str!("../migrations/sqlite/0005_leases.sql")),
            (6, "token_lifecycle", include_str!("../migrations/sqlite/0006_token_lifecycle.sql")),
            (9, "rollout_changes", include_str!("../migrations/sqlite/0009_rollout_changes.sql")),
            (10, "webhooks", include_str!("../migrations/sqlite/0010_webhooks.sql")),
            (11, "event_groups", include_str!("../migrations/sqlite/0011_event_groups.sql")),
            (12, "label_index", include_str!("../migrations/sqlite/0012_label_index.sql")),
            (13, "telemetry", include_str!("../migrations/sqlite/0013_telemetry.sql")),
            (14, "analysis", include_str!("../migrations/sqlite/0014_analysis.sql")),
            (15, "alerts", include_str!("../migrations/sqlite/0015_alerts.sql")),
            (16, "telemetry_age_index", include_str!("../migrations/sqlite/0016_telemetry_age_index.sql")),
            (17, "telemetry_extremes", include_str!("../migrations/sqlite/0017_telemetry_extremes.sql")),
            (
                18,
                "actions_without_rollout_fk",
                include_str!("../migrations/sqlite/0018_actions_without_rollout_fk.sql"),
            ),
            (19, "rollout_covers_target", include_str!("../migrations/sqlite/0019_rollout_covers_target.sql")),
            (20, "delegates", include_str!("../migrations/sqlite/0020_delegates.sql")),
            (21, "app_spec", include_str!("../migrations/sqlite/0021_app_spec.sql")),
        ],
        Backend::Postgres => [
            (1, "init", include_str!("../migrations/postgres/0001_init.sql")),
            (2, "agent", include_str!("../migrations/postgres/0002_agent.sql")),
            (3, "action_counts", include_str!("../migrations/postgres/0003_action_counts.sql")),
            (4, "preset", include_str!("../migrations/postgres/0004_preset.sql")),
            (5, "leases", include_str!("../migrations/postgres/0005_leases.sql")),
            (6, "token_lifecycle", include_str!("../migrations/postgres/0006_token_lifecycle.sql")),
            (9, "rollout_changes", include_str!("../migrations/postgres/0009_rollout_changes.sql")),
            (10, "webhooks", include_str!("../migrations/postgres/0010_webhooks.sql")),
            (11, "event_groups", include_str!("../migrations/postgres/0011_event_groups.sql")),
            (12, "label_index", include_str!("../migrations/postgres/0012_label_index.sql")),
            (13, "telemetry", include_str!("../migrations/postgres/0013_telemetry.sql")),
            (14, "analysis", include_str!("../migrations/postgres/0014_analysis.sql")),
            (15, "alerts", include_str!("../migrations/postgres/0015_alerts.sql")),
            (16, "telemetry_age_index", include_str!("../migrations/postgres/0016_telemetry_age_index.sql")),
            (17, "telemetry_extremes", include_str!("../migrations/postgres/0017_telemetry_extremes.sql")),
            (
                18,
                "actions_without_rollout_fk",
                include_str!("../migrations/postgres/0018_actions_without_rollout_fk.sql"),
            ),
            (19, "rollout_covers_target", include_str!("../migrations/postgres/0019_rollout_covers_target.sql")),
            (20, "delegates", include_str!("../migrations/postgres/0020_delegates.sql")),
            (21, "app_spec", include_str!("../migrations/postgres/0021_app_spec.sql")),
        ],
    };
    Migrator {
        migrations: Cow::Owned(
            sqls.into_iter()
                .map(|(v, name, sql)| {
                    Migration::new(v, Cow::Borrowed(name), MigrationType::Simple, Cow::Borrowed(sql), false)
                })
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

impl Store {
    /// Connects, creating a SQLite file if needed (WAL mode), and runs migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let mut u = format!("sqlite:{rest}");
            if !rest.contains("mode=") && !rest.contains(":memory:") {
                u.push_str(if rest.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
            }
            (Backend::Sqlite, u)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let memory = url.contains(":memory:");
        let opts = AnyPoolOptions::new()
            .max_connections(match (backend, memory) {
                (Backend::Sqlite, true) => 1,
                (Backend::Sqlite, false) => 8,
                (Backend::Postgres, _) => 16,
            })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Durable enough with WAL, much faster than FULL; busy waits up to 10 s.
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                        // Reads of a large fleet hit the OS page cache through a
                        // shared map instead of a pread per page, and each
                        // connection keeps more hot pages (16 MiB) than the default 2 MiB.
                        sqlx::query("PRAGMA mmap_size = 268435456").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA cache_size = -16384").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA wal_autocheckpoint = 16384").execute(&mut *conn).await?;
                    } else {
                        // A transaction left idle (its process paused or cut
                        // off mid-way) is ended by the server: its locks, among
                        // them the driver's fence (`FOR SHARE` on the lease
                        // row), would otherwise hold off a takeover until that
                        // process came back. No transaction of ours idles
                        // between statements for anywhere near this long.
                        sqlx::query("SET idle_in_transaction_session_timeout = 3000").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        let pool = opts.connect(&url).await?;
        if backend == Backend::Sqlite && !memory {
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        migrator(backend).run(&pool).await?;
        let origin = uuid::Uuid::new_v4().simple().to_string().into();
        let url = (backend == Backend::Postgres).then(|| std::sync::Arc::new(url));
        Ok(Store {
            pool,
            backend,
            writer: Default::default(),
            origin,
            url,
            write_health: Default::default(),
            changed: Default::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite, after taking
    /// the in-process writer queue).
    ///
    /// The `BEGIN` runs in a task of its own, so a caller cancelled while it
    /// is under way (a client that hung up, a timeout) cannot leave a
    /// connection in an open transaction: the task finishes and drops the
    /// transaction, which rolls it back. Should a connection hold the lock
    /// all the same while no writer of ours does (we hold the queue), that is
    /// a leaked transaction: after [`WRITE_LOCK_PATIENCE`] the store reports
    /// itself stuck ([`Store::write_health`]), and when SQLite gives up
    /// (`database is locked`) it closes the idle connections, which frees
    /// the lock, and tries once more.
    pub(crate) async fn write_tx(&self) -> Result<WriteTx> {
        let touched = Touched {
            ids: Default::default(),
            changed: self.changed.clone(),
            origin: (self.backend == Backend::Postgres).then(|| self.origin.clone()),
        };
        Ok(match self.backend {
            Backend::Sqlite => {
                let guard = self.writer.clone().lock_owned().await;
                let tx = match self.begin_immediate().await {
                    Err(StoreError::Db(e)) if is_locked(&e) => {
                        let closed = self.close_idle_connections().await;
                        tracing::error!(
                            closed,
                            "the SQLite write lock was held with no writer of ours: closed the idle connections"
                        );
                        self.begin_immediate().await?
                    }
                    r => r?,
                };
                WriteTx { tx, _guard: Some(guard), touched }
            }
            Backend::Postgres => WriteTx { tx: self.pool.begin().await?, _guard: None, touched },
        })
    }

    async fn begin_immediate(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let pool = self.pool.clone();
        let mut begin = tokio::spawn(async move { pool.begin_with("BEGIN IMMEDIATE").await });
        let health = &self.write_health;
        let joined = tokio::select! {
            r = &mut begin => r,
            _ = tokio::time::sleep(WRITE_LOCK_PATIENCE) => {
                let _ = health.waiting_since.compare_exchange(0, now_ms(), Relaxed, Relaxed);
                begin.await
            }
        };
        let r = joined.map_err(|e| StoreError::Invalid(format!("beginning a transaction: {e}")))?;
        if r.is_ok() {
            health.waiting_since.store(0, Relaxed);
        }
        Ok(r?)
    }

    /// Closes every idle pooled connection (the pool opens new ones): closing
    /// a SQLite connection rolls back a transaction left open on it and frees
    /// the lock. Not a `ROLLBACK` statement: sqlx tracks each connection's
    /// transaction depth itself, and would go on believing it nested.
    /// Call holding the writer queue. Returns how many were closed.
    async fn close_idle_connections(&self) -> u64 {
        let mut idle = Vec::new();
        while let Some(conn) = self.pool.try_acquire() {
            idle.push(conn);
        }
        let n = idle.len() as u64;
        for conn in idle {
            let _ = conn.close().await;
        }
        self.write_health.heals.fetch_add(1, Relaxed);
        n
    }

    /// Signalled (a stored permit if nobody waits) after every commit of this
    /// store that changed a rollout or one of its actions; other replicas'
    /// changes arrive as [`notify::Change::Rollouts`].
    pub fn changes(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Whether writes get the database's lock (always healthy on PostgreSQL).
    pub fn write_health(&self) -> WriteHealth {
        let since = self.write_health.waiting_since.load(Relaxed);
        WriteHealth { stuck_since: (since != 0).then_some(since), heals: self.write_health.heals.load(Relaxed) }
    }

    /// Liveness of the database connection.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The migrations this binary knows that the database has not applied
    /// (empty when the schema is current).
    pub async fn missing_migrations(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(&self.pool).await?;
        let applied = rows.iter().map(|r| r.i64("version")).collect::<Result<Vec<_>>>()?;
        Ok(migrator(self.backend).iter().map(|m| m.version).filter(|v| !applied.contains(v)).collect())
    }

    /// Refreshes the query planner's statistics of every table (`ANALYZE`):
    /// what autovacuum does on its own on PostgreSQL, for a database where
    /// it is off, after a bulk load.
    pub async fn analyze(&self) -> Result<()> {
        sqlx::query("ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A write transaction; derefs to the connection. Dropped without
/// [`WriteTx::commit`], it rolls back.
pub(crate) struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    touched: Touched,
}

/// The rollouts a transaction changed (the rollout or its actions): at
/// commit their revision is raised (`rollout_changes`, read by the driver),
/// other replicas are told ([`notify::Change::Rollouts`], PostgreSQL) and
/// this process's driver is woken ([`Store::changes`]).
struct Touched {
    ids: std::collections::BTreeSet<i64>,
    changed: std::sync::Arc<tokio::sync::Notify>,
    /// This store's origin on PostgreSQL (notifications are sent), else None.
    origin: Option<std::sync::Arc<str>>,
}

impl WriteTx {
    /// Records that this transaction changes rollout `id` or one of its actions.
    pub(crate) fn touch(&mut self, rollout_id: i64) {
        self.touched.ids.insert(rollout_id);
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        if self.touched.ids.is_empty() {
            self.tx.commit().await?;
            return Ok(());
        }
        let ids: Vec<i64> = self.touched.ids.iter().copied().collect();
        if let Some(origin) = &self.touched.origin {
            notify::send(&mut self.tx, Backend::Postgres, origin, &notify::Change::Rollouts { ids: ids.clone() })
                .await?;
        }
        // Last, and in id order: two transactions raising the same
        // revisions queue on them instead of deadlocking, and the rows stay
        // locked only for the commit. Integers only: formatted.
        let values = ids.iter().map(|id| format!("({id}, 1)")).collect::<Vec<_>>().join(", ");
        sqlx::query(&format!(
            "INSERT INTO rollout_changes (rollout_id, rev) VALUES {values} \
             ON CONFLICT (rollout_id) DO UPDATE SET rev = rollout_changes.rev + 1"
        ))
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        self.touched.changed.notify_one();
        Ok(())
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// SQLite's "database is locked" (SQLITE_BUSY, code 5).
fn is_locked(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("5") || d.message().contains("database is locked"))
}

/// Typed column access with the column name in the error.
pub(crate) trait RowExt {
    fn i64(&self, col: &str) -> Result<i64>;
    fn opt_i64(&self, col: &str) -> Result<Option<i64>>;
    fn opt_f64(&self, col: &str) -> Result<Option<f64>>;
    fn string(&self, col: &str) -> Result<String>;
    fn opt_string(&self, col: &str) -> Result<Option<String>>;
    fn parsed<T: std::str::FromStr>(&self, col: &str) -> Result<T>
    where
        T::Err: std::fmt::Display;
    fn json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<T>;
}

impl RowExt for AnyRow {
    fn i64(&self, col: &str) -> Result<i64> {
        Ok(self.try_get::<i64, _>(col)?)
    }
    fn opt_i64(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get::<Option<i64>, _>(col)?)
    }
    fn opt_f64(&self, col: &str) -> Result<Option<f64>> {
        Ok(self.try_get::<Option<f64>, _>(col)?)
    }
    fn string(&self, col: &str) -> Result<String> {
        Ok(self.try_get::<String, _>(col)?)
    }
    fn opt_string(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get::<Option<String>, _>(col)?)
    }
    fn parsed<T: std::str::FromStr>(&self, col: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let s = self.string(col)?;
        s.parse().map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
    }
    fn json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<T> {
        let s = self.string(col)?;
        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
    }
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
pub(crate) fn conflict_or(e: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(message()),
        _ => StoreError::Db(e),
    }
}

#[cfg(test)]
mod tests;

/// Creates an empty PostgreSQL database next to the one in `base_url` and
/// returns its URL, so every test run gets its own schema. Its name carries
/// its creation time; test databases more than [`TEST_DATABASE_HOURS`] old
/// (and ones named before names carried a time) are dropped first, so runs on
/// one machine do not fill its disk.
pub async fn fresh_postgres_database(base_url: &str) -> Result<String> {
    sqlx::any::install_default_drivers();
    let now = now_ms() / 1000;
    let name = format!("otafleet_test_{now}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(base_url).await?;
    let names = sqlx::query(
        "SELECT CAST(datname AS TEXT) AS datname FROM pg_database WHERE datname LIKE 'otafleet\\_test\\_%'",
    )
    .fetch_all(&mut conn)
    .await?;
    for row in names {
        let old: String = row.string("datname")?;
        if stale_test_database(&old, now) {
            // One in use (a run still going) refuses: left for a later run.
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {old}")).execute(&mut conn).await;
        }
    }
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let (head, tail) = base_url.split_once("://").ok_or_else(|| StoreError::BadUrl(base_url.to_string()))?;
    let (hostpart, query) = match tail.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (tail, None),
    };
    let host = hostpart.split('/').next().unwrap_or(hostpart);
    let mut url = format!("{head}://{host}/{name}");
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    Ok(url)
}

/// How long a test database is kept (a test run takes minutes).
pub const TEST_DATABASE_HOURS: i64 = 6;

/// Whether a database named by [`fresh_postgres_database`] is old enough to drop at `now` (Unix s).
fn stale_test_database(name: &str, now: i64) -> bool {
    let Some(rest) = name.strip_prefix("otafleet_test_") else { return false };
    match rest.split_once('_').and_then(|(t, id)| Some((t.parse::<i64>().ok()?, id))) {
        Some((created, id)) if id.len() == 32 => created < now - TEST_DATABASE_HOURS * 3600,
        Some(_) => false,
        // Named before names carried a time: a uuid alone.
        None => rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()),
    }
}
