//! Deterministic simulation of the rollout engine's *analysis gates*: a
//! release that heats the devices up is stopped at the canary, a healthy one
//! is never stopped.
//!
//! # The model
//!
//! * A seeded fleet of 20 to 200 devices, all on `1.0.0`, each sending one
//!   `cpu_temp_c` sample every 10 s (at its own seeded phase) on a simulated
//!   clock in ms. On `1.0.0` a sample is normal(60, 3). The release `2.0.0`
//!   is one of: healthy (the same distribution, or shifted by a harmless
//!   +0.5 °C), degrading (+25 °C, so normal(85, 3)), or subtly degrading
//!   (every sample ×1.15, so about normal(69, 3.45)).
//! * Samples are kept as the server keeps them: one [`Aggregate`] per device,
//!   version and 10-second window (the finest of
//!   [`telemetry::DEFAULT_RESOLUTIONS`]), tagged with the version the device
//!   ran when it took the sample.
//! * A strategy, seeded: the `canary` preset or steps `[1, "10%", "100%"]`,
//!   a bake of 120 s, and one or two analysis checks written as the JSON an
//!   operator writes: an absolute one (`max < 80` or `p95 < 75`) and/or a
//!   relative one (`p95 <= 1.1 × baseline`), each measured every 30 s, 2 or 3
//!   times, over a window of 60 s, after an initial delay of 30 or 60 s.
//! * A small in-memory driver calls [`engine::decide`] until it is idle,
//!   checks that every decision is legal ([`check_legal`]), and applies what
//!   [`effects::decision`] says to its rows, as the store does. Released
//!   devices install after a seeded delay of up to 20 s: the action goes to
//!   `succeeded` and the device switches to `2.0.0`. Nothing fails to
//!   install, nothing times out, no operator acts: only the analysis can
//!   stop a rollout.
//! * On [`Decision::Measure`] the measurement is gathered as the server's
//!   `service::analysis::metric_measurement` and the store's `wave_windows` /
//!   `baseline_windows` do: the windows starting in
//!   `[bucket_start(now − window), now]` of the current wave's devices
//!   taken on `2.0.0` (the wave), and of the devices of the target that are
//!   in no wave up to the current one, taken on any other version (the
//!   baseline: the devices still on the previous version), each side merged by
//!   [`analysis::summarize`], judged by [`analysis::measure`] and recorded
//!   with [`effects::measured`].
//! * A run ends when the rollout succeeded, failed (the rollback that
//!   follows is not simulated) or paused.
//!
//! The thresholds are chosen so that the statistics make the assertions
//! certain, not merely likely: a healthy sample reaches 80 °C (`max < 80`)
//! with a probability of about 10⁻¹⁰ (6.5 σ), and a p95 above 75 °C or 10%
//! above the baseline's (about 71 °C) needs several samples beyond 3.5 σ;
//! a sample of the degrading release is below 80 °C with a probability of
//! 5% and below 75 °C of 0.04%, so the canary's three or more samples give
//! it away at the first measurement. (`max < 75` would
//! be only a 5 σ bound: about one healthy sample in three million reaches
//! it, and ten thousand seeds judge a million or two of them — likely to
//! pass, but not certain enough to assert.) The subtle degradation is
//! reported, not asserted: a canary's 3 to 7 samples cannot tell 69 °C from
//! 60 °C against a 10% margin with certainty.
//!
//! * `OTAFLEET_SIM_SEEDS=N` — number of seeds of the main test (default 600).
//! * `OTAFLEET_SIM_SEED=N` — run one seed with a step-by-step trace:
//!   `OTAFLEET_SIM_SEED=N cargo test -p otafleet-core --test analysis_simulation -- --nocapture`

use otafleet_core::analysis::{
    self, AnalysisKind, AnalysisRun, Condition, Measured, Measurement, MetricMeasurement, Verdict,
};
use otafleet_core::effects::{self, ActionsChange, Command, Effects, EventSpec, RolloutFacts};
use otafleet_core::engine::{self, Decision, RollbackCounts, Snapshot, WaveCounts};
use otafleet_core::plan::{self, Candidate};
use otafleet_core::telemetry::{self, Aggregate};
use otafleet_core::{ActionKind, ActionState, EventKind, Millis, RolloutState, Strategy, StrategySpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::time::Instant;
use uuid::Uuid;

const SEC: Millis = 1_000;
/// 2026-01-05 00:00 UTC.
const MONDAY: Millis = 1_767_571_200_000;
/// Every device sends one sample this often.
const SAMPLE_EVERY: Millis = 10 * SEC;
/// Devices send telemetry for this long before the rollout starts.
const HISTORY: Millis = 300 * SEC;
/// Upper bounds on one run.
const MAX_SIM_TIME: Millis = 6 * 3_600 * SEC;
const MAX_TICKS: u64 = 100_000;
const OLD: &str = "1.0.0";
const NEW: &str = "2.0.0";
const METRIC: &str = "cpu_temp_c";
/// Default number of seeds of the main test.
const DEFAULT_SEEDS: u64 = 600;

// ---------------------------------------------------------------------------
// The world: the fleet, the release and the strategy
// ---------------------------------------------------------------------------

/// How `2.0.0` changes a device's temperature.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Release {
    /// As `1.0.0`, shifted by `shift` °C (0, or a harmless 0.5).
    Healthy { shift: f64 },
    /// +25 °C: normal(85, 3).
    Degrading,
    /// Every sample ×1.15: about normal(69, 3.45).
    Subtle,
}

impl Release {
    /// A sample of a device on `2.0.0`, from what it would have measured on `1.0.0`.
    fn apply(self, healthy: f64) -> f64 {
        match self {
            Release::Healthy { shift } => healthy + shift,
            Release::Degrading => healthy + 25.0,
            Release::Subtle => healthy * 1.15,
        }
    }
}

