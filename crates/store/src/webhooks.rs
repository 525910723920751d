//! Webhooks and their deliveries (migration 0010). The server's worker
//! (`otafleet_server::service::webhooks`) turns events into deliveries
//! ([`Store::fan_out`]), claims the due ones ([`Store::claim_deliveries`]),
//! sends them and records each attempt ([`Store::record_attempt`]); every one
//! of those writes carries the driver's [`Fence`], so only the leader
//! delivers, and a former leader that lost its lease writes nothing more.
//!
//! A delivery is `pending` (its next attempt due at `next_attempt_at`),
//! `delivered` (a 2xx answer) or `failed` (given up). Claiming moves
//! `next_attempt_at` past the attempt's timeout, so a leader that dies with
//! a request in flight leaves the delivery to be tried again by the next:
//! delivery is at least once, and every attempt of one delivery carries the
//! same id for the receiver to drop a repeat.

use crate::events::{self, NewEvent};
use crate::leases::{check_fence, Fence};
use crate::sql::{json_col, json_rows, Sql};
use crate::{now_ms, Result, RowExt, Store, StoreError};
use otafleet_core::EventKind;
use sqlx::any::AnyRow;
use std::collections::HashMap;

/// A stored webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: i64,
    pub url: String,
    /// Patterns as given (`rollout.*`, `action.failed`), see `otafleet_core::webhook`.
    pub events: Vec<String>,
    pub description: String,
    pub secret: String,
    pub created_at: i64,
    pub created_by: String,
    /// Only events with a larger id are delivered to it.
    pub after_event_id: i64,
}

#[derive(Debug, Clone)]
pub struct NewWebhook<'a> {
    pub url: &'a str,
    pub events: Vec<String>,
    pub description: &'a str,
    pub secret: &'a str,
    pub created_by: &'a str,
}

/// Deliveries of one webhook by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            _ => Err(format!("unknown delivery state '{s}', expected pending, delivered or failed")),
        }
    }
}

/// One event's delivery to one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: i64,
    pub event_id: i64,
    pub event_kind: String,
    pub state: DeliveryState,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// A delivery to create: event `event_id` of kind `event_kind` for `webhook_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub webhook_id: i64,
    pub event_id: i64,
    pub event_kind: EventKind,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub at: i64,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
    /// Delivered, retried at the given time, or given up.
    pub outcome: AttemptOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    RetryAt(i64),
    GiveUp,
}

const HOOK_COLS: &str = "id, url, events, description, secret, created_at, created_by, after_event_id";
const DELIVERY_COLS: &str = "id, webhook_id, event_id, event_kind, state, attempts, next_attempt_at, last_attempt_at, \
                             last_status, last_error, last_duration_ms, created_at, delivered_at";

fn hook_from_row(r: &AnyRow) -> Result<Webhook> {
    Ok(Webhook {
        id: r.i64("id")?,
        url: r.string("url")?,
        events: r.json("events")?,
        description: r.string("description")?,
        secret: r.string("secret")?,
        created_at: r.i64("created_at")?,
        created_by: r.string("created_by")?,
        after_event_id: r.i64("after_event_id")?,
    })
}

fn delivery_from_row(r: &AnyRow) -> Result<Delivery> {
    Ok(Delivery {
        id: r.i64("id")?,
        webhook_id: r.i64("webhook_id")?,
        event_id: r.i64("event_id")?,
        event_kind: r.string("event_kind")?,
        state: r.string("state")?.parse().map_err(StoreError::Corrupt)?,
        attempts: r.i64("attempts")?,
        next_attempt_at: r.opt_i64("next_attempt_at")?,
        last_attempt_at: r.opt_i64("last_attempt_at")?,
        last_status: r.opt_i64("last_status")?,
        last_error: r.opt_string("last_error")?,
        last_duration_ms: r.opt_i64("last_duration_ms")?,
        created_at: r.i64("created_at")?,
        delivered_at: r.opt_i64("delivered_at")?,
    })
}

/// Deliveries written per statement.
const CHUNK: usize = 5_000;

