//! A device's check-in on the transactional path (the server answers most
//! check-ins from memory): last-seen, health, the version it really runs, and
//! the action it should perform.

use super::{action_from_row, set_action_state, Checkin, ACTION_COLS, ACTIVE, IN_FLIGHT};
use crate::devices::{self, DEVICE_COLS};
use crate::events::{self, NewEvent};
use crate::notify::{self, Change};
use crate::{Result, Store, StoreError};
use otafleet_core::{ActionState, DeviceHealth, EventKind};
use uuid::Uuid;

impl Store {
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
            let ev = NewEvent::new(EventKind::DeviceVersionChanged, "device")
                .device(device_id)
                .data(serde_json::json!({"from": device.current_version, "to": v}));
            events::insert(&mut tx, now, &ev).await?;
            device.previous_version = device.current_version.take();
            device.current_version = v;
            // The device's word is the truth: an install it reported done but no
            // longer runs has failed (it rolled back on its own).
            let drifted = sqlx::query(&format!(
                "SELECT {ACTION_COLS} FROM actions WHERE device_id = $1 AND kind = 'install' AND state = 'succeeded' \
                 AND to_version <> $2 AND rollout_id IN (SELECT id FROM rollouts WHERE state IN {ACTIVE})"
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
        if version_changed {
            let change = Change::Actions { devices: vec![device_id] };
            notify::send(&mut tx, self.backend, &self.origin, &change).await?;
        }
        tx.commit().await?;
        Ok(Checkin { device, action })
    }
}
