//! `otafleet sim`: N simulated devices as async tasks speaking the real device
//! protocol. Each registers through the management API, then checks in on an
//! interval; when handed an action it reports downloading → installing →
//! verifying → succeeded, with a configurable latency per step, or fails:
//! `--fail-rate` makes installs fail at random, `--fail-version` makes a version
//! fail its health check after install, so the device rolls back on its own and
//! reports `rolled_back`. With `--metric` each device also sends telemetry
//! every `--metric-interval-ms`, drawn from a distribution per metric that
//! `--metric-version` can change for the devices running one version (a
//! release that makes the robots run hot). Used by `otafleet demo`, tests
//! and benchmarks.

use crate::client::DeviceClient;
use anyhow::{anyhow, bail, Context, Result};
use otafleet_api::{BulkRegister, BulkRegistered, ErrorBody, RegisterDevice};
use otafleet_core::protocol::{CheckinRequest, StatusReport};
use otafleet_core::{ActionKind, ActionState, DeviceHealth};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Number of simulated devices.
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// Probability in [0, 1] that an install fails.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// A version whose health check always fails (the device rolls back locally).
    #[arg(long)]
    pub fail_version: Option<String>,
    /// Milliseconds each install step takes.
    #[arg(long, default_value_t = 100)]
    pub latency: u64,
    /// Milliseconds between check-ins when idle.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Version the devices run at start.
    #[arg(long, default_value = "1.0.0")]
    pub initial_version: String,
    /// Labels of the simulated devices, key=value[,key=value].
    #[arg(long, default_value = "device_type=sim")]
    pub labels: String,
    /// Stop after this many seconds (default: run until ctrl-c).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Report only the final state of an action (fewer requests, for benchmarks).
    #[arg(long)]
    pub final_only: bool,
    /// Random seed of the fleet's behaviour.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Requests in flight at once across the whole simulated fleet (one host
    /// cannot open a socket per device at 100,000 devices).
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Other replicas of the server: each request of a device goes to the
    /// server or one of these, picked at random (seeded), as behind a load
    /// balancer (devices are registered through the server).
    #[arg(long, value_delimiter = ',')]
    pub also_via: Vec<String>,
    /// With `--also-via`: each device keeps to one server (device i to server
    /// i mod n), as behind a load balancer that keeps a device's connection or
    /// hashes its address, instead of picking one at random per request.
    #[arg(long)]
    pub sticky: bool,
    /// Telemetry each device sends, NAME=DIST, repeatable: DIST is normal(MEAN,SD), uniform(LOW,HIGH) or
    /// const(X), e.g. --metric 'cpu_temp_c=normal(60,3)'.
    #[arg(long = "metric")]
    pub metrics: Vec<String>,
    /// A metric's distribution on the devices running one version, VERSION:NAME=DIST, repeatable, e.g.
    /// --metric-version '2.2.0:cpu_temp_c=normal(85,3)'.
    #[arg(long = "metric-version")]
    pub metric_versions: Vec<String>,
    /// Milliseconds between two telemetry batches of one device.
    #[arg(long, default_value_t = 10_000)]
    pub metric_interval_ms: u64,
    /// Send telemetry over MQTT through this broker (mqtt://host:port), on
    /// each device's `otafleet/<id>/telemetry` topic, instead of over HTTP;
    /// the server's answers on `…/telemetry/ack` are counted.
    #[arg(long)]
    pub telemetry_mqtt: Option<String>,
    /// The CAs to trust for an `https://` server: the CLI's global
    /// `--ca-file` (`OTAFLEET_CA_FILE`); the Mozilla roots without one.
    #[arg(skip)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for SimArgs {
    fn default() -> Self {
        SimArgs {
            devices: 50,
            fail_rate: 0.0,
            fail_version: None,
            latency: 100,
            poll_ms: 1000,
            initial_version: "1.0.0".into(),
            labels: "device_type=sim".into(),
            duration: None,
            final_only: false,
            seed: 1,
            max_connections: 256,
            also_via: Vec::new(),
            sticky: false,
            metrics: Vec::new(),
            metric_versions: Vec::new(),
            metric_interval_ms: 10_000,
            telemetry_mqtt: None,
            ca_file: None,
        }
    }
}

