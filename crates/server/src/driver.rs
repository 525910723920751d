//! The rollout driver: a task inside `otafleet serve` that moves rollouts along.
//!
//! Each pass: expire timed-out actions, then for every rollout that can move,
//! apply engine decisions one transaction at a time until the engine says
//! "idle". It sleeps until the earliest wake-up the engine asked for, a nudge
//! (a status report, an operator command, a new rollout), or a safety tick.
//! All state lives in the database, so a killed process resumes where the last
//! committed step left it; a step is never half-applied.
//!
//! With several replicas only the holder of the driver's lease runs passes
//! ([`crate::leader`]); every step and every expiry carries its fence and is
//! refused by the store once the lease is gone. The others keep flushing
//! their own check-ins and serving requests.

use crate::service::delivery;
use crate::AppState;
use otafleet_core::engine::Decision;
use otafleet_store::{now_ms, Fence, StoreError};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

/// Steps applied to one rollout in one pass before others get a turn.
const MAX_STEPS_PER_PASS: usize = 64;

/// Shortest pause after a nudge before the next pass.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Longest pause after a nudge: how late a gate decision may be under load.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// The pause after a nudge: at least [`DEBOUNCE`], and four times what the
/// last pass took, so reading the counts of a 100,000-device wave (tens of ms)
/// costs at most a fifth of a core however fast reports arrive.
fn debounce(last_pass: Duration) -> Duration {
    (last_pass * 4).clamp(DEBOUNCE, MAX_DEBOUNCE)
}

fn decision_name(d: &Decision) -> &'static str {
    match d {
        Decision::Idle { .. } => "idle",
        Decision::Start => "start",
        Decision::Release { .. } => "release",
        Decision::GatePassed { .. } => "gate_passed",
        Decision::NextWave { .. } => "next_wave",
        Decision::Succeed { .. } => "succeed",
        Decision::Fail { .. } => "fail",
        Decision::CreateRollbacks { .. } => "create_rollbacks",
        Decision::ReleaseRollbacks { .. } => "release_rollbacks",
        Decision::FinishRollback => "finish_rollback",
        Decision::Measure { .. } => "measure",
        Decision::Pause { .. } => "pause",
    }
}

/// What the last pass learnt of a rollout the engine left idle: when it
/// asked to be woken (None: only a change can move it) and the revision it
/// decided at. A pass skips it while both hold, so rollouts that wait on
/// devices, a start time, a bake timer or an operator cost nothing but their
/// row in [`otafleet_store::Store::drivable_rollouts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    pub wake_at: Option<i64>,
    pub rev: i64,
}

/// Rollouts the last pass left idle.
pub type IdleUntil = HashMap<i64, Parked>;

/// Which rollouts a pass looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// List every drivable rollout with its revision (after a change here
    /// or on another replica, and as a backstop).
    All,
    /// Only the parked rollouts whose requested wake-up has come: no listing.
    Due,
}

/// A pass lists every drivable rollout at least this often even when no
/// change was signalled (a lost notification, a change made by hand).
const LIST_AT_LEAST_EVERY: Duration = Duration::from_secs(30);

