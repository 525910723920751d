//! Deterministic simulation of the rollout engine (TigerBeetle/FoundationDB style).
//!
//! An in-memory driver applies [`engine::decide`]'s decisions exactly the way the
//! SQL driver does, a seeded fleet of simulated devices answers (or doesn't), a
//! seeded operator pauses, resumes, promotes and aborts, and time jumps from one
//! event to the next. Every run checks the invariants listed in [`Sim::check_invariants`],
//! [`check_legal`] and [`Sim::final_checks`].
//!
//! * `OTAFLEET_SIM_RUNS=N` — number of seeded runs (default 1,000).
//! * `OTAFLEET_SIM_SEED=N` — replay one seed with a step-by-step trace:
//!   `OTAFLEET_SIM_SEED=N cargo test -p otafleet-core --test simulation -- --nocapture`

use otafleet_core::analysis;
use otafleet_core::effects;
use otafleet_core::engine::{self, Decision, RollbackCounts, Snapshot, WaveCounts};
use otafleet_core::plan::{self, Candidate};
use otafleet_core::{ActionKind, ActionState, Millis, Preset, RolloutState, Step, Strategy, StrategySpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;
use uuid::Uuid;

const SEC: Millis = 1_000;
const HOUR: Millis = 3_600 * SEC;
const DAY: Millis = 24 * HOUR;
/// 2026-01-05 00:00 UTC, a Monday.
const MONDAY: Millis = 1_767_571_200_000;
/// Upper bound on simulated time for one rollout.
const MAX_SIM_TIME: Millis = 120 * DAY;
/// Upper bound on driver ticks for one rollout.
const MAX_TICKS: u64 = 1_000_000;

// ---------------------------------------------------------------------------
// The in-memory store and driver
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Action {
    device: usize,
    wave: usize,
    kind: ActionKind,
    state: ActionState,
    attempts: u32,
    not_before: Millis,
    deadline: Millis,
    /// Position in the plan (release order within the wave).
    pos: usize,
}

/// What a simulated device will do with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Succeed,
    Fail,
    /// Never answers: the action times out.
    Offline,
    /// Reports `rolled_back` on its own (it went back by itself).
    SelfRollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Pause,
    Resume,
    Abort,
    Promote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A device's status report for `action` (sent while working on attempt `attempt`).
    Report {
        action: usize,
        attempt: u32,
        state: ActionState,
    },
    Operator(Op),
}

/// The simulated fleet's behaviour.
#[derive(Debug, Clone)]
struct Fleet {
    p_fail: f64,
    p_offline: f64,
    p_self_rollback: f64,
    /// Devices that always fail their install.
    bad: Vec<bool>,
    /// Devices three times slower than the others (they often time out).
    slow: Vec<bool>,
    max_stage_ms: Millis,
    /// Scenario tests: fixed fate per device (installs) and fixed stage latency.
    fixed: Option<Vec<Fate>>,
    fixed_latency: Option<Millis>,
}

struct Sim {
    rng: ChaCha8Rng,
    trace: bool,
    strategy: Strategy,
    fleet: Fleet,
    start: Millis,
    now: Millis,
    // Rollout row.
    state: RolloutState,
    wave: usize,
    waves: usize,
    covers_target: bool,
    start_at: Option<Millis>,
    gate_passed_at: Option<Millis>,
    last_release_at: Option<Millis>,
    promote: bool,
    rollback_requested: bool,
    analysis: Vec<otafleet_core::analysis::AnalysisRun>,
    // Action rows.
    actions: Vec<Action>,
    install_of: Vec<Option<usize>>,
    rollback_of: Vec<Option<usize>>,
    // Events.
    queue: BinaryHeap<Reverse<(Millis, u64, Ev)>>,
    seq: u64,
    // Bookkeeping for invariants and scenario assertions.
    gates: Vec<Option<Millis>>,
    releases: Vec<(Millis, usize)>,
    decisions: Vec<(Millis, Decision)>,
    state_log: Vec<(Millis, RolloutState)>,
    ticks: u64,
    /// Failed rollback actions scheduled again (the path the store takes too).
    rollback_retries: u64,
}

type SimResult<T = ()> = Result<T, String>;

