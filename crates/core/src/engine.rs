//! The rollout engine: one pure decision function.
//!
//! The driver (in the server) reads a [`Snapshot`] of a rollout — its state, the
//! counts of its current wave's actions, timers — calls [`decide`] with the
//! current time, applies the returned [`Decision`] in one transaction together
//! with its event, and calls again until the answer is [`Decision::Idle`]. The
//! deterministic simulator in `tests/` drives the very same function with a fake
//! clock. Because every decision is a function of stored state and `now`, a
//! restarted driver continues exactly where the last one stopped.

use crate::analysis::{self, AnalysisRun, AnalysisSpec};
use crate::model::RolloutState;
use crate::strategy::{Gate, Step, Strategy};
use crate::Millis;
use serde::{Deserialize, Serialize};

/// Counts of the install actions of one wave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveCounts {
    pub total: u64,
    /// Not yet handed to the device (including those waiting for a retry).
    pub scheduled: u64,
    /// Scheduled and allowed to start now (retry backoff elapsed).
    pub ready: u64,
    pub in_flight: u64,
    pub succeeded: u64,
    /// Failed or rolled back on the device.
    pub failed: u64,
    pub skipped: u64,
}

/// Rollback bookkeeping of a rollout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollbackCounts {
    /// Whether updated devices must be rolled back (auto on failure/abort, or manual).
    pub requested: bool,
    /// Devices whose install succeeded and that have no rollback action yet.
    pub missing: u64,
    /// Rollback actions not finished (scheduled or in flight).
    pub open: u64,
    /// Scheduled rollback actions allowed to start now (a retry's backoff elapsed).
    pub ready: u64,
    /// Earliest time a scheduled rollback action becomes ready.
    pub next_ready_at: Option<Millis>,
}

/// What the engine needs to know about a rollout at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    pub state: RolloutState,
    pub strategy: &'a Strategy,
    /// Index of the current wave.
    pub wave: usize,
    /// Number of planned waves (0: nothing to do, an external executor owns the job).
    pub waves: usize,
    /// The plan's waves reach every device of the target (`Plan::covers_target`).
    pub covers_target: bool,
    pub start_at: Option<Millis>,
    pub gate_passed_at: Option<Millis>,
    pub last_release_at: Option<Millis>,
    /// Operator asked to skip the remaining bake time of the current wave.
    pub promote: bool,
    pub current: WaveCounts,
    /// Install actions in flight across all waves (for `max_parallel`).
    pub in_flight_total: u64,
    /// Earliest time a scheduled action of the current wave becomes ready (retry backoff).
    pub next_ready_at: Option<Millis>,
    pub rollback: RollbackCounts,
    /// The runs of the strategy's analysis checks for the current wave's
    /// bake, in the strategy's order; missing entries (none stored yet)
    /// start at `gate_passed_at`.
    pub analysis: &'a [AnalysisRun],
}

/// The numbers behind a gate decision; recorded in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    pub wave: usize,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub success_rate: f64,
    pub failure_rate: f64,
    pub success_threshold: f64,
    pub failure_threshold: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Nothing to do; look again at `wake_at` (or when something changes).
    Idle { wake_at: Option<Millis> },
    /// `pending → running`, wave 0 begins.
    Start,
    /// Hand `count` ready actions of the current wave to their devices.
    Release { count: u64 },
    /// The current wave met its success threshold; bake time starts.
    GatePassed { report: GateReport },
    /// Bake time is over (or promoted): the next wave begins.
    NextWave { from: usize },
    /// The last wave passed and nothing is in flight.
    Succeed { report: GateReport },
    /// A gate failed. Remaining scheduled actions are skipped.
    Fail { reason: String, report: GateReport },
    /// Create rollback actions for updated devices.
    CreateRollbacks { count: u64 },
    /// Hand `count` ready rollback actions (new, or retries after a failure) to their devices.
    ReleaseRollbacks { count: u64 },
    /// Every updated device was rolled back (or reported failed): `→ rolled_back`.
    FinishRollback,
    /// Analysis checks (indices into the strategy's `analysis`) are due: the
    /// driver gathers what they measure and records it
    /// ([`crate::effects::measured`]). Nothing else changes.
    Measure { checks: Vec<usize> },
    /// An analysis check was inconclusive: `running → paused` with the
    /// reason, until an operator resumes (measure again), promotes (go on)
    /// or aborts.
    Pause { reason: String },
}

