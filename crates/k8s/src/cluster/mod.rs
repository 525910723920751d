//! The cluster agent: `otafleet operator run --server URL --token T
//! --cluster NAME --workloads KIND:SELECTOR --boards` connects a cluster to
//! the control plane as a *delegate* and makes its workloads and Akri boards
//! rollout targets like any device.
//!
//! Every `--poll-interval` (on the replica holding the operator's Lease) it
//! 1. **observes** what it speaks for: the workloads of each `--workloads
//!    KIND:SELECTOR` (pods, Deployments, StatefulSets, DaemonSets) and, with
//!    `--boards`, the Akri `Instance`s; each becomes a device ([`Target`])
//!    with a stable id (a workload's from cluster, kind, namespace and name;
//!    a board's is its Instance's uid), labels (`cluster`, `namespace`,
//!    `kind`, `name`, `node`, the object's own labels, and for boards
//!    `device_type` and `application_type` from the broker properties), its
//!    health, and the version it really runs ([`workload_version`]: the
//!    `sw_version` label while the image is the one otafleet set, else the
//!    image's tag or digest, so a `kubectl set image` behind otafleet's back
//!    shows; a board's is the version of the newest FlashJob that completed
//!    it, else its Instance's `sw_version` label);
//! 2. sends the **inventory** when it changed (and every tenth poll): new
//!    devices are registered, missing ones marked gone by the server;
//! 3. **checks in** for all of them in one request and gets the actions of
//!    those that have one;
//! 4. **executes** them: a workload's action in a task of its own (the
//!    image and the `sw_version`/`status` labels set with the read
//!    `resourceVersion`, the previous image kept in annotations, readiness
//!    waited for, `installing → verifying → succeeded`; a pod that never
//!    becomes ready — ImagePullBackOff, CrashLoopBackOff, a Deployment's
//!    ProgressDeadlineExceeded, the `--rollout-timeout` — gets its previous
//!    image back and is reported `rolled_back` with the reason); the boards'
//!    actions as **one FlashJob per batch** of actions released together
//!    (same version and firmware), whose `completedUUIDs` and phase become
//!    per-device reports. Rollback actions set the previous image or flash
//!    the previous firmware (the release's, else what the cluster recorded:
//!    the annotation, or the newest FlashJob that flashed that version);
//! 5. sends the **reports** in batches, as they come.
//!
//! Everything it needs to continue after a restart is in the cluster or on
//! the server: an action whose target already runs its version (and is
//! ready) is reported succeeded without touching it, so no finished board
//! is flashed again; a FlashJob in progress is followed, not recreated.
//! Sequence numbers continue from the server's `last_seq`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use otafleet_core::duration::parse_arg as parse_duration;
use otafleet_core::protocol::{
    ActionOrder, DelegateCheckin, DelegateCheckinEntry, DelegateCheckinResponse, DelegateReport, DelegateStatus,
    DelegateStatusAck, Inventory, InventoryAck, InventoryEntry, StatusReport,
};
use otafleet_core::{ActionState, DeviceHealth, Selector};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::akri::{self, Instance};
use crate::crd::FlashJob;
use crate::update::{self, call, rollout_ready, ObjectRef, Retries, WorkloadKind};

mod boards;
mod workload;

use boards::Flashes;
use workload::WorkloadJob;

/// Annotation: the image otafleet last set (the `sw_version` label is trusted while it runs).
pub const IMAGE_ANNOTATION: &str = "otafleet.io/image";
/// Annotation: the image before otafleet's last change, for a rollback.
pub const PREVIOUS_IMAGE_ANNOTATION: &str = "otafleet.io/previous-image";
/// Annotation: the version before otafleet's last change.
pub const PREVIOUS_VERSION_ANNOTATION: &str = "otafleet.io/previous-version";
/// Label of the FlashJobs the cluster agent creates.
pub const MANAGED_LABEL: &str = "otafleet.io/managed";
/// Annotation of a managed FlashJob whose failures were reported.
pub const REPORTED_ANNOTATION: &str = "otafleet.io/reported";
/// Annotation of a managed FlashJob: its creation time in Unix ms (orders flashes).
pub const CREATED_ANNOTATION: &str = "otafleet.io/created-at-ms";

