//! Rollouts, their per-device actions, and the transactions the rollout driver
//! and the device API perform on them.
//!
//! Invariant: every change of a rollout's or an action's state is written in
//! the same transaction as its event. What a change *is* comes from
//! `otafleet_core::effects` (computed there, checked against the state machines
//! of `otafleet_core::model`); this module only turns it into SQL, in
//! [`apply`]. A crash between two transitions therefore leaves a consistent
//! state the driver resumes from.
//!
//! The modules, one responsibility each:
//! - this file: the rows (`Rollout`, `Action`, …), their columns and mapping;
//! - [`create`]: a rollout and all its actions, set-based;
//! - [`queries`]: reads for the API, metrics and the driver's work list;
//! - [`steer`]: operators' commands (pause, resume, abort, promote, rollback);
//! - [`drive`]: the driver's step (snapshot, decide, apply);
//! - [`apply`]: effects → SQL, the one place that writes rollout and action states;
//! - [`expiry`]: actions past their deadline;
//! - [`checkin`]: a device's check-in (transactional path);
//! - [`reports`]: status reports, one by one or group-committed, with their
//!   buffered set-based writes in [`report_writes`].

mod apply;
mod checkin;
mod create;
mod drive;
mod expiry;
mod queries;
mod report_writes;
mod reports;
mod steer;

pub use drive::{Parts, Step};

use crate::devices::Device;
use crate::events::{self, NewEvent};
use crate::releases::Release;
use crate::{Result, RowExt, StoreError};
use otafleet_core::analysis::AnalysisRun;
use otafleet_core::plan::Plan;
use otafleet_core::{ActionKind, ActionState, EventKind, Preset, RolloutKind, RolloutState, Strategy};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use std::collections::HashMap;
use std::sync::LazyLock;
use uuid::Uuid;