/// Everything a run starts from.
#[derive(Debug, Clone)]
struct World {
    devices: usize,
    /// The strategy as an operator writes it (a `StrategySpec`).
    strategy: Value,
    release: Release,
    /// Whether devices send telemetry at all.
    telemetry: bool,
    /// The longest install; each device takes a seeded 0 to this, ms.
    max_install_ms: Millis,
}

/// An absolute check, `agg(cpu_temp_c) op threshold`.
fn absolute_check(name: &str, agg: &str, op: &str, threshold: f64, initial_delay_secs: u64, count: u32) -> Value {
    json!({
        "name": name, "kind": "metric", "metric": METRIC, "agg": agg, "window_secs": 60,
        "condition": {"op": op, "threshold": threshold},
        "initial_delay_secs": initial_delay_secs, "interval_secs": 30, "count": count,
        "min_samples": 3, "min_devices": 1,
    })
}

/// A relative check, `p95(cpu_temp_c) <= factor × baseline`.
fn relative_check(factor: f64, initial_delay_secs: u64, count: u32) -> Value {
    json!({
        "name": "temp-vs-baseline", "kind": "metric", "metric": METRIC, "agg": "p95", "window_secs": 60,
        "condition": {"op": "<=", "factor": factor},
        "initial_delay_secs": initial_delay_secs, "interval_secs": 30, "count": count,
        "min_samples": 3, "min_devices": 1,
    })
}

/// The world of one seed.
fn random_world(seed: u64) -> World {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let devices = rng.gen_range(20..=200);
    let release = match rng.gen_range(0..8) {
        0..=2 => Release::Healthy { shift: if rng.gen_bool(0.5) { 0.0 } else { 0.5 } },
        3..=5 => Release::Degrading,
        _ => Release::Subtle,
    };
    let delay_and_count = |rng: &mut ChaCha8Rng| (if rng.gen_bool(0.5) { 30 } else { 60 }, rng.gen_range(2..=3));
    let mut checks = Vec::new();
    let which = rng.gen_range(0..3);
    if which != 1 {
        let (delay, count) = delay_and_count(&mut rng);
        checks.push(if rng.gen_bool(0.5) {
            absolute_check("temp-max", "max", "<", 80.0, delay, count)
        } else {
            absolute_check("temp-p95", "p95", "<", 75.0, delay, count)
        });
    }
    if which != 0 {
        let (delay, count) = delay_and_count(&mut rng);
        checks.push(relative_check(1.1, delay, count));
    }
    let mut strategy = json!({"bake_time_secs": 120, "seed": rng.gen::<u64>(), "analysis": checks});
    if rng.gen_bool(0.25) {
        strategy["preset"] = "canary".into();
    } else {
        strategy["steps"] = json!([1, "10%", "100%"]);
    }
    World { devices, strategy, release, telemetry: true, max_install_ms: 20 * SEC }
}

// ---------------------------------------------------------------------------
// The in-memory rows and the driver
// ---------------------------------------------------------------------------

/// One stored telemetry window: a device's samples of one version in one
/// 10-second window.
#[derive(Debug, Clone)]
struct Window {
    bucket: Millis,
    version: &'static str,
    agg: Aggregate,
}

#[derive(Debug, Clone)]
struct Device {
    id: Uuid,
    version: &'static str,
    next_sample: Millis,
    /// In time order.
    windows: Vec<Window>,
}

/// An install action.
#[derive(Debug, Clone)]
struct Action {
    device: usize,
    wave: usize,
    state: ActionState,
    /// When the device reports success, once released.
    done_at: Millis,
}

type SimResult<T = ()> = Result<T, String>;

struct Sim {
    trace: bool,
    rng: ChaCha8Rng,
    world: World,
    strategy: Strategy,
    devices: Vec<Device>,
    actions: Vec<Action>,
    start: Millis,
    now: Millis,
    ticks: u64,
    // The rollout row.
    state: RolloutState,
    wave: usize,
    waves: usize,
    covers_target: bool,
    gate_passed_at: Option<Millis>,
    last_release_at: Option<Millis>,
    promote: bool,
    rollback_requested: bool,
    reason: Option<String>,
    analysis: Vec<AnalysisRun>,
    // History, for the assertions.
    /// Every decision but `Idle`: when, in which wave, what.
    decisions: Vec<(Millis, usize, Decision)>,
    /// Every event the effects recorded, in order.
    events: Vec<EventSpec>,
}

