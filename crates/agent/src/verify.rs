//! What the agent checks before it touches anything, as pure functions of
//! the action it fetched, its own identity and versions, and the time:
//!
//! - the device's *order* ([`check_order`]): signed with the configured
//!   ed25519 key, for this device id, for the action the agent asked for,
//!   with the kind, rollout and version the action says, and not expired
//!   (`now` is at most `expires_at + clock_skew` — the allowance for a device
//!   clock behind the server's, `clock_skew_secs` in the config);
//! - the release *manifest* ([`check_release`]): signed with the same key,
//!   for the version the order names, whose artifacts are exactly the
//!   order's, for this device type, not below the running version nor below
//!   the newest version this device ever installed unless the signed order is
//!   a `rollback` to that version, and every artifact to download listed in
//!   it with its size and SHA-256.
//!
//! Every refusal is a reason string naming what was wrong, which the agent
//! reports as `failed`.

use anyhow::{anyhow, Result};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use otafleet_core::protocol::{compare_versions, ActionDetail, ArtifactRef, Manifest, ManifestArtifact, Order};
use otafleet_core::ActionKind;
use std::cmp::Ordering;
use uuid::Uuid;

/// Parses a hex ed25519 public key (as written by `otafleet keys generate`).
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey> {
    let bytes = hex::decode(hex_key.trim()).map_err(|_| anyhow!("the public key is not hex (64 hex characters)"))?;
    let arr: [u8; 32] =
        bytes.try_into().map_err(|b: Vec<u8>| anyhow!("the public key has {} bytes, expected 32", b.len()))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| anyhow!("invalid ed25519 public key: {e}"))
}

/// What the checks compare an action with: who and where the device is.
#[derive(Debug, Clone, Copy)]
pub struct Device<'a> {
    pub key: &'a VerifyingKey,
    pub device_id: Uuid,
    pub device_type: Option<&'a str>,
    /// The version running (for a resumed action: the one it started from).
    pub current_version: &'a str,
    /// The newest version this device ever installed (`state.json`).
    pub newest_version: Option<&'a str>,
    /// Unix seconds, the device's clock.
    pub now: i64,
    /// Seconds an order is still accepted after its `expires_at`.
    pub clock_skew_secs: i64,
}

/// A release the agent may install: its manifest, the artifacts to fetch
/// (uri from the order, name/size/sha256 from the signed manifest), and the
/// signed order it was handed with.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub order: Order,
    pub manifest: Manifest,
    pub artifacts: Vec<ArtifactRef>,
}

fn safe_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\\', '\0']) && !n.starts_with(".otafleet")
}

fn signature(hex_sig: &str) -> Option<Signature> {
    hex::decode(hex_sig).ok().and_then(|b| Signature::from_slice(&b).ok())
}

/// Checks the device's signed order for action `asked` (the id the agent
/// fetched): the only thing that says this device is to act now.
pub fn check_order(detail: &ActionDetail, asked: i64, dev: &Device<'_>) -> Result<Order, String> {
    let action = &detail.order;
    let (Some(text), Some(sig_hex)) = (detail.signed_order.as_deref(), detail.order_signature.as_deref()) else {
        return Err(format!("action {}: the server sent no signed order for it; refusing to act", action.action_id));
    };
    let sig = signature(sig_hex).ok_or_else(|| format!("action {}: malformed order signature", action.action_id))?;
    dev.key.verify(text.as_bytes(), &sig).map_err(|_| {
        format!(
            "action {}: the order signature does not verify with the configured public key (tampered, or signed with another key)",
            action.action_id
        )
    })?;
    let order: Order =
        serde_json::from_str(text).map_err(|e| format!("action {}: malformed order: {e}", action.action_id))?;
    if order.device_id != dev.device_id {
        return Err(format!(
            "the signed order is for device {}, this is device {} (replayed from another device?)",
            order.device_id, dev.device_id
        ));
    }
    if order.action_id != asked || action.action_id != asked {
        return Err(format!(
            "the signed order is for action {}, the device asked for action {asked} (replayed?)",
            order.action_id
        ));
    }
    if order.kind != action.kind {
        return Err(format!("action {asked} says {}, its signed order says {} (relabelled?)", action.kind, order.kind));
    }
    if order.version != action.version || order.rollout_id != action.rollout_id {
        return Err(format!(
            "action {asked} asks for version {} of rollout {}, its signed order names version {} of rollout {}",
            action.version, action.rollout_id, order.version, order.rollout_id
        ));
    }
    if dev.now > order.expires_at.saturating_add(dev.clock_skew_secs) {
        return Err(format!(
            "the signed order for action {asked} expired at {} (Unix seconds; now {}, clock skew allowed {} s): held back or replayed",
            order.expires_at, dev.now, dev.clock_skew_secs
        ));
    }
    Ok(order)
}

