//! `/api/v1/devices`: the device registry.

use otafleet_core::DeviceHealth;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A registered device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Device {
    pub id: Uuid,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub current_version: Option<String>,
    pub previous_version: Option<String>,
    pub desired_version: Option<String>,
    /// `unknown`, `healthy`, `degraded` or `unhealthy`.
    #[schema(value_type = String)]
    pub health: DeviceHealth,
    pub last_seen: Option<String>,
    /// The delegate (cluster agent, gateway) that speaks for the device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate_id: Option<Uuid>,
    /// RFC 3339: when its delegate last found it missing; a gone device is
    /// no rollout's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /api/v1/devices` (and each entry of a bulk registration).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    /// Defaults to a new time-ordered UUID (version 7: registrations append to the
    /// registry's indexes instead of landing on random pages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Defaults to the id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
}

/// A device just registered, with its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisteredDevice {
    #[serde(flatten)]
    pub device: Device,
    /// The device's secret credential for `/device/v1`. Shown only once.
    pub token: String,
}

/// `POST /api/v1/devices/bulk`: all or none, at most 10,000.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRegister {
    pub devices: Vec<RegisterDevice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkRegistered {
    pub devices: Vec<RegisteredDevice>,
}

/// `PATCH /api/v1/devices/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDevice {
    /// Labels to set; a `null` value removes the label.
    #[serde(default)]
    pub labels: BTreeMap<String, Option<String>>,
}

/// `GET /api/v1/devices` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeviceListQuery {
    /// Label selector, e.g. `device_type=esp32,site in (a,b)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Cursor: the `next` value of the previous page (id order only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Uuid>,
    /// Free text: devices whose name or id contains it (any case).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Order: `id` (default), `name`, `last_seen`, `current_version`,
    /// `health` or `created_at`; a leading `-` for descending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort: Option<String>,
    /// Devices to skip, 0 to 1,000,000: pages of a sorted list (`next` is
    /// the offset of the next page there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}
