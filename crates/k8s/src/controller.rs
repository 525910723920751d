//! The FlashJob controller.
//!
//! `reconcile` is level-triggered: every call derives what to do from observed
//! state only — the FlashJob (spec and status), the flash pods labelled with the
//! job's uid, and the Akri `Instance`s — never from memory of earlier calls. An
//! operator restart mid-job therefore just continues it.
//!
//! Per call, in this order:
//! 1. a Completed/Failed job only gets its leftover pods and Services deleted;
//! 2. pods in phase `Failed` fail the job; pods in `Succeeded` add their UUID to
//!    `status.completedUUIDs`;
//! 3. all UUIDs done → `Completed`; UUIDs that are neither done, nor have a pod,
//!    nor match an Akri `Instance` uid → `Failed` naming them;
//! 4. the status is written (status subresource, only when it changed) *before*
//!    succeeded pods are deleted, so a crash in between never loses a completion;
//! 5. new pods (and their Services) are created for waiting UUIDs, at most
//!    `max_flash_pods` pods active per job.
//!
//! Pod and Service names are deterministic (`flash-<job>-<short uuid>`), so a
//! create that races a previous one hits 409 AlreadyExists, which is success.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, Pod, PodSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::akri::{self, Instance};
use crate::crd::{Condition, FlashJob, FlashJobStatus, Phase};
use crate::error::{is_conflict, is_not_found, Error, Result};
use crate::metrics::Metrics;

/// Finalizer that guarantees flash pods and Services are removed before a FlashJob goes.
pub const FINALIZER: &str = "flashjob.nbfc.io/cleanup";
/// Label on every child object: the owning FlashJob's uid (always a valid label value).
pub const JOB_UID_LABEL: &str = "flashjob.nbfc.io/job-uid";
/// Label on pods (and Service selector): the pod name.
pub const POD_LABEL: &str = "flashjob.nbfc.io/pod";
/// Annotation on children: the device UUID they flash.
pub const UUID_ANNOTATION: &str = "flashjob.nbfc.io/uuid";
/// Annotation on children: the owning FlashJob's name.
pub const JOB_ANNOTATION: &str = "flashjob.nbfc.io/job";
/// Port the flasher pod serves firmware on, exposed by its Service.
pub const FLASHER_PORT: i32 = 8080;

/// Tunables of the controller, fixed at start-up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Flasher image for jobs without `spec.flashjobPodImage`.
    pub default_pod_image: Option<String>,
    /// Upper bound of non-finished flash pods per FlashJob.
    pub max_flash_pods: usize,
    /// FlashJobs reconciled in parallel.
    pub concurrency: u16,
    /// Safety requeue of in-progress jobs (pod watch events normally come first).
    pub requeue: Duration,
    /// Requeue delay after a failed reconcile.
    pub error_backoff: Duration,
    /// Namespace holding Akri `Instance`s; the job's own namespace when `None`.
    pub akri_namespace: Option<String>,
    /// Only watch FlashJobs in this namespace; all namespaces when `None`.
    pub watch_namespace: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_pod_image: None,
            max_flash_pods: 20,
            concurrency: 4,
            requeue: Duration::from_secs(60),
            error_backoff: Duration::from_secs(5),
            akri_namespace: None,
            watch_namespace: None,
        }
    }
}

/// State shared by all reconciles.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Kubernetes Events about FlashJobs.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Tunables.
    pub settings: Settings,
}

impl Context {
    /// Builds a context; `instance` identifies this replica in Events.
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: Settings, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: "otafleet-operator".into(), instance };
        Self { recorder: Recorder::new(client.clone(), reporter), client, metrics, settings }
    }
}

