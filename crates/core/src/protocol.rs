//! The device protocol's wire types, shared by the server, the agent and the
//! simulated fleet so that the protocol is written down exactly once.
//! With the `openapi` feature (the server's), they derive `utoipa::ToSchema`
//! for the OpenAPI document; the states are described as strings.

use crate::model::{ActionKind, ActionState, DeviceHealth, RolloutKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /device/v1/checkin` body. The device is identified by its token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckinRequest {
    /// The version actually running: the registry takes this as the truth.
    pub current_version: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub health: Option<DeviceHealth>,
}

/// `POST /device/v1/checkin` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckinResponse {
    pub device_id: Uuid,
    /// The action to perform now, if any.
    pub action: Option<ActionOrder>,
    /// When to check in next if nothing is pushed.
    pub poll_after_secs: u64,
}

/// An artifact of a release as a device needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactRef {
    pub name: String,
    pub uri: String,
    pub size: u64,
    pub sha256: String,
}

/// The work handed to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionOrder {
    pub action_id: i64,
    pub rollout_id: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: ActionKind,
    /// Version to install (for a rollback: the version to go back to).
    pub version: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: ActionState,
    /// Highest sequence number the server accepted for this action; continue above it.
    pub last_seq: i64,
    pub artifacts: Vec<ArtifactRef>,
    /// Detached ed25519 signature of the release manifest, hex, if signed.
    pub signature: Option<String>,
    /// What a delegate applies (the release's, see `releases.image`): the
    /// container image of a `container` release…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// …or the firmware image of a `firmware` release for FlashJob boards,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// and the image of the pod that flashes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash_pod_image: Option<String>,
    /// An `app` release's ROS application spec, which a cluster agent renders and applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub app_spec: Option<serde_json::Value>,
}

/// `POST /device/v1/status` body. Idempotent by `(action_id, seq)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusReport {
    pub action_id: i64,
    /// Strictly increasing per action; duplicates and stale reports are ignored.
    pub seq: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: ActionState,
    pub message: Option<String>,
    /// The version running after this step, if the device knows it.
    pub current_version: Option<String>,
}

/// What the server did with a status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusAck {
    pub action_id: i64,
    /// `applied`, `duplicate` (seq already seen) or `ignored` (not a legal move now).
    pub outcome: String,
    /// The action's state after the report.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: ActionState,
}

/// `POST /device/v1/telemetry` body (and the payload of an MQTT message on
/// `otafleet/<device-id>/telemetry`): a batch of the device's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TelemetryBatch {
    /// 1 to `telemetry::MAX_BATCH` samples.
    pub samples: Vec<crate::telemetry::Sample>,
}

/// What the server took of a telemetry batch (all of it, or none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TelemetryAccepted {
    pub accepted: usize,
}

/// `GET /device/v1/actions/{id}`: one of the device's own actions, with the
/// signed release manifest and the signed order the agent verifies before
/// doing anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionDetail {
    #[serde(flatten)]
    pub order: ActionOrder,
    /// [`Manifest::canonical`] of the release: exactly the bytes that `signature` signs.
    #[serde(default)]
    pub manifest: Option<String>,
    /// [`Order::canonical`] of this device's order: exactly the bytes that
    /// `order_signature` signs. Absent from servers older than signed orders
    /// (and without a signing key); current agents refuse such actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_order: Option<String>,
    /// Detached ed25519 signature of `signed_order`, hex, with the key that
    /// signs release manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_signature: Option<String>,
}

/// One device's order, signed by the server besides the release manifest
/// (after Uptane's *director* role): the manifest says what a release is, the
/// order says that *this* device is to install it (or roll back to it) in
/// *this* action, until when. An agent acts only on an order that names its
/// own device id and the action it asked for, has not expired, and whose
/// kind, version and artifacts are those of the action and the manifest; it
/// goes below the newest version it ever installed only on a `rollback`
/// order naming that version. Times are Unix seconds (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Order {
    // Fields in alphabetical order: canonical JSON, as for [`Manifest`].
    pub action_id: i64,
    /// The release's artifacts (name, sha256, size), exactly as in its manifest.
    pub artifacts: Vec<ManifestArtifact>,
    pub device_id: Uuid,
    /// Unix seconds after which the device refuses the order (issue time + the server's `--order-ttl`).
    pub expires_at: i64,
    /// Unix seconds when the server signed the order.
    pub issued_at: i64,
    /// `install`, or `rollback`: the only kind that may go back to an older version.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: ActionKind,
    pub rollout_id: i64,
    /// The version to install, or to go back to.
    pub version: String,
}

