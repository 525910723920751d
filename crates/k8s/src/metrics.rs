//! Prometheus metrics of the operator, served on `/metrics` by [`crate::health`].
//!
//! One [`Metrics`] value is built at start-up and shared through the controller
//! [`crate::controller::Context`]; nothing is global, so tests can build their own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set carrying an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// See [`crate::Error::metric_label`].
    pub error: String,
}

/// Label set carrying a pod phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: String,
}

/// Operator metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that returned an error, by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile wall time.
    pub duration: Histogram,
    /// Flash pods currently observed, by phase, summed over all FlashJobs.
    pub flash_pods: Family<PhaseLabels, Gauge>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    per_job: Mutex<HashMap<String, HashMap<String, i64>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers all metrics under the `otafleet_operator_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("otafleet_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let flash_pods = Family::<PhaseLabels, Gauge>::default();
        let leader = Gauge::default();
        registry.register("reconcile", "FlashJob reconciles started", reconciles.clone());
        registry.register("reconcile_errors", "FlashJob reconciles that failed", errors.clone());
        registry.register("reconcile_duration_seconds", "FlashJob reconcile duration", duration.clone());
        registry.register("flash_pods", "Flash pods observed, by phase", flash_pods.clone());
        registry.register("leader", "1 if this replica is the leader", leader.clone());
        Self { registry, reconciles, errors, duration, flash_pods, leader, per_job: Mutex::new(HashMap::new()) }
    }

    /// Records one finished reconcile.
    pub fn observe_reconcile(&self, took: Duration, error: Option<&crate::Error>) {
        self.duration.observe(took.as_secs_f64());
        if let Some(e) = error {
            self.errors.get_or_create(&ErrorLabels { error: e.metric_label().to_string() }).inc();
        }
    }

    /// Replaces the pod-phase counts of one job and refreshes the gauges.
    pub fn set_job_pods(&self, job: &str, counts: HashMap<String, i64>) {
        let Ok(mut per_job) = self.per_job.lock() else {
            return;
        };
        if counts.is_empty() {
            per_job.remove(job);
        } else {
            per_job.insert(job.to_string(), counts);
        }
        let mut totals: HashMap<String, i64> =
            ["Pending", "Running", "Succeeded", "Failed", "Unknown"].into_iter().map(|p| (p.to_string(), 0)).collect();
        for counts in per_job.values() {
            for (phase, n) in counts {
                *totals.entry(phase.clone()).or_default() += n;
            }
        }
        for (phase, n) in totals {
            self.flash_pods.get_or_create(&PhaseLabels { phase }).set(n);
        }
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
