//! The states of rollouts and per-device actions, the only legal moves between
//! them, and the typed vocabularies stored as text (`kind` columns, event
//! kinds). A state is written only as part of an [`effects`](crate::effects)
//! value, which checks [`RolloutState::transition`] / [`ActionState::transition`]
//! when it is computed; the store's SQL lists of states are generated from
//! these enums ([`ActionState::sql_list`]).

/// A rejected state change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {what} transition from {from} to {to}")]
pub struct TransitionError {
    pub what: &'static str,
    pub from: &'static str,
    pub to: &'static str,
}

/// An unknown state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{value}', expected one of: {expected}")]
pub struct ParseEnumError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// An enum stored and sent as text: `as_str`, `Display`, `FromStr` (errors name
/// the expected values), serde as the same strings, and `ALL`.
macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
        impl std::str::FromStr for $name {
            type Err = $crate::model::ParseEnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err($crate::model::ParseEnumError {
                        what: $what,
                        value: s.to_string(),
                        expected: concat!($($s, " "),+),
                    }),
                }
            }
        }
    };
}

pub(crate) use str_enum;

str_enum!(
    /// The life of a rollout: `pending → running ⇄ paused → succeeded | failed | aborted`,
    /// and `failed | aborted | succeeded → rolled_back` once every updated device went back.
    RolloutState, "rollout state", {
    Pending => "pending",
    Running => "running",
    Paused => "paused",
    Succeeded => "succeeded",
    Failed => "failed",
    Aborted => "aborted",
    RolledBack => "rolled_back",
});

impl RolloutState {
    /// True once the rollout no longer starts new installs.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded | RolloutState::Failed | RolloutState::Aborted | RolloutState::RolledBack
        )
    }

    /// True while installs may still be handed out (possibly after a pause).
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Pending | RolloutState::Running | RolloutState::Paused)
    }

    pub fn can_transition_to(self, to: RolloutState) -> bool {
        use RolloutState::*;
        matches!(
            (self, to),
            (Pending, Running | Paused | Succeeded | Failed | Aborted)
                | (Running, Paused | Succeeded | Failed | Aborted)
                | (Paused, Running | Failed | Aborted)
                | (Succeeded | Failed | Aborted, RolledBack)
        )
    }

    pub fn transition(self, to: RolloutState) -> Result<RolloutState, TransitionError> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(TransitionError { what: "rollout", from: self.as_str(), to: to.as_str() })
        }
    }
}

str_enum!(
    /// One device's part in one rollout.
    ActionState, "action state", {
    Scheduled => "scheduled",
    Notified => "notified",
    Downloading => "downloading",
    Installing => "installing",
    Verifying => "verifying",
    Succeeded => "succeeded",
    Failed => "failed",
    RolledBack => "rolled_back",
    Skipped => "skipped",
});

impl ActionState {
    /// Order of progress; a report may skip stages but never go back.
    fn rank(self) -> u8 {
        match self {
            ActionState::Scheduled => 0,
            ActionState::Notified => 1,
            ActionState::Downloading => 2,
            ActionState::Installing => 3,
            ActionState::Verifying => 4,
            ActionState::Succeeded | ActionState::Failed | ActionState::RolledBack | ActionState::Skipped => 5,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.rank() == 5
    }

    /// Handed to the device and not finished.
    pub fn is_in_flight(self) -> bool {
        (1..5).contains(&self.rank())
    }

    /// States a device may report about itself.
    pub fn is_reportable(self) -> bool {
        matches!(
            self,
            ActionState::Downloading
                | ActionState::Installing
                | ActionState::Verifying
                | ActionState::Succeeded
                | ActionState::Failed
                | ActionState::RolledBack
        )
    }

    pub fn can_transition_to(self, to: ActionState) -> bool {
        use ActionState::*;
        if self == Succeeded && to == Failed {
            // The device later checked in with another version: it rolled back on its own.
            return true;
        }
        if self.is_terminal() {
            return false;
        }
        match to {
            // Released to the device by the driver.
            Notified => self == Scheduled,
            // Driver retry after a timeout or a failure.
            Scheduled => self.is_in_flight(),
            // Skipping is possible for anything not finished (abort, device deleted).
            Skipped => true,
            // Failed may also be decided by the driver for a scheduled action (no retries left).
            Failed => true,
            _ => self.is_in_flight() && to.rank() > self.rank(),
        }
    }

    pub fn transition(self, to: ActionState) -> Result<ActionState, TransitionError> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(TransitionError { what: "action", from: self.as_str(), to: to.as_str() })
        }
    }
}

