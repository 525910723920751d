//! The writes of applied status reports, buffered inside one write
//! transaction and flushed as a few set-based statements.
//!
//! A report that moves an action forward writes three rows: the action's new
//! state, its event, and (for a success or a reported version) the device. One
//! statement each made a batch of 512 reports ~1,500 statements, every one a
//! round trip to sqlx's SQLite worker thread. Buffered, the batch is at most
//! four statements: each list goes to the database as one JSON array, unpacked
//! there (`json_each` on SQLite, `jsonb_array_elements` on PostgreSQL).
//!
//! What makes this exact rather than approximate:
//! - An action is written with its whole final state as computed in memory
//!   from the row read in this transaction, so when two reports of one action
//!   are in the buffer the later one is simply the one written.
//! - Events keep their order (array order, then id order).
//! - A device update depends on the row as it stands (the previous version is
//!   kept), so a second update of one device first flushes the buffer.
//! - Anything else that writes in the transaction (a failed report's retry
//!   logic, which reads the rollout and the action back) flushes first.

use super::Action;
use crate::events::NewEvent;
use crate::sql::{json_col, json_rows};
use crate::{Backend, Result};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

pub(crate) struct ReportWrites {
    backend: Backend,
    actions: Vec<Action>,
    events: Vec<NewEvent>,
    /// Devices that installed a version (the previous one is kept).
    installed: Vec<(Uuid, String)>,
    /// Devices reporting the version they run, written only if it changed.
    runs: Vec<(Uuid, String)>,
    devices: HashSet<Uuid>,
}

impl ReportWrites {
    pub(crate) fn new(backend: Backend) -> Self {
        ReportWrites {
            backend,
            actions: Vec::new(),
            events: Vec::new(),
            installed: Vec::new(),
            runs: Vec::new(),
            devices: HashSet::new(),
        }
    }

    pub(crate) fn action(&mut self, a: Action) {
        self.actions.push(a);
    }

    pub(crate) fn event(&mut self, e: NewEvent) {
        self.events.push(e);
    }

    /// Whether a device update for `device` must wait for a flush.
    pub(crate) fn has_device(&self, device: Uuid) -> bool {
        self.devices.contains(&device)
    }

    /// The device now runs `version`, installed by an action (call
    /// [`ReportWrites::has_device`] first).
    pub(crate) fn installed(&mut self, device: Uuid, version: &str) {
        debug_assert!(!self.devices.contains(&device));
        self.devices.insert(device);
        self.installed.push((device, version.to_string()));
    }

    /// The device says it runs `version` (call [`ReportWrites::has_device`] first).
    pub(crate) fn runs(&mut self, device: Uuid, version: &str) {
        debug_assert!(!self.devices.contains(&device));
        self.devices.insert(device);
        self.runs.push((device, version.to_string()));
    }

    fn rows(&self, n: usize) -> String {
        json_rows(self.backend, n)
    }

    fn col(&self, i: usize, cast: Option<&str>) -> String {
        json_col(self.backend, i, cast)
    }

    /// Writes everything buffered, in the transaction, and empties the buffer.
    pub(crate) async fn flush(&mut self, conn: &mut sqlx::AnyConnection, now: i64) -> Result<()> {
        if !self.actions.is_empty() {
            // The last state of each action is the one to write.
            let mut last: HashMap<i64, usize> = HashMap::with_capacity(self.actions.len());
            for (i, a) in self.actions.iter().enumerate() {
                last.insert(a.id, i);
            }
            let mut rows: Vec<serde_json::Value> = Vec::with_capacity(last.len());
            for (i, a) in self.actions.iter().enumerate() {
                if last.get(&a.id) == Some(&i) {
                    rows.push(serde_json::json!([
                        a.id,
                        a.state.as_str(),
                        a.error,
                        a.deadline,
                        a.updated_at,
                        a.last_seq
                    ]));
                }
            }
            let sql = format!(
                "UPDATE actions SET state = {state}, error = {error}, deadline = {deadline}, updated_at = {updated}, \
                 last_seq = {seq} FROM {rows} WHERE actions.id = {id}",
                state = self.col(1, None),
                error = self.col(2, None),
                deadline = self.col(3, Some("bigint")),
                updated = self.col(4, Some("bigint")),
                seq = self.col(5, Some("bigint")),
                rows = self.rows(1),
                id = self.col(0, Some("bigint")),
            );
            sqlx::query(&sql).bind(serde_json::Value::Array(rows).to_string()).execute(&mut *conn).await?;
            self.actions.clear();
        }
        if !self.events.is_empty() {
            let rows: Vec<serde_json::Value> = self
                .events
                .iter()
                .map(|e| {
                    serde_json::json!([
                        e.kind.as_str(),
                        e.rollout_id,
                        e.device_id.map(|d| d.to_string()),
                        e.action_id,
                        e.actor,
                        e.data.to_string()
                    ])
                })
                .collect();
            let sql = format!(
                "INSERT INTO events (at, kind, rollout_id, device_id, action_id, actor, data) \
                 SELECT $1, {}, {}, {}, {}, {}, {} FROM {} ORDER BY j.key",
                self.col(0, None),
                self.col(1, Some("bigint")),
                self.col(2, None),
                self.col(3, Some("bigint")),
                self.col(4, None),
                self.col(5, None),
                self.rows(2),
            );
            sqlx::query(&sql).bind(now).bind(serde_json::Value::Array(rows).to_string()).execute(&mut *conn).await?;
            self.events.clear();
        }
        if self.backend == Backend::Postgres && !self.devices.is_empty() {
            let mut ids: Vec<String> = self.devices.iter().map(Uuid::to_string).collect();
            ids.sort_unstable();
            crate::devices::lock_devices_in_order(conn, &ids).await?;
        }
        if !self.installed.is_empty() {
            let sql = format!(
                "UPDATE devices SET previous_version = CASE WHEN devices.current_version = {v} \
                 THEN devices.previous_version ELSE devices.current_version END, current_version = {v}, last_seen = $1 \
                 FROM {rows} WHERE devices.id = {id}",
                v = self.col(1, None),
                rows = self.rows(2),
                id = self.col(0, None),
            );
            sqlx::query(&sql).bind(now).bind(pairs(&self.installed)).execute(&mut *conn).await?;
            self.installed.clear();
        }
        if !self.runs.is_empty() {
            let sql = format!(
                "UPDATE devices SET current_version = {v}, last_seen = $1 FROM {rows} WHERE devices.id = {id} \
                 AND (devices.current_version IS NULL OR devices.current_version <> {v})",
                v = self.col(1, None),
                rows = self.rows(2),
                id = self.col(0, None),
            );
            sqlx::query(&sql).bind(now).bind(pairs(&self.runs)).execute(&mut *conn).await?;
            self.runs.clear();
        }
        self.devices.clear();
        Ok(())
    }
}

fn pairs(v: &[(Uuid, String)]) -> String {
    serde_json::Value::Array(v.iter().map(|(d, s)| serde_json::json!([d.to_string(), s])).collect()).to_string()
}