impl Sim {
    fn new(seed: u64, world: World) -> SimResult<Sim> {
        let spec: StrategySpec =
            serde_json::from_value(world.strategy.clone()).map_err(|e| format!("strategy does not read: {e}"))?;
        let strategy = spec.resolve(seed).map_err(|e| format!("strategy is invalid: {e}"))?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xa7a1_7515);
        let start = MONDAY + rng.gen_range(0..86_400) * SEC;
        let devices: Vec<Device> = (0..world.devices)
            .map(|i| Device {
                id: Uuid::from_u128(i as u128 + 1),
                version: OLD,
                next_sample: start - HISTORY + rng.gen_range(0..SAMPLE_EVERY),
                windows: Vec::new(),
            })
            .collect();
        let candidates = devices.iter().map(|d| Candidate { id: d.id, online: true, healthy: true }).collect();
        let mut actions = Vec::new();
        let p = plan::plan(candidates, &strategy);
        for (wave, ids) in p.waves.iter().enumerate() {
            for id in ids {
                let device = devices.iter().position(|d| d.id == *id).ok_or(format!("planned unknown device {id}"))?;
                actions.push(Action { device, wave, state: ActionState::Scheduled, done_at: 0 });
            }
        }
        Ok(Sim {
            trace: false,
            rng,
            world,
            strategy,
            devices,
            actions,
            start,
            now: start,
            ticks: 0,
            state: RolloutState::Pending,
            wave: 0,
            waves: p.waves.len(),
            covers_target: p.covers_target,
            gate_passed_at: None,
            last_release_at: None,
            promote: false,
            rollback_requested: false,
            reason: None,
            analysis: Vec::new(),
            decisions: Vec::new(),
            events: Vec::new(),
        })
    }

    fn log(&self, f: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[t+{:>7.1}s] {}", (self.now - self.start) as f64 / 1000.0, f());
        }
    }

    /// The harness stops here: succeeded, failed (before the rollback) or paused.
    fn stopped(&self) -> bool {
        matches!(self.state, RolloutState::Succeeded | RolloutState::Failed | RolloutState::Paused)
    }

    fn facts(&self) -> RolloutFacts {
        RolloutFacts {
            state: self.state,
            current_wave: self.wave,
            rollback_requested: self.rollback_requested,
            auto_rollback: self.strategy.auto_rollback,
        }
    }

    /// The snapshot the server's driver would read.
    fn snapshot(&self) -> Snapshot<'_> {
        let mut current = WaveCounts::default();
        let mut in_flight_total = 0;
        let mut updated = 0;
        for a in &self.actions {
            in_flight_total += a.state.is_in_flight() as u64;
            updated += (a.state == ActionState::Succeeded) as u64;
            if a.wave != self.wave {
                continue;
            }
            current.total += 1;
            match a.state {
                ActionState::Scheduled => {
                    current.scheduled += 1;
                    current.ready += 1;
                }
                ActionState::Succeeded => current.succeeded += 1,
                ActionState::Failed | ActionState::RolledBack => current.failed += 1,
                ActionState::Skipped => current.skipped += 1,
                _ => current.in_flight += 1,
            }
        }
        Snapshot {
            state: self.state,
            strategy: &self.strategy,
            wave: self.wave,
            waves: self.waves,
            covers_target: self.covers_target,
            start_at: None,
            gate_passed_at: self.gate_passed_at,
            last_release_at: self.last_release_at,
            promote: self.promote,
            current,
            in_flight_total,
            next_ready_at: None,
            // No rollback action is ever created: the harness stops at `failed`.
            rollback: RollbackCounts {
                requested: self.rollback_requested,
                missing: updated,
                ..RollbackCounts::default()
            },
            analysis: &self.analysis,
        }
    }

    /// Every device takes its samples up to `t` (inclusive), on the version
    /// it runs; each goes to the device's window of that version.
    fn sample_until(&mut self, t: Millis) {
        let width = telemetry::DEFAULT_RESOLUTIONS[0].width_ms;
        let Sim { devices, rng, world, .. } = self;
        for d in devices.iter_mut() {
            while d.next_sample <= t {
                let ts = d.next_sample;
                d.next_sample += SAMPLE_EVERY;
                if !world.telemetry {
                    continue;
                }
                let healthy = normal(rng, 60.0, 3.0);
                let value = if d.version == NEW { world.release.apply(healthy) } else { healthy };
                let bucket = telemetry::bucket_start(ts, width);
                match d.windows.last_mut() {
                    Some(w) if w.bucket == bucket && w.version == d.version => w.agg.add(value, ts),
                    _ => {
                        let mut agg = Aggregate::new();
                        agg.add(value, ts);
                        d.windows.push(Window { bucket, version: d.version, agg });
                    }
                }
            }
        }
    }

    /// Devices whose install is done by `now` report success and run `2.0.0`.
    fn finish_installs(&mut self, now: Millis) -> SimResult {
        for i in 0..self.actions.len() {
            let a = &mut self.actions[i];
            if a.state.is_in_flight() && a.done_at <= now {
                a.state = a.state.transition(ActionState::Succeeded).map_err(|e| format!("action {i}: {e}"))?;
                let device = a.device;
                self.devices[device].version = NEW;
                self.log(|| format!("device {device} installed {NEW}"));
            }
        }
        Ok(())
    }

    /// One measurement of check `i`, gathered as the server gathers it.
    fn gather(&self, i: usize, now: Millis) -> Measured {
        let spec = &self.strategy.analysis[i];
        let AnalysisKind::Metric { metric, agg, window_secs, condition } = &spec.kind else {
            // Only metric checks are simulated; another kind is the caller's mistake.
            return analysis::measure(spec, &Measurement::Prometheus { result: Err("not simulated".into()) });
        };
        let width = telemetry::DEFAULT_RESOLUTIONS[0].width_ms;
        let from = telemetry::bucket_start(now - *window_secs as Millis * SEC, width);
        // The windows of `device` starting in [from, now] whose version passes `keep`.
        let windows = |device: usize, keep: fn(&str) -> bool| {
            let d = &self.devices[device];
            let same_metric = metric == METRIC;
            d.windows
                .iter()
                .rev()
                .take_while(move |w| w.bucket >= from)
                .filter(move |w| same_metric && w.bucket <= now && keep(w.version))
                .map(move |w| (d.id, &w.agg))
        };
        let wave = self.actions.iter().filter(|a| a.wave == self.wave).flat_map(|a| windows(a.device, |v| v == NEW));
        let (wave_value, wave_samples, wave_devices) = analysis::summarize(wave, *agg);
        let mut m = MetricMeasurement { wave_value, wave_samples, wave_devices, ..MetricMeasurement::default() };
        if matches!(condition, Condition::Baseline { .. }) {
            // The target is the whole fleet, planned or not; the devices of
            // the waves so far (updated, or tried) are left out, with the
            // samples they took before their update.
            let mut tried = vec![false; self.devices.len()];
            for a in self.actions.iter().filter(|a| a.wave <= self.wave) {
                tried[a.device] = true;
            }
            let baseline = (0..self.devices.len()).filter(|&d| !tried[d]).flat_map(|d| windows(d, |v| v != NEW));
            (m.baseline_value, m.baseline_samples, m.baseline_devices) = analysis::summarize(baseline, *agg);
        }
        analysis::measure(spec, &Measurement::Metric(m))
    }

    /// Applies effects to the rows, deciding nothing: the counterpart of the
    /// store's `apply_effects`.
    fn apply(&mut self, e: &Effects) -> SimResult {
        let now = self.now;
        let r = &e.rollout;
        if let Some(to) = r.state {
            let from = self.state;
            self.state = from.transition(to).map_err(|e| e.to_string())?;
            self.log(|| format!("rollout {from} -> {to}"));
        }
        if let Some(reason) = &r.reason {
            self.reason = Some(reason.clone());
        }
        if let Some(b) = r.rollback_requested {
            self.rollback_requested = b;
        }
        if r.advance_wave {
            self.wave += 1;
            if self.wave >= self.waves {
                return Err(format!("advanced to wave {} of {}", self.wave, self.waves));
            }
            self.gate_passed_at = None;
            self.last_release_at = None;
            self.promote = false;
            self.analysis.clear();
        }
        if let Some(runs) = &r.analysis {
            self.analysis = runs.clone();
        }
        if let Some(t) = r.gate_passed_at {
            self.gate_passed_at = Some(t);
        }
        if let Some(t) = r.last_release_at {
            self.last_release_at = Some(t);
        }
        if let Some(p) = r.promote {
            self.promote = p;
        }
        for change in &e.actions {
            match change {
                ActionsChange::Release { kind: ActionKind::Install, wave, count, deadline } => {
                    let picked: Vec<usize> = (0..self.actions.len())
                        .filter(|&i| {
                            let a = &self.actions[i];
                            a.state == ActionState::Scheduled && wave.is_none_or(|w| a.wave == w)
                        })
                        .take(*count as usize)
                        .collect();
                    if (picked.len() as u64) < *count {
                        return Err(format!("Release{{{count}}} but only {} actions are scheduled", picked.len()));
                    }
                    for i in picked {
                        let delay = self.rng.gen_range(0..=self.world.max_install_ms);
                        let a = &mut self.actions[i];
                        a.state = a.state.transition(ActionState::Notified).map_err(|e| format!("action {i}: {e}"))?;
                        a.done_at = now + delay;
                        if a.done_at > *deadline {
                            return Err(format!(
                                "action {i} would time out: done at {} > deadline {deadline}",
                                a.done_at
                            ));
                        }
                    }
                }
                ActionsChange::SkipScheduledInstalls { .. } => {
                    for a in self.actions.iter_mut().filter(|a| a.state == ActionState::Scheduled) {
                        a.state = ActionState::Skipped;
                    }
                }
                other => return Err(format!("{other:?}: this harness stops before any rollback")),
            }
        }
        for ev in &e.events {
            if ev.kind == EventKind::RolloutAnalysis {
                self.log(|| {
                    format!(
                        "  {}: {} -> {}",
                        ev.data["check"].as_str().unwrap_or("?"),
                        ev.data["measurement"]["detail"]["reason"].as_str().unwrap_or("?"),
                        ev.data["verdict"]["verdict"].as_str().unwrap_or("?")
                    )
                });
            }
        }
        self.events.extend(e.events.iter().cloned());
        Ok(())
    }

    /// Decides and applies until the engine is idle or the run is over;
    /// returns when the engine wants to look again.
    fn drive(&mut self) -> SimResult<Option<Millis>> {
        let now = self.now;
        for _ in 0..1_000 {
            if self.stopped() {
                return Ok(None);
            }
            let snap = self.snapshot();
            let d = engine::decide(&snap, now);
            let again = engine::decide(&snap, now);
            if d != again {
                return Err(format!("decide is not deterministic: {d:?} then {again:?}"));
            }
            check_legal(&snap, now, &d).map_err(|e| format!("illegal decision {d:?} in wave {}: {e}", snap.wave))?;
            let e = effects::decision(&snap, &d, now);
            let e = match &d {
                Decision::Idle { wake_at } => {
                    if e != Effects::default() {
                        return Err(format!("Idle changed something: {e:?}"));
                    }
                    return Ok(*wake_at);
                }
                Decision::Measure { checks } => {
                    if e != Effects::default() {
                        return Err(format!("Measure changed something by itself: {e:?}"));
                    }
                    let results: Vec<(usize, Measured)> = checks.iter().map(|&i| (i, self.gather(i, now))).collect();
                    effects::measured(&snap, &results, now)
                }
                _ if e == Effects::default() => return Err(format!("{d:?} changed nothing")),
                _ => e,
            };
            self.log(|| format!("wave {}: {d:?}", self.wave));
            self.decisions.push((now, self.wave, d));
            self.apply(&e)?;
        }
        Err("the driver did not become idle after 1000 decisions".into())
    }

    /// Runs from `now` until the rollout succeeded, failed or paused.
    fn run(&mut self) -> SimResult {
        loop {
            self.ticks += 1;
            if self.ticks > MAX_TICKS || self.now - self.start > MAX_SIM_TIME {
                return Err(format!("no end after {} ticks, state {} in wave {}", self.ticks, self.state, self.wave));
            }
            let now = self.now;
            // Samples up to now are taken on the version the device ran until
            // now; an install finishing at `now` counts from the next sample.
            self.sample_until(now);
            self.finish_installs(now)?;
            let wake = self.drive()?;
            if self.stopped() {
                return Ok(());
            }
            if let Some(w) = wake.filter(|w| *w <= now) {
                return Err(format!("engine asked to wake at {w}, not after now {now}"));
            }
            let install = self.actions.iter().filter(|a| a.state.is_in_flight()).map(|a| a.done_at).min();
            match [wake, install].into_iter().flatten().min() {
                Some(t) => self.now = t.max(now),
                None => {
                    return Err(format!("stalled: state {} in wave {} with nothing to wait for", self.state, self.wave))
                }
            }
        }
    }

    /// The analysis events' measurement reasons, in order.
    fn measurement_reasons(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e.kind == EventKind::RolloutAnalysis)
            .map(|e| e.data["measurement"]["detail"]["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn measures(&self) -> usize {
        self.decisions.iter().filter(|(_, _, d)| matches!(d, Decision::Measure { .. })).count()
    }
}

