//! Release and order signing. The server holds an ed25519 private key
//! (`--signing-key`, written by `otafleet keys generate`) and signs each
//! release's canonical manifest ([`otafleet_core::protocol::Manifest`]) when a
//! device asks for an action: ed25519 signatures are deterministic, so signing
//! on demand gives the same bytes every time and a release whose artifacts
//! were just uploaded is never served with a stale signature. With the same
//! key it signs the device's order for that action
//! ([`otafleet_core::protocol::Order`]: device, action, kind, version,
//! artifact hashes, expiry), issued at the time of the request and valid for
//! `--order-ttl`. Devices verify both with the public key they were
//! provisioned with; without a key the server hands out unsigned manifests
//! and no orders, which agents refuse.
//!
//! Key files are hex text: `otafleet-signing.key` holds the 32-byte secret
//! seed (mode 0600), `otafleet-signing.pub` the 32-byte public key.

use anyhow::{bail, Context, Result};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use otafleet_core::protocol::{Manifest, ManifestArtifact, Order};
use otafleet_store::Release;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const PRIVATE_FILE: &str = "otafleet-signing.key";
pub const PUBLIC_FILE: &str = "otafleet-signing.pub";

/// The server's release-signing key.
#[derive(Clone)]
pub struct ReleaseSigner {
    key: Arc<SigningKey>,
}

impl fmt::Debug for ReleaseSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReleaseSigner(public {})", self.public_hex())
    }
}

/// Reads 32 bytes written as hex (surrounding whitespace allowed).
pub fn read_hex32(path: &Path, what: &str) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))?;
    let bytes = hex::decode(text.trim())
        .with_context(|| format!("the {what} {} is not hex (expected 64 hex characters)", path.display()))?;
    match <[u8; 32]>::try_from(bytes.as_slice()) {
        Ok(b) => Ok(b),
        Err(_) => bail!("the {what} {} holds {} bytes, expected 32", path.display(), bytes.len()),
    }
}

impl ReleaseSigner {
    pub fn from_secret(secret: [u8; 32]) -> Self {
        ReleaseSigner { key: Arc::new(SigningKey::from_bytes(&secret)) }
    }

    /// Loads the private key file written by [`generate`].
    pub fn load(path: &Path) -> Result<Self> {
        Ok(Self::from_secret(read_hex32(path, "signing key")?))
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.public_key().as_bytes())
    }

    /// Hex ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message).to_bytes())
    }
}

/// The manifest of a release, as devices see it.
pub fn manifest(release: &Release) -> Manifest {
    Manifest {
        artifacts: release
            .artifacts
            .iter()
            .map(|a| ManifestArtifact { name: a.name.clone(), sha256: a.sha256.clone(), size: a.size.max(0) as u64 })
            .collect(),
        compatible: release.compatible.clone(),
        kind: release.kind.as_str().to_string(),
        version: release.version.clone(),
    }
}

/// Canonical manifest and, when a key is configured, its signature.
pub fn sign_release(signer: Option<&ReleaseSigner>, release: &Release) -> (String, Option<String>) {
    let canonical = manifest(release).canonical();
    let signature = signer.map(|s| s.sign(canonical.as_bytes()));
    (canonical, signature)
}

/// Canonical order and, when a key is configured, its signature (None: no
/// key, and no order is handed out).
pub fn sign_order(signer: Option<&ReleaseSigner>, order: &Order) -> Option<(String, String)> {
    let signer = signer?;
    let canonical = order.canonical();
    let signature = signer.sign(canonical.as_bytes());
    Some((canonical, signature))
}

/// `otafleet keys generate --out DIR`: writes a new key pair; refuses to
/// overwrite an existing private key. Returns (private path, public path).
pub fn generate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let private = dir.join(PRIVATE_FILE);
    let public = dir.join(PUBLIC_FILE);
    if private.exists() {
        bail!("{} already exists; remove it first or choose another --out", private.display());
    }
    let signer = ReleaseSigner::from_secret(rand::random());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&private).with_context(|| format!("creating {}", private.display()))?;
    std::io::Write::write_all(&mut f, format!("{}\n", hex::encode(signer.key.to_bytes())).as_bytes())
        .with_context(|| format!("writing {}", private.display()))?;
    f.sync_all()?;
    std::fs::write(&public, format!("{}\n", signer.public_hex()))
        .with_context(|| format!("writing {}", public.display()))?;
    Ok((private, public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};
    use otafleet_store::Artifact;

    fn release() -> Release {
        Release {
            id: 1,
            name: "r".into(),
            version: "2.0.0".into(),
            kind: otafleet_core::ReleaseKind::File,
            compatible: vec!["esp32".into()],
            signature: None,
            artifacts: vec![Artifact {
                name: "fw.bin".into(),
                uri: "/device/v1/artifacts/x".into(),
                size: 3,
                sha256: "ab".repeat(32),
                signature: None,
            }],
            image: None,
            firmware: None,
            flash_pod_image: None,
            app_spec: None,
            created_at: 0,
        }
    }

    #[test]
    fn generated_keys_load_and_signatures_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate(dir.path()).unwrap();
        assert!(generate(dir.path()).unwrap_err().to_string().contains("already exists"));
        let signer = ReleaseSigner::load(&private).unwrap();
        let public = VerifyingKey::from_bytes(&read_hex32(&public, "public key").unwrap()).unwrap();
        let (manifest, sig) = sign_release(Some(&signer), &release());
        let sig = Signature::from_slice(&hex::decode(sig.unwrap()).unwrap()).unwrap();
        public.verify(manifest.as_bytes(), &sig).unwrap();
        let tampered = manifest.replace("2.0.0", "2.0.1");
        assert!(public.verify(tampered.as_bytes(), &sig).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn orders_are_signed_with_the_release_key() {
        let signer = ReleaseSigner::from_secret([3u8; 32]);
        let order = Order {
            action_id: 1,
            artifacts: manifest(&release()).artifacts,
            device_id: uuid::Uuid::nil(),
            expires_at: 3600,
            issued_at: 0,
            kind: otafleet_core::ActionKind::Install,
            rollout_id: 1,
            version: "2.0.0".into(),
        };
        assert_eq!(sign_order(None, &order), None);
        let (text, sig) = sign_order(Some(&signer), &order).unwrap();
        assert_eq!(text, order.canonical());
        let sig = Signature::from_slice(&hex::decode(sig).unwrap()).unwrap();
        signer.public_key().verify(text.as_bytes(), &sig).unwrap();
        let relabelled = text.replace("\"install\"", "\"rollback\"");
        assert!(signer.public_key().verify(relabelled.as_bytes(), &sig).is_err());
    }

    #[test]
    fn bad_key_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "zz").unwrap();
        assert!(format!("{:#}", ReleaseSigner::load(&p).unwrap_err()).contains("not hex"));
        std::fs::write(&p, "abcd").unwrap();
        assert!(format!("{:#}", ReleaseSigner::load(&p).unwrap_err()).contains("holds 2 bytes"));
        assert!(format!("{:#}", ReleaseSigner::load(&dir.path().join("missing")).unwrap_err()).contains("reading"));
    }
}
