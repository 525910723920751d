//! The device registry. Labels live twice: as JSON on the device row (what is
//! shown) and as `device_labels` rows (what selectors query), written together.

use crate::events::{self, NewEvent};
use crate::notify::{self, Change};
use crate::sql::{json_col, json_rows, json_scalar, Sql};
use crate::tokens::hash_token;
use crate::{conflict_or, now_ms, Result, RowExt, Store, StoreError};
use otafleet_core::selector::{Labels, Requirement};
use otafleet_core::EventKind;
use otafleet_core::{DeviceHealth, Selector};
use serde::Serialize;
use sqlx::any::AnyRow;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub id: Uuid,
    pub name: String,
    pub labels: Labels,
    pub current_version: Option<String>,
    pub previous_version: Option<String>,
    pub desired_version: Option<String>,
    pub health: DeviceHealth,
    pub last_seen: Option<i64>,
    /// The delegate that registered the device and speaks for it, if any.
    pub delegate_id: Option<Uuid>,
    /// When its delegate last found it missing (it is no rollout's target then).
    pub gone_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Default)]
pub struct NewDevice {
    pub id: Uuid,
    pub name: String,
    pub labels: Labels,
    pub current_version: Option<String>,
    /// The device's secret credential; only its hash is stored.
    pub token: Option<String>,
}

/// What planning a rollout needs to know about a targeted device.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetDevice {
    pub id: Uuid,
    pub current_version: Option<String>,
    pub device_type: Option<String>,
    pub health: DeviceHealth,
    pub last_seen: Option<i64>,
}

/// What planning reads of a device; its type from the labels JSON on its row
/// (written with its `device_labels`), which costs less than a join per device.
fn target_cols(backend: crate::Backend) -> &'static str {
    match backend {
        crate::Backend::Sqlite => {
            "SELECT d.id, d.current_version, d.health, d.last_seen, json_extract(d.labels, '$.device_type') AS device_type"
        }
        crate::Backend::Postgres => {
            "SELECT d.id, d.current_version, d.health, d.last_seen, CAST(d.labels AS json) ->> 'device_type' AS device_type"
        }
    }
}

fn target_from_row(r: &AnyRow) -> Result<TargetDevice> {
    Ok(TargetDevice {
        id: r.parsed("id")?,
        current_version: r.opt_string("current_version")?,
        device_type: r.opt_string("device_type")?,
        health: r.parsed("health")?,
        last_seen: r.opt_i64("last_seen")?,
    })
}

#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    pub selector: Selector,
    /// Keyset pagination: devices with an id greater than this (id order only).
    pub after: Option<Uuid>,
    pub limit: i64,
    /// Free text: a device whose name or id contains it (any case).
    pub search: Option<String>,
    /// The order (ties broken by id).
    pub sort: DeviceSort,
    pub descending: bool,
    /// Rows skipped (pages of a sorted list).
    pub offset: i64,
}

/// The orders a device list can be read in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSort {
    #[default]
    Id,
    Name,
    LastSeen,
    CurrentVersion,
    Health,
    CreatedAt,
}

impl DeviceSort {
    /// Its name in `?sort=` (a leading `-` is descending).
    pub const NAMES: &'static [(&'static str, DeviceSort)] = &[
        ("id", DeviceSort::Id),
        ("name", DeviceSort::Name),
        ("last_seen", DeviceSort::LastSeen),
        ("current_version", DeviceSort::CurrentVersion),
        ("health", DeviceSort::Health),
        ("created_at", DeviceSort::CreatedAt),
    ];

    fn column(self) -> &'static str {
        match self {
            DeviceSort::Id => "d.id",
            DeviceSort::Name => "d.name",
            DeviceSort::LastSeen => "COALESCE(d.last_seen, -1)",
            DeviceSort::CurrentVersion => "COALESCE(d.current_version, '')",
            DeviceSort::Health => "d.health",
            DeviceSort::CreatedAt => "d.created_at",
        }
    }
}

