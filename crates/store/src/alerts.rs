//! Alert rules and the alerts they raise (migration 0015).
//!
//! A rule is a [`core::alert::AlertRule`](otafleet_core::alert::AlertRule)
//! with a unique name and the selector of the devices it watches. An alert
//! is one rule on one device (`subject` = the device id, for a `per_device`
//! rule) or on the rule's whole group (`subject` = `""`); only alerts that
//! are pending or firing have a row, so reading the firing ones is short.
//! The evaluator (the leader's, `otafleet_server::service::alerts`) writes
//! what [`otafleet_core::alert::step`] decided with
//! [`Store::apply_alert_changes`], fenced like the driver, one `alert.*`
//! event per transition: the history.

use crate::events::{self, NewEvent};
use crate::leases::{check_fence, Fence};
use crate::{conflict_or, now_ms, Result, RowExt, Store, StoreError};
use otafleet_core::alert::{AlertRule, AlertState, Severity, Transition};
use otafleet_core::EventKind;
use uuid::Uuid;

/// A stored rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleRecord {
    pub id: i64,
    pub name: String,
    /// The devices the rule watches (a label selector; `""`: every device).
    pub selector: String,
    pub rule: AlertRule,
    pub created_by: String,
    pub created_at: i64,
}

/// A rule to store (already validated).
#[derive(Debug, Clone)]
pub struct NewAlertRule<'a> {
    pub name: &'a str,
    pub selector: &'a str,
    pub rule: &'a AlertRule,
    pub created_by: &'a str,
}

/// An alert that is pending or firing.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    pub rule_id: i64,
    pub rule_name: String,
    pub severity: Severity,
    /// The device, for a per-device alert; None for a group's.
    pub device_id: Option<Uuid>,
    pub state: AlertState,
    /// The rule's aggregation at the last evaluation that changed the alert.
    pub value: Option<f64>,
    pub updated_at: i64,
}

/// What one evaluation changed of one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertChange {
    pub rule_id: i64,
    /// The device, or None for the group.
    pub device_id: Option<Uuid>,
    /// The new state; `Inactive` deletes the row.
    pub state: AlertState,
    /// The transition to record as an event, if the state changed kind.
    pub transition: Option<Transition>,
    pub value: Option<f64>,
    /// The event's data (rule, severity, value, threshold…).
    pub data: serde_json::Value,
}

const RULE_COLS: &str = "id, name, selector, rule, created_by, created_at";

fn rule_from_row(r: &sqlx::any::AnyRow) -> Result<AlertRuleRecord> {
    Ok(AlertRuleRecord {
        id: r.i64("id")?,
        name: r.string("name")?,
        selector: r.string("selector")?,
        rule: r.json("rule")?,
        created_by: r.string("created_by")?,
        created_at: r.i64("created_at")?,
    })
}

fn subject(device: Option<Uuid>) -> String {
    device.map(|d| d.to_string()).unwrap_or_default()
}

fn event_kind(t: Transition) -> EventKind {
    match t {
        Transition::Pending => EventKind::AlertPending,
        Transition::Firing => EventKind::AlertFiring,
        Transition::Resolved => EventKind::AlertResolved,
        Transition::Cancelled => EventKind::AlertCancelled,
    }
}