fn rate(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        n as f64 / total as f64
    }
}

fn report(s: &Snapshot<'_>) -> GateReport {
    let c = s.current;
    GateReport {
        wave: s.wave,
        total: c.total,
        succeeded: c.succeeded,
        failed: c.failed,
        in_flight: c.in_flight,
        success_rate: rate(c.succeeded, c.total),
        failure_rate: rate(c.failed, c.total),
        success_threshold: s.strategy.gate.success_threshold,
        failure_threshold: s.strategy.gate.failure_threshold,
    }
}

const IDLE: Decision = Decision::Idle { wake_at: None };

/// The next step of a rollout at time `now`.
pub fn decide(s: &Snapshot<'_>, now: Millis) -> Decision {
    use RolloutState::*;
    if s.waves == 0 {
        // Nothing planned: an external executor (the original tracker's job
        // runner) owns this job and reports its state; the driver never moves it.
        return IDLE;
    }
    match s.state {
        Pending => match s.start_at {
            Some(t) if t > now => Decision::Idle { wake_at: Some(t) },
            _ => Decision::Start,
        },
        Running => running(s, now),
        Paused => failure_gate(s).unwrap_or(IDLE),
        Failed | Aborted | Succeeded if s.rollback.requested => {
            if s.rollback.missing > 0 {
                Decision::CreateRollbacks { count: s.rollback.missing }
            } else if s.rollback.ready > 0 {
                Decision::ReleaseRollbacks { count: s.rollback.ready }
            } else if s.rollback.open == 0 && s.in_flight_total == 0 {
                Decision::FinishRollback
            } else {
                Decision::Idle { wake_at: s.rollback.next_ready_at.filter(|t| *t > now) }
            }
        }
        Failed | Aborted | Succeeded | RolledBack => IDLE,
    }
}

/// What a wave's health gate says about its counts.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Enough devices succeeded: the wave may bake, then the next one starts.
    Pass,
    /// Too many failed (or too few can still succeed): the rollout fails.
    Fail(String),
    /// Not decided yet: devices are still scheduled or in flight.
    Wait,
}

/// The health gate of one wave: the same rule for device rollouts, `otafleet
/// update` (each wave) and `otafleet flash` (the run as one wave, judged after
/// every batch). The failure threshold applies at any moment
/// (`failure_threshold: 0` means one failure fails the wave); the success
/// threshold once every device of the wave was released (`all_released`), and
/// a wave that can no longer reach it — nothing in flight — fails.
pub fn verdict(gate: &Gate, wave: usize, c: &WaveCounts, all_released: bool) -> Verdict {
    let failure_rate = rate(c.failed, c.total);
    if c.total > 0 && failure_rate > gate.failure_threshold {
        return Verdict::Fail(format!(
            "wave {wave} failure rate {failure_rate:.3} ({} of {}) exceeded the failure threshold {}",
            c.failed, c.total, gate.failure_threshold
        ));
    }
    if !all_released {
        return Verdict::Wait;
    }
    let success_rate = rate(c.succeeded, c.total);
    if success_rate >= gate.success_threshold {
        Verdict::Pass
    } else if c.in_flight == 0 {
        Verdict::Fail(format!(
            "wave {wave} success rate {success_rate:.3} ({} of {}) is below the success threshold {}",
            c.succeeded, c.total, gate.success_threshold
        ))
    } else {
        Verdict::Wait
    }
}