/// Counts for the fleet overview.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub total: i64,
    /// Seen since the `online_since` asked for.
    pub online: i64,
    pub by_version: Vec<(Option<String>, i64)>,
    pub by_health: Vec<(String, i64)>,
    /// By the `device_type` label (None: devices without one).
    pub by_type: Vec<(Option<String>, i64)>,
}

/// Devices that moved between two versions in a span of time (a succeeded
/// install or rollback), for the versions-over-time chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMoves {
    /// Start of the span, Unix ms.
    pub bucket: i64,
    pub from: Option<String>,
    pub to: String,
    pub devices: i64,
}

pub(crate) const DEVICE_COLS: &str =
    "d.id, d.name, d.labels, d.current_version, d.previous_version, d.desired_version, d.health, d.last_seen, d.delegate_id, d.gone_at, d.created_at, d.updated_at";

pub(crate) fn from_row(r: &AnyRow) -> Result<Device> {
    Ok(Device {
        id: r.parsed("id")?,
        name: r.string("name")?,
        labels: r.json("labels")?,
        current_version: r.opt_string("current_version")?,
        previous_version: r.opt_string("previous_version")?,
        desired_version: r.opt_string("desired_version")?,
        health: r.parsed("health")?,
        last_seen: r.opt_i64("last_seen")?,
        delegate_id: r
            .opt_string("delegate_id")?
            .map(|s| s.parse())
            .transpose()
            .map_err(|_| StoreError::Corrupt("device delegate_id".into()))?,
        gone_at: r.opt_i64("gone_at")?,
        created_at: r.i64("created_at")?,
        updated_at: r.i64("updated_at")?,
    })
}

/// The `FROM … WHERE` of a query over the devices a selector matches, as
/// devices aliased `d`, ready for more `AND …` clauses. Returns the column to
/// order and page by id.
///
/// With an equality requirement the query is driven by that label's index
/// (`device_labels (key, value, device_id)`), whose entries for one key and
/// value are already in device id order: a page walks only the label's devices
/// from the keyset cursor and stops at the limit, and a rollout's targets are
/// read without touching the devices the selector excludes. The other
/// requirements are probes on `device_labels`' primary key. Without one, the
/// devices are scanned in id order.
pub(crate) fn selector_from(sql: &mut Sql, selector: &Selector) -> &'static str {
    let driver = driving(selector);
    let id_col = match driver.map(|i| &selector.requirements[i]) {
        Some(Requirement::Eq { key, value }) => {
            // CROSS JOIN keeps SQLite's planner to this order (PostgreSQL plans it on its statistics).
            sql.push(" FROM device_labels s CROSS JOIN devices d");
            sql.push(" WHERE d.id = s.device_id AND s.key = ").bind_str(key).push(" AND s.value = ").bind_str(value);
            "s.device_id"
        }
        _ => {
            sql.push(" FROM devices d");
            sql.push(" WHERE 1=1");
            "d.id"
        }
    };
    label_conditions(sql, selector, driver, id_col);
    id_col
}

/// The `FROM … WHERE` of the ids a selector with an equality requirement
/// matches, over `device_labels` alone (aliased `s`), ready for more `AND …`
/// clauses on `s.device_id`; `None` for a selector without one (which needs
/// the devices scanned, [`selector_from`]). A page of devices reads its ids so
/// and then only those devices: with the tables' statistics PostgreSQL joined
/// the label's entries to the devices by merging along the whole devices
/// index (17 ms a page at a million devices, against 4 ms so).
pub(crate) fn selector_ids_from(sql: &mut Sql, selector: &Selector) -> Option<&'static str> {
    let driver = driving(selector)?;
    let Requirement::Eq { key, value } = &selector.requirements[driver] else { return None };
    sql.push(" FROM device_labels s WHERE s.key = ").bind_str(key).push(" AND s.value = ").bind_str(value);
    label_conditions(sql, selector, Some(driver), "s.device_id");
    Some("s.device_id")
}