impl ActionState {
    /// `('a', 'b', …)` of the states `keep` selects, for SQL `IN` lists, so
    /// queries never spell a state set by hand.
    pub fn sql_list(keep: impl Fn(ActionState) -> bool) -> String {
        let names: Vec<String> =
            ActionState::ALL.iter().filter(|s| keep(**s)).map(|s| format!("'{}'", s.as_str())).collect();
        format!("({})", names.join(", "))
    }
}

impl RolloutState {
    /// `('a', 'b', …)` of the states `keep` selects, for SQL `IN` lists.
    pub fn sql_list(keep: impl Fn(RolloutState) -> bool) -> String {
        let names: Vec<String> =
            RolloutState::ALL.iter().filter(|s| keep(**s)).map(|s| format!("'{}'", s.as_str())).collect();
        format!("({})", names.join(", "))
    }
}

str_enum!(
    /// What an action asks the device to do.
    ActionKind, "action kind", {
    Install => "install",
    Rollback => "rollback",
});

str_enum!(
    /// What kind of thing a release is (`releases.kind`); on a device it picks
    /// the install handler (`[handlers.<kind>]` in the agent's config). The
    /// device protocol's manifest carries it as text, so an older agent can
    /// still name a kind it does not know in its refusal.
    ReleaseKind, "release kind", {
    Firmware => "firmware",
    File => "file",
    Command => "command",
    Container => "container",
    K8s => "k8s",
    App => "app",
});

impl Default for ReleaseKind {
    /// What a release is when nobody says (the original tracker's firmware).
    fn default() -> Self {
        ReleaseKind::Firmware
    }
}

str_enum!(
    /// Who carries out a rollout's actions: `driver` (the default) releases the
    /// planned actions to their devices; `external` is a job someone else runs
    /// (`otafleet update`, the original tracker's job runner) and reports
    /// through `/ota/update_status`: nothing is planned, the driver never moves it.
    Executor, "executor", {
    Driver => "driver",
    External => "external",
});

str_enum!(
    /// What a rollout is for: going to a release, or back to an earlier one
    /// (the tracker's `POST /ota/rollback`).
    RolloutKind, "rollout kind", {
    Deploy => "deploy",
    Rollback => "rollback",
});

str_enum!(
    /// The kind of an event in the audit log (`events.kind`).
    EventKind, "event kind", {
    RolloutCreated => "rollout.created",
    RolloutPending => "rollout.pending",
    RolloutRunning => "rollout.running",
    RolloutPaused => "rollout.paused",
    RolloutSucceeded => "rollout.succeeded",
    RolloutFailed => "rollout.failed",
    RolloutAborted => "rollout.aborted",
    RolloutRolledBack => "rollout.rolled_back",
    RolloutReleased => "rollout.released",
    RolloutGatePassed => "rollout.gate_passed",
    RolloutWaveStarted => "rollout.wave_started",
    RolloutPromoted => "rollout.promoted",
    RolloutRollbackRequested => "rollout.rollback_requested",
    RolloutRollbacksCreated => "rollout.rollbacks_created",
    RolloutAnalysis => "rollout.analysis",
    ActionScheduled => "action.scheduled",
    ActionNotified => "action.notified",
    ActionDownloading => "action.downloading",
    ActionInstalling => "action.installing",
    ActionVerifying => "action.verifying",
    ActionSucceeded => "action.succeeded",
    ActionFailed => "action.failed",
    ActionRolledBack => "action.rolled_back",
    ActionSkipped => "action.skipped",
    ActionReportIgnored => "action.report_ignored",
    // Written by earlier versions for a retried rollback (now `action.scheduled`).
    ActionRetried => "action.retried",
    DeviceRegistered => "device.registered",
    DeviceLabelsUpdated => "device.labels_updated",
    DeviceDeleted => "device.deleted",
    DeviceVersionChanged => "device.version_changed",
    ReleaseCreated => "release.created",
    ReleaseArtifactAdded => "release.artifact_added",
    DeviceTokenRotated => "device.token_rotated",
    TokenCreated => "token.created",
    TokenRevoked => "token.revoked",
    EnrollmentTokenRevoked => "enrollment_token.revoked",
    WebhookCreated => "webhook.created",
    WebhookDeleted => "webhook.deleted",
    AlertRuleCreated => "alert_rule.created",
    AlertRuleDeleted => "alert_rule.deleted",
    AlertPending => "alert.pending",
    AlertFiring => "alert.firing",
    AlertResolved => "alert.resolved",
    AlertCancelled => "alert.cancelled",
    DelegateCreated => "delegate.created",
    DelegateRevoked => "delegate.revoked",
    DeviceGone => "device.gone",
    DeviceReturned => "device.returned",
});