impl Sim {
    fn new(seed: u64, strategy: Strategy, candidates: Vec<Candidate>, fleet: Fleet, start: Millis) -> Sim {
        let p = plan::plan(candidates.clone(), &strategy);
        let index: std::collections::HashMap<Uuid, usize> =
            candidates.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
        let mut actions = Vec::new();
        let mut install_of = vec![None; candidates.len()];
        for (w, devices) in p.waves.iter().enumerate() {
            for (pos, id) in devices.iter().enumerate() {
                let device = index[id];
                assert!(install_of[device].is_none(), "seed {seed}: planner put device {device} in two waves");
                install_of[device] = Some(actions.len());
                actions.push(Action {
                    device,
                    wave: w,
                    kind: ActionKind::Install,
                    state: ActionState::Scheduled,
                    attempts: 0,
                    not_before: 0,
                    deadline: 0,
                    pos,
                });
            }
        }
        let waves = p.waves.len();
        Sim {
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_f1ee7),
            trace: false,
            strategy,
            fleet,
            start,
            now: start,
            state: RolloutState::Pending,
            wave: 0,
            waves,
            covers_target: p.covers_target,
            start_at: None,
            gate_passed_at: None,
            last_release_at: None,
            promote: false,
            rollback_requested: false,
            analysis: Vec::new(),
            actions,
            install_of,
            rollback_of: vec![None; candidates.len()],
            queue: BinaryHeap::new(),
            seq: 0,
            gates: vec![None; waves],
            releases: Vec::new(),
            decisions: Vec::new(),
            state_log: vec![(start, RolloutState::Pending)],
            ticks: 0,
            rollback_retries: 0,
        }
    }

    fn log(&self, f: impl FnOnce() -> String) {
        if self.trace {
            println!("[{:>12}] {}", fmt_t(self.now - self.start), f());
        }
    }

    fn push(&mut self, at: Millis, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    fn schedule_op(&mut self, at: Millis, op: Op) {
        self.push(at, Ev::Operator(op));
    }

    fn set_state(&mut self, to: RolloutState) -> SimResult {
        let from = self.state;
        self.state = from.transition(to).map_err(|e| e.to_string())?;
        self.state_log.push((self.now, to));
        self.log(|| format!("rollout {from} -> {to}"));
        Ok(())
    }

    fn set_action(&mut self, i: usize, to: ActionState) -> SimResult {
        let a = &mut self.actions[i];
        let from = a.state;
        a.state = from.transition(to).map_err(|e| format!("action {i} (device {}): {e}", a.device))?;
        Ok(())
    }

    /// The snapshot the SQL driver would read.
    fn snapshot(&self, now: Millis) -> Snapshot<'_> {
        let mut current = WaveCounts::default();
        let mut in_flight_total = 0;
        let mut next_ready_at: Option<Millis> = None;
        let mut rollback = RollbackCounts { requested: self.rollback_requested, ..RollbackCounts::default() };
        for a in &self.actions {
            match a.kind {
                ActionKind::Install => {
                    if a.state.is_in_flight() {
                        in_flight_total += 1;
                    }
                    if a.wave == self.wave {
                        current.total += 1;
                        match a.state {
                            ActionState::Scheduled => {
                                current.scheduled += 1;
                                if a.not_before <= now {
                                    current.ready += 1;
                                } else {
                                    next_ready_at = Some(next_ready_at.map_or(a.not_before, |t| t.min(a.not_before)));
                                }
                            }
                            ActionState::Succeeded => current.succeeded += 1,
                            ActionState::Failed | ActionState::RolledBack => current.failed += 1,
                            ActionState::Skipped => current.skipped += 1,
                            _ => current.in_flight += 1,
                        }
                    }
                    if a.state == ActionState::Succeeded && self.rollback_of[a.device].is_none() {
                        rollback.missing += 1;
                    }
                }
                ActionKind::Rollback => {
                    if !a.state.is_terminal() {
                        rollback.open += 1;
                    }
                    if a.state == ActionState::Scheduled {
                        if a.not_before <= now {
                            rollback.ready += 1;
                        } else {
                            rollback.next_ready_at =
                                Some(rollback.next_ready_at.map_or(a.not_before, |t| t.min(a.not_before)));
                        }
                    }
                }
            }
        }
        Snapshot {
            state: self.state,
            strategy: &self.strategy,
            wave: self.wave,
            waves: self.waves,
            covers_target: self.covers_target,
            start_at: self.start_at,
            gate_passed_at: self.gate_passed_at,
            last_release_at: self.last_release_at,
            promote: self.promote,
            current,
            in_flight_total,
            next_ready_at,
            rollback,
            analysis: &self.analysis,
        }
    }

    fn skip_scheduled_installs(&mut self) -> SimResult {
        for i in 0..self.actions.len() {
            if self.actions[i].kind == ActionKind::Install && self.actions[i].state == ActionState::Scheduled {
                self.set_action(i, ActionState::Skipped)?;
            }
        }
        Ok(())
    }

    fn notify(&mut self, i: usize, deadline: Millis, now: Millis) -> SimResult {
        self.set_action(i, ActionState::Notified)?;
        let a = &mut self.actions[i];
        a.attempts += 1;
        a.deadline = deadline;
        let (device, kind, attempt) = (a.device, a.kind, a.attempts);
        self.log(|| {
            format!(
                "notify action {i} ({kind}, device {device}, attempt {attempt}), deadline +{}",
                fmt_t(deadline - now)
            )
        });
        self.device_receives(i, device, kind, attempt, now);
        Ok(())
    }

    /// A simulated device got an order: it plans its reports.
    fn device_receives(&mut self, action: usize, device: usize, kind: ActionKind, attempt: u32, now: Millis) {
        use ActionState::*;
        let f = &self.fleet;
        let fate = match (&f.fixed, kind) {
            (Some(fates), ActionKind::Install) => fates[device],
            (Some(_), ActionKind::Rollback) => Fate::Succeed,
            (None, ActionKind::Rollback) => match self.rng.gen_range(0..100) {
                0..=89 => Fate::Succeed,
                90..=94 => Fate::Fail,
                _ => Fate::Offline,
            },
            (None, ActionKind::Install) if f.bad[device] => Fate::Fail,
            (None, ActionKind::Install) => {
                let (pf, po, pr) = (f.p_fail, f.p_offline, f.p_self_rollback);
                let r: f64 = self.rng.gen();
                if r < pf {
                    Fate::Fail
                } else if r < pf + po {
                    Fate::Offline
                } else if r < pf + po + pr {
                    Fate::SelfRollback
                } else {
                    Fate::Succeed
                }
            }
        };
        let mut stages: Vec<ActionState> = match fate {
            Fate::Offline => return,
            Fate::Succeed => vec![Downloading, Installing, Verifying, Succeeded],
            Fate::Fail => {
                let k = self.rng.gen_range(0..=3);
                [Downloading, Installing, Verifying][..k].iter().copied().chain([Failed]).collect()
            }
            Fate::SelfRollback => vec![Downloading, Installing, RolledBack],
        };
        if f.fixed.is_none() {
            // Reports may skip stages.
            let last = stages.len() - 1;
            let mut k = 0;
            stages.retain(|_| {
                k += 1;
                k - 1 == last || self.rng.gen_range(0..5) != 0
            });
        }
        let slow = f.fixed.is_none() && self.fleet.slow[device];
        let mut t = now;
        for st in stages {
            let lat = match self.fleet.fixed_latency {
                Some(l) => l,
                None => self.rng.gen_range(1..=self.fleet.max_stage_ms) * if slow { 3 } else { 1 },
            };
            t += lat;
            self.push(t, Ev::Report { action, attempt, state: st });
        }
    }

    /// A failure (reported or timed out) of an in-flight action: what
    /// `effects::action_failure` says, exactly as the store applies it.
    fn action_failed(&mut self, i: usize, now: Millis, why: &str) -> SimResult {
        let a = &self.actions[i];
        let facts = effects::ActionFacts { kind: a.kind, state: a.state, attempts: a.attempts };
        let change = effects::action_failure(facts, self.state, &self.strategy.gate, why, "simulated", now)
            .map_err(|e| format!("action {i}: {e}"))?;
        self.log(|| format!("action {i} {why} after {} attempt(s): -> {}", facts.attempts, change.state));
        if let Some(not_before) = change.not_before {
            if not_before < now {
                return Err(format!("action_failure scheduled a retry in the past ({not_before} < {now})"));
            }
            self.actions[i].not_before = not_before;
        }
        if change.state == ActionState::Scheduled && facts.kind == ActionKind::Rollback {
            self.rollback_retries += 1;
        }
        self.set_action(i, change.state)
    }

    fn handle(&mut self, ev: Ev, now: Millis) -> SimResult {
        match ev {
            Ev::Report { action, attempt, state } => {
                let a = &self.actions[action];
                // The server ignores reports for actions no longer in flight, stale
                // reports (lower seq: an earlier attempt) and moves that are not legal.
                if !a.state.is_in_flight() || a.attempts != attempt || !a.state.can_transition_to(state) {
                    self.log(|| {
                        format!("ignored report {state} for action {action} (attempt {attempt}, now {})", a.state)
                    });
                    return Ok(());
                }
                self.log(|| format!("device {} reports {state} for action {action}", a.device));
                match state {
                    ActionState::Failed => self.action_failed(action, now, "failed")?,
                    s => self.set_action(action, s)?,
                }
            }
            Ev::Operator(op) => {
                self.log(|| format!("operator: {op:?} (state {})", self.state));
                let command = match op {
                    Op::Pause => effects::Command::SetState { to: RolloutState::Paused, reason: None },
                    Op::Resume => effects::Command::SetState { to: RolloutState::Running, reason: None },
                    Op::Abort => effects::Command::SetState { to: RolloutState::Aborted, reason: Some("operator") },
                    Op::Promote => effects::Command::Promote,
                };
                // Resume only undoes a pause (the API's resume is the same command).
                let applicable = !matches!(op, Op::Resume) || self.state == RolloutState::Paused;
                match effects::command(self.facts(), command, now) {
                    Ok(e) if applicable => self.apply_effects(&e, now)?,
                    Ok(_) => self.log(|| "  (rejected: not paused)".into()),
                    Err(e) => self.log(|| format!("  (rejected: {e})")),
                }
            }
        }
        Ok(())
    }

    fn timeouts(&mut self, now: Millis) -> SimResult {
        for i in 0..self.actions.len() {
            if self.actions[i].state.is_in_flight() && self.actions[i].deadline <= now {
                self.action_failed(i, now, "timed out")?;
            }
        }
        Ok(())
    }

    fn facts(&self) -> effects::RolloutFacts {
        effects::RolloutFacts {
            state: self.state,
            current_wave: self.wave,
            rollback_requested: self.rollback_requested,
            auto_rollback: self.strategy.auto_rollback,
        }
    }

    fn apply(&mut self, d: &Decision, now: Millis) -> SimResult {
        self.decisions.push((now, d.clone()));
        let e = effects::decision(&self.snapshot(now), d, now);
        if !matches!(d, Decision::Idle { .. }) && e == effects::Effects::default() {
            return Err(format!("{d:?} changed nothing"));
        }
        match d {
            Decision::Release { count: 0 } => return Err("engine returned Release{0}".into()),
            Decision::Release { .. } => {
                for w in 0..self.wave {
                    if self.gates[w].is_none() {
                        return Err(format!("release in wave {} before wave {w} passed its gate", self.wave));
                    }
                }
            }
            Decision::NextWave { from } if *from != self.wave => {
                return Err(format!("NextWave{{from: {from}}} but the current wave is {}", self.wave));
            }
            _ => {}
        }
        self.apply_effects(&e, now)
    }

    /// Applies effects to the in-memory rows: the simulator's counterpart of
    /// the store's `apply_effects`, deciding nothing itself.
    fn apply_effects(&mut self, e: &effects::Effects, now: Millis) -> SimResult {
        let r = &e.rollout;
        if let Some(to) = r.state {
            self.set_state(to)?;
        }
        if let Some(b) = r.rollback_requested {
            self.rollback_requested = b;
        }
        if r.advance_wave {
            self.wave += 1;
            self.gate_passed_at = None;
            self.promote = false;
            self.last_release_at = None;
            self.analysis.clear();
        }
        if let Some(runs) = &r.analysis {
            self.analysis = runs.clone();
        }
        if let Some(t) = r.gate_passed_at {
            self.gate_passed_at = Some(t);
            self.gates[self.wave] = Some(t);
        }
        if let Some(t) = r.last_release_at {
            self.last_release_at = Some(t);
        }
        if let Some(p) = r.promote {
            self.promote = p;
        }
        for change in &e.actions {
            match change {
                effects::ActionsChange::Release { kind, wave, count, deadline } => {
                    let mut picked: Vec<usize> = (0..self.actions.len())
                        .filter(|&i| {
                            let a = &self.actions[i];
                            a.kind == *kind
                                && wave.is_none_or(|w| a.wave == w)
                                && a.state == ActionState::Scheduled
                                && a.not_before <= now
                        })
                        .collect();
                    picked.sort_by_key(|&i| self.actions[i].pos);
                    picked.truncate(*count as usize);
                    if (picked.len() as u64) < *count {
                        return Err(format!("Release{{{count}}} but only {} actions are ready", picked.len()));
                    }
                    for i in picked {
                        self.notify(i, *deadline, now)?;
                        if *kind == ActionKind::Install {
                            self.releases.push((now, i));
                        }
                    }
                }
                effects::ActionsChange::SkipScheduledInstalls { .. } => self.skip_scheduled_installs()?,
                effects::ActionsChange::CreateRollbacks => {
                    let mut created = 0;
                    for i in 0..self.actions.len() {
                        let a = &self.actions[i];
                        if a.kind == ActionKind::Install
                            && a.state == ActionState::Succeeded
                            && self.rollback_of[a.device].is_none()
                        {
                            let (device, wave) = (a.device, a.wave);
                            let j = self.actions.len();
                            self.actions.push(Action {
                                device,
                                wave,
                                kind: ActionKind::Rollback,
                                state: ActionState::Scheduled,
                                attempts: 0,
                                not_before: now,
                                deadline: 0,
                                pos: j,
                            });
                            self.rollback_of[device] = Some(j);
                            created += 1;
                        }
                    }
                    if let Some(Decision::CreateRollbacks { count }) = self.decisions.last().map(|(_, d)| d) {
                        if created != *count {
                            return Err(format!("CreateRollbacks{{{count}}} but {created} devices needed one"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Decide and apply until Idle; returns the engine's wake-up time.
    fn drive(&mut self, now: Millis) -> SimResult<Option<Millis>> {
        for _ in 0..100_000 {
            let snap = self.snapshot(now);
            let d = engine::decide(&snap, now);
            let again = engine::decide(&snap.clone(), now);
            if d != again {
                return Err(format!("decide is not deterministic: {d:?} then {again:?} for {snap:?}"));
            }
            check_legal(&snap, now, &d).map_err(|e| format!("illegal decision {d:?}: {e}\nsnapshot: {snap:?}"))?;
            if self.trace && !matches!(d, Decision::Idle { wake_at: None }) {
                let c = snap.current;
                self.log(|| {
                    format!(
                        "decide -> {d:?}   [{} wave {}/{} sched {} ready {} fly {} ok {} bad {} skip {} fly_total {} rb {:?}]",
                        snap.state,
                        snap.wave,
                        snap.waves,
                        c.scheduled,
                        c.ready,
                        c.in_flight,
                        c.succeeded,
                        c.failed,
                        c.skipped,
                        snap.in_flight_total,
                        snap.rollback
                    )
                });
            }
            if let Decision::Idle { wake_at } = d {
                return Ok(wake_at);
            }
            self.apply(&d, now)?;
            self.check_invariants()?;
        }
        Err("the driver loop did not reach Idle after 100000 decisions".into())
    }

    fn check_invariants(&self) -> SimResult {
        let st = &self.strategy;
        let in_flight =
            self.actions.iter().filter(|a| a.kind == ActionKind::Install && a.state.is_in_flight()).count() as u64;
        if st.max_parallel > 0 && in_flight > st.max_parallel {
            return Err(format!("{in_flight} installs in flight, max_parallel is {}", st.max_parallel));
        }
        let mut installs = vec![0u8; self.install_of.len()];
        for (i, a) in self.actions.iter().enumerate() {
            if a.kind == ActionKind::Install {
                installs[a.device] += 1;
                if installs[a.device] > 1 {
                    return Err(format!("device {} has two install actions", a.device));
                }
                // Nothing of a later wave was ever handed out before its predecessors passed.
                if a.attempts > 0 && (0..a.wave).any(|w| self.gates[w].is_none()) {
                    return Err(format!("action {i} of wave {} was notified before earlier gates passed", a.wave));
                }
                // A retry of an earlier wave would never be released again: the engine only
                // releases the current wave.
                if a.state == ActionState::Scheduled && a.wave < self.wave && self.state.is_active() {
                    return Err(format!(
                        "action {i} (device {}) of wave {} is scheduled for a retry, but the rollout moved on to wave {}: it will never be released",
                        a.device, a.wave, self.wave
                    ));
                }
                if a.attempts > 0 && a.wave > self.wave {
                    return Err(format!(
                        "action {i} of wave {} notified while the rollout is in wave {}",
                        a.wave, self.wave
                    ));
                }
            }
        }
        if self.wave >= self.waves.max(1) {
            return Err(format!("wave index {} out of range ({} waves)", self.wave, self.waves));
        }
        Ok(())
    }

    fn run(&mut self) -> SimResult {
        let mut now = self.start;
        loop {
            self.now = now;
            self.ticks += 1;
            if self.ticks > MAX_TICKS {
                return Err(format!("no final state after {MAX_TICKS} ticks (state {})", self.state));
            }
            if now - self.start > MAX_SIM_TIME {
                return Err(format!(
                    "no final state after {} of simulated time (state {})",
                    fmt_t(MAX_SIM_TIME),
                    self.state
                ));
            }
            while let Some(Reverse((t, _, ev))) = self.queue.peek().copied() {
                if t > now {
                    break;
                }
                self.queue.pop();
                self.handle(ev, now)?;
            }
            self.timeouts(now)?;
            self.check_invariants()?;
            let wake = self.drive(now)?;
            if let Some(w) = wake {
                if w <= now {
                    return Err(format!("engine asked to wake at {w}, not after now {now}"));
                }
            }
            let deadline = self.actions.iter().filter(|a| a.state.is_in_flight()).map(|a| a.deadline).min();
            let event = self.queue.peek().map(|Reverse((t, _, _))| *t);
            match [wake, deadline, event].into_iter().flatten().min() {
                Some(t) => now = t,
                None => break,
            }
        }
        self.final_checks()
    }

    fn final_checks(&self) -> SimResult {
        use RolloutState::*;
        let st = &self.strategy;
        match self.state {
            Succeeded | RolledBack => {}
            Failed | Aborted if !st.auto_rollback => {}
            s => {
                return Err(format!(
                    "stalled in state {s} with nothing left to happen (auto_rollback {})",
                    st.auto_rollback
                ))
            }
        }
        if let Some(a) = self.actions.iter().find(|a| a.state.is_in_flight()) {
            return Err(format!("action of device {} still in flight at the end", a.device));
        }
        let ever_failed = self.state_log.iter().any(|(_, s)| matches!(s, Failed | Aborted));
        if self.state == Succeeded || (self.state == RolledBack && !ever_failed) {
            for w in 0..self.waves {
                let (mut total, mut ok) = (0u64, 0u64);
                for a in self.actions.iter().filter(|a| a.kind == ActionKind::Install && a.wave == w) {
                    total += 1;
                    ok += (a.state == ActionState::Succeeded) as u64;
                }
                let rate = ok as f64 / total as f64;
                if rate < st.gate.success_threshold {
                    return Err(format!(
                        "succeeded, but wave {w} has {ok} of {total} devices updated, below the threshold {}",
                        st.gate.success_threshold
                    ));
                }
                if self.gates[w].is_none() {
                    return Err(format!("succeeded, but wave {w} never passed its gate"));
                }
            }
            // Every planned device was handed out and finished: nothing may be left waiting for a retry.
            if let Some((i, a)) = self.actions.iter().enumerate().find(|(_, a)| a.state == ActionState::Scheduled) {
                return Err(format!(
                    "succeeded, but action {i} (device {}, wave {}) is still scheduled (a retry that will never be released)",
                    a.device, a.wave
                ));
            }
        }
        if ever_failed && st.auto_rollback && self.state != RolledBack {
            return Err(format!("failed/aborted with auto_rollback but ended {}", self.state));
        }
        if self.state == RolledBack {
            for a in self.actions.iter().filter(|a| a.kind == ActionKind::Install && a.state == ActionState::Succeeded)
            {
                match self.rollback_of[a.device].map(|j| self.actions[j].state) {
                    Some(ActionState::Succeeded | ActionState::Failed) => {}
                    other => {
                        return Err(format!(
                            "rolled back, but updated device {} has rollback action {other:?}",
                            a.device
                        ))
                    }
                }
            }
        }
        if matches!(self.state, Failed | Aborted | RolledBack) {
            if let Some(a) = self.actions.iter().find(|a| a.state == ActionState::Scheduled) {
                return Err(format!("ended {}, but device {} is still scheduled", self.state, a.device));
            }
        }
        Ok(())
    }
}

fn fmt_t(ms: Millis) -> String {
    let s = ms / 1000;
    format!("{}d{:02}:{:02}:{:02}.{:03}", s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60, ms % 1000)
}

// ---------------------------------------------------------------------------
// Legality of a decision given the snapshot it was made from
// ---------------------------------------------------------------------------

fn rate(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        n as f64 / total as f64
    }
}

/// Whether `d` is a legal answer to `s` at `now`: the state machine allows its
/// transition and every precondition the strategy states holds.
fn check_legal(s: &Snapshot<'_>, now: Millis, d: &Decision) -> Result<(), String> {
    use RolloutState::*;
    let c = s.current;
    let st = s.strategy;
    let g = &st.gate;
    let failing = c.total > 0 && rate(c.failed, c.total) > g.failure_threshold;
    let bake_over = |p: Millis| s.promote || now >= p + g.bake_time_secs as i64 * 1000;
    let ended = matches!(s.state, Failed | Aborted | Succeeded);
    let transition = |to: RolloutState| {
        if s.state.can_transition_to(to) {
            Ok(())
        } else {
            Err(format!("{} -> {to} is not a legal transition", s.state))
        }
    };
    let need = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
    match d {
        Decision::Idle { wake_at } => need(wake_at.is_none_or(|w| w > now), "wake_at is not in the future"),
        Decision::Start => {
            transition(Running)?;
            need(s.state == Pending, "start outside pending")?;
            need(s.waves > 0, "start without waves")?;
            need(s.start_at.is_none_or(|t| t <= now), "start before start_at")
        }
        Decision::Release { count } => {
            need(s.state == Running, "release while not running")?;
            need(*count > 0, "release of zero devices")?;
            need(*count <= c.ready, "release of more devices than are ready")?;
            need(st.max_parallel == 0 || s.in_flight_total + count <= st.max_parallel, "release beyond max_parallel")?;
            need(st.batch_size == 0 || *count <= st.batch_size, "release beyond batch_size")?;
            need(st.window_open(now), "release outside the maintenance windows")?;
            let delay_ok = st.batch_size == 0
                || st.batch_delay_secs == 0
                || s.last_release_at.is_none_or(|l| l + st.batch_delay_secs as i64 * 1000 <= now);
            need(delay_ok, "release before batch_delay elapsed")?;
            need(!failing, "release while the failure threshold is exceeded")
        }
        Decision::GatePassed { report } => {
            need(s.state == Running, "gate passed while not running")?;
            need(s.gate_passed_at.is_none(), "gate passed twice")?;
            need(c.scheduled == 0, "gate passed with devices still scheduled")?;
            need(!failing, "gate passed while the failure threshold is exceeded")?;
            need(report.wave == s.wave, "report of another wave")?;
            need(rate(c.succeeded, c.total) >= g.success_threshold, "gate passed below the success threshold")
        }
        Decision::NextWave { from } => {
            need(s.state == Running, "next wave while not running")?;
            need(*from == s.wave, "next wave from another wave")?;
            need(s.wave + 1 < s.waves, "next wave after the last wave")?;
            need(c.scheduled == 0, "next wave with devices of this wave still scheduled")?;
            need(c.in_flight == 0, "next wave with devices of this wave still in flight")?;
            need(!failing, "next wave while the failure threshold is exceeded")?;
            need(s.gate_passed_at.is_some_and(bake_over), "next wave before the gate passed and the bake time elapsed")
        }
        Decision::Succeed { .. } => {
            transition(Succeeded)?;
            need(s.wave + 1 >= s.waves, "succeed before the last wave")?;
            need(c.scheduled == 0 && s.in_flight_total == 0, "succeed with devices scheduled or in flight")?;
            need(!failing, "succeed while the failure threshold is exceeded")?;
            need(rate(c.succeeded, c.total) >= g.success_threshold, "succeed below the success threshold")?;
            need(s.gate_passed_at.is_some_and(bake_over), "succeed before the gate passed and the bake time elapsed")
        }
        Decision::Fail { report, .. } => {
            transition(Failed)?;
            need(matches!(s.state, Running | Paused), "fail outside running/paused")?;
            need(report.wave == s.wave, "report of another wave")?;
            let below = s.state == Running
                && s.gate_passed_at.is_none()
                && c.scheduled == 0
                && c.in_flight == 0
                && rate(c.succeeded, c.total) < g.success_threshold;
            let analysis_failed = s.state == Running
                && s.gate_passed_at.is_some_and(|p| {
                    engine::analysis_runs(s, p)
                        .any(|(_, spec, run)| matches!(run.verdict(spec), analysis::Verdict::Failed { .. }))
                });
            need(failing || below || analysis_failed, "fail without a failed gate")
        }
        Decision::CreateRollbacks { count } => {
            need(ended && s.rollback.requested, "rollbacks without a request")?;
            need(*count > 0 && *count == s.rollback.missing, "rollback count differs from the devices missing one")
        }
        Decision::ReleaseRollbacks { count } => {
            need(ended && s.rollback.requested, "rollback release without a request")?;
            need(s.rollback.missing == 0, "rollback release before every rollback was created")?;
            need(*count > 0 && *count == s.rollback.ready, "rollback release count differs from the ready ones")
        }
        Decision::Measure { checks } => {
            need(s.state == Running, "measure while not running")?;
            need(!checks.is_empty(), "measure of no checks")?;
            need(s.gate_passed_at.is_some() && !s.promote, "measure outside the bake")?;
            need(checks.iter().all(|i| *i < st.analysis.len()), "measure of an unknown check")
        }
        Decision::Pause { .. } => {
            transition(Paused)?;
            need(s.gate_passed_at.is_some() && !s.promote, "analysis pause outside the bake")?;
            need(!st.analysis.is_empty(), "analysis pause without analysis")
        }
        Decision::FinishRollback => {
            transition(RolledBack)?;
            need(ended && s.rollback.requested, "finish rollback without a request")?;
            need(
                s.rollback.missing == 0 && s.rollback.open == 0 && s.in_flight_total == 0,
                "finish rollback with devices not rolled back or still in flight",
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Random worlds
// ---------------------------------------------------------------------------

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    xs[rng.gen_range(0..xs.len())]
}

fn random_strategy(rng: &mut ChaCha8Rng) -> Strategy {
    let mut spec = StrategySpec::default();
    match rng.gen_range(0..10) {
        0 => spec.preset = Some(Preset::Canary),
        1 => {
            spec.preset = Some(Preset::Blue);
            if rng.gen_bool(0.5) {
                spec.count = Some(rng.gen_range(1..=10));
            } else {
                spec.percent = Some(rng.gen_range(1..=100) as f64);
            }
        }
        2 => spec.preset = Some(Preset::Green),
        _ => {
            let k = rng.gen_range(1..=4);
            let mut steps: Vec<Step> = (0..k)
                .map(|_| {
                    if rng.gen_bool(0.4) {
                        Step::Count(rng.gen_range(1..=20))
                    } else {
                        Step::Percent(rng.gen_range(1..=200) as f64 / 2.0)
                    }
                })
                .collect();
            if rng.gen_bool(0.7) {
                steps.push(Step::Percent(100.0));
            }
            spec.steps = Some(steps);
        }
    }
    spec.success_threshold = Some(pick(rng, &[0.0, 0.5, 0.8, 0.9, 0.95, 0.95, 1.0]));
    spec.failure_threshold = Some(pick(rng, &[0.0, 0.05, 0.05, 0.1, 0.2, 0.5, 1.0]));
    spec.bake_time_secs = Some(pick(rng, &[0, 0, 30, 600, 3600]));
    spec.timeout_secs = Some(pick(rng, &[30, 60, 300, 900]));
    spec.retries = Some(rng.gen_range(0..=3));
    spec.backoff_secs = Some(pick(rng, &[0, 1, 5, 30]));
    spec.batch_size = Some(pick(rng, &[0, 0, 1, 3, 20]));
    spec.batch_delay_secs = Some(pick(rng, &[0, 10, 60]));
    spec.max_parallel = Some(pick(rng, &[0, 0, 1, 3, 10, 50]));
    spec.auto_rollback = Some(rng.gen_bool(0.7));
    spec.seed = Some(rng.gen());
    if rng.gen_bool(0.2) {
        let w = pick(
            rng,
            &["22:00-04:00 UTC", "Mon-Fri 09:00-17:00 UTC+02:00", "daily 01:00-02:30 UTC-05:00", "Sat,Sun 00:00-24:00"],
        );
        spec.windows = Some(vec![w.to_string()]);
    }
    spec.resolve(0).expect("generated strategies are valid")
}

fn build(seed: u64) -> Sim {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let strategy = random_strategy(&mut rng);
    let n = if rng.gen_bool(0.6) { rng.gen_range(1..=20) } else { rng.gen_range(1..=200) };
    let candidates: Vec<Candidate> = (0..n)
        .map(|_| Candidate { id: Uuid::from_u128(rng.gen()), online: rng.gen_bool(0.9), healthy: rng.gen_bool(0.9) })
        .collect();
    let p_bad = pick(&mut rng, &[0.0, 0.0, 0.02, 0.1]);
    let p_slow = pick(&mut rng, &[0.0, 0.05, 0.2]);
    let fleet = Fleet {
        p_fail: pick(&mut rng, &[0.0, 0.0, 0.01, 0.05, 0.2, 0.6]),
        p_offline: pick(&mut rng, &[0.0, 0.01, 0.1]),
        p_self_rollback: pick(&mut rng, &[0.0, 0.0, 0.01, 0.05]),
        bad: (0..n).map(|_| rng.gen_bool(p_bad)).collect(),
        slow: (0..n).map(|_| rng.gen_bool(p_slow)).collect(),
        max_stage_ms: (strategy.gate.timeout_secs as i64 * 1000 / 3).max(1),
        fixed: None,
        fixed_latency: None,
    };
    let start = MONDAY + rng.gen_range(0..7 * DAY / SEC) * SEC;
    let mut sim = Sim::new(seed, strategy, candidates, fleet, start);
    if rng.gen_bool(0.2) {
        sim.start_at = Some(start + rng.gen_range(0..3600) * SEC);
    }
    if rng.gen_bool(0.35) {
        for _ in 0..rng.gen_range(1..=3) {
            let at = start + rng.gen_range(0..4 * HOUR);
            match rng.gen_range(0..10) {
                0..=4 => {
                    sim.schedule_op(at, Op::Pause);
                    sim.schedule_op(at + rng.gen_range(1..6 * HOUR), Op::Resume);
                }
                5..=7 => sim.schedule_op(at, Op::Promote),
                _ => sim.schedule_op(at, Op::Abort),
            }
        }
    }
    sim
}

fn run_seed(seed: u64, trace: bool) -> Result<Sim, String> {
    let result = std::panic::catch_unwind(|| {
        let mut sim = build(seed);
        sim.trace = trace;
        if trace {
            println!("seed {seed}: strategy {}", serde_json::to_string(&sim.strategy).unwrap());
            println!(
                "seed {seed}: {} devices, {} waves, fleet p_fail {} p_offline {} p_self_rollback {}, start_at {:?}",
                sim.install_of.len(),
                sim.waves,
                sim.fleet.p_fail,
                sim.fleet.p_offline,
                sim.fleet.p_self_rollback,
                sim.start_at.map(|t| fmt_t(t - sim.start))
            );
        }
        let r = sim.run();
        (
            r.map_err(|e| format!("{e} (at t+{}, state {}, wave {})", fmt_t(sim.now - sim.start), sim.state, sim.wave)),
            sim,
        )
    });
    match result {
        Ok((Ok(()), sim)) => Ok(sim),
        Ok((Err(e), _)) => Err(e),
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// A run's final state and tick count, or what went wrong.
type RunResult = Result<(RolloutState, u64), String>;

fn replay_hint(seed: u64) -> String {
    format!("replay with: OTAFLEET_SIM_SEED={seed} cargo test -p otafleet-core --test simulation -- --nocapture")
}

#[test]
fn simulation_many_seeds() {
    if let Ok(seed) = std::env::var("OTAFLEET_SIM_SEED") {
        let seed: u64 = seed.parse().expect("OTAFLEET_SIM_SEED must be a number");
        match run_seed(seed, true) {
            Ok(sim) => println!("seed {seed}: ok, ended {} after {}", sim.state, fmt_t(sim.now - sim.start)),
            Err(e) => panic!("simulation seed {seed} failed: {e}\n{}", replay_hint(seed)),
        }
        return;
    }
    let runs: u64 = std::env::var("OTAFLEET_SIM_RUNS")
        .ok()
        .map(|v| v.parse().expect("OTAFLEET_SIM_RUNS must be a number"))
        .unwrap_or(1000);
    let t0 = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4) as u64;
    let results: Vec<Vec<(u64, RunResult)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (0..runs)
                        .filter(|s| s % threads == t)
                        .map(|seed| (seed, run_seed(seed, false).map(|sim| (sim.state, sim.rollback_retries))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<_> = results.into_iter().flatten().collect();
    all.sort_by_key(|(s, _)| *s);
    let mut by_state = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    let mut rollback_retries = 0u64;
    for (seed, r) in &all {
        match r {
            Ok((state, retries)) => {
                *by_state.entry(state.as_str()).or_insert(0u64) += 1;
                rollback_retries += retries;
            }
            Err(e) => failures.push((*seed, e.clone())),
        }
    }
    println!(
        "{runs} seeded runs in {:.2?} on {threads} threads; outcomes {by_state:?}; failed rollbacks retried: {rollback_retries}",
        t0.elapsed()
    );
    if let Some((seed, e)) = failures.first() {
        let more = failures.iter().skip(1).take(9).map(|(s, e)| format!("  seed {s}: {e}\n")).collect::<String>();
        panic!(
            "simulation seed {seed} failed: {e}\n{} failing seeds in total; more:\n{more}{}",
            failures.len(),
            replay_hint(*seed)
        );
    }
    // The worlds must actually exercise the interesting paths.
    if runs >= 500 {
        for s in ["succeeded", "rolled_back", "failed"] {
            assert!(by_state.get(s).copied().unwrap_or(0) > 0, "no run ended {s}: the generator lost coverage");
        }
        assert!(rollback_retries > 0, "no failed rollback was retried: the generator lost coverage");
    }
}

// ---------------------------------------------------------------------------
// Hand-written scenarios
// ---------------------------------------------------------------------------

fn strategy(json: &str) -> Strategy {
    serde_json::from_str::<StrategySpec>(json).unwrap().resolve(1).unwrap()
}

fn fixed_world(json: &str, fates: Vec<Fate>, latency: Millis, start: Millis) -> Sim {
    let n = fates.len();
    let candidates =
        (0..n).map(|i| Candidate { id: Uuid::from_u128(i as u128 + 1), online: true, healthy: true }).collect();
    let fleet = Fleet {
        p_fail: 0.0,
        p_offline: 0.0,
        p_self_rollback: 0.0,
        bad: vec![false; n],
        slow: vec![false; n],
        max_stage_ms: 1,
        fixed: Some(fates),
        fixed_latency: Some(latency),
    };
    let mut sim = Sim::new(0, strategy(json), candidates, fleet, start);
    sim.trace = std::env::var_os("OTAFLEET_SIM_TRACE").is_some();
    sim
}

fn install_states(sim: &Sim, wave: usize) -> Vec<ActionState> {
    sim.actions.iter().filter(|a| a.kind == ActionKind::Install && a.wave == wave).map(|a| a.state).collect()
}

#[test]
fn scenario_failing_canary_rolls_back() {
    // Two canaries, one fails: 50% > 40% failure threshold. The other is rolled back,
    // and the rest of the fleet is never touched.
    let json = r#"{"steps":[2,"100%"],"failure_threshold":0.4,"retries":0,"auto_rollback":true,"seed":3}"#;
    let mut sim = fixed_world(json, vec![Fate::Succeed; 10], 1_000, MONDAY);
    let canaries = plan::plan(
        (0..10).map(|i| Candidate { id: Uuid::from_u128(i + 1), online: true, healthy: true }).collect(),
        &sim.strategy,
    )
    .waves[0]
        .clone();
    let bad = canaries[1].as_u128() as usize - 1;
    sim.fleet.fixed.as_mut().unwrap()[bad] = Fate::Fail;
    sim.run().unwrap();
    assert_eq!(sim.state, RolloutState::RolledBack);
    assert!(sim.state_log.iter().any(|(_, s)| *s == RolloutState::Failed));
    assert_eq!(install_states(&sim, 0).iter().filter(|s| **s == ActionState::Succeeded).count(), 1);
    assert!(install_states(&sim, 1).iter().all(|s| *s == ActionState::Skipped));
    let rollbacks: Vec<_> = sim.actions.iter().filter(|a| a.kind == ActionKind::Rollback).collect();
    assert_eq!(rollbacks.len(), 1);
    assert_eq!(rollbacks[0].state, ActionState::Succeeded);
    assert_ne!(rollbacks[0].device, bad);
    assert!(sim.releases.iter().all(|(_, i)| sim.actions[*i].wave == 0));
}

#[test]
fn scenario_three_waves_succeed_with_bake_time() {
    let json = r#"{"steps":[1,"10%","100%"],"bake_time_secs":60,"success_threshold":1.0}"#;
    let mut sim = fixed_world(json, vec![Fate::Succeed; 50], 2_000, MONDAY);
    sim.run().unwrap();
    assert_eq!(sim.state, RolloutState::Succeeded);
    assert_eq!(sim.waves, 3);
    assert_eq!([0, 1, 2].map(|w| install_states(&sim, w).len()), [1, 4, 45]);
    assert!(sim.actions.iter().all(|a| a.state == ActionState::Succeeded && a.attempts == 1));
    let gates: Vec<Millis> = sim.gates.iter().map(|g| g.unwrap()).collect();
    // Four reports of 2 s each per wave, then 60 s of bake before the next wave.
    assert_eq!(gates, vec![MONDAY + 8_000, MONDAY + 76_000, MONDAY + 144_000]);
    for w in 1..3 {
        let first = sim.releases.iter().find(|(_, i)| sim.actions[*i].wave == w).unwrap().0;
        assert_eq!(first, gates[w - 1] + 60_000);
    }
    // The last wave bakes too before the rollout is declared a success.
    assert_eq!(sim.state_log.last().unwrap().0, gates[2] + 60_000);
}

#[test]
fn scenario_pause_holds_releases_until_resume() {
    let json = r#"{"steps":["100%"],"batch_size":2,"batch_delay_secs":10}"#;
    let mut sim = fixed_world(json, vec![Fate::Succeed; 8], 1_000, MONDAY);
    sim.schedule_op(MONDAY + 15_000, Op::Pause);
    sim.schedule_op(MONDAY + HOUR, Op::Resume);
    sim.run().unwrap();
    assert_eq!(sim.state, RolloutState::Succeeded);
    let times: Vec<Millis> = sim.releases.iter().map(|(t, _)| *t - MONDAY).collect();
    // Batches at 0 s and 10 s, paused at 15 s, the rest when resumed.
    assert_eq!(times, vec![0, 0, 10_000, 10_000, HOUR, HOUR, HOUR + 10_000, HOUR + 10_000]);
    let states: Vec<RolloutState> = sim.state_log.iter().map(|(_, s)| *s).collect();
    use RolloutState::*;
    assert_eq!(states, vec![Pending, Running, Paused, Running, Succeeded]);
}

#[test]
fn scenario_window_holds_releases() {
    let json = r#"{"steps":[1,"100%"],"windows":["22:00-04:00 UTC"],"max_parallel":2}"#;
    // Devices take 90 minutes per stage: the window (6 h) closes mid-rollout.
    let noon = MONDAY + 12 * HOUR;
    let mut sim = fixed_world(json, vec![Fate::Succeed; 6], 90 * 60_000, noon);
    sim.strategy.gate.timeout_secs = 24 * 3600;
    sim.run().unwrap();
    assert_eq!(sim.state, RolloutState::Succeeded);
    for (t, _) in &sim.releases {
        assert!(sim.strategy.window_open(*t), "released outside the window at {}", fmt_t(*t - MONDAY));
    }
    // Nothing before 22:00; the canary at 22:00 takes 6 h, so wave 1 waits for the next night.
    assert_eq!(sim.releases[0].0, MONDAY + 22 * HOUR);
    assert_eq!(sim.gates[0], Some(MONDAY + 28 * HOUR));
    assert!(sim.releases[1..].iter().all(|(t, _)| *t >= MONDAY + DAY + 22 * HOUR));
}

#[test]
fn scenario_abort_without_auto_rollback_stays_aborted() {
    let json = r#"{"steps":["100%"],"auto_rollback":false,"max_parallel":1}"#;
    let mut sim = fixed_world(json, vec![Fate::Succeed; 5], 1_000, MONDAY);
    sim.schedule_op(MONDAY + 5_000, Op::Abort);
    sim.run().unwrap();
    assert_eq!(sim.state, RolloutState::Aborted);
    let states = install_states(&sim, 0);
    assert_eq!(states.iter().filter(|s| **s == ActionState::Succeeded).count(), 2);
    assert_eq!(states.iter().filter(|s| **s == ActionState::Skipped).count(), 3);
    assert!(sim.actions.iter().all(|a| a.kind == ActionKind::Install));
}

// ---------------------------------------------------------------------------
// Exhaustive legality of decisions over small snapshots
// ---------------------------------------------------------------------------

#[test]
fn every_decision_is_legal_for_every_small_snapshot() {
    let strategies = [
        strategy(r#"{"steps":[1,"100%"]}"#),
        strategy(
            r#"{"steps":[1,"100%"],"success_threshold":0.5,"failure_threshold":0.5,"bake_time_secs":60,"max_parallel":1}"#,
        ),
        strategy(
            r#"{"steps":["100%"],"success_threshold":0.0,"failure_threshold":1.0,"batch_size":1,"batch_delay_secs":10}"#,
        ),
        strategy(
            r#"{"steps":[1,2,"100%"],"windows":["22:00-04:00 UTC"],"success_threshold":1.0,"failure_threshold":0.0}"#,
        ),
    ];
    let nows = [MONDAY + 12 * HOUR, MONDAY + 23 * HOUR];
    let mut checked = 0u64;
    for st in &strategies {
        for &state in RolloutState::ALL {
            for (wave, waves) in [(0, 0), (0, 1), (0, 2), (1, 2), (2, 3)] {
                for total in 0..=3u64 {
                    for_each_partition(total, |[scheduled, in_flight, succeeded, failed, skipped]| {
                        for ready in 0..=scheduled {
                            for gate_passed_at in [None, Some(MONDAY), Some(nows[1] - 1)] {
                                for promote in [false, true] {
                                    for extra_in_flight in [0, 1] {
                                        for last_release_at in [None, Some(nows[0] - 5_000)] {
                                            for (requested, missing, open, rb_ready) in [
                                                (false, 0, 0, 0),
                                                (true, 0, 0, 0),
                                                (true, 1, 0, 0),
                                                (true, 0, 1, 0),
                                                (true, 0, 1, 1),
                                                (true, 2, 1, 0),
                                            ] {
                                                for start_at in [None, Some(nows[0] + 1)] {
                                                    if !reachable(
                                                        state,
                                                        wave,
                                                        waves,
                                                        total,
                                                        succeeded,
                                                        gate_passed_at,
                                                        st,
                                                    ) {
                                                        continue;
                                                    }
                                                    let s = Snapshot {
                                                        state,
                                                        strategy: st,
                                                        wave,
                                                        waves,
                                                        covers_target: engine::covers_target_by_steps(st),
                                                        start_at,
                                                        gate_passed_at,
                                                        last_release_at,
                                                        promote,
                                                        current: WaveCounts {
                                                            total,
                                                            scheduled,
                                                            ready,
                                                            in_flight,
                                                            succeeded,
                                                            failed,
                                                            skipped,
                                                        },
                                                        in_flight_total: in_flight + extra_in_flight,
                                                        next_ready_at: (ready < scheduled).then_some(nows[1] + 1),
                                                        rollback: RollbackCounts {
                                                            requested,
                                                            missing,
                                                            open,
                                                            ready: rb_ready,
                                                            next_ready_at: (open > rb_ready).then_some(nows[1] + 1),
                                                        },
                                                        analysis: &[],
                                                    };
                                                    for now in nows {
                                                        let d = engine::decide(&s, now);
                                                        assert_eq!(
                                                            d,
                                                            engine::decide(&s, now),
                                                            "not deterministic: {s:?}"
                                                        );
                                                        if let Err(e) = check_legal(&s, now, &d) {
                                                            panic!("illegal decision {d:?} at {now}: {e}\n{s:?}");
                                                        }
                                                        checked += 1;
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    });
                }
            }
        }
    }
    assert!(checked > 100_000, "{checked}");
}

/// Filters out snapshots no driver can produce: waves are never empty, and a wave
/// whose gate passed met its success threshold (succeeded installs stay succeeded).
fn reachable(
    state: RolloutState,
    wave: usize,
    waves: usize,
    total: u64,
    succeeded: u64,
    gate_passed_at: Option<Millis>,
    st: &Strategy,
) -> bool {
    if waves == 0 {
        return state == RolloutState::Pending && total == 0 && gate_passed_at.is_none();
    }
    wave < waves && total > 0 && gate_passed_at.is_none_or(|_| rate(succeeded, total) >= st.gate.success_threshold)
}

fn for_each_partition(total: u64, mut f: impl FnMut([u64; 5])) {
    for a in 0..=total {
        for b in 0..=total - a {
            for c in 0..=total - a - b {
                for d in 0..=total - a - b - c {
                    f([a, b, c, d, total - a - b - c - d]);
                }
            }
        }
    }
}

#[test]
fn simulation_is_reproducible() {
    // The same seed gives the very same history: decisions, times and final state.
    for seed in 0..25 {
        let a = run_seed(seed, false).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", replay_hint(seed)));
        let b = run_seed(seed, false).unwrap();
        assert_eq!(a.decisions, b.decisions, "seed {seed}");
        assert_eq!(a.releases, b.releases, "seed {seed}");
        assert_eq!((a.state, a.now, a.ticks), (b.state, b.now, b.ticks), "seed {seed}");
    }
}