/// Checks the release of an action whose signed `order` passed [`check_order`].
pub fn check_release(detail: &ActionDetail, order: &Order, dev: &Device<'_>) -> Result<Verified, String> {
    let action = &detail.order;
    let (Some(manifest_text), Some(sig_hex)) = (detail.manifest.as_deref(), action.signature.as_deref()) else {
        return Err(format!("release {} is not signed; refusing to install it", action.version));
    };
    let sig = signature(sig_hex).ok_or_else(|| format!("release {}: malformed signature", action.version))?;
    dev.key.verify(manifest_text.as_bytes(), &sig).map_err(|_| {
        format!(
            "release {}: the manifest signature does not verify with the configured public key (tampered, or signed with another key)",
            action.version
        )
    })?;
    let manifest: Manifest = serde_json::from_str(manifest_text)
        .map_err(|e| format!("release {}: malformed manifest: {e}", action.version))?;
    if manifest.version != order.version {
        return Err(format!(
            "the signed manifest is for version {}, the action asks for {}",
            manifest.version, order.version
        ));
    }
    let sorted = |a: &[ManifestArtifact]| {
        let mut v = a.to_vec();
        v.sort();
        v
    };
    if sorted(&manifest.artifacts) != sorted(&order.artifacts) {
        return Err(format!(
            "the signed order's artifacts for {} are not the signed manifest's (another build of the same version?)",
            manifest.version
        ));
    }
    if !manifest.fits(dev.device_type) {
        return Err(format!(
            "release {} is for device types [{}]; this device is {}",
            manifest.version,
            manifest.compatible.join(", "),
            dev.device_type.unwrap_or("of no declared type")
        ));
    }
    if order.kind == ActionKind::Install {
        if compare_versions(&manifest.version, dev.current_version) == Ordering::Less {
            return Err(format!(
                "refusing to downgrade from {} to {} (only a signed rollback order may go back)",
                dev.current_version, manifest.version
            ));
        }
        if let Some(newest) = dev.newest_version {
            if compare_versions(&manifest.version, newest) == Ordering::Less {
                return Err(format!(
                    "refusing {}: older than {newest}, the newest version this device installed (only a signed rollback order may go back)",
                    manifest.version
                ));
            }
        }
    }
    let mut artifacts = Vec::with_capacity(manifest.artifacts.len());
    for m in &manifest.artifacts {
        if !safe_name(&m.name) {
            return Err(format!("artifact name '{}' is not allowed", m.name));
        }
        let o = action
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
    Ok(Verified { order: order.clone(), manifest, artifacts })
}

/// Both checks: the order for action `asked`, then its release.
pub fn check(detail: &ActionDetail, asked: i64, dev: &Device<'_>) -> Result<Verified, String> {
    let order = check_order(detail, asked, dev)?;
    check_release(detail, &order, dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use otafleet_core::protocol::ActionOrder;
    use otafleet_core::ActionState;

    const NOW: i64 = 1_800_000_000;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn me() -> Uuid {
        Uuid::from_u128(1)
    }

    fn sign(k: &SigningKey, text: &str) -> String {
        hex::encode(k.sign(text.as_bytes()).to_bytes())
    }

    fn artifacts() -> Vec<ManifestArtifact> {
        vec![ManifestArtifact { name: "fw.bin".into(), sha256: "ab".repeat(32), size: 10 }]
    }

    fn order(version: &str, kind: ActionKind) -> Order {
        Order {
            action_id: 1,
            artifacts: artifacts(),
            device_id: me(),
            expires_at: NOW + 3600,
            issued_at: NOW,
            kind,
            rollout_id: 1,
            version: version.into(),
        }
    }

    /// An action detail as the server builds it, with `signed` as its order.
    fn detail_with(version: &str, kind: ActionKind, compatible: &[&str], signed: &Order) -> ActionDetail {
        let sha = "ab".repeat(32);
        let manifest = Manifest {
            artifacts: artifacts(),
            compatible: compatible.iter().map(|s| s.to_string()).collect(),
            kind: "file".into(),
            version: version.into(),
        }
        .canonical();
        let signature = Some(sign(&key(), &manifest));
        let text = signed.canonical();
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
                image: None,
                firmware: None,
                flash_pod_image: None,
                app_spec: None,
            },
            manifest: Some(manifest),
            order_signature: Some(sign(&key(), &text)),
            signed_order: Some(text),
        }
    }

    fn detail(version: &str, kind: ActionKind, compatible: &[&str]) -> ActionDetail {
        detail_with(version, kind, compatible, &order(version, kind))
    }

    fn dev<'a>(key: &'a VerifyingKey, current: &'a str) -> Device<'a> {
        Device {
            key,
            device_id: me(),
            device_type: Some("esp32"),
            current_version: current,
            newest_version: None,
            now: NOW,
            clock_skew_secs: 60,
        }
    }

    #[test]
    fn a_signed_compatible_upgrade_passes() {
        let pk = key().verifying_key();
        let v = check(&detail("2.0.0", ActionKind::Install, &["esp32"]), 1, &dev(&pk, "1.0.0")).unwrap();
        assert_eq!(v.artifacts.len(), 1);
        assert_eq!(v.manifest.version, "2.0.0");
        assert_eq!(v.order.kind, ActionKind::Install);
    }

    #[test]
    fn release_refusals_name_the_reason() {
        let pk = key().verifying_key();
        let d = dev(&pk, "1.0.0");
        let ok = detail("2.0.0", ActionKind::Install, &["esp32"]);

        let mut unsigned = ok.clone();
        unsigned.order.signature = None;
        assert!(check(&unsigned, 1, &d).unwrap_err().contains("not signed"));

        let mut tampered = ok.clone();
        tampered.manifest = tampered.manifest.map(|m| m.replace("\"size\":10", "\"size\":11"));
        assert!(check(&tampered, 1, &d).unwrap_err().contains("manifest signature does not verify"));

        assert!(check(&ok, 1, &Device { device_type: Some("rpi"), ..d }).unwrap_err().contains("device types [esp32]"));
        assert!(check(&ok, 1, &dev(&pk, "3.0.0")).unwrap_err().contains("downgrade"));
        let rollback = detail("2.0.0", ActionKind::Rollback, &["esp32"]);
        assert!(check(&rollback, 1, &dev(&pk, "3.0.0")).is_ok(), "a signed rollback order may go back");

        let mut swapped = ok.clone();
        swapped.order.artifacts[0].sha256 = "cd".repeat(32);
        assert!(check(&swapped, 1, &d).unwrap_err().contains("does not match"));

        // The order and the manifest name different versions or builds.
        let other_version = detail_with("2.0.0", ActionKind::Install, &["esp32"], &order("2.0.1", ActionKind::Install));
        let mut other_version = other_version;
        other_version.order.version = "2.0.1".into();
        assert!(check(&other_version, 1, &d).unwrap_err().contains("manifest is for version 2.0.0"));
        let other_build = Order {
            artifacts: vec![ManifestArtifact { name: "fw.bin".into(), sha256: "ef".repeat(32), size: 10 }],
            ..order("2.0.0", ActionKind::Install)
        };
        let other_build = detail_with("2.0.0", ActionKind::Install, &["esp32"], &other_build);
        assert!(check(&other_build, 1, &d).unwrap_err().contains("artifacts for 2.0.0 are not the signed manifest's"));
    }

    #[test]
    fn an_install_below_the_newest_version_ever_installed_is_refused_unless_a_rollback_names_it() {
        let pk = key().verifying_key();
        // Runs 1.0.0 again (rolled back), but 3.0.0 was installed once.
        let d = Device { newest_version: Some("3.0.0"), ..dev(&pk, "1.0.0") };
        let old = detail("2.0.0", ActionKind::Install, &["esp32"]);
        let err = check(&old, 1, &d).unwrap_err();
        assert!(err.contains("older than 3.0.0, the newest version this device installed"), "{err}");
        assert!(check(&detail("3.0.0", ActionKind::Install, &["esp32"]), 1, &d).is_ok());
        assert!(check(&detail("2.0.0", ActionKind::Rollback, &["esp32"]), 1, &d).is_ok());
    }

    #[test]
    fn order_refusals_name_the_reason() {
        let pk = key().verifying_key();
        let d = dev(&pk, "3.0.0");
        let ok = detail("2.0.0", ActionKind::Rollback, &["esp32"]);
        assert!(check(&ok, 1, &d).is_ok());

        // No order at all (an older server): nothing is done.
        let mut none = ok.clone();
        none.signed_order = None;
        assert!(check(&none, 1, &d).unwrap_err().contains("no signed order"));

        // Signed with another key, or altered after signing.
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        let err = check(&ok, 1, &Device { key: &other, ..d }).unwrap_err();
        assert!(err.contains("order signature does not verify with the configured public key"), "{err}");
        let mut altered = ok.clone();
        altered.signed_order = altered.signed_order.map(|t| t.replace("2.0.0", "2.0.1"));
        assert!(check(&altered, 1, &d).unwrap_err().contains("order signature does not verify"));
        let mut garbled = ok.clone();
        garbled.order_signature = Some("zz".into());
        assert!(check(&garbled, 1, &d).unwrap_err().contains("malformed order signature"));

        // Another device's valid order, replayed here.
        let theirs = detail_with(
            "2.0.0",
            ActionKind::Rollback,
            &["esp32"],
            &Order { device_id: Uuid::from_u128(2), ..order("2.0.0", ActionKind::Rollback) },
        );
        let err = check(&theirs, 1, &d).unwrap_err();
        assert!(err.contains("is for device 00000000-0000-0000-0000-000000000002"), "{err}");

        // An old action's order served for the action asked about.
        let err = check(&ok, 5, &d).unwrap_err();
        assert!(err.contains("is for action 1, the device asked for action 5"), "{err}");

        // An install order relabelled as a rollback (to get past the downgrade check).
        let mut relabelled = detail("2.0.0", ActionKind::Install, &["esp32"]);
        relabelled.order.kind = ActionKind::Rollback;
        let err = check(&relabelled, 1, &d).unwrap_err();
        assert!(err.contains("says rollback, its signed order says install"), "{err}");

        // The action names another version or rollout than its order.
        let mut moved = ok.clone();
        moved.order.rollout_id = 9;
        assert!(check(&moved, 1, &d).unwrap_err().contains("its signed order names version 2.0.0 of rollout 1"));

        // Expired: refused once past expiry and the clock-skew allowance.
        let expired = Order { issued_at: NOW - 7200, expires_at: NOW - 61, ..order("2.0.0", ActionKind::Rollback) };
        let expired = detail_with("2.0.0", ActionKind::Rollback, &["esp32"], &expired);
        let err = check(&expired, 1, &d).unwrap_err();
        assert!(err.contains("expired at 1799999939"), "{err}");
        assert!(check(&expired, 1, &Device { now: NOW - 1, ..d }).is_ok(), "within the skew allowance");
    }

    #[test]
    fn public_keys_parse_or_explain() {
        assert!(parse_public_key(&hex::encode(key().verifying_key().as_bytes())).is_ok());
        assert!(parse_public_key("zz").unwrap_err().to_string().contains("not hex"));
        assert!(parse_public_key("abcd").unwrap_err().to_string().contains("2 bytes"));
    }
}