/// Counters of a running fleet.
#[derive(Debug, Default)]
pub struct SimStats {
    pub checkins: AtomicU64,
    pub reports: AtomicU64,
    pub installs_ok: AtomicU64,
    pub installs_failed: AtomicU64,
    pub local_rollbacks: AtomicU64,
    pub rollbacks_done: AtomicU64,
    pub samples: AtomicU64,
    pub errors: AtomicU64,
}

impl SimStats {
    pub fn line(&self) -> String {
        format!(
            "check-ins {} · reports {} · installed {} · failed {} · rolled back locally {} · rolled back by server {} · samples {} · errors {}",
            self.checkins.load(Ordering::Relaxed),
            self.reports.load(Ordering::Relaxed),
            self.installs_ok.load(Ordering::Relaxed),
            self.installs_failed.load(Ordering::Relaxed),
            self.local_rollbacks.load(Ordering::Relaxed),
            self.rollbacks_done.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// A running simulated fleet.
pub struct SimFleet {
    pub stats: Arc<SimStats>,
    pub device_ids: Vec<String>,
    /// The devices' bearer tokens, in the order of `device_ids`.
    pub device_tokens: Vec<String>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimFleet {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| anyhow!("--labels: '{part}' is not key=value"))?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(m)
}

/// A distribution telemetry values are drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    Normal { mean: f64, sd: f64 },
    Uniform { low: f64, high: f64 },
    Const(f64),
}

impl std::str::FromStr for Dist {
    type Err = String;
    fn from_str(s: &str) -> Result<Dist, String> {
        let s = s.trim();
        let (name, rest) =
            s.split_once('(').ok_or_else(|| format!("'{s}': use normal(MEAN,SD), uniform(LOW,HIGH) or const(X)"))?;
        let args = rest.strip_suffix(')').ok_or_else(|| format!("'{s}': missing ')'"))?;
        let nums: Vec<f64> = args
            .split(',')
            .map(|a| {
                a.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("'{s}': '{}' is not a number", a.trim()))
            })
            .collect::<Result<_, _>>()?;
        match (name.trim(), nums.as_slice()) {
            ("normal", [mean, sd]) if *sd >= 0.0 => Ok(Dist::Normal { mean: *mean, sd: *sd }),
            ("normal", [_, _]) => Err(format!("'{s}': the standard deviation must not be negative")),
            ("uniform", [low, high]) if low <= high => Ok(Dist::Uniform { low: *low, high: *high }),
            ("uniform", [_, _]) => Err(format!("'{s}': LOW must not exceed HIGH")),
            ("const", [x]) => Ok(Dist::Const(*x)),
            _ => Err(format!("'{s}': use normal(MEAN,SD), uniform(LOW,HIGH) or const(X)")),
        }
    }
}

impl Dist {
    /// One value (a normal by Box–Muller).
    pub fn sample(self, rng: &mut impl Rng) -> f64 {
        match self {
            Dist::Normal { mean, sd } => {
                let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
                let u2: f64 = rng.gen::<f64>();
                mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            }
            Dist::Uniform { low, high } if low < high => rng.gen_range(low..high),
            Dist::Uniform { low, .. } => low,
            Dist::Const(x) => x,
        }
    }
}

/// What each simulated device measures: a distribution per metric, and
/// other distributions on the devices running some version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricPlan {
    pub metrics: Vec<(String, Dist)>,
    pub by_version: Vec<(String, String, Dist)>,
}

fn metric_dist(s: &str, flag: &str) -> Result<(String, Dist)> {
    let (name, dist) = s.split_once('=').ok_or_else(|| anyhow!("{flag}: '{s}' is not NAME=DIST"))?;
    let name = name.trim();
    otafleet_core::telemetry::validate_metric_name(name).map_err(|e| anyhow!("{flag}: '{name}': {e}"))?;
    Ok((name.to_string(), dist.parse::<Dist>().map_err(|e| anyhow!("{flag}: {e}"))?))
}

