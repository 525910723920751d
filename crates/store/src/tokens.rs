//! API tokens for people and scripts. Only the SHA-256 of a token is stored: the
//! tokens are 256-bit random strings, so a fast hash is enough (no password
//! stretching needed) and a lookup by hash is one indexed read.

use crate::{conflict_or, now_ms, Result, RowExt, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
}

/// Hex SHA-256 of a secret token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Store {
    /// Stores a token (by hash). The caller generated and shows the secret.
    pub async fn create_token(&self, name: &str, role: Role, secret: &str) -> Result<TokenRecord> {
        let now = now_ms();
        let row =
            sqlx::query("INSERT INTO tokens (name, role, token_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id")
                .bind(name)
                .bind(role.as_str())
                .bind(hash_token(secret))
                .bind(now)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| conflict_or(e, || "token already exists".into()))?;
        Ok(TokenRecord { id: row.i64("id")?, name: name.to_string(), role, created_at: now })
    }

    /// The unrevoked token with this secret, if any.
    pub async fn find_token(&self, secret: &str) -> Result<Option<TokenRecord>> {
        let row =
            sqlx::query("SELECT id, name, role, created_at FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL")
                .bind(hash_token(secret))
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(TokenRecord {
                id: r.i64("id")?,
                name: r.string("name")?,
                role: r.parsed("role")?,
                created_at: r.i64("created_at")?,
            })
        })
        .transpose()
    }

    pub async fn count_tokens(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM tokens").fetch_one(&self.pool).await?;
        row.i64("n")
    }
}
