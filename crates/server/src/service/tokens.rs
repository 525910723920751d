//! The bootstrap admin token: `OTAFLEET_ADMIN_TOKEN`, or one generated on
//! the first start of an empty database.

use anyhow::bail;
use otafleet_store::{Bootstrap, Store, StoreError};

/// The shortest accepted `OTAFLEET_ADMIN_TOKEN` (32 characters: 128 bits of hex, at least).
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// Installs the configured bootstrap admin token, revoking the previous one
/// if it differs; without one, generates a token when the token table is
/// empty and returns it (printed once by the caller).
pub async fn bootstrap_admin(store: &Store, configured: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(secret) = configured else {
        let secret = crate::new_secret("ota");
        return Ok(store.create_first_bootstrap_token(&secret).await?.map(|_| secret));
    };
    let n = secret.chars().count();
    if n < MIN_ADMIN_TOKEN_LEN {
        bail!(
            "OTAFLEET_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LEN} characters, it has {n} \
             (generate one with `openssl rand -hex 32`)"
        );
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("OTAFLEET_ADMIN_TOKEN must not contain whitespace or control characters");
    }
    let mut outcome = store.install_bootstrap_token(secret, otafleet_store::now_ms()).await;
    if matches!(outcome, Err(StoreError::Conflict(_))) {
        // Another replica installed the same token at the same moment.
        outcome = store.install_bootstrap_token(secret, otafleet_store::now_ms()).await;
    }
    match outcome {
        Ok(Bootstrap::Installed { revoked }) if !revoked.is_empty() => {
            tracing::warn!(?revoked, "a new OTAFLEET_ADMIN_TOKEN: the previous bootstrap admin token is revoked");
        }
        Ok(_) => {}
        Err(StoreError::Invalid(m)) => bail!("OTAFLEET_ADMIN_TOKEN: {m}"),
        Err(e) => return Err(e.into()),
    }
    Ok(None)
}
