//! otafleet-server: the control plane process.
//!
//! `serve` wires the pieces: the [`otafleet_store::Store`], the HTTP router
//! (management API `/api/v1`, device API `/device/v1`, the original tracker's
//! `/ota/*`, `/metrics`), and the rollout [`driver`] task. Everything shares one
//! [`AppState`]. The driver runs only on the replica holding the driver's
//! lease ([`leader`]). Shutdown (SIGTERM/ctrl-c, or the future passed in)
//! stops the driver at once (its current step finishes) and releases the
//! lease, stops accepting connections, lets in-flight requests finish, then
//! closes the database.
#![forbid(unsafe_code)]

pub mod driver;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod mqtt;
pub mod reports;
pub mod service;
pub mod signing;
pub mod time;
pub mod tls;
pub mod ui;

use anyhow::Context;
use otafleet_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Settings of one `otafleet serve` process, built once by the CLI.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    /// Secret admin token to install at start (`OTAFLEET_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Serve `/ota/*` without a token (for the original Python CLI on a trusted network).
    pub open_compat: bool,
    /// Serve `/metrics` without a token.
    pub open_metrics: bool,
    /// Largest accepted request body, bytes.
    pub body_limit: usize,
    /// Seconds a device is told to wait between check-ins.
    pub poll_interval_secs: u64,
    /// Period of the driver's safety-net tick, milliseconds.
    pub driver_tick_ms: u64,
    /// Where uploaded artifacts are stored (`artifacts/<sha256>`).
    pub data_dir: std::path::PathBuf,
    /// Signs the release manifests handed to devices (`--signing-key`).
    pub release_signer: Option<signing::ReleaseSigner>,
    /// How long a device's signed order stays valid after it is handed out (`--order-ttl`).
    pub order_ttl: std::time::Duration,
    /// Broker for device wake-ups (`--mqtt-url`, `--mqtt-ca-file`).
    pub mqtt: Option<mqtt::Broker>,
    /// Serve HTTPS with this certificate chain and key (`--tls-cert`,
    /// `--tls-key`); plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// Duration of the driver's lease (`--lease-secs`): how long a dead
    /// leader's replicas wait before one of them drives.
    pub lease: std::time::Duration,
    /// This process among the replicas (`--replica-id`); must be unique.
    pub replica_id: String,
    /// Release artifacts may name `http://` URLs (`--allow-http-artifacts`);
    /// otherwise only `https://` and the server's own artifact path.
    pub allow_http_artifacts: bool,
    /// How webhooks are delivered (`--webhook-timeout`, `--webhook-retry-*`).
    pub webhooks: service::webhooks::Settings,
    /// How telemetry is aggregated, kept and limited (`--telemetry-*`).
    pub telemetry: service::telemetry::Settings,
    /// Where analysis checks look (`--prometheus-url`, `--prometheus-timeout`).
    pub analysis: service::analysis::Settings,
    /// How alert rules are evaluated (`--alert-interval`, `--alertmanager-url`).
    pub alerts: service::alerts::Settings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ([127, 0, 0, 1], 8000).into(),
            database_url: "sqlite://otafleet.db".into(),
            admin_token: None,
            open_compat: false,
            open_metrics: true,
            body_limit: 1 << 20,
            poll_interval_secs: 30,
            driver_tick_ms: 1000,
            data_dir: "./otafleet-data".into(),
            release_signer: None,
            order_ttl: std::time::Duration::from_secs(3600),
            mqtt: None,
            tls: None,
            lease: std::time::Duration::from_secs(10),
            replica_id: leader::default_replica_id(),
            allow_http_artifacts: false,
            webhooks: Default::default(),
            telemetry: Default::default(),
            analysis: Default::default(),
            alerts: Default::default(),
        }
    }
}

/// PEM files of the server's certificate chain (leaf first) and its private
/// key. They are read at start and again whenever either file changes (a
/// renewed certificate is served without a restart).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Shared state behind every handler and the driver.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    pub metrics: Arc<metrics::Metrics>,
    /// Wakes the driver when something it decides on changed.
    pub driver_wake: Arc<Notify>,
    pub caches: Arc<service::caches::Caches>,
    /// Publishes device wake-ups when `config.mqtt` is set.
    pub mqtt: Option<mqtt::Publisher>,
    /// Status reports, applied in group commits.
    pub reports: reports::ReportQueue,
    /// Whether this replica holds the driver's lease (see [`leader`]).
    pub leader: Arc<leader::Leadership>,
    /// Set once the caches are warm (`service::delivery::warm`): `/readyz`.
    pub warm: Arc<std::sync::atomic::AtomicBool>,
    /// The live event feed (`/api/v1/events/stream`, the dashboard).
    pub feed: Arc<service::stream::Feed>,
    /// Rollouts' live data shared by the dashboards for half a second (`ui::rollouts::LiveCache`).
    pub ui_live: Arc<ui::rollouts::LiveCache>,
    /// Telemetry pending a flush, and the devices' rate limits.
    pub telemetry: Arc<service::telemetry::Telemetry>,
}

