//! The states of rollouts and per-device actions, and the only legal moves
//! between them. Storage and HTTP go through [`RolloutState::transition`] and
//! [`ActionState::transition`]; nothing writes a state without asking here.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

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

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = ParseEnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(ParseEnumError {
                        what: $what,
                        value: s.to_string(),
                        expected: concat!($($s, " "),+),
                    }),
                }
            }
        }
    };
}

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

str_enum!(
    /// What an action asks the device to do.
    ActionKind, "action kind", {
    Install => "install",
    Rollback => "rollback",
});

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