/// A normal sample, by Box–Muller.
fn normal(rng: &mut ChaCha8Rng, mean: f64, sd: f64) -> f64 {
    let u1 = 1.0 - rng.gen::<f64>(); // (0, 1]: ln is finite
    let u2 = rng.gen::<f64>();
    mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn rate(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        n as f64 / total as f64
    }
}

// ---------------------------------------------------------------------------
// Legality of a decision given the snapshot it was made from
// ---------------------------------------------------------------------------

/// Whether `d` is a legal answer to `s` at `now`, the analysis rules above
/// all: measuring only due, applicable, unfinished checks of a baking wave;
/// going on only once every applicable check succeeded (or on a promote);
/// failing on analysis only for a failed check, pausing only for an
/// inconclusive one.
fn check_legal(s: &Snapshot<'_>, now: Millis, d: &Decision) -> Result<(), String> {
    use RolloutState::*;
    let c = s.current;
    let st = s.strategy;
    let need = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
    let transition = |to: RolloutState| need(s.state.can_transition_to(to), &format!("{} -> {to} is illegal", s.state));
    // The current wave's applicable checks, with their runs and verdicts.
    let runs: Vec<(usize, AnalysisRun, Verdict)> = match s.gate_passed_at {
        Some(p) => engine::analysis_runs(s, p)
            .map(|(i, spec, run)| {
                let v = run.verdict(spec);
                (i, run, v)
            })
            .collect(),
        None => Vec::new(),
    };
    let all_succeeded = runs.iter().all(|(_, _, v)| *v == Verdict::Succeeded);
    let any_failed = runs.iter().any(|(_, _, v)| matches!(v, Verdict::Failed { .. }));
    let bake_ms = st.gate.bake_time_secs as Millis * SEC;
    let bake_over = s.gate_passed_at.is_some_and(|p| s.promote || now >= p + bake_ms);
    let health_failed = c.total > 0 && rate(c.failed, c.total) > st.gate.failure_threshold;
    match d {
        Decision::Idle { wake_at } => need(wake_at.is_none_or(|w| w > now), "wake_at is not in the future"),
        Decision::Start => {
            transition(Running)?;
            need(s.state == Pending && s.waves > 0, "start outside pending or without waves")
        }
        Decision::Release { count } => {
            need(s.state == Running, "release while not running")?;
            need(*count > 0 && *count <= c.ready, "release of zero devices or more than are ready")?;
            need(s.gate_passed_at.is_none(), "release after the wave's gate passed")
        }
        Decision::GatePassed { report } => {
            need(s.state == Running && s.gate_passed_at.is_none(), "gate passed twice or while not running")?;
            need(c.scheduled == 0 && report.wave == s.wave, "gate passed with devices scheduled, or of another wave")?;
            need(rate(c.succeeded, c.total) >= st.gate.success_threshold, "gate passed below the success threshold")
        }
        Decision::Measure { checks } => {
            need(s.state == Running, "measure while not running")?;
            need(s.gate_passed_at.is_some() && !s.promote, "measure outside an unpromoted bake")?;
            need(!checks.is_empty(), "measure of no checks")?;
            for (k, &i) in checks.iter().enumerate() {
                need(i < st.analysis.len(), &format!("measure of unknown check {i}"))?;
                need(!checks[..k].contains(&i), &format!("check {i} measured twice at once"))?;
                let Some((_, run, v)) = runs.iter().find(|(j, _, _)| *j == i) else {
                    return Err(format!("check {i} does not apply to wave {} of {}", s.wave, s.waves));
                };
                need(matches!(v, Verdict::Running { .. }), &format!("check {i} is already over: {v:?}"))?;
                need(run.is_due(now), &format!("check {i} is not due before {}", run.next_at))?;
            }
            let settled =
                runs.iter().any(|(_, _, v)| matches!(v, Verdict::Failed { .. } | Verdict::Inconclusive { .. }));
            need(!settled, "measure although a check already failed or was inconclusive")
        }
        Decision::NextWave { from } => {
            need(s.state == Running && *from == s.wave, "next wave while not running, or from another wave")?;
            need(s.wave + 1 < s.waves, "next wave after the last wave")?;
            need(c.scheduled == 0 && c.in_flight == 0, "next wave with this wave's devices not done")?;
            need(bake_over, "next wave before the gate passed and the bake was over")?;
            need(s.promote || all_succeeded, "next wave before every applicable check succeeded")
        }
        Decision::Succeed { report } => {
            transition(Succeeded)?;
            need(s.state == Running && report.wave == s.wave, "succeed while not running, or of another wave")?;
            need(s.wave + 1 >= s.waves, "succeed before the last wave")?;
            need(c.scheduled == 0 && s.in_flight_total == 0, "succeed with devices scheduled or in flight")?;
            need(bake_over, "succeed before the gate passed and the bake was over")?;
            need(s.promote || all_succeeded, "succeed before every applicable check succeeded")
        }
        Decision::Fail { reason, report } => {
            transition(Failed)?;
            need(matches!(s.state, Running | Paused) && report.wave == s.wave, "fail outside running/paused")?;
            let analysis_failed = s.state == Running
                && !s.promote
                && runs.iter().any(|(_, _, v)| matches!(v, Verdict::Failed { reason: r } if r == reason));
            // Nothing fails to install here: a fail is the analysis' or illegal.
            need(health_failed || analysis_failed, "fail without a failed check")
        }
        Decision::Pause { reason } => {
            transition(Paused)?;
            need(s.state == Running && s.gate_passed_at.is_some() && !s.promote, "pause outside an unpromoted bake")?;
            need(!any_failed, "pause although a check failed (a failure must fail the rollout)")?;
            let inconclusive =
                runs.iter().any(|(_, _, v)| matches!(v, Verdict::Inconclusive { reason: r } if r == reason));
            need(inconclusive, "pause without an inconclusive check")
        }
        Decision::CreateRollbacks { .. } | Decision::ReleaseRollbacks { .. } | Decision::FinishRollback => {
            need(matches!(s.state, Failed | Aborted | Succeeded) && s.rollback.requested, "rollback without a request")
        }
    }
}