/// Container waiting reasons that mean a pod will not become ready by itself.
const STUCK_REASONS: &[&str] =
    &["ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "InvalidImageName", "CreateContainerConfigError"];

/// `KIND:SELECTOR` of `--workloads`.
#[derive(Clone, Debug)]
pub struct Watch {
    /// What to list.
    pub kind: WorkloadKind,
    /// Which of them.
    pub selector: String,
}

/// Parses `KIND:SELECTOR`.
pub fn parse_watch(s: &str) -> std::result::Result<Watch, String> {
    let (kind, selector) = s.split_once(':').ok_or("expected KIND:SELECTOR, e.g. deployment:app=robot")?;
    let kind = match kind {
        "pod" | "pods" => WorkloadKind::Pod,
        "deployment" | "deployments" => WorkloadKind::Deployment,
        "statefulset" | "statefulsets" => WorkloadKind::Statefulset,
        "daemonset" | "daemonsets" => WorkloadKind::Daemonset,
        other => return Err(format!("unknown kind '{other}': pod, deployment, statefulset or daemonset")),
    };
    Selector::parse(selector).map_err(|e| format!("selector '{selector}': {e}"))?;
    Ok(Watch { kind, selector: selector.to_string() })
}

/// The cluster agent's flags (part of `otafleet operator run`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// The otafleet server (the CLI's global `--server`).
    #[arg(skip)]
    pub server: Option<String>,
    /// The cluster's delegate token (the CLI's global `--token`, from
    /// `otafleet delegates create NAME --kind cluster`).
    #[arg(skip)]
    pub token: Option<String>,
    /// CA bundle (PEM) the server's certificate is checked against (the
    /// CLI's global `--ca-file`; default: the Mozilla roots).
    #[arg(skip)]
    pub server_ca_file: Option<PathBuf>,
    /// The cluster's name: its devices' `cluster` label and part of their ids.
    #[arg(long, env = "OTAFLEET_CLUSTER")]
    pub cluster: Option<String>,
    /// Workloads to speak for, `KIND:SELECTOR` (repeatable), e.g.
    /// `deployment:app=robot`; KIND is pod, deployment, statefulset or
    /// daemonset. With this or --boards the operator connects the cluster
    /// to the server (--server, --token, --cluster).
    #[arg(long = "workloads", value_parser = parse_watch)]
    pub workloads: Vec<Watch>,
    /// Container whose image a release sets (default: the first container).
    #[arg(long)]
    pub container: Option<String>,
    /// Also speak for the Akri Instances (boards flashed by FlashJobs), in
    /// --akri-namespace or every namespace.
    #[arg(long)]
    pub boards: bool,
    /// How often to observe the cluster and check in.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long a workload may take to become ready after an update.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub rollout_timeout: Duration,
}

impl ClusterArgs {
    /// Whether the agent is to run: it was told what to speak for.
    pub fn enabled(&self) -> bool {
        !self.workloads.is_empty() || self.boards
    }
}

/// The delegate protocol (`/delegate/v1`) over HTTP.
#[derive(Clone)]
struct Plane {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Requests sent so far.
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl Plane {
    async fn send<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let res = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("{path}: the server is unreachable"))?;
        let status = res.status();
        if !status.is_success() {
            let text = res.text().await.unwrap_or_default();
            anyhow::bail!("{path}: {status}: {text}");
        }
        res.json().await.with_context(|| format!("{path}: unexpected answer"))
    }

    async fn inventory(&self, inv: &Inventory) -> anyhow::Result<InventoryAck> {
        self.send(reqwest::Method::PUT, "/delegate/v1/inventory", inv).await
    }

    async fn checkin(&self, c: &DelegateCheckin) -> anyhow::Result<DelegateCheckinResponse> {
        self.send(reqwest::Method::POST, "/delegate/v1/checkin", c).await
    }

    async fn status(&self, s: &DelegateStatus) -> anyhow::Result<DelegateStatusAck> {
        self.send(reqwest::Method::POST, "/delegate/v1/status", s).await
    }
}

