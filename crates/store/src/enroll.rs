//! Enrollment tokens: how a device gets its identity without an operator
//! registering it by hand. An operator creates a token carrying labels (e.g.
//! `device_type=esp32`), optionally limited in uses and lifetime; a device
//! presents it once to `POST /device/v1/enroll` and receives its own device
//! token. Like API tokens, only the SHA-256 of the secret is stored, and the
//! token's labels win over labels the device proposes, so a device cannot
//! enroll itself into another device type.

use crate::devices::NewDevice;
use crate::tokens::hash_token;
use crate::{conflict_or, now_ms, Device, Result, RowExt, Store, StoreError};
use otafleet_core::selector::Labels;
use serde::Serialize;
use sqlx::any::AnyRow;
use std::fmt;

#[derive(Debug, Clone, Default)]
pub struct NewEnrollmentToken {
    pub name: String,
    /// Labels every device enrolled with this token gets.
    pub labels: Labels,
    /// How many devices may enroll with it (None = unlimited).
    pub max_uses: Option<i64>,
    /// Unix ms after which it is refused (None = never).
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentToken {
    pub id: i64,
    pub name: String,
    pub labels: Labels,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub expires_at: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    /// Unix ms of the last enrollment with it.
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Why an enrollment was refused (the HTTP edge answers 401 with the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollRefusal {
    Unknown,
    Expired,
    UsedUp,
    /// The token's labels over the proposed ones would exceed `core::validate::MAX_LABELS`.
    TooManyLabels(usize),
}

impl fmt::Display for EnrollRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnrollRefusal::Unknown => "unknown or revoked enrollment token",
            EnrollRefusal::Expired => "the enrollment token has expired",
            EnrollRefusal::UsedUp => "the enrollment token has no uses left",
            EnrollRefusal::TooManyLabels(n) => {
                return write!(
                    f,
                    "with the enrollment token's labels the device would have {n} labels; at most {} are allowed",
                    otafleet_core::validate::MAX_LABELS
                )
            }
        })
    }
}

const COLS: &str = "id, name, labels, max_uses, uses, expires_at, created_by, created_at, last_used_at, revoked_at";

fn from_row(r: &AnyRow) -> Result<EnrollmentToken> {
    Ok(EnrollmentToken {
        id: r.i64("id")?,
        name: r.string("name")?,
        labels: r.json("labels")?,
        max_uses: r.opt_i64("max_uses")?,
        uses: r.i64("uses")?,
        expires_at: r.opt_i64("expires_at")?,
        created_by: r.string("created_by")?,
        created_at: r.i64("created_at")?,
        last_used_at: r.opt_i64("last_used_at")?,
        revoked_at: r.opt_i64("revoked_at")?,
    })
}