impl Store {
    /// Stores a webhook that gets the events from now on, with its event.
    pub async fn create_webhook(&self, w: &NewWebhook<'_>) -> Result<Webhook> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let after =
            sqlx::query("SELECT MAX(id) AS n FROM events").fetch_one(&mut *tx).await?.opt_i64("n")?.unwrap_or(0);
        let events_json = serde_json::to_string(&w.events).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let row = sqlx::query(&format!(
            "INSERT INTO webhooks (url, events, description, secret, created_at, created_by, after_event_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {HOOK_COLS}"
        ))
        .bind(w.url)
        .bind(events_json)
        .bind(w.description)
        .bind(w.secret)
        .bind(now)
        .bind(w.created_by)
        .bind(after)
        .fetch_one(&mut *tx)
        .await?;
        let hook = hook_from_row(&row)?;
        let data = serde_json::json!({"webhook_id": hook.id, "url": hook.url, "events": hook.events});
        events::insert(&mut tx, now, &NewEvent::new(EventKind::WebhookCreated, w.created_by).data(data)).await?;
        tx.commit().await?;
        Ok(hook)
    }

    /// Every webhook, oldest first.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        let rows = sqlx::query(&format!("SELECT {HOOK_COLS} FROM webhooks ORDER BY id")).fetch_all(&self.pool).await?;
        rows.iter().map(hook_from_row).collect()
    }

    pub async fn get_webhook(&self, id: i64) -> Result<Option<Webhook>> {
        let row = sqlx::query(&format!("SELECT {HOOK_COLS} FROM webhooks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(hook_from_row).transpose()
    }

    /// Deletes a webhook and its delivery log; None if there was none.
    pub async fn delete_webhook(&self, id: i64, actor: &str) -> Result<Option<Webhook>> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(&format!("SELECT {HOOK_COLS} FROM webhooks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(hook) = row.as_ref().map(hook_from_row).transpose()? else { return Ok(None) };
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let data = serde_json::json!({"webhook_id": hook.id, "url": hook.url});
        events::insert(&mut tx, now_ms(), &NewEvent::new(EventKind::WebhookDeleted, actor).data(data)).await?;
        tx.commit().await?;
        Ok(Some(hook))
    }

    /// Deliveries by state for each webhook that has any.
    pub async fn delivery_counts(&self) -> Result<HashMap<i64, DeliveryCounts>> {
        let rows =
            sqlx::query("SELECT webhook_id, state, COUNT(*) AS n FROM webhook_deliveries GROUP BY webhook_id, state")
                .fetch_all(&self.pool)
                .await?;
        let mut out: HashMap<i64, DeliveryCounts> = HashMap::new();
        for r in rows {
            let c = out.entry(r.i64("webhook_id")?).or_default();
            let n = r.i64("n")?;
            match r.string("state")?.parse().map_err(StoreError::Corrupt)? {
                DeliveryState::Pending => c.pending = n,
                DeliveryState::Delivered => c.delivered = n,
                DeliveryState::Failed => c.failed = n,
            }
        }
        Ok(out)
    }

    /// The id up to which events have been turned into deliveries.
    pub async fn webhook_cursor(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT event_id FROM webhook_cursor WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.i64("event_id"))
            .transpose()?
            .unwrap_or(0))
    }

    /// Writes `deliveries` (those that exist already are left alone) and
    /// moves the cursor to `cursor`, in one transaction under `fence`.
    /// Returns how many deliveries were new.
    pub async fn fan_out(&self, fence: &Fence, deliveries: &[NewDelivery], cursor: i64) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        check_fence(&mut tx, self.backend, fence, now).await?;
        let b = self.backend;
        let sql = format!(
            "INSERT INTO webhook_deliveries (webhook_id, event_id, event_kind, state, attempts, next_attempt_at, \
             created_at) SELECT {}, {}, {}, 'pending', 0, $1, $1 FROM {} \
             WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = {}) ORDER BY j.key \
             ON CONFLICT (webhook_id, event_id) DO NOTHING",
            json_col(b, 0, Some("bigint")),
            json_col(b, 1, Some("bigint")),
            json_col(b, 2, None),
            json_rows(b, 2),
            json_col(b, 0, Some("bigint")),
        );
        let mut added = 0;
        for chunk in deliveries.chunks(CHUNK) {
            let doc = serde_json::Value::Array(
                chunk.iter().map(|d| serde_json::json!([d.webhook_id, d.event_id, d.event_kind.as_str()])).collect(),
            )
            .to_string();
            added += sqlx::query(&sql).bind(now).bind(doc).execute(&mut *tx).await?.rows_affected();
        }
        sqlx::query("UPDATE webhook_cursor SET event_id = $1 WHERE id = 1 AND event_id < $1")
            .bind(cursor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(added)
    }

    /// Takes up to `limit` pending deliveries of `webhook_id` due at `now`,
    /// oldest first: counts the attempt and puts the next one off until
    /// `until` (past the attempt's timeout), under `fence`.
    pub async fn claim_deliveries(
        &self,
        fence: &Fence,
        webhook_id: i64,
        now: i64,
        until: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        let due = sqlx::query(
            "SELECT id FROM webhook_deliveries WHERE webhook_id = $1 AND state = 'pending' AND next_attempt_at <= $2 \
             ORDER BY next_attempt_at, id LIMIT $3",
        )
        .bind(webhook_id)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let ids = due.iter().map(|r| r.i64("id")).collect::<Result<Vec<_>>>()?;
        let mut tx = self.write_tx().await?;
        check_fence(&mut tx, self.backend, fence, now).await?;
        let mut sql = Sql::new("UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = ");
        sql.bind_i64(now).push(", next_attempt_at = ").bind_i64(until);
        sql.push(" WHERE state = 'pending' AND next_attempt_at <= ").bind_i64(now).push(" AND id IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind_i64(*id);
        }
        sql.push(&format!(") RETURNING {DELIVERY_COLS}"));
        let rows = sql.query().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut out = rows.iter().map(delivery_from_row).collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|d| (d.event_id, d.id));
        Ok(out)
    }

    /// Records an attempt of a claimed delivery, under `fence`. False if the
    /// delivery is gone (its webhook deleted meanwhile).
    pub async fn record_attempt(&self, fence: &Fence, id: i64, a: &Attempt) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        check_fence(&mut tx, self.backend, fence, a.at).await?;
        let (state, next, delivered_at) = match a.outcome {
            AttemptOutcome::Delivered => (DeliveryState::Delivered, None, Some(a.at)),
            AttemptOutcome::RetryAt(t) => (DeliveryState::Pending, Some(t), None),
            AttemptOutcome::GiveUp => (DeliveryState::Failed, None, None),
        };
        let error = a.error.as_deref().map(|e| e.chars().take(500).collect::<String>());
        let n = sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, next_attempt_at = $2, delivered_at = $3, last_status = $4, \
             last_error = $5, last_duration_ms = $6 WHERE id = $7 AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(next)
        .bind(delivered_at)
        .bind(a.status)
        .bind(error)
        .bind(a.duration_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// A webhook's deliveries, newest first, below `before`, in `state`.
    pub async fn list_deliveries(
        &self,
        webhook_id: i64,
        state: Option<DeliveryState>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        let mut sql = Sql::new(&format!("SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE webhook_id = "));
        sql.bind_i64(webhook_id);
        if let Some(s) = state {
            sql.push(" AND state = ").bind_str(s.as_str());
        }
        if let Some(b) = before {
            sql.push(" AND id < ").bind_i64(b);
        }
        sql.push(" ORDER BY id DESC LIMIT ").bind_i64(limit);
        let rows = sql.query().fetch_all(&self.pool).await?;
        rows.iter().map(delivery_from_row).collect()
    }

    pub async fn get_delivery(&self, webhook_id: i64, id: i64) -> Result<Option<Delivery>> {
        let row =
            sqlx::query(&format!("SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2"))
                .bind(webhook_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Sends a delivery again (a failed one, or a delivered one on request):
    /// pending, due now; its attempts keep counting. None if there is no such
    /// delivery or it is pending already.
    pub async fn redeliver(&self, webhook_id: i64, id: i64) -> Result<Option<Delivery>> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(&format!(
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1, delivered_at = NULL \
             WHERE webhook_id = $2 AND id = $3 AND state <> 'pending' RETURNING {DELIVERY_COLS}"
        ))
        .bind(now_ms())
        .bind(webhook_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(delivery_from_row).transpose()
    }
}