/// The requirement whose label index drives the query: the first equality.
fn driving(selector: &Selector) -> Option<usize> {
    selector.requirements.iter().position(|r| matches!(r, Requirement::Eq { .. }))
}

/// Every requirement but the driving one, as probes of `device_labels`' primary key for `id_col`.
fn label_conditions(sql: &mut Sql, selector: &Selector, driver: Option<usize>, id_col: &str) {
    let exists = format!(" AND EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = {id_col} AND l.key = ");
    let not_exists =
        format!(" AND NOT EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = {id_col} AND l.key = ");
    for (i, r) in selector.requirements.iter().enumerate() {
        if Some(i) == driver {
            continue;
        }
        match r {
            Requirement::Eq { key, value } => {
                sql.push(&exists).bind_str(key).push(" AND l.value = ").bind_str(value).push(")");
            }
            Requirement::NotEq { key, value } => {
                sql.push(&not_exists).bind_str(key).push(" AND l.value = ").bind_str(value).push(")");
            }
            Requirement::In { key, values } => {
                sql.push(&exists).bind_str(key).push(" AND l.value IN ").bind_list(values).push(")");
            }
            Requirement::NotIn { key, values } => {
                sql.push(&not_exists).bind_str(key).push(" AND l.value IN ").bind_list(values).push(")");
            }
            Requirement::Exists { key } => {
                sql.push(&exists).bind_str(key).push(")");
            }
            Requirement::NotExists { key } => {
                sql.push(&not_exists).bind_str(key).push(")");
            }
        }
    }
}

