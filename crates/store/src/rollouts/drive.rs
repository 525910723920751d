//! The driver's step: read a snapshot, ask `otafleet_core::engine::decide`,
//! apply the decision's effects, all in one write transaction.

use super::apply::apply_effects;
use super::{rollout_from_row, Action, Rollout, FAILED, IN_FLIGHT, MISSING_ROLLBACK, ROLLOUT_COLS, TERMINAL};
use crate::leases::{check_fence, Fence};
use crate::notify::{self, Change};
use crate::{Result, RowExt, Store, StoreError};
use otafleet_core::analysis::Measured;
use otafleet_core::effects;
use otafleet_core::engine::{self, Decision, RollbackCounts, Snapshot, WaveCounts};

/// Everything [`engine::decide`] reads about one rollout.
#[derive(Debug, Clone)]
pub struct Parts {
    /// The rollout's revision, read before anything else: a change committed
    /// while the rest is read raises it past this value, so the driver looks again.
    pub rev: i64,
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
            covers_target: r.covers_target,
            start_at: r.start_at,
            gate_passed_at: r.gate_passed_at,
            last_release_at: r.last_release_at,
            promote: r.promote,
            current: self.current,
            in_flight_total: self.in_flight_total,
            next_ready_at: self.next_ready_at,
            rollback: self.rollback,
            analysis: &r.analysis,
        }
    }
}

pub(crate) async fn read_parts(conn: &mut sqlx::AnyConnection, id: i64, now: i64) -> Result<Parts> {
    let rev = sqlx::query("SELECT rev FROM rollout_changes WHERE rollout_id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.i64("rev"))
        .transpose()?
        .unwrap_or(0);
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
           COUNT(CASE WHEN state IN {FAILED} THEN 1 END) AS failed, \
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
    let mut rollback = RollbackCounts { requested: r.rollback_requested, ..RollbackCounts::default() };
    if r.rollback_requested {
        rollback.missing = sqlx::query(&format!("SELECT COUNT(*) AS n {MISSING_ROLLBACK}"))
            .bind(id)
            .fetch_one(&mut *conn)
            .await?
            .i64("n")? as u64;
        let c = sqlx::query(&format!(
            "SELECT COUNT(*) AS open, \
               COUNT(CASE WHEN state = 'scheduled' AND not_before <= $2 THEN 1 END) AS ready, \
               MIN(CASE WHEN state = 'scheduled' AND not_before > $2 THEN not_before END) AS next_ready \
             FROM actions WHERE rollout_id = $1 AND kind = 'rollback' AND state NOT IN {TERMINAL}"
        ))
        .bind(id)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
        rollback.open = c.i64("open")? as u64;
        rollback.ready = c.i64("ready")? as u64;
        rollback.next_ready_at = c.opt_i64("next_ready")?;
    }
    Ok(Parts { rev, rollout: r, current, in_flight_total, next_ready_at, rollback })
}

impl Store {
    /// Reads what the engine needs about rollout `id` at `now`.
    pub async fn snapshot(&self, id: i64, now: i64) -> Result<Parts> {
        let mut conn = self.pool.acquire().await?;
        read_parts(&mut conn, id, now).await
    }

    /// One driver step: read, decide, apply in one transaction. Returns the
    /// decision taken, the actions it handed to devices (to notify them and
    /// to answer their next check-in without a read) and, for "idle", the
    /// revision the decision was taken at.
    ///
    /// A cheap read outside any transaction filters out the common "nothing to
    /// do" case; otherwise the snapshot is read again inside the write
    /// transaction and that decision is the one applied, so concurrent status
    /// reports can never be decided over stale counts.
    ///
    /// Only the holder of the driver's lease may drive: `fence` is checked
    /// first inside the write transaction, and a lapsed or taken-over lease
    /// ends the step with [`StoreError::Fenced`] before anything is written.
    pub async fn drive_step(&self, id: i64, now: i64, fence: &Fence) -> Result<Step> {
        let parts = self.snapshot(id, now).await?;
        let decision = engine::decide(&parts.snapshot(), now);
        // Idle changes nothing; a measurement is gathered by the caller and
        // recorded with `record_analysis`.
        if matches!(decision, Decision::Idle { .. } | Decision::Measure { .. }) {
            return Ok(Step { decision, released: Vec::new(), rev: parts.rev });
        }
        let mut tx = self.write_tx().await?;
        check_fence(&mut tx, self.backend, fence, now).await?;
        let parts = read_parts(&mut tx, id, now).await?;
        let snapshot = parts.snapshot();
        let decision = engine::decide(&snapshot, now);
        if matches!(decision, Decision::Idle { .. } | Decision::Measure { .. }) {
            return Ok(Step { decision, released: Vec::new(), rev: parts.rev });
        }
        let e = effects::decision(&snapshot, &decision, now);
        let released = apply_effects(&mut tx, &parts.rollout, &e, "driver", now).await?;
        let devices = released.iter().map(|a| a.device_id).collect();
        notify::send(&mut tx, self.backend, &self.origin, &Change::Actions { devices }).await?;
        tx.commit().await?;
        Ok(Step { decision, released, rev: parts.rev })
    }
}

impl Store {
    /// Records measurements of rollout `id`'s analysis checks, gathered by
    /// the driver after [`Decision::Measure`] for the wave `wave` whose gate
    /// passed at `gate_passed_at`: [`effects::measured`] applied in one
    /// transaction with its events. A measurement of a check the engine no
    /// longer asks for (the rollout moved on, was paused, or the check was
    /// measured meanwhile) is dropped, so a stale one never counts. Returns
    /// whether anything was recorded.
    pub async fn record_analysis(
        &self,
        id: i64,
        wave: i64,
        gate_passed_at: i64,
        results: &[(usize, Measured)],
        now: i64,
        fence: &Fence,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        check_fence(&mut tx, self.backend, fence, now).await?;
        let parts = read_parts(&mut tx, id, now).await?;
        let r = &parts.rollout;
        if r.current_wave != wave || r.gate_passed_at != Some(gate_passed_at) {
            return Ok(false);
        }
        let snapshot = parts.snapshot();
        let Decision::Measure { checks } = engine::decide(&snapshot, now) else { return Ok(false) };
        let due: Vec<(usize, Measured)> = results.iter().filter(|(i, _)| checks.contains(i)).cloned().collect();
        if due.is_empty() {
            return Ok(false);
        }
        let e = effects::measured(&snapshot, &due, now);
        apply_effects(&mut tx, r, &e, "driver", now).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// What one [`Store::drive_step`] did.
#[derive(Debug, Clone)]
pub struct Step {
    pub decision: Decision,
    pub released: Vec<Action>,
    /// The rollout's revision the decision was taken at (a step that changed
    /// something has raised it since).
    pub rev: i64,
}
