//! Leader election through a `coordination.k8s.io/v1` Lease.
//!
//! Only the replica holding the Lease runs the controller, so two operator
//! replicas never reconcile at once. Every write is a `replace` carrying the
//! `resourceVersion` that was read, so two replicas racing for an expired Lease
//! cannot both win: the loser gets 409 and stays standby. The leader stops
//! trusting its leadership after `renew_deadline` (two thirds of the lease
//! duration) without a successful renewal — before anyone else may take the
//! Lease over — and the operator then stops its controller.

use otafleet_core::lease::LeaseClock;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::chrono::{DateTime, Utc};
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tracing::{debug, info, warn};

use crate::error::{is_conflict, Result};

/// Identity and timing of one candidate.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
}

impl LeaseConfig {
    /// Interval between renewals (a third of the lease duration: `core::lease`).
    pub fn renew_interval(&self) -> Duration {
        LeaseClock::new(self.lease_duration).renew_interval()
    }

    /// How long the leader keeps acting without a successful renewal.
    pub fn renew_deadline(&self) -> Duration {
        LeaseClock::new(self.lease_duration).act_window()
    }
}

/// Acquires, renews and releases the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

fn expired(spec: &LeaseSpec, now: DateTime<Utc>) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renewed.0 + k8s_openapi::chrono::Duration::seconds(secs) < now
}

impl LeaderElector {
    /// An elector for `config`.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config }
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One election round: creates, renews or takes over an expired Lease.
    /// Returns whether this replica holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Utc::now();
        let me = self.config.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_duration_seconds: Some(self.duration_secs()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() == Some(me.as_str()) {
            spec.renew_time = Some(MicroTime(now));
        } else if holder.is_none() || expired(&spec, now) {
            debug!(previous = ?holder, "taking over lease");
            spec.holder_identity = Some(me);
            spec.acquire_time = Some(MicroTime(now));
            spec.renew_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        } else {
            return Ok(false);
        }
        spec.lease_duration_seconds = Some(self.duration_secs());
        lease.spec = Some(spec);
        // `lease.metadata.resourceVersion` is the one read: the replace is guarded.
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(identity = %self.config.identity, lease = %self.config.name, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election failed, retrying"),
            }
            tokio::time::sleep(self.config.renew_interval()).await;
        }
    }

    /// Renews the Lease until leadership is lost; returns then.
    pub async fn hold(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_interval()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!("lease taken by another replica");
                    return;
                }
                Err(e) => warn!(error = %e, "lease renewal failed"),
            }
            if last_renewal.elapsed() > self.config.renew_deadline() {
                warn!("lease not renewed within the deadline");
                return;
            }
        }
    }

    /// Gives the Lease up so a standby can take over at once.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        lease.spec = Some(spec);
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