impl MetricPlan {
    /// Reads `--metric` and `--metric-version`.
    pub fn parse(metrics: &[String], versions: &[String]) -> Result<MetricPlan> {
        let metrics = metrics.iter().map(|m| metric_dist(m, "--metric")).collect::<Result<Vec<_>>>()?;
        let mut by_version = Vec::new();
        for v in versions {
            let (version, rest) =
                v.split_once(':').ok_or_else(|| anyhow!("--metric-version: '{v}' is not VERSION:NAME=DIST"))?;
            let (name, dist) = metric_dist(rest, "--metric-version")?;
            if !metrics.iter().any(|(m, _)| *m == name) {
                bail!("--metric-version: '{name}' is not one of the --metric names");
            }
            by_version.push((version.trim().to_string(), name, dist));
        }
        Ok(MetricPlan { metrics, by_version })
    }

    /// One sample of each metric for a device running `version`.
    pub fn samples(&self, version: &str, rng: &mut impl Rng) -> Vec<otafleet_core::telemetry::Sample> {
        self.metrics
            .iter()
            .map(|(name, dist)| {
                let d =
                    self.by_version.iter().find(|(v, n, _)| v == version && n == name).map_or(*dist, |(_, _, d)| *d);
                otafleet_core::telemetry::Sample {
                    metric: name.clone(),
                    value: d.sample(rng),
                    ts: None,
                    labels: Default::default(),
                }
            })
            .collect()
    }
}

/// Registers the devices (bulk API, operator token) and starts their tasks.
pub async fn spawn(server: &str, token: Option<&str>, args: &SimArgs) -> Result<SimFleet> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!("--fail-rate must be between 0 and 1");
    }
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let labels = parse_labels(&args.labels)?;
    let plan = Arc::new(MetricPlan::parse(&args.metrics, &args.metric_versions)?);
    if !plan.metrics.is_empty() && args.metric_interval_ms < 100 {
        bail!("--metric-interval-ms must be at least 100");
    }
    let tls = otafleet_rt::tls::Trust::ca(args.ca_file.clone()).client_config().context("--ca-file")?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(args.max_connections.max(1))
        .timeout(Duration::from_secs(120))
        .build()
        .context("building the HTTP client")?;
    let base = server.trim_end_matches('/').to_string();
    let mut creds = Vec::with_capacity(args.devices);
    let mut remaining = args.devices;
    let mut n = 0usize;
    while remaining > 0 {
        let batch = remaining.min(10_000);
        let devices = (0..batch)
            .map(|i| RegisterDevice {
                name: Some(format!("sim-{}", n + i)),
                labels: labels.clone(),
                current_version: Some(args.initial_version.clone()),
                ..Default::default()
            })
            .collect();
        let mut req = http.post(format!("{base}/api/v1/devices/bulk")).json(&BulkRegister { devices });
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.with_context(|| format!("registering simulated devices at {base}"))?;
        let status = res.status();
        let bytes = res.bytes().await.context("reading the bulk registration answer")?;
        if !status.is_success() {
            let msg = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => e.error.message,
                Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
            };
            bail!("registering simulated devices: {status}: {msg}");
        }
        let body: BulkRegistered = serde_json::from_slice(&bytes).context("decoding the bulk registration answer")?;
        for d in body.devices {
            creds.push((d.device.id.to_string(), d.token));
        }
        n += batch;
        remaining -= batch;
    }
    let stats = Arc::new(SimStats::default());
    let mqtt = match &args.telemetry_mqtt {
        Some(url) if !plan.metrics.is_empty() => Some(telemetry_publisher(url, &args.ca_file, stats.clone())?),
        Some(_) => bail!("--telemetry-mqtt needs --metric"),
        None => None,
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(args.max_connections.max(1)));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::with_capacity(creds.len());
    let device_ids = creds.iter().map(|(id, _)| id.clone()).collect();
    let device_tokens = creds.iter().map(|(_, tok)| tok.clone()).collect();
    for (i, (id, tok)) in creds.into_iter().enumerate() {
        let clients = std::iter::once(base.as_str())
            .chain(args.also_via.iter().map(|u| u.trim_end_matches('/')))
            .map(|b| DeviceClient::new(b, &tok, http.clone()))
            .collect();
        let dev = SimDevice {
            home: i % (1 + args.also_via.len()),
            clients,
            version: args.initial_version.clone(),
            previous: None,
            args: args.clone(),
            stats: stats.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64)),
            seq: 0,
            permits: permits.clone(),
            plan: plan.clone(),
            next_sample: None,
            mqtt: mqtt.clone().map(|c| (c, id.parse().expect("the server's device id"), tok.clone())),
        };
        tasks.push(tokio::spawn(dev.run(stopped.clone())));
    }
    Ok(SimFleet { stats, device_ids, device_tokens, stop, tasks })
}

