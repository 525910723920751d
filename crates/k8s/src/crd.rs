//! The `FlashJob` custom resource, generated from Rust types.
//!
//! The wire format is fixed by the Go operator that predates this crate: every
//! FlashJob manifest written for it must deserialize here unchanged, which is why
//! a few field names (`externalIP`, `completedUUIDs`) do not follow plain
//! camelCase and why every optional spec field accepts an explicit `null`.
//! The CRD YAML under `deploy/operator/` is rendered by [`crd_yaml`]; a test keeps
//! the checked-in copy equal to the generated one.

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the FlashJob CRD (kept from the Go operator).
pub const GROUP: &str = "application.flashjob.nbfc.io";
/// Served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Desired state of a FlashJob: flash `firmware` at `version` onto every device in `uuid`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "application.flashjob.nbfc.io",
    version = "v1alpha1",
    kind = "FlashJob",
    namespaced,
    status = "FlashJobStatus",
    shortname = "fj",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Firmware","type":"string","jsonPath":".spec.firmware"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FlashJobSpec {
    /// Akri `Instance` UIDs (`metadata.uid`) of the devices to flash.
    pub uuid: Vec<String>,
    /// Firmware image reference handed to the flasher pod as `FIRMWARE`.
    pub firmware: String,
    /// Firmware version handed to the flasher pod as `VERSION`.
    pub version: String,
    /// Overrides the device's `HOST_ENDPOINT` broker property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_endpoint: Option<String>,
    /// Overrides the device's `DEVICE` broker property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Overrides the device's `APPLICATION_TYPE` broker property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_type: Option<String>,
    /// Address the device reaches the flasher at; also set as the Service's external IP.
    #[serde(default, rename = "externalIP", skip_serializing_if = "Option::is_none")]
    pub external_ip: Option<String>,
    /// Image of the flasher pod; the operator's default is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flashjob_pod_image: Option<String>,
}

/// Lifecycle phase of a FlashJob.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Flasher pods are being created or are running.
    InProgress,
    /// Every device in the spec was flashed.
    Completed,
    /// A device failed to flash, or the spec names unknown devices.
    Failed,
}

impl Phase {
    /// Completed and Failed are final: the controller never leaves them.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::InProgress => "InProgress",
            Phase::Completed => "Completed",
            Phase::Failed => "Failed",
        })
    }
}

/// A standard Kubernetes condition (`metav1.Condition`), declared here so that the
/// schema is generated without enabling k8s-openapi's schemars support.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Complete`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason in PascalCase.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time the status last changed.
    pub last_transition_time: String,
    /// `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Observed state of a FlashJob, written only through the status subresource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlashJobStatus {
    /// Standard conditions: `Progressing`, `Complete`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Human-readable summary of the last reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Host endpoint of the (first) device being flashed, as the Go operator reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_endpoint: Option<String>,
    /// Current phase; absent until the first reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "phase_schema")]
    pub phase: Option<Phase>,
    /// Devices flashed successfully, in spec order.
    #[serde(default, rename = "completedUUIDs", skip_serializing_if = "Vec::is_empty")]
    pub completed_uuids: Vec<String>,
}

/// `Option<Phase>` as a structural schema: schemars' default (`anyOf` with a
/// `null` branch) is rejected by the API server.
fn phase_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Current phase; absent until the first reconcile.",
        "type": "string",
        "enum": ["InProgress", "Completed", "Failed"],
        "nullable": true,
    })
}

/// The CRD object for `FlashJob`.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    FlashJob::crd()
}

/// The CRD rendered as YAML, exactly as checked in under `deploy/operator/crd.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&crd())?;
    Ok(format!("# Generated by `otafleet operator crd` from crates/k8s/src/crd.rs. Do not edit.\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GO_FIXTURE: &str = r#"
apiVersion: application.flashjob.nbfc.io/v1alpha1
kind: FlashJob
metadata: {name: flash-thermo, namespace: default}
spec:
  uuid: ["7d7ae2b1-0000-4000-8000-000000000001"]
  firmware: "registry.example/esp32-thermo:1.2.0"
  version: "1.2.0"
  hostEndpoint: null
  device: esp32
  applicationType: thermo
  externalIP: null
  flashjobPodImage: "registry.example/flasher:latest"
"#;

    #[test]
    fn go_operator_manifest_deserializes_unchanged() {
        let job: FlashJob = serde_yaml::from_str(GO_FIXTURE).expect("fixture parses");
        assert_eq!(job.metadata.name.as_deref(), Some("flash-thermo"));
        assert_eq!(job.spec.uuid, vec!["7d7ae2b1-0000-4000-8000-000000000001"]);
        assert_eq!(job.spec.firmware, "registry.example/esp32-thermo:1.2.0");
        assert_eq!(job.spec.version, "1.2.0");
        assert_eq!(job.spec.host_endpoint, None);
        assert_eq!(job.spec.device.as_deref(), Some("esp32"));
        assert_eq!(job.spec.application_type.as_deref(), Some("thermo"));
        assert_eq!(job.spec.external_ip, None);
        assert_eq!(job.spec.flashjob_pod_image.as_deref(), Some("registry.example/flasher:latest"));
    }

    #[test]
    fn status_uses_go_field_names() {
        let status = FlashJobStatus {
            phase: Some(Phase::Completed),
            completed_uuids: vec!["a".into()],
            host_endpoint: Some("h:1".into()),
            ..Default::default()
        };
        let v = serde_json::to_value(&status).expect("serializes");
        assert_eq!(v["completedUUIDs"], serde_json::json!(["a"]));
        assert_eq!(v["phase"], "Completed");
        assert_eq!(v["hostEndpoint"], "h:1");
        let spec: FlashJobSpec = serde_json::from_value(serde_json::json!({
            "uuid": [], "firmware": "f", "version": "v", "externalIP": "10.0.0.1"
        }))
        .expect("spec parses");
        assert_eq!(spec.external_ip.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn crd_schema_is_namespaced_with_status_and_nullable_optionals() {
        let crd = serde_json::to_value(crd()).expect("serializes");
        assert_eq!(crd["metadata"]["name"], "flashjobs.application.flashjob.nbfc.io");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let required: Vec<&str> =
            spec["required"].as_array().expect("required list").iter().filter_map(|v| v.as_str()).collect();
        assert_eq!(required, vec!["firmware", "uuid", "version"]);
        for field in ["hostEndpoint", "device", "applicationType", "externalIP", "flashjobPodImage"] {
            assert_eq!(spec["properties"][field]["nullable"], true, "{field}");
        }
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"];
        assert!(status["properties"]["completedUUIDs"].is_object());
        assert_eq!(status["properties"]["phase"]["enum"], serde_json::json!(["InProgress", "Completed", "Failed"]));
    }
}
