//! `otafleet serve`: configuration from flags, `OTAFLEET_*` environment
//! variables and an optional TOML file (in that order of precedence), built
//! once into [`otafleet_server::Config`].

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "OTAFLEET_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// sqlite://PATH (embedded default, WAL mode) or postgres://USER@HOST/DB.
    #[arg(long, env = "OTAFLEET_DATABASE_URL", default_value = "sqlite://otafleet.db")]
    pub database_url: String,
    /// TOML file with any of: listen, database_url, open_compat, metrics_auth, body_limit, poll_interval_secs,
    /// data_dir, signing_key, order_ttl, mqtt_url, mqtt_ca_file, tls_cert, tls_key, lease_secs, replica_id,
    /// allow_http_artifacts, webhook_timeout, webhook_retry_initial, webhook_max_attempts, telemetry_flush,
    /// telemetry_grace, telemetry_hold, telemetry_rate, telemetry_resolutions, prometheus_url, prometheus_timeout,
    /// alert_interval, alertmanager_url.
    #[arg(long, env = "OTAFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Serve the tracker's /ota/* endpoints without a token (trusted networks only).
    #[arg(long, env = "OTAFLEET_OPEN_COMPAT", default_value_t = false)]
    pub open_compat: bool,
    /// Require a viewer token for /metrics.
    #[arg(long, env = "OTAFLEET_METRICS_AUTH", default_value_t = false)]
    pub metrics_auth: bool,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "OTAFLEET_BODY_LIMIT", default_value_t = 1 << 20)]
    pub body_limit: usize,
    /// Seconds devices wait between check-ins.
    #[arg(long, env = "OTAFLEET_POLL_INTERVAL", default_value_t = 30)]
    pub poll_interval_secs: u64,
    /// Where uploaded artifacts are stored (content-addressed by SHA-256).
    #[arg(long, env = "OTAFLEET_DATA_DIR", default_value = "./otafleet-data")]
    pub data_dir: PathBuf,
    /// Private key file (`otafleet keys generate`) that signs release manifests.
    #[arg(long, env = "OTAFLEET_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// How long a device's signed order stays valid after the server hands it out (`30s`, `10m`, `1h`);
    /// agents refuse it later, so a held-back order cannot be used after that.
    #[arg(long, env = "OTAFLEET_ORDER_TTL", default_value = "1h", value_parser = otafleet_core::duration::parse_arg)]
    pub order_ttl: std::time::Duration,
    /// MQTT broker, mqtt://host:port or mqtts://host:port (TLS): devices are woken on
    /// otafleet/<device-id>/cmd.
    #[arg(long, env = "OTAFLEET_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// PEM bundle of the CA that signed the mqtts:// broker's certificate (default: the Mozilla roots).
    #[arg(long, env = "OTAFLEET_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<PathBuf>,
    /// Serve HTTPS: PEM certificate chain, leaf first (with --tls-key). Reloaded when the file changes.
    #[arg(long, env = "OTAFLEET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "OTAFLEET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds the driver's lease lasts: one replica drives rollouts; if it dies, another takes over
    /// within this time and a third.
    #[arg(long, env = "OTAFLEET_LEASE_SECS", default_value_t = 10)]
    pub lease_secs: u64,
    /// This replica's id, unique among the replicas on one database (default: hostname-pid-random).
    #[arg(long, env = "OTAFLEET_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Accept release artifacts with plain http:// URIs (default: only https:// and this server's own
    /// /device/v1/artifacts/<sha256>).
    #[arg(long, env = "OTAFLEET_ALLOW_HTTP_ARTIFACTS", default_value_t = false)]
    pub allow_http_artifacts: bool,
    /// Longest wait for a webhook receiver's answer (`10s`); longer counts as a failed attempt.
    #[arg(long, env = "OTAFLEET_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = otafleet_core::duration::parse_arg)]
    pub webhook_timeout: std::time::Duration,
    /// Wait after a webhook delivery's first failed attempt; it doubles with every further one, up to an hour.
    #[arg(long, env = "OTAFLEET_WEBHOOK_RETRY_INITIAL", default_value = "10s",
          value_parser = otafleet_core::duration::parse_arg)]
    pub webhook_retry_initial: std::time::Duration,
    /// Attempts of one webhook delivery in all before it is given up (`failed` in its log).
    #[arg(long, env = "OTAFLEET_WEBHOOK_MAX_ATTEMPTS", default_value_t = 12)]
    pub webhook_max_attempts: u32,
    /// How often received telemetry is merged into the database (`5s`); a crash loses at most this much.
    #[arg(long, env = "OTAFLEET_TELEMETRY_FLUSH", default_value = "5s", value_parser = otafleet_core::duration::parse_arg)]
    pub telemetry_flush: std::time::Duration,
    /// A telemetry window is written to the database this long after it closes (late samples still count).
    #[arg(long, env = "OTAFLEET_TELEMETRY_GRACE", default_value = "10s", value_parser = otafleet_core::duration::parse_arg)]
    pub telemetry_grace: std::time::Duration,
    /// A telemetry window still open is written once held this long (a kill -9 loses what is held).
    #[arg(long, env = "OTAFLEET_TELEMETRY_HOLD", default_value = "5m", value_parser = otafleet_core::duration::parse_arg)]
    pub telemetry_hold: std::time::Duration,
    /// Telemetry samples a second one device may send, sustained (a full batch may come at once); over it: 429.
    #[arg(long, env = "OTAFLEET_TELEMETRY_RATE", default_value_t = 50.0)]
    pub telemetry_rate: f64,
    /// The resolutions telemetry windows are kept at, finest first, WIDTH:RETENTION (each width a multiple of
    /// the one before). Analysis checks read the finest; every resolution costs a row per device, metric and window.
    #[arg(long, env = "OTAFLEET_TELEMETRY_RESOLUTIONS", default_value = "1m:7d,1h:90d")]
    pub telemetry_resolutions: String,
    /// Prometheus server that `prometheus` analysis checks query (http://host:9090); without it they are refused.
    #[arg(long, env = "OTAFLEET_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// Longest wait for a Prometheus query; longer makes the measurement inconclusive.
    #[arg(long, env = "OTAFLEET_PROMETHEUS_TIMEOUT", default_value = "10s", value_parser = otafleet_core::duration::parse_arg)]
    pub prometheus_timeout: std::time::Duration,
    /// Between two evaluations of every alert rule (by the replica that drives rollouts).
    #[arg(long, env = "OTAFLEET_ALERT_INTERVAL", default_value = "10s", value_parser = otafleet_core::duration::parse_arg)]
    pub alert_interval: std::time::Duration,
    /// Alertmanager to push firing alerts to (http://host:9093); they are sent again every evaluation.
    #[arg(long, env = "OTAFLEET_ALERTMANAGER_URL")]
    pub alertmanager_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    open_compat: Option<bool>,
    metrics_auth: Option<bool>,
    body_limit: Option<usize>,
    poll_interval_secs: Option<u64>,
    data_dir: Option<PathBuf>,
    signing_key: Option<PathBuf>,
    order_ttl: Option<String>,
    mqtt_url: Option<String>,
    mqtt_ca_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    lease_secs: Option<u64>,
    replica_id: Option<String>,
    allow_http_artifacts: Option<bool>,
    webhook_timeout: Option<String>,
    webhook_retry_initial: Option<String>,
    webhook_max_attempts: Option<u32>,
    telemetry_flush: Option<String>,
    telemetry_rate: Option<f64>,
    telemetry_grace: Option<String>,
    telemetry_hold: Option<String>,
    telemetry_resolutions: Option<String>,
    prometheus_url: Option<String>,
    prometheus_timeout: Option<String>,
    alert_interval: Option<String>,
    alertmanager_url: Option<String>,
}

