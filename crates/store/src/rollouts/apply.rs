//! Effects → SQL. The core computes what a decision, a command or an action's
//! failure changes (`otafleet_core::effects`); this is the one place that
//! turns those values into statements, inside the caller's transaction. It
//! decides nothing: the simulator applies the same values in memory.

use super::{action_from_row, Action, Rollout, Tx, ACTION_COLS, MISSING_ROLLBACK};
use crate::events::{self, NewEvent};
use crate::{Result, RowExt};
use otafleet_core::effects::{ActionChange, ActionsChange, Effects, RolloutChange, NO_PREVIOUS_VERSION};
use otafleet_core::RolloutState;

/// Applies `e` to rollout `r` and returns the actions it handed to devices
/// (to notify them and to answer their next check-in from memory).
pub(crate) async fn apply_effects(tx: &mut Tx, r: &Rollout, e: &Effects, actor: &str, now: i64) -> Result<Vec<Action>> {
    if *e == Effects::default() {
        return Ok(Vec::new());
    }
    tx.touch(r.id);
    apply_rollout_change(tx, r.id, &e.rollout, now).await?;
    let mut released = Vec::new();
    for change in &e.actions {
        match change {
            ActionsChange::Release { kind, wave, count, deadline } => {
                let wave_filter = if wave.is_some() { "AND wave = $6" } else { "" };
                let sql = format!(
                    "UPDATE actions SET state = 'notified', attempts = attempts + 1, deadline = $1, updated_at = $2 \
                     WHERE id IN (SELECT id FROM actions WHERE rollout_id = $3 AND kind = $4 {wave_filter} \
                     AND state = 'scheduled' AND not_before <= $2 ORDER BY position LIMIT $5) RETURNING {ACTION_COLS}"
                );
                let mut q =
                    sqlx::query(&sql).bind(*deadline).bind(now).bind(r.id).bind(kind.as_str()).bind(*count as i64);
                if let Some(w) = wave {
                    q = q.bind(*w as i64);
                }
                for row in q.fetch_all(&mut **tx).await? {
                    released.push(action_from_row(&row)?);
                }
            }
            ActionsChange::SkipScheduledInstalls { error } => {
                sqlx::query(
                    "UPDATE actions SET state = 'skipped', error = $1, updated_at = $2 \
                     WHERE rollout_id = $3 AND kind = 'install' AND state = 'scheduled'",
                )
                .bind(error.as_str())
                .bind(now)
                .bind(r.id)
                .execute(&mut **tx)
                .await?;
            }
            ActionsChange::CreateRollbacks => {
                // Devices with no known previous version cannot go back: recorded as failed.
                sqlx::query(&format!(
                    "INSERT INTO actions (rollout_id, device_id, wave, position, kind, state, from_version, to_version, attempts, \
                     last_seq, not_before, deadline, error, created_at, updated_at) \
                     SELECT a.rollout_id, a.device_id, a.wave, a.position, 'rollback', 'failed', a.to_version, '', 0, 0, 0, NULL, \
                     $2, $3, $3 {MISSING_ROLLBACK} AND a.from_version IS NULL"
                ))
                .bind(r.id)
                .bind(NO_PREVIOUS_VERSION)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                sqlx::query(&format!(
                    "INSERT INTO actions (rollout_id, device_id, wave, position, kind, state, from_version, to_version, attempts, \
                     last_seq, not_before, deadline, created_at, updated_at) \
                     SELECT a.rollout_id, a.device_id, a.wave, a.position, 'rollback', 'scheduled', a.to_version, a.from_version, \
                     0, 0, $2, NULL, $2, $2 {MISSING_ROLLBACK}"
                ))
                .bind(r.id)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    for spec in &e.events {
        let mut data = spec.data.clone();
        if !released.is_empty() && data.is_object() {
            let sample: Vec<String> = released.iter().take(10).map(|a| a.device_id.to_string()).collect();
            data["devices_sample"] = sample.into();
        }
        if e.rollout.state == Some(RolloutState::RolledBack) && data.is_object() {
            let stats = sqlx::query(
                "SELECT COUNT(CASE WHEN state = 'succeeded' THEN 1 END) AS ok, COUNT(CASE WHEN state <> 'succeeded' THEN 1 END) AS bad \
                 FROM actions WHERE rollout_id = $1 AND kind = 'rollback'",
            )
            .bind(r.id)
            .fetch_one(&mut **tx)
            .await?;
            data["gate"] = serde_json::json!({"rolled_back": stats.i64("ok")?, "rollback_failed": stats.i64("bad")?});
        }
        events::insert(tx, now, &NewEvent::new(spec.kind, actor).rollout(r.id).data(data)).await?;
    }
    Ok(released)
}

async fn apply_rollout_change(tx: &mut Tx, id: i64, c: &RolloutChange, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE rollouts SET state = COALESCE($1, state), reason = COALESCE($2, reason), \
         rollback_requested = COALESCE($3, rollback_requested), finished_at = COALESCE($4, finished_at), \
         current_wave = current_wave + $5, \
         gate_passed_at = CASE WHEN $5 = 1 THEN NULL ELSE COALESCE($6, gate_passed_at) END, \
         last_release_at = CASE WHEN $5 = 1 THEN NULL ELSE COALESCE($7, last_release_at) END, \
         promote = CASE WHEN $5 = 1 THEN 0 ELSE COALESCE($8, promote) END, updated_at = $9, \
         analysis = CASE WHEN $5 = 1 THEN '[]' ELSE COALESCE($11, analysis) END WHERE id = $10",
    )
    .bind(c.state.map(|s| s.as_str()))
    .bind(c.reason.clone())
    .bind(c.rollback_requested.map(i64::from))
    .bind(c.finished_at)
    .bind(i64::from(c.advance_wave))
    .bind(c.gate_passed_at)
    .bind(c.last_release_at)
    .bind(c.promote.map(i64::from))
    .bind(now)
    .bind(id)
    .bind(c.analysis.as_ref().map(|runs| serde_json::to_string(runs).unwrap_or_else(|_| "[]".into())))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Applies one action's change (a failure's retry or end) with its event.
pub(crate) async fn apply_action_change(
    tx: &mut Tx,
    a: &Action,
    c: &ActionChange,
    actor: &str,
    now: i64,
) -> Result<()> {
    debug_assert!(!c.state.is_in_flight(), "an action change never puts an action in flight");
    tx.touch(a.rollout_id);
    sqlx::query(
        "UPDATE actions SET state = $1, error = $2, not_before = COALESCE($3, not_before), deadline = NULL, \
         updated_at = $4 WHERE id = $5",
    )
    .bind(c.state.as_str())
    .bind(c.error.as_str())
    .bind(c.not_before)
    .bind(now)
    .bind(a.id)
    .execute(&mut **tx)
    .await?;
    let ev = NewEvent::new(c.event.kind, actor)
        .rollout(a.rollout_id)
        .device(a.device_id)
        .action(a.id)
        .data(c.event.data.clone());
    events::insert(tx, now, &ev).await
}
