//! Actions past their deadline, and what any failed attempt does (shared
//! with failure reports): `otafleet_core::effects::action_failure` decides,
//! [`apply_action_change`] writes.

use super::apply::apply_action_change;
use super::{load_rollout, lock_action, Action, Rollout, Tx, IN_FLIGHT};
use crate::leases::{check_fence, Fence};
use crate::notify::{self, Change};
use crate::{Result, RowExt, Store, StoreError};
use otafleet_core::effects::{self, ActionFacts};
use uuid::Uuid;

impl Store {
    /// Applies timeouts: in-flight actions past their deadline are retried with
    /// backoff or failed. Returns the devices whose action changed.
    ///
    /// Like [`Store::drive_step`], only for the holder of `fence`: each
    /// action's transaction checks it first and a lapsed lease ends the call
    /// with [`StoreError::Fenced`] (what was committed before stays).
    pub async fn expire_actions(&self, now: i64, limit: i64, fence: &Fence) -> Result<Vec<Uuid>> {
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
            check_fence(&mut tx, self.backend, fence, now).await?;
            // Locked: a status report of another replica waits, then sees the timeout.
            let Some(a) = lock_action(&mut tx, self.backend, id).await? else { continue };
            if !a.state.is_in_flight() || a.deadline.is_none_or(|d| d > now) {
                continue;
            }
            let r = load_rollout(&mut tx, a.rollout_id).await?;
            let msg = format!("no report within {} s (attempt {})", r.strategy.gate.timeout_secs, a.attempts);
            fail_action(&mut tx, &r, &a, &msg, "timeout", now).await?;
            let change = Change::Actions { devices: vec![a.device_id] };
            notify::send(&mut tx, self.backend, &self.origin, &change).await?;
            tx.commit().await?;
            changed.push(a.device_id);
        }
        Ok(changed)
    }
}

/// A failed attempt (`cause`: `device` or `timeout`): retried with backoff
/// through `scheduled` while retries remain, failed otherwise.
pub(crate) async fn fail_action(tx: &mut Tx, r: &Rollout, a: &Action, msg: &str, cause: &str, now: i64) -> Result<()> {
    let facts = ActionFacts { kind: a.kind, state: a.state, attempts: a.attempts.max(0) as u32 };
    let change = effects::action_failure(facts, r.state, &r.strategy.gate, cause, msg, now)
        .map_err(|e| StoreError::Conflict(format!("action {}: {e}", a.id)))?;
    apply_action_change(tx, a, &change, cause, now).await
}
