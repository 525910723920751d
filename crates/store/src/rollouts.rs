//! Rollouts, their per-device actions, and the transactions the rollout driver
//! and the device API perform on them.
//!
//! Invariant: every change of a rollout's or an action's state is written in
//! the same transaction as its event, and is checked against the state machines
//! of `otafleet_core::model` inside that transaction. A crash between two
//! transitions therefore leaves a consistent state the driver resumes from.

use crate::devices::{self, Device, DEVICE_COLS};
use crate::events::{self, NewEvent};
use crate::releases::Release;
use crate::report_writes::ReportWrites;
use crate::sql::{json_col, json_rows};
use crate::{now_ms, Result, RowExt, Store, StoreError};
use otafleet_core::engine::{self, Decision, RollbackCounts, Snapshot, WaveCounts};
use otafleet_core::plan::Plan;
use otafleet_core::protocol::StatusReport;
use otafleet_core::{ActionKind, ActionState, DeviceHealth, Preset, RolloutState, Strategy};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use std::collections::HashMap;
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
    /// `deploy`, or `rollback` for a rollout back to an earlier version.
    pub kind: String,
    /// The preset asked for (`canary`, `blue`, `green`, `custom`).
    pub preset: Preset,
    pub target: Target,
    pub strategy: Strategy,
    pub state: RolloutState,
    pub current_wave: i64,
    pub waves: i64,
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
    pub kind: &'a str,
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

const ROLLOUT_COLS: &str = "id, release_id, version, kind, preset, target, strategy, state, current_wave, waves, start_at, \
     gate_passed_at, last_release_at, promote, rollback_requested, reason, created_by, created_at, updated_at, finished_at";
const ACTION_COLS: &str =
    "id, rollout_id, device_id, wave, position, kind, state, from_version, to_version, attempts, \
     last_seq, not_before, deadline, error, created_at, updated_at";
const IN_FLIGHT: &str = "('notified', 'downloading', 'installing', 'verifying')";
const TERMINAL: &str = "('succeeded', 'failed', 'rolled_back', 'skipped')";
/// Succeeded installs of rollout `$1` whose device has no rollback action yet.
const MISSING_ROLLBACK: &str = "FROM actions a WHERE a.rollout_id = $1 AND a.kind = 'install' AND a.state = 'succeeded' \
     AND NOT EXISTS (SELECT 1 FROM actions b WHERE b.rollout_id = a.rollout_id AND b.kind = 'rollback' AND b.device_id = a.device_id)";

fn rollout_from_row(r: &AnyRow) -> Result<Rollout> {
    Ok(Rollout {
        id: r.i64("id")?,
        release_id: r.i64("release_id")?,
        version: r.string("version")?,
        kind: r.string("kind")?,
        preset: r.parsed("preset")?,
        target: r.json("target")?,
        strategy: r.json("strategy")?,
        state: r.parsed("state")?,
        current_wave: r.i64("current_wave")?,
        waves: r.i64("waves")?,
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
    })
}

fn action_from_row(r: &AnyRow) -> Result<Action> {
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

type Tx = crate::WriteTx;

async fn load_rollout(tx: &mut Tx, id: i64) -> Result<Rollout> {
    let row = sqlx::query(&format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("rollout {id} not found")))?;
    rollout_from_row(&row)
}