impl Store {
    /// Stores a rule (`alert_rule.created`); a name already taken is a conflict.
    pub async fn create_alert_rule(&self, r: &NewAlertRule<'_>) -> Result<AlertRuleRecord> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let rule = serde_json::to_string(r.rule).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let row = sqlx::query(&format!(
            "INSERT INTO alert_rules (name, selector, rule, created_by, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING {RULE_COLS}"
        ))
        .bind(r.name)
        .bind(r.selector)
        .bind(rule)
        .bind(r.created_by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict_or(e, || format!("an alert rule named '{}' exists", r.name)))?;
        let record = rule_from_row(&row)?;
        let data = serde_json::json!({"rule_id": record.id, "name": record.name, "selector": record.selector,
                                      "rule": record.rule});
        events::insert(&mut tx, now, &NewEvent::new(EventKind::AlertRuleCreated, r.created_by).data(data)).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Every rule, oldest first.
    pub async fn list_alert_rules(&self) -> Result<Vec<AlertRuleRecord>> {
        let rows =
            sqlx::query(&format!("SELECT {RULE_COLS} FROM alert_rules ORDER BY id")).fetch_all(&self.pool).await?;
        rows.iter().map(rule_from_row).collect()
    }

    pub async fn get_alert_rule(&self, id: i64) -> Result<Option<AlertRuleRecord>> {
        let row = sqlx::query(&format!("SELECT {RULE_COLS} FROM alert_rules WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rule_from_row).transpose()
    }

    /// Deletes a rule and its alerts (`alert_rule.deleted`, which names the
    /// alerts that were firing); None if there was none.
    pub async fn delete_alert_rule(&self, id: i64, actor: &str) -> Result<Option<AlertRuleRecord>> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let Some(row) = sqlx::query(&format!("SELECT {RULE_COLS} FROM alert_rules WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let record = rule_from_row(&row)?;
        let firing = sqlx::query("SELECT COUNT(*) AS n FROM alerts WHERE rule_id = $1 AND firing = 1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .i64("n")?;
        sqlx::query("DELETE FROM alerts WHERE rule_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM alert_rules WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let data = serde_json::json!({"rule_id": id, "name": record.name, "firing": firing});
        events::insert(&mut tx, now, &NewEvent::new(EventKind::AlertRuleDeleted, actor).data(data)).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    /// The alerts that are pending or firing (only firing ones with
    /// `firing_only`), of one rule or of all, firing first, then by rule.
    pub async fn list_alerts(&self, rule_id: Option<i64>, firing_only: bool) -> Result<Vec<AlertRecord>> {
        let mut sql = String::from(
            "SELECT a.rule_id, r.name, r.rule, a.subject, a.state, a.value, a.updated_at \
             FROM alerts a JOIN alert_rules r ON r.id = a.rule_id WHERE 1=1",
        );
        if rule_id.is_some() {
            sql.push_str(" AND a.rule_id = $1");
        }
        if firing_only {
            sql.push_str(" AND a.firing = 1");
        }
        sql.push_str(" ORDER BY a.firing DESC, a.rule_id, a.subject");
        let mut q = sqlx::query(&sql);
        if let Some(id) = rule_id {
            q = q.bind(id);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let rule: AlertRule = r.json("rule")?;
                let subject = r.string("subject")?;
                let device_id = match subject.as_str() {
                    "" => None,
                    s => Some(s.parse().map_err(|e| StoreError::Corrupt(format!("alerts.subject: {e}")))?),
                };
                Ok(AlertRecord {
                    rule_id: r.i64("rule_id")?,
                    rule_name: r.string("name")?,
                    severity: rule.severity,
                    device_id,
                    state: r.json("state")?,
                    value: r.opt_f64("value")?,
                    updated_at: r.i64("updated_at")?,
                })
            })
            .collect()
    }

    /// The firing per-device alerts of the devices of wave `wave` of rollout
    /// `rollout`: (device, rule name, severity), for a `no_firing_alerts`
    /// analysis check.
    pub async fn firing_alerts_of_wave(&self, rollout: i64, wave: i64) -> Result<Vec<(Uuid, String, Severity)>> {
        let rows = sqlx::query(
            "SELECT a.subject, r.name, r.rule FROM alerts a JOIN alert_rules r ON r.id = a.rule_id \
             WHERE a.firing = 1 AND a.subject IN \
             (SELECT device_id FROM actions WHERE rollout_id = $1 AND wave = $2 AND kind = 'install') \
             ORDER BY a.subject, r.name",
        )
        .bind(rollout)
        .bind(wave)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let rule: AlertRule = r.json("rule")?;
                Ok((r.parsed("subject")?, r.string("name")?, rule.severity))
            })
            .collect()
    }

    /// Writes what an evaluation changed, in one transaction checked against
    /// the evaluator's `fence`: an alert back to inactive loses its row, any
    /// other state is upserted; every transition is an `alert.*` event (with
    /// the device, for a per-device alert). A rule deleted meanwhile drops
    /// its changes.
    pub async fn apply_alert_changes(&self, changes: &[AlertChange], fence: &Fence, now: i64) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        check_fence(&mut tx, self.backend, fence, now).await?;
        for c in changes {
            let exists = sqlx::query("SELECT 1 AS x FROM alert_rules WHERE id = $1")
                .bind(c.rule_id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists {
                continue;
            }
            if c.state == AlertState::Inactive {
                sqlx::query("DELETE FROM alerts WHERE rule_id = $1 AND subject = $2")
                    .bind(c.rule_id)
                    .bind(subject(c.device_id))
                    .execute(&mut *tx)
                    .await?;
            } else {
                let state = serde_json::to_string(&c.state).map_err(|e| StoreError::Invalid(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO alerts (rule_id, subject, state, firing, value, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (rule_id, subject) DO UPDATE SET state = excluded.state, firing = excluded.firing, \
                     value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(c.rule_id)
                .bind(subject(c.device_id))
                .bind(state)
                .bind(i64::from(c.state.is_firing()))
                .bind(c.value.filter(|v| v.is_finite()))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(t) = c.transition {
                let mut e = NewEvent::new(event_kind(t), "alerts").data(c.data.clone());
                if let Some(d) = c.device_id {
                    e = e.device(d);
                }
                events::insert(&mut tx, now, &e).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
