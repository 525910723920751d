//! Telemetry windows (migration 0013): one row per device, metric, version
//! and window of a resolution, holding the window's mergeable
//! [`Aggregate`] (count, sum, min, max, last and a quantile sketch) as JSON.
//! The server aggregates samples in memory and merges what it holds into
//! these rows every few seconds ([`Store::merge_telemetry`]); a group's
//! numbers (a version, a wave, a device type) are computed by merging its
//! devices' windows ([`Store::telemetry_windows`]), never from raw samples.
//!
//! Merging is additive, so every replica flushes what it received: on
//! PostgreSQL the flushers of one table queue behind each other (a table
//! lock for the flush's transaction), so two replicas merging into the same
//! row never lose one's samples.

use crate::devices::selector_from;
use crate::rollouts::Target;
use crate::sql::{json_col, json_rows, Sql};
use crate::{Backend, Result, RowExt, Store, StoreError};
use otafleet_core::telemetry::Aggregate;
use otafleet_core::Selector;
use std::collections::HashMap;
use uuid::Uuid;

/// One device's aggregate of one metric over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryWindow {
    pub device_id: Uuid,
    pub metric: String,
    /// The version the device ran when it measured (`""`: unknown).
    pub version: String,
    /// The resolution, ms.
    pub width_ms: i64,
    /// Start of the window, Unix ms.
    pub bucket: i64,
    pub agg: Aggregate,
}

/// A window read back with what grouping needs of its device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceWindow {
    pub window: TelemetryWindow,
    /// The device's labels now (the JSON on its row).
    pub labels: otafleet_core::selector::Labels,
}

/// The windows an analysis reads: one metric, one resolution, starting in `[from, to)`.
#[derive(Debug, Clone, Copy)]
pub struct WindowRange<'a> {
    pub metric: &'a str,
    pub width_ms: i64,
    pub from: i64,
    pub to: i64,
}

impl WindowRange<'_> {
    fn push_to(&self, sql: &mut Sql) {
        sql.push(" AND t.metric = ").bind_str(self.metric);
        sql.push(" AND t.width_ms = ").bind_i64(self.width_ms);
        sql.push(" AND t.bucket >= ").bind_i64(self.from);
        sql.push(" AND t.bucket < ").bind_i64(self.to);
    }
}

/// Which windows make a device a candidate of [`Store::alert_candidates`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateField {
    /// One whose `max` is at least the threshold (`max > / >= threshold`).
    MaxAbove,
    /// One whose `min` is at most the threshold (`min < / <= threshold`).
    MinBelow,
}

fn agg_of(r: &sqlx::any::AnyRow, sketches: bool) -> Result<Aggregate> {
    if sketches {
        r.json("agg")
    } else {
        Aggregate::from_json_without_sketch(&r.string("agg")?)
            .map_err(|e| StoreError::Corrupt(format!("column agg: {e}")))
    }
}