fn failure_gate(s: &Snapshot<'_>) -> Option<Decision> {
    match verdict(&s.strategy.gate, s.wave, &s.current, false) {
        Verdict::Fail(reason) => Some(Decision::Fail { reason, report: report(s) }),
        _ => None,
    }
}

fn running(s: &Snapshot<'_>, now: Millis) -> Decision {
    if let Some(fail) = failure_gate(s) {
        return fail;
    }
    let c = s.current;
    let st = s.strategy;
    if c.scheduled > 0 {
        if !st.window_open(now) {
            return Decision::Idle { wake_at: st.next_window_open(now) };
        }
        if st.batch_size > 0 && st.batch_delay_secs > 0 {
            if let Some(last) = s.last_release_at {
                let next = last + st.batch_delay_secs as i64 * 1000;
                if next > now {
                    return Decision::Idle { wake_at: Some(next) };
                }
            }
        }
        let capacity = if st.max_parallel > 0 { st.max_parallel.saturating_sub(s.in_flight_total) } else { u64::MAX };
        let batch = if st.batch_size > 0 { st.batch_size } else { u64::MAX };
        let n = c.ready.min(capacity).min(batch);
        if n > 0 {
            return Decision::Release { count: n };
        }
        if c.ready == 0 {
            return Decision::Idle { wake_at: s.next_ready_at };
        }
        // At capacity: a finishing device wakes the driver.
        return IDLE;
    }
    let r = report(s);
    match s.gate_passed_at {
        None => match verdict(&st.gate, s.wave, &c, true) {
            Verdict::Pass => Decision::GatePassed { report: r },
            Verdict::Fail(reason) => Decision::Fail { reason, report: r },
            Verdict::Wait => IDLE,
        },
        Some(passed) => {
            let bake_end = passed + st.gate.bake_time_secs as i64 * 1000;
            if !s.promote {
                match analysis_verdict(s, passed) {
                    analysis::Verdict::Failed { reason } => return Decision::Fail { reason, report: r },
                    analysis::Verdict::Inconclusive { reason } => return Decision::Pause { reason },
                    analysis::Verdict::Running { next_at } if next_at <= now => {
                        return Decision::Measure { checks: due_checks(s, passed, now) };
                    }
                    analysis::Verdict::Running { next_at } => {
                        let wake = if now < bake_end { next_at.min(bake_end) } else { next_at };
                        return Decision::Idle { wake_at: Some(wake) };
                    }
                    analysis::Verdict::Succeeded => {}
                }
            }
            if !s.promote && now < bake_end {
                Decision::Idle { wake_at: Some(bake_end) }
            } else if c.in_flight > 0 {
                // Let the wave settle first: a straggler that fails is retried within this
                // wave (only the current wave is ever released) and counts for its gate.
                IDLE
            } else if s.wave + 1 < s.waves {
                Decision::NextWave { from: s.wave }
            } else if s.in_flight_total == 0 {
                Decision::Succeed { report: r }
            } else {
                IDLE
            }
        }
    }
}

/// Whether analysis check `spec` is measured on the current wave. Every
/// check is, but one relative to the baseline (the devices of the rollout's
/// target still on the previous version) is not measured on the last wave of
/// a plan that `covers_target` (`Plan::covers_target`: a last step of 100%, or
/// a count at least the target's size): once it is done no baseline is left,
/// and waiting for one would pause every such rollout at its end.
pub fn check_applies(wave: usize, waves: usize, covers_target: bool, spec: &AnalysisSpec) -> bool {
    !(spec.is_relative() && covers_target && wave + 1 >= waves)
}

/// What a rollout planned before `Plan::covers_target` was stored is taken to
/// have planned: its steps reach everyone when the last is 100%.
pub fn covers_target_by_steps(strategy: &Strategy) -> bool {
    matches!(strategy.steps.last(), Some(Step::Percent(p)) if *p >= 100.0)
}