str_enum!(
    /// What speaks for a delegate's devices: a `cluster` agent (pods,
    /// workloads, FlashJob boards) or a site `gateway`.
    DelegateKind, "delegate kind", {
    Cluster => "cluster",
    Gateway => "gateway",
});

impl EventKind {
    /// `rollout.<state>`: a rollout entered `s`.
    pub fn for_rollout_state(s: RolloutState) -> EventKind {
        use RolloutState::*;
        match s {
            Pending => EventKind::RolloutPending,
            Running => EventKind::RolloutRunning,
            Paused => EventKind::RolloutPaused,
            Succeeded => EventKind::RolloutSucceeded,
            Failed => EventKind::RolloutFailed,
            Aborted => EventKind::RolloutAborted,
            RolledBack => EventKind::RolloutRolledBack,
        }
    }

    /// `action.<state>`: an action entered `s`.
    pub fn for_action_state(s: ActionState) -> EventKind {
        use ActionState::*;
        match s {
            Scheduled => EventKind::ActionScheduled,
            Notified => EventKind::ActionNotified,
            Downloading => EventKind::ActionDownloading,
            Installing => EventKind::ActionInstalling,
            Verifying => EventKind::ActionVerifying,
            Succeeded => EventKind::ActionSucceeded,
            Failed => EventKind::ActionFailed,
            RolledBack => EventKind::ActionRolledBack,
            Skipped => EventKind::ActionSkipped,
        }
    }
}

str_enum!(
    /// Health as last reported by a device (or unknown).
    DeviceHealth, "device health", {
    Unknown => "unknown",
    Healthy => "healthy",
    Degraded => "degraded",
    Unhealthy => "unhealthy",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_transitions_follow_the_diagram() {
        use RolloutState::*;
        assert!(Pending.can_transition_to(Running));
        assert!(Running.can_transition_to(Paused));
        assert!(Paused.can_transition_to(Running));
        assert!(Failed.can_transition_to(RolledBack));
        assert!(!RolledBack.can_transition_to(Running));
        assert!(!Succeeded.can_transition_to(Running));
        assert!(!Failed.can_transition_to(Succeeded));
        for s in RolloutState::ALL {
            assert!(!s.can_transition_to(*s), "{s} -> {s} must not be a transition");
        }
        let err = Succeeded.transition(Pending).unwrap_err();
        assert_eq!(err.to_string(), "illegal rollout transition from succeeded to pending");
    }

    #[test]
    fn action_reports_only_move_forward() {
        use ActionState::*;
        assert!(Notified.can_transition_to(Downloading));
        assert!(Notified.can_transition_to(Succeeded));
        assert!(Installing.can_transition_to(Verifying));
        assert!(!Verifying.can_transition_to(Downloading));
        assert!(!Scheduled.can_transition_to(Installing));
        assert!(Succeeded.can_transition_to(Failed), "drift: the device rolled back on its own");
        assert!(!Succeeded.can_transition_to(RolledBack));
        assert!(Installing.can_transition_to(Scheduled));
        assert!(Scheduled.can_transition_to(Skipped));
        for s in ActionState::ALL.iter().filter(|s| s.is_terminal()) {
            for t in ActionState::ALL {
                let drift = *s == Succeeded && *t == Failed;
                assert_eq!(s.can_transition_to(*t), drift, "{s} -> {t}");
            }
        }
    }

    #[test]
    fn state_events_and_sql_lists_come_from_the_enums() {
        for s in RolloutState::ALL {
            assert_eq!(EventKind::for_rollout_state(*s).as_str(), format!("rollout.{s}"));
        }
        for s in ActionState::ALL {
            assert_eq!(EventKind::for_action_state(*s).as_str(), format!("action.{s}"));
        }
        assert_eq!(
            ActionState::sql_list(ActionState::is_in_flight),
            "('notified', 'downloading', 'installing', 'verifying')"
        );
        assert_eq!(RolloutState::sql_list(RolloutState::is_active), "('pending', 'running', 'paused')");
        assert_eq!(serde_json::to_string(&EventKind::RolloutGatePassed).unwrap(), "\"rollout.gate_passed\"");
        assert_eq!(serde_json::from_str::<RolloutKind>("\"rollback\"").unwrap(), RolloutKind::Rollback);
        assert!(serde_json::from_str::<RolloutKind>("\"bogus\"").is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in RolloutState::ALL {
            assert_eq!(s.as_str().parse::<RolloutState>().unwrap(), *s);
        }
        for s in ActionState::ALL {
            assert_eq!(s.as_str().parse::<ActionState>().unwrap(), *s);
        }
        let e = "bogus".parse::<RolloutState>().unwrap_err();
        assert!(e.to_string().contains("pending"));
    }
}