fn windows_of(rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<(Uuid, Aggregate)>> {
    rows.iter().map(|r| Ok((r.parsed("device_id")?, r.json("agg")?))).collect()
}

type Key = (String, i64, i64, String, String);

fn key(w: &TelemetryWindow) -> Key {
    (w.metric.clone(), w.width_ms, w.bucket, w.device_id.to_string(), w.version.clone())
}

impl Store {
    /// Merges aggregates into their stored windows (adding a window that is
    /// not there yet), in one transaction. Returns the rows written.
    pub async fn merge_telemetry(&self, windows: &[TelemetryWindow]) -> Result<usize> {
        if windows.is_empty() {
            return Ok(0);
        }
        let b = self.backend;
        // One aggregate per key: the caller may hand several for one window.
        let mut merged: HashMap<Key, Aggregate> = HashMap::with_capacity(windows.len());
        for w in windows {
            match merged.get_mut(&key(w)) {
                Some(a) => a.merge(&w.agg).map_err(|e| StoreError::Invalid(e.to_string()))?,
                None => {
                    merged.insert(key(w), w.agg.clone());
                }
            }
        }
        let mut keys: Vec<Key> = merged.keys().cloned().collect();
        keys.sort_unstable();
        let mut tx = self.write_tx().await?;
        if b == Backend::Postgres {
            sqlx::query("LOCK TABLE telemetry_windows IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
        }
        let mut written = 0;
        for chunk in keys.chunks(2_000) {
            let doc = serde_json::Value::Array(
                chunk.iter().map(|(m, w, bk, d, v)| serde_json::json!([m, w, bk, d, v])).collect(),
            )
            .to_string();
            let stored = sqlx::query(&format!(
                "SELECT t.metric, t.width_ms, t.bucket, t.device_id, t.version, t.agg FROM telemetry_windows t \
                 JOIN (SELECT {} AS metric, {} AS width_ms, {} AS bucket, {} AS device_id, {} AS version FROM {}) k \
                 ON t.metric = k.metric AND t.width_ms = k.width_ms AND t.bucket = k.bucket \
                 AND t.device_id = k.device_id AND t.version = k.version",
                json_col(b, 0, None),
                json_col(b, 1, Some("bigint")),
                json_col(b, 2, Some("bigint")),
                json_col(b, 3, None),
                json_col(b, 4, None),
                json_rows(b, 1),
            ))
            .bind(doc)
            .fetch_all(&mut *tx)
            .await?;
            let mut old: HashMap<Key, Aggregate> = HashMap::with_capacity(stored.len());
            for r in &stored {
                let k = (
                    r.string("metric")?,
                    r.i64("width_ms")?,
                    r.i64("bucket")?,
                    r.string("device_id")?,
                    r.string("version")?,
                );
                old.insert(k, r.json("agg")?);
            }
            let mut rows = Vec::with_capacity(chunk.len());
            for k in chunk {
                let agg = match old.remove(k) {
                    Some(mut stored) => {
                        stored.merge(&merged[k]).map_err(|e| StoreError::Invalid(e.to_string()))?;
                        stored
                    }
                    None => merged[k].clone(),
                };
                let json = serde_json::to_string(&agg).map_err(|e| StoreError::Invalid(e.to_string()))?;
                // (A non-finite extreme is written as null: its window is never a candidate by it.)
                rows.push(serde_json::json!([k.0, k.1, k.2, k.3, k.4, json, agg.max, agg.min, agg.last_ts]));
            }
            written += rows.len();
            // (`WHERE true`: SQLite's parser needs it between an INSERT's SELECT and its ON CONFLICT.)
            sqlx::query(&format!(
                "INSERT INTO telemetry_windows (metric, width_ms, bucket, device_id, version, agg, max_value, \
                 min_value, last_ts) SELECT {}, {}, {}, {}, {}, {}, {}, {}, {} FROM {} WHERE true \
                 ON CONFLICT (metric, width_ms, bucket, device_id, version) DO UPDATE SET agg = excluded.agg, \
                 max_value = excluded.max_value, min_value = excluded.min_value, last_ts = excluded.last_ts",
                json_col(b, 0, None),
                json_col(b, 1, Some("bigint")),
                json_col(b, 2, Some("bigint")),
                json_col(b, 3, None),
                json_col(b, 4, None),
                json_col(b, 5, None),
                json_col(b, 6, Some("double precision")),
                json_col(b, 7, Some("double precision")),
                json_col(b, 8, Some("bigint")),
                json_rows(b, 1),
            ))
            .bind(serde_json::Value::Array(rows).to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(written)
    }

    /// The windows of `metric` at resolution `width_ms` starting in
    /// `[from, to)`, of the devices a selector matches, with their labels.
    /// At most `limit` rows (the caller refuses a query that would read more).
    pub async fn telemetry_windows(
        &self,
        metric: &str,
        width_ms: i64,
        from: i64,
        to: i64,
        selector: &Selector,
        limit: i64,
    ) -> Result<Vec<DeviceWindow>> {
        // The selector picks the devices (`d`), the windows join on them.
        let mut sql = Sql::new(
            "SELECT t.device_id, t.version, t.bucket, t.agg, x.labels FROM telemetry_windows t JOIN (SELECT d.id, d.labels",
        );
        selector_from(&mut sql, selector);
        sql.push(") x ON x.id = t.device_id WHERE t.metric = ").bind_str(metric);
        sql.push(" AND t.width_ms = ").bind_i64(width_ms);
        sql.push(" AND t.bucket >= ").bind_i64(from);
        sql.push(" AND t.bucket < ").bind_i64(to);
        sql.push(" ORDER BY t.bucket, t.device_id LIMIT ").bind_i64(limit);
        let rows = sql.query().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceWindow {
                    window: TelemetryWindow {
                        device_id: r.parsed("device_id")?,
                        metric: metric.to_string(),
                        version: r.string("version")?,
                        width_ms,
                        bucket: r.i64("bucket")?,
                        agg: r.json("agg")?,
                    },
                    labels: r.json("labels")?,
                })
            })
            .collect()
    }

    /// The windows of `metric` at resolution `width_ms` starting in
    /// `[from, to)` that the devices of wave `wave` of rollout `rollout`
    /// measured while running `version` (so since they updated to it): what
    /// an analysis check of that wave aggregates. At most `limit` rows, the
    /// first devices in id order.
    pub async fn wave_windows(
        &self,
        rollout: i64,
        wave: i64,
        version: &str,
        window: &WindowRange<'_>,
        limit: i64,
    ) -> Result<Vec<(Uuid, Aggregate)>> {
        let mut sql = Sql::new(
            "SELECT t.device_id, t.agg FROM actions a JOIN telemetry_windows t ON t.device_id = a.device_id \
             WHERE a.kind = 'install' AND a.rollout_id = ",
        );
        sql.bind_i64(rollout).push(" AND a.wave = ").bind_i64(wave);
        sql.push(" AND t.version = ").bind_str(version);
        window.push_to(&mut sql);
        sql.push(" ORDER BY t.device_id LIMIT ").bind_i64(limit);
        windows_of(sql.query().fetch_all(&self.pool).await?)
    }

    /// The windows, as [`Store::wave_windows`], of the devices of rollout
    /// `rollout`'s target (the devices its selector matches, or its list of
    /// ids) measured on any version but `version`, leaving out the devices
    /// of waves up to `wave` (updated, or tried): an analysis check's
    /// baseline, the devices still on the previous version.
    pub async fn baseline_windows(
        &self,
        rollout: i64,
        target: &Target,
        wave: i64,
        version: &str,
        window: &WindowRange<'_>,
        limit: i64,
    ) -> Result<Vec<(Uuid, Aggregate)>> {
        let mut sql = Sql::new("SELECT t.device_id, t.agg FROM telemetry_windows t");
        match target {
            Target::Selector(raw) => {
                let selector =
                    Selector::parse(raw).map_err(|e| StoreError::Invalid(format!("stored selector: {e}")))?;
                sql.push(" JOIN (SELECT d.id");
                selector_from(&mut sql, &selector);
                sql.push(") x ON x.id = t.device_id WHERE t.version <> ").bind_str(version);
            }
            Target::Devices(ids) => {
                let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
                sql.push(" WHERE t.device_id IN ").bind_list(&ids);
                sql.push(" AND t.version <> ").bind_str(version);
            }
        }
        sql.push(" AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.device_id = t.device_id AND a.kind = 'install'");
        sql.push(" AND a.rollout_id = ").bind_i64(rollout).push(" AND a.wave <= ").bind_i64(wave).push(")");
        window.push_to(&mut sql);
        sql.push(" ORDER BY t.device_id LIMIT ").bind_i64(limit);
        windows_of(sql.query().fetch_all(&self.pool).await?)
    }

    /// The windows in `window` of the devices a selector matches: (device,
    /// window start, aggregate), for the alert evaluator; without their
    /// sketches unless `sketches` (only percentiles need them, and reading
    /// them is most of the cost). At most `limit` rows, the first devices in
    /// id order.
    pub async fn selector_windows(
        &self,
        selector: &Selector,
        window: &WindowRange<'_>,
        sketches: bool,
        limit: i64,
    ) -> Result<Vec<(Uuid, i64, Aggregate)>> {
        let mut sql = Sql::new("SELECT t.device_id, t.bucket, t.agg FROM telemetry_windows t JOIN (SELECT d.id");
        selector_from(&mut sql, selector);
        sql.push(") x ON x.id = t.device_id WHERE 1=1");
        window.push_to(&mut sql);
        sql.push(" ORDER BY t.device_id LIMIT ").bind_i64(limit);
        let rows = sql.query().fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.parsed("device_id")?, r.i64("bucket")?, agg_of(r, sketches)?))).collect()
    }

    /// The devices a selector matches that an alert rule must look at
    /// closely: those with a window starting from `window_from` whose `max`
    /// is at least (`CandidateField::MaxAbove`) or whose `min` is at most
    /// (`MinBelow`) the threshold, with a margin looser than the exact test,
    /// and, with `silent_before`, those whose latest sample in `span` is
    /// older. The database does the reading, so a cycle over 100,000 devices
    /// brings back only the few that are hot or silent; the evaluator then
    /// reads their windows ([`Store::device_windows`]) and decides exactly.
    #[allow(clippy::too_many_arguments)]
    pub async fn alert_candidates(
        &self,
        selector: &Selector,
        span: &WindowRange<'_>,
        window_from: i64,
        field: CandidateField,
        threshold: f64,
        silent_before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Uuid>> {
        let margin = threshold.abs() * 1e-9 + 1e-9;
        // Row by row: a device's largest max is at least the threshold when
        // one of its windows' is (and so for the smallest min).
        let mut sql = Sql::new("SELECT DISTINCT t.device_id FROM telemetry_windows t WHERE 1=1");
        span.push_to(&mut sql);
        sql.push(" AND t.bucket >= ").bind_i64(window_from);
        match field {
            // The extremes migration 0017 keeps beside the aggregate.
            CandidateField::MaxAbove => sql.push(" AND t.max_value >= ").bind_f64(threshold - margin),
            CandidateField::MinBelow => sql.push(" AND t.min_value <= ").bind_f64(threshold + margin),
        };
        sql.push(" LIMIT ").bind_i64(limit);
        let mut ids: Vec<Uuid> =
            sql.query().fetch_all(&self.pool).await?.iter().map(|r| r.parsed("device_id")).collect::<Result<_>>()?;
        if let Some(before) = silent_before {
            let mut sql = Sql::new("SELECT t.device_id FROM telemetry_windows t WHERE 1=1");
            span.push_to(&mut sql);
            sql.push(" GROUP BY t.device_id HAVING MAX(t.last_ts) < ").bind_i64(before);
            sql.push(" LIMIT ").bind_i64(limit);
            for r in sql.query().fetch_all(&self.pool).await? {
                ids.push(r.parsed("device_id")?);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        // Of those, the selector's.
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let list: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            let mut sql = Sql::new("SELECT d.id");
            selector_from(&mut sql, selector);
            sql.push(" AND d.id IN ").bind_list(&list);
            for r in sql.query().fetch_all(&self.pool).await? {
                out.push(r.parsed("id")?);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The windows in `window` of these devices, as [`Store::selector_windows`]:
    /// one primary-key lookup per device and window start (the span is a
    /// few windows), so the cost follows the devices asked for, not the
    /// fleet's windows in the span.
    pub async fn device_windows(
        &self,
        devices: &[Uuid],
        window: &WindowRange<'_>,
        sketches: bool,
    ) -> Result<Vec<(Uuid, i64, Aggregate)>> {
        let b = self.backend;
        let width = window.width_ms.max(1);
        let first = otafleet_core::telemetry::bucket_start(window.from, width);
        let buckets: Vec<i64> = (0..).map(|k| first + k * width).take_while(|t| *t < window.to).take(10_000).collect();
        let mut out = Vec::new();
        for chunk in devices.chunks((2_000 / buckets.len().max(1)).max(1)) {
            let keys: Vec<serde_json::Value> = chunk
                .iter()
                .flat_map(|d| buckets.iter().map(move |t| serde_json::json!([d.to_string(), t])))
                .filter(|k| k[1].as_i64().is_some_and(|t| t >= window.from))
                .collect();
            // CROSS JOIN keeps SQLite to this order: each key, then its row
            // by primary key (it scanned the windows for every key otherwise).
            let sql = format!(
                "SELECT t.device_id, t.bucket, t.agg FROM {} CROSS JOIN telemetry_windows t WHERE t.metric = $2 \
                 AND t.width_ms = $3 AND t.bucket = {} AND t.device_id = {}",
                json_rows(b, 1),
                json_col(b, 1, Some("bigint")),
                json_col(b, 0, None),
            );
            let rows = sqlx::query(&sql)
                .bind(serde_json::Value::Array(keys).to_string())
                .bind(window.metric)
                .bind(window.width_ms)
                .fetch_all(&self.pool)
                .await?;
            for r in &rows {
                out.push((r.parsed("device_id")?, r.i64("bucket")?, agg_of(r, sketches)?));
            }
        }
        Ok(out)
    }

    /// Deletes the windows of resolution `width_ms` that start before
    /// `before` (retention). Returns the rows deleted.
    pub async fn prune_telemetry(&self, width_ms: i64, before: i64) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM telemetry_windows WHERE width_ms = $1 AND bucket < $2")
            .bind(width_ms)
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}