/// What a device is in the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A pod or workload.
    Workload(ObjectRef),
    /// An Akri board: its Instance's namespace and uid.
    Board {
        /// Namespace of the Instance (and of its FlashJobs).
        namespace: String,
        /// `metadata.uid`, the UUID a FlashJob names.
        uuid: String,
    },
}

/// One device the cluster agent speaks for, as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Its device id.
    pub id: uuid::Uuid,
    /// Display name.
    pub name: String,
    /// Labels for selectors.
    pub labels: BTreeMap<String, String>,
    /// The version it really runs, if known.
    pub version: Option<String>,
    /// Its health.
    pub health: DeviceHealth,
    /// What it is.
    pub kind: Kind,
    /// Its image (workloads), for a restore.
    pub image: Option<String>,
}

/// The id of a workload of a cluster: SHA-256 of cluster, kind, namespace and
/// name as a UUID (version 8), the same on every run and every replica.
pub fn workload_id(cluster: &str, target: &ObjectRef) -> uuid::Uuid {
    let key = format!("{cluster}/{:?}/{}/{}", target.kind, target.namespace, target.name).to_lowercase();
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The version an image reference names: its digest (`sha256:…`), else its
/// tag, else `latest`.
pub fn image_version(image: &str) -> String {
    if let Some((_, digest)) = image.split_once('@') {
        return digest.to_string();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag.to_string(),
        _ => "latest".to_string(),
    }
}

fn containers_of(kind: WorkloadKind, obj: &Value) -> Vec<Value> {
    obj.pointer(kind.containers_path()).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The image of the container a release sets (`--container`, else the first).
fn target_image(kind: WorkloadKind, obj: &Value, container: Option<&str>) -> Option<String> {
    containers_of(kind, obj)
        .iter()
        .find(|c| container.is_none_or(|want| c.get("name").and_then(Value::as_str) == Some(want)))
        .and_then(|c| c.get("image"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn annotation(obj: &Value, key: &str) -> Option<String> {
    obj.pointer("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str).map(str::to_string)
}

/// The version a workload really runs: its `sw_version` label while its
/// image is the one otafleet set (or otafleet never set one: the tracker's
/// label), else what its image names — so an image changed behind
/// otafleet's back shows as the version it is.
pub fn workload_version(kind: WorkloadKind, obj: &Value, container: Option<&str>) -> Option<String> {
    let image = target_image(kind, obj, container);
    let label = update::label(obj, update::VERSION_LABEL);
    let ours = annotation(obj, IMAGE_ANNOTATION);
    match (label, &image) {
        (Some(v), Some(i)) if ours.as_deref().is_none_or(|o| o == i) => Some(v),
        (Some(v), None) => Some(v),
        (_, Some(i)) => Some(image_version(i)),
        (None, None) => None,
    }
}

fn pod_ready(obj: &Value) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Container restarts at which a Ready pod counts as degraded, and an
/// update whose pod restarts that often fails.
pub const MAX_RESTARTS: i64 = 3;

/// A pod's container restarts, all containers together.
pub fn restarts(pod: &Value) -> i64 {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|s| s.iter().filter_map(|c| c.get("restartCount").and_then(Value::as_i64)).sum())
        .unwrap_or(0)
}

/// The health a device reports for a workload: readiness, and for a pod its restarts.
fn workload_health(kind: WorkloadKind, obj: &Value) -> DeviceHealth {
    match kind {
        WorkloadKind::Pod if pod_ready(obj) && restarts(obj) >= MAX_RESTARTS => DeviceHealth::Degraded,
        WorkloadKind::Pod if pod_ready(obj) => DeviceHealth::Healthy,
        WorkloadKind::Pod if obj.pointer("/status/phase").and_then(Value::as_str) == Some("Running") => {
            DeviceHealth::Degraded
        }
        WorkloadKind::Pod => DeviceHealth::Unhealthy,
        _ if rollout_ready(kind, obj) => DeviceHealth::Healthy,
        _ => DeviceHealth::Degraded,
    }
}

/// Why a workload will not become ready by itself, if it says so.
pub fn stuck_reason(kind: WorkloadKind, obj: &Value) -> Option<String> {
    if kind == WorkloadKind::Pod {
        let statuses = obj.pointer("/status/containerStatuses").and_then(Value::as_array)?;
        return statuses.iter().find_map(|s| {
            let waiting = s.pointer("/state/waiting")?;
            let reason = waiting.get("reason")?.as_str()?;
            STUCK_REASONS.contains(&reason).then(|| {
                let message = waiting.get("message").and_then(Value::as_str).unwrap_or_default();
                let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
                format!(
                    "{reason} (container {name}){}",
                    if message.is_empty() { String::new() } else { format!(": {message}") }
                )
            })
        });
    }
    let conditions = obj.pointer("/status/conditions").and_then(Value::as_array)?;
    conditions.iter().find_map(|c| {
        (c["type"] == "Progressing" && c["status"] == "False").then(|| {
            let reason = c.get("reason").and_then(Value::as_str).unwrap_or("NotProgressing");
            let message = c.get("message").and_then(Value::as_str).unwrap_or_default();
            format!("{reason}: {message}")
        })
    })
}

/// The labels of a workload's device: those of its own that otafleet
/// accepts (less `sw_version` and `status`, which updates change), then the
/// agent's own, which win.
fn workload_labels(cluster: &str, target: &ObjectRef, obj: &Value) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if let Some(own) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in own {
            let Some(v) = v.as_str() else { continue };
            if k == update::VERSION_LABEL || k == update::STATUS_LABEL {
                continue;
            }
            let ok = otafleet_core::selector::validate_label_key(k).is_ok()
                && otafleet_core::selector::validate_label_value(v).is_ok();
            if ok {
                labels.insert(k.clone(), v.to_string());
            }
        }
    }
    let kind = format!("{:?}", target.kind).to_lowercase();
    labels.insert("cluster".into(), cluster.into());
    labels.insert("namespace".into(), target.namespace.clone());
    labels.insert("kind".into(), kind);
    labels.insert("name".into(), target.name.clone());
    if let Some(node) = obj.pointer("/spec/nodeName").and_then(Value::as_str) {
        labels.insert("node".into(), node.into());
    }
    labels.retain(|_, v| otafleet_core::selector::validate_label_value(v).is_ok());
    labels
}

/// Everything observed in one poll.
struct Observed {
    targets: Vec<Target>,
    flashes: Flashes,
}

/// Reports waiting to be sent, filled by the workload tasks.
#[derive(Clone, Default)]
struct Outbox {
    queue: Arc<Mutex<Vec<DelegateReport>>>,
    wake: Arc<Notify>,
}

impl Outbox {
    fn push(&self, device: uuid::Uuid, report: StatusReport) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push(DelegateReport { device_id: device, report });
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<DelegateReport> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn put_back(&self, mut reports: Vec<DelegateReport>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        reports.append(&mut q);
        *q = reports;
    }
}

/// A device's reports for one action, numbered from the server's `last_seq`.
struct Reporter {
    outbox: Outbox,
    device: uuid::Uuid,
    action: i64,
    seq: i64,
}

impl Reporter {
    fn new(outbox: &Outbox, device: uuid::Uuid, order: &ActionOrder) -> Self {
        Reporter { outbox: outbox.clone(), device, action: order.action_id, seq: order.last_seq }
    }

    fn report(&mut self, state: ActionState, message: Option<String>, version: Option<String>) {
        self.seq += 1;
        let report = StatusReport {
            action_id: self.action,
            seq: self.seq,
            state,
            message: message.map(|m| m.chars().take(1000).collect()),
            current_version: version,
        };
        self.outbox.push(self.device, report);
    }
}

/// The cluster agent of one cluster.
pub struct ClusterAgent {
    client: kube::Client,
    plane: Plane,
    args: ClusterArgs,
    cluster: String,
    akri_namespace: Option<String>,
    retries: Retries,
    outbox: Outbox,
    /// Workload actions this agent is working on (`None`) or finished with
    /// its last report's sequence number, until the server has seen it: a
    /// check-in answered before the final report arrived must not start the
    /// action again.
    running: Arc<Mutex<HashMap<i64, Option<i64>>>>,
    /// Hash of the last inventory sent, and how many polls ago.
    last_inventory: Option<(u64, u32)>,
}

impl ClusterAgent {
    /// An agent for `client`'s cluster. Fails on incomplete flags.
    pub fn new(client: kube::Client, args: ClusterArgs, akri_namespace: Option<String>) -> anyhow::Result<Self> {
        let base = args.server.clone().context("the cluster agent needs --server")?.trim_end_matches('/').to_string();
        let token = args.token.clone().context("the cluster agent needs --token (a delegate token)")?;
        let cluster = args.cluster.clone().context("the cluster agent needs --cluster NAME")?;
        otafleet_core::selector::validate_label_value(&cluster).map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = &args.server_ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).context("--server-ca-file")? {
                http = http.add_root_certificate(cert);
            }
        }
        let plane = Plane { http: http.build()?, base, token, sent: Arc::default() };
        let retries = Retries { max_retries: 5, retry_base: Duration::from_millis(200) };
        Ok(ClusterAgent {
            client,
            plane,
            args,
            cluster,
            akri_namespace,
            retries,
            outbox: Outbox::default(),
            running: Arc::default(),
            last_inventory: None,
        })
    }

    /// Counts the requests this agent sends to the control plane.
    pub fn requests_sent(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.plane.sent.clone()
    }

    /// Runs until `stop` resolves: a poll every `--poll-interval`, reports
    /// sent as soon as they are queued.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        info!(cluster = %self.cluster, server = %self.plane.base, "cluster agent connected");
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                if let Err(e) = self.poll().await {
                    warn!(error = %format!("{e:#}"), "cluster agent poll failed");
                }
                next = Instant::now() + self.args.poll_interval;
            }
            let wake = self.outbox.wake.clone();
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = wake.notified() => {
                    if let Err(e) = self.flush().await {
                        warn!(error = %format!("{e:#}"), "sending reports failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        let _ = self.flush().await;
    }

    /// One round: observe, inventory, reports, check-in, execute, reports.
    pub async fn poll(&mut self) -> anyhow::Result<()> {
        let observed = self.observe().await?;
        self.sync_inventory(&observed.targets).await?;
        // The server must know what was reported before it answers the check-in.
        self.flush().await?;
        let checkin = DelegateCheckin {
            devices: observed
                .targets
                .iter()
                .map(|t| DelegateCheckinEntry {
                    device_id: t.id,
                    current_version: t.version.clone(),
                    health: Some(t.health),
                })
                .collect(),
        };
        let answer = self.plane.checkin(&checkin).await?;
        let by_id: HashMap<uuid::Uuid, &Target> = observed.targets.iter().map(|t| (t.id, t)).collect();
        // Finished actions the server no longer hands out are done with.
        let handed: HashSet<i64> = answer.actions.iter().map(|a| a.action.action_id).collect();
        self.running.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, last| last.is_none() || handed.contains(id));
        let mut boards = Vec::new();
        for a in answer.actions {
            let Some(target) = by_id.get(&a.device_id) else { continue };
            match &target.kind {
                Kind::Workload(_) => self.start_workload(target, a.action),
                Kind::Board { .. } => boards.push(((*target).clone(), a.action)),
            }
        }
        self.boards(boards, &observed.flashes).await?;
        self.flush().await
    }

    async fn observe(&self) -> anyhow::Result<Observed> {
        let mut targets = Vec::new();
        for w in &self.args.workloads {
            let api = update::api(&self.client, w.kind, None);
            let lp = ListParams::default().labels(&w.selector);
            let listed = call(&self.retries, || api.list(&lp)).await?;
            for o in listed.items {
                if o.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let target =
                    ObjectRef { kind: w.kind, namespace: o.namespace().unwrap_or_default(), name: o.name_any() };
                let obj = serde_json::to_value(&o)?;
                let id = workload_id(&self.cluster, &target);
                targets.push(Target {
                    id,
                    name: format!("{}/{}/{}", self.cluster, target.namespace, target.name),
                    labels: workload_labels(&self.cluster, &target, &obj),
                    version: workload_version(w.kind, &obj, self.args.container.as_deref()),
                    health: workload_health(w.kind, &obj),
                    image: target_image(w.kind, &obj, self.args.container.as_deref()),
                    kind: Kind::Workload(target),
                });
            }
        }
        let mut flashes = Flashes::default();
        if self.args.boards {
            let (instances, jobs): (Api<Instance>, Api<FlashJob>) = match &self.akri_namespace {
                Some(ns) => (Api::namespaced(self.client.clone(), ns), Api::namespaced(self.client.clone(), ns)),
                None => (Api::all(self.client.clone()), Api::all(self.client.clone())),
            };
            let lp = ListParams::default();
            flashes.jobs = call(&self.retries, || jobs.list(&lp)).await?.items;
            for i in call(&self.retries, || instances.list(&lp)).await?.items {
                let uuid = i.device_uuid().to_string();
                let namespace = i.namespace().unwrap_or_default();
                let id = uuid.parse().unwrap_or_else(|_| {
                    let r = ObjectRef { kind: WorkloadKind::Pod, namespace: namespace.clone(), name: i.name_any() };
                    workload_id(&format!("{}-board", self.cluster), &r)
                });
                let mut labels = BTreeMap::from([
                    ("cluster".to_string(), self.cluster.clone()),
                    ("namespace".to_string(), namespace.clone()),
                    ("kind".to_string(), "board".to_string()),
                    ("name".to_string(), i.name_any()),
                ]);
                for (label, property) in [("device_type", akri::DEVICE), ("application_type", akri::APPLICATION_TYPE)] {
                    if let Some(v) = i.property(property) {
                        labels.insert(label.into(), v.into());
                    }
                }
                if let Some(node) = i.spec.nodes.first() {
                    labels.insert("node".into(), node.clone());
                }
                labels.retain(|_, v| otafleet_core::selector::validate_label_value(v).is_ok());
                let version = match flashes.last_flash(&uuid) {
                    Some(j) => Some(j.spec.version.clone()),
                    None => i.labels().get(update::VERSION_LABEL).cloned(),
                };
                targets.push(Target {
                    id,
                    name: format!("{}/{}/{}", self.cluster, namespace, i.name_any()),
                    labels,
                    version,
                    health: DeviceHealth::Healthy,
                    image: None,
                    kind: Kind::Board { namespace, uuid },
                });
            }
        }
        targets.sort_by_key(|t| t.id);
        targets.dedup_by_key(|t| t.id);
        Ok(Observed { targets, flashes })
    }

    async fn sync_inventory(&mut self, targets: &[Target]) -> anyhow::Result<()> {
        let inventory = Inventory {
            devices: targets
                .iter()
                .map(|t| InventoryEntry {
                    device_id: t.id,
                    name: t.name.clone(),
                    labels: t.labels.clone(),
                    current_version: t.version.clone(),
                })
                .collect(),
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for d in &inventory.devices {
            (d.device_id, &d.name, &d.labels).hash(&mut h);
        }
        let hash = h.finish();
        match self.last_inventory {
            Some((last, polls)) if last == hash && polls < 10 => {
                self.last_inventory = Some((last, polls + 1));
                return Ok(());
            }
            _ => {}
        }
        let ack = self.plane.inventory(&inventory).await?;
        if ack.registered > 0 || !ack.gone.is_empty() || ack.returned > 0 {
            info!(registered = ack.registered, gone = ack.gone.len(), returned = ack.returned, "inventory");
        }
        self.last_inventory = Some((hash, 0));
        Ok(())
    }

    /// Sends every queued report in one request; what fails is kept.
    async fn flush(&self) -> anyhow::Result<()> {
        let reports = self.outbox.take();
        if reports.is_empty() {
            return Ok(());
        }
        match self.plane.status(&DelegateStatus { reports: reports.clone() }).await {
            Ok(ack) => {
                for a in ack.acks.iter().filter(|a| a.outcome == "refused") {
                    warn!(device = %a.device_id, action = a.action_id, error = a.error.as_deref().unwrap_or(""),
                        "report refused");
                }
                Ok(())
            }
            Err(e) => {
                self.outbox.put_back(reports);
                Err(e)
            }
        }
    }

    fn start_workload(&self, target: &Target, order: ActionOrder) {
        let Kind::Workload(object) = target.kind.clone() else { return };
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match running.get(&order.action_id) {
                // Still at it, or its final report is not on the server yet.
                Some(None) => return,
                Some(Some(last)) if *last > order.last_seq => return,
                _ => {}
            }
            running.insert(order.action_id, None);
        }
        let job = WorkloadJob {
            client: self.client.clone(),
            retries: self.retries,
            timeout: self.args.rollout_timeout,
            container: self.args.container.clone(),
            object,
            device: target.id,
        };
        let (running, outbox) = (self.running.clone(), self.outbox.clone());
        tokio::spawn(async move {
            let id = order.action_id;
            let mut reporter = Reporter::new(&outbox, job.device, &order);
            if let Err(e) = job.execute(&order, &mut reporter).await {
                warn!(target = %job.object, action = id, error = %e, "update failed");
                reporter.report(ActionState::Failed, Some(format!("Kubernetes API: {e}")), None);
            }
            running.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Some(reporter.seq));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_come_from_the_label_while_the_image_is_ours_else_from_the_image() {
        let obj = |label: Option<&str>, ours: Option<&str>, image: &str| {
            let mut o = json!({"metadata": {"labels": {}, "annotations": {}}, "spec": {"containers": [{"name": "a", "image": image}]}});
            if let Some(l) = label {
                o["metadata"]["labels"]["sw_version"] = json!(l);
            }
            if let Some(i) = ours {
                o["metadata"]["annotations"][IMAGE_ANNOTATION] = json!(i);
            }
            o
        };
        let v = |o: &Value| workload_version(WorkloadKind::Pod, o, None);
        assert_eq!(v(&obj(Some("2.0.0"), Some("robot:2"), "robot:2")).as_deref(), Some("2.0.0"));
        assert_eq!(v(&obj(Some("2.0.0"), None, "robot:2")).as_deref(), Some("2.0.0"), "the tracker's label");
        assert_eq!(v(&obj(Some("2.0.0"), Some("robot:2"), "robot:3.1")).as_deref(), Some("3.1"), "set behind our back");
        assert_eq!(v(&obj(None, None, "reg:5000/robot")).as_deref(), Some("latest"));
        let digest = format!("sha256:{}", "b".repeat(64));
        assert_eq!(v(&obj(None, None, &format!("robot:1@{digest}"))), Some(digest));
    }

    #[test]
    fn restarts_degrade_a_ready_pod() {
        let pod = |n: i64| {
            json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "a", "restartCount": n}, {"name": "b", "restartCount": 0}]}})
        };
        assert_eq!(restarts(&pod(2)), 2);
        assert_eq!(workload_health(WorkloadKind::Pod, &pod(0)), DeviceHealth::Healthy);
        assert_eq!(workload_health(WorkloadKind::Pod, &pod(MAX_RESTARTS)), DeviceHealth::Degraded);
    }

    #[test]
    fn workload_ids_are_stable_per_cluster() {
        let o = ObjectRef { kind: WorkloadKind::Deployment, namespace: "ns".into(), name: "arm".into() };
        assert_eq!(workload_id("a", &o), workload_id("a", &o.clone()));
        assert_ne!(workload_id("a", &o), workload_id("b", &o));
    }

    #[test]
    fn watches_parse_kind_and_selector() {
        let w = parse_watch("deployment:app=robot,tier in (edge)").expect("parses");
        assert_eq!((w.kind, w.selector.as_str()), (WorkloadKind::Deployment, "app=robot,tier in (edge)"));
        assert!(parse_watch("robot:app=x").is_err());
        assert!(parse_watch("pod").is_err());
        assert!(parse_watch("pod:app=(").is_err());
    }
}
