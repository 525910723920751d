//! Creating a rollout from a release, a target and a strategy, for every edge
//! that does (management API, tracker-compatible API, the demo).

use super::{ServiceError, ServiceResult};
use crate::AppState;
use otafleet_core::plan::{exclusion, plan, Candidate, Exclusions, Targeted};
use otafleet_core::{DeviceHealth, Executor, Selector, StrategySpec};
use otafleet_store::{NewRollout, Release, Rollout, Target, TargetDevice};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Which release a rollout installs.
pub enum ReleaseRef {
    Id(i64),
    Version(String),
    /// By version, created without artifacts if missing (tracker `POST /ota/deploy`).
    EnsureVersion(String),
}

pub struct CreateRollout {
    pub release: ReleaseRef,
    /// `deploy` or `rollback`.
    pub kind: otafleet_core::RolloutKind,
    pub target: Target,
    pub strategy: StrategySpec,
    pub start_at: Option<i64>,
    pub actor: String,
    pub executor: Executor,
    /// The tracker's verbs: a job that reaches no device of ours is kept,
    /// `pending`, for an external executor to run and report. Everywhere else a
    /// rollout with no eligible device is refused, saying why.
    pub keep_if_empty: bool,
}

async fn resolve_release(state: &AppState, r: &ReleaseRef, actor: &str) -> ServiceResult<Release> {
    match r {
        ReleaseRef::Id(id) => state
            .store
            .get_release(*id)
            .await?
            .ok_or_else(|| ServiceError::invalid("release_id", format!("release {id} does not exist"))),
        ReleaseRef::Version(v) => {
            state.store.get_release_by_version(v).await?.ok_or_else(|| {
                ServiceError::invalid("version", format!("no release with version '{v}'; create it first"))
            })
        }
        ReleaseRef::EnsureVersion(v) => Ok(state.store.ensure_release(v, actor).await?),
    }
}

/// Resolves the target, filters eligible devices, plans the waves and stores the
/// rollout with its actions in one transaction.
pub async fn create_rollout(state: &AppState, req: CreateRollout) -> ServiceResult<Rollout> {
    let strategy = req
        .strategy
        .resolve(rand::random::<u64>() >> 1)
        .map_err(|e| ServiceError::invalid(&format!("strategy.{}", e.field), e.message))?;
    if let Some((field, message)) = crate::service::analysis::unsupported(&state.config.analysis, &strategy.analysis) {
        return Err(ServiceError::invalid(&field, message));
    }
    let release = resolve_release(state, &req.release, &req.actor).await?;
    let t0 = std::time::Instant::now();
    let devices = match &req.target {
        Target::Selector(s) => {
            let sel = Selector::parse(s).map_err(|e| ServiceError::invalid("selector", e.to_string()))?;
            state.store.target_devices(&sel).await?
        }
        Target::Devices(ids) => {
            let mut unique = ids.clone();
            unique.sort_unstable();
            unique.dedup();
            let found = state.store.target_devices_by_id(&unique).await?;
            let known: HashSet<Uuid> = found.iter().map(|d| d.id).collect();
            let missing: Vec<String> = unique.iter().filter(|id| !known.contains(id)).map(Uuid::to_string).collect();
            if !missing.is_empty() {
                return Err(ServiceError::invalid("devices", format!("unknown devices: {}", missing.join(", "))));
            }
            found
        }
    };
    // A job run elsewhere plans nothing: the driver must never release it.
    let devices = if req.executor == Executor::External { Vec::new() } else { devices };
    let t_resolve = t0.elapsed();
    let busy = state.store.busy_devices().await?;
    let online_after = otafleet_store::now_ms() - 3 * state.config.poll_interval_secs as i64 * 1000;
    let mut left_out = Exclusions::default();
    let eligible: Vec<&TargetDevice> = devices
        .iter()
        .filter(|d| {
            let targeted = Targeted {
                current_version: d.current_version.as_deref(),
                device_type: d.device_type.as_deref(),
                busy: busy.contains(&d.id),
            };
            let e = exclusion(targeted, &release.version, &release.compatible);
            left_out.count(e);
            e.is_none()
        })
        .collect();
    if eligible.is_empty() && req.executor == Executor::Driver && !req.keep_if_empty {
        let field = match req.target {
            Target::Selector(_) => "selector",
            Target::Devices(_) => "devices",
        };
        return Err(ServiceError::invalid(field, left_out.explain(&release.version)));
    }
    let candidates = eligible
        .iter()
        .map(|d| Candidate {
            id: d.id,
            online: d.last_seen.is_some_and(|t| t >= online_after),
            healthy: matches!(d.health, DeviceHealth::Healthy | DeviceHealth::Unknown),
        })
        .collect();
    let p = plan(candidates, &strategy);
    let t_plan = t0.elapsed();
    let from_versions: HashMap<_, _> = eligible.iter().map(|d| (d.id, d.current_version.clone())).collect();
    let rollout = state
        .store
        .create_rollout(NewRollout {
            release: &release,
            kind: req.kind,
            target: req.target,
            strategy,
            start_at: req.start_at,
            actor: &req.actor,
            plan: p,
            from_versions,
        })
        .await
        .map_err(ServiceError::from)?;
    tracing::info!(
        rollout = rollout.id,
        devices = devices.len(),
        resolve_ms = t_resolve.as_millis() as u64,
        plan_ms = (t_plan - t_resolve).as_millis() as u64,
        store_ms = (t0.elapsed() - t_plan).as_millis() as u64,
        "rollout created"
    );
    state.metrics.record_run(otafleet_store::now_ms());
    state.driver_wake.notify_one();
    Ok(rollout)
}