struct SimDevice {
    /// The server, then `--also-via`: each request goes to one at random
    /// (to `home` with `--sticky`).
    clients: Vec<DeviceClient>,
    home: usize,
    version: String,
    previous: Option<String>,
    args: SimArgs,
    stats: Arc<SimStats>,
    rng: rand::rngs::StdRng,
    seq: i64,
    permits: Arc<tokio::sync::Semaphore>,
    plan: Arc<MetricPlan>,
    /// When the next telemetry batch is due.
    next_sample: Option<tokio::time::Instant>,
    /// With `--telemetry-mqtt`: the fleet's connection, the device's id and token.
    mqtt: Option<(rumqttc::AsyncClient, uuid::Uuid, String)>,
}

/// The fleet's one MQTT connection for telemetry (a broker authenticates
/// connections, the server each message by the token it carries). Counts the
/// samples the server's answers accept, and the refusals as errors.
fn telemetry_publisher(
    url: &str,
    ca_file: &Option<std::path::PathBuf>,
    stats: Arc<SimStats>,
) -> Result<rumqttc::AsyncClient> {
    use rumqttc::{Event, Packet, QoS};
    let url = crate::push::parse_broker(url).map_err(|e| anyhow!("--telemetry-mqtt: {e}"))?;
    let trust = otafleet_rt::tls::Trust::ca(ca_file.clone());
    let mut opts = otafleet_rt::mqtt::options(&url, &format!("otafleet-sim-{}", uuid::Uuid::new_v4()), &trust)?;
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, events) = rumqttc::AsyncClient::new(opts, 1024);
    let sub = client.clone();
    tokio::spawn(otafleet_rt::mqtt::run(events, url.to_string(), move |ev| match ev {
        Event::Incoming(Packet::ConnAck(_)) => {
            if let Err(e) = sub.try_subscribe("otafleet/+/telemetry/ack", QoS::AtMostOnce) {
                tracing::warn!(error = %e, "MQTT subscribe failed");
            }
        }
        Event::Incoming(Packet::Publish(p)) => {
            match serde_json::from_slice::<otafleet_core::protocol::TelemetryAccepted>(&p.payload) {
                Ok(a) => stats.samples.fetch_add(a.accepted as u64, Ordering::Relaxed),
                Err(_) => {
                    tracing::debug!(answer = %String::from_utf8_lossy(&p.payload), "telemetry refused");
                    stats.errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        _ => {}
    }));
    Ok(client)
}

impl SimDevice {
    /// The replica the next request goes to.
    fn next_client(&mut self) -> usize {
        match self.clients.len() {
            1 => 0,
            _ if self.args.sticky => self.home,
            n => self.rng.gen_range(0..n),
        }
    }

    /// Reports a step. Like a real agent's offline queue, a report that cannot be
    /// delivered is retried until the server takes it, so no report is lost
    /// across a server restart. Returns false if the fleet was stopped meanwhile.
    async fn report(
        &mut self,
        action_id: i64,
        state: ActionState,
        message: Option<String>,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        self.seq += 1;
        let r = StatusReport { action_id, seq: self.seq, state, message, current_version: Some(self.version.clone()) };
        let mut attempts = otafleet_rt::Retry::new(Duration::from_millis(100), Duration::from_secs(2)).start();
        loop {
            let client = self.next_client();
            let sent = {
                let _permit = self.permits.acquire().await;
                self.clients[client].report(&r).await
            };
            match sent {
                Ok(_) => {
                    self.stats.reports.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "report failed; retrying");
                }
            }
            let mut stop = stop.clone();
            tokio::select! {
                _ = attempts.wait() => {}
                _ = stop.wait_for(|s| *s) => return false,
            }
        }
    }

    /// Sends a telemetry batch if one is due (a refused batch is counted as
    /// an error and not retried: a real device would drop or thin it too).
    async fn measure(&mut self) {
        if self.plan.metrics.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        if self.next_sample.is_some_and(|t| t > now) {
            return;
        }
        let interval = Duration::from_millis(self.args.metric_interval_ms);
        self.next_sample = Some(self.next_sample.map_or(now, |t| t.max(now - interval)) + interval);
        let samples = self.plan.samples(&self.version, &mut self.rng);
        if let Some((mqtt, id, token)) = &self.mqtt {
            let msg = otafleet_core::protocol::MqttTelemetry { token: token.clone(), samples };
            let payload = serde_json::to_vec(&msg).expect("a batch serializes");
            let topic = otafleet_core::protocol::telemetry_topic(id);
            if let Err(e) = mqtt.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "telemetry publish failed");
            }
            return;
        }
        let batch = otafleet_core::protocol::TelemetryBatch { samples };
        let client = self.next_client();
        let sent = {
            let _permit = self.permits.acquire().await;
            self.clients[client].telemetry(&batch).await
        };
        match sent {
            Ok(a) => {
                self.stats.samples.fetch_add(a.accepted as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "telemetry refused");
            }
        }
    }

    async fn step(&mut self, stop: &mut watch::Receiver<bool>) -> Result<bool> {
        self.measure().await;
        let req = CheckinRequest { current_version: Some(self.version.clone()), health: Some(DeviceHealth::Healthy) };
        let client = self.next_client();
        let res = {
            let _permit = self.permits.acquire().await;
            self.clients[client].checkin(&req).await?
        };
        self.stats.checkins.fetch_add(1, Ordering::Relaxed);
        let Some(action) = res.action else { return Ok(false) };
        self.seq = self.seq.max(action.last_seq);
        let latency = Duration::from_millis(self.args.latency);
        let pause = |d: Duration, stop: &mut watch::Receiver<bool>| {
            let mut stop = stop.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(d) => false,
                    _ = stop.wait_for(|s| *s) => true,
                }
            }
        };
        if !self.args.final_only {
            for st in [ActionState::Downloading, ActionState::Installing, ActionState::Verifying] {
                if pause(latency, stop).await {
                    return Ok(true);
                }
                if !self.report(action.action_id, st, None, stop).await {
                    return Ok(true);
                }
            }
        }
        if pause(latency, stop).await {
            return Ok(true);
        }
        match action.kind {
            ActionKind::Rollback => {
                self.previous = Some(std::mem::replace(&mut self.version, action.version.clone()));
                self.report(action.action_id, ActionState::Succeeded, None, stop).await;
                self.stats.rollbacks_done.fetch_add(1, Ordering::Relaxed);
            }
            ActionKind::Install if self.args.fail_version.as_deref() == Some(action.version.as_str()) => {
                let msg = format!(
                    "health check failed after installing {}; rolled back locally to {}",
                    action.version, self.version
                );
                self.report(action.action_id, ActionState::RolledBack, Some(msg), stop).await;
                self.stats.local_rollbacks.fetch_add(1, Ordering::Relaxed);
            }
            ActionKind::Install if self.rng.gen_bool(self.args.fail_rate) => {
                self.report(action.action_id, ActionState::Failed, Some("simulated install failure".into()), stop)
                    .await;
                self.stats.installs_failed.fetch_add(1, Ordering::Relaxed);
            }
            ActionKind::Install => {
                self.previous = Some(std::mem::replace(&mut self.version, action.version.clone()));
                self.report(action.action_id, ActionState::Succeeded, None, stop).await;
                self.stats.installs_ok.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(true)
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        // Spread the first check-ins over one poll interval.
        let first = self.rng.gen_range(0..self.args.poll_ms.max(1));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(first)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        loop {
            if *stop.borrow() {
                return;
            }
            let busy = match self.step(&mut stop).await {
                Ok(b) => b,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "simulated device request failed");
                    false
                }
            };
            if busy {
                continue;
            }
            let jitter = self.rng.gen_range(0..=self.args.poll_ms / 10 + 1);
            let poll = tokio::time::Instant::now() + Duration::from_millis(self.args.poll_ms + jitter);
            let mut wake = self.next_sample.map_or(poll, |t| t.min(poll));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                if wake >= poll {
                    break;
                }
                // A telemetry batch is due before the next check-in.
                self.measure().await;
                wake = self.next_sample.map_or(poll, |t| t.min(poll));
            }
        }
    }
}

