//! API tokens for people and scripts. Only the SHA-256 of a token is stored: the
//! tokens are 256-bit random strings, so a fast hash is enough (no password
//! stretching needed) and a lookup by hash is one indexed read.
//!
//! A token lives until it expires (`expires_at`, optional) or is revoked
//! (`revoked_at`); the row stays for the audit trail. `last_used_at` is
//! written by the server at most once a minute per token. The bootstrap admin
//! token (`OTAFLEET_ADMIN_TOKEN`) is marked `bootstrap`: installing another
//! one revokes it.

use crate::events::{self, NewEvent};
use crate::notify::{self, Change};
use crate::{conflict_or, now_ms, Result, RowExt, Store, StoreError};
use otafleet_core::EventKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use std::fmt;
use std::str::FromStr;

/// Roles, least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role '{s}', expected admin, operator or viewer")),
        }
    }
}

/// A stored API token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    /// Who created it (`token:<name>`); None for the bootstrap token and rows from before 0006.
    pub created_by: Option<String>,
    /// Unix ms from which it is refused (None = never).
    pub expires_at: Option<i64>,
    /// Unix ms of the last request with it, to the minute.
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// The bootstrap admin token (`OTAFLEET_ADMIN_TOKEN`, or the one generated on first start).
    pub bootstrap: bool,
}

impl TokenRecord {
    /// Neither revoked nor expired at `now`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub name: &'a str,
    pub role: Role,
    /// The secret; only its hash is stored.
    pub secret: &'a str,
    pub expires_at: Option<i64>,
    pub created_by: Option<&'a str>,
}

/// What installing the bootstrap token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// It was already the valid bootstrap token.
    Kept,
    /// It was installed; the previous bootstrap tokens (their ids) were revoked.
    Installed { revoked: Vec<i64> },
}

const COLS: &str = "id, name, role, created_at, created_by, expires_at, last_used_at, revoked_at, bootstrap";

fn from_row(r: &AnyRow) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.i64("id")?,
        name: r.string("name")?,
        role: r.parsed("role")?,
        created_at: r.i64("created_at")?,
        created_by: r.opt_string("created_by")?,
        expires_at: r.opt_i64("expires_at")?,
        last_used_at: r.opt_i64("last_used_at")?,
        revoked_at: r.opt_i64("revoked_at")?,
        bootstrap: r.i64("bootstrap")? != 0,
    })
}

/// Hex SHA-256 of a secret token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

async fn insert(conn: &mut sqlx::AnyConnection, t: &NewToken<'_>, bootstrap: bool, now: i64) -> Result<TokenRecord> {
    let row = sqlx::query(&format!(
        "INSERT INTO tokens (name, role, token_hash, created_at, created_by, expires_at, bootstrap) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLS}"
    ))
    .bind(t.name)
    .bind(t.role.as_str())
    .bind(hash_token(t.secret))
    .bind(now)
    .bind(t.created_by)
    .bind(t.expires_at)
    .bind(i64::from(bootstrap))
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| conflict_or(e, || "token already exists".into()))?;
    let rec = from_row(&row)?;
    let data =
        serde_json::json!({"token_id": rec.id, "name": rec.name, "role": rec.role, "expires_at": rec.expires_at});
    events::insert(conn, now, &NewEvent::new(EventKind::TokenCreated, t.created_by.unwrap_or("server")).data(data))
        .await?;
    Ok(rec)
}

impl Store {
    /// Stores a token (by hash) with no expiry. The caller generated and shows the secret.
    pub async fn create_token(&self, name: &str, role: Role, secret: &str) -> Result<TokenRecord> {
        self.create_token_with(&NewToken { name, role, secret, expires_at: None, created_by: None }).await
    }