impl Order {
    /// Canonical JSON: sorted keys, artifacts sorted, no whitespace.
    pub fn canonical(&self) -> String {
        let mut o = self.clone();
        o.artifacts.sort();
        // Plain strings, integers and a UUID cannot fail to serialize.
        serde_json::to_string(&o).unwrap_or_default()
    }
}

/// The kind of order a device gets for an action of a rollout: an action
/// that goes back — one of the engine's rollback actions, or any action of a
/// rollback rollout (the tracker's `/ota/rollback`, `otafleet rollback`,
/// whose waves are planned like a deploy's) — is a `rollback` order, which
/// an agent carries out even when it lowers the version.
pub fn order_kind(action: ActionKind, rollout: RolloutKind) -> ActionKind {
    match rollout {
        RolloutKind::Rollback => ActionKind::Rollback,
        RolloutKind::Deploy => action,
    }
}

/// The signed description of a release. The server signs its canonical JSON
/// with ed25519; an agent installs only artifacts whose name, size and sha256
/// appear in a manifest that verifies against its configured public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Manifest {
    // Fields in alphabetical order: serde_json writes them in declaration
    // order, so the compact output has sorted keys (canonical JSON).
    pub artifacts: Vec<ManifestArtifact>,
    /// Device types (`device_type` label values) the release fits; empty = all.
    pub compatible: Vec<String>,
    /// Release kind (`firmware`, `file`, `command`, …): picks the install handler.
    pub kind: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ManifestArtifact {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

impl Manifest {
    /// Canonical JSON: sorted keys, artifacts sorted by name, compatible types
    /// sorted and deduplicated, no whitespace. Same release → same bytes.
    pub fn canonical(&self) -> String {
        let mut m = self.clone();
        m.artifacts.sort();
        m.compatible.sort();
        m.compatible.dedup();
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(&m).unwrap_or_default()
    }

    /// Whether a device of this type may install the release.
    pub fn fits(&self, device_type: Option<&str>) -> bool {
        self.compatible.is_empty() || device_type.is_some_and(|t| self.compatible.iter().any(|c| c == t))
    }
}

/// `POST /device/v1/enroll` body; the bearer token is an enrollment token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Defaults to the new device id.
    pub name: Option<String>,
    pub current_version: Option<String>,
    /// Proposed labels; the enrollment token's labels override them.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `POST /device/v1/enroll` answer: the device's identity and its own secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub device_id: Uuid,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The device token for `/device/v1`. Shown only once.
    pub token: String,
}

/// MQTT topic on which the server pushes commands to one device (when the
/// server runs with `--mqtt-url`); any message there means "check in now".
pub fn command_topic(device_id: &Uuid) -> String {
    format!("otafleet/{device_id}/cmd")
}

/// MQTT topic on which a device may publish its telemetry (when the server
/// runs with `--mqtt-url`): an [`MqttTelemetry`].
pub fn telemetry_topic(device_id: &Uuid) -> String {
    format!("otafleet/{device_id}/telemetry")
}

/// MQTT topic on which the server answers each message on
/// [`telemetry_topic`]: a [`TelemetryAccepted`], or the error body the
/// HTTP endpoint would have answered (`{"error":{"code","message","field"}}`).
pub fn telemetry_ack_topic(device_id: &Uuid) -> String {
    format!("otafleet/{device_id}/telemetry/ack")
}

/// What the servers subscribe to for telemetry: a shared subscription, so
/// with several replicas each message is taken by one of them.
pub const TELEMETRY_SUBSCRIPTION: &str = "$share/otafleet/otafleet/+/telemetry";

/// The device a [`telemetry_topic`] names, if `topic` is one.
pub fn device_of_telemetry_topic(topic: &str) -> Option<Uuid> {
    let id = topic.strip_prefix("otafleet/")?.strip_suffix("/telemetry")?;
    // Only the canonical hyphenated form, so a topic names one device one way.
    let uuid: Uuid = id.parse().ok()?;
    (uuid.hyphenated().to_string() == id).then_some(uuid)
}

