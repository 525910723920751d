//! Delivery: the seam through which an action reaches a target and its
//! progress comes back. Above it, the engine decides which device gets what
//! and when; below it, something carries the action to the target. Today that
//! is the device protocol (`/device/v1`, spoken by `otafleet-agent` and the
//! simulated fleet, with MQTT wake-ups); a delegate that speaks for many
//! targets (a cluster agent for pods and FlashJob boards, a site gateway)
//! plugs in here the same way: it authenticates as a scope of devices and
//! calls [`checkin`] and [`report`] for each of them, so nothing above this
//! module — waves, gates, rollback, events — knows which kind of target it is.
//!
//! This is also the one place that keeps the caches coherent with the store
//! (see `caches` for what each holds): every path that changes an action or a
//! device's version here updates or invalidates the cached copy in the same
//! function, right after the store call; what other replicas changed arrives
//! through `service::coherence` and is applied by [`changed_elsewhere`].

use super::caches::Inbox;
use super::{ServiceError, ServiceResult};
use crate::AppState;
use otafleet_core::protocol::StatusReport;
use otafleet_core::{ActionState, DeviceHealth};
use otafleet_store::notify::Change;
use otafleet_store::{Action, ReportOutcome, StoreError};
use uuid::Uuid;

fn unknown_device() -> ServiceError {
    ServiceError::Unauthenticated("unknown device token".into())
}

/// A device checks in running `reported` (or an unknown version) with `health`:
/// returns the action it should perform, if any.
///
/// The common case — the device runs the version we know — is answered from
/// the caches (on PostgreSQL with one indexed read); last-seen and health are
/// written in batches. A changed version takes the transactional path
/// (`Store::checkin`), which also detects a device that rolled back on its own.
pub async fn checkin(
    state: &AppState,
    device: Uuid,
    reported: Option<&str>,
    health: Option<DeviceHealth>,
    now: i64,
) -> ServiceResult<Option<Action>> {
    let caches = &state.caches;
    let mut known = caches.live(device).is_some_and(|l| reported.is_none() || l.version.as_deref() == reported);
    if !known {
        // Not cached (or another version): what does the registry say?
        match state.store.get_device(device).await? {
            Some(d) if reported.is_none() || d.current_version.as_deref() == reported => {
                cache_registry_version(state, device, d.current_version);
                known = true;
            }
            Some(_) => {}
            None => {
                caches.forget_device(device);
                return Err(unknown_device());
            }
        }
    }
    if known {
        caches.saw(device, health.unwrap_or(DeviceHealth::Unknown));
        return Ok(match caches.inbox(device) {
            Inbox::Empty => None,
            Inbox::Known(a) => Some(*a),
            Inbox::Disabled => state.store.inflight_action(device).await?,
            Inbox::Maybe(generation) => {
                let a = state.store.inflight_action(device).await?;
                caches.inbox_found(device, generation, a.as_ref());
                a
            }
        });
    }
    // The device runs another version than recorded: the transactional path
    // records it and fails any install it silently undid.
    let c = match state.store.checkin(device, reported, health, now).await {
        Err(StoreError::NotFound(_)) => {
            caches.forget_device(device);
            return Err(unknown_device());
        }
        other => other?,
    };
    caches.set_live(device, c.device.current_version.clone());
    // The store may have failed the action the inbox holds: read it again next time.
    caches.inbox_unknown(&[device]);
    // An install the device silently undid has just failed: the gate may move.
    state.driver_wake.notify_one();
    Ok(c.action)
}

/// The version a device runs, for labelling what it measures: cached, or read
/// from the registry and cached as [`checkin`] caches it (a device that only
/// sends telemetry cost a registry read per batch: on PostgreSQL, 100,000 of
/// them fell behind their schedule). `None` for an unknown device or version.
pub async fn running_version(state: &AppState, device: Uuid) -> Result<Option<String>, StoreError> {
    if let Some(l) = state.caches.live(device) {
        return Ok(l.version);
    }
    let Some(d) = state.store.get_device(device).await? else { return Ok(None) };
    cache_registry_version(state, device, d.current_version.clone());
    Ok(d.current_version)
}

