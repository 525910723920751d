//! Prometheus metrics (prometheus-client). The original tracker's names are kept
//! (`ota_updated_pods_total`, `ota_last_run_timestamp_seconds`, `ota_jobs_pending`,
//! `ota_jobs_successful`, `ota_jobs_total`) and fed from the database at scrape
//! time, so every replica reports the same live values; request histograms and
//! counters are per process.

use otafleet_core::{DeviceHealth, RolloutState};
use otafleet_store::Store;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

pub type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    /// Serializes scrapes so concurrent refreshes do not interleave.
    scrape: Mutex<()>,
    pub http_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub checkins: Counter,
    pub status_reports: Family<Labels, Counter>,
    pub driver_decisions: Family<Labels, Counter>,
    /// Rollouts the driver read and asked the engine about (a changed
    /// revision, a wake-up that came, or a first look).
    pub driver_rollout_reads: Counter,
    /// 1 on the replica that holds the driver's lease, 0 on the others.
    pub leader: Family<Labels, Gauge>,
    /// Times this replica became the leader.
    pub leader_takeovers: Counter,
    /// Times the cache notifications were lost and the caches resynced (PostgreSQL).
    pub cache_resyncs: Counter,
    /// Webhook delivery attempts by outcome (`delivered`, `retried`, `failed`).
    pub webhook_attempts: Family<Labels, Counter>,
    /// Telemetry samples taken in by this replica.
    pub telemetry_samples: Counter,
    /// Telemetry window rows this replica wrote (merged into the database).
    pub telemetry_rows: Counter,
    /// MQTT telemetry messages by outcome (`accepted`, `refused`, `unauthorized`, `dropped`).
    pub telemetry_mqtt: Family<Labels, Counter>,
    /// Telemetry windows held in memory, not yet written.
    pub telemetry_held: Gauge,
    /// Seconds the last evaluation of every alert rule took (the leader's).
    pub alert_cycle_seconds: Gauge<f64, AtomicU64>,
    alerts_firing: Family<Labels, Gauge>,
    updated_pods: Counter,
    last_run: Gauge<f64, AtomicU64>,
    jobs_pending: Gauge,
    jobs_successful: Gauge,
    jobs_total: Gauge,
    rollouts: Family<Labels, Gauge>,
    devices: Family<Labels, Gauge>,
}

fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.5, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            scrape: Mutex::new(()),
            http_duration: Family::new_with_constructor(http_histogram as fn() -> Histogram),
            checkins: Counter::default(),
            status_reports: Family::default(),
            driver_decisions: Family::default(),
            driver_rollout_reads: Counter::default(),
            leader: Family::default(),
            leader_takeovers: Counter::default(),
            cache_resyncs: Counter::default(),
            webhook_attempts: Family::default(),
            telemetry_samples: Counter::default(),
            telemetry_rows: Counter::default(),
            telemetry_mqtt: Family::default(),
            telemetry_held: Gauge::default(),
            alert_cycle_seconds: Gauge::default(),
            alerts_firing: Family::default(),
            updated_pods: Counter::default(),
            last_run: Gauge::default(),
            jobs_pending: Gauge::default(),
            jobs_successful: Gauge::default(),
            jobs_total: Gauge::default(),
            rollouts: Family::default(),
            devices: Family::default(),
        };
        // prometheus-client appends `_total` to counters.
        registry.register("ota_updated_pods", "Total number of devices (pods) updated", m.updated_pods.clone());
        registry.register("ota_last_run_timestamp_seconds", "Timestamp of the last OTA run", m.last_run.clone());
        registry.register(
            "ota_jobs_pending",
            "Number of pending (not finished) deployment jobs",
            m.jobs_pending.clone(),
        );
        registry.register(
            "ota_jobs_successful",
            "Number of successfully completed deployment jobs",
            m.jobs_successful.clone(),
        );
        registry.register("ota_jobs_total", "Total number of deployment jobs triggered", m.jobs_total.clone());
        registry.register("otafleet_rollouts", "Rollouts by kind and state", m.rollouts.clone());
        registry.register("otafleet_devices", "Registered devices by health", m.devices.clone());
        registry.register(
            "otafleet_http_request_duration_seconds",
            "HTTP request duration by method, route and status",
            m.http_duration.clone(),
        );
        registry.register("otafleet_device_checkins", "Device check-ins served", m.checkins.clone());
        registry.register("otafleet_status_reports", "Device status reports by outcome", m.status_reports.clone());
        registry.register(
            "otafleet_driver_decisions",
            "Rollout driver decisions applied, by decision",
            m.driver_decisions.clone(),
        );
        registry.register(
            "otafleet_driver_rollout_reads",
            "Rollouts the driver read and decided on (parked rollouts whose revision did not move are not read)",
            m.driver_rollout_reads.clone(),
        );
        registry.register(
            "otafleet_leader",
            "1 if this replica holds the driver's lease (drives rollouts), else 0",
            m.leader.clone(),
        );
        registry.register(
            "otafleet_leader_takeovers",
            "Times this replica became the holder of the driver's lease",
            m.leader_takeovers.clone(),
        );
        registry.register(
            "otafleet_cache_resyncs",
            "Times this replica lost the cache notifications of the other replicas and resynced its caches",
            m.cache_resyncs.clone(),
        );
        registry.register(
            "otafleet_webhook_attempts",
            "Webhook delivery attempts made by this replica, by outcome (delivered, retried, failed: given up)",
            m.webhook_attempts.clone(),
        );
        registry.register(
            "otafleet_telemetry_samples",
            "Telemetry samples this replica accepted",
            m.telemetry_samples.clone(),
        );
        registry.register(
            "otafleet_telemetry_window_rows_written",
            "Telemetry window rows this replica merged into the database",
            m.telemetry_rows.clone(),
        );
        registry.register(
            "otafleet_telemetry_mqtt_messages",
            "MQTT telemetry messages this replica received, by outcome (accepted; refused: bad samples or over \
             the rate; unauthorized: unknown token or another device's topic; dropped: the ingest queue was full)",
            m.telemetry_mqtt.clone(),
        );
        registry.register(
            "otafleet_telemetry_windows_held",
            "Telemetry windows this replica holds in memory, not yet written",
            m.telemetry_held.clone(),
        );
        registry.register(
            "otafleet_alerts_firing",
            "Alerts firing, by severity (from the database: the same on every replica)",
            m.alerts_firing.clone(),
        );
        registry.register(
            "otafleet_alert_evaluation_seconds",
            "Seconds the last evaluation of every alert rule took on this replica (the leader evaluates)",
            m.alert_cycle_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Marks an OTA run (a rollout created or advanced) at `now_ms`.
    pub fn record_run(&self, now_ms: i64) {
        let secs = now_ms as f64 / 1000.0;
        if secs > self.last_run.get() {
            self.last_run.set(secs);
        }
    }

    /// Refreshes the database-backed values and renders the text format.
    pub async fn render(&self, store: &Store) -> Result<String, otafleet_store::StoreError> {
        let states = store.rollout_state_counts().await?;
        let health = store.device_health_counts().await?;
        let updated = store.count_succeeded_installs().await?;
        let last = store.last_rollout_activity().await?;
        let firing = store.list_alerts(None, true).await?;
        let _guard = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let (mut pending, mut ok, mut total) = (0, 0, 0);
        for kind in ["deploy", "rollback"] {
            for s in RolloutState::ALL {
                self.rollouts
                    .get_or_create(&vec![("kind".into(), kind.into()), ("state".into(), s.as_str().into())])
                    .set(0);
            }
        }
        for (kind, state, n) in &states {
            self.rollouts.get_or_create(&vec![("kind".into(), kind.clone()), ("state".into(), state.clone())]).set(*n);
            total += n;
            match state.parse::<RolloutState>() {
                Ok(s) if s.is_active() => pending += n,
                Ok(RolloutState::Succeeded) => ok += n,
                _ => {}
            }
        }
        self.jobs_pending.set(pending);
        self.jobs_successful.set(ok);
        self.jobs_total.set(total);
        for h in DeviceHealth::ALL {
            self.devices.get_or_create(&vec![("health".into(), h.as_str().into())]).set(0);
        }
        for (h, n) in &health {
            self.devices.get_or_create(&vec![("health".into(), h.clone())]).set(*n);
        }
        for (severity, n) in crate::service::alerts::count_by_severity(firing.iter().map(|a| &a.severity)) {
            self.alerts_firing.get_or_create(&vec![("severity".into(), severity.as_str().into())]).set(n);
        }
        let seen = self.updated_pods.get() as i64;
        if updated > seen {
            self.updated_pods.inc_by((updated - seen) as u64);
        }
        if let Some(t) = last {
            self.record_run(t);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).map_err(|e| otafleet_store::StoreError::Invalid(e.to_string()))?;
        Ok(out)
    }
}
