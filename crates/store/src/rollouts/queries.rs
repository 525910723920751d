//! Reads: rollouts and actions for the API, counts for metrics, and the
//! driver's and the check-in inbox's work lists. No writes.

use super::{
    action_from_row, rollout_from_row, Action, ActionQuery, Rollout, RolloutQuery, RolloutSummary, WaveProgress,
    ACTION_COLS, ACTIVE, FAILED, IN_FLIGHT, ROLLBACKABLE, ROLLOUT_COLS,
};
use crate::{Result, RowExt, Store};
use uuid::Uuid;

impl Store {
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
        if let Some(r) = q.release_id {
            sql.push(" AND release_id = ").bind_i64(r);
        }
        sql.push(" ORDER BY id DESC LIMIT ").bind_i64(q.limit.clamp(1, 100_000));
        let rows = sql.query().fetch_all(&self.pool).await?;
        rows.iter().map(rollout_from_row).collect()
    }

    /// Every rollout, newest first, with only what a list shows (the tracker's
    /// job list is built from this).
    pub async fn rollout_summaries(&self) -> Result<Vec<RolloutSummary>> {
        let rows = sqlx::query(
            "SELECT id, version, preset, kind, state, created_at FROM rollouts ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RolloutSummary {
                    id: r.i64("id")?,
                    version: r.string("version")?,
                    preset: r.parsed("preset")?,
                    kind: r.parsed("kind")?,
                    state: r.parsed("state")?,
                    created_at: r.i64("created_at")?,
                })
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
    pub async fn count_succeeded_installs(&self) -> Result<i64> {
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
               COUNT(CASE WHEN kind = 'install' AND state IN {FAILED} THEN 1 END) AS failed, \
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
    /// Devices that already have unfinished work in an active rollout.
    pub async fn busy_devices(&self) -> Result<std::collections::HashSet<Uuid>> {
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT a.device_id FROM actions a JOIN rollouts r ON r.id = a.rollout_id \
             WHERE (a.state = 'scheduled' OR a.state IN {IN_FLIGHT}) AND r.state IN {ACTIVE}"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.parsed::<Uuid>("device_id")).collect()
    }

    /// Rollouts the driver has to look at, with their revision (raised by
    /// every change to the rollout or its actions: the driver skips a rollout
    /// whose revision has not moved since the engine last said "idle").
    /// Jobs with nothing planned (waves = 0) belong to an external executor
    /// and cost the driver nothing.
    pub async fn drivable_rollouts(&self) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query(&format!(
            "SELECT r.id, COALESCE(c.rev, 0) AS rev FROM rollouts r LEFT JOIN rollout_changes c ON c.rollout_id = r.id \
             WHERE r.waves > 0 AND (r.state IN {ACTIVE} OR (r.rollback_requested = 1 AND r.state IN {ROLLBACKABLE})) \
             ORDER BY r.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.i64("id")?, r.i64("rev")?))).collect()
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
}