// ---------------------------------------------------------------------------
// Many seeds
// ---------------------------------------------------------------------------

/// How a run ended.
#[derive(Debug, Clone)]
struct Outcome {
    release: Release,
    state: RolloutState,
    /// The wave it ended in.
    wave: usize,
    waves: usize,
    reason: Option<String>,
    /// What the last measurement said.
    last_measurement: Option<String>,
    checks: Vec<String>,
    devices: usize,
}

impl Outcome {
    fn stopped_at_canary(&self) -> bool {
        matches!(self.state, RolloutState::Failed | RolloutState::Paused) && self.wave == 0
    }

    fn describe(&self) -> String {
        format!(
            "release {:?}, {} devices, {} waves, checks {:?}: ended {} in wave {} ({}; last measurement: {})",
            self.release,
            self.devices,
            self.waves,
            self.checks,
            self.state,
            self.wave,
            self.reason.as_deref().unwrap_or("no reason"),
            self.last_measurement.as_deref().unwrap_or("none")
        )
    }
}

fn run_seed(seed: u64, trace: bool) -> Result<Outcome, String> {
    let world = random_world(seed);
    let mut sim = Sim::new(seed, world)?;
    sim.trace = trace;
    if trace {
        eprintln!("seed {seed}: {} devices, release {:?}, {} waves", sim.devices.len(), sim.world.release, sim.waves);
        eprintln!("seed {seed}: strategy {}", sim.world.strategy);
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run()));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("{e} (at t+{} s, wave {})", (sim.now - sim.start) / SEC, sim.wave)),
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            return Err(format!("panicked: {}", msg.unwrap_or_default()));
        }
    }
    if sim.measures() == 0 {
        return Err(format!("ended {} without a single measurement", sim.state));
    }
    Ok(Outcome {
        release: sim.world.release,
        state: sim.state,
        wave: sim.wave,
        waves: sim.waves,
        reason: sim.reason.clone(),
        last_measurement: sim.measurement_reasons().pop(),
        checks: sim.strategy.analysis.iter().map(|c| c.name.clone()).collect(),
        devices: sim.devices.len(),
    })
}

