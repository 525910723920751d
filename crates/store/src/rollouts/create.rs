//! Creating a rollout: the rollout row, one scheduled action per planned
//! device, and its event, in one transaction, set-based.

use super::{load_rollout, NewRollout, Rollout};
use crate::events::{self, NewEvent};
use crate::sql::{json_col, json_rows};
use crate::{now_ms, Result, RowExt, Store, StoreError};
use otafleet_core::EventKind;
use uuid::Uuid;

impl Store {
    pub async fn create_rollout(&self, new: NewRollout<'_>) -> Result<Rollout> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let target = serde_json::to_string(&new.target).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let strategy = serde_json::to_string(&new.strategy).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let waves = new.plan.waves.len() as i64;
        let row = sqlx::query(
            "INSERT INTO rollouts (release_id, version, kind, preset, target, strategy, state, current_wave, waves, start_at, \
             promote, rollback_requested, created_by, created_at, updated_at, covers_target) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $8, 0, 0, $9, $10, $10, $11) RETURNING id",
        )
        .bind(new.release.id)
        .bind(new.release.version.as_str())
        .bind(new.kind.as_str())
        .bind(new.strategy.preset.as_str())
        .bind(target)
        .bind(strategy)
        .bind(waves)
        .bind(new.start_at)
        .bind(new.actor)
        .bind(now)
        .bind(new.plan.covers_target as i64)
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
        let ev = NewEvent::new(EventKind::RolloutCreated, new.actor).rollout(id).data(serde_json::json!({
            "version": new.release.version, "kind": new.kind.as_str(), "preset": new.strategy.preset.as_str(),
            "target": new.target, "waves": sizes,
        }));
        events::insert(&mut tx, now, &ev).await?;
        let r = load_rollout(&mut tx, id).await?;
        tx.touch(id);
        tx.commit().await?;
        Ok(r)
    }
}
