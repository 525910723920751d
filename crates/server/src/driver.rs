//! The rollout driver: a task inside `otafleet serve` that moves rollouts along.
//!
//! Each pass: expire timed-out actions, then for every rollout that can move,
//! apply engine decisions one transaction at a time until the engine says
//! "idle". It sleeps until the earliest wake-up the engine asked for, a nudge
//! (a status report, an operator command, a new rollout), or a safety tick.
//! All state lives in the database, so a killed process resumes where the last
//! committed step left it; a step is never half-applied.

use crate::AppState;
use otafleet_core::engine::Decision;
use otafleet_store::now_ms;
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
        Decision::FinishRollback => "finish_rollback",
    }
}

/// One pass over every drivable rollout. Returns the earliest requested wake-up.
pub async fn pass(state: &AppState) -> Result<Option<i64>, otafleet_store::StoreError> {
    let now = now_ms();
    let expired = state.store.expire_actions(now, 5_000).await?;
    if expired > 0 {
        tracing::info!(expired, "actions timed out");
    }
    let mut wake: Option<i64> = None;
    for id in state.store.drivable_rollouts().await? {
        for _ in 0..MAX_STEPS_PER_PASS {
            let now = now_ms();
            let (decision, notified) = state.store.drive_step(id, now).await?;
            state.caches.inbox_add(&notified);
            if let Some(push) = state.mqtt.as_ref().filter(|_| !notified.is_empty()) {
                push.notify(&notified);
            }
            if let Decision::Idle { wake_at } = decision {
                if let Some(t) = wake_at {
                    wake = Some(wake.map_or(t, |w| w.min(t)));
                }
                break;
            }
            let name = decision_name(&decision);
            state.metrics.driver_decisions.get_or_create(&vec![("decision".into(), name.into())]).inc();
            state.metrics.record_run(now);
            match &decision {
                Decision::Fail { reason, .. } => tracing::warn!(rollout = id, %reason, "rollout failed its gate"),
                Decision::Release { .. } | Decision::CreateRollbacks { .. } => {
                    tracing::debug!(rollout = id, decision = name, devices = notified.len())
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
        let result = pass(&state).await;
        let pause = debounce(started.elapsed());
        let sleep_for = match result {
            Ok(wake) => {
                let until = wake.map(|t| Duration::from_millis((t - now_ms()).max(0) as u64)).unwrap_or(tick);
                until.min(tick)
            }
            Err(e) => {
                tracing::error!(error = %e, "driver pass failed; retrying");
                tick
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep_for) => {}
            _ = state.driver_wake.notified() => {
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

    #[test]
    fn debounce_follows_the_cost_of_a_pass_within_bounds() {
        assert_eq!(debounce(Duration::ZERO), DEBOUNCE);
        assert_eq!(debounce(Duration::from_millis(10)), DEBOUNCE);
        assert_eq!(debounce(Duration::from_millis(40)), Duration::from_millis(160));
        assert_eq!(debounce(Duration::from_secs(5)), MAX_DEBOUNCE);
    }
}