/// Which devices a rollout was created for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A label selector, resolved when the rollout is created.
    Selector(String),
    /// An explicit list of device ids.
    Devices(Vec<Uuid>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollout {
    pub id: i64,
    pub release_id: i64,
    pub version: String,
    pub kind: RolloutKind,
    /// The preset asked for (`canary`, `blue`, `green`, `custom`).
    pub preset: Preset,
    pub target: Target,
    pub strategy: Strategy,
    pub state: RolloutState,
    pub current_wave: i64,
    pub waves: i64,
    /// The plan's waves reach every eligible device of the target
    /// (`core::plan::Plan::covers_target`).
    pub covers_target: bool,
    pub start_at: Option<i64>,
    pub gate_passed_at: Option<i64>,
    pub last_release_at: Option<i64>,
    pub promote: bool,
    pub rollback_requested: bool,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// The current wave's analysis runs, one per check of the strategy's
    /// `analysis` (empty until the first measurement).
    pub analysis: Vec<AnalysisRun>,
}

/// A rollout as a list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSummary {
    pub id: i64,
    pub version: String,
    pub preset: Preset,
    pub kind: RolloutKind,
    pub state: RolloutState,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WaveProgress {
    pub wave: i64,
    pub total: i64,
    pub scheduled: i64,
    pub in_flight: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub rollbacks: i64,
    pub rolled_back: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub id: i64,
    pub rollout_id: i64,
    pub device_id: Uuid,
    pub wave: i64,
    pub position: i64,
    pub kind: ActionKind,
    pub state: ActionState,
    pub from_version: Option<String>,
    pub to_version: String,
    pub attempts: i64,
    pub last_seq: i64,
    pub not_before: i64,
    pub deadline: Option<i64>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub struct NewRollout<'a> {
    pub release: &'a Release,
    pub kind: RolloutKind,
    pub target: Target,
    pub strategy: Strategy,
    pub start_at: Option<i64>,
    pub actor: &'a str,
    pub plan: Plan,
    /// Version each planned device runs now (what a rollback returns to).
    pub from_versions: HashMap<Uuid, Option<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct RolloutQuery {
    pub state: Option<RolloutState>,
    /// Only the rollouts of this release.
    pub release_id: Option<i64>,
    pub before: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ActionQuery {
    pub rollout_id: Option<i64>,
    pub device_id: Option<Uuid>,
    pub state: Option<ActionState>,
    pub after: Option<i64>,
    pub limit: i64,
}

/// Result of a device check-in.
#[derive(Debug, Clone)]
pub struct Checkin {
    pub device: Device,
    pub action: Option<Action>,
}

/// What a status report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportOutcome {
    Applied,
    Duplicate,
    Ignored,
}

pub(crate) const ROLLOUT_COLS: &str = "id, release_id, version, kind, preset, target, strategy, state, current_wave, waves, start_at, \
     gate_passed_at, last_release_at, promote, rollback_requested, reason, created_by, created_at, updated_at, finished_at, \
     analysis, covers_target";
pub(crate) const ACTION_COLS: &str =
    "id, rollout_id, device_id, wave, position, kind, state, from_version, to_version, attempts, \
     last_seq, not_before, deadline, error, created_at, updated_at";
/// An SQL `IN (…)` list of states, generated once from the core's enums, so
/// no query spells a set of states by hand.
pub(crate) struct StateList(LazyLock<String>);

impl std::fmt::Display for StateList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) static IN_FLIGHT: StateList = StateList(LazyLock::new(|| ActionState::sql_list(ActionState::is_in_flight)));
pub(crate) static TERMINAL: StateList = StateList(LazyLock::new(|| ActionState::sql_list(ActionState::is_terminal)));
/// What a gate counts as failed.
pub(crate) static FAILED: StateList =
    StateList(LazyLock::new(|| ActionState::sql_list(|s| matches!(s, ActionState::Failed | ActionState::RolledBack))));
pub(crate) static ACTIVE: StateList = StateList(LazyLock::new(|| RolloutState::sql_list(RolloutState::is_active)));
/// Ended states a rollback can still follow.
pub(crate) static ROLLBACKABLE: StateList =
    StateList(LazyLock::new(|| RolloutState::sql_list(|s| s.can_transition_to(RolloutState::RolledBack))));
/// Succeeded installs of rollout `$1` whose device has no rollback action yet.
pub(crate) const MISSING_ROLLBACK: &str = "FROM actions a WHERE a.rollout_id = $1 AND a.kind = 'install' AND a.state = 'succeeded' \
     AND NOT EXISTS (SELECT 1 FROM actions b WHERE b.rollout_id = a.rollout_id AND b.kind = 'rollback' AND b.device_id = a.device_id)";

pub(crate) fn rollout_from_row(r: &AnyRow) -> Result<Rollout> {
    let strategy: Strategy = r.json("strategy")?;
    let covers_target = match r.opt_i64("covers_target")? {
        Some(v) => v != 0,
        None => otafleet_core::engine::covers_target_by_steps(&strategy),
    };
    Ok(Rollout {
        id: r.i64("id")?,
        release_id: r.i64("release_id")?,
        version: r.string("version")?,
        kind: r.parsed("kind")?,
        preset: r.parsed("preset")?,
        target: r.json("target")?,
        strategy,
        state: r.parsed("state")?,
        current_wave: r.i64("current_wave")?,
        waves: r.i64("waves")?,
        covers_target,
        start_at: r.opt_i64("start_at")?,
        gate_passed_at: r.opt_i64("gate_passed_at")?,
        last_release_at: r.opt_i64("last_release_at")?,
        promote: r.i64("promote")? != 0,
        rollback_requested: r.i64("rollback_requested")? != 0,
        reason: r.opt_string("reason")?,
        created_by: r.string("created_by")?,
        created_at: r.i64("created_at")?,
        updated_at: r.i64("updated_at")?,
        finished_at: r.opt_i64("finished_at")?,
        analysis: r.json("analysis")?,
    })
}

pub(crate) fn action_from_row(r: &AnyRow) -> Result<Action> {
    Ok(Action {
        id: r.i64("id")?,
        rollout_id: r.i64("rollout_id")?,
        device_id: r.parsed("device_id")?,
        wave: r.i64("wave")?,
        position: r.i64("position")?,
        kind: r.parsed("kind")?,
        state: r.parsed("state")?,
        from_version: r.opt_string("from_version")?,
        to_version: r.string("to_version")?,
        attempts: r.i64("attempts")?,
        last_seq: r.i64("last_seq")?,
        not_before: r.i64("not_before")?,
        deadline: r.opt_i64("deadline")?,
        error: r.opt_string("error")?,
        created_at: r.i64("created_at")?,
        updated_at: r.i64("updated_at")?,
    })
}

pub(crate) type Tx = crate::WriteTx;

pub(crate) async fn load_rollout(tx: &mut Tx, id: i64) -> Result<Rollout> {
    let row = sqlx::query(&format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("rollout {id} not found")))?;
    rollout_from_row(&row)
}

