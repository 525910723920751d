//! What a decision does, as data.
//!
//! [`engine::decide`](crate::engine::decide) says *what* happens next to a
//! rollout; this module says what that changes: the rollout's fields, the sets
//! of actions that move, the actions created, and the event that records it.
//! The same goes for an operator's command ([`command`]) and for a failed or
//! timed-out action ([`action_failure`]). Every edge applies these values and
//! decides nothing itself: the store turns them into SQL inside one
//! transaction, the deterministic simulator applies them to its in-memory
//! rows. So the two can no longer disagree about what a decision means.

use crate::engine::{self, Decision, Retry, Snapshot};
use crate::model::{ActionKind, ActionState, EventKind, RolloutState, TransitionError};
use crate::strategy::Gate;
use crate::Millis;
use serde_json::{json, Value};

/// The changes to a rollout's own fields (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutChange {
    pub state: Option<RolloutState>,
    /// Why the rollout ended (kept if already set and this is `None`).
    pub reason: Option<String>,
    pub rollback_requested: Option<bool>,
    pub finished_at: Option<Millis>,
    /// `current_wave + 1`; clears `gate_passed_at`, `last_release_at` and `promote`.
    pub advance_wave: bool,
    pub gate_passed_at: Option<Millis>,
    pub last_release_at: Option<Millis>,
    pub promote: Option<bool>,
}

/// A change to a set of the rollout's actions.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionsChange {
    /// Hand up to `count` ready actions to their devices, lowest position
    /// first: `scheduled → notified`, one more attempt, this deadline. Ready
    /// means `not_before <= now`; installs are taken from `wave` only.
    Release { kind: ActionKind, wave: Option<usize>, count: u64, deadline: Millis },
    /// Every scheduled install of the rollout is skipped with this error.
    SkipScheduledInstalls { error: String },
    /// Every succeeded install whose device has no rollback action yet gets
    /// one, going back to the install's `from_version`; it is created
    /// `scheduled` and ready at once (the driver releases it next). A device
    /// with no known previous version gets a `failed` rollback action instead,
    /// with [`NO_PREVIOUS_VERSION`] as its error.
    CreateRollbacks,
}

/// The error of a rollback that cannot be made: nothing to go back to.
pub const NO_PREVIOUS_VERSION: &str = "no previous version known";

/// The event that records a change. Edges add the rollout id, the actor, and
/// any numbers only they can know (e.g. which devices were released).
#[derive(Debug, Clone, PartialEq)]
pub struct EventSpec {
    pub kind: EventKind,
    pub data: Value,
}

/// Everything one decision or command changes, applied in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    pub rollout: RolloutChange,
    pub actions: Vec<ActionsChange>,
    /// The events recording it, in order.
    pub events: Vec<EventSpec>,
}

impl Effects {
    fn event(mut self, kind: EventKind, data: Value) -> Self {
        self.events.push(EventSpec { kind, data });
        self
    }
}

/// The facts about a rollout that decide what a transition does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutFacts {
    pub state: RolloutState,
    pub current_wave: usize,
    pub rollback_requested: bool,
    /// The strategy's `auto_rollback`.
    pub auto_rollback: bool,
}

impl RolloutFacts {
    pub fn of(s: &Snapshot<'_>) -> Self {
        RolloutFacts {
            state: s.state,
            current_wave: s.wave,
            rollback_requested: s.rollback.requested,
            auto_rollback: s.strategy.auto_rollback,
        }
    }
}

/// A rollout moves to `to`, with what every path shares: ending skips the
/// scheduled installs; failing or being aborted asks for rollback when the
/// strategy says so. `gate` is the numbers behind a driver's decision.
pub fn transition(
    r: RolloutFacts,
    to: RolloutState,
    reason: Option<&str>,
    gate: Option<Value>,
    now: Millis,
) -> Result<Effects, TransitionError> {
    r.state.transition(to)?;
    let rollback = match to {
        RolloutState::Failed | RolloutState::Aborted => r.auto_rollback,
        _ => r.rollback_requested,
    };
    let mut e = Effects {
        rollout: RolloutChange {
            state: Some(to),
            reason: reason.map(str::to_string),
            rollback_requested: (rollback != r.rollback_requested).then_some(rollback),
            finished_at: to.is_ended().then_some(now),
            ..RolloutChange::default()
        },
        ..Effects::default()
    };
    if to.is_ended() {
        e.actions.push(ActionsChange::SkipScheduledInstalls { error: format!("rollout {to}") });
    }
    let mut data = json!({"from": r.state.as_str(), "to": to.as_str()});
    if let Some(reason) = reason {
        data["reason"] = reason.into();
    }
    if let Some(g) = gate {
        data["gate"] = g;
    }
    Ok(e.event(EventKind::for_rollout_state(to), data))
}