fn replay_hint(seed: u64) -> String {
    format!(
        "replay with: OTAFLEET_SIM_SEED={seed} cargo test -p otafleet-core --test analysis_simulation -- --nocapture"
    )
}

/// What must hold of one seed's outcome: a clearly degrading release stops
/// at the canary, a healthy one succeeds. The subtle one may do either.
fn judge(o: &Outcome) -> Result<(), String> {
    match o.release {
        Release::Degrading if !o.stopped_at_canary() => Err(format!("false negative: {}", o.describe())),
        Release::Healthy { .. } if o.state != RolloutState::Succeeded => {
            Err(format!("false positive: {}", o.describe()))
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Default)]
struct Tally {
    degrading: u64,
    degrading_canary: u64,
    degrading_missed: u64,
    healthy: u64,
    healthy_succeeded: u64,
    healthy_stopped: u64,
    subtle: u64,
    subtle_canary: u64,
    subtle_later: u64,
    subtle_missed: u64,
    paused: u64,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        let stopped = o.state != RolloutState::Succeeded;
        self.paused += (o.state == RolloutState::Paused) as u64;
        match o.release {
            Release::Degrading => {
                self.degrading += 1;
                if o.stopped_at_canary() {
                    self.degrading_canary += 1;
                } else {
                    self.degrading_missed += 1;
                }
            }
            Release::Healthy { .. } => {
                self.healthy += 1;
                if stopped {
                    self.healthy_stopped += 1;
                } else {
                    self.healthy_succeeded += 1;
                }
            }
            Release::Subtle => {
                self.subtle += 1;
                if o.stopped_at_canary() {
                    self.subtle_canary += 1;
                } else if stopped {
                    self.subtle_later += 1;
                } else {
                    self.subtle_missed += 1;
                }
            }
        }
    }
}