/// The payload of a message on [`telemetry_topic`]. A broker authenticates
/// connections, not messages, so the message carries the device token that
/// proves it is the device's; the broker's ACL should let a device publish
/// only to its own topic and let only the servers subscribe to telemetry
/// (a message's token is visible to whoever may read the topic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTelemetry {
    /// The device token, as in `Authorization: Bearer` over HTTP.
    pub token: String,
    /// As in [`TelemetryBatch`].
    pub samples: Vec<crate::telemetry::Sample>,
}

/// The payload of a push on [`command_topic`].
pub const CHECKIN_COMMAND: &str = r#"{"cmd":"checkin"}"#;

/// A broker address, parsed from `mqtt://host[:port]` (or `tcp://`, plain
/// TCP, port 1883 by default) or `mqtts://host[:port]` (or `ssl://`, TLS,
/// port 8883 by default). Used by the server's publisher and the agent's
/// subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub host: String,
    pub port: u16,
    /// The connection is TLS (`mqtts://`).
    pub tls: bool,
}

impl std::fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Parses a broker address ([`MqttUrl`]); the error says what is wrong.
pub fn parse_mqtt_url(url: &str) -> Result<MqttUrl, String> {
    const USE: &str = "use mqtt://host:port or mqtts://host:port";
    let (rest, tls) = match url.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => (rest, false),
        Some(("mqtts" | "ssl", rest)) => (rest, true),
        Some((scheme, _)) => return Err(format!("unsupported MQTT URL scheme '{scheme}' in '{url}': {USE}")),
        None => return Err(format!("'{url}' is not an MQTT URL: {USE}")),
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') || hostport.contains('@') {
        return Err(format!("'{url}' is not an MQTT URL: {USE} (no path, no credentials)"));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !hostport.ends_with(']') => {
            (h, p.parse::<u16>().map_err(|_| format!("bad port '{p}' in MQTT URL '{url}'"))?)
        }
        _ => (hostport, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("'{url}' names no host: {USE}"));
    }
    Ok(MqttUrl { host: host.to_string(), port, tls })
}

