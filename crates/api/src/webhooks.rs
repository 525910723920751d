//! `/api/v1/webhooks`: HTTP callbacks for events, and their delivery log.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /api/v1/webhooks` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed: an `http://` or `https://` URL.
    pub url: String,
    /// Which events: kinds (`action.failed`), groups (`rollout.*`) or `*`.
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Deliveries of one webhook by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryCounts {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
}

/// A webhook (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub created_at: String,
    pub created_by: String,
    /// Events up to this id happened before the webhook existed and are not delivered to it.
    pub after_event_id: i64,
    pub deliveries: DeliveryCounts,
}

/// A webhook as created: with the signing secret, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhook {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub created_at: String,
    /// The HMAC-SHA256 key of the `Otafleet-Signature` header
    /// (`t=<unix seconds>,v1=<hex HMAC(secret, "<t>.<body>")>`).
    pub secret: String,
}

/// One event's delivery to one webhook, with its last attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// Sent as `Otafleet-Delivery`, the same on every attempt.
    pub id: i64,
    pub webhook_id: i64,
    pub event_id: i64,
    pub event_kind: String,
    /// `pending` (waiting for its next attempt), `delivered` (a 2xx answer) or
    /// `failed` (given up after the last attempt).
    pub state: String,
    pub attempts: i64,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    /// The receiver's HTTP status on the last attempt; null if it did not answer.
    pub last_status: Option<i64>,
    /// Why the last attempt failed (connection refused, timeout, HTTP 500, …).
    pub last_error: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

/// `GET /api/v1/webhooks/{id}/deliveries` query: newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryListQuery {
    /// `pending`, `delivered` or `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Cursor: deliveries with a smaller id (the `next` of the previous page).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}