#[test]
fn analysis_gates_stop_degrading_releases_at_the_canary_and_pass_healthy_ones() {
    if let Ok(seed) = std::env::var("OTAFLEET_SIM_SEED") {
        let seed: u64 = seed.parse().unwrap_or_else(|e| panic!("OTAFLEET_SIM_SEED={seed:?} is not a number: {e}"));
        let o = run_seed(seed, true).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", replay_hint(seed)));
        eprintln!("seed {seed}: {}", o.describe());
        if let Err(e) = judge(&o) {
            panic!("seed {seed}: {e}\n{}", replay_hint(seed));
        }
        return;
    }
    let seeds: u64 = match std::env::var("OTAFLEET_SIM_SEEDS") {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("OTAFLEET_SIM_SEEDS={v:?} is not a number: {e}")),
        Err(_) => DEFAULT_SEEDS,
    };
    let t0 = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4) as u64;
    let mut results: Vec<(u64, Result<Outcome, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (0..seeds).filter(|s| s % threads == t).map(|s| (s, run_seed(s, false))).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| panic!("a simulation thread panicked"))).collect()
    });
    results.sort_by_key(|(s, _)| *s);
    let mut tally = Tally::default();
    let mut failures: Vec<(u64, String)> = Vec::new();
    for (seed, r) in &results {
        match r {
            Ok(o) => {
                tally.add(o);
                if let Err(e) = judge(o) {
                    failures.push((*seed, e));
                }
            }
            Err(e) => failures.push((*seed, e.clone())),
        }
    }
    let t = &tally;
    eprintln!(
        "analysis simulation: {seeds} seeds, degrading {} (stopped at the canary {}, missed {}), \
         healthy {} (succeeded {}, stopped {}), subtle ×1.15 {} (stopped at the canary {}, later {}, missed {}); \
         {} paused; {:.2?}",
        t.degrading,
        t.degrading_canary,
        t.degrading_missed,
        t.healthy,
        t.healthy_succeeded,
        t.healthy_stopped,
        t.subtle,
        t.subtle_canary,
        t.subtle_later,
        t.subtle_missed,
        t.paused,
        t0.elapsed()
    );
    if let Some((seed, e)) = failures.first() {
        let more: String = failures.iter().skip(1).take(9).map(|(s, e)| format!("  seed {s}: {e}\n")).collect();
        panic!("seed {seed}: {e}\n{} failing seeds in all; more:\n{more}{}", failures.len(), replay_hint(*seed));
    }
    assert_eq!(t.degrading_missed, 0, "false negatives");
    assert_eq!(t.healthy_stopped, 0, "false positives");
    if seeds >= 100 {
        assert!(t.degrading > 0 && t.healthy > 0 && t.subtle > 0, "the generator lost coverage: {t:?}");
    }
}