/// The runs of the current wave's checks that apply, by index: stored, or
/// started when the gate passed.
pub fn analysis_runs<'s>(
    s: &'s Snapshot<'_>,
    gate_passed_at: Millis,
) -> impl Iterator<Item = (usize, &'s AnalysisSpec, AnalysisRun)> + 's {
    s.strategy
        .analysis
        .iter()
        .enumerate()
        .filter(move |(_, spec)| check_applies(s.wave, s.waves, s.covers_target, spec))
        .map(move |(i, spec)| {
            let run = s.analysis.get(i).cloned().unwrap_or_else(|| AnalysisRun::start(spec, gate_passed_at));
            (i, spec, run)
        })
}

fn analysis_verdict(s: &Snapshot<'_>, gate_passed_at: Millis) -> analysis::Verdict {
    let verdicts: Vec<analysis::Verdict> =
        analysis_runs(s, gate_passed_at).map(|(_, spec, run)| run.verdict(spec)).collect();
    analysis::combine(&verdicts)
}

fn due_checks(s: &Snapshot<'_>, gate_passed_at: Millis, now: Millis) -> Vec<usize> {
    analysis_runs(s, gate_passed_at)
        .filter(|(_, spec, run)| !run.verdict(spec).is_final() && run.is_due(now))
        .map(|(i, _, _)| i)
        .collect()
}

/// What happens to an action that failed or timed out after `attempts` attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Schedule it again, not before the given time.
    Again { not_before: Millis },
    /// No retries left (or the rollout no longer installs): the action failed.
    GiveUp,
}

/// Whether to retry an action that failed after `attempts` attempts; `allowed`
/// is whether a retry may happen at all (see [`crate::effects::action_failure`]).
pub fn after_failure(attempts: u32, gate: &Gate, allowed: bool, now: Millis) -> Retry {
    if allowed && attempts <= gate.retries {
        Retry::Again { not_before: now + gate.backoff_ms(attempts) }
    } else {
        Retry::GiveUp
    }
}

