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
//! * [`flash`] — gradual flashing, batch by batch (`otafleet flash`);
//! * [`update`] — canary/blue/green label and image updates of pods and workloads
//!   (`otafleet update`);
//! * [`fake`] — an in-process fake API server that tests (here and in other
//!   crates) drive all of the above against.
//!
//! It knows nothing about the otafleet server or database: callers get plain
//! values back (e.g. [`update::UpdateReport`]) and record them where they like.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod akri;
pub mod bench;
pub mod controller;
pub mod crd;
pub mod error;
pub mod fake;
pub mod flash;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod update;

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

/// Parses `500ms`, `60s`, `5m`, `1h` or plain seconds (`30`).
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = |m: u64| Ok(std::time::Duration::from_secs(n.saturating_mul(m)));
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(format!("invalid duration {s:?}: use ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(super::parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(super::parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(super::parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(super::parse_duration("5x").is_err());
        assert!(super::parse_duration("s").is_err());
    }
}