async fn load_action(tx: &mut Tx, id: i64) -> Result<Option<Action>> {
    let row = sqlx::query(&format!("SELECT {ACTION_COLS} FROM actions WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(action_from_row).transpose()
}

/// Moves a rollout to `to` if legal, with the side effects every path shares:
/// leaving the active states skips scheduled installs and, on failure or abort,
/// asks for rollback when the strategy says so.
async fn transition_rollout(
    tx: &mut Tx,
    r: &Rollout,
    to: RolloutState,
    reason: Option<&str>,
    actor: &str,
    data: serde_json::Value,
    now: i64,
) -> Result<()> {
    r.state.transition(to).map_err(|e| StoreError::Conflict(format!("rollout {}: {e}", r.id)))?;
    let rollback = match to {
        RolloutState::Failed | RolloutState::Aborted => r.strategy.auto_rollback,
        _ => r.rollback_requested,
    };
    let finished = to.is_ended().then_some(now);
    sqlx::query(
        "UPDATE rollouts SET state = $1, reason = COALESCE($2, reason), rollback_requested = $3, \
         finished_at = COALESCE($4, finished_at), updated_at = $5 WHERE id = $6",
    )
    .bind(to.as_str())
    .bind(reason.map(str::to_string))
    .bind(rollback as i64)
    .bind(finished)
    .bind(now)
    .bind(r.id)
    .execute(&mut **tx)
    .await?;
    if to.is_ended() {
        sqlx::query(
            "UPDATE actions SET state = 'skipped', error = $1, updated_at = $2 \
             WHERE rollout_id = $3 AND kind = 'install' AND state = 'scheduled'",
        )
        .bind(format!("rollout {}", to.as_str()))
        .bind(now)
        .bind(r.id)
        .execute(&mut **tx)
        .await?;
    }
    let mut payload = serde_json::json!({"from": r.state.as_str(), "to": to.as_str()});
    if let Some(reason) = reason {
        payload["reason"] = reason.into();
    }
    if !data.is_null() {
        payload["gate"] = data;
    }
    events::insert(tx, now, &NewEvent::new(&format!("rollout.{}", to.as_str()), actor).rollout(r.id).data(payload))
        .await
}

impl Store {
    /// Creates a rollout and one scheduled action per planned device, atomically.
    pub async fn create_rollout(&self, new: NewRollout<'_>) -> Result<Rollout> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let target = serde_json::to_string(&new.target).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let strategy = serde_json::to_string(&new.strategy).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let waves = new.plan.waves.len() as i64;
        let row = sqlx::query(
            "INSERT INTO rollouts (release_id, version, kind, preset, target, strategy, state, current_wave, waves, start_at, \
             promote, rollback_requested, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $8, 0, 0, $9, $10, $10) RETURNING id",
        )
        .bind(new.release.id)
        .bind(new.release.version.as_str())
        .bind(new.kind)
        .bind(new.strategy.preset.as_str())
        .bind(target)
        .bind(strategy)
        .bind(waves)
        .bind(new.start_at)
        .bind(new.actor)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let id = row.i64("id")?;
        // Set-based insert: the devices go in as one JSON array per statement
        // ([id, wave, position, from_version] each), unpacked by the database,
        // so 100,000 actions are a few statements rather than thousands of binds.
        let b = self.backend;
        let sql = format!(
            "INSERT INTO actions (rollout_id, device_id, wave, position, kind, state, from_version, to_version, \
             attempts, last_seq, not_before, created_at, updated_at) \
             SELECT $1, {}, {}, {}, 'install', 'scheduled', {}, $2, 0, 0, 0, $3, $3 FROM {}",
            json_col(b, 0, None),
            json_col(b, 1, Some("bigint")),
            json_col(b, 2, Some("bigint")),
            json_col(b, 3, None),
            json_rows(b, 4),
        );
        const CHUNK: usize = 20_000;
        let rows: Vec<(usize, i64, &Uuid)> = new
            .plan
            .waves
            .iter()
            .enumerate()
            .flat_map(|(wave, devices)| devices.iter().map(move |d| (wave, d)))
            .enumerate()
            .map(|(position, (wave, d))| (wave, position as i64, d))
            .collect();
        for chunk in rows.chunks(CHUNK) {
            let items: Vec<serde_json::Value> = chunk
                .iter()
                .map(|(wave, position, d)| {
                    serde_json::json!([d.to_string(), wave, position, new.from_versions.get(*d).cloned().flatten()])
                })
                .collect();
            let doc = serde_json::Value::Array(items).to_string();
            sqlx::query(&sql).bind(id).bind(new.release.version.as_str()).bind(now).bind(doc).execute(&mut *tx).await?;
        }
        let sizes: Vec<usize> = new.plan.waves.iter().map(Vec::len).collect();
        let ev = NewEvent::new("rollout.created", new.actor).rollout(id).data(serde_json::json!({
            "version": new.release.version, "kind": new.kind, "preset": new.strategy.preset.as_str(),
            "target": new.target, "waves": sizes,
        }));
        events::insert(&mut tx, now, &ev).await?;
        let r = load_rollout(&mut tx, id).await?;
        tx.commit().await?;
        Ok(r)
    }

    pub async fn get_rollout(&self, id: i64) -> Result<Option<Rollout>> {
        let row = sqlx::query(&format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rollout_from_row).transpose()
    }

    /// Rollouts newest first.
    pub async fn list_rollouts(&self, q: &RolloutQuery) -> Result<Vec<Rollout>> {
        let mut sql = crate::sql::Sql::new(&format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id < "));
        sql.bind_i64(q.before.unwrap_or(i64::MAX));
        if let Some(s) = q.state {
            sql.push(" AND state = ").bind_str(s.as_str());
        }
        sql.push(" ORDER BY id DESC LIMIT ").bind_i64(q.limit.clamp(1, 100_000));
        let rows = sql.query().fetch_all(&self.pool).await?;
        rows.iter().map(rollout_from_row).collect()
    }

    /// Every rollout as the original tracker's job list: (id, version, wave, kind, state, created_at), newest first.
    pub async fn list_jobs(&self) -> Result<Vec<(i64, String, String, String, RolloutState, i64)>> {
        let rows = sqlx::query(
            "SELECT id, version, preset, kind, state, created_at FROM rollouts ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.i64("id")?,
                    r.string("version")?,
                    r.string("preset")?,
                    r.string("kind")?,
                    r.parsed("state")?,
                    r.i64("created_at")?,
                ))
            })
            .collect()
    }

    /// Counts of rollouts by state, for metrics.
    pub async fn rollout_state_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query("SELECT kind, state, COUNT(*) AS n FROM rollouts GROUP BY kind, state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.string("kind")?, r.string("state")?, r.i64("n")?))).collect()
    }

    /// Last time any rollout was created or changed, if ever.
    pub async fn last_rollout_activity(&self) -> Result<Option<i64>> {
        sqlx::query("SELECT MAX(updated_at) AS t FROM rollouts").fetch_one(&self.pool).await?.opt_i64("t")
    }

    /// Succeeded install actions in all rollouts (the tracker's "updated pods").
    pub async fn count_updated_devices(&self) -> Result<i64> {
        sqlx::query("SELECT COUNT(*) AS n FROM actions WHERE kind = 'install' AND state = 'succeeded'")
            .fetch_one(&self.pool)
            .await?
            .i64("n")
    }

    /// Per-wave action counts of a rollout.
    pub async fn wave_progress(&self, id: i64) -> Result<Vec<WaveProgress>> {
        let rows = sqlx::query(&format!(
            "SELECT wave, \
               COUNT(CASE WHEN kind = 'install' THEN 1 END) AS total, \
               COUNT(CASE WHEN kind = 'install' AND state = 'scheduled' THEN 1 END) AS scheduled, \
               COUNT(CASE WHEN kind = 'install' AND state IN {IN_FLIGHT} THEN 1 END) AS in_flight, \
               COUNT(CASE WHEN kind = 'install' AND state = 'succeeded' THEN 1 END) AS succeeded, \
               COUNT(CASE WHEN kind = 'install' AND state IN ('failed', 'rolled_back') THEN 1 END) AS failed, \
               COUNT(CASE WHEN kind = 'install' AND state = 'skipped' THEN 1 END) AS skipped, \
               COUNT(CASE WHEN kind = 'rollback' THEN 1 END) AS rollbacks, \
               COUNT(CASE WHEN kind = 'rollback' AND state = 'succeeded' THEN 1 END) AS rolled_back \
             FROM actions WHERE rollout_id = $1 GROUP BY wave ORDER BY wave"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WaveProgress {
                    wave: r.i64("wave")?,
                    total: r.i64("total")?,
                    scheduled: r.i64("scheduled")?,
                    in_flight: r.i64("in_flight")?,
                    succeeded: r.i64("succeeded")?,
                    failed: r.i64("failed")?,
                    skipped: r.i64("skipped")?,
                    rollbacks: r.i64("rollbacks")?,
                    rolled_back: r.i64("rolled_back")?,
                })
            })
            .collect()
    }

    pub async fn list_actions(&self, q: &ActionQuery) -> Result<Vec<Action>> {
        let mut sql = crate::sql::Sql::new(&format!("SELECT {ACTION_COLS} FROM actions WHERE id > "));
        sql.bind_i64(q.after.unwrap_or(0));
        if let Some(r) = q.rollout_id {
            sql.push(" AND rollout_id = ").bind_i64(r);
        }
        if let Some(d) = q.device_id {
            sql.push(" AND device_id = ").bind_str(&d.to_string());
        }
        if let Some(s) = q.state {
            sql.push(" AND state = ").bind_str(s.as_str());
        }
        sql.push(" ORDER BY id LIMIT ").bind_i64(q.limit.clamp(1, 10_000));
        let rows = sql.query().fetch_all(&self.pool).await?;
        rows.iter().map(action_from_row).collect()
    }

    pub async fn get_action(&self, id: i64) -> Result<Option<Action>> {
        let row = sqlx::query(&format!("SELECT {ACTION_COLS} FROM actions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(action_from_row).transpose()
    }

    /// Operator or external executor moves a rollout (pause, resume, abort, or a
    /// tracker status). Illegal moves are a [`StoreError::Conflict`].
    pub async fn set_rollout_state(
        &self,
        id: i64,
        to: RolloutState,
        reason: Option<&str>,
        actor: &str,
    ) -> Result<Rollout> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let r = load_rollout(&mut tx, id).await?;
        transition_rollout(&mut tx, &r, to, reason, actor, serde_json::Value::Null, now).await?;
        let r = load_rollout(&mut tx, id).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Skip the remaining bake time of the current wave.
    pub async fn promote_rollout(&self, id: i64, actor: &str) -> Result<Rollout> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let r = load_rollout(&mut tx, id).await?;
        if !matches!(r.state, RolloutState::Running | RolloutState::Paused) {
            return Err(StoreError::Conflict(format!(
                "rollout {id} is {}; only a running or paused rollout can be promoted",
                r.state
            )));
        }
        sqlx::query("UPDATE rollouts SET promote = 1, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let ev = NewEvent::new("rollout.promoted", actor).rollout(id).data(serde_json::json!({"wave": r.current_wave}));
        events::insert(&mut tx, now, &ev).await?;
        let r = load_rollout(&mut tx, id).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Manual rollback: an active rollout is aborted, and every device it updated
    /// is sent back to its previous version.
    pub async fn rollback_rollout(&self, id: i64, actor: &str) -> Result<Rollout> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let r = load_rollout(&mut tx, id).await?;
        if r.state == RolloutState::RolledBack || r.rollback_requested {
            return Err(StoreError::Conflict(format!("rollout {id} is already rolled back or rolling back")));
        }
        if r.state.is_active() {
            transition_rollout(
                &mut tx,
                &r,
                RolloutState::Aborted,
                Some("manual rollback"),
                actor,
                serde_json::Value::Null,
                now,
            )
            .await?;
        }
        sqlx::query("UPDATE rollouts SET rollback_requested = 1, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        events::insert(&mut tx, now, &NewEvent::new("rollout.rollback_requested", actor).rollout(id)).await?;
        let r = load_rollout(&mut tx, id).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Devices that already have unfinished work in an active rollout.
    pub async fn busy_devices(&self) -> Result<std::collections::HashSet<Uuid>> {
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT a.device_id FROM actions a JOIN rollouts r ON r.id = a.rollout_id \
             WHERE (a.state = 'scheduled' OR a.state IN {IN_FLIGHT}) AND r.state IN ('pending', 'running', 'paused')"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.parsed::<Uuid>("device_id")).collect()
    }

    /// Rollouts the driver has to look at.
    pub async fn drivable_rollouts(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT id FROM rollouts WHERE state IN ('pending', 'running', 'paused') \
             OR (rollback_requested = 1 AND state IN ('failed', 'aborted', 'succeeded')) ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.i64("id")).collect()
    }

    /// Reads what the engine needs about rollout `id` at `now`.
    pub async fn snapshot(&self, id: i64, now: i64) -> Result<Parts> {
        let mut conn = self.pool.acquire().await?;
        read_parts(&mut conn, id, now).await
    }

    /// One driver step: read, decide, apply in one transaction. Returns the
    /// decision taken and the actions it handed to devices (to notify them and
    /// to answer their next check-in without a read).
    ///
    /// A cheap read outside any transaction filters out the common "nothing to
    /// do" case; otherwise the snapshot is read again inside the write
    /// transaction and that decision is the one applied, so concurrent status
    /// reports can never be decided over stale counts.
    pub async fn drive_step(&self, id: i64, now: i64) -> Result<(Decision, Vec<Action>)> {
        let parts = self.snapshot(id, now).await?;
        let decision = engine::decide(&parts.snapshot(), now);
        if matches!(decision, Decision::Idle { .. }) {
            return Ok((decision, Vec::new()));
        }
        let mut tx = self.write_tx().await?;
        let parts = read_parts(&mut tx, id, now).await?;
        let decision = engine::decide(&parts.snapshot(), now);
        if matches!(decision, Decision::Idle { .. }) {
            return Ok((decision, Vec::new()));
        }
        let r = parts.rollout;
        let mut notified = Vec::new();
        let actor = "driver";
        match &decision {
            Decision::Idle { .. } => {}
            Decision::Start => {
                transition_rollout(&mut tx, &r, RolloutState::Running, None, actor, serde_json::Value::Null, now)
                    .await?;
            }
            Decision::Release { count } => {
                let deadline = engine::deadline(&r.strategy.gate, now);
                let rows = sqlx::query(&format!(
                    "UPDATE actions SET state = 'notified', attempts = attempts + 1, deadline = $1, updated_at = $2 \
                     WHERE id IN (SELECT id FROM actions WHERE rollout_id = $3 AND wave = $4 AND kind = 'install' \
                     AND state = 'scheduled' AND not_before <= $2 ORDER BY position LIMIT $5) RETURNING {ACTION_COLS}",
                ))
                .bind(deadline)
                .bind(now)
                .bind(id)
                .bind(r.current_wave)
                .bind(*count as i64)
                .fetch_all(&mut *tx)
                .await?;
                for row in &rows {
                    notified.push(action_from_row(row)?);
                }
                sqlx::query("UPDATE rollouts SET last_release_at = $1, updated_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let sample: Vec<String> = notified.iter().take(10).map(|a| a.device_id.to_string()).collect();
                let ev = NewEvent::new("rollout.released", actor).rollout(id).data(serde_json::json!({
                    "wave": r.current_wave, "count": notified.len(), "devices_sample": sample,
                }));
                events::insert(&mut tx, now, &ev).await?;
            }
            Decision::GatePassed { report } => {
                sqlx::query("UPDATE rollouts SET gate_passed_at = $1, updated_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let ev = NewEvent::new("rollout.gate_passed", actor)
                    .rollout(id)
                    .data(serde_json::to_value(report).unwrap_or_default());
                events::insert(&mut tx, now, &ev).await?;
            }
            Decision::NextWave { from } => {
                sqlx::query(
                    "UPDATE rollouts SET current_wave = current_wave + 1, gate_passed_at = NULL, last_release_at = NULL, \
                     promote = 0, updated_at = $1 WHERE id = $2",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                let ev = NewEvent::new("rollout.wave_started", actor)
                    .rollout(id)
                    .data(serde_json::json!({"wave": from + 1}));
                events::insert(&mut tx, now, &ev).await?;
            }
            Decision::Succeed { report } => {
                let data = serde_json::to_value(report).unwrap_or_default();
                transition_rollout(&mut tx, &r, RolloutState::Succeeded, None, actor, data, now).await?;
            }
            Decision::Fail { reason, report } => {
                let data = serde_json::to_value(report).unwrap_or_default();
                transition_rollout(&mut tx, &r, RolloutState::Failed, Some(reason), actor, data, now).await?;
            }
            Decision::CreateRollbacks { .. } => {
                let deadline = engine::deadline(&r.strategy.gate, now);
                let missing = MISSING_ROLLBACK;
                // Devices with no known previous version cannot go back: recorded as failed.
                sqlx::query(&format!(
                    "INSERT INTO actions (rollout_id, device_id, wave, position, kind, state, from_version, to_version, attempts, \
                     last_seq, not_before, deadline, error, created_at, updated_at) \
                     SELECT a.rollout_id, a.device_id, a.wave, a.position, 'rollback', 'failed', a.to_version, '', 0, 0, 0, NULL, \
                     'no previous version known', $2, $2 {missing} AND a.from_version IS NULL"
                ))
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let rows = sqlx::query(&format!(
                    "INSERT INTO actions (rollout_id, device_id, wave, position, kind, state, from_version, to_version, attempts, \
                     last_seq, not_before, deadline, created_at, updated_at) \
                     SELECT a.rollout_id, a.device_id, a.wave, a.position, 'rollback', 'notified', a.to_version, a.from_version, 1, 0, 0, $3, \
                     $2, $2 {missing} RETURNING {ACTION_COLS}"
                ))
                .bind(id)
                .bind(now)
                .bind(deadline)
                .fetch_all(&mut *tx)
                .await?;
                for row in &rows {
                    notified.push(action_from_row(row)?);
                }
                sqlx::query("UPDATE rollouts SET updated_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let ev = NewEvent::new("rollout.rollbacks_created", actor)
                    .rollout(id)
                    .data(serde_json::json!({"count": notified.len()}));
                events::insert(&mut tx, now, &ev).await?;
            }
            Decision::FinishRollback => {
                let stats = sqlx::query(
                    "SELECT COUNT(CASE WHEN state = 'succeeded' THEN 1 END) AS ok, COUNT(CASE WHEN state <> 'succeeded' THEN 1 END) AS bad \
                     FROM actions WHERE rollout_id = $1 AND kind = 'rollback'",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                let data = serde_json::json!({"rolled_back": stats.i64("ok")?, "rollback_failed": stats.i64("bad")?});
                transition_rollout(&mut tx, &r, RolloutState::RolledBack, None, actor, data, now).await?;
            }
        }
        tx.commit().await?;
        Ok((decision, notified))
    }

    /// Applies timeouts: in-flight actions past their deadline are retried with
    /// backoff or failed. Returns the devices whose action changed.
    pub async fn expire_actions(&self, now: i64, limit: i64) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(&format!(
            "SELECT id FROM actions WHERE deadline IS NOT NULL AND deadline <= $1 AND state IN {IN_FLIGHT} ORDER BY deadline LIMIT $2"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut changed = Vec::new();
        for row in rows {
            let id = row.i64("id")?;
            let mut tx = self.write_tx().await?;
            let Some(a) = load_action(&mut tx, id).await? else { continue };
            if !a.state.is_in_flight() || a.deadline.is_none_or(|d| d > now) {
                continue;
            }
            let r = load_rollout(&mut tx, a.rollout_id).await?;
            let msg = format!("no report within {} s (attempt {})", r.strategy.gate.timeout_secs, a.attempts);
            fail_action(&mut tx, &r, &a, &msg, "timeout", now).await?;
            tx.commit().await?;
            changed.push(a.device_id);
        }
        Ok(changed)
    }

    /// Devices with an action in flight (to seed the check-in inbox at start).
    pub async fn devices_in_flight(&self) -> Result<Vec<Uuid>> {
        let rows = sqlx::query(&format!("SELECT DISTINCT device_id FROM actions WHERE state IN {IN_FLIGHT}"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.parsed::<Uuid>("device_id")).collect()
    }

    /// The in-flight action of a device, if any (a read; no transaction).
    pub async fn inflight_action(&self, device_id: Uuid) -> Result<Option<Action>> {
        let row = sqlx::query(&format!(
            "SELECT {ACTION_COLS} FROM actions WHERE device_id = $1 AND state IN {IN_FLIGHT} ORDER BY id DESC LIMIT 1"
        ))
        .bind(device_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(action_from_row).transpose()
    }

    /// A device checks in: records last-seen, health and its real version, and
    /// returns the action it should perform, if any.
    pub async fn checkin(
        &self,
        device_id: Uuid,
        current_version: Option<&str>,
        health: Option<DeviceHealth>,
        now: i64,
    ) -> Result<Checkin> {
        let sid = device_id.to_string();
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(&format!("SELECT {DEVICE_COLS} FROM devices d WHERE d.id = $1"))
            .bind(sid.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("device {device_id} not found")))?;
        let mut device = devices::from_row(&row)?;
        let version_changed = current_version.is_some_and(|v| device.current_version.as_deref() != Some(v));
        if version_changed {
            let v = current_version.map(str::to_string);
            let ev = NewEvent::new("device.version_changed", "device")
                .device(device_id)
                .data(serde_json::json!({"from": device.current_version, "to": v}));
            events::insert(&mut tx, now, &ev).await?;
            device.previous_version = device.current_version.take();
            device.current_version = v;
            // The device's word is the truth: an install it reported done but no
            // longer runs has failed (it rolled back on its own).
            let drifted = sqlx::query(&format!(
                "SELECT {ACTION_COLS} FROM actions WHERE device_id = $1 AND kind = 'install' AND state = 'succeeded' \
                 AND to_version <> $2 AND rollout_id IN (SELECT id FROM rollouts WHERE state IN ('pending', 'running', 'paused'))"
            ))
            .bind(sid.as_str())
            .bind(device.current_version.clone().unwrap_or_default())
            .fetch_all(&mut *tx)
            .await?;
            for row in &drifted {
                let a = action_from_row(row)?;
                let reason = format!(
                    "device reports version {} instead of {}: it rolled back on its own",
                    device.current_version.as_deref().unwrap_or("none"),
                    a.to_version
                );
                set_action_state(&mut tx, &a, ActionState::Failed, Some(&reason), None, now, None).await?;
            }
        }
        if let Some(h) = health {
            device.health = h;
        }
        device.last_seen = Some(now);
        sqlx::query(
            "UPDATE devices SET current_version = $1, previous_version = $2, health = $3, last_seen = $4 WHERE id = $5",
        )
        .bind(device.current_version.clone())
        .bind(device.previous_version.clone())
        .bind(device.health.as_str())
        .bind(now)
        .bind(sid.as_str())
        .execute(&mut *tx)
        .await?;
        let action = sqlx::query(&format!(
            "SELECT {ACTION_COLS} FROM actions WHERE device_id = $1 AND state IN {IN_FLIGHT} ORDER BY id DESC LIMIT 1"
        ))
        .bind(sid.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let action = action.as_ref().map(action_from_row).transpose()?;
        tx.commit().await?;
        Ok(Checkin { device, action })
    }

    /// A device reports progress on one of its actions. Idempotent by sequence
    /// number; a report about another device's action is NotFound.
    pub async fn report_status(
        &self,
        device_id: Uuid,
        report: &StatusReport,
        now: i64,
    ) -> Result<(ReportOutcome, Action)> {
        let mut tx = self.write_tx().await?;
        let a = load_action(&mut tx, report.action_id).await?;
        let mut w = ReportWrites::new(self.backend);
        let out = apply_report(&mut tx, &mut w, device_id, report, a, now).await?;
        w.flush(&mut tx, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Group commit: applies many reports in one write transaction, in order,
    /// each exactly as [`Store::report_status`] would (two reports on one
    /// action see each other). The actions are read in one query up front. A
    /// report refused on its own merits (unknown action, another device's)
    /// gets its own error and leaves no trace, because [`apply_report`] only
    /// refuses before its first write. A database error fails the whole batch
    /// (nothing of it is stored) and is returned as the outer error.
    pub async fn report_statuses(
        &self,
        reports: &[(Uuid, StatusReport)],
        now: i64,
    ) -> Result<Vec<Result<(ReportOutcome, Action)>>> {
        let mut tx = self.write_tx().await?;
        let mut actions: HashMap<i64, Action> = HashMap::with_capacity(reports.len());
        let mut ids: Vec<i64> = reports.iter().map(|(_, r)| r.action_id).collect();
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(500) {
            // Integers only: formatted, not bound, to keep one statement per chunk.
            let list = chunk.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            for row in sqlx::query(&format!("SELECT {ACTION_COLS} FROM actions WHERE id IN ({list})"))
                .fetch_all(&mut *tx)
                .await?
            {
                let a = action_from_row(&row)?;
                actions.insert(a.id, a);
            }
        }
        let mut out = Vec::with_capacity(reports.len());
        let mut w = ReportWrites::new(self.backend);
        for (device_id, report) in reports {
            let current = actions.get(&report.action_id).cloned();
            match apply_report(&mut tx, &mut w, *device_id, report, current, now).await {
                Ok((outcome, a)) => {
                    actions.insert(a.id, a.clone());
                    out.push(Ok((outcome, a)));
                }
                Err(e @ (StoreError::NotFound(_) | StoreError::Conflict(_) | StoreError::Invalid(_))) => {
                    out.push(Err(e))
                }
                Err(e) => return Err(e),
            }
        }
        w.flush(&mut tx, now).await?;
        tx.commit().await?;
        Ok(out)
    }
}

/// One status report inside a write transaction (see [`Store::report_status`]),
/// given the action as it stands. Returns the action as it stands afterwards.
/// Its writes go to `w`, which the caller flushes before committing; a failure
/// report, which reads back what it writes, flushes `w` first.
///
/// Invariant relied on by [`Store::report_statuses`]: every refusal (NotFound,
/// Conflict) happens before this report's first write.
async fn apply_report(
    tx: &mut Tx,
    w: &mut ReportWrites,
    device_id: Uuid,
    report: &StatusReport,
    action: Option<Action>,
    now: i64,
) -> Result<(ReportOutcome, Action)> {
    let a = action
        .filter(|a| a.device_id == device_id)
        .ok_or_else(|| StoreError::NotFound(format!("action {} not found for this device", report.action_id)))?;
    if report.seq <= a.last_seq {
        return Ok((ReportOutcome::Duplicate, a));
    }
    if !report.state.is_reportable() || !a.state.is_in_flight() || !a.state.can_transition_to(report.state) {
        // Stale (e.g. the action was retried or skipped meanwhile) or a step back.
        let ev =
            NewEvent::new("action.report_ignored", "device").device(device_id).action(a.id).rollout(a.rollout_id).data(
                serde_json::json!({"state": a.state.as_str(), "reported": report.state.as_str(), "seq": report.seq}),
            );
        w.event(ev);
        return Ok((ReportOutcome::Ignored, a));
    }
    let updated = if report.state == ActionState::Failed {
        w.flush(tx, now).await?;
        let r = load_rollout(tx, a.rollout_id).await?;
        let msg = report.message.clone().unwrap_or_else(|| "device reported failure".into());
        fail_action(tx, &r, &a, &msg, "device", now).await?;
        sqlx::query("UPDATE actions SET last_seq = $1 WHERE id = $2")
            .bind(report.seq)
            .bind(a.id)
            .execute(&mut **tx)
            .await?;
        load_action(tx, a.id).await?.ok_or_else(|| StoreError::NotFound("action vanished".into()))?
    } else {
        let to = report.state;
        let updated = Action {
            state: to,
            last_seq: report.seq,
            error: report.message.clone().or(a.error.clone()),
            deadline: if to.is_in_flight() { a.deadline } else { None },
            updated_at: now,
            ..a.clone()
        };
        w.action(updated.clone());
        w.event(action_event(&a, to, report.message.as_deref()));
        updated
    };
    let device_write = if report.state == ActionState::Succeeded {
        Some((true, a.to_version.as_str()))
    } else {
        report.current_version.as_deref().map(|v| (false, v))
    };
    if let Some((installed, version)) = device_write {
        if w.has_device(device_id) {
            w.flush(tx, now).await?;
        }
        if installed {
            w.installed(device_id, version);
        } else {
            w.runs(device_id, version);
        }
    }
    Ok((ReportOutcome::Applied, updated))
}

/// The event recording an action's move to `to`.
fn action_event(a: &Action, to: ActionState, message: Option<&str>) -> NewEvent {
    let mut data = serde_json::json!({"from": a.state.as_str(), "to": to.as_str(), "kind": a.kind.as_str(), "attempt": a.attempts});
    if let Some(m) = message {
        data["message"] = m.into();
    }
    NewEvent::new(&format!("action.{}", to.as_str()), "device")
        .rollout(a.rollout_id)
        .device(a.device_id)
        .action(a.id)
        .data(data)
}

/// Writes an action's new state with its event.
async fn set_action_state(
    tx: &mut Tx,
    a: &Action,
    to: ActionState,
    message: Option<&str>,
    not_before: Option<i64>,
    now: i64,
    last_seq: Option<i64>,
) -> Result<()> {
    a.state.transition(to).map_err(|e| StoreError::Conflict(format!("action {}: {e}", a.id)))?;
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

/// A failed attempt: retried with backoff while retries remain and the rollout
/// still installs, failed otherwise.
async fn fail_action(tx: &mut Tx, r: &Rollout, a: &Action, msg: &str, cause: &str, now: i64) -> Result<()> {
    let active = a.kind == ActionKind::Rollback || r.state.is_active();
    match engine::after_failure(a.attempts.max(0) as u32, &r.strategy.gate, active, now) {
        engine::Retry::Again { not_before } if a.kind == ActionKind::Install => {
            set_action_state(
                tx,
                a,
                ActionState::Scheduled,
                Some(&format!("{cause}: {msg}")),
                Some(not_before),
                now,
                None,
            )
            .await
        }
        engine::Retry::Again { .. } => {
            // Rollback actions are retried in place: the device is told again.
            let deadline = engine::deadline(&r.strategy.gate, now);
            sqlx::query("UPDATE actions SET state = 'notified', attempts = attempts + 1, deadline = $1, error = $2, updated_at = $3 WHERE id = $4")
                .bind(deadline)
                .bind(format!("{cause}: {msg}"))
                .bind(now)
                .bind(a.id)
                .execute(&mut **tx)
                .await?;
            let ev = NewEvent::new("action.retried", cause)
                .rollout(a.rollout_id)
                .device(a.device_id)
                .action(a.id)
                .data(serde_json::json!({"kind": a.kind.as_str(), "attempt": a.attempts + 1, "message": msg}));
            events::insert(tx, now, &ev).await
        }
        engine::Retry::GiveUp => {
            set_action_state(tx, a, ActionState::Failed, Some(&format!("{cause}: {msg}")), None, now, None).await
        }
    }
}

/// Everything [`engine::decide`] reads about one rollout.
#[derive(Debug, Clone)]
pub struct Parts {
    pub rollout: Rollout,
    pub current: WaveCounts,
    pub in_flight_total: u64,
    pub next_ready_at: Option<i64>,
    pub rollback: RollbackCounts,
}

impl Parts {
    pub fn snapshot(&self) -> Snapshot<'_> {
        let r = &self.rollout;
        Snapshot {
            state: r.state,
            strategy: &r.strategy,
            wave: r.current_wave as usize,
            waves: r.waves as usize,
            start_at: r.start_at,
            gate_passed_at: r.gate_passed_at,
            last_release_at: r.last_release_at,
            promote: r.promote,
            current: self.current,
            in_flight_total: self.in_flight_total,
            next_ready_at: self.next_ready_at,
            rollback: self.rollback,
        }
    }
}

async fn read_parts(conn: &mut sqlx::AnyConnection, id: i64, now: i64) -> Result<Parts> {
    let row = sqlx::query(&format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("rollout {id} not found")))?;
    let r = rollout_from_row(&row)?;
    let c = sqlx::query(&format!(
        "SELECT COUNT(*) AS total, \
           COUNT(CASE WHEN state = 'scheduled' THEN 1 END) AS scheduled, \
           COUNT(CASE WHEN state = 'scheduled' AND not_before <= $3 THEN 1 END) AS ready, \
           COUNT(CASE WHEN state IN {IN_FLIGHT} THEN 1 END) AS in_flight, \
           COUNT(CASE WHEN state = 'succeeded' THEN 1 END) AS succeeded, \
           COUNT(CASE WHEN state IN ('failed', 'rolled_back') THEN 1 END) AS failed, \
           COUNT(CASE WHEN state = 'skipped' THEN 1 END) AS skipped, \
           MIN(CASE WHEN state = 'scheduled' AND not_before > $3 THEN not_before END) AS next_ready \
         FROM actions WHERE rollout_id = $1 AND wave = $2 AND kind = 'install'"
    ))
    .bind(id)
    .bind(r.current_wave)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let current = WaveCounts {
        total: c.i64("total")? as u64,
        scheduled: c.i64("scheduled")? as u64,
        ready: c.i64("ready")? as u64,
        in_flight: c.i64("in_flight")? as u64,
        succeeded: c.i64("succeeded")? as u64,
        failed: c.i64("failed")? as u64,
        skipped: c.i64("skipped")? as u64,
    };
    let next_ready_at = c.opt_i64("next_ready")?;
    let in_flight_total = sqlx::query(&format!(
        "SELECT COUNT(*) AS n FROM actions WHERE rollout_id = $1 AND kind = 'install' AND state IN {IN_FLIGHT}"
    ))
    .bind(id)
    .fetch_one(&mut *conn)
    .await?
    .i64("n")? as u64;
    let mut rollback = RollbackCounts { requested: r.rollback_requested, missing: 0, open: 0 };
    if r.rollback_requested {
        rollback.missing = sqlx::query(&format!("SELECT COUNT(*) AS n {MISSING_ROLLBACK}"))
            .bind(id)
            .fetch_one(&mut *conn)
            .await?
            .i64("n")? as u64;
        rollback.open = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM actions WHERE rollout_id = $1 AND kind = 'rollback' AND state NOT IN {TERMINAL}"
        ))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?
        .i64("n")? as u64;
    }
    Ok(Parts { rollout: r, current, in_flight_total, next_ready_at, rollback })
}