/// The deadline of an action notified at `now`.
pub fn deadline(gate: &Gate, now: Millis) -> Millis {
    now + gate.timeout_secs as i64 * 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::StrategySpec;

    fn strategy(json: &str) -> Strategy {
        serde_json::from_str::<StrategySpec>(json).unwrap().resolve(1).unwrap()
    }

    fn snap(st: &Strategy, state: RolloutState, current: WaveCounts) -> Snapshot<'_> {
        Snapshot {
            state,
            strategy: st,
            wave: 0,
            waves: st.steps.len(),
            covers_target: covers_target_by_steps(st),
            start_at: None,
            gate_passed_at: None,
            last_release_at: None,
            promote: false,
            current,
            in_flight_total: current.in_flight,
            next_ready_at: None,
            rollback: RollbackCounts::default(),
            analysis: &[],
        }
    }

    fn counts(total: u64, scheduled: u64, in_flight: u64, succeeded: u64, failed: u64) -> WaveCounts {
        WaveCounts { total, scheduled, ready: scheduled, in_flight, succeeded, failed, skipped: 0 }
    }

    #[test]
    fn pending_waits_for_start_time_and_empty_rollouts_wait_for_an_executor() {
        let st = strategy(r#"{"wave":"canary"}"#);
        let mut s = snap(&st, RolloutState::Pending, counts(1, 1, 0, 0, 0));
        assert_eq!(decide(&s, 0), Decision::Start);
        s.start_at = Some(100);
        assert_eq!(decide(&s, 0), Decision::Idle { wake_at: Some(100) });
        s.waves = 0;
        assert_eq!(decide(&s, 1000), IDLE);
        // An external executor moved it along: the driver still leaves it alone
        // (with nothing planned, a gate would otherwise fail it at once).
        for state in [RolloutState::Running, RolloutState::Paused, RolloutState::Failed] {
            s.state = state;
            s.rollback.requested = true;
            assert_eq!(decide(&s, 1000), IDLE, "{state}");
        }
    }

    #[test]
    fn release_respects_max_parallel_and_batches() {
        let st = strategy(r#"{"steps":["100%"],"max_parallel":3,"batch_size":2,"batch_delay_secs":10}"#);
        let mut s = snap(&st, RolloutState::Running, counts(10, 10, 0, 0, 0));
        assert_eq!(decide(&s, 0), Decision::Release { count: 2 });
        s.last_release_at = Some(0);
        s.current = counts(10, 8, 2, 0, 0);
        s.in_flight_total = 2;
        assert_eq!(decide(&s, 5_000), Decision::Idle { wake_at: Some(10_000) });
        assert_eq!(decide(&s, 10_000), Decision::Release { count: 1 });
        s.in_flight_total = 3;
        assert_eq!(decide(&s, 10_000), IDLE);
    }

    #[test]
    fn gate_passes_bakes_then_advances() {
        let st = strategy(r#"{"steps":[1,"100%"],"bake_time_secs":60}"#);
        let mut s = snap(&st, RolloutState::Running, counts(1, 0, 0, 1, 0));
        assert!(matches!(decide(&s, 0), Decision::GatePassed { .. }));
        s.gate_passed_at = Some(0);
        assert_eq!(decide(&s, 1), Decision::Idle { wake_at: Some(60_000) });
        s.promote = true;
        assert_eq!(decide(&s, 1), Decision::NextWave { from: 0 });
        s.promote = false;
        assert_eq!(decide(&s, 60_000), Decision::NextWave { from: 0 });
        s.wave = 1;
        s.current = counts(9, 0, 1, 8, 0);
        s.in_flight_total = 1;
        s.gate_passed_at = None;
        // 8 of 9 is below 0.95 while one device is still working: wait for it.
        assert_eq!(decide(&s, 61_000), IDLE);
        s.current = counts(9, 0, 0, 9, 0);
        s.in_flight_total = 0;
        assert!(matches!(decide(&s, 61_000), Decision::GatePassed { .. }));
    }

    #[test]
    fn failure_threshold_fails_and_success_threshold_must_be_met() {
        let st = strategy(r#"{"steps":["100%"],"failure_threshold":0.2,"success_threshold":0.9}"#);
        let s = snap(&st, RolloutState::Running, counts(10, 5, 2, 0, 3));
        let Decision::Fail { report, reason } = decide(&s, 0) else { panic!() };
        assert_eq!(report.failed, 3);
        assert!(reason.contains("failure threshold"));
        let s = snap(&st, RolloutState::Running, counts(10, 0, 0, 8, 2));
        assert!(matches!(decide(&s, 0), Decision::Fail { .. }));
        let s = snap(&st, RolloutState::Running, counts(10, 0, 1, 8, 1));
        assert_eq!(decide(&s, 0), IDLE);
    }

    #[test]
    fn next_wave_waits_for_stragglers_of_the_current_wave() {
        // Found by the simulator (seed 2): the gate passed with devices still in flight,
        // the next wave began, then a straggler of the earlier wave failed and was
        // scheduled for a retry that was never released (only the current wave is).
        let st = strategy(r#"{"steps":[1,"100%"],"success_threshold":0.5,"failure_threshold":0.5}"#);
        let mut s = snap(&st, RolloutState::Running, counts(4, 0, 1, 3, 0));
        s.gate_passed_at = Some(0);
        assert_eq!(decide(&s, 0), IDLE);
        s.promote = true;
        assert_eq!(decide(&s, 0), IDLE);
        s.current = counts(4, 0, 0, 3, 1);
        s.in_flight_total = 0;
        assert_eq!(decide(&s, 0), Decision::NextWave { from: 0 });
    }

    #[test]
    fn last_wave_succeeds_only_when_nothing_is_in_flight() {
        let st = strategy(r#"{"steps":["100%"],"success_threshold":0.5}"#);
        let mut s = snap(&st, RolloutState::Running, counts(4, 0, 1, 3, 0));
        s.gate_passed_at = Some(0);
        assert_eq!(decide(&s, 0), IDLE);
        s.current = counts(4, 0, 0, 4, 0);
        s.in_flight_total = 0;
        assert!(matches!(decide(&s, 0), Decision::Succeed { .. }));
    }

    #[test]
    fn windows_hold_new_devices() {
        let st = strategy(r#"{"steps":["100%"],"windows":["22:00-04:00 UTC"]}"#);
        let s = snap(&st, RolloutState::Running, counts(4, 4, 0, 0, 0));
        let noon = 12 * 3_600_000;
        assert_eq!(decide(&s, noon), Decision::Idle { wake_at: Some(22 * 3_600_000) });
        assert_eq!(decide(&s, 23 * 3_600_000), Decision::Release { count: 4 });
    }

    #[test]
    fn rollback_phase() {
        let st = strategy(r#"{"wave":"green"}"#);
        let mut s = snap(&st, RolloutState::Failed, counts(4, 0, 0, 2, 2));
        assert_eq!(decide(&s, 0), IDLE);
        s.rollback = RollbackCounts { requested: true, missing: 2, ..RollbackCounts::default() };
        assert_eq!(decide(&s, 0), Decision::CreateRollbacks { count: 2 });
        s.rollback = RollbackCounts { requested: true, missing: 0, open: 2, ready: 2, next_ready_at: None };
        assert_eq!(decide(&s, 0), Decision::ReleaseRollbacks { count: 2 });
        s.rollback.ready = 0;
        assert_eq!(decide(&s, 0), IDLE);
        // A failed rollback waits for its retry's backoff, then is released again.
        s.rollback.next_ready_at = Some(5_000);
        assert_eq!(decide(&s, 0), Decision::Idle { wake_at: Some(5_000) });
        s.rollback = RollbackCounts { requested: true, ..RollbackCounts::default() };
        assert_eq!(decide(&s, 0), Decision::FinishRollback);
    }

    fn with_analysis(json: &str) -> Strategy {
        strategy(json)
    }

    const CHECKS: &str = r#"{"steps":[1,"100%"],"bake_time_secs":60,"analysis":[
        {"name":"temp","kind":"metric","metric":"cpu_temp_c","agg":"max","window_secs":60,
         "condition":{"op":"<","threshold":80},"initial_delay_secs":0,"interval_secs":30,"count":2},
        {"name":"latency","kind":"metric","metric":"loop_ms","agg":"p95","window_secs":60,
         "condition":{"op":"<=","factor":1.1},"initial_delay_secs":10,"interval_secs":30}]}"#;

    #[test]
    fn analysis_measures_while_the_wave_bakes_and_gates_the_next_wave() {
        use crate::analysis::{advance, AnalysisRun, MeasureOutcome};
        let st = with_analysis(CHECKS);
        let mut s = snap(&st, RolloutState::Running, counts(1, 0, 0, 1, 0));
        s.gate_passed_at = Some(0);
        // Both due when the gate passes (the second after its initial delay).
        assert_eq!(decide(&s, 0), Decision::Measure { checks: vec![0] });
        assert_eq!(decide(&s, 10_000), Decision::Measure { checks: vec![0, 1] });
        let spec = &st.analysis;
        let (r0, _) = advance(&spec[0], AnalysisRun::start(&spec[0], 0), &MeasureOutcome::Pass, None, 10_000);
        let (r1, _) = advance(&spec[1], AnalysisRun::start(&spec[1], 0), &MeasureOutcome::Pass, None, 10_000);
        let runs = [r0.clone(), r1.clone()];
        s.analysis = &runs;
        // The latency check succeeded; temp needs one more, at 40 s.
        assert_eq!(decide(&s, 20_000), Decision::Idle { wake_at: Some(40_000) });
        assert_eq!(decide(&s, 40_000), Decision::Measure { checks: vec![0] });
        let (r0, v) = advance(&spec[0], r0, &MeasureOutcome::Pass, None, 40_000);
        assert_eq!(v, crate::analysis::Verdict::Succeeded);
        let runs = [r0, r1.clone()];
        s.analysis = &runs;
        // Analysis done, the bake goes on to 60 s.
        assert_eq!(decide(&s, 40_000), Decision::Idle { wake_at: Some(60_000) });
        assert_eq!(decide(&s, 60_000), Decision::NextWave { from: 0 });
        // A bake over before the analysis: the wave waits for it.
        let (r0, _) = advance(&spec[0], AnalysisRun::start(&spec[0], 0), &MeasureOutcome::Pass, None, 50_000);
        let runs = [r0, r1];
        s.analysis = &runs;
        assert_eq!(decide(&s, 61_000), Decision::Idle { wake_at: Some(80_000) });
        // Promoted: neither bake nor analysis holds it.
        s.promote = true;
        assert_eq!(decide(&s, 61_000), Decision::NextWave { from: 0 });
    }

    #[test]
    fn failed_analysis_fails_and_inconclusive_pauses() {
        use crate::analysis::{advance, AnalysisRun, MeasureOutcome};
        let st = with_analysis(CHECKS);
        let spec = &st.analysis;
        let mut s = snap(&st, RolloutState::Running, counts(1, 0, 0, 1, 0));
        s.gate_passed_at = Some(0);
        let (bad, _) = advance(&spec[0], AnalysisRun::start(&spec[0], 0), &MeasureOutcome::Fail, None, 0);
        let runs = [bad];
        s.analysis = &runs;
        let Decision::Fail { reason, report } = decide(&s, 1) else { panic!("{:?}", decide(&s, 1)) };
        assert!(reason.contains("'temp' failed"), "{reason}");
        assert_eq!(report.wave, 0);
        let (unsure, _) = advance(
            &spec[0],
            AnalysisRun::start(&spec[0], 0),
            &MeasureOutcome::Inconclusive("no data".into()),
            Some(&crate::analysis::Detail { reason: "no data: no samples".into(), ..Default::default() }),
            0,
        );
        let runs = [unsure];
        s.analysis = &runs;
        let Decision::Pause { reason } = decide(&s, 1) else { panic!() };
        assert!(reason.contains("inconclusive") && reason.ends_with("; last: no data: no samples"), "{reason}");
        // Paused, nothing more is measured.
        s.state = RolloutState::Paused;
        assert_eq!(decide(&s, 1), IDLE);
    }

    #[test]
    fn a_relative_check_is_not_measured_on_a_last_wave_of_everyone() {
        let st = with_analysis(CHECKS);
        let mut s = snap(&st, RolloutState::Running, counts(9, 0, 0, 9, 0));
        s.wave = 1;
        s.gate_passed_at = Some(0);
        assert_eq!(decide(&s, 10_000), Decision::Measure { checks: vec![0] });
        assert!(!check_applies(1, 2, true, &st.analysis[1]) && check_applies(0, 2, true, &st.analysis[1]));
        assert!(check_applies(1, 2, true, &st.analysis[0]));
        // A plan that leaves devices out keeps its baseline on the last wave.
        assert!(check_applies(1, 2, false, &st.analysis[1]));
        // What a rollout stored before the plan said so is taken to have planned.
        assert!(covers_target_by_steps(&st));
        let canary = with_analysis(&CHECKS.replace(r#""steps":[1,"100%"]"#, r#""wave":"canary""#));
        assert!(!covers_target_by_steps(&canary));
    }

    #[test]
    fn retries_back_off_then_give_up() {
        let g = Gate { retries: 2, backoff_secs: 1, ..Gate::default() };
        assert_eq!(after_failure(1, &g, true, 0), Retry::Again { not_before: 1000 });
        assert_eq!(after_failure(2, &g, true, 0), Retry::Again { not_before: 2000 });
        assert_eq!(after_failure(3, &g, true, 0), Retry::GiveUp);
        assert_eq!(after_failure(1, &g, false, 0), Retry::GiveUp);
    }
}
