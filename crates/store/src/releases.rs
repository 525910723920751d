//! The release catalogue: a version, what kind of thing it is, its artifacts
//! (uri, size, sha256, optional signature) and the device types it fits.

use crate::events::{self, NewEvent};
use crate::{conflict_or, now_ms, Result, RowExt, Store, StoreError};
use otafleet_core::{EventKind, ReleaseKind};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    pub uri: String,
    pub size: i64,
    pub sha256: String,
    pub signature: Option<String>,
}

pub type NewArtifact = Artifact;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub id: i64,
    pub name: String,
    pub version: String,
    pub kind: ReleaseKind,
    pub compatible: Vec<String>,
    pub signature: Option<String>,
    pub artifacts: Vec<Artifact>,
    /// What a delegate applies for this release (migration 0020): the
    /// container image of a `container` release; the firmware image and the
    /// pod image that flashes it of a `firmware` release for FlashJob boards.
    pub image: Option<String>,
    pub firmware: Option<String>,
    pub flash_pod_image: Option<String>,
    /// An `app` release's application spec, as JSON (migration 0021).
    pub app_spec: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default)]
pub struct NewRelease {
    pub name: String,
    pub version: String,
    pub kind: ReleaseKind,
    pub compatible: Vec<String>,
    pub signature: Option<String>,
    pub artifacts: Vec<NewArtifact>,
    pub image: Option<String>,
    pub firmware: Option<String>,
    pub flash_pod_image: Option<String>,
    pub app_spec: Option<String>,
}

const COLS: &str =
    "id, name, version, kind, compatible, signature, image, firmware, flash_pod_image, app_spec, created_at";

fn from_row(r: &AnyRow) -> Result<Release> {
    Ok(Release {
        id: r.i64("id")?,
        name: r.string("name")?,
        version: r.string("version")?,
        kind: r.parsed("kind")?,
        compatible: r.json("compatible")?,
        signature: r.opt_string("signature")?,
        artifacts: Vec::new(),
        image: r.opt_string("image")?,
        firmware: r.opt_string("firmware")?,
        flash_pod_image: r.opt_string("flash_pod_image")?,
        app_spec: r.opt_string("app_spec")?,
        created_at: r.i64("created_at")?,
    })
}

impl Store {
    async fn with_artifacts(&self, mut rel: Release) -> Result<Release> {
        let rows =
            sqlx::query("SELECT name, uri, size, sha256, signature FROM artifacts WHERE release_id = $1 ORDER BY id")
                .bind(rel.id)
                .fetch_all(&self.pool)
                .await?;
        rel.artifacts = rows
            .iter()
            .map(|r| {
                Ok(Artifact {
                    name: r.string("name")?,
                    uri: r.string("uri")?,
                    size: r.i64("size")?,
                    sha256: r.string("sha256")?,
                    signature: r.opt_string("signature")?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(rel)
    }

    pub async fn insert_release(&self, new: &NewRelease, actor: &str) -> Result<Release> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let compatible = serde_json::to_string(&new.compatible).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let row = sqlx::query(
            "INSERT INTO releases (name, version, kind, compatible, signature, image, firmware, flash_pod_image, app_spec, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(new.name.as_str())
        .bind(new.version.as_str())
        .bind(new.kind.as_str())
        .bind(compatible)
        .bind(new.signature.clone())
        .bind(new.image.clone())
        .bind(new.firmware.clone())
        .bind(new.flash_pod_image.clone())
        .bind(new.app_spec.clone())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| conflict_or(e, || format!("release version {} already exists", new.version)))?;
        let id = row.i64("id")?;
        for a in &new.artifacts {
            sqlx::query(
                "INSERT INTO artifacts (release_id, name, uri, size, sha256, signature) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(a.name.as_str())
            .bind(a.uri.as_str())
            .bind(a.size)
            .bind(a.sha256.as_str())
            .bind(a.signature.clone())
            .execute(&mut *tx)
            .await?;
        }
        let ev = NewEvent::new(EventKind::ReleaseCreated, actor)
            .data(serde_json::json!({"release_id": id, "version": new.version}));
        events::insert(&mut tx, now, &ev).await?;
        tx.commit().await?;
        Ok(Release {
            id,
            name: new.name.clone(),
            version: new.version.clone(),
            kind: new.kind,
            compatible: new.compatible.clone(),
            signature: new.signature.clone(),
            artifacts: new.artifacts.clone(),
            image: new.image.clone(),
            firmware: new.firmware.clone(),
            flash_pod_image: new.flash_pod_image.clone(),
            app_spec: new.app_spec.clone(),
            created_at: now,
        })
    }

    pub async fn get_release(&self, id: i64) -> Result<Option<Release>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM releases WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(Some(self.with_artifacts(from_row(&r)?).await?)),
            None => Ok(None),
        }
    }

    pub async fn get_release_by_version(&self, version: &str) -> Result<Option<Release>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM releases WHERE version = $1"))
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(Some(self.with_artifacts(from_row(&r)?).await?)),
            None => Ok(None),
        }
    }

    /// The release with this version, created (without artifacts) if missing.
    /// Used by the tracker-compatible `POST /ota/deploy`.
    pub async fn ensure_release(&self, version: &str, actor: &str) -> Result<Release> {
        if let Some(r) = self.get_release_by_version(version).await? {
            return Ok(r);
        }
        let new = NewRelease {
            name: version.to_string(),
            version: version.to_string(),
            kind: ReleaseKind::Firmware,
            ..Default::default()
        };
        match self.insert_release(&new, actor).await {
            Err(StoreError::Conflict(_)) => self
                .get_release_by_version(version)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("release {version}"))),
            other => other,
        }
    }

    /// Releases newest first; `before` is a keyset cursor on id.
    pub async fn list_releases(&self, before: Option<i64>, limit: i64) -> Result<Vec<Release>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM releases WHERE id < $1 ORDER BY id DESC LIMIT $2"))
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit.clamp(1, 1000))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.with_artifacts(from_row(r)?).await?);
        }
        Ok(out)
    }
}