/// `otafleet sim`: runs until the duration passes or ctrl-c, printing counters.
pub async fn run(server: &str, token: Option<&str>, args: SimArgs) -> Result<Arc<SimStats>> {
    let fleet = spawn(server, token, &args).await?;
    eprintln!("simulating {} devices against {server}", fleet.device_ids.len());
    let stats = fleet.stats.clone();
    let deadline = args.duration.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    loop {
        let tick = tokio::time::sleep(Duration::from_secs(5));
        tokio::select! {
            _ = tick => eprintln!("{}", stats.line()),
            _ = tokio::signal::ctrl_c() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
    }
    fleet.stop().await;
    eprintln!("{}", stats.line());
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_plans_parse_and_draw_per_version() {
        let plan = MetricPlan::parse(
            &["cpu_temp_c=normal(60, 3)".into(), "up=const(1)".into()],
            &["2.2.0:cpu_temp_c=normal(85,3)".into()],
        )
        .unwrap();
        assert_eq!(plan.metrics[0], ("cpu_temp_c".into(), Dist::Normal { mean: 60.0, sd: 3.0 }));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mean = |version: &str, rng: &mut rand::rngs::StdRng| {
            (0..2000).map(|_| plan.samples(version, rng)[0].value).sum::<f64>() / 2000.0
        };
        assert!((mean("1.0.0", &mut rng) - 60.0).abs() < 0.5);
        assert!((mean("2.2.0", &mut rng) - 85.0).abs() < 0.5);
        assert_eq!(plan.samples("2.2.0", &mut rng)[1].value, 1.0);
        for (m, v, says) in [
            ("cpu=normal(1)", "", "use normal"),
            ("cpu=normal(1,-1)", "", "must not be negative"),
            ("cpu=uniform(2,1)", "", "LOW must not exceed"),
            ("cpu=gamma(1,1)", "", "use normal"),
            ("cpu=const(x)", "", "not a number"),
            ("cpu=const(NaN)", "", "not a number"),
            ("bad name=const(1)", "", "bad name"),
            ("cpu", "", "NAME=DIST"),
            ("cpu=const(1)", "2.0:mem=const(1)", "not one of the --metric"),
            ("cpu=const(1)", "cpu=const(1)", "VERSION:NAME=DIST"),
        ] {
            let versions: Vec<String> = if v.is_empty() { vec![] } else { vec![v.into()] };
            let e = MetricPlan::parse(&[m.into()], &versions).unwrap_err().to_string();
            assert!(e.contains(says), "{m} {v}: {e}");
        }
    }
}
