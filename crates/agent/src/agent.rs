//! The device agent (`otafleet-agent`): enrolls once, then checks in on an
//! interval with jitter (or at once when an MQTT push arrives), and carries
//! out the action the server hands it:
//!
//! 1. fetch the action with its signed order and manifest, and refuse an
//!    order that is unsigned, signed with another key, for another device or
//!    action, relabelled or expired, and a release that is unsigned,
//!    tampered, for another device type, or older than what runs or ever ran
//!    without a signed rollback order (`failed` + reason); a rollback to a
//!    version still on the device is done locally, but only on a valid order;
//! 2. download the artifacts, resuming partial files, and check their SHA-256;
//! 3. install with the handler configured for the release kind, activate;
//! 4. run the health check; on failure roll back locally and report
//!    `rolled_back` with the reason.
//!
//! Every step is recorded in `state.json` before it is taken, and every
//! status report goes through the on-disk queue, so a restart or an outage
//! loses nothing: reports are delivered in order later, and an interrupted
//! action resumes (download, install) or is checked again and rolled back.

use crate::client::{DeviceClient, DownloadError, HttpStatus};
use crate::config::AgentConfig;
use crate::install::{health_check, Handler, InstallEnv};
use crate::state::{AgentState, Identity, Inflight, Phase, StateDir};
use crate::verify;
use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::VerifyingKey;
use otafleet_core::protocol::{ActionOrder, CheckinRequest, EnrollRequest};
use otafleet_core::{ActionKind, ActionState, DeviceHealth};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// `otafleet-agent` / `otafleet agent` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The agent's TOML config file.
    #[arg(long, short = 'c', env = "OTAFLEET_AGENT_CONFIG")]
    pub config: PathBuf,
}

/// The outcome of carrying out one action.
enum Outcome {
    Done,
    /// Not finished (server unreachable, download interrupted): try again later.
    Later(anyhow::Error),
}

pub struct Agent {
    cfg: AgentConfig,
    key: VerifyingKey,
    dir: StateDir,
    identity: Identity,
    state: AgentState,
    client: DeviceClient,
    http: reqwest::Client,
    wake: Arc<Notify>,
    rng: rand::rngs::StdRng,
    /// Measurements of the agent itself, forwarded with `[telemetry]`.
    own: Arc<crate::telemetry::Own>,
    /// When this process started working on the action in flight.
    action_started: Option<(i64, std::time::Instant)>,
}