pub(crate) async fn write_labels(conn: &mut sqlx::AnyConnection, id: &str, labels: &Labels) -> Result<()> {
    sqlx::query("DELETE FROM device_labels WHERE device_id = $1").bind(id).execute(&mut *conn).await?;
    for (k, v) in labels {
        sqlx::query("INSERT INTO device_labels (device_id, key, value) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(k.as_str())
            .bind(v.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Inserts one chunk of new devices (and their labels) as two set-based
/// statements; `delegate` is the delegate that speaks for them, if any.
pub(crate) async fn insert_rows(
    conn: &mut sqlx::AnyConnection,
    b: crate::Backend,
    chunk: &[NewDevice],
    delegate: Option<&str>,
    now: i64,
) -> Result<()> {
    let mut rows = Vec::with_capacity(chunk.len());
    let mut labels = Vec::new();
    for d in chunk {
        let id = d.id.to_string();
        let json = serde_json::to_string(&d.labels).map_err(|e| StoreError::Invalid(e.to_string()))?;
        rows.push(serde_json::json!([id, d.name, json, d.current_version, d.token.as_deref().map(hash_token)]));
        labels.extend(d.labels.iter().map(|(k, v)| serde_json::json!([id, k, v])));
    }
    let sql = format!(
        "INSERT INTO devices (id, name, labels, current_version, health, token_hash, delegate_id, created_at, updated_at) \
         SELECT {}, {}, {}, {}, $2, {}, $4, $3, $3 FROM {}",
        json_col(b, 0, None),
        json_col(b, 1, None),
        json_col(b, 2, None),
        json_col(b, 3, None),
        json_col(b, 4, None),
        json_rows(b, 1),
    );
    sqlx::query(&sql)
        .bind(serde_json::Value::Array(rows).to_string())
        .bind(DeviceHealth::Unknown.as_str())
        .bind(now)
        .bind(delegate)
        .execute(&mut *conn)
        .await
        .map_err(|e| conflict_or(e, || "a device in this request already exists".to_string()))?;
    if !labels.is_empty() {
        let sql = format!(
            "INSERT INTO device_labels (device_id, key, value) SELECT {}, {}, {} FROM {}",
            json_col(b, 0, None),
            json_col(b, 1, None),
            json_col(b, 2, None),
            json_rows(b, 1),
        );
        sqlx::query(&sql).bind(serde_json::Value::Array(labels).to_string()).execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// Registers devices in one transaction: all or none. Set-based: the
    /// devices and their labels go in as one JSON array each per chunk, so a
    /// bulk request is a handful of statements, not five per device.
    pub async fn insert_devices(&self, devices: &[NewDevice], actor: &str) -> Result<Vec<Device>> {
        let now = now_ms();
        let b = self.backend;
        let mut tx = self.write_tx().await?;
        let mut out = Vec::with_capacity(devices.len());
        const CHUNK: usize = 5_000;
        for chunk in devices.chunks(CHUNK) {
            let ids: Vec<String> = chunk.iter().map(|d| d.id.to_string()).collect();
            // Name the device that exists (the unique violation would not).
            let list = serde_json::to_string(&ids).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let taken = sqlx::query(&format!(
                "SELECT d.id FROM devices d WHERE d.id IN (SELECT {} FROM {}) ORDER BY d.id LIMIT 1",
                json_scalar(b),
                json_rows(b, 1)
            ))
            .bind(list)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = taken {
                return Err(StoreError::Conflict(format!("device {} already exists", row.string("id")?)));
            }
            insert_rows(&mut tx, b, chunk, None, now).await?;
        }
        for d in devices {
            out.push(Device {
                id: d.id,
                name: d.name.clone(),
                labels: d.labels.clone(),
                current_version: d.current_version.clone(),
                previous_version: None,
                desired_version: None,
                health: DeviceHealth::Unknown,
                last_seen: None,
                delegate_id: None,
                gone_at: None,
                created_at: now,
                updated_at: now,
            });
        }
        let data = if devices.len() == 1 {
            serde_json::json!({"name": devices[0].name, "labels": devices[0].labels})
        } else {
            serde_json::json!({"count": devices.len()})
        };
        let mut ev = NewEvent::new(EventKind::DeviceRegistered, actor).data(data);
        if devices.len() == 1 {
            ev = ev.device(devices[0].id);
        }
        events::insert(&mut tx, now, &ev).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub async fn get_device(&self, id: Uuid) -> Result<Option<Device>> {
        let row = sqlx::query(&format!("SELECT {DEVICE_COLS} FROM devices d WHERE d.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The device owning this secret token.
    pub async fn find_device_by_token(&self, secret: &str) -> Result<Option<Device>> {
        let row = sqlx::query(&format!("SELECT {DEVICE_COLS} FROM devices d WHERE d.token_hash = $1"))
            .bind(hash_token(secret))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Devices matching a selector, ordered by id, one page.
    pub async fn list_devices(&self, q: &DeviceQuery) -> Result<Vec<Device>> {
        let plain = q.sort == DeviceSort::Id && q.search.as_deref().is_none_or(str::is_empty);
        if plain {
            // A page in id order: its ids from the labels, then those devices.
            let dir = if q.descending { " DESC" } else { "" };
            let mut sql = Sql::new(&format!("SELECT {DEVICE_COLS} FROM devices d WHERE d.id IN (SELECT s.device_id"));
            if selector_ids_from(&mut sql, &q.selector).is_some() {
                if let Some(after) = q.after {
                    sql.push(" AND s.device_id > ").bind_str(&after.to_string());
                }
                sql.push(&format!(" ORDER BY s.device_id{dir} LIMIT ")).bind_i64(q.limit.clamp(1, 10_000));
                if q.offset > 0 {
                    sql.push(" OFFSET ").bind_i64(q.offset);
                }
                sql.push(&format!(") ORDER BY d.id{dir}"));
                let rows = sql.query().fetch_all(&self.pool).await?;
                return rows.iter().map(from_row).collect();
            }
        }
        let mut sql = Sql::new(&format!("SELECT {DEVICE_COLS}"));
        let id_col = selector_from(&mut sql, &q.selector);
        if let Some(after) = q.after {
            sql.push(&format!(" AND {id_col} > ")).bind_str(&after.to_string());
        }
        if let Some(text) = q.search.as_deref().filter(|t| !t.is_empty()) {
            let escaped: String = text
                .to_lowercase()
                .chars()
                .flat_map(|c| match c {
                    '%' | '_' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            let pattern = format!("%{escaped}%");
            sql.push(" AND (LOWER(d.name) LIKE ").bind_str(&pattern);
            sql.push(" ESCAPE '\\' OR d.id LIKE ").bind_str(&pattern).push(" ESCAPE '\\')");
        }
        let dir = if q.descending { " DESC" } else { "" };
        match q.sort {
            DeviceSort::Id => sql.push(&format!(" ORDER BY {id_col}{dir}")),
            sort => sql.push(&format!(" ORDER BY {}{dir}, {id_col}{dir}", sort.column())),
        };
        sql.push(" LIMIT ").bind_i64(q.limit.clamp(1, 10_000));
        if q.offset > 0 {
            sql.push(" OFFSET ").bind_i64(q.offset);
        }
        let rows = sql.query().fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// The fleet overview's counts; `online_since`: Unix ms.
    pub async fn fleet_counts(&self, online_since: i64) -> Result<FleetCounts> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN last_seen >= $1 THEN 1 ELSE 0 END), 0) AS online FROM devices",
        )
        .bind(online_since)
        .fetch_one(&self.pool)
        .await?;
        let pairs = |rows: Vec<AnyRow>| -> Result<Vec<(Option<String>, i64)>> {
            rows.iter().map(|r| Ok((r.opt_string("k")?, r.i64("n")?))).collect()
        };
        let by_version = pairs(
            sqlx::query(
                "SELECT current_version AS k, COUNT(*) AS n FROM devices GROUP BY current_version ORDER BY n DESC",
            )
            .fetch_all(&self.pool)
            .await?,
        )?;
        let by_type = pairs(
            sqlx::query(
                "SELECT l.value AS k, COUNT(*) AS n FROM devices d \
                 LEFT JOIN device_labels l ON l.device_id = d.id AND l.key = 'device_type' \
                 GROUP BY l.value ORDER BY n DESC",
            )
            .fetch_all(&self.pool)
            .await?,
        )?;
        Ok(FleetCounts {
            total: row.i64("n")?,
            online: row.i64("online")?,
            by_version,
            by_health: self.device_health_counts().await?,
            by_type,
        })
    }

    /// Succeeded version changes since `since`, counted per `bucket_ms` span.
    pub async fn version_moves(&self, since: i64, bucket_ms: i64) -> Result<Vec<VersionMoves>> {
        let bucket_ms = bucket_ms.max(1);
        let rows = sqlx::query(
            "SELECT (updated_at - $1) / $2 AS b, from_version, to_version, COUNT(*) AS n FROM actions \
             WHERE state = 'succeeded' AND updated_at >= $1 \
             GROUP BY (updated_at - $1) / $2, from_version, to_version ORDER BY b",
        )
        .bind(since)
        .bind(bucket_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(VersionMoves {
                    bucket: since + r.i64("b")? * bucket_ms,
                    from: r.opt_string("from_version")?,
                    to: r.string("to_version")?,
                    devices: r.i64("n")?,
                })
            })
            .collect()
    }

    /// When the oldest succeeded version change since `since` happened.
    pub async fn first_version_move(&self, since: i64) -> Result<Option<i64>> {
        sqlx::query("SELECT MIN(updated_at) AS t FROM actions WHERE state = 'succeeded' AND updated_at >= $1")
            .bind(since)
            .fetch_one(&self.pool)
            .await?
            .opt_i64("t")
    }

    /// Every device a selector matches, with only what planning needs, in id
    /// order. Read in keyset chunks, each chunk one row of JSON aggregated by
    /// the database: 100,000 rows decoded one by one through the driver cost
    /// several times what the database takes to find them.
    pub async fn target_devices(&self, selector: &Selector) -> Result<Vec<TargetDevice>> {
        self.target_devices_in_chunks(selector, 100_000).await
    }

    pub(crate) async fn target_devices_in_chunks(&self, selector: &Selector, chunk: i64) -> Result<Vec<TargetDevice>> {
        let agg = match self.backend {
            crate::Backend::Sqlite => {
                "SELECT json_group_array(json_array(x.id, x.current_version, x.health, x.last_seen, x.device_type)) AS doc"
            }
            crate::Backend::Postgres => {
                "SELECT CAST(COALESCE(json_agg(json_build_array(x.id, x.current_version, x.health, x.last_seen, \
                 x.device_type)), '[]') AS text) AS doc"
            }
        };
        type Row = (String, Option<String>, String, Option<i64>, Option<String>);
        let mut out: Vec<TargetDevice> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut sql = Sql::new(agg);
            sql.push(" FROM (").push(target_cols(self.backend));
            let id_col = selector_from(&mut sql, selector);
            // A device its delegate no longer finds is no target.
            sql.push(" AND d.gone_at IS NULL");
            if let Some(after) = &after {
                sql.push(&format!(" AND {id_col} > ")).bind_str(after);
            }
            // One more than a chunk: a selection that fits needs no second, empty read.
            sql.push(&format!(" ORDER BY {id_col} LIMIT ")).bind_i64(chunk + 1).push(") x");
            let doc = sql.query().fetch_one(&self.pool).await?.string("doc")?;
            let mut rows: Vec<Row> =
                serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(format!("target devices: {e}")))?;
            let more = rows.len() as i64 > chunk;
            if more {
                rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                rows.truncate(chunk as usize);
            }
            after = rows.last().map(|r| r.0.clone());
            for (id, current_version, health, last_seen, device_type) in rows {
                out.push(TargetDevice {
                    id: id.parse().map_err(|_| StoreError::Corrupt(format!("device id {id:?}")))?,
                    current_version,
                    device_type,
                    health: health.parse().map_err(|_| StoreError::Corrupt(format!("device health {health:?}")))?,
                    last_seen,
                });
            }
            if !more {
                break;
            }
        }
        out.sort_unstable_by_key(|d| d.id);
        Ok(out)
    }

    /// The listed devices that exist, for planning (unknown ids are simply absent).
    pub async fn target_devices_by_id(&self, ids: &[Uuid]) -> Result<Vec<TargetDevice>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let ids: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            let mut sql = Sql::new(target_cols(self.backend));
            sql.push(" FROM devices d WHERE d.gone_at IS NULL AND d.id IN ").bind_list(&ids);
            for row in sql.query().fetch_all(&self.pool).await? {
                out.push(target_from_row(&row)?);
            }
        }
        Ok(out)
    }

    pub async fn count_devices(&self, selector: &Selector) -> Result<i64> {
        let mut sql = Sql::new("SELECT COUNT(*) AS n");
        selector_from(&mut sql, selector);
        sql.query().fetch_one(&self.pool).await?.i64("n")
    }

    /// Device counts by health, for metrics.
    pub async fn device_health_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT health, COUNT(*) AS n FROM devices GROUP BY health").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.string("health")?, r.i64("n")?))).collect()
    }

    /// Replaces a device's labels. Returns None if the device does not exist.
    pub async fn set_device_labels(&self, id: Uuid, labels: &Labels, actor: &str) -> Result<Option<Device>> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let json = serde_json::to_string(labels).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let n = sqlx::query("UPDATE devices SET labels = $1, updated_at = $2 WHERE id = $3")
            .bind(json)
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        write_labels(&mut tx, &id.to_string(), labels).await?;
        let ev = NewEvent::new(EventKind::DeviceLabelsUpdated, actor)
            .device(id)
            .data(serde_json::json!({ "labels": labels }));
        events::insert(&mut tx, now, &ev).await?;
        let row = sqlx::query(&format!("SELECT {DEVICE_COLS} FROM devices d WHERE d.id = $1"))
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let d = from_row(&row)?;
        tx.commit().await?;
        Ok(Some(d))
    }

    /// Deletes a device; its unfinished actions are skipped. False if unknown.
    pub async fn delete_device(&self, id: Uuid, actor: &str) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let sid = id.to_string();
        let skipped = sqlx::query(&format!(
            "UPDATE actions SET state = 'skipped', error = 'device deleted', deadline = NULL, updated_at = $1 \
             WHERE device_id = $2 AND state NOT IN {} RETURNING rollout_id",
            crate::rollouts::TERMINAL
        ))
        .bind(now)
        .bind(sid.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for row in &skipped {
            tx.touch(row.i64("rollout_id")?);
        }
        sqlx::query("DELETE FROM device_labels WHERE device_id = $1").bind(sid.as_str()).execute(&mut *tx).await?;
        let n = sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(sid.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        events::insert(&mut tx, now, &NewEvent::new(EventKind::DeviceDeleted, actor).device(id)).await?;
        notify::send(&mut tx, self.backend, &self.origin, &Change::DeviceDeleted { device: id }).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records that devices were seen at `at` with a given health, in one
    /// transaction of a few statements (the check-in path batches these; they
    /// are not state transitions).
    pub async fn touch_devices(&self, seen: &[(DeviceHealth, Vec<Uuid>)], at: i64) -> Result<()> {
        if seen.iter().all(|(_, ids)| ids.is_empty()) {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        if self.backend == crate::Backend::Postgres {
            let mut all: Vec<String> = seen.iter().flat_map(|(_, ids)| ids.iter().map(Uuid::to_string)).collect();
            all.sort_unstable();
            lock_devices_in_order(&mut tx, &all).await?;
        }
        for (health, ids) in seen {
            for chunk in ids.chunks(500) {
                let ids: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
                let mut sql = Sql::new("UPDATE devices SET health = ");
                sql.bind_str(health.as_str()).push(", last_seen = ").bind_i64(at).push(" WHERE id IN ").bind_list(&ids);
                sql.query().execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The id of the device owning this secret token.
    pub async fn device_id_by_token(&self, secret: &str) -> Result<Option<Uuid>> {
        let row = sqlx::query("SELECT id FROM devices WHERE token_hash = $1")
            .bind(hash_token(secret))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.parsed::<Uuid>("id")).transpose()
    }

    /// Replaces a device's token with `secret` (the old one stops working),
    /// with a `device.token_rotated` event. False if there is no such device.
    pub async fn rotate_device_token(&self, id: Uuid, secret: &str, actor: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let n = sqlx::query("UPDATE devices SET token_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hash_token(secret))
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 1 {
            events::insert(&mut tx, now, &NewEvent::new(EventKind::DeviceTokenRotated, actor).device(id)).await?;
            notify::send(&mut tx, self.backend, &self.origin, &Change::DeviceToken { device: id }).await?;
            tx.commit().await?;
        }
        Ok(n == 1)
    }

    /// Sets a device's credential (enrollment or rotation).
    pub async fn set_device_token(&self, id: Uuid, secret: &str) -> Result<bool> {
        let n = sqlx::query("UPDATE devices SET token_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hash_token(secret))
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }
}

/// Locks these device rows (sorted ids) until commit, in id order (PostgreSQL).
/// The two writers of many device rows at once — the batched last-seen write
/// and a batch of status reports — both take their locks this way first, so
/// they queue behind each other instead of deadlocking (each would otherwise
/// lock in its own statement's order).
pub(crate) async fn lock_devices_in_order(conn: &mut sqlx::AnyConnection, sorted_ids: &[String]) -> Result<()> {
    debug_assert!(sorted_ids.windows(2).all(|w| w[0] <= w[1]));
    for chunk in sorted_ids.chunks(5_000) {
        let list = serde_json::to_string(chunk).map_err(|e| StoreError::Invalid(e.to_string()))?;
        sqlx::query(
            "SELECT id FROM devices WHERE id IN (SELECT jsonb_array_elements_text(CAST($1 AS jsonb))) \
             ORDER BY id FOR UPDATE",
        )
        .bind(list)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
