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
use kube::api::{DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use otafleet_core::duration::parse_arg as parse_duration;
use otafleet_core::protocol::{
    ActionOrder, DelegateCheckin, DelegateCheckinEntry, DelegateCheckinResponse, DelegateReport, DelegateStatus,
    DelegateStatusAck, Inventory, InventoryAck, InventoryEntry, StatusReport,
};
use otafleet_core::{ActionKind, ActionState, DeviceHealth, Selector};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::akri::{self, Instance};
use crate::crd::{FlashJob, FlashJobSpec, Phase};
use crate::error::{Error, Result};
use crate::update::{self, call, patch_guarded, rollout_ready, ObjectRef, Retries, WorkloadKind};

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

/// What the cluster holds of FlashJobs, for boards.
#[derive(Default)]
struct Flashes {
    /// Every FlashJob (of the boards' namespaces).
    jobs: Vec<FlashJob>,
}

fn created_ms(job: &FlashJob) -> i64 {
    job.annotations()
        .get(CREATED_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .or_else(|| job.metadata.creation_timestamp.as_ref().map(|t| t.0.timestamp_millis()))
        .unwrap_or(0)
}

impl Flashes {
    /// The newest completed flash of a board: (version, firmware, flasher image).
    fn last_flash(&self, uuid: &str) -> Option<&FlashJob> {
        self.jobs
            .iter()
            .filter(|j| j.status.as_ref().is_some_and(|s| s.completed_uuids.iter().any(|u| u == uuid)))
            .max_by_key(|j| created_ms(j))
    }

    /// The newest completed flash of `version` on any board: how to flash it again.
    fn flash_of(&self, version: &str) -> Option<&FlashJob> {
        self.jobs
            .iter()
            .filter(|j| j.spec.version == version && j.status.as_ref().is_some_and(|s| !s.completed_uuids.is_empty()))
            .max_by_key(|j| created_ms(j))
    }

    /// The unreported FlashJob of ours that flashes `uuid` to `version`, if any.
    fn active(&self, uuid: &str, version: &str) -> Option<&FlashJob> {
        self.jobs
            .iter()
            .filter(|j| j.spec.version == version)
            .filter(|j| j.labels().get(MANAGED_LABEL).is_some_and(|v| v == "true"))
            .filter(|j| !j.annotations().contains_key(REPORTED_ANNOTATION))
            .filter(|j| j.spec.uuid.iter().any(|u| u == uuid))
            .max_by_key(|j| created_ms(j))
    }
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

    /// The boards' actions of this poll: those done reported, those being
    /// flashed followed, the rest flashed by one FlashJob per batch.
    async fn boards(&self, actions: Vec<(Target, ActionOrder)>, flashes: &Flashes) -> anyhow::Result<()> {
        let mut batches: BTreeMap<FlashKey, Vec<(Target, ActionOrder)>> = BTreeMap::new();
        let mut failed_jobs: BTreeMap<String, (String, FlashJob)> = BTreeMap::new();
        for (target, order) in actions {
            let Kind::Board { namespace, uuid } = &target.kind else { continue };
            let mut r = Reporter::new(&self.outbox, target.id, &order);
            if target.version.as_deref() == Some(order.version.as_str()) {
                r.report(ActionState::Succeeded, None, Some(order.version.clone()));
                continue;
            }
            if let Some(job) = flashes.active(uuid, &order.version) {
                let status = job.status.clone().unwrap_or_default();
                match status.phase {
                    Some(Phase::Failed) if !status.completed_uuids.contains(uuid) => {
                        let why = status.message.clone().unwrap_or_else(|| "the flash failed".into());
                        r.report(ActionState::Failed, Some(format!("FlashJob {}: {why}", job.name_any())), None);
                        failed_jobs.insert(job.name_any(), (namespace.clone(), job.clone()));
                        continue;
                    }
                    // Done, yet the board runs another version now: flash again.
                    Some(Phase::Completed) | Some(Phase::Failed) => {}
                    _ => {
                        if order.state == ActionState::Notified {
                            r.report(ActionState::Installing, Some(format!("FlashJob {}", job.name_any())), None);
                        }
                        continue;
                    }
                }
            }
            let (firmware, flasher) = match (&order.firmware, &order.flash_pod_image) {
                (Some(f), Some(p)) => (f.clone(), p.clone()),
                _ => match flashes.flash_of(&order.version) {
                    Some(j) if j.spec.flashjob_pod_image.is_some() => {
                        (j.spec.firmware.clone(), j.spec.flashjob_pod_image.clone().unwrap_or_default())
                    }
                    _ => {
                        let why = format!(
                            "release {} names no firmware and flash_pod_image, and no FlashJob flashed it before",
                            order.version
                        );
                        r.report(ActionState::Failed, Some(why), None);
                        continue;
                    }
                },
            };
            batches
                .entry((namespace.clone(), order.version.clone(), firmware, flasher))
                .or_default()
                .push((target, order));
        }
        // Marked first: a retried action must not meet this failure again.
        for (name, (namespace, _)) in failed_jobs {
            let api: Api<FlashJob> = Api::namespaced(self.client.clone(), &namespace);
            let patch = json!({"metadata": {"annotations": {REPORTED_ANNOTATION: "true"}}});
            let (pp, merge) = (PatchParams::default(), Patch::Merge(&patch));
            call(&self.retries, || api.patch(&name, &pp, &merge)).await?;
        }
        for ((namespace, version, firmware, flasher), group) in batches {
            // Named by the actions and their attempt (`last_seq` moves on with
            // each report): a retry after a failure gets a FlashJob of its own.
            let mut ids: Vec<(i64, i64)> = group.iter().map(|(_, o)| (o.action_id, o.last_seq)).collect();
            ids.sort_unstable();
            let digest = Sha256::digest(format!("{ids:?}").as_bytes());
            let rollout = group[0].1.rollout_id;
            let name = format!("otafleet-{rollout}-{}", &hex_lower(&digest)[..10]);
            let uuids: Vec<String> = group
                .iter()
                .filter_map(|(t, _)| match &t.kind {
                    Kind::Board { uuid, .. } => Some(uuid.clone()),
                    Kind::Workload(_) => None,
                })
                .collect();
            let job = FlashJob {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: Some(BTreeMap::from([
                        (MANAGED_LABEL.to_string(), "true".to_string()),
                        ("otafleet.io/rollout".to_string(), rollout.to_string()),
                    ])),
                    annotations: Some(BTreeMap::from([(
                        CREATED_ANNOTATION.to_string(),
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis())
                            .to_string(),
                    )])),
                    ..Default::default()
                },
                spec: FlashJobSpec {
                    uuid: uuids,
                    firmware,
                    version: version.clone(),
                    host_endpoint: None,
                    device: None,
                    application_type: None,
                    external_ip: None,
                    flashjob_pod_image: Some(flasher),
                },
                status: None,
            };
            let api: Api<FlashJob> = Api::namespaced(self.client.clone(), &namespace);
            let pp = PostParams::default();
            match call(&self.retries, || api.create(&pp, &job)).await {
                Ok(_) => info!(job = %name, boards = group.len(), %version, "flashing"),
                Err(Error::Kube(e)) if crate::error::is_already_exists(&e) => {}
                Err(e) => return Err(e.into()),
            }
            for (target, order) in &group {
                if order.state == ActionState::Notified {
                    Reporter::new(&self.outbox, target.id, order).report(
                        ActionState::Installing,
                        Some(format!("FlashJob {name}")),
                        None,
                    );
                }
            }
        }
        Ok(())
    }
}