pub(crate) async fn load_action(tx: &mut Tx, id: i64) -> Result<Option<Action>> {
    let row = sqlx::query(&format!("SELECT {ACTION_COLS} FROM actions WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(action_from_row).transpose()
}

/// What to append to a `SELECT` of actions that the transaction is about to
/// change on the strength of what it read (`last_seq`, `state`): on
/// PostgreSQL the rows are locked until commit (`FOR UPDATE`), so a
/// concurrent transaction of another replica waits and then reads what this
/// one wrote; on SQLite the write transaction (`BEGIN IMMEDIATE`) already
/// excludes every other writer.
pub(crate) fn for_update(backend: crate::Backend) -> &'static str {
    match backend {
        crate::Backend::Postgres => " FOR UPDATE",
        crate::Backend::Sqlite => "",
    }
}

/// [`load_action`], locking the row on PostgreSQL ([`for_update`]).
pub(crate) async fn lock_action(tx: &mut Tx, backend: crate::Backend, id: i64) -> Result<Option<Action>> {
    let row = sqlx::query(&format!("SELECT {ACTION_COLS} FROM actions WHERE id = $1{}", for_update(backend)))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(action_from_row).transpose()
}

/// The event recording an action's move to `to`.
pub(crate) fn action_event(a: &Action, to: ActionState, message: Option<&str>) -> NewEvent {
    let mut data = serde_json::json!({"from": a.state.as_str(), "to": to.as_str(), "kind": a.kind.as_str(), "attempt": a.attempts});
    if let Some(m) = message {
        data["message"] = m.into();
    }
    NewEvent::new(EventKind::for_action_state(to), "device")
        .rollout(a.rollout_id)
        .device(a.device_id)
        .action(a.id)
        .data(data)
}

/// Writes an action's new state with its event.
pub(crate) async fn set_action_state(
    tx: &mut Tx,
    a: &Action,
    to: ActionState,
    message: Option<&str>,
    not_before: Option<i64>,
    now: i64,
    last_seq: Option<i64>,
) -> Result<()> {
    a.state.transition(to).map_err(|e| StoreError::Conflict(format!("action {}: {e}", a.id)))?;
    tx.touch(a.rollout_id);
    let keep_deadline = to.is_in_flight();
    sqlx::query(
        "UPDATE actions SET state = $1, error = COALESCE($2, error), not_before = COALESCE($3, not_before), \
         deadline = CASE WHEN $4 = 1 THEN deadline ELSE NULL END, updated_at = $5, last_seq = COALESCE($7, last_seq) WHERE id = $6",
    )
    .bind(to.as_str())
    .bind(message.map(str::to_string))
    .bind(not_before)
    .bind(keep_deadline as i64)
    .bind(now)
    .bind(a.id)
    .bind(last_seq)
    .execute(&mut **tx)
    .await?;
    events::insert(tx, now, &action_event(a, to, message)).await
}
