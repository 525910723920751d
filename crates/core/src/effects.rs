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

use crate::analysis::{self, AnalysisRun, Measured};
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
    /// `current_wave + 1`; clears `gate_passed_at`, `last_release_at`,
    /// `promote` and `analysis`.
    pub advance_wave: bool,
    pub gate_passed_at: Option<Millis>,
    pub last_release_at: Option<Millis>,
    pub promote: Option<bool>,
    /// The current wave's analysis runs (empty: none measured yet).
    pub analysis: Option<Vec<AnalysisRun>>,
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
            rollout: RolloutChange {
                gate_passed_at: Some(now),
                analysis: Some(Vec::new()),
                ..RolloutChange::default()
            },
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
        Decision::Pause { reason } => {
            let mut e = legal(RolloutState::Paused, Some(reason), None);
            if let Some(ev) = e.events.last_mut() {
                ev.data["analysis"] = "inconclusive".into();
                ev.data["wave"] = s.wave.into();
            }
            e
        }
        // What a measurement changes is [`measured`], once the driver has it.
        Decision::Measure { .. } => Effects::default(),
    }
}

/// What recording measurements of the current wave's analysis checks
/// changes: each check's run advanced by its outcome ([`analysis::advance`]),
/// and one `rollout.analysis` event per measurement with its numbers and the
/// run's verdict. `results` pairs an index into the strategy's `analysis`
/// with its judged measurement; an index out of range is ignored. Nothing
/// but the runs changes: the engine reads the verdicts at its next decision.
pub fn measured(s: &Snapshot<'_>, results: &[(usize, Measured)], now: Millis) -> Effects {
    let Some(passed) = s.gate_passed_at else { return Effects::default() };
    let specs = &s.strategy.analysis;
    let mut runs: Vec<AnalysisRun> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| s.analysis.get(i).cloned().unwrap_or_else(|| AnalysisRun::start(spec, passed)))
        .collect();
    let mut e = Effects::default();
    for (i, m) in results {
        let (Some(spec), Some(run)) = (specs.get(*i), runs.get(*i).cloned()) else { continue };
        let (run, verdict) = analysis::advance(spec, run, &m.outcome, Some(&m.detail), now);
        // The event's run without its `last`: the measurement beside it is that.
        let counts = AnalysisRun { last: None, ..run.clone() };
        runs[*i] = run;
        let data = json!({
            "wave": s.wave,
            "check": spec.name,
            "kind": spec.kind.name().as_str(),
            "measurement": m,
            "run": counts,
            "verdict": verdict,
        });
        e = e.event(EventKind::RolloutAnalysis, data);
    }
    e.rollout.analysis = Some(runs);
    e
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
        Command::SetState { to, reason } => {
            let mut e = transition(r, to, reason, None, now)?;
            if r.state == RolloutState::Paused && to == RolloutState::Running {
                // Resumed: the current wave's analysis is measured again from the start.
                e.rollout.analysis = Some(Vec::new());
            }
            Ok(e)
        }
        Command::Promote => {
            // A paused rollout (an operator's pause, or an inconclusive
            // analysis) is resumed by a promote: it goes on past the bake and
            // the analysis, as Argo's promote of a paused rollout does.
            let mut e = match r.state {
                RolloutState::Running => Effects::default(),
                RolloutState::Paused => transition(r, RolloutState::Running, None, None, now)?,
                other => return Err(CommandError::NotPromotable(other)),
            };
            e.rollout.promote = Some(true);
            Ok(e.event(EventKind::RolloutPromoted, json!({"wave": r.current_wave})))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{GateReport, RollbackCounts, WaveCounts};
    use crate::strategy::{Strategy, StrategySpec};

    fn strategy(json: &str) -> Strategy {
        serde_json::from_str::<StrategySpec>(json).unwrap().resolve(1).unwrap()
    }

    fn facts(state: RolloutState, auto_rollback: bool) -> RolloutFacts {
        RolloutFacts { state, current_wave: 0, rollback_requested: false, auto_rollback }
    }

    #[test]
    fn failing_skips_scheduled_installs_and_asks_for_rollback_as_the_strategy_says() {
        for auto in [true, false] {
            let e = transition(facts(RolloutState::Running, auto), RolloutState::Failed, Some("why"), None, 7).unwrap();
            assert_eq!(e.rollout.state, Some(RolloutState::Failed));
            assert_eq!(e.rollout.finished_at, Some(7));
            assert_eq!(e.rollout.rollback_requested, auto.then_some(true));
            assert_eq!(e.actions, vec![ActionsChange::SkipScheduledInstalls { error: "rollout failed".into() }]);
            assert_eq!(e.events[0].kind, EventKind::RolloutFailed);
            assert_eq!(e.events[0].data["reason"], "why");
        }
        let e = transition(facts(RolloutState::Running, true), RolloutState::Paused, None, None, 7).unwrap();
        assert!(e.actions.is_empty() && e.rollout.finished_at.is_none() && e.rollout.rollback_requested.is_none());
        assert!(transition(facts(RolloutState::Succeeded, true), RolloutState::Running, None, None, 7).is_err());
    }

    #[test]
    fn decisions_become_the_changes_both_edges_apply() {
        let st = strategy(r#"{"steps":[1,"100%"],"timeout_secs":60}"#);
        let s = Snapshot {
            state: RolloutState::Running,
            strategy: &st,
            wave: 1,
            waves: 2,
            covers_target: true,
            start_at: None,
            gate_passed_at: None,
            last_release_at: None,
            promote: false,
            current: WaveCounts::default(),
            in_flight_total: 0,
            next_ready_at: None,
            rollback: RollbackCounts::default(),
            analysis: &[],
        };
        let e = decision(&s, &Decision::Release { count: 3 }, 1_000);
        assert_eq!(
            e.actions,
            vec![ActionsChange::Release { kind: ActionKind::Install, wave: Some(1), count: 3, deadline: 61_000 }]
        );
        assert_eq!(e.rollout.last_release_at, Some(1_000));
        let e = decision(&s, &Decision::NextWave { from: 1 }, 1_000);
        assert!(e.rollout.advance_wave);
        assert_eq!(e.events[0].data["wave"], 2);
        let e = decision(&s, &Decision::ReleaseRollbacks { count: 2 }, 1_000);
        assert!(matches!(
            e.actions[0],
            ActionsChange::Release { kind: ActionKind::Rollback, wave: None, count: 2, .. }
        ));
        let report = GateReport {
            wave: 1,
            total: 1,
            succeeded: 1,
            failed: 0,
            in_flight: 0,
            success_rate: 1.0,
            failure_rate: 0.0,
            success_threshold: 0.95,
            failure_threshold: 0.05,
        };
        let e = decision(&s, &Decision::Succeed { report }, 1_000);
        assert_eq!(e.rollout.state, Some(RolloutState::Succeeded));
        assert_eq!(e.events[0].data["gate"]["succeeded"], 1);
        assert_eq!(decision(&s, &Decision::Idle { wake_at: None }, 1_000), Effects::default());
        assert_eq!(decision(&s, &Decision::Measure { checks: vec![0] }, 1_000), Effects::default());
        let e = decision(&s, &Decision::Pause { reason: "1 of 1 measurements of 't' inconclusive".into() }, 1_000);
        assert_eq!(e.rollout.state, Some(RolloutState::Paused));
        assert_eq!(e.events[0].data["analysis"], "inconclusive");
        assert!(e.actions.is_empty(), "a pause skips nothing");
    }

    #[test]
    fn measurements_advance_the_runs_and_are_recorded_with_their_numbers() {
        use crate::analysis::{Detail, MeasureOutcome, Measured};
        let st = strategy(
            r#"{"steps":["100%"],"analysis":[
                {"name":"a","kind":"metric","metric":"m","agg":"max","window_secs":60,"condition":{"op":"<","threshold":1},"count":2},
                {"name":"b","kind":"metric","metric":"m","agg":"max","window_secs":60,"condition":{"op":"<","threshold":1},"initial_delay_secs":5}]}"#,
        );
        let mut s = Snapshot {
            state: RolloutState::Running,
            strategy: &st,
            wave: 0,
            waves: 1,
            covers_target: true,
            start_at: None,
            gate_passed_at: Some(1_000),
            last_release_at: None,
            promote: false,
            current: WaveCounts::default(),
            in_flight_total: 0,
            next_ready_at: None,
            rollback: RollbackCounts::default(),
            analysis: &[],
        };
        let fail = Measured {
            outcome: MeasureOutcome::Fail,
            detail: Detail {
                name: "a".into(),
                observed: Some(3.0),
                reason: "max of m is 3, needs < 1: fail".into(),
                ..Detail::default()
            },
        };
        let e = measured(
            &s,
            &[(0, fail), (7, Measured { outcome: MeasureOutcome::Pass, detail: Detail::default() })],
            2_000,
        );
        let runs = e.rollout.analysis.clone().unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].failed, runs[0].next_at), (1, 62_000));
        assert_eq!(runs[1], AnalysisRun::start(&st.analysis[1], 1_000), "unmeasured: as started at the gate");
        assert_eq!(e.events.len(), 1, "an unknown check is ignored");
        let ev = &e.events[0];
        assert_eq!(ev.kind, EventKind::RolloutAnalysis);
        assert_eq!(ev.data["check"], "a");
        assert_eq!(ev.data["measurement"]["detail"]["observed"], 3.0);
        assert_eq!(ev.data["verdict"]["verdict"], "failed");
        assert!(e.actions.is_empty() && e.rollout.state.is_none());
        // Before the gate passed there is nothing to measure.
        s.gate_passed_at = None;
        assert_eq!(measured(&s, &[], 2_000), Effects::default());
    }

    #[test]
    fn resuming_measures_again_and_promoting_a_paused_rollout_resumes_it() {
        let paused = facts(RolloutState::Paused, true);
        let e = command(paused, Command::SetState { to: RolloutState::Running, reason: None }, 5).unwrap();
        assert_eq!(e.rollout.analysis, Some(Vec::new()));
        let e = command(paused, Command::Promote, 5).unwrap();
        assert_eq!((e.rollout.state, e.rollout.promote), (Some(RolloutState::Running), Some(true)));
        let kinds: Vec<EventKind> = e.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![EventKind::RolloutRunning, EventKind::RolloutPromoted]);
        let running = facts(RolloutState::Running, true);
        let e = command(running, Command::Promote, 5).unwrap();
        assert_eq!((e.rollout.state, e.rollout.promote), (None, Some(true)));
    }

    #[test]
    fn commands_are_refused_or_become_effects() {
        let running = facts(RolloutState::Running, true);
        let e = command(running, Command::Rollback, 5).unwrap();
        assert_eq!(e.rollout.state, Some(RolloutState::Aborted));
        assert_eq!(e.rollout.rollback_requested, Some(true));
        let kinds: Vec<EventKind> = e.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![EventKind::RolloutAborted, EventKind::RolloutRollbackRequested]);
        let done = facts(RolloutState::Succeeded, true);
        let e = command(done, Command::Rollback, 5).unwrap();
        assert_eq!((e.rollout.state, e.rollout.rollback_requested), (None, Some(true)));
        assert_eq!(
            command(RolloutFacts { rollback_requested: true, ..done }, Command::Rollback, 5),
            Err(CommandError::AlreadyRollingBack)
        );
        assert_eq!(command(done, Command::Promote, 5), Err(CommandError::NotPromotable(RolloutState::Succeeded)));
        assert_eq!(command(running, Command::Promote, 5).unwrap().rollout.promote, Some(true));
    }

    #[test]
    fn failures_retry_through_scheduled_and_failed_rollbacks_end_with_an_operator() {
        let gate = Gate { retries: 1, backoff_secs: 2, ..Gate::default() };
        let install = ActionFacts { kind: ActionKind::Install, state: ActionState::Installing, attempts: 1 };
        let c = action_failure(install, RolloutState::Running, &gate, "device", "boom", 1_000).unwrap();
        assert_eq!((c.state, c.not_before), (ActionState::Scheduled, Some(3_000)));
        assert_eq!(c.error, "device: boom");
        // The rollout no longer installs: no retry.
        let c = action_failure(install, RolloutState::Aborted, &gate, "device", "boom", 1_000).unwrap();
        assert_eq!(c.state, ActionState::Failed);
        assert!(c.event.data.get("needs_operator").is_none());
        // A rollback is retried even after the rollout ended, then left for an operator.
        let rollback = ActionFacts { kind: ActionKind::Rollback, state: ActionState::Notified, attempts: 1 };
        let c = action_failure(rollback, RolloutState::Failed, &gate, "timeout", "late", 1_000).unwrap();
        assert_eq!((c.state, c.event.kind), (ActionState::Scheduled, EventKind::ActionScheduled));
        let c =
            action_failure(ActionFacts { attempts: 2, ..rollback }, RolloutState::Failed, &gate, "timeout", "late", 1)
                .unwrap();
        assert_eq!((c.state, c.event.kind), (ActionState::Failed, EventKind::ActionFailed));
        assert_eq!(c.event.data["needs_operator"], true);
        // Only in-flight actions fail.
        let done = ActionFacts { state: ActionState::Succeeded, ..rollback };
        assert!(action_failure(done, RolloutState::Failed, &gate, "timeout", "late", 1).is_err());
    }
}