/// One pass. Returns the earliest requested wake-up.
///
/// A rollout recorded in `idle` is stepped again only when its revision
/// moved (every change to it or its actions raises it, on any replica) or
/// its wake-up has come. Every write carries `fence`; a lapsed lease ends
/// the pass with [`StoreError::Fenced`].
pub async fn pass(
    state: &AppState,
    idle: &mut IdleUntil,
    fence: &Fence,
    scope: Scope,
) -> Result<Option<i64>, StoreError> {
    let now = now_ms();
    let expired = state.store.expire_actions(now, 5_000, fence).await?;
    if !expired.is_empty() {
        tracing::info!(expired = expired.len(), "actions timed out");
        delivery::expired(state, &expired);
    }
    if scope == Scope::Due && expired.is_empty() {
        let due: Vec<i64> =
            idle.iter().filter(|(_, p)| p.wake_at.is_some_and(|t| t <= now)).map(|(id, _)| *id).collect();
        for id in &due {
            idle.remove(id);
        }
        let mut wake = idle.values().filter_map(|p| p.wake_at).min();
        for id in due {
            if let Some(t) = step(state, idle, id, fence).await? {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        }
        return Ok(wake);
    }
    let mut wake: Option<i64> = None;
    let drivable = state.store.drivable_rollouts().await?;
    let live: std::collections::HashSet<i64> = drivable.iter().map(|(id, _)| *id).collect();
    idle.retain(|id, _| live.contains(id));
    for (id, rev) in drivable {
        if let Some(p) = idle.get(&id) {
            if p.rev == rev && p.wake_at.is_none_or(|t| t > now) {
                if let Some(t) = p.wake_at {
                    wake = Some(wake.map_or(t, |w| w.min(t)));
                }
                continue;
            }
        }
        idle.remove(&id);
        if let Some(t) = step(state, idle, id, fence).await? {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        }
    }
    Ok(wake)
}

/// Steps rollout `id` until the engine says "idle" (or [`MAX_STEPS_PER_PASS`]),
/// records it in `idle` and returns the wake-up it asked for.
async fn step(state: &AppState, idle: &mut IdleUntil, id: i64, fence: &Fence) -> Result<Option<i64>, StoreError> {
    state.metrics.driver_rollout_reads.inc();
    for _ in 0..MAX_STEPS_PER_PASS {
        let now = now_ms();
        let step = state.store.drive_step(id, now, fence).await?;
        let (decision, released) = (step.decision, step.released);
        delivery::released(state, &released);
        if let Decision::Idle { wake_at } = decision {
            idle.insert(id, Parked { wake_at, rev: step.rev });
            return Ok(wake_at);
        }
        if let Decision::Measure { checks } = &decision {
            measure(state, id, checks, fence).await?;
        }
        let name = decision_name(&decision);
        state.metrics.driver_decisions.get_or_create(&vec![("decision".into(), name.into())]).inc();
        state.metrics.record_run(now);
        match &decision {
            Decision::Fail { reason, .. } => tracing::warn!(rollout = id, %reason, "rollout failed its gate"),
            Decision::Pause { reason } => {
                tracing::warn!(rollout = id, %reason, "rollout paused: analysis inconclusive")
            }
            Decision::Measure { .. } => tracing::debug!(rollout = id, "analysis measured"),
            Decision::Release { .. } | Decision::CreateRollbacks { .. } => {
                tracing::debug!(rollout = id, decision = name, devices = released.len())
            }
            _ => tracing::info!(rollout = id, decision = name, "rollout step"),
        }
    }
    // Not idle yet: due at once, and read again whatever its revision.
    let now = now_ms();
    idle.insert(id, Parked { wake_at: Some(now), rev: -1 });
    Ok(Some(now))
}

/// Gathers the due analysis checks of rollout `id` (outside any
/// transaction: a Prometheus query may take seconds) and records them. A
/// rollout that moved on meanwhile records nothing; the next step decides
/// again.
async fn measure(state: &AppState, id: i64, checks: &[usize], fence: &Fence) -> Result<(), StoreError> {
    let Some(r) = state.store.get_rollout(id).await? else { return Ok(()) };
    let Some(passed) = r.gate_passed_at else { return Ok(()) };
    let now = now_ms();
    let results = crate::service::analysis::gather(state, &r, checks, now).await;
    for (i, m) in &results {
        tracing::info!(rollout = id, wave = r.current_wave, check = i, reason = %m.detail.reason, "analysis measurement");
    }
    state.store.record_analysis(id, r.current_wave, passed, &results, now_ms(), fence).await?;
    Ok(())
}

/// Runs until `stop` turns true.
///
/// A pass lists every drivable rollout after a change was signalled (a
/// commit of this store that touched a rollout, a nudge from a handler, a
/// notification from another replica, a new leadership) and at least every
/// [`LIST_AT_LEAST_EVERY`]; in between, ticks only step the rollouts whose
/// wake-up has come and expire timed-out actions.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis(state.config.driver_tick_ms.max(10));
    let changes = state.store.changes();
    let mut last_flush = std::time::Instant::now();
    let mut idle = IdleUntil::new();
    let mut list = true;
    let mut last_list = std::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        if last_flush.elapsed() >= Duration::from_secs(2) {
            last_flush = std::time::Instant::now();
            if let Err(e) = state.caches.flush_seen(&state.store).await {
                tracing::warn!(error = %e, "could not record check-ins");
            }
        }
        let started = std::time::Instant::now();
        let sleep_for = match state.leader.fence() {
            // Not the leader: another replica drives (or nobody, until the
            // lease is taken); becoming the leader wakes this loop.
            None => {
                idle.clear();
                list = true;
                tick
            }
            Some(fence) => {
                let scope = if list || last_list.elapsed() >= LIST_AT_LEAST_EVERY {
                    last_list = std::time::Instant::now();
                    Scope::All
                } else {
                    Scope::Due
                };
                list = false;
                match pass(&state, &mut idle, &fence, scope).await {
                    Ok(wake) => {
                        let until = wake.map(|t| Duration::from_millis((t - now_ms()).max(0) as u64)).unwrap_or(tick);
                        until.min(tick)
                    }
                    Err(StoreError::Fenced(e)) => {
                        tracing::warn!(error = %e, "driver pass stopped: the lease is gone");
                        idle.clear();
                        list = true;
                        tick
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "driver pass failed; retrying");
                        list = true;
                        tick
                    }
                }
            }
        };
        let pause = debounce(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(sleep_for) => {}
            _ = state.driver_wake.notified() => {
                list = true;
                // Status reports arrive in bursts: gather a few before reading
                // counts again, so a big wave costs passes per burst, not per report.
                tokio::time::sleep(pause).await;
            }
            _ = changes.notified() => {
                list = true;
                tokio::time::sleep(pause).await;
            }
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{create_rollout, CreateRollout, ReleaseRef};
    use otafleet_core::protocol::StatusReport;
    use otafleet_core::ActionState;
    use otafleet_store::{ActionQuery, NewDevice, Store, Target};

    async fn setup(devices: u128) -> (tempfile::TempDir, Store, AppState, Fence) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("d.db").display())).await.unwrap();
        let devices: Vec<NewDevice> = (1..=devices)
            .map(|i| NewDevice {
                id: uuid::Uuid::from_u128(i),
                name: format!("d{i}"),
                labels: [("n".to_string(), i.to_string())].into_iter().collect(),
                current_version: Some("1.0.0".into()),
                token: None,
            })
            .collect();
        store.insert_devices(&devices, "t").await.unwrap();
        let state = AppState::new(store.clone(), crate::Config::default());
        let fence = store
            .acquire_or_renew_lease(otafleet_store::DRIVER_LEASE, "t", Duration::from_secs(600), now_ms())
            .await
            .unwrap()
            .unwrap();
        (dir, store, state, fence)
    }

    async fn rollout(state: &AppState, version: &str, selector: &str, start_at: Option<i64>) -> i64 {
        create_rollout(
            state,
            CreateRollout {
                release: ReleaseRef::EnsureVersion(version.into()),
                kind: otafleet_core::RolloutKind::Deploy,
                target: Target::Selector(selector.into()),
                strategy: serde_json::from_str(r#"{"steps":[1,"100%"]}"#).unwrap(),
                start_at,
                actor: "t".into(),
                executor: otafleet_core::Executor::Driver,
                keep_if_empty: false,
            },
        )
        .await
        .unwrap()
        .id
    }

    fn reads(state: &AppState) -> u64 {
        state.metrics.driver_rollout_reads.get()
    }

    /// A pass skips a rollout that waits on its devices until a change to it
    /// (here a report written straight to the store, as another replica
    /// would, with no nudge) raises its revision.
    #[tokio::test]
    async fn parked_rollouts_are_read_again_only_when_their_revision_moves() {
        let (_dir, store, state, fence) = setup(2).await;
        let id = rollout(&state, "2.0.0", "", None).await;
        let mut idle = IdleUntil::new();
        pass(&state, &mut idle, &fence, Scope::All).await.unwrap();
        let parked = idle[&id];
        assert_eq!(parked.wake_at, None, "waiting on the canary, no timer");
        let before = reads(&state);
        pass(&state, &mut idle, &fence, Scope::All).await.unwrap();
        assert_eq!(reads(&state), before, "nothing changed: not read");
        let canary = store
            .list_actions(&ActionQuery {
                rollout_id: Some(id),
                state: Some(ActionState::Notified),
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(canary.len(), 1);
        let a = &canary[0];
        let report = StatusReport {
            action_id: a.id,
            seq: 1,
            state: ActionState::Succeeded,
            message: None,
            current_version: None,
        };
        store.report_status(a.device_id, &report, now_ms()).await.unwrap();
        pass(&state, &mut idle, &fence, Scope::All).await.unwrap();
        assert_eq!(reads(&state), before + 1);
        assert_eq!(store.get_rollout(id).await.unwrap().unwrap().current_wave, 1, "moved on to the next wave");
        // An operator's pause, then a resume, are changes too.
        let parked = idle[&id];
        store.set_rollout_state(id, otafleet_core::RolloutState::Paused, None, "t").await.unwrap();
        pass(&state, &mut idle, &fence, Scope::All).await.unwrap();
        assert!(idle[&id].rev > parked.rev);
        assert_eq!(reads(&state), before + 2);
        pass(&state, &mut idle, &fence, Scope::All).await.unwrap();
        assert_eq!(reads(&state), before + 2, "paused: parked");
    }

    /// Work that cannot progress costs nothing until something changes:
    /// 30,000 parked rollouts (paused, or scheduled to start tomorrow) are
    /// listed by a pass but none of them is read; the one that changes is.
    #[tokio::test]
    async fn thirty_thousand_parked_rollouts_cost_the_driver_no_reads() {
        const PARKED: i64 = 30_000;
        let (_dir, store, state, fence) = setup(3).await;
        let tomorrow = now_ms() + 86_400_000;
        let waiting = rollout(&state, "2.0.0", "n=1", None).await;
        let paused = rollout(&state, "2.0.1", "n=2", None).await;
        store.set_rollout_state(paused, otafleet_core::RolloutState::Paused, None, "t").await.unwrap();
        let later = rollout(&state, "2.0.2", "n=3", Some(tomorrow)).await;
        // Clone the paused and the scheduled rollout (rows only) up to PARKED.
        let cols = "release_id, version, kind, preset, target, strategy, state, current_wave, waves, start_at, \
                    reason, rollback_requested, promote, created_by, created_at, updated_at";
        for (src, n) in [(paused, PARKED / 2 - 1), (later, PARKED / 2 - 1)] {
            sqlx::query(&format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
                 INSERT INTO rollouts ({cols}) SELECT {cols} FROM rollouts, n WHERE rollouts.id = $1"
            ))
            .bind(src)
            .bind(n)
            .execute(store.pool())
            .await
            .unwrap();
        }
        let drivable = store.drivable_rollouts().await.unwrap();
        assert_eq!(drivable.len() as i64, PARKED + 1);
        let mut idle = IdleUntil::new();
        let first = std::time::Instant::now();
        let wake = pass(&state, &mut idle, &fence, Scope::All).await.unwrap();
        let first = first.elapsed();
        assert_eq!(wake, Some(tomorrow), "the scheduled ones asked to be woken tomorrow");
        assert_eq!(idle.len() as i64, PARKED + 1);
        let before = reads(&state);
        let ticks = 20;
        let tick = std::time::Instant::now();
        for _ in 0..ticks {
            assert_eq!(pass(&state, &mut idle, &fence, Scope::Due).await.unwrap(), Some(tomorrow));
        }
        let tick = tick.elapsed() / ticks;
        let listing = std::time::Instant::now();
        pass(&state, &mut idle, &fence, Scope::All).await.unwrap();
        let listing = listing.elapsed();
        assert_eq!(reads(&state), before, "no parked rollout was read");
        println!(
            "{} parked rollouts: first pass {first:?} (reads them all), then {tick:?} per tick and {listing:?} \
             per listing (at most every 30 s without a change), reading none",
            PARKED + 1
        );
        // The one that changes is read, and only it.
        let a = &store
            .list_actions(&ActionQuery { rollout_id: Some(waiting), limit: 1, ..Default::default() })
            .await
            .unwrap()[0];
        let report = StatusReport {
            action_id: a.id,
            seq: 1,
            state: ActionState::Succeeded,
            message: None,
            current_version: None,
        };
        store.report_status(a.device_id, &report, now_ms()).await.unwrap();
        pass(&state, &mut idle, &fence, Scope::All).await.unwrap();
        assert_eq!(reads(&state), before + 1);
    }

    #[test]
    fn debounce_follows_the_cost_of_a_pass_within_bounds() {
        assert_eq!(debounce(Duration::ZERO), DEBOUNCE);
        assert_eq!(debounce(Duration::from_millis(10)), DEBOUNCE);
        assert_eq!(debounce(Duration::from_millis(40)), Duration::from_millis(160));
        assert_eq!(debounce(Duration::from_secs(5)), MAX_DEBOUNCE);
    }
}