/// Caches the version the registry gave for a device whose cached one was
/// missing or stale. What this process cached about the device was behind
/// the registry (another replica applied its report, say, and its notice has
/// not arrived): so may be its inbox, which could still hold the action that
/// report finished. It is read again.
fn cache_registry_version(state: &AppState, device: Uuid, version: Option<String>) {
    state.caches.set_live(device, version);
    state.caches.inbox_unknown(&[device]);
}

/// A device reports progress on one of its actions (group-committed by
/// `reports`). Idempotent by `(action_id, seq)`.
pub async fn report(state: &AppState, device: Uuid, report: StatusReport) -> ServiceResult<(ReportOutcome, Action)> {
    let current_version = report.current_version.clone();
    let (outcome, action) = state.reports.submit(device, report).await?;
    match outcome {
        ReportOutcome::Applied => {
            // Keep the cached version in step with what the store just wrote.
            if action.state == ActionState::Succeeded {
                state.caches.set_live(device, Some(action.to_version.clone()));
            } else if current_version.is_some() {
                state.caches.set_live(device, current_version);
            }
            state.caches.inbox_reported(&action);
            state.driver_wake.notify_one();
        }
        ReportOutcome::Ignored => {
            // The stored action moved on without this process following it (e.g. a
            // timeout): what the inbox holds for the device may be stale.
            state.caches.inbox_unknown(&[device]);
        }
        ReportOutcome::Duplicate => {}
    }
    Ok((outcome, action))
}

/// The driver handed these actions to their devices (after the commit):
/// answer their next check-in from memory and wake them over MQTT. Only the
/// replica that released them gets here (the driver's), so each wake-up is
/// published once; other replicas hear of the release through
/// [`changed_elsewhere`], which publishes nothing.
pub fn released(state: &AppState, actions: &[Action]) {
    if actions.is_empty() {
        return;
    }
    state.caches.inbox_put(actions);
    if let Some(push) = state.mqtt.as_ref() {
        push.notify(&actions.iter().map(|a| a.device_id).collect::<Vec<_>>());
    }
}

/// Timeouts changed these devices' actions behind the caches' back.
pub fn expired(state: &AppState, devices: &[Uuid]) {
    state.caches.inbox_unknown(devices);
}

/// A device was deleted: its token and version stop being served at once.
pub fn device_deleted(state: &AppState, device: Uuid) {
    state.caches.forget_device(device);
    state.driver_wake.notify_one();
}

/// After a device's token was replaced: the old one is refused at once here.
pub fn device_token_rotated(state: &AppState, device: Uuid) {
    state.caches.forget_device_token(device);
}

/// Another replica committed `change` (a notification, `service::coherence`):
/// drop what the caches hold that it made stale.
pub fn changed_elsewhere(state: &AppState, change: &Change) {
    match change {
        Change::Actions { devices } => {
            // Released, reported, timed out or failed there: read again here.
            state.caches.inbox_unknown(devices);
            state.caches.forget_live(devices);
            // The leader's gate may move (a report applied by another replica).
            state.driver_wake.notify_one();
        }
        // The leader's driver looks at them again (its revision check
        // decides whether anything is read).
        Change::Rollouts { .. } => state.driver_wake.notify_one(),
        Change::TokenRevoked { id } => state.caches.forget_token(*id),
        Change::DeviceToken { device } => device_token_rotated(state, *device),
        Change::DeviceDeleted { device } => device_deleted(state, *device),
        Change::Ping { .. } => {}
    }
}

/// Notifications may have been lost: nothing is served from memory until [`resync`].
pub fn desynced(state: &AppState) {
    state.caches.desync();
}

/// Listening (again): forget what the caches knew; devices that may have an
/// action in flight, read after `LISTEN` was in place, become unknown.
pub async fn resync(state: &AppState) -> ServiceResult<()> {
    state.caches.resync(&state.store.devices_in_flight().await?);
    // Rollout changes may have been missed too: the driver lists them all.
    state.driver_wake.notify_one();
    Ok(())
}

/// At start (after `LISTEN`, on PostgreSQL): devices that may have an action in flight.
pub async fn warm(state: &AppState) -> ServiceResult<()> {
    resync(state).await?;
    state.warm.store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}
