//! `/api/v1/rollouts`: create, inspect and steer rollouts.

use otafleet_core::{ActionKind, ActionState, Preset, RolloutKind, RolloutState, Strategy, StrategySpec};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Which devices a rollout was created for: `{"selector": "…"}` or `{"devices": [uuid…]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutTarget {
    /// A label selector, resolved when the rollout is created (empty: the whole fleet).
    Selector(String),
    /// An explicit list of device ids.
    Devices(Vec<Uuid>),
}

/// Counts of one wave of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WaveProgress {
    pub wave: i64,
    pub total: i64,
    pub scheduled: i64,
    pub in_flight: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub rollbacks: i64,
    pub rolled_back: i64,
}

/// A rollout as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    pub id: i64,
    pub release_id: i64,
    pub version: String,
    /// `deploy` or `rollback`.
    #[schema(value_type = String)]
    pub kind: RolloutKind,
    /// The preset asked for: `canary`, `blue`, `green` or `custom`.
    #[schema(value_type = String)]
    pub preset: Preset,
    /// The same preset under the original tracker's word; kept for existing clients.
    #[schema(value_type = String)]
    pub wave: Preset,
    pub target: RolloutTarget,
    /// The resolved strategy (defaults filled in).
    #[schema(value_type = Object)]
    pub strategy: Strategy,
    /// `pending`, `running`, `paused`, `succeeded`, `failed`, `aborted` or `rolled_back`.
    #[schema(value_type = String)]
    pub state: RolloutState,
    pub current_wave: i64,
    pub waves: i64,
    pub start_at: Option<String>,
    pub gate_passed_at: Option<String>,
    pub promote: bool,
    pub rollback_requested: bool,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    /// Per-wave counts (on single-rollout answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Vec<WaveProgress>>,
    /// The current wave's analysis checks, in the strategy's order (none
    /// without analysis). Each measurement is a `rollout.analysis` event with
    /// its numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<AnalysisCheck>,
}

/// Where one analysis check of the current wave stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnalysisCheck {
    pub name: String,
    /// `metric`, `no_firing_alerts` or `prometheus`.
    pub kind: String,
    /// What the check requires, in words: `p95 of cpu_temp_c over 60 s <= 1.1 × baseline`.
    pub condition: String,
    /// `waiting` (the wave's gate has not passed), `running`, `succeeded`,
    /// `failed`, `inconclusive`, `not_applicable` (a check relative to the
    /// baseline on a last wave of 100%, which leaves no baseline), or
    /// `cancelled` (the rollout ended before the check concluded).
    pub verdict: String,
    pub passed: u32,
    pub failed: u32,
    pub inconclusive: u32,
    /// When the next measurement is due (while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<String>,
    /// Why the latest measurement that was not a pass was not, with its numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem: Option<String>,
    /// The latest measurement's numbers, whatever its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<AnalysisMeasurement>,
}

/// What one measurement of a check found (`null` where it does not apply,
/// or for a value that is not a finite number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnalysisMeasurement {
    /// The wave's value (or the query's).
    pub observed: Option<f64>,
    /// What it was compared with: the threshold, or factor × baseline.
    pub threshold: Option<f64>,
    /// The baseline's value, for a check relative to it.
    pub baseline: Option<f64>,
    /// Samples and devices of the wave that went into `observed`.
    pub samples: Option<u64>,
    pub devices: Option<u64>,
    /// The measurement in words, with its outcome.
    pub reason: String,
}

/// One device's part in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Action {
    pub id: i64,
    pub rollout_id: i64,
    pub device_id: Uuid,
    pub wave: i64,
    /// `install` or `rollback`.
    #[schema(value_type = String)]
    pub kind: ActionKind,
    /// `scheduled`, `notified`, `downloading`, `installing`, `verifying`, `succeeded`, `failed`, `rolled_back` or `skipped`.
    #[schema(value_type = String)]
    pub state: ActionState,
    pub from_version: Option<String>,
    pub to_version: String,
    pub attempts: i64,
    pub error: Option<String>,
    pub updated_at: String,
}

/// `POST /api/v1/rollouts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// Release version (or give `release_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_id: Option<i64>,
    /// Label selector of target devices (default: the whole fleet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Explicit device ids instead of a selector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<Uuid>>,
    /// Strategy: `{"wave": "canary"}`, `{"wave": "blue", "count": 5}`, `{"steps": [1, "10%", "100%"], "bake_time_secs": 300}`…
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, required = false)]
    pub strategy: Option<StrategySpec>,
    /// RFC 3339 time before which the rollout does not start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// `driver` (default): the driver releases the planned actions, and a rollout
    /// that would reach no device is refused (422, saying why). `external`: a job
    /// run elsewhere and recorded here (as `otafleet update` does): nothing is
    /// planned; its state is reported through `POST /ota/update_status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub executor: Option<otafleet_core::Executor>,
}

/// `GET /api/v1/rollouts` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RolloutListQuery {
    /// Filter by state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only the rollouts of this release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Cursor: the `next` value of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
}

/// `GET /api/v1/rollouts/{id}/actions` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActionListQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rollout(progress: Option<Vec<WaveProgress>>) -> Rollout {
        Rollout {
            id: 3,
            release_id: 1,
            version: "2.0.0".into(),
            kind: RolloutKind::Deploy,
            preset: Preset::Canary,
            wave: Preset::Canary,
            target: RolloutTarget::Selector(String::new()),
            strategy: StrategySpec::preset(Preset::Canary).resolve(7).unwrap(),
            state: RolloutState::RolledBack,
            current_wave: 0,
            waves: 1,
            start_at: None,
            gate_passed_at: None,
            promote: false,
            rollback_requested: true,
            reason: None,
            created_by: "token:admin".into(),
            created_at: "2026-12-01T20:00:00.000Z".into(),
            updated_at: "2026-12-01T20:00:00.000Z".into(),
            finished_at: None,
            progress,
            analysis: Vec::new(),
        }
    }

    /// The CLI prints tables from decoded answers: decoding what the server
    /// encodes must give back the same JSON.
    #[test]
    fn rollout_answers_round_trip() {
        let list_item = rollout(None);
        let v = serde_json::to_value(&list_item).unwrap();
        assert!(v.get("progress").is_none(), "list items carry no progress key");
        assert_eq!(v["target"], json!({"selector": ""}));
        assert_eq!(
            (&v["preset"], &v["wave"], &v["state"]),
            (&json!("canary"), &json!("canary"), &json!("rolled_back"))
        );
        assert_eq!(v["reason"], json!(null));
        assert_eq!(serde_json::from_value::<Rollout>(v).unwrap(), list_item);

        let w = WaveProgress {
            wave: 0,
            total: 1,
            scheduled: 0,
            in_flight: 0,
            succeeded: 1,
            failed: 0,
            skipped: 0,
            rollbacks: 0,
            rolled_back: 0,
        };
        let one = rollout(Some(vec![w]));
        let v = serde_json::to_value(&one).unwrap();
        assert_eq!(v["progress"][0]["succeeded"], 1);
        assert_eq!(serde_json::from_value::<Rollout>(v).unwrap(), one);
    }
}
