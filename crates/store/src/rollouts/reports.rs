//! Device status reports, idempotent by sequence number: one by one
//! ([`Store::report_status`]) or group-committed ([`Store::report_statuses`]),
//! with the writes of a batch buffered in [`ReportWrites`].

use super::expiry::fail_action;
use super::report_writes::ReportWrites;
use super::{
    action_event, action_from_row, for_update, load_action, load_rollout, lock_action, Action, ReportOutcome, Tx,
    ACTION_COLS,
};
use crate::events::NewEvent;
use crate::notify::{self, Change};
use crate::{Result, Store, StoreError};
use otafleet_core::protocol::StatusReport;
use otafleet_core::{ActionState, EventKind};
use std::collections::HashMap;
use uuid::Uuid;

impl Store {
    /// A device reports progress on one of its actions. Idempotent by sequence
    /// number; a report about another device's action is NotFound.
    pub async fn report_status(
        &self,
        device_id: Uuid,
        report: &StatusReport,
        now: i64,
    ) -> Result<(ReportOutcome, Action)> {
        let mut tx = self.write_tx().await?;
        let a = lock_action(&mut tx, self.backend, report.action_id).await?;
        let mut w = ReportWrites::new(self.backend);
        let out = apply_report(&mut tx, &mut w, device_id, report, a, now).await?;
        w.flush(&mut tx, now).await?;
        if out.0 == ReportOutcome::Applied {
            let change = Change::Actions { devices: vec![device_id] };
            notify::send(&mut tx, self.backend, &self.origin, &change).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Group commit: applies many reports in one write transaction, in order,
    /// each exactly as [`Store::report_status`] would (two reports on one
    /// action see each other). The actions are read in one query up front,
    /// locked on PostgreSQL in id order (so two replicas' batches over the
    /// same actions queue instead of deadlocking, and the second reads what
    /// the first committed: each `(action_id, seq)` is applied once). A
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
            for row in sqlx::query(&format!(
                "SELECT {ACTION_COLS} FROM actions WHERE id IN ({list}) ORDER BY id{}",
                for_update(self.backend)
            ))
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
        let mut devices: Vec<Uuid> = out
            .iter()
            .filter_map(|o| match o {
                Ok((ReportOutcome::Applied, a)) => Some(a.device_id),
                _ => None,
            })
            .collect();
        devices.sort_unstable();
        devices.dedup();
        notify::send(&mut tx, self.backend, &self.origin, &Change::Actions { devices }).await?;
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
        let ev = NewEvent::new(EventKind::ActionReportIgnored, "device")
            .device(device_id)
            .action(a.id)
            .rollout(a.rollout_id)
            .data(serde_json::json!({"state": a.state.as_str(), "reported": report.state.as_str(), "seq": report.seq}));
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
        tx.touch(a.rollout_id);
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
