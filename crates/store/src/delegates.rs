//! Delegates (migration 0020): a cluster agent or a site gateway that speaks
//! the device protocol for many devices. Its token (only the SHA-256 is
//! stored) is scoped to the devices it registered (`devices.delegate_id`);
//! the server lets it check in and report for those, in batches, and nothing
//! else. A delegate's inventory is the complete list of what it finds: a
//! device it no longer lists is marked gone (`devices.gone_at`, a
//! `device.gone` event), never deleted, and is no rollout's target until it
//! is listed again (`device.returned`).

use crate::devices::{insert_rows, write_labels, NewDevice};
use crate::events::{self, NewEvent};
use crate::sql::{json_rows, json_scalar};
use crate::tokens::hash_token;
use crate::{conflict_or, Result, RowExt, Store, StoreError};
use otafleet_core::selector::Labels;
use otafleet_core::{DelegateKind, EventKind};
use serde::Serialize;
use sqlx::any::AnyRow;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// A stored delegate (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delegate {
    pub id: Uuid,
    pub name: String,
    pub kind: DelegateKind,
    pub created_by: String,
    pub created_at: i64,
    pub last_seen: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// What a delegate finds of one of its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryDevice {
    pub id: Uuid,
    pub name: String,
    pub labels: Labels,
    /// Recorded for a device seen for the first time; later versions come
    /// through check-ins, which detect an install undone behind our back.
    pub current_version: Option<String>,
}

/// What an inventory changed in the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InventoryOutcome {
    pub registered: u64,
    pub updated: u64,
    pub returned: u64,
    pub unchanged: u64,
    /// The delegate's devices it no longer lists, marked gone now.
    pub gone: Vec<Uuid>,
}

const COLS: &str = "id, name, kind, created_by, created_at, last_seen, revoked_at";

fn from_row(r: &AnyRow) -> Result<Delegate> {
    Ok(Delegate {
        id: r.parsed("id")?,
        name: r.string("name")?,
        kind: r.parsed("kind")?,
        created_by: r.string("created_by")?,
        created_at: r.i64("created_at")?,
        last_seen: r.opt_i64("last_seen")?,
        revoked_at: r.opt_i64("revoked_at")?,
    })
}

impl Store {
    /// Stores a delegate with the hash of `secret`. A taken name is a conflict.
    pub async fn create_delegate(
        &self,
        name: &str,
        kind: DelegateKind,
        secret: &str,
        actor: &str,
        now: i64,
    ) -> Result<Delegate> {
        let mut tx = self.write_tx().await?;
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO delegates (id, name, kind, token_hash, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(name)
        .bind(kind.as_str())
        .bind(hash_token(secret))
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_or(e, || format!("a delegate named '{name}' already exists")))?;
        let data = serde_json::json!({"delegate_id": id, "name": name, "kind": kind});
        events::insert(&mut tx, now, &NewEvent::new(EventKind::DelegateCreated, actor).data(data)).await?;
        tx.commit().await?;
        Ok(Delegate {
            id,
            name: name.to_string(),
            kind,
            created_by: actor.to_string(),
            created_at: now,
            last_seen: None,
            revoked_at: None,
        })
    }

