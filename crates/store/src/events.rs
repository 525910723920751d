//! The append-only event log: every state change, with who caused it and the
//! numbers behind it. Events are only ever inserted, in the same transaction as
//! the change they describe.

use crate::sql::Sql;
use crate::{Result, RowExt, Store};
use otafleet_core::EventKind;
use serde::Serialize;
use sqlx::any::AnyRow;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: EventKind,
    pub rollout_id: Option<i64>,
    pub device_id: Option<Uuid>,
    pub action_id: Option<i64>,
    pub actor: String,
    pub data: serde_json::Value,
}

impl NewEvent {
    pub fn new(kind: EventKind, actor: &str) -> Self {
        NewEvent {
            kind,
            rollout_id: None,
            device_id: None,
            action_id: None,
            actor: actor.to_string(),
            data: serde_json::Value::Null,
        }
    }
    pub fn rollout(mut self, id: i64) -> Self {
        self.rollout_id = Some(id);
        self
    }
    pub fn device(mut self, id: Uuid) -> Self {
        self.device_id = Some(id);
        self
    }
    pub fn action(mut self, id: i64) -> Self {
        self.action_id = Some(id);
        self
    }
    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub at: i64,
    pub kind: EventKind,
    pub rollout_id: Option<i64>,
    pub device_id: Option<Uuid>,
    pub action_id: Option<i64>,
    pub actor: String,
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub rollout_id: Option<i64>,
    pub device_id: Option<Uuid>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    /// Only kinds of this group: `rollout` for `rollout.*` (a rollout's
    /// timeline without its many action events).
    pub group: Option<String>,
    /// Only events with a larger id (for tailing).
    pub after: Option<i64>,
    /// Only events with a smaller id (pages of a newest-first list).
    pub before: Option<i64>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    pub limit: i64,
}

pub(crate) async fn insert(conn: &mut sqlx::AnyConnection, at: i64, e: &NewEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (at, kind, rollout_id, device_id, action_id, actor, data) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(at)
    .bind(e.kind.as_str())
    .bind(e.rollout_id)
    .bind(e.device_id.map(|d| d.to_string()))
    .bind(e.action_id)
    .bind(e.actor.as_str())
    .bind(e.data.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

fn from_row(r: &AnyRow) -> Result<Event> {
    Ok(Event {
        id: r.i64("id")?,
        at: r.i64("at")?,
        kind: r.parsed("kind")?,
        rollout_id: r.opt_i64("rollout_id")?,
        device_id: r.opt_string("device_id")?.and_then(|s| s.parse().ok()),
        action_id: r.opt_i64("action_id")?,
        actor: r.string("actor")?,
        data: r.json("data")?,
    })
}

impl Store {
    /// Events oldest first, filtered, at most `limit`.
    pub async fn list_events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        let mut sql =
            Sql::new("SELECT id, at, kind, rollout_id, device_id, action_id, actor, data FROM events WHERE 1=1");
        if let Some(r) = q.rollout_id {
            sql.push(" AND rollout_id = ").bind_i64(r);
        }
        if let Some(d) = q.device_id {
            sql.push(" AND device_id = ").bind_str(&d.to_string());
        }
        if let Some(k) = &q.kind {
            sql.push(" AND kind = ").bind_str(k);
        }
        if let Some(a) = &q.actor {
            sql.push(" AND actor = ").bind_str(a);
        }
        if let Some(g) = &q.group {
            // A range, not LIKE, so an index on kind serves it on both engines ('/' follows '.').
            sql.push(" AND kind > ").bind_str(&format!("{g}.")).push(" AND kind < ").bind_str(&format!("{g}/"));
        }
        if let Some(a) = q.after {
            sql.push(" AND id > ").bind_i64(a);
        }
        if let Some(b) = q.before {
            sql.push(" AND id < ").bind_i64(b);
        }
        sql.push(if q.newest_first { " ORDER BY id DESC LIMIT " } else { " ORDER BY id LIMIT " })
            .bind_i64(q.limit.clamp(1, 10_000));
        let rows = sql.query().fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// The events with these ids (at most 1000 asked for), oldest first: the
    /// event stream asks again for ids it jumped over.
    pub async fn events_by_ids(&self, ids: &[i64]) -> Result<Vec<Event>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql =
            Sql::new("SELECT id, at, kind, rollout_id, device_id, action_id, actor, data FROM events WHERE id IN (");
        for (i, id) in ids.iter().take(1000).enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind_i64(*id);
        }
        sql.push(") ORDER BY id");
        let rows = sql.query().fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// The id of the newest event: every change to rollouts is an event, so this
    /// is a cheap validator for caches of rollout lists.
    pub async fn last_event_id(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT MAX(id) AS n FROM events").fetch_one(&self.pool).await?.opt_i64("n")?.unwrap_or(0))
    }

    /// Appends one event on its own (for changes that are not a transition).
    pub async fn append_event(&self, e: &NewEvent) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert(&mut conn, crate::now_ms(), e).await
    }
}
