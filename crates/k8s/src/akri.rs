//! The slice of Akri's `Instance` resource (`akri.sh/v0`) the operator reads.
//!
//! Akri discovers a device and records it as an `Instance`; its `metadata.uid` is
//! the device UUID a FlashJob names, and its `spec.brokerProperties` carry the
//! connection details the flasher pod needs. Only the fields used here are typed;
//! unknown fields are ignored so newer Akri versions keep working. The CRD itself
//! belongs to Akri, so no schema is generated.

use std::collections::BTreeMap;

use kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};

/// Broker property holding the address the flasher talks to.
pub const HOST_ENDPOINT: &str = "HOST_ENDPOINT";
/// Broker property holding the device model, e.g. `esp32`.
pub const DEVICE: &str = "DEVICE";
/// Broker property holding the application running on the device, e.g. `thermo`.
pub const APPLICATION_TYPE: &str = "APPLICATION_TYPE";

/// Spec of an Akri `Instance`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(group = "akri.sh", version = "v0", kind = "Instance", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct InstanceSpec {
    /// Name of the Akri `Configuration` that discovered the device.
    #[serde(default)]
    pub configuration_name: String,
    /// Connection details published by the discovery handler.
    #[serde(default)]
    pub broker_properties: BTreeMap<String, String>,
    /// Whether several nodes can reach the device.
    #[serde(default)]
    pub shared: bool,
    /// Nodes that can reach the device.
    #[serde(default)]
    pub nodes: Vec<String>,
}

impl Instance {
    /// The device UUID (`metadata.uid`), empty if the server did not assign one.
    pub fn device_uuid(&self) -> &str {
        self.metadata.uid.as_deref().unwrap_or_default()
    }

    /// A broker property, if present.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.spec.broker_properties.get(key).map(String::as_str)
    }

    /// Whether this instance is the given device model and application.
    pub fn matches(&self, device: &str, application_type: &str) -> bool {
        self.property(DEVICE) == Some(device) && self.property(APPLICATION_TYPE) == Some(application_type)
    }

    /// `namespace/name`, for messages.
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.namespace().unwrap_or_default(), self.name_any())
    }
}
