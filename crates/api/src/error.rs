//! The error body of every failed request: `{"error": {"code", "message", "field"?}}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `bad_request`, `invalid`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `too_large`, `internal`.
    pub code: String,
    pub message: String,
    /// The offending request field, when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>, field: Option<String>) -> Self {
        ErrorBody { error: ErrorDetail { code: code.into(), message: message.into(), field } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_body_round_trips_the_wire_shape() {
        let with_field = json!({"error": {"code": "invalid", "message": "must not be empty", "field": "devices"}});
        let b: ErrorBody = serde_json::from_value(with_field.clone()).unwrap();
        assert_eq!(b, ErrorBody::new("invalid", "must not be empty", Some("devices".into())));
        assert_eq!(serde_json::to_value(&b).unwrap(), with_field);

        // Without a field the key is absent, not null.
        let without = json!({"error": {"code": "not_found", "message": "rollout 7 not found"}});
        let b: ErrorBody = serde_json::from_value(without.clone()).unwrap();
        assert_eq!(b.error.field, None);
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"error":{"code":"not_found","message":"rollout 7 not found"}}"#
        );
        assert_eq!(serde_json::to_value(&b).unwrap(), without);
    }
}