impl ServeArgs {
    /// Merges the TOML file under flags and environment.
    pub fn into_config(mut self, m: &ArgMatches) -> Result<otafleet_server::Config> {
        if let Some(path) = &self.config {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
            let file: FileConfig =
                toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
            let from_default = |id: &str| matches!(m.value_source(id), None | Some(ValueSource::DefaultValue));
            macro_rules! take {
                ($f:ident) => {
                    if let Some(v) = file.$f {
                        if from_default(stringify!($f)) {
                            self.$f = v;
                        }
                    }
                };
            }
            take!(listen);
            take!(database_url);
            take!(open_compat);
            take!(metrics_auth);
            take!(body_limit);
            take!(poll_interval_secs);
            take!(data_dir);
            take!(lease_secs);
            take!(allow_http_artifacts);
            take!(webhook_max_attempts);
            take!(telemetry_rate);
            take!(telemetry_resolutions);
            macro_rules! take_duration {
                ($f:ident) => {
                    if let Some(t) = &file.$f {
                        if from_default(stringify!($f)) {
                            self.$f = otafleet_core::duration::parse_arg(t).map_err(|e| {
                                anyhow::anyhow!("config file {}: {}: {e}", path.display(), stringify!($f))
                            })?;
                        }
                    }
                };
            }
            take_duration!(order_ttl);
            take_duration!(webhook_timeout);
            take_duration!(webhook_retry_initial);
            take_duration!(telemetry_flush);
            take_duration!(telemetry_grace);
            take_duration!(telemetry_hold);
            take_duration!(prometheus_timeout);
            take_duration!(alert_interval);
            if self.alertmanager_url.is_none() {
                self.alertmanager_url = file.alertmanager_url;
            }
            if self.prometheus_url.is_none() {
                self.prometheus_url = file.prometheus_url;
            }
            if self.signing_key.is_none() {
                self.signing_key = file.signing_key;
            }
            if self.mqtt_url.is_none() {
                self.mqtt_url = file.mqtt_url;
            }
            if self.mqtt_ca_file.is_none() {
                self.mqtt_ca_file = file.mqtt_ca_file;
            }
            // The pair comes from one place: flags/environment or the file.
            if self.tls_cert.is_none() && self.tls_key.is_none() {
                self.tls_cert = file.tls_cert;
                self.tls_key = file.tls_key;
            }
            if self.replica_id.is_none() {
                self.replica_id = file.replica_id;
            }
        }
        let release_signer = match &self.signing_key {
            Some(p) => Some(otafleet_server::signing::ReleaseSigner::load(p).context("--signing-key")?),
            None => None,
        };
        let mqtt = match &self.mqtt_url {
            Some(u) => Some(otafleet_server::mqtt::Broker::parse(u, self.mqtt_ca_file.clone()).context("--mqtt-url")?),
            None if self.mqtt_ca_file.is_some() => anyhow::bail!("--mqtt-ca-file needs --mqtt-url mqtts://…"),
            None => None,
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(otafleet_server::TlsFiles { cert, key }),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together (tls_cert and tls_key in the config file)"),
        };
        if self.body_limit < 1024 {
            anyhow::bail!("--body-limit must be at least 1024 bytes");
        }
        if self.order_ttl < std::time::Duration::from_secs(1) {
            anyhow::bail!("--order-ttl must be at least 1s");
        }
        if self.lease_secs == 0 {
            anyhow::bail!("--lease-secs must be at least 1");
        }
        if self.webhook_timeout < std::time::Duration::from_millis(100) {
            anyhow::bail!("--webhook-timeout must be at least 100ms");
        }
        if self.webhook_retry_initial < std::time::Duration::from_millis(10) {
            anyhow::bail!("--webhook-retry-initial must be at least 10ms");
        }
        if !(1..=100).contains(&self.webhook_max_attempts) {
            anyhow::bail!("--webhook-max-attempts must be between 1 and 100");
        }
        let webhooks = otafleet_server::service::webhooks::Settings {
            retry: otafleet_core::webhook::RetryPolicy {
                backoff: otafleet_core::backoff::Backoff::new(
                    self.webhook_retry_initial,
                    std::time::Duration::from_secs(3600).max(self.webhook_retry_initial),
                ),
                max_attempts: self.webhook_max_attempts,
            },
            timeout: self.webhook_timeout,
            ..Default::default()
        };
        if self.telemetry_flush < std::time::Duration::from_millis(100) {
            anyhow::bail!("--telemetry-flush must be at least 100ms");
        }
        if !(self.telemetry_rate.is_finite() && self.telemetry_rate > 0.0) {
            anyhow::bail!("--telemetry-rate must be a positive number of samples a second");
        }
        if self.telemetry_hold < self.telemetry_flush {
            anyhow::bail!("--telemetry-hold must be at least --telemetry-flush");
        }
        let resolutions = otafleet_core::telemetry::parse_resolutions(&self.telemetry_resolutions)
            .map_err(|e| anyhow::anyhow!("--telemetry-resolutions: {e}"))?;
        let telemetry = otafleet_server::service::telemetry::Settings {
            resolutions,
            flush: self.telemetry_flush,
            grace: self.telemetry_grace,
            max_hold: self.telemetry_hold,
            rate: self.telemetry_rate,
            ..Default::default()
        };
        let http_url = |flag: &str, u: Option<String>| -> Result<Option<String>> {
            match u.map(|u| u.trim().trim_end_matches('/').to_string()) {
                Some(u)
                    if !(u.starts_with("http://") || u.starts_with("https://")) || reqwest::Url::parse(&u).is_err() =>
                {
                    anyhow::bail!("{flag} must be an http:// or https:// URL, got '{u}'")
                }
                other => Ok(other),
            }
        };
        let prometheus_url = http_url("--prometheus-url", self.prometheus_url)?;
        let alertmanager_url = http_url("--alertmanager-url", self.alertmanager_url)?;
        if self.alert_interval < std::time::Duration::from_millis(100) {
            anyhow::bail!("--alert-interval must be at least 100ms");
        }
        let alerts = otafleet_server::service::alerts::Settings { interval: self.alert_interval, alertmanager_url };
        if self.prometheus_timeout < std::time::Duration::from_millis(100) {
            anyhow::bail!("--prometheus-timeout must be at least 100ms");
        }
        let analysis = otafleet_server::service::analysis::Settings {
            prometheus_url,
            prometheus_timeout: self.prometheus_timeout,
        };
        let replica_id = match self.replica_id.map(|r| r.trim().to_string()) {
            Some(r) if r.is_empty() => anyhow::bail!("--replica-id must not be empty"),
            Some(r) => r,
            None => otafleet_server::leader::default_replica_id(),
        };
        let config = otafleet_server::Config {
            listen: self.listen,
            database_url: self.database_url,
            admin_token: std::env::var("OTAFLEET_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
            open_compat: self.open_compat,
            open_metrics: !self.metrics_auth,
            body_limit: self.body_limit,
            poll_interval_secs: self.poll_interval_secs.max(1),
            data_dir: self.data_dir,
            release_signer,
            order_ttl: self.order_ttl,
            mqtt,
            tls,
            lease: std::time::Duration::from_secs(self.lease_secs),
            replica_id,
            allow_http_artifacts: self.allow_http_artifacts,
            webhooks,
            telemetry,
            analysis,
            alerts,
            ..Default::default()
        };
        Ok(config)
    }
}

/// Prints the bootstrap admin token once, to stderr, so it is not mixed with output.
pub fn announce(running: &otafleet_server::Running) {
    if let Some(t) = &running.bootstrap_token {
        eprintln!("\n  Bootstrap admin token (shown once, store it now):\n\n    {t}\n\n  export OTAFLEET_TOKEN={t}\n");
    }
}

pub async fn run(args: ServeArgs, m: &ArgMatches) -> Result<()> {
    let config = args.into_config(m)?;
    match &config.release_signer {
        Some(k) => tracing::info!(public_key = %k.public_hex(), "signing release manifests"),
        None => tracing::warn!("no --signing-key: release manifests are unsigned and agents will refuse them"),
    }
    tracing::info!(listen = %config.listen, database = %otafleet_server::redact(&config.database_url), replica = %config.replica_id, "starting otafleet serve");
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let running = otafleet_server::start(config).await?;
    announce(&running);
    tracing::info!(addr = %running.addr, scheme, "listening");
    println!("otafleet listening on {scheme}://{}", running.addr);
    running.wait().await
}