#[test]
fn the_same_seed_gives_the_same_history() {
    for seed in 0..8 {
        let history = |seed| -> Result<Vec<(Millis, usize, Decision)>, String> {
            let mut sim = Sim::new(seed, random_world(seed))?;
            sim.run()?;
            Ok(sim.decisions)
        };
        let a = history(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", replay_hint(seed)));
        let b = history(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", replay_hint(seed)));
        assert_eq!(a, b, "seed {seed}: two runs differ\n{}", replay_hint(seed));
    }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

fn three_waves(checks: Vec<Value>) -> Value {
    json!({"steps": [1, "10%", "100%"], "bake_time_secs": 120, "seed": 7, "analysis": checks})
}

fn sim(world: World) -> Sim {
    let mut sim = Sim::new(1, world).unwrap_or_else(|e| panic!("scenario world: {e}"));
    sim.trace = std::env::var_os("OTAFLEET_SIM_TRACE").is_some();
    sim
}

fn run(sim: &mut Sim) {
    if let Err(e) = sim.run() {
        panic!("scenario: {e} (t+{} s, state {}, wave {})", (sim.now - sim.start) / SEC, sim.state, sim.wave);
    }
}

fn last_decision(sim: &Sim) -> &Decision {
    match sim.decisions.last() {
        Some((_, _, d)) => d,
        None => panic!("no decision at all"),
    }
}

/// The analysis events' numbers of the last measurement of check `name`.
fn last_detail<'a>(sim: &'a Sim, name: &str) -> &'a Value {
    match sim.events.iter().rev().find(|e| e.kind == EventKind::RolloutAnalysis && e.data["check"] == name) {
        Some(e) => &e.data["measurement"]["detail"],
        None => panic!("check {name} was never measured"),
    }
}

#[test]
fn a_degrading_release_fails_at_the_canary_and_the_rest_of_the_fleet_is_skipped() {
    let checks = vec![absolute_check("temp-max", "max", "<", 80.0, 60, 3), relative_check(1.1, 60, 3)];
    let mut s = sim(World {
        devices: 50,
        strategy: three_waves(checks),
        release: Release::Degrading,
        telemetry: true,
        max_install_ms: 5 * SEC,
    });
    run(&mut s);
    assert_eq!((s.state, s.wave), (RolloutState::Failed, 0));
    let Decision::Fail { reason, .. } = last_decision(&s) else { panic!("ended with {:?}", last_decision(&s)) };
    assert!(reason.contains("failed, more than failure_limit 0"), "{reason}");
    // The first measurement already fails: both checks are over the line.
    assert_eq!(s.measures(), 1);
    assert!(last_detail(&s, "temp-max")["observed"].as_f64().is_some_and(|v| v >= 80.0));
    assert!(last_detail(&s, "temp-vs-baseline")["reason"].as_str().is_some_and(|r| r.ends_with(": fail")));
    let updated = s.actions.iter().filter(|a| a.state == ActionState::Succeeded).count();
    assert_eq!(updated, 1, "only the canary was updated");
    assert!(s.actions.iter().filter(|a| a.wave > 0).all(|a| a.state == ActionState::Skipped));
}

#[test]
fn without_telemetry_the_rollout_pauses_for_want_of_data_and_never_succeeds() {
    let checks = vec![absolute_check("temp-max", "max", "<", 80.0, 60, 2), relative_check(1.1, 60, 2)];
    let mut s = sim(World {
        devices: 20,
        strategy: three_waves(checks),
        release: Release::Healthy { shift: 0.0 },
        telemetry: false,
        max_install_ms: 5 * SEC,
    });
    run(&mut s);
    assert_eq!((s.state, s.wave), (RolloutState::Paused, 0));
    let Decision::Pause { reason } = last_decision(&s) else { panic!("ended with {:?}", last_decision(&s)) };
    // The pause's reason (the rollout's `reason`) gives the counts; what was
    // missing is in the measurement's event.
    assert!(reason.contains("inconclusive, more than inconclusive_limit 0"), "{reason}");
    assert_eq!(s.reason.as_deref(), Some(reason.as_str()));
    let reasons = s.measurement_reasons();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    for r in &reasons {
        assert!(r.starts_with("no data: no samples for ") && r.ends_with("(on_no_data: inconclusive)"), "{r}");
    }
    assert!(!s.decisions.iter().any(|(_, _, d)| matches!(d, Decision::NextWave { .. } | Decision::Succeed { .. })));
    // A paused rollout stays paused: the engine has nothing more to do.
    assert_eq!(engine::decide(&s.snapshot(), s.now + 3_600 * SEC), Decision::Idle { wake_at: None });
}

#[test]
fn a_relative_check_is_not_measured_when_the_canary_is_the_whole_target() {
    // One device: the canary is the whole target, so nothing is left on
    // 1.0.0 to compare with (the samples the canary itself took on 1.0.0
    // before its update are not a baseline). As on a last wave of 100%, the
    // check does not apply (`Plan::covers_target`) rather than pausing every
    // such rollout for want of a baseline.
    let strategy = json!({"preset": "canary", "bake_time_secs": 120, "analysis": [relative_check(1.1, 30, 2)]});
    let mut s = sim(World {
        devices: 1,
        strategy,
        release: Release::Healthy { shift: 0.0 },
        telemetry: true,
        max_install_ms: 0,
    });
    run(&mut s);
    assert_eq!(s.state, RolloutState::Succeeded, "{:?}", last_decision(&s));
    assert_eq!(s.measurement_reasons(), Vec::<String>::new(), "nothing measured");
}

#[test]
fn promoting_a_paused_rollout_lets_it_go_on_to_the_next_wave() {
    let mut s = sim(World {
        devices: 30,
        strategy: three_waves(vec![absolute_check("temp-max", "max", "<", 80.0, 60, 2)]),
        release: Release::Healthy { shift: 0.5 },
        telemetry: false,
        max_install_ms: 5 * SEC,
    });
    run(&mut s);
    assert_eq!((s.state, s.wave), (RolloutState::Paused, 0));
    // An hour later the operator, having fixed the telemetry, promotes it.
    s.now += 3_600 * SEC;
    s.world.telemetry = true;
    let e = effects::command(s.facts(), Command::Promote, s.now).unwrap_or_else(|e| panic!("promote refused: {e}"));
    s.apply(&e).unwrap_or_else(|e| panic!("promote: {e}"));
    assert_eq!((s.state, s.promote), (RolloutState::Running, true));
    let before = s.decisions.len();
    run(&mut s);
    let after: Vec<&Decision> = s.decisions[before..].iter().map(|(_, _, d)| d).collect();
    // Neither the bake nor the analysis holds a promoted wave.
    assert_eq!(after.first(), Some(&&Decision::NextWave { from: 0 }), "{after:?}");
    // The next waves are gated again, and pass now that devices report.
    assert_eq!(s.state, RolloutState::Succeeded);
    for wave in [1, 2] {
        assert!(
            s.decisions.iter().any(|(_, w, d)| *w == wave && matches!(d, Decision::Measure { .. })),
            "wave {wave} was not measured"
        );
    }
    assert!(s.actions.iter().all(|a| a.state == ActionState::Succeeded));
}

#[test]
fn the_first_measurement_waits_an_interval_unless_told_otherwise() {
    // By default (`initial_delay_secs` = `interval_secs`) the first
    // measurement is taken one interval after the gate passed, when the
    // wave's devices have sent samples on the new version: a healthy release
    // passes. Written out as 0, the first measurement comes the moment the
    // canary reports success, before it sent a sample on the new version:
    // no data, and the rollout pauses although the release is healthy.
    let check = |delay: Option<u64>| {
        let mut c = json!({
            "name": "temp-max", "kind": "metric", "metric": METRIC, "agg": "max", "window_secs": 60,
            "condition": {"op": "<", "threshold": 80},
        });
        if let Some(d) = delay {
            c["initial_delay_secs"] = json!(d);
        }
        c
    };
    let world = |c| World {
        devices: 20,
        strategy: three_waves(vec![c]),
        release: Release::Healthy { shift: 0.0 },
        telemetry: true,
        max_install_ms: 5 * SEC,
    };
    let first = |s: &Sim, what: fn(&Decision) -> bool| s.decisions.iter().find(|(_, _, d)| what(d)).map(|(t, _, _)| *t);
    let mut s = sim(world(check(None)));
    run(&mut s);
    assert_eq!(s.state, RolloutState::Succeeded);
    let gate = first(&s, |d| matches!(d, Decision::GatePassed { .. })).expect("a gate passed");
    let measured = first(&s, |d| matches!(d, Decision::Measure { .. })).expect("a measurement");
    assert_eq!(measured, gate + 60 * SEC, "one interval after the gate");

    let mut s = sim(world(check(Some(0))));
    run(&mut s);
    assert_eq!((s.state, s.wave), (RolloutState::Paused, 0));
    let gate = first(&s, |d| matches!(d, Decision::GatePassed { .. }));
    let measured = first(&s, |d| matches!(d, Decision::Measure { .. }));
    assert_eq!(gate, measured, "measured at the gate");
    assert!(last_detail(&s, "temp-max")["reason"].as_str().is_some_and(|r| r.starts_with("no data")));
}