/// What applying `d` (decided over `s` at `now`) changes. `Idle` changes nothing.
pub fn decision(s: &Snapshot<'_>, d: &Decision, now: Millis) -> Effects {
    let facts = RolloutFacts::of(s);
    let gate = &s.strategy.gate;
    let legal = |to, reason: Option<&str>, report: Option<Value>| {
        // `decide` only returns legal moves (checked exhaustively by the simulator's
        // `check_legal`); an illegal one here changes nothing rather than corrupting.
        transition(facts, to, reason, report, now).unwrap_or_default()
    };
    match d {
        Decision::Idle { .. } => Effects::default(),
        Decision::Start => legal(RolloutState::Running, None, None),
        Decision::Release { count } => Effects {
            rollout: RolloutChange { last_release_at: Some(now), ..RolloutChange::default() },
            actions: vec![ActionsChange::Release {
                kind: ActionKind::Install,
                wave: Some(s.wave),
                count: *count,
                deadline: engine::deadline(gate, now),
            }],
            events: Vec::new(),
        }
        .event(EventKind::RolloutReleased, json!({"wave": s.wave, "count": count})),
        Decision::GatePassed { report } => Effects {
            rollout: RolloutChange { gate_passed_at: Some(now), ..RolloutChange::default() },
            ..Effects::default()
        }
        .event(EventKind::RolloutGatePassed, serde_json::to_value(report).unwrap_or_default()),
        Decision::NextWave { from } => {
            Effects { rollout: RolloutChange { advance_wave: true, ..RolloutChange::default() }, ..Effects::default() }
                .event(EventKind::RolloutWaveStarted, json!({"wave": from + 1}))
        }
        Decision::Succeed { report } => {
            legal(RolloutState::Succeeded, None, Some(serde_json::to_value(report).unwrap_or_default()))
        }
        Decision::Fail { reason, report } => {
            legal(RolloutState::Failed, Some(reason), Some(serde_json::to_value(report).unwrap_or_default()))
        }
        Decision::CreateRollbacks { count } => {
            Effects { actions: vec![ActionsChange::CreateRollbacks], ..Effects::default() }
                .event(EventKind::RolloutRollbacksCreated, json!({"count": count}))
        }
        Decision::ReleaseRollbacks { count } => Effects {
            actions: vec![ActionsChange::Release {
                kind: ActionKind::Rollback,
                wave: None,
                count: *count,
                deadline: engine::deadline(gate, now),
            }],
            ..Effects::default()
        }
        .event(EventKind::RolloutReleased, json!({"kind": "rollback", "count": count})),
        Decision::FinishRollback => legal(RolloutState::RolledBack, None, None),
    }
}

/// What an operator (or an external executor) asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// Move to a state: pause, resume, abort, or a tracker status.
    SetState { to: RolloutState, reason: Option<&'a str> },
    /// Skip the remaining bake time of the current wave.
    Promote,
    /// Abort if still active, and send every updated device back.
    Rollback,
}

/// A refused command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("is {0}; only a running or paused rollout can be promoted")]
    NotPromotable(RolloutState),
    #[error("is already rolled back or rolling back")]
    AlreadyRollingBack,
}

/// What a command changes. A refused command changes nothing.
pub fn command(r: RolloutFacts, c: Command<'_>, now: Millis) -> Result<Effects, CommandError> {
    match c {
        Command::SetState { to, reason } => Ok(transition(r, to, reason, None, now)?),
        Command::Promote => {
            if !matches!(r.state, RolloutState::Running | RolloutState::Paused) {
                return Err(CommandError::NotPromotable(r.state));
            }
            Ok(Effects {
                rollout: RolloutChange { promote: Some(true), ..RolloutChange::default() },
                ..Effects::default()
            }
            .event(EventKind::RolloutPromoted, json!({"wave": r.current_wave})))
        }
        Command::Rollback => {
            if r.state == RolloutState::RolledBack || r.rollback_requested {
                return Err(CommandError::AlreadyRollingBack);
            }
            let mut e = if r.state.is_active() {
                transition(r, RolloutState::Aborted, Some("manual rollback"), None, now)?
            } else {
                Effects::default()
            };
            e.rollout.rollback_requested = Some(true);
            // The abort keeps its own event; the request is recorded after it.
            Ok(e.event(EventKind::RolloutRollbackRequested, Value::Null))
        }
    }
}

/// The facts about an action that decide what its failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionFacts {
    pub kind: ActionKind,
    pub state: ActionState,
    pub attempts: u32,
}

/// The new state of one action, with its event.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionChange {
    pub state: ActionState,
    /// Earliest time a retry may be released.
    pub not_before: Option<Millis>,
    pub error: String,
    pub event: EventSpec,
}

/// A failed attempt (`cause`: `device` for a reported failure, `timeout` for a
/// missed deadline). Retried with backoff while retries remain — installs
/// only while the rollout still installs, rollbacks always — through the legal
/// move back to `scheduled`, so the driver releases the retry like any other
/// action. Out of retries, the action fails; a failed rollback leaves its
/// device for an operator (the event says so).
pub fn action_failure(
    a: ActionFacts,
    rollout: RolloutState,
    gate: &Gate,
    cause: &str,
    message: &str,
    now: Millis,
) -> Result<ActionChange, TransitionError> {
    let retry_allowed = a.kind == ActionKind::Rollback || rollout.is_active();
    let error = format!("{cause}: {message}");
    let mut data = json!({"from": a.state.as_str(), "kind": a.kind.as_str(), "attempt": a.attempts, "message": error});
    let (state, not_before) = match engine::after_failure(a.attempts, gate, retry_allowed, now) {
        Retry::Again { not_before } => (ActionState::Scheduled, Some(not_before)),
        Retry::GiveUp => {
            if a.kind == ActionKind::Rollback {
                data["needs_operator"] = true.into();
            }
            (ActionState::Failed, None)
        }
    };
    a.state.transition(state)?;
    data["to"] = state.as_str().into();
    Ok(ActionChange { state, not_before, error, event: EventSpec { kind: EventKind::for_action_state(state), data } })
}