/// What boards flashed by one FlashJob share: namespace, version, firmware, flasher image.
type FlashKey = (String, String, String, String);

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One workload's action, run in a task of its own.
struct WorkloadJob {
    client: kube::Client,
    retries: Retries,
    timeout: Duration,
    container: Option<String>,
    object: ObjectRef,
    device: uuid::Uuid,
}

impl WorkloadJob {
    async fn execute(&self, order: &ActionOrder, r: &mut Reporter) -> Result<()> {
        let kind = self.object.kind;
        let api = update::api(&self.client, kind, Some(&self.object.namespace));
        let current = serde_json::to_value(call(&self.retries, || api.get(&self.object.name)).await?)?;
        let version = workload_version(kind, &current, self.container.as_deref());
        if version.as_deref() == Some(order.version.as_str())
            && workload_health(kind, &current) == DeviceHealth::Healthy
        {
            r.report(ActionState::Succeeded, None, Some(order.version.clone()));
            return Ok(());
        }
        // An app release: the whole spec is rendered and applied.
        let spec = order.app_spec.clone().or_else(|| {
            // A version with no spec in the catalogue: the one this agent replaced, if it is that version.
            (annotation(&current, PREVIOUS_VERSION_ANNOTATION).as_deref() == Some(order.version.as_str()))
                .then(|| annotation(&current, crate::app::PREVIOUS_SPEC_ANNOTATION))
                .flatten()
                .and_then(|s| serde_json::from_str(&s).ok())
        });
        if let (Some(spec), WorkloadKind::Deployment) = (spec, kind) {
            return self.execute_app(order, spec, &current, version, r).await;
        }
        let image = order.image.clone().or_else(|| {
            // A version the release catalogue has no image for: the one this
            // agent replaced, if it is that version.
            (annotation(&current, PREVIOUS_VERSION_ANNOTATION).as_deref() == Some(order.version.as_str()))
                .then(|| annotation(&current, PREVIOUS_IMAGE_ANNOTATION))
                .flatten()
        });
        let Some(image) = image else {
            let why =
                format!("release {} names no image, and {} never ran it under otafleet", order.version, self.object);
            r.report(ActionState::Failed, Some(why), None);
            return Ok(());
        };
        if order.state == ActionState::Notified {
            r.report(ActionState::Installing, Some(format!("setting image {image}")), None);
        }
        let before_image = target_image(kind, &current, self.container.as_deref());
        let container = self.container.clone();
        let prev = patch_guarded(&self.retries, &api, &self.object, |now| {
            let mut patch = json!({"metadata": {"labels": {
                update::VERSION_LABEL: order.version, update::STATUS_LABEL: "updated"
            }, "annotations": {IMAGE_ANNOTATION: image}}});
            let now_image = target_image(kind, now, container.as_deref());
            if now_image.as_deref() != Some(image.as_str()) {
                patch["metadata"]["annotations"][PREVIOUS_IMAGE_ANNOTATION] = json!(now_image);
                patch["metadata"]["annotations"][PREVIOUS_VERSION_ANNOTATION] =
                    json!(workload_version(kind, now, container.as_deref()));
            }
            let name = container.clone().or_else(|| first_name(kind, now));
            let containers = update::with_image(now, kind, &image, name.as_deref());
            update::set_path(&mut patch, kind.containers_path(), containers);
            patch
        })
        .await?;
        r.report(ActionState::Verifying, Some("waiting for readiness".into()), None);
        match self.wait_ready(&api, &image).await? {
            Ok(()) => r.report(ActionState::Succeeded, None, Some(order.version.clone())),
            Err(reason) => {
                // Never left broken: the previous image goes back, then the report.
                let restored = self.restore(&api, &prev, before_image.as_deref()).await;
                let state =
                    if order.kind == ActionKind::Rollback { ActionState::Failed } else { ActionState::RolledBack };
                let message = match &restored {
                    Ok(()) => format!("{reason}; previous image {} restored", before_image.as_deref().unwrap_or("?")),
                    Err(e) => format!("{reason}; restoring the previous image failed: {e}"),
                };
                let state = if restored.is_err() { ActionState::Failed } else { state };
                r.report(state, Some(message), if restored.is_ok() { prev.version.clone() } else { None });
            }
        }
        Ok(())
    }

