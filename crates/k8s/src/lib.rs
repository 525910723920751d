//! Kubernetes side of otafleet.
//!
//! This crate owns everything that talks to a Kubernetes API server:
//!
//! * [`crd`] — the `FlashJob` custom resource (wire-compatible with the Go
//!   operator it replaces) and its generated CRD YAML;
//! * [`controller`] — the FlashJob reconciler that flashes Akri-discovered devices
//!   through short-lived flasher pods;
//! * [`operator`] — the `otafleet operator run|crd` entry points: leader election
//!   ([`leader`]), health and metrics server ([`health`], [`metrics`]);
//! * [`flash`](mod@flash) — gradual flashing, batch by batch (`otafleet flash`);
//! * [`app`] — ROS applications: a spec rendered to a ROS master or
//!   discovery server, storage and the app Deployment (`otafleet app`);
//! * [`cluster`] — the cluster agent, which speaks for the cluster's
//!   workloads and boards to the control plane as a delegate;
//! * [`update`](mod@update) — canary/blue/green (or custom) label and image
//!   updates of pods and workloads, each wave behind a health gate
//!   (`otafleet update`);
//! * `fake` (cargo feature `fake`, off by default) — an in-process fake API
//!   server that tests (here and in other crates) drive all of the above
//!   against, and `bench`, the FlashJob benchmark that runs on it.
//!
//! Rollout vocabulary and arithmetic come from `otafleet-core`: the wave preset
//! ([`otafleet_core::Preset`]), wave sizes ([`otafleet_core::plan`]), the
//! health gate of `update` ([`otafleet_core::engine::verdict`]), batches of
//! `flash` ([`otafleet_core::batch`]), label selectors (the fake server) and
//! durations ([`otafleet_core::duration`]); retries of API calls use
//! [`otafleet_rt::retry`]. The crate knows nothing about the otafleet server or
//! database: callers get plain values back (e.g. [`update::UpdateReport`]) and
//! record them where they like.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod akri;
pub mod app;
#[cfg(feature = "fake")]
pub mod bench;
pub mod cluster;
pub mod controller;
pub mod crd;
pub mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod flash;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod update;

#[cfg(feature = "fake")]
pub use bench::{bench_flashjob, BenchReport};
pub use error::{Error, Result};
pub use flash::{flash, FlashArgs, FlashReport};
pub use operator::{print_crd, run_operator, start_operator, OperatorArgs};
pub use update::{update, UpdateArgs, UpdateFailed, UpdateReport};

use std::path::Path;

/// Builds a client from an explicit kubeconfig file, or the usual way
/// (`KUBECONFIG`, `~/.kube/config`, in-cluster service account) when `None`.
pub async fn client_from_kubeconfig(path: Option<&Path>) -> Result<kube::Client> {
    match path {
        Some(path) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Kube(kube::Error::InferKubeconfig(e)))?;
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| Error::Kube(kube::Error::InferKubeconfig(e)))?;
            Ok(kube::Client::try_from(config)?)
        }
        None => Ok(kube::Client::try_default().await?),
    }
}
