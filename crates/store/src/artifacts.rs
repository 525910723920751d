//! Adding an artifact to an existing release (the server's upload endpoint
//! stores the bytes, this records them). A release that a rollout already
//! uses is immutable: devices may be installing it, and its signed manifest
//! must not change under them.

use crate::events::{self, NewEvent};
use crate::releases::Artifact;
use crate::{now_ms, Release, Result, Store, StoreError};
use otafleet_core::EventKind;

/// Conflict if a rollout uses the release.
async fn ensure_unused<'c, E: sqlx::Executor<'c, Database = sqlx::Any>>(ex: E, release_id: i64) -> Result<()> {
    let used = sqlx::query("SELECT id FROM rollouts WHERE release_id = $1 LIMIT 1")
        .bind(release_id)
        .fetch_optional(ex)
        .await?;
    if used.is_some() {
        return Err(StoreError::Conflict(format!(
            "release {release_id} is used by a rollout; its artifacts can no longer change (create a new version)"
        )));
    }
    Ok(())
}

impl Store {
    /// Conflict if a rollout uses the release, so an upload can be refused
    /// before its body is read ([`Store::put_artifact`] checks again).
    pub async fn ensure_release_unused(&self, release_id: i64) -> Result<()> {
        ensure_unused(&self.pool, release_id).await
    }

    /// Every SHA-256 some release's artifact names (what garbage collection keeps).
    pub async fn referenced_artifacts(&self) -> Result<std::collections::HashSet<String>> {
        use sqlx::Row;
        let rows = sqlx::query("SELECT DISTINCT sha256 FROM artifacts").fetch_all(&self.pool).await?;
        rows.iter().map(|r| r.try_get::<String, _>("sha256").map_err(Into::into)).collect()
    }

    /// Adds the artifact to the release, replacing one of the same name.
    /// Conflict if a rollout uses the release; NotFound if it does not exist.
    pub async fn put_artifact(&self, release_id: i64, artifact: &Artifact, actor: &str) -> Result<Release> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let exists =
            sqlx::query("SELECT id FROM releases WHERE id = $1").bind(release_id).fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("release {release_id} not found")));
        }
        ensure_unused(&mut *tx, release_id).await?;
        sqlx::query("DELETE FROM artifacts WHERE release_id = $1 AND name = $2")
            .bind(release_id)
            .bind(artifact.name.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO artifacts (release_id, name, uri, size, sha256, signature) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(release_id)
        .bind(artifact.name.as_str())
        .bind(artifact.uri.as_str())
        .bind(artifact.size)
        .bind(artifact.sha256.as_str())
        .bind(artifact.signature.clone())
        .execute(&mut *tx)
        .await?;
        let ev = NewEvent::new(EventKind::ReleaseArtifactAdded, actor).data(serde_json::json!({
            "release_id": release_id, "name": artifact.name, "size": artifact.size, "sha256": artifact.sha256,
        }));
        events::insert(&mut tx, now, &ev).await?;
        tx.commit().await?;
        self.get_release(release_id).await?.ok_or_else(|| StoreError::NotFound(format!("release {release_id}")))
    }

    /// Whether any release references an artifact with this sha256 (downloads
    /// are only served for known content).
    pub async fn artifact_known(&self, sha256: &str) -> Result<bool> {
        let row = sqlx::query("SELECT id FROM artifacts WHERE sha256 = $1 LIMIT 1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}