    pub async fn list_delegates(&self) -> Result<Vec<Delegate>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM delegates ORDER BY name")).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn get_delegate(&self, id: Uuid) -> Result<Option<Delegate>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM delegates WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The delegate owning `secret`, revoked or not: the caller tells a
    /// revoked delegate from an unknown token.
    pub async fn find_delegate(&self, secret: &str) -> Result<Option<Delegate>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM delegates WHERE token_hash = $1"))
            .bind(hash_token(secret))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Revokes a delegate's token (the row and its devices stay). None if unknown.
    pub async fn revoke_delegate(&self, id: Uuid, actor: &str, now: i64) -> Result<Option<Delegate>> {
        let mut tx = self.write_tx().await?;
        let Some(row) = sqlx::query(&format!("SELECT {COLS} FROM delegates WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let mut d = from_row(&row)?;
        if d.revoked_at.is_none() {
            sqlx::query("UPDATE delegates SET revoked_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            let data = serde_json::json!({"delegate_id": id, "name": d.name});
            events::insert(&mut tx, now, &NewEvent::new(EventKind::DelegateRevoked, actor).data(data)).await?;
            d.revoked_at = Some(now);
        }
        tx.commit().await?;
        Ok(Some(d))
    }

    /// How many devices each delegate speaks for (gone ones included).
    pub async fn delegate_device_counts(&self) -> Result<HashMap<Uuid, u64>> {
        let rows = sqlx::query(
            "SELECT delegate_id, COUNT(*) AS n FROM devices WHERE delegate_id IS NOT NULL GROUP BY delegate_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.parsed("delegate_id")?, r.i64("n")?.max(0) as u64))).collect()
    }

    /// The ids of a delegate's devices (gone ones included): its scope.
    pub async fn delegate_device_ids(&self, delegate: Uuid) -> Result<HashSet<Uuid>> {
        let rows = sqlx::query("SELECT id FROM devices WHERE delegate_id = $1")
            .bind(delegate.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.parsed("id")).collect()
    }

    /// Records a delegate's complete inventory in one transaction: new
    /// devices are registered as its own, changed names and labels written,
    /// devices listed again un-gone, and its devices not listed marked gone.
    /// A listed id that belongs to another delegate, or to no delegate, is a
    /// conflict and nothing is written.
    pub async fn sync_inventory(
        &self,
        delegate: &Delegate,
        devices: &[InventoryDevice],
        now: i64,
    ) -> Result<InventoryOutcome> {
        let b = self.backend;
        let actor = format!("delegate:{}", delegate.name);
        let own = delegate.id.to_string();
        let mut tx = self.write_tx().await?;
        let ids: Vec<String> = devices.iter().map(|d| d.id.to_string()).collect();
        let list = serde_json::to_string(&ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let rows = sqlx::query(&format!(
            "SELECT d.id, d.name, d.labels, d.delegate_id, d.gone_at FROM devices d \
             WHERE d.id IN (SELECT {} FROM {})",
            json_scalar(b),
            json_rows(b, 1)
        ))
        .bind(list.clone())
        .fetch_all(&mut *tx)
        .await?;
        struct Known {
            name: String,
            labels: Labels,
            gone: bool,
        }
        let mut known: HashMap<String, Known> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let id = r.string("id")?;
            if r.opt_string("delegate_id")?.as_deref() != Some(own.as_str()) {
                return Err(StoreError::Conflict(format!(
                    "device {id} exists and is not one of delegate '{}''s devices",
                    delegate.name
                )));
            }
            known.insert(
                id,
                Known { name: r.string("name")?, labels: r.json("labels")?, gone: r.opt_i64("gone_at")?.is_some() },
            );
        }
        let mut out = InventoryOutcome::default();
        let mut fresh = Vec::new();
        for (d, id) in devices.iter().zip(&ids) {
            let Some(k) = known.get(id) else {
                fresh.push(NewDevice {
                    id: d.id,
                    name: d.name.clone(),
                    labels: d.labels.clone(),
                    current_version: d.current_version.clone(),
                    token: None,
                });
                continue;
            };
            let changed = k.name != d.name || k.labels != d.labels;
            if changed {
                let json = serde_json::to_string(&d.labels).map_err(|e| StoreError::Invalid(e.to_string()))?;
                sqlx::query("UPDATE devices SET name = $1, labels = $2, updated_at = $3 WHERE id = $4")
                    .bind(d.name.as_str())
                    .bind(json)
                    .bind(now)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                write_labels(&mut tx, id, &d.labels).await?;
                let ev = NewEvent::new(EventKind::DeviceLabelsUpdated, &actor)
                    .device(d.id)
                    .data(serde_json::json!({ "labels": d.labels }));
                events::insert(&mut tx, now, &ev).await?;
                out.updated += 1;
            }
            if k.gone {
                sqlx::query("UPDATE devices SET gone_at = NULL, updated_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                events::insert(&mut tx, now, &NewEvent::new(EventKind::DeviceReturned, &actor).device(d.id)).await?;
                out.returned += 1;
            }
            if !changed && !k.gone {
                out.unchanged += 1;
            }
        }
        for chunk in fresh.chunks(5_000) {
            insert_rows(&mut tx, b, chunk, Some(&own), now).await?;
        }
        out.registered = fresh.len() as u64;
        if !fresh.is_empty() {
            let data = serde_json::json!({"count": fresh.len(), "delegate_id": delegate.id});
            events::insert(&mut tx, now, &NewEvent::new(EventKind::DeviceRegistered, &actor).data(data)).await?;
        }
        let gone = sqlx::query(&format!(
            "UPDATE devices SET gone_at = $2, updated_at = $2 WHERE delegate_id = $3 AND gone_at IS NULL \
             AND id NOT IN (SELECT {} FROM {}) RETURNING id",
            json_scalar(b),
            json_rows(b, 1)
        ))
        .bind(list)
        .bind(now)
        .bind(own.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for r in &gone {
            let id: Uuid = r.parsed("id")?;
            events::insert(&mut tx, now, &NewEvent::new(EventKind::DeviceGone, &actor).device(id)).await?;
            out.gone.push(id);
        }
        out.gone.sort_unstable();
        sqlx::query("UPDATE delegates SET last_seen = $1 WHERE id = $2")
            .bind(now)
            .bind(own.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(out)
    }
}