impl Store {
    /// Stores an enrollment token by hash. The caller generated and shows the secret.
    pub async fn create_enrollment_token(
        &self,
        new: &NewEnrollmentToken,
        secret: &str,
        actor: &str,
    ) -> Result<EnrollmentToken> {
        let now = now_ms();
        let labels = serde_json::to_string(&new.labels).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let row = sqlx::query(&format!(
            "INSERT INTO enrollment_tokens (name, token_hash, labels, max_uses, uses, expires_at, created_by, created_at) \
             VALUES ($1, $2, $3, $4, 0, $5, $6, $7) RETURNING {COLS}"
        ))
        .bind(new.name.as_str())
        .bind(hash_token(secret))
        .bind(labels)
        .bind(new.max_uses)
        .bind(new.expires_at)
        .bind(actor)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict_or(e, || "enrollment token already exists".into()))?;
        from_row(&row)
    }

    /// Every enrollment token, revoked and expired ones too, oldest first.
    pub async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>> {
        let rows =
            sqlx::query(&format!("SELECT {COLS} FROM enrollment_tokens ORDER BY id")).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn get_enrollment_token(&self, id: i64) -> Result<Option<EnrollmentToken>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM enrollment_tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Revokes an enrollment token (idempotent), with an
    /// `enrollment_token.revoked` event. None if there is no such token.
    /// Devices already enrolled with it keep their own tokens.
    pub async fn revoke_enrollment_token(&self, id: i64, actor: &str) -> Result<Option<EnrollmentToken>> {
        let mut tx = self.write_tx().await?;
        let now = now_ms();
        let n = sqlx::query("UPDATE enrollment_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let row = sqlx::query(&format!("SELECT {COLS} FROM enrollment_tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(t) = row.as_ref().map(from_row).transpose()? else { return Ok(None) };
        if n == 1 {
            let data = serde_json::json!({"enrollment_token_id": t.id, "name": t.name});
            let ev = crate::events::NewEvent::new(otafleet_core::EventKind::EnrollmentTokenRevoked, actor).data(data);
            crate::events::insert(&mut tx, now, &ev).await?;
        }
        tx.commit().await?;
        Ok(Some(t))
    }

    /// Enrolls a device with an enrollment token: consumes one use, then
    /// registers the device (its `token` is the new device secret) with the
    /// token's labels over the proposed ones. The use is given back if the
    /// registration fails, so a refused device does not burn a use.
    pub async fn enroll_device(
        &self,
        secret: &str,
        mut device: NewDevice,
        now: i64,
    ) -> Result<std::result::Result<Device, EnrollRefusal>> {
        let mut tx = self.write_tx().await?;
        let row =
            sqlx::query(&format!("SELECT {COLS} FROM enrollment_tokens WHERE token_hash = $1 AND revoked_at IS NULL"))
                .bind(hash_token(secret))
                .fetch_optional(&mut *tx)
                .await?;
        let Some(token) = row.as_ref().map(from_row).transpose()? else {
            return Ok(Err(EnrollRefusal::Unknown));
        };
        if token.expires_at.is_some_and(|t| t <= now) {
            return Ok(Err(EnrollRefusal::Expired));
        }
        if token.max_uses.is_some_and(|m| token.uses >= m) {
            return Ok(Err(EnrollRefusal::UsedUp));
        }
        // Checked on the merged set before a use is consumed: a device past the
        // cap could never be updated afterwards (every PATCH would fail).
        device.labels.extend(token.labels.clone());
        if device.labels.len() > otafleet_core::validate::MAX_LABELS {
            return Ok(Err(EnrollRefusal::TooManyLabels(device.labels.len())));
        }
        sqlx::query("UPDATE enrollment_tokens SET uses = uses + 1, last_used_at = $2 WHERE id = $1")
            .bind(token.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        match self.insert_devices(std::slice::from_ref(&device), &format!("enrollment:{}", token.name)).await {
            Ok(mut ds) => ds.pop().map(Ok).ok_or_else(|| StoreError::Corrupt("insert returned no device".into())),
            Err(e) => {
                let _ = sqlx::query("UPDATE enrollment_tokens SET uses = uses - 1 WHERE id = $1 AND uses > 0")
                    .bind(token.id)
                    .execute(&self.pool)
                    .await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// SQLite, and PostgreSQL too when `OTAFLEET_TEST_POSTGRES_URL` is set.
    async fn stores() -> (Vec<Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let mut out = vec![Store::connect(&url).await.unwrap()];
        match std::env::var("OTAFLEET_TEST_POSTGRES_URL") {
            Ok(base) if !base.is_empty() => {
                let url = crate::fresh_postgres_database(&base).await.unwrap();
                out.push(Store::connect(&url).await.unwrap());
            }
            _ => eprintln!("SKIPPED PostgreSQL enrollment tests: set OTAFLEET_TEST_POSTGRES_URL to run them"),
        }
        (out, dir)
    }

    fn device(name: &str, labels: &[(&str, &str)]) -> NewDevice {
        NewDevice {
            id: Uuid::new_v4(),
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            current_version: Some("1.0.0".into()),
            token: Some(format!("dev_{name}")),
        }
    }

    #[tokio::test]
    async fn labels_past_the_cap_once_merged_are_refused_without_using_the_token() {
        let (stores, _dir) = stores().await;
        for s in stores {
            let labels: Labels = (0..40).map(|i| (format!("t{i}"), "x".to_string())).collect();
            let new = NewEnrollmentToken { name: "cap".into(), labels, max_uses: Some(1), expires_at: None };
            let secret = "enr_cap";
            s.create_enrollment_token(&new, secret, "t").await.unwrap();
            let proposed: Vec<(String, String)> = (0..30).map(|i| (format!("d{i}"), "y".to_string())).collect();
            let pairs: Vec<(&str, &str)> = proposed.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let refused = s.enroll_device(secret, device("big", &pairs), 0).await.unwrap();
            assert!(matches!(refused, Err(EnrollRefusal::TooManyLabels(70))), "{refused:?}");
            // The one use is still there for a device within the cap.
            assert!(s.enroll_device(secret, device("small", &[("d0", "y")]), 0).await.unwrap().is_ok());
        }
    }

    #[tokio::test]
    async fn enrollment_consumes_uses_and_token_labels_win() {
        let (stores, _dir) = stores().await;
        for s in stores {
            enrollment_consumes_uses(s).await;
        }
    }

    async fn enrollment_consumes_uses(s: Store) {
        let labels = [("device_type".to_string(), "esp32".to_string())].into();
        let new = NewEnrollmentToken { name: "line-1".into(), labels, max_uses: Some(1), expires_at: None };
        let t = s.create_enrollment_token(&new, "enr_secret", "token:admin").await.unwrap();
        assert_eq!((t.uses, t.max_uses), (0, Some(1)));

        let d = device("a", &[("device_type", "laptop"), ("site", "x")]);
        let got = s.enroll_device("enr_secret", d, now_ms()).await.unwrap().unwrap();
        assert_eq!(got.labels["device_type"], "esp32", "the token's labels win");
        assert_eq!(got.labels["site"], "x");
        assert_eq!(s.find_device_by_token("dev_a").await.unwrap().unwrap().id, got.id);

        let again = s.enroll_device("enr_secret", device("b", &[]), now_ms()).await.unwrap();
        assert_eq!(again, Err(EnrollRefusal::UsedUp));
        let wrong = s.enroll_device("nope", device("c", &[]), now_ms()).await.unwrap();
        assert_eq!(wrong, Err(EnrollRefusal::Unknown));
    }

    #[tokio::test]
    async fn expired_tokens_are_refused_and_failed_registrations_give_the_use_back() {
        let (stores, _dir) = stores().await;
        for s in stores {
            expired_and_failed(s).await;
        }
    }

    async fn expired_and_failed(s: Store) {
        let new = NewEnrollmentToken { name: "t".into(), expires_at: Some(1_000), ..Default::default() };
        s.create_enrollment_token(&new, "old", "admin").await.unwrap();
        assert_eq!(s.enroll_device("old", device("a", &[]), 2_000).await.unwrap(), Err(EnrollRefusal::Expired));

        let new = NewEnrollmentToken { name: "u".into(), max_uses: Some(1), ..Default::default() };
        s.create_enrollment_token(&new, "once", "admin").await.unwrap();
        let first = device("dup", &[]);
        let mut clash = device("dup2", &[]);
        clash.id = first.id;
        s.insert_devices(&[first], "admin").await.unwrap();
        assert!(matches!(s.enroll_device("once", clash, now_ms()).await, Err(StoreError::Conflict(_))));
        // The use came back: a correct enrollment still works.
        assert!(s.enroll_device("once", device("ok", &[]), now_ms()).await.unwrap().is_ok());
    }
}