/// One client for the server, artifact downloads and health URLs; TLS is
/// verified as the configuration says ([`AgentConfig::trust`]).
fn http_client(cfg: &AgentConfig) -> Result<reqwest::Client> {
    let tls = cfg.trust()?.client_config()?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

/// Enrolls on first start; afterwards reads the saved identity.
async fn identity(cfg: &AgentConfig, dir: &StateDir, http: &reqwest::Client, running: &str) -> Result<Identity> {
    if let Some(id) = dir.identity()? {
        return Ok(id);
    }
    let token = cfg.enrollment_token.as_deref().ok_or_else(|| {
        anyhow!("not enrolled yet and no enrollment_token configured (create one with `otafleet devices enroll-token create`)")
    })?;
    let req = EnrollRequest {
        name: cfg.name.clone(),
        current_version: Some(running.to_string()),
        labels: cfg.labels.clone(),
    };
    // A server that cannot be reached is waited for; a refusal (4xx) is final.
    let policy = otafleet_rt::Retry::new(Duration::from_secs(1), Duration::from_secs(60)).jitter(0.2);
    let refused = |e: &anyhow::Error| e.downcast_ref::<HttpStatus>().is_some_and(|h| h.status.is_client_error());
    let r = otafleet_rt::retry(&policy, |e| !refused(e), || DeviceClient::enroll(http, &cfg.server, token, &req))
        .await
        .map_err(|e| if refused(&e) { e.context("enrollment refused (check the enrollment token)") } else { e })?;
    let id = Identity { device_id: r.device_id, token: r.token, name: r.name, labels: r.labels };
    dir.save_identity(&id)?;
    tracing::info!(device = %id.device_id, name = %id.name, "enrolled");
    Ok(id)
}

impl Agent {
    /// Loads config-derived pieces, the identity (enrolling if needed) and the state.
    pub async fn start(cfg: AgentConfig) -> Result<Agent> {
        let key = verify::parse_public_key(cfg.public_key.as_deref().unwrap_or_default())?;
        let dir = StateDir::open(&cfg.state_dir)?;
        let http = http_client(&cfg)?;
        let state = match dir.state()? {
            Some(s) => s,
            None => {
                // A file handler's active slot is the truth about what runs.
                let running = cfg
                    .handlers
                    .values()
                    .find_map(|h| match Handler::from_config(h) {
                        Handler::File(s) => s.running(),
                        _ => None,
                    })
                    .unwrap_or_else(|| cfg.initial_version.clone());
                let s = AgentState::new(&running);
                dir.save_state(&s)?;
                s
            }
        };
        let identity = identity(&cfg, &dir, &http, &state.current_version).await?;
        let client = DeviceClient::new(&cfg.server, &identity.token, http.clone());
        let seed = identity.device_id.as_u128() as u64 ^ clock_seed();
        Ok(Agent {
            cfg,
            key,
            dir,
            identity,
            state,
            client,
            http,
            wake: Arc::new(Notify::new()),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            own: Default::default(),
            action_started: None,
        })
    }

    pub fn device_id(&self) -> uuid::Uuid {
        self.identity.device_id
    }

    fn device_type(&self) -> Option<&str> {
        self.cfg.device_type.as_deref().or(self.identity.labels.get("device_type").map(String::as_str))
    }

    fn save(&self) -> Result<()> {
        self.dir.save_state(&self.state)
    }

    /// Queues a report, saves, and tries to deliver the queue.
    async fn report(&mut self, order: &ActionOrder, st: ActionState, message: Option<String>) -> Result<i64> {
        if let Some(i) = self.state.inflight.as_mut().filter(|i| i.action_id == order.action_id) {
            i.reported = Some(st);
        }
        let seq = self.state.enqueue(order.action_id, order.last_seq, st, message);
        self.save()?;
        self.flush().await;
        Ok(seq)
    }

    /// Sends queued reports oldest first; stops at the first that cannot be
    /// delivered now. Returns whether the queue is empty.
    pub async fn flush(&mut self) -> bool {
        while let Some(r) = self.state.queue.front().cloned() {
            match self.client.report(&r).await {
                Ok(ack) => {
                    tracing::debug!(action = r.action_id, seq = r.seq, outcome = %ack.outcome, "report delivered");
                }
                Err(e) => match e.downcast_ref::<HttpStatus>() {
                    Some(h) if h.is_permanent() => {
                        tracing::warn!(action = r.action_id, error = %h, "report refused by the server; dropping it");
                    }
                    _ => {
                        tracing::debug!(error = %format!("{e:#}"), queued = self.state.queue.len(), "report not delivered; kept");
                        return false;
                    }
                },
            }
            self.state.queue.pop_front();
            if let Err(e) = self.save() {
                tracing::error!(error = %format!("{e:#}"), "cannot save the agent state");
                return false;
            }
        }
        true
    }

    /// Terminal report: the action leaves `inflight`.
    async fn finish(&mut self, order: &ActionOrder, st: ActionState, message: Option<String>) -> Result<Outcome> {
        match (&message, st) {
            (Some(m), ActionState::Succeeded) => {
                tracing::info!(action = order.action_id, version = %order.version, "{m}")
            }
            (Some(m), _) => {
                tracing::warn!(action = order.action_id, version = %order.version, state = st.as_str(), "{m}")
            }
            (None, _) => {
                tracing::info!(action = order.action_id, version = %order.version, state = st.as_str(), "action done")
            }
        }
        self.state.inflight = None;
        if let Some((_, t0)) = self.action_started.take().filter(|(id, _)| *id == order.action_id) {
            let labels = [("version", order.version.as_str()), ("outcome", st.as_str())];
            self.own.record("otafleet_agent_install_seconds", t0.elapsed().as_secs_f64(), &labels);
        }
        let seq = self.report(order, st, message).await?;
        self.state.mark_finished(order.action_id, seq);
        self.save()?;
        Ok(Outcome::Done)
    }

    fn set_phase(&mut self, phase: Phase) -> Result<()> {
        if let Some(i) = self.state.inflight.as_mut() {
            i.phase = phase;
        }
        self.save()
    }

    /// Reports a progress state once per action (a resumed action does not repeat it).
    async fn progress(&mut self, order: &ActionOrder, st: ActionState) -> Result<()> {
        let already = self.state.inflight.as_ref().and_then(|i| i.reported).is_some_and(|r| r == st);
        if !already {
            self.report(order, st, None).await?;
        }
        Ok(())
    }

    /// An action we were working on is no longer handed to us (the server
    /// gave up or moved on): put back what ran before it.
    async fn abandon_inflight(&mut self) -> Result<()> {
        let Some(i) = self.state.inflight.clone() else { return Ok(()) };
        if i.phase == Phase::Activated {
            if let Some(h) = self.handler_for_version(&i.version) {
                let env = self.env(&i.version, &i.from_version, Vec::new(), &h);
                match h.roll_back_to(&i.from_version, &env).await {
                    Ok(()) => {
                        tracing::warn!(action = i.action_id, version = %i.from_version, "abandoned action; rolled back")
                    }
                    Err(e) => {
                        tracing::error!(action = i.action_id, error = %format!("{e:#}"), "abandoned action; rollback failed")
                    }
                }
            }
        }
        self.state.inflight = None;
        self.save()
    }

    fn handler_for_kind(&self, kind: &str) -> Option<Handler> {
        self.cfg.handlers.get(kind).map(Handler::from_config)
    }

    /// The handler of the kind an in-flight version was installed with (the
    /// file handlers are the only ones that can say they hold a version).
    fn handler_for_version(&self, version: &str) -> Option<Handler> {
        let handlers: Vec<Handler> = self.cfg.handlers.values().map(Handler::from_config).collect();
        handlers.iter().find(|h| h.has(version)).cloned().or_else(|| handlers.into_iter().next())
    }

    fn env(&self, version: &str, previous: &str, artifacts: Vec<PathBuf>, h: &Handler) -> InstallEnv {
        InstallEnv {
            version: version.to_string(),
            previous_version: previous.to_string(),
            artifacts,
            current: h.current_dir(),
        }
    }

    /// A file handler that can go back to `version` without downloading: a
    /// slot still holds it, or it is the version the device ran before the
    /// agent installed anything.
    fn local_rollback(&self, version: &str) -> Option<Handler> {
        let handlers = self.cfg.handlers.values().map(Handler::from_config);
        let files: Vec<Handler> = handlers.filter(|h| matches!(h, Handler::File(_))).collect();
        if let Some(h) = files.iter().find(|h| h.has(version)) {
            return Some(h.clone());
        }
        let factory = self.state.previous_version.as_deref() == Some(version);
        files.into_iter().find(|h| factory && matches!(h, Handler::File(s) if s.running().is_some()))
    }

    /// What the checks of `verify` compare an action with, now.
    fn device<'a>(&'a self, current_version: &'a str) -> verify::Device<'a> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        verify::Device {
            key: &self.key,
            device_id: self.identity.device_id,
            device_type: self.device_type(),
            current_version,
            newest_version: self.state.newest_version.as_deref(),
            now,
            clock_skew_secs: self.cfg.clock_skew_secs.min(i64::MAX as u64) as i64,
        }
    }

    /// A rollback the device can do on its own, on a valid signed rollback
    /// order: nothing new is installed, so no manifest is needed; the health
    /// check still decides.
    async fn roll_back_locally(&mut self, order: &ActionOrder, handler: Handler) -> Result<Outcome> {
        let from = self.state.current_version.clone();
        self.state.inflight = Some(Inflight {
            action_id: order.action_id,
            kind: order.kind,
            version: order.version.clone(),
            from_version: from.clone(),
            phase: Phase::Activated,
            reported: None,
        });
        self.save()?;
        self.progress(order, ActionState::Installing).await?;
        let env = self.env(&order.version, &from, Vec::new(), &handler);
        if let Err(e) = handler.roll_back_to(&order.version, &env).await {
            return self.finish(order, ActionState::Failed, Some(format!("rollback failed: {e:#}"))).await;
        }
        self.progress(order, ActionState::Verifying).await?;
        match health_check(&self.cfg.health, &env, &self.http).await {
            Ok(()) => {
                self.state.previous_version =
                    Some(std::mem::replace(&mut self.state.current_version, order.version.clone()));
                let msg = format!("rolled back to {} locally", order.version);
                self.finish(order, ActionState::Succeeded, Some(msg)).await
            }
            Err(reason) => {
                let back = handler.roll_back_to(&from, &env).await.map_err(|e| format!("{e:#}"));
                let msg = format!("{reason} after rolling back to {}; returned to {from}: {back:?}", order.version);
                self.finish(order, ActionState::Failed, Some(msg)).await
            }
        }
    }

    /// Carries out one action handed over at check-in.
    async fn handle(&mut self, order: ActionOrder) -> Result<Outcome> {
        if self.state.already_finished(order.action_id, order.last_seq) {
            // Our final report is still queued; deliver it rather than redo the work.
            self.flush().await;
            return Ok(Outcome::Done);
        }
        if self.state.inflight.as_ref().is_some_and(|i| i.action_id != order.action_id) {
            self.abandon_inflight().await?;
        }
        let asked = order.action_id;
        let detail = match self.client.action(asked).await {
            Ok(d) => d,
            Err(e) => return Ok(Outcome::Later(e)),
        };
        // Reports go to the action asked about, whatever the answer claims.
        let order = ActionOrder { action_id: asked, ..detail.order.clone() };
        let from =
            self.state.inflight.as_ref().map(|i| i.from_version.clone()).unwrap_or(self.state.current_version.clone());
        let signed = match verify::check_order(&detail, asked, &self.device(&from)) {
            Ok(o) => o,
            Err(reason) => return self.finish(&order, ActionState::Failed, Some(reason)).await,
        };
        if signed.kind == ActionKind::Rollback {
            if let Some(h) = self.local_rollback(&signed.version) {
                return self.roll_back_locally(&order, h).await;
            }
        }
        let verified = match verify::check_release(&detail, &signed, &self.device(&from)) {
            Ok(v) => v,
            Err(reason) => return self.finish(&order, ActionState::Failed, Some(reason)).await,
        };
        let Some(handler) = self.handler_for_kind(&verified.manifest.kind) else {
            let reason = format!("no install handler is configured for releases of kind '{}'", verified.manifest.kind);
            return self.finish(&order, ActionState::Failed, Some(reason)).await;
        };
        if order.kind == ActionKind::Install && self.state.inflight.is_none() && from == order.version {
            return self
                .finish(&order, ActionState::Succeeded, Some(format!("{} is already running", order.version)))
                .await;
        }
        if self.state.inflight.is_none() {
            self.state.inflight = Some(Inflight {
                action_id: order.action_id,
                kind: order.kind,
                version: order.version.clone(),
                from_version: from.clone(),
                phase: Phase::Downloading,
                reported: None,
            });
            self.save()?;
        }
        if self.action_started.is_none_or(|(id, _)| id != order.action_id) {
            self.action_started = Some((order.action_id, std::time::Instant::now()));
        }
        let phase = self.state.inflight.as_ref().map(|i| i.phase).unwrap_or(Phase::Downloading);
        let names: Vec<String> = verified.artifacts.iter().map(|a| a.name.clone()).collect();
        let paths: Vec<PathBuf> = verified.artifacts.iter().map(|a| self.dir.downloads().join(&a.sha256)).collect();
        let env = self.env(&order.version, &from, paths.clone(), &handler);

        if phase != Phase::Activated {
            self.progress(&order, ActionState::Downloading).await?;
            for (a, path) in verified.artifacts.iter().zip(&paths) {
                if tokio::fs::try_exists(path).await.unwrap_or(false) {
                    continue;
                }
                let stall = Duration::from_secs(self.cfg.download_stall_secs.max(1));
                let part_len = tokio::fs::metadata(path.with_extension("part")).await.map(|m| m.len()).unwrap_or(0);
                if part_len > 0 {
                    tracing::info!(artifact = %a.name, from_byte = part_len, size = a.size, "resuming download");
                } else {
                    tracing::info!(artifact = %a.name, size = a.size, "download started");
                }
                match self.client.download(&a.uri, path, a.size, &a.sha256, self.cfg.download_rate_limit, stall).await {
                    Ok(d) => {
                        tracing::info!(artifact = %a.name, size = d.size, resumed_from = d.resumed_from, "downloaded")
                    }
                    Err(DownloadError::Transient(e)) => return Ok(Outcome::Later(e)),
                    Err(DownloadError::Permanent(reason)) => {
                        return self.finish(&order, ActionState::Failed, Some(reason)).await
                    }
                }
            }
            self.set_phase(Phase::Installing)?;
            self.progress(&order, ActionState::Installing).await?;
            if let Err(e) = handler.prepare(&env, &names).await {
                return self.finish(&order, ActionState::Failed, Some(format!("install failed: {e:#}"))).await;
            }
            self.set_phase(Phase::Activated)?;
            if let Err(e) = handler.activate(&env).await {
                // Nothing was switched (file) or the install command failed.
                let _ = handler.roll_back_to(&from, &env).await;
                return self.finish(&order, ActionState::Failed, Some(format!("install failed: {e:#}"))).await;
            }
        } else if let Err(e) = handler.reactivate(&env).await {
            let _ = handler.roll_back_to(&from, &env).await;
            return self.finish(&order, ActionState::Failed, Some(format!("install failed: {e:#}"))).await;
        }
        self.progress(&order, ActionState::Verifying).await?;
        let health = health_check(&self.cfg.health, &env, &self.http).await;
        let passed = if health.is_ok() { 1.0 } else { 0.0 };
        self.own.record("otafleet_agent_health_check", passed, &[("version", order.version.as_str())]);
        match health {
            Ok(()) => {
                if self.state.current_version != order.version {
                    self.state.previous_version =
                        Some(std::mem::replace(&mut self.state.current_version, order.version.clone()));
                }
                self.state.installed(&order.version);
                for p in &paths {
                    let _ = tokio::fs::remove_file(p).await;
                }
                let msg = format!("{} installed and healthy", order.version);
                self.finish(&order, ActionState::Succeeded, Some(msg)).await
            }
            Err(reason) => match handler.roll_back_to(&from, &env).await {
                Ok(()) => {
                    let msg = format!("{reason}; rolled back locally to {from}");
                    self.finish(&order, ActionState::RolledBack, Some(msg)).await
                }
                Err(e) => {
                    let msg = format!("{reason}; local rollback to {from} failed: {e:#}");
                    self.finish(&order, ActionState::Failed, Some(msg)).await
                }
            },
        }
    }

    /// One check-in; returns how long to wait before the next.
    async fn cycle(&mut self) -> Result<Duration> {
        self.flush().await;
        let req = CheckinRequest {
            current_version: Some(self.state.current_version.clone()),
            health: Some(DeviceHealth::Healthy),
        };
        let res = self.client.checkin(&req).await?;
        let poll = Duration::from_secs(self.cfg.poll_interval_secs.unwrap_or(res.poll_after_secs).max(1));
        match res.action {
            Some(order) => match self.handle(order).await? {
                Outcome::Done => Ok(Duration::ZERO),
                Outcome::Later(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "action interrupted; will resume");
                    Ok(Duration::from_secs(1))
                }
            },
            None => {
                if self.state.inflight.is_some() {
                    self.abandon_inflight().await?;
                }
                Ok(poll)
            }
        }
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        if d.is_zero() || self.cfg.jitter == 0.0 {
            return d;
        }
        let f: f64 = 1.0 + self.rng.gen_range(-self.cfg.jitter..=self.cfg.jitter);
        d.mul_f64(f.max(0.0))
    }

    /// Runs until `stop` turns true (an action in progress is finished first).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        if let Some(url) = self.cfg.mqtt_url.clone() {
            crate::push::spawn(&url, &self.cfg.mqtt_trust(), self.identity.device_id, self.wake.clone())?;
        }
        if let Some(t) = self.cfg.telemetry.clone() {
            let (client, http, own) = (self.client.clone(), self.http.clone(), self.own.clone());
            tokio::spawn(crate::telemetry::run(t, client, http, own, stop.clone()));
        }
        tracing::info!(device = %self.identity.device_id, version = %self.state.current_version, server = %self.cfg.server, "agent running");
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let wait = match self.cycle().await {
                Ok(d) => {
                    failures = 0;
                    d
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %format!("{e:#}"), queued = self.state.queue.len(), "check-in failed");
                    let cap = Duration::from_secs(self.cfg.poll_interval_secs.unwrap_or(30).max(1));
                    otafleet_core::backoff::Backoff::new(Duration::from_secs(2), cap).delay(failures)
                }
            };
            if wait.is_zero() {
                continue;
            }
            let wait = self.jittered(wait);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => tracing::debug!("woken by push"),
                _ = stop.changed() => {}
            }
        }
    }
}

/// Varies the jitter between runs of the same device.
fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Entry point of `otafleet-agent` and `otafleet agent`: runs until SIGTERM/ctrl-c.
pub async fn main(args: AgentArgs) -> Result<()> {
    let cfg = AgentConfig::load(&args.config)?;
    if cfg.handlers.is_empty() {
        bail!(
            "config file {}: no [handlers.<kind>] configured; the agent could install nothing",
            args.config.display()
        );
    }
    let agent = Agent::start(cfg).await?;
    println!("otafleet-agent running as device {}", agent.device_id());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        otafleet_rt::shutdown_signal().await;
        tracing::info!("stopping after the current step");
        let _ = stop_tx.send(true);
    });
    agent.run(stop_rx).await
}