/// Runs the controller until `shutdown` resolves, then finishes in-flight reconciles.
pub async fn run_controller(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let (jobs, pods) = match &ctx.settings.watch_namespace {
        Some(ns) => (Api::<FlashJob>::namespaced(client.clone(), ns), Api::<Pod>::namespaced(client, ns)),
        None => (Api::<FlashJob>::all(client.clone()), Api::<Pod>::all(client)),
    };
    let config = controller::Config::default().concurrency(ctx.settings.concurrency);
    Controller::new(jobs, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(JOB_UID_LABEL))
        .with_config(config)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(job = %obj, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

/// Reconciles one FlashJob (see the module docs for the flow).
pub async fn reconcile(job: Arc<FlashJob>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let ns = job.namespace().ok_or_else(|| Error::MissingField(job.name_any(), "metadata.namespace"))?;
    let api: Api<FlashJob> = Api::namespaced(ctx.client.clone(), &ns);
    let res = finalizer(&api, FINALIZER, job, |event| {
        let ctx = ctx.clone();
        async move {
            match event {
                FinalizerEvent::Apply(job) => apply(&job, &ctx).await,
                FinalizerEvent::Cleanup(job) => cleanup(&job, &ctx).await,
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(started.elapsed(), res.as_ref().err());
    res
}

/// Requeues a failed reconcile after the configured backoff.
pub fn error_policy(job: Arc<FlashJob>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(job = %job.name_any(), %error, "reconcile error, requeueing");
    Action::requeue(ctx.settings.error_backoff)
}

/// What one reconcile observed about a job's pods.
#[derive(Default)]
struct Observed {
    /// UUID → pod name, for every pod not being deleted.
    pods: BTreeMap<String, String>,
    succeeded: Vec<(String, String)>,
    failed: Vec<(String, String)>,
    active: usize,
    phases: HashMap<String, i64>,
}

async fn apply(job: &FlashJob, ctx: &Context) -> Result<Action> {
    let children = Children::of(job, ctx)?;
    let status = job.status.clone().unwrap_or_default();
    if status.phase.is_some_and(Phase::is_terminal) {
        children.delete_all().await?;
        ctx.metrics.set_job_pods(&children.key, HashMap::new());
        return Ok(Action::await_change());
    }

    let wanted = dedup(&job.spec.uuid);
    let mut completed: BTreeSet<String> = status.completed_uuids.iter().cloned().collect();
    let observed = children.observe().await?;
    ctx.metrics.set_job_pods(&children.key, observed.phases.clone());
    for (uuid, _) in &observed.succeeded {
        completed.insert(uuid.clone());
    }
    let completed_in_order: Vec<String> = wanted.iter().filter(|u| completed.contains(*u)).cloned().collect();

    if !observed.failed.is_empty() {
        let list: Vec<String> = observed.failed.iter().map(|(uuid, pod)| format!("{uuid} (pod {pod})")).collect();
        let message = format!("flashing failed for UUIDs: {}", list.join(", "));
        return finish(job, ctx, &children, Phase::Failed, "FlashFailed", message, completed_in_order, None).await;
    }

    let todo: Vec<&String> = wanted.iter().filter(|u| !completed.contains(*u)).collect();
    if todo.is_empty() {
        let message = format!("flashed {} of {} devices", completed_in_order.len(), wanted.len());
        return finish(job, ctx, &children, Phase::Completed, "FlashCompleted", message, completed_in_order, None)
            .await;
    }

    let instances = ctx.instances(&children.ns).list(&ListParams::default()).await?;
    let devices: HashMap<&str, &Instance> =
        instances.items.iter().map(|i| (i.device_uuid(), i)).filter(|(uid, _)| !uid.is_empty()).collect();
    let unknown: Vec<&str> = todo
        .iter()
        .filter(|u| !devices.contains_key(u.as_str()) && !observed.pods.contains_key(**u))
        .map(|u| u.as_str())
        .collect();
    if !unknown.is_empty() {
        let message = format!("unknown device UUIDs: {}", unknown.join(", "));
        return finish(job, ctx, &children, Phase::Failed, "UnknownDevices", message, completed_in_order, None).await;
    }

    let slots = ctx.settings.max_flash_pods.saturating_sub(observed.active);
    let to_create: Vec<&Instance> = todo
        .iter()
        .filter(|u| !observed.pods.contains_key(**u))
        .filter_map(|u| devices.get(u.as_str()).copied())
        .take(slots)
        .collect();
    let flashing = observed.active + to_create.len();
    let host_endpoint = job.spec.host_endpoint.clone().or_else(|| {
        todo.iter()
            .find_map(|u| devices.get(u.as_str()))
            .and_then(|i| i.property(akri::HOST_ENDPOINT))
            .map(str::to_string)
    });
    let message = format!(
        "{} of {} devices flashed, {} flashing, {} waiting",
        completed_in_order.len(),
        wanted.len(),
        flashing,
        todo.len().saturating_sub(flashing)
    );
    let new_status = next_status(job, Phase::InProgress, "FlashInProgress", message, completed_in_order, host_endpoint);
    patch_status(job, ctx, &children.ns, new_status).await?;

    // Completions are recorded; now the succeeded pods can go.
    for (_, pod) in &observed.succeeded {
        children.delete_pair(pod).await?;
    }

    let image = job
        .spec
        .flashjob_pod_image
        .clone()
        .or_else(|| ctx.settings.default_pod_image.clone())
        .ok_or_else(|| Error::NoPodImage(job.name_any()))?;
    // A few creates in flight at once; each chunk finishes before the next starts.
    let mut created = 0;
    for chunk in to_create.chunks(8) {
        let mut creates = Vec::with_capacity(chunk.len());
        for device in chunk {
            creates.push(children.create_pair(job, device, &image));
        }
        created += futures::future::try_join_all(creates).await?.len();
    }
    if created > 0 {
        ctx.publish(
            job,
            EventType::Normal,
            "FlashStarted",
            "CreatePods",
            format!("created {created} flash pods ({flashing} flashing)"),
        )
        .await;
    }
    Ok(Action::requeue(ctx.settings.requeue))
}

/// Writes a terminal status, emits an Event and removes all children.
#[allow(clippy::too_many_arguments)]
async fn finish(
    job: &FlashJob,
    ctx: &Context,
    children: &Children,
    phase: Phase,
    reason: &str,
    message: String,
    completed: Vec<String>,
    host_endpoint: Option<String>,
) -> Result<Action> {
    let host_endpoint = host_endpoint.or_else(|| job.status.as_ref().and_then(|s| s.host_endpoint.clone()));
    let status = next_status(job, phase, reason, message.clone(), completed, host_endpoint);
    patch_status(job, ctx, &children.ns, status).await?;
    let type_ = if phase == Phase::Failed { EventType::Warning } else { EventType::Normal };
    ctx.publish(job, type_, reason, "Reconcile", message).await;
    info!(job = %job.name_any(), %phase, "FlashJob finished");
    children.delete_all().await?;
    ctx.metrics.set_job_pods(&children.key, HashMap::new());
    Ok(Action::await_change())
}

async fn cleanup(job: &FlashJob, ctx: &Context) -> Result<Action> {
    let children = Children::of(job, ctx)?;
    let deleted = children.delete_all().await?;
    ctx.metrics.set_job_pods(&children.key, HashMap::new());
    ctx.publish(job, EventType::Normal, "Deleted", "Cleanup", format!("removed {deleted} flash pods and Services"))
        .await;
    Ok(Action::await_change())
}

impl Context {
    fn instances(&self, job_ns: &str) -> Api<Instance> {
        let ns = self.settings.akri_namespace.as_deref().unwrap_or(job_ns);
        Api::namespaced(self.client.clone(), ns)
    }

    /// Publishes an Event; failures are logged, never fail the reconcile.
    async fn publish(&self, job: &FlashJob, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &job.object_ref(&())).await {
            warn!(job = %job.name_any(), error = %e, "failed to publish event");
        }
    }
}

/// Builds the next status, keeping condition transition times that did not change.
fn next_status(
    job: &FlashJob,
    phase: Phase,
    reason: &str,
    message: String,
    completed: Vec<String>,
    host_endpoint: Option<String>,
) -> FlashJobStatus {
    let old = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation;
    let now = k8s_openapi::chrono::Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
    let cond = |type_: &str, on: bool| {
        let status = if on { "True" } else { "False" }.to_string();
        let last_transition_time = old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.clone(),
            last_transition_time,
            observed_generation: generation,
        }
    };
    FlashJobStatus {
        conditions: vec![
            cond("Progressing", phase == Phase::InProgress),
            cond("Complete", phase == Phase::Completed),
            cond("Failed", phase == Phase::Failed),
        ],
        message: Some(message.clone()),
        host_endpoint,
        phase: Some(phase),
        completed_uuids: completed,
    }
}

async fn patch_status(job: &FlashJob, ctx: &Context, ns: &str, status: FlashJobStatus) -> Result<()> {
    if job.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<FlashJob> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&job.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

fn dedup(uuids: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    uuids.iter().filter(|u| seen.insert(u.as_str())).cloned().collect()
}

/// Deterministic, DNS-1035-valid name of the pod (and Service) flashing `uuid` for `job`.
///
/// `flash-<job>-<first 8 alphanumerics of uuid>`; long job names are cut and get a
/// hash suffix, and the whole name stays within 63 characters.
pub fn pod_name(job: &str, uuid: &str) -> String {
    let short: String =
        uuid.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).take(8).collect();
    // Two UUIDs may share a prefix; hash the full UUID into the name in that case's stead.
    let short = format!("{short}{:04x}", fnv(uuid) & 0xffff);
    let job: String =
        job.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let budget = 63 - "flash-".len() - 1 - short.len();
    let job = if job.len() > budget {
        let hash = format!("{:06x}", fnv(&job) & 0xff_ffff);
        format!("{}-{hash}", job[..budget - hash.len() - 1].trim_end_matches('-'))
    } else {
        job
    };
    format!("flash-{job}-{short}")
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The pods and Services of one FlashJob.
struct Children {
    ns: String,
    key: String,
    selector: String,
    pods: Api<Pod>,
    services: Api<Service>,
}

impl Children {
    fn of(job: &FlashJob, ctx: &Context) -> Result<Self> {
        let ns = job.namespace().ok_or_else(|| Error::MissingField(job.name_any(), "metadata.namespace"))?;
        let uid = job.uid().ok_or_else(|| Error::MissingField(job.name_any(), "metadata.uid"))?;
        Ok(Self {
            key: format!("{ns}/{}", job.name_any()),
            selector: format!("{JOB_UID_LABEL}={uid}"),
            pods: Api::namespaced(ctx.client.clone(), &ns),
            services: Api::namespaced(ctx.client.clone(), &ns),
            ns,
        })
    }

    async fn observe(&self) -> Result<Observed> {
        let pods = self.pods.list(&ListParams::default().labels(&self.selector)).await?;
        let mut observed = Observed::default();
        for pod in pods.items {
            let name = pod.name_any();
            let Some(uuid) = pod.annotations().get(UUID_ANNOTATION).cloned() else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
            *observed.phases.entry(phase.clone()).or_default() += 1;
            match phase.as_str() {
                "Succeeded" => observed.succeeded.push((uuid.clone(), name.clone())),
                "Failed" => observed.failed.push((uuid.clone(), name.clone())),
                _ => observed.active += 1,
            }
            observed.pods.insert(uuid, name);
        }
        Ok(observed)
    }

    async fn create_pair(&self, job: &FlashJob, device: &Instance, image: &str) -> Result<()> {
        let uuid = device.device_uuid();
        let name = pod_name(&job.name_any(), uuid);
        let owner = job.controller_owner_ref(&()).ok_or_else(|| Error::MissingField(job.name_any(), "metadata.uid"))?;
        let uid = job.uid().unwrap_or_default();
        let meta = ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(self.ns.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_string(), "flashjob".to_string()),
                ("app.kubernetes.io/managed-by".to_string(), "otafleet-operator".to_string()),
                (JOB_UID_LABEL.to_string(), uid),
                (POD_LABEL.to_string(), name.clone()),
            ])),
            annotations: Some(BTreeMap::from([
                (UUID_ANNOTATION.to_string(), uuid.to_string()),
                (JOB_ANNOTATION.to_string(), job.name_any()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        };
        let spec = &job.spec;
        let prop = |over: &Option<String>, key: &str| {
            over.clone().or_else(|| device.property(key).map(str::to_string)).unwrap_or_default()
        };
        let env = [
            ("FIRMWARE", spec.firmware.clone()),
            ("UUID", uuid.to_string()),
            ("HOST_ENDPOINT", prop(&spec.host_endpoint, akri::HOST_ENDPOINT)),
            ("DEVICE", prop(&spec.device, akri::DEVICE)),
            ("APPLICATION_TYPE", prop(&spec.application_type, akri::APPLICATION_TYPE)),
            ("VERSION", spec.version.clone()),
            ("EXTERNAL_IP", spec.external_ip.clone().unwrap_or_default()),
        ]
        .into_iter()
        .map(|(name, value)| EnvVar { name: name.into(), value: Some(value), value_from: None })
        .collect();
        let pod = Pod {
            metadata: meta.clone(),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                containers: vec![Container {
                    name: "flasher".into(),
                    image: Some(image.into()),
                    env: Some(env),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: FLASHER_PORT,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let service = Service {
            metadata: meta,
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([(POD_LABEL.to_string(), name.clone())])),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: FLASHER_PORT,
                    target_port: Some(IntOrString::Int(FLASHER_PORT)),
                    ..Default::default()
                }]),
                external_ips: spec.external_ip.clone().map(|ip| vec![ip]),
                ..Default::default()
            }),
            status: None,
        };
        ignore_conflict(self.pods.create(&PostParams::default(), &pod).await.map(drop))?;
        ignore_conflict(self.services.create(&PostParams::default(), &service).await.map(drop))?;
        debug!(pod = %name, uuid, "created flash pod");
        Ok(())
    }

    async fn delete_pair(&self, name: &str) -> Result<()> {
        ignore_not_found(self.pods.delete(name, &DeleteParams::default()).await.map(drop))?;
        ignore_not_found(self.services.delete(name, &DeleteParams::default()).await.map(drop))?;
        Ok(())
    }

    /// Deletes every pod and Service of the job; returns how many objects went.
    async fn delete_all(&self) -> Result<usize> {
        let lp = ListParams::default().labels(&self.selector);
        let pods = self.pods.list_metadata(&lp).await?;
        let services = self.services.list_metadata(&lp).await?;
        let mut n = 0;
        for p in pods.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            ignore_not_found(self.pods.delete(&p.name_any(), &DeleteParams::default()).await.map(drop))?;
            n += 1;
        }
        for s in &services.items {
            ignore_not_found(self.services.delete(&s.name_any(), &DeleteParams::default()).await.map(drop))?;
            n += 1;
        }
        Ok(n)
    }
}

fn ignore_conflict(r: std::result::Result<(), kube::Error>) -> Result<()> {
    match r {
        Err(e) if is_conflict(&e) => Ok(()),
        other => Ok(other?),
    }
}

fn ignore_not_found(r: std::result::Result<(), kube::Error>) -> Result<()> {
    match r {
        Err(e) if is_not_found(&e) => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_deterministic_and_valid() {
        let a = pod_name("flash-thermo", "7d7ae2b1-0000-4000-8000-000000000001");
        assert_eq!(a, pod_name("flash-thermo", "7d7ae2b1-0000-4000-8000-000000000001"));
        assert!(a.starts_with("flash-flash-thermo-7d7ae2b1"));
        let b = pod_name("flash-thermo", "7d7ae2b1-0000-4000-8000-000000000002");
        assert_ne!(a, b, "shared prefix must not collide");
        let long = pod_name(&"x".repeat(200), "7d7ae2b1-0000-4000-8000-000000000001");
        assert!(long.len() <= 63, "{long}");
        assert_ne!(long, pod_name(&format!("{}y", "x".repeat(200)), "7d7ae2b1"));
        for name in [a, b, long] {
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            assert!(!name.ends_with('-'));
        }
    }

    #[test]
    fn dedup_keeps_order() {
        let v: Vec<String> = ["b", "a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(dedup(&v), vec!["b", "a", "c"]);
    }
}
