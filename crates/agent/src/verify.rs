//! What the agent checks before it touches anything: the release manifest is
//! signed with the configured ed25519 key, it is for the version the action
//! names, for this device type, not a downgrade (unless the action is a
//! rollback), and every artifact to download is listed in it with its size
//! and SHA-256. Pure functions: every refusal is a reason string that the
//! agent reports as `failed`.

use anyhow::{anyhow, Result};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use otafleet_core::protocol::{compare_versions, ActionDetail, ArtifactRef, Manifest};
use otafleet_core::ActionKind;
use std::cmp::Ordering;

/// Parses a hex ed25519 public key (as written by `otafleet keys generate`).
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey> {
    let bytes = hex::decode(hex_key.trim()).map_err(|_| anyhow!("the public key is not hex (64 hex characters)"))?;
    let arr: [u8; 32] =
        bytes.try_into().map_err(|b: Vec<u8>| anyhow!("the public key has {} bytes, expected 32", b.len()))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| anyhow!("invalid ed25519 public key: {e}"))
}

/// A release the agent may install: its manifest and the artifacts to fetch
/// (uri from the order, name/size/sha256 from the signed manifest).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub manifest: Manifest,
    pub artifacts: Vec<ArtifactRef>,
}

fn safe_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\\', '\0']) && !n.starts_with(".otafleet")
}

/// Checks an action against the key, the device type and the running version.
pub fn check(
    detail: &ActionDetail,
    key: &VerifyingKey,
    device_type: Option<&str>,
    current_version: &str,
) -> Result<Verified, String> {
    let order = &detail.order;
    let (Some(manifest_text), Some(sig_hex)) = (detail.manifest.as_deref(), order.signature.as_deref()) else {
        return Err(format!("release {} is not signed; refusing to install it", order.version));
    };
    let sig = hex::decode(sig_hex)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or_else(|| format!("release {}: malformed signature", order.version))?;
    key.verify(manifest_text.as_bytes(), &sig).map_err(|_| {
        format!(
            "release {}: the manifest signature does not verify with the configured public key (tampered, or signed with another key)",
            order.version
        )
    })?;
    let manifest: Manifest = serde_json::from_str(manifest_text)
        .map_err(|e| format!("release {}: malformed manifest: {e}", order.version))?;
    if manifest.version != order.version {
        return Err(format!(
            "the signed manifest is for version {}, the action asks for {}",
            manifest.version, order.version
        ));
    }
    if !manifest.fits(device_type) {
        return Err(format!(
            "release {} is for device types [{}]; this device is {}",
            manifest.version,
            manifest.compatible.join(", "),
            device_type.unwrap_or("of no declared type")
        ));
    }
    if order.kind == ActionKind::Install && compare_versions(&manifest.version, current_version) == Ordering::Less {
        return Err(format!(
            "refusing to downgrade from {current_version} to {} (only a rollback may go back)",
            manifest.version
        ));
    }
    let mut artifacts = Vec::with_capacity(manifest.artifacts.len());
    for m in &manifest.artifacts {
        if !safe_name(&m.name) {
            return Err(format!("artifact name '{}' is not allowed", m.name));
        }
        let o = order
            .artifacts
            .iter()
            .find(|a| a.name == m.name)
            .ok_or_else(|| format!("artifact {} is in the manifest but not in the order", m.name))?;
        if o.sha256 != m.sha256 || o.size != m.size {
            return Err(format!("artifact {}: the order does not match the signed manifest (tampered?)", m.name));
        }
        artifacts.push(ArtifactRef {
            name: m.name.clone(),
            uri: o.uri.clone(),
            size: m.size,
            sha256: m.sha256.clone(),
        });
    }
    Ok(Verified { manifest, artifacts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use otafleet_core::protocol::{ActionOrder, ManifestArtifact};
    use otafleet_core::ActionState;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn detail(version: &str, kind: ActionKind, compatible: &[&str]) -> ActionDetail {
        let sha = "ab".repeat(32);
        let manifest = Manifest {
            artifacts: vec![ManifestArtifact { name: "fw.bin".into(), sha256: sha.clone(), size: 10 }],
            compatible: compatible.iter().map(|s| s.to_string()).collect(),
            kind: "file".into(),
            version: version.into(),
        }
        .canonical();
        let signature = Some(hex::encode(key().sign(manifest.as_bytes()).to_bytes()));
        ActionDetail {
            order: ActionOrder {
                action_id: 1,
                rollout_id: 1,
                kind,
                version: version.into(),
                state: ActionState::Notified,
                last_seq: 0,
                artifacts: vec![ArtifactRef {
                    name: "fw.bin".into(),
                    uri: format!("/device/v1/artifacts/{sha}"),
                    size: 10,
                    sha256: sha,
                }],
                signature,
            },
            manifest: Some(manifest),
        }
    }

    #[test]
    fn a_signed_compatible_upgrade_passes() {
        let v =
            check(&detail("2.0.0", ActionKind::Install, &["esp32"]), &key().verifying_key(), Some("esp32"), "1.0.0")
                .unwrap();
        assert_eq!(v.artifacts.len(), 1);
        assert_eq!(v.manifest.version, "2.0.0");
    }

    #[test]
    fn refusals_name_the_reason() {
        let pk = key().verifying_key();
        let ok = detail("2.0.0", ActionKind::Install, &["esp32"]);

        let mut unsigned = ok.clone();
        unsigned.order.signature = None;
        assert!(check(&unsigned, &pk, Some("esp32"), "1.0.0").unwrap_err().contains("not signed"));

        let mut tampered = ok.clone();
        tampered.manifest = tampered.manifest.map(|m| m.replace("\"size\":10", "\"size\":11"));
        assert!(check(&tampered, &pk, Some("esp32"), "1.0.0").unwrap_err().contains("does not verify"));

        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(check(&ok, &other, Some("esp32"), "1.0.0").unwrap_err().contains("does not verify"));

        assert!(check(&ok, &pk, Some("rpi"), "1.0.0").unwrap_err().contains("device types [esp32]"));
        assert!(check(&ok, &pk, Some("esp32"), "3.0.0").unwrap_err().contains("downgrade"));
        let rollback = detail("2.0.0", ActionKind::Rollback, &["esp32"]);
        assert!(check(&rollback, &pk, Some("esp32"), "3.0.0").is_ok(), "a rollback may go back");

        let mut swapped = ok.clone();
        swapped.order.artifacts[0].sha256 = "cd".repeat(32);
        assert!(check(&swapped, &pk, Some("esp32"), "1.0.0").unwrap_err().contains("does not match"));

        let mut wrong_version = ok.clone();
        wrong_version.order.version = "2.0.1".into();
        assert!(check(&wrong_version, &pk, Some("esp32"), "1.0.0").unwrap_err().contains("manifest is for version"));
    }

    #[test]
    fn public_keys_parse_or_explain() {
        assert!(parse_public_key(&hex::encode(key().verifying_key().as_bytes())).is_ok());
        assert!(parse_public_key("zz").unwrap_err().to_string().contains("not hex"));
        assert!(parse_public_key("abcd").unwrap_err().to_string().contains("2 bytes"));
    }
}
