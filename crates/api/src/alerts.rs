//! `/api/v1/alerts`: threshold and no-data alert rules over telemetry, and
//! the alerts they raise. The history of an alert is its `alert.*` events.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// `POST /api/v1/alerts/rules` body: fire when `agg(metric)` over the last
/// `window_secs` is `op threshold` for `for_secs`, on each device the
/// selector matches (`scope: per_device`) or on them as a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAlertRule {
    /// 1 to 63 letters, digits, `.`, `_`, `-`; unique. Default: made from
    /// the metric, aggregation, comparison and threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The devices the rule watches (default: every device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    pub metric: String,
    /// `avg`, `min`, `max`, `sum`, `count`, `last`, `p50`…`p99`.
    pub agg: String,
    pub window_secs: u64,
    /// `>`, `>=`, `<` or `<=`.
    pub op: String,
    pub threshold: f64,
    /// Hysteresis: a firing alert resolves once the value is back past this
    /// (at most the threshold for `>`/`>=`, at least for `<`/`<=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// How long the condition must hold before the alert fires (default 0: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_secs: Option<u64>,
    /// `info`, `warning` (default) or `critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// `per_device` (default) or `group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Fire also when a device (or the group) sent no sample of the metric for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data_secs: Option<u64>,
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertRule {
    pub id: i64,
    pub name: String,
    pub selector: String,
    pub metric: String,
    pub agg: String,
    pub window_secs: u64,
    pub op: String,
    pub threshold: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    pub for_secs: u64,
    pub severity: String,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data_secs: Option<u64>,
    pub created_by: String,
    pub created_at: String,
}

/// An alert that is pending or firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    pub rule_id: i64,
    pub rule: String,
    pub severity: String,
    /// The device, for a per-device alert (none for a group's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<Uuid>,
    /// `pending` or `firing`.
    pub state: String,
    /// Since when it is pending, or firing.
    pub since: String,
    /// `threshold` or `no_data`, for a firing alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The rule's aggregation when the alert last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// `GET /api/v1/alerts` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertListQuery {
    /// `firing` or `pending` (default: both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only this rule's alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<i64>,
}
