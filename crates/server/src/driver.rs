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
    }
}

/// Rollouts the last pass left idle, with the time the engine asked to be
/// woken at (None: only a change can move it). Lets a timer tick skip the
/// rollouts that are waiting on devices, so a thousand open rollouts cost a
/// pass only when something happened to them.
pub type IdleUntil = HashMap<i64, Option<i64>>;

/// With a single process owning the database (SQLite), every change to a
/// rollout comes through this process and nudges the driver, so a timer tick
/// may skip idle rollouts; a full pass still runs this often, as a backstop.
/// With PostgreSQL other replicas change rollouts too: every pass is full.
const FULL_PASS_EVERY: Duration = Duration::from_secs(10);

/// One pass over every drivable rollout. Returns the earliest requested wake-up.
///
/// `full == false` skips rollouts recorded in `idle` whose wake-up has not come.
/// Every write carries `fence`; a lapsed lease ends the pass with
/// [`StoreError::Fenced`].
pub async fn pass(
    state: &AppState,
    idle: &mut IdleUntil,
    full: bool,
    fence: &Fence,
) -> Result<Option<i64>, StoreError> {
    let now = now_ms();
    let expired = state.store.expire_actions(now, 5_000, fence).await?;
    if !expired.is_empty() {
        tracing::info!(expired = expired.len(), "actions timed out");
        delivery::expired(state, &expired);
    }
    // Timeouts change counts: everything is looked at again.
    let full = full || !expired.is_empty();
    let mut wake: Option<i64> = None;
    let drivable = state.store.drivable_rollouts().await?;
    idle.retain(|id, _| drivable.contains(id));
    for id in drivable {
        match idle.get(&id) {
            Some(Some(t)) if !full && *t > now => {
                wake = Some(wake.map_or(*t, |w| w.min(*t)));
                continue;
            }
            Some(None) if !full => continue,
            _ => {}
        }
        idle.remove(&id);
        for _ in 0..MAX_STEPS_PER_PASS {
            let now = now_ms();
            let (decision, released) = state.store.drive_step(id, now, fence).await?;
            delivery::released(state, &released);
            if let Decision::Idle { wake_at } = decision {
                if let Some(t) = wake_at {
                    wake = Some(wake.map_or(t, |w| w.min(t)));
                }
                idle.insert(id, wake_at);
                break;
            }
            let name = decision_name(&decision);
            state.metrics.driver_decisions.get_or_create(&vec![("decision".into(), name.into())]).inc();
            state.metrics.record_run(now);
            match &decision {
                Decision::Fail { reason, .. } => tracing::warn!(rollout = id, %reason, "rollout failed its gate"),
                Decision::Release { .. } | Decision::CreateRollbacks { .. } => {
                    tracing::debug!(rollout = id, decision = name, devices = released.len())
                }
                _ => tracing::info!(rollout = id, decision = name, "rollout step"),
            }
        }
    }
    Ok(wake)
}

/// Runs until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis(state.config.driver_tick_ms.max(10));
    let mut last_flush = std::time::Instant::now();
    let single_owner = state.store.backend() == otafleet_store::Backend::Sqlite;
    let mut idle = IdleUntil::new();
    let mut last_full = std::time::Instant::now();
    let mut nudged = true;
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
                tick
            }
            Some(fence) => {
                let full = nudged || !single_owner || last_full.elapsed() >= FULL_PASS_EVERY;
                if full {
                    last_full = std::time::Instant::now();
                }
                match pass(&state, &mut idle, full, &fence).await {
                    Ok(wake) => {
                        let until = wake.map(|t| Duration::from_millis((t - now_ms()).max(0) as u64)).unwrap_or(tick);
                        until.min(tick)
                    }
                    Err(StoreError::Fenced(e)) => {
                        tracing::warn!(error = %e, "driver pass stopped: the lease is gone");
                        idle.clear();
                        tick
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "driver pass failed; retrying");
                        tick
                    }
                }
            }
        };
        nudged = false;
        let pause = debounce(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(sleep_for) => {}
            _ = state.driver_wake.notified() => {
                nudged = true;
                // Status reports arrive in bursts: gather a few before reading
                // counts again, so a big wave costs passes per burst, not per report.
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

    /// A timer tick skips a rollout that waits on its devices; a full pass (a
    /// nudge, or the periodic backstop) sees a change made behind its back.
    #[tokio::test]
    async fn ticks_skip_idle_rollouts_and_full_passes_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("d.db").display())).await.unwrap();
        let devices: Vec<NewDevice> = (1..=2u128)
            .map(|i| NewDevice {
                id: uuid::Uuid::from_u128(i),
                name: format!("d{i}"),
                labels: Default::default(),
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
        let r = create_rollout(
            &state,
            CreateRollout {
                release: ReleaseRef::EnsureVersion("2.0.0".into()),
                kind: otafleet_core::RolloutKind::Deploy,
                target: Target::Selector(String::new()),
                strategy: serde_json::from_str(r#"{"steps":[1,"100%"]}"#).unwrap(),
                start_at: None,
                actor: "t".into(),
                executor: otafleet_core::Executor::Driver,
                keep_if_empty: false,
            },
        )
        .await
        .unwrap();
        let mut idle = IdleUntil::new();
        pass(&state, &mut idle, true, &fence).await.unwrap();
        assert_eq!(idle.get(&r.id), Some(&None), "waiting on the canary, no timer");
        let canary = store
            .list_actions(&ActionQuery {
                rollout_id: Some(r.id),
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
        // A tick without a nudge leaves the idle rollout alone...
        pass(&state, &mut idle, false, &fence).await.unwrap();
        assert_eq!(store.get_rollout(r.id).await.unwrap().unwrap().current_wave, 0);
        // ...a full pass moves it on to the next wave.
        pass(&state, &mut idle, true, &fence).await.unwrap();
        assert_eq!(store.get_rollout(r.id).await.unwrap().unwrap().current_wave, 1);
    }

    #[test]
    fn debounce_follows_the_cost_of_a_pass_within_bounds() {
        assert_eq!(debounce(Duration::ZERO), DEBOUNCE);
        assert_eq!(debounce(Duration::from_millis(10)), DEBOUNCE);
        assert_eq!(debounce(Duration::from_millis(40)), Duration::from_millis(160));
        assert_eq!(debounce(Duration::from_secs(5)), MAX_DEBOUNCE);
    }
}