    /// Stores a token (by hash). The caller generated and shows the secret.
    pub async fn create_token_with(&self, t: &NewToken<'_>) -> Result<TokenRecord> {
        let mut tx = self.write_tx().await?;
        let rec = insert(&mut tx, t, false, now_ms()).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Makes `secret` the bootstrap admin token: kept if it already is, else
    /// stored, and every other bootstrap token revoked, in one transaction.
    /// A secret that is another (or a revoked, or an expired) token is refused.
    pub async fn install_bootstrap_token(&self, secret: &str, now: i64) -> Result<Bootstrap> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(&format!("SELECT {COLS} FROM tokens WHERE token_hash = $1"))
            .bind(hash_token(secret))
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(t) = row.as_ref().map(from_row).transpose()? {
            return if t.revoked_at.is_some() {
                Err(StoreError::Invalid(format!("this admin token (id {}) was revoked; choose a new one", t.id)))
            } else if !t.is_valid_at(now) {
                Err(StoreError::Invalid(format!("this admin token (id {}) has expired; choose a new one", t.id)))
            } else if !t.bootstrap || t.role != Role::Admin {
                Err(StoreError::Invalid(format!(
                    "this secret is already the {} token '{}' (id {}), not a bootstrap admin token",
                    t.role, t.name, t.id
                )))
            } else {
                Ok(Bootstrap::Kept)
            };
        }
        let old = sqlx::query("SELECT id FROM tokens WHERE bootstrap = 1 AND revoked_at IS NULL ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        let revoked = old.iter().map(|r| r.i64("id")).collect::<Result<Vec<_>>>()?;
        for id in &revoked {
            revoke(&mut tx, *id, now, "server", "replaced by a new OTAFLEET_ADMIN_TOKEN").await?;
            notify::send(&mut tx, self.backend, &self.origin, &Change::TokenRevoked { id: *id }).await?;
        }
        let new = NewToken { name: "bootstrap-admin", role: Role::Admin, secret, expires_at: None, created_by: None };
        insert(&mut tx, &new, true, now).await?;
        tx.commit().await?;
        Ok(Bootstrap::Installed { revoked })
    }

    /// Stores a generated bootstrap admin token if there is no token at all.
    pub async fn create_first_bootstrap_token(&self, secret: &str) -> Result<Option<TokenRecord>> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("SELECT COUNT(*) AS n FROM tokens").fetch_one(&mut *tx).await?.i64("n")?;
        if n > 0 {
            return Ok(None);
        }
        let new = NewToken { name: "bootstrap-admin", role: Role::Admin, secret, expires_at: None, created_by: None };
        let rec = insert(&mut tx, &new, true, now_ms()).await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    /// The token with this secret if it is neither revoked nor expired.
    pub async fn find_token(&self, secret: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $2)"
        ))
        .bind(hash_token(secret))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn get_token(&self, id: i64) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Every token, revoked and expired ones too, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM tokens ORDER BY id")).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// Revokes a token (idempotent: an already revoked one keeps its time).
    /// None if there is no such token.
    pub async fn revoke_token(&self, id: i64, actor: &str) -> Result<Option<TokenRecord>> {
        let mut tx = self.write_tx().await?;
        if !revoke(&mut tx, id, now_ms(), actor, "revoked").await? {
            return Ok(None);
        }
        notify::send(&mut tx, self.backend, &self.origin, &Change::TokenRevoked { id }).await?;
        let row = sqlx::query(&format!("SELECT {COLS} FROM tokens WHERE id = $1")).bind(id).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(from_row(&row)?))
    }

    /// Records that tokens were used at `at` (never moves a time back).
    pub async fn touch_token(&self, id: i64, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn count_tokens(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM tokens").fetch_one(&self.pool).await?;
        row.i64("n")
    }
}

/// Sets `revoked_at` unless already set, with a `token.revoked` event.
/// False if there is no such token.
async fn revoke(conn: &mut sqlx::AnyConnection, id: i64, now: i64, actor: &str, why: &str) -> Result<bool> {
    let row =
        sqlx::query("SELECT name, revoked_at FROM tokens WHERE id = $1").bind(id).fetch_optional(&mut *conn).await?;
    let Some(row) = row else { return Ok(false) };
    if row.opt_i64("revoked_at")?.is_none() {
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2").bind(now).bind(id).execute(&mut *conn).await?;
        let data = serde_json::json!({"token_id": id, "name": row.string("name")?, "reason": why});
        events::insert(conn, now, &NewEvent::new(EventKind::TokenRevoked, actor).data(data)).await?;
    }
    Ok(true)
}
