//! `/api/v1/telemetry`: what the fleet measures, aggregated.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// `GET /api/v1/telemetry/query` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TelemetryQuery {
    /// The metric, e.g. `cpu_temp_c`.
    pub metric: String,
    /// Label selector of the devices, e.g. `device_type=esp32` (default: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Start, RFC 3339 (default: an hour before `to`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// End, RFC 3339, exclusive (default: now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Width of each point, e.g. `1m`, `1h` (default `1m`): a multiple of a kept resolution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// `count`, `sum`, `avg` (default), `min`, `max`, `last`, `p50`, `p90`, `p95`, `p99` or `pNN.N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agg: Option<String>,
    /// Group by `version` (what the device ran when it measured), `device`,
    /// or a label key (`device_type`, `site`…); default: the whole selection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// One point of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetryPoint {
    /// Start of the step, RFC 3339.
    pub t: String,
    /// The aggregation over the step's samples of the group (null: none).
    pub value: Option<f64>,
    /// Samples merged into it.
    pub samples: u64,
    /// Devices that measured in it.
    pub devices: u64,
}

/// One group's points, oldest first (steps without samples are absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetrySeries {
    /// `{"version": "2.0.0"}`; empty for the whole selection.
    pub group: BTreeMap<String, String>,
    pub points: Vec<TelemetryPoint>,
}

/// The answer to a telemetry query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetryAnswer {
    pub metric: String,
    pub agg: String,
    pub step_secs: u64,
    /// The kept resolution the windows were read at.
    pub resolution_secs: u64,
    pub series: Vec<TelemetrySeries>,
}