/// Orders two version strings: numeric runs compare as numbers, other runs as
/// text, a pre-release suffix (`-rc1`) sorts before the release
/// (`1.10.0 > 1.9.0`, `2.0.0-rc1 < 2.0.0`). Used to refuse downgrades.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn split(v: &str) -> (&str, Option<&str>) {
        let v = v.trim_start_matches(['v', 'V']);
        let v = v.split('+').next().unwrap_or(v);
        match v.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (v, None),
        }
    }
    /// Runs of digits and runs of other characters (`rc10` → `rc`, `10`).
    fn parts(s: &str) -> Vec<Result<u64, &str>> {
        let mut out = Vec::new();
        for field in s.split(['.', '-', '_']).filter(|p| !p.is_empty()) {
            let mut start = 0;
            let b = field.as_bytes();
            for i in 1..=b.len() {
                if i == b.len() || b[i].is_ascii_digit() != b[start].is_ascii_digit() {
                    let run = &field[start..i];
                    out.push(run.parse::<u64>().map_err(|_| run));
                    start = i;
                }
            }
        }
        out
    }
    fn cmp_parts(a: &[Result<u64, &str>], b: &[Result<u64, &str>]) -> Ordering {
        for i in 0..a.len().max(b.len()) {
            let o = match (a.get(i), b.get(i)) {
                (Some(Ok(x)), Some(Ok(y))) => x.cmp(y),
                (Some(Ok(_)), Some(Err(_))) => Ordering::Greater,
                (Some(Err(_)), Some(Ok(_))) => Ordering::Less,
                (Some(Err(x)), Some(Err(y))) => x.cmp(y),
                (Some(Ok(0)), None) | (None, Some(Ok(0))) => Ordering::Equal,
                (Some(_), None) => Ordering::Greater,
                (None, Some(_)) => Ordering::Less,
                (None, None) => Ordering::Equal,
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
    let ((ca, pa), (cb, pb)) = (split(a), split(b));
    match cmp_parts(&parts(ca), &parts(cb)) {
        Ordering::Equal => match (pa, pb) {
            (None, None) => Ordering::Equal,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => cmp_parts(&parts(x), &parts(y)),
        },
        o => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_compare_numerically_with_prereleases_first() {
        assert_eq!(compare_versions("1.10.0", "1.9.0"), Greater);
        assert_eq!(compare_versions("2.0.0-rc1", "2.0.0"), Less);
        assert_eq!(compare_versions("2.0.0-rc2", "2.0.0-rc10"), Less);
        assert_eq!(compare_versions("v1.2", "1.2.0"), Equal);
        assert_eq!(compare_versions("1.0.0", "1.0.1"), Less);
        assert_eq!(compare_versions("2024.1", "2023.12"), Greater);
    }

    #[test]
    fn telemetry_topics_name_one_device_one_way() {
        let id = Uuid::from_u128(0xabcd_ef01_2345_6789_abcd_ef01_2345_6789);
        assert_eq!(device_of_telemetry_topic(&telemetry_topic(&id)), Some(id));
        assert_eq!(telemetry_ack_topic(&id), format!("otafleet/{id}/telemetry/ack"));
        assert!(TELEMETRY_SUBSCRIPTION.ends_with("otafleet/+/telemetry"));
        for bad in [
            "otafleet/not-a-uuid/telemetry".to_string(),
            format!("otafleet/{}/telemetry", id.simple()),
            format!("otafleet/{}/telemetry", id.to_string().to_uppercase()),
            telemetry_ack_topic(&id),
            command_topic(&id),
            format!("other/{id}/telemetry"),
        ] {
            assert_eq!(device_of_telemetry_topic(&bad), None, "{bad}");
        }
        let m: MqttTelemetry = serde_json::from_str(r#"{"token":"t","samples":[{"metric":"a","value":1}]}"#).unwrap();
        assert_eq!((m.token.as_str(), m.samples.len()), ("t", 1));
        assert!(serde_json::from_str::<MqttTelemetry>(r#"{"token":"t","samples":[],"x":1}"#).is_err());
    }

    #[test]
    fn mqtt_urls_parse_or_say_why_not() {
        let u = |h: &str, port, tls| MqttUrl { host: h.into(), port, tls };
        assert_eq!(parse_mqtt_url("mqtt://127.0.0.1:1883").unwrap(), u("127.0.0.1", 1883, false));
        assert_eq!(parse_mqtt_url("tcp://broker/").unwrap(), u("broker", 1883, false));
        assert_eq!(parse_mqtt_url("mqtt://[::1]:1884").unwrap(), u("::1", 1884, false));
        assert_eq!(parse_mqtt_url("mqtt://[::1]").unwrap(), u("::1", 1883, false));
        assert_eq!(parse_mqtt_url("mqtts://broker").unwrap(), u("broker", 8883, true));
        assert_eq!(parse_mqtt_url("ssl://broker:9000").unwrap(), u("broker", 9000, true));
        assert_eq!(parse_mqtt_url("mqtts://[::1]:8884").unwrap().to_string(), "mqtts://[::1]:8884");
        assert_eq!(parse_mqtt_url("tcp://b").unwrap().to_string(), "mqtt://b:1883");
        assert!(parse_mqtt_url("ws://x").unwrap_err().contains("unsupported"));
        assert!(parse_mqtt_url("x:1883").unwrap_err().contains("not an MQTT URL"));
        assert!(parse_mqtt_url("mqtt://h:port").unwrap_err().contains("bad port"));
        assert!(parse_mqtt_url("mqtt://:1883").unwrap_err().contains("no host"));
        assert!(parse_mqtt_url("mqtt://u:p@h").is_err());
    }

    #[test]
    fn manifest_is_canonical_and_checks_device_type() {
        let a = |n: &str| ManifestArtifact { name: n.into(), sha256: "ab".repeat(32), size: 3 };
        let m1 = Manifest {
            artifacts: vec![a("b"), a("a")],
            compatible: vec!["x".into(), "esp32".into(), "x".into()],
            kind: "file".into(),
            version: "2.0.0".into(),
        };
        let mut m2 = m1.clone();
        m2.artifacts.reverse();
        assert_eq!(m1.canonical(), m2.canonical());
        assert!(m1.canonical().starts_with(r#"{"artifacts":[{"name":"a","sha256":"#));
        assert!(m1.canonical().contains(r#""compatible":["esp32","x"],"kind":"file","version":"2.0.0"}"#));
        assert!(m1.fits(Some("esp32")) && !m1.fits(Some("rpi")) && !m1.fits(None));
        assert!(Manifest { compatible: vec![], ..m1 }.fits(None));
    }

    #[test]
    fn order_is_canonical_and_rollback_rollouts_order_rollbacks() {
        let a = |n: &str| ManifestArtifact { name: n.into(), sha256: "ab".repeat(32), size: 3 };
        let o = Order {
            action_id: 7,
            artifacts: vec![a("b"), a("a")],
            device_id: Uuid::nil(),
            expires_at: 3600,
            issued_at: 0,
            kind: ActionKind::Rollback,
            rollout_id: 2,
            version: "1.0.0".into(),
        };
        let mut o2 = o.clone();
        o2.artifacts.reverse();
        assert_eq!(o.canonical(), o2.canonical());
        let c = o.canonical();
        assert!(c.starts_with(r#"{"action_id":7,"artifacts":[{"name":"a","#), "{c}");
        assert!(
            c.ends_with(r#""device_id":"00000000-0000-0000-0000-000000000000","expires_at":3600,"issued_at":0,"kind":"rollback","rollout_id":2,"version":"1.0.0"}"#),
            "{c}"
        );
        assert_eq!(serde_json::from_str::<Order>(&c).unwrap().canonical(), c);
        assert_eq!(order_kind(ActionKind::Install, RolloutKind::Deploy), ActionKind::Install);
        assert_eq!(order_kind(ActionKind::Rollback, RolloutKind::Deploy), ActionKind::Rollback);
        assert_eq!(order_kind(ActionKind::Install, RolloutKind::Rollback), ActionKind::Rollback);
    }
}

/// Most devices one delegate request may carry (inventory, check-in, status).
pub const DELEGATE_MAX_BATCH: usize = 10_000;

/// One device as its delegate finds it (`PUT /delegate/v1/inventory`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InventoryEntry {
    /// Stable id the delegate derives (a cluster agent: from cluster, kind,
    /// namespace and name; a board: its Akri Instance's uid).
    pub device_id: Uuid,
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Recorded when the device is first seen; afterwards check-ins say.
    #[serde(default)]
    pub current_version: Option<String>,
}

/// `PUT /delegate/v1/inventory`: everything the delegate speaks for, complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub devices: Vec<InventoryEntry>,
}

/// What an inventory changed in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InventoryAck {
    pub registered: u64,
    pub updated: u64,
    pub returned: u64,
    pub unchanged: u64,
    /// The delegate's devices it did not list: marked gone.
    pub gone: Vec<Uuid>,
}

/// One device's check-in inside a delegate's batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DelegateCheckinEntry {
    pub device_id: Uuid,
    /// The version actually running: the registry takes this as the truth.
    #[serde(default)]
    pub current_version: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub health: Option<DeviceHealth>,
}

/// `POST /delegate/v1/checkin`: many devices' check-ins in one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DelegateCheckin {
    pub devices: Vec<DelegateCheckinEntry>,
}

/// A device's action in a delegate's check-in answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DelegateAction {
    pub device_id: Uuid,
    pub action: ActionOrder,
}

/// `POST /delegate/v1/checkin` answer: the actions of the devices that have one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DelegateCheckinResponse {
    pub actions: Vec<DelegateAction>,
    pub poll_after_secs: u64,
}

/// One device's status report inside a delegate's batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DelegateReport {
    pub device_id: Uuid,
    pub report: StatusReport,
}

/// `POST /delegate/v1/status`: many reports in one request, applied in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DelegateStatus {
    pub reports: Vec<DelegateReport>,
}

/// What the server did with one report of a delegate's batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DelegateReportAck {
    pub device_id: Uuid,
    pub action_id: i64,
    /// `applied`, `duplicate`, `ignored` (as for a device's own report) or
    /// `refused` (see `error`; nothing was applied for it).
    pub outcome: String,
    /// The action's state after the report (absent when refused).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub state: Option<ActionState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /delegate/v1/status` answer: one ack per report, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DelegateStatusAck {
    pub acks: Vec<DelegateReportAck>,
}