    /// An app release on the app's Deployment: render the spec, apply every
    /// object (server-side), wait for readiness; when it does not come, the
    /// previous spec is applied again (or, when the app never had one from
    /// otafleet, the previous containers) and the action is `rolled_back`.
    async fn execute_app(
        &self,
        order: &ActionOrder,
        spec: Value,
        current: &Value,
        version: Option<String>,
        r: &mut Reporter,
    ) -> Result<()> {
        let spec = match crate::app::from_value(spec) {
            Ok(s) => s,
            Err(e) => {
                r.report(ActionState::Failed, Some(format!("the release's app spec: {e}")), None);
                return Ok(());
            }
        };
        if spec.name != self.object.name || spec.namespace != self.object.namespace {
            let why = format!(
                "the release's spec is for app {}/{}, this device is {}",
                spec.namespace, spec.name, self.object
            );
            r.report(ActionState::Failed, Some(why), None);
            return Ok(());
        }
        let render = |spec: &crate::app::AppSpec, previous: Option<(&str, &str)>| {
            crate::app::render(spec).map(|mut objects| {
                crate::app::annotate(&mut objects, spec, previous);
                objects
            })
        };
        let before = annotation(current, crate::app::SPEC_ANNOTATION);
        let before_version = version.clone().unwrap_or_default();
        let objects = match render(&spec, before.as_deref().map(|b| (b, before_version.as_str()))) {
            Ok(o) => o,
            Err(e) => {
                r.report(ActionState::Failed, Some(format!("the release's app spec: {e}")), None);
                return Ok(());
            }
        };
        if order.state == ActionState::Notified {
            r.report(ActionState::Installing, Some(format!("applying app {} ({})", spec.name, spec.image)), None);
        }
        let prev = update::Previous {
            target: self.object.clone(),
            version: update::label(current, update::VERSION_LABEL),
            status: update::label(current, update::STATUS_LABEL),
            containers: current.pointer(WorkloadKind::Deployment.containers_path()).cloned().unwrap_or(Value::Null),
        };
        let applied = crate::app::apply_objects(&self.client, &self.object.namespace, &objects).await;
        if let Err(e) = applied {
            r.report(ActionState::Failed, Some(format!("applying the app: {e:#}")), None);
            return Ok(());
        }
        r.report(ActionState::Verifying, Some("waiting for readiness".into()), None);
        let api = update::api(&self.client, WorkloadKind::Deployment, Some(&self.object.namespace));
        match self.wait_ready(&api, &spec.image).await? {
            Ok(()) => r.report(ActionState::Succeeded, None, Some(order.version.clone())),
            Err(reason) => {
                let previous = before.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok());
                let restored = match previous.map(crate::app::from_value) {
                    Some(Ok(p)) => match render(&p, None) {
                        Ok(objects) => crate::app::apply_objects(&self.client, &self.object.namespace, &objects)
                            .await
                            .map(|_| "previous spec re-applied".to_string())
                            .map_err(|e| format!("{e:#}")),
                        Err(e) => Err(e.to_string()),
                    },
                    _ => self
                        .restore(
                            &api,
                            &prev,
                            target_image(WorkloadKind::Deployment, current, self.container.as_deref()).as_deref(),
                        )
                        .await
                        .map(|()| "previous containers restored".to_string())
                        .map_err(|e| e.to_string()),
                };
                let state =
                    if order.kind == ActionKind::Rollback { ActionState::Failed } else { ActionState::RolledBack };
                match restored {
                    Ok(what) => r.report(state, Some(format!("{reason}; {what}")), prev.version.clone()),
                    Err(e) => r.report(ActionState::Failed, Some(format!("{reason}; restoring failed: {e}")), None),
                }
            }
        }
        Ok(())
    }

    /// Ok(Ok) once ready on `image`; Ok(Err(reason)) when it will not be.
    async fn wait_ready(&self, api: &Api<DynamicObject>, image: &str) -> Result<std::result::Result<(), String>> {
        let kind = self.object.kind;
        let deadline = Instant::now() + self.timeout;
        // A pod's stuck reason may pass (a slow registry): it fails after this long.
        let grace = (self.timeout / 2).min(Duration::from_secs(30));
        let mut stuck_since: Option<Instant> = None;
        // Restarts counted from the first sight of the new image (an image change restarts the container once).
        let mut baseline: Option<i64> = None;
        loop {
            let obj = serde_json::to_value(call(&self.retries, || api.get(&self.object.name)).await?)?;
            if kind == WorkloadKind::Pod && pod_runs_image(&obj, image) {
                let n = restarts(&obj);
                let base = *baseline.get_or_insert(n);
                if n - base >= MAX_RESTARTS {
                    return Ok(Err(format!("container restarted {} times since the update", n - base)));
                }
            }
            let on_image = target_image(kind, &obj, self.container.as_deref()).as_deref() == Some(image);
            let ready = match kind {
                WorkloadKind::Pod => pod_ready(&obj) && pod_runs(&obj, image),
                _ => rollout_ready(kind, &obj),
            };
            if on_image && ready {
                return Ok(Ok(()));
            }
            if let Some(reason) = stuck_reason(kind, &obj) {
                let since = *stuck_since.get_or_insert_with(Instant::now);
                if kind != WorkloadKind::Pod || since.elapsed() >= grace {
                    return Ok(Err(reason));
                }
            } else {
                stuck_since = None;
            }
            if Instant::now() >= deadline {
                return Ok(Err(format!("not ready within {}s (readiness timeout)", self.timeout.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn restore(&self, api: &Api<DynamicObject>, prev: &update::Previous, image: Option<&str>) -> Result<()> {
        let kind = self.object.kind;
        patch_guarded(&self.retries, api, &self.object, |_| {
            let mut patch = json!({"metadata": {"labels": {
                update::VERSION_LABEL: prev.version, update::STATUS_LABEL: prev.status
            }, "annotations": {IMAGE_ANNOTATION: image}}});
            if !prev.containers.is_null() {
                update::set_path(&mut patch, kind.containers_path(), prev.containers.clone());
            }
            patch
        })
        .await?;
        Ok(())
    }
}

fn first_name(kind: WorkloadKind, obj: &Value) -> Option<String> {
    containers_of(kind, obj).first().and_then(|c| c.get("name")).and_then(Value::as_str).map(str::to_string)
}

/// Whether a pod's status shows a container on `image`, ready or not.
fn pod_runs_image(obj: &Value, image: &str) -> bool {
    let Some(statuses) = obj.pointer("/status/containerStatuses").and_then(Value::as_array) else { return false };
    statuses.iter().any(|s| {
        s.get("image").and_then(Value::as_str).is_some_and(|i| i == image || i.ends_with(&format!("/{image}")))
    })
}

/// Whether a pod's status shows the container running `image` (a registry
/// may spell it out: `docker.io/library/…`).
fn pod_runs(obj: &Value, image: &str) -> bool {
    let Some(statuses) = obj.pointer("/status/containerStatuses").and_then(Value::as_array) else { return false };
    statuses.iter().any(|s| {
        s.get("image").and_then(Value::as_str).is_some_and(|i| i == image || i.ends_with(&format!("/{image}")))
            && s.get("ready").and_then(Value::as_bool) == Some(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