impl AppState {
    pub fn new(store: Store, config: Config) -> Self {
        let poll = std::time::Duration::from_secs(config.poll_interval_secs);
        // The broker's settings were checked when the configuration was built;
        // should its CA file have gone since, devices still poll.
        let mqtt = config.mqtt.as_ref().and_then(|b| {
            mqtt::Publisher::start(b, &format!("otafleet-{}", uuid::Uuid::new_v4()))
                .map_err(|e| tracing::error!(error = %format!("{e:#}"), "MQTT push disabled"))
                .ok()
        });
        let leader = Arc::new(leader::Leadership::new(config.replica_id.clone(), config.lease));
        let store_backend = store.backend();
        AppState {
            mqtt,
            leader,
            warm: Default::default(),
            feed: service::stream::Feed::new(),
            ui_live: Default::default(),
            telemetry: Default::default(),
            reports: reports::ReportQueue::start(store.clone()),
            store,
            config: Arc::new(config),
            metrics: Arc::new(metrics::Metrics::new()),
            driver_wake: Arc::new(Notify::new()),
            // One process owns a SQLite database, so it may keep everything
            // longer; on PostgreSQL the other replicas' changes arrive as
            // notifications (`service::coherence`), and until the listener is
            // in sync nothing is answered from memory.
            caches: Arc::new(match store_backend {
                otafleet_store::Backend::Sqlite => service::caches::Caches::new(true, poll),
                otafleet_store::Backend::Postgres => service::caches::Caches::notified(poll),
            }),
        }
    }
}

/// Generates a random secret token (256 bits, hex).
pub fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}_{}", hex::encode(bytes))
}

/// Installs the bootstrap admin token (`OTAFLEET_ADMIN_TOKEN`: at least 32
/// characters; a different one revokes the previous). Returns a newly
/// generated secret when the token table was empty and none was configured
/// (printed once by the caller). See [`service::tokens`].
pub async fn bootstrap_admin(store: &Store, configured: Option<&str>) -> anyhow::Result<Option<String>> {
    service::tokens::bootstrap_admin(store, configured).await
}

/// A running server: where it listens and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub bootstrap_token: Option<String>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Asks for a graceful stop and waits for it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("server task panicked")?
    }

    /// Waits until the server stops on its own (signal).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }
}

/// Connects to the database, migrates, binds and starts serving in the background.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    // Temporary files of uploads a crash or a kill interrupted (the data dir is this process's).
    let (n, bytes) = http::artifacts::sweep_tmp(&config.data_dir)
        .with_context(|| format!("sweeping {}", config.data_dir.join("tmp").display()))?;
    if n > 0 {
        tracing::info!(files = n, bytes, "removed temporary files of interrupted uploads");
    }
    let store = Store::connect(&config.database_url)
        .await
        .with_context(|| format!("opening database {}", redact(&config.database_url)))?;
    let bootstrap_token = bootstrap_admin(&store, config.admin_token.as_deref()).await?;
    let tls = match &config.tls {
        Some(files) => Some(tls::Tls::load(files).context("--tls-cert/--tls-key")?),
        None => None,
    };
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = AppState::new(store, config);
    // Listen before warming, so no change committed after the warming read is missed.
    let notices = service::coherence::listen(&state).await.context("listening for other replicas' changes")?;
    service::delivery::warm(&state).await?;
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let app = http::router(state.clone());
        let (driver_stop, driver_stopped) = watch::channel(false);
        let driver = tokio::spawn(driver::run(state.clone(), driver_stopped.clone()));
        let coherence =
            notices.map(|l| tokio::spawn(service::coherence::run(state.clone(), l, driver_stopped.clone())));
        let lease = tokio::spawn(leader::run(state.clone(), driver_stopped.clone()));
        let feed = tokio::spawn(state.feed.clone().run(state.store.clone()));
        let webhooks = tokio::spawn(service::webhooks::run(state.clone(), driver_stopped.clone()));
        let telemetry = tokio::spawn(service::telemetry::run(state.clone(), driver_stopped.clone()));
        let alerts = tokio::spawn(service::alerts::run(state.clone(), driver_stopped.clone()));
        let mqtt_telemetry = state
            .mqtt
            .as_ref()
            .and_then(|p| p.take_inbox())
            .map(|inbox| tokio::spawn(mqtt::ingest(state.clone(), inbox, driver_stopped.clone())));
        let wake = state.driver_wake.clone();
        let streams = state.feed.clone();
        let signal = async move {
            tokio::select! {
                _ = otafleet_rt::shutdown_signal() => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
            tracing::info!("shutting down: finishing in-flight requests");
            // Step down at once, while requests drain: the driver finishes the
            // step it is in (one transaction) and the lease is released, so
            // another replica drives without waiting for the lease to lapse.
            let _ = driver_stop.send(true);
            wake.notify_one();
            streams.close();
        };
        match tls {
            None => axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(signal)
                .await
                .context("http server")?,
            Some(tls) => tls.serve(listener, app, signal).await?,
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), driver).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), lease).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), feed).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), webhooks).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), telemetry).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), alerts).await;
        if let Some(m) = mqtt_telemetry {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), m).await;
        }
        if let Some(c) = coherence {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), c).await;
        }
        // Samples taken while the last requests drained.
        service::telemetry::flush_once(&state, service::telemetry::Held::All).await;
        if let Err(e) = state.caches.flush_seen(&state.store).await {
            tracing::warn!(error = %e, "could not record the last check-ins");
        }
        state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    });
    Ok(Running { addr, bootstrap_token, stop, task })
}

/// A database URL with any password replaced, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***@{}", &url[..s], &url[at + 1..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
