//! `otafleet update`: the original tracker's canary/blue/green pod updater.
//!
//! Selects pods (or, with `--kind`, Deployments/StatefulSets/DaemonSets) by label
//! selector — default `status=idle`, all namespaces unless `--namespace` — and
//! plans the waves with the core: the preset ([`Preset`]: canary 1, blue
//! `--count` (default
//! [`BLUE_DEFAULT_COUNT`](otafleet_core::strategy::BLUE_DEFAULT_COUNT)), green all,
//! or custom with `--steps 1,10%,100%`, wave after wave) is resolved by
//! [`StrategySpec::resolve`] and the wave sizes come from
//! [`otafleet_core::plan::plan`], one candidate per object (a stable id derived
//! from kind/namespace/name). The objects of a wave are taken in namespace/name
//! order, as the tracker did, so the canary is predictable. Each is patched with
//! `sw_version=<version>`, `status=updated` and, with `--image`, the container
//! image; workloads are then waited on until their rollout is ready.
//!
//! The wave's health is judged by the same gate as a device rollout,
//! [`otafleet_core::engine::verdict`], after every object: a failed object
//! counts against `--failure-threshold` (default 0: one failure fails the wave,
//! the tracker's behaviour), and once every object was tried the updated share
//! must reach `--success-threshold` (default 0: the failure threshold decides,
//! since every object tried either was updated or failed). A passed wave bakes
//! for `--bake-time` before the next wave starts or the update is reported
//! done; failures the gate tolerated are reported in [`UpdateReport::failed`]
//! (an object whose patch went through but whose rollout failed stays patched).
//! When a gate fails, the objects already patched (in any wave) get their
//! previous labels and images back, and the error carries the [`UpdateReport`]
//! so the caller can record the failed job.
//!
//! Every patch is a JSON merge patch carrying the `resourceVersion` just read, so
//! a concurrent writer yields 409 and the object is re-read and patched again;
//! 5xx/429/transport errors ([`Error::is_retryable`]) are retried by
//! [`otafleet_rt::retry`] with exponential backoff from `--retry-base`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use otafleet_core::duration::parse_arg as parse_duration;
use otafleet_core::engine::{verdict, Verdict, WaveCounts};
use otafleet_core::plan::{plan, Candidate};
use otafleet_core::{Preset, Step, Strategy, StrategySpec};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::error::{is_conflict, Error, Result};

/// Label set to the new version.
pub const VERSION_LABEL: &str = "sw_version";
/// Label set to `updated`.
pub const STATUS_LABEL: &str = "status";

/// The presets `--wave` accepts: the tracker's vocabulary, parsed into the
/// core's [`Preset`].
fn wave_parser() -> impl clap::builder::TypedValueParser<Value = Preset> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["canary", "blue", "green", "custom"]).try_map(|s| s.parse::<Preset>())
}

/// What `update` patches.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Pods (labels, optionally the image).
    Pod,
    /// Deployments (image required; waits for the rollout).
    Deployment,
    /// StatefulSets (image required; waits for the rollout).
    Statefulset,
    /// DaemonSets (image required; waits for the rollout).
    Daemonset,
}

impl WorkloadKind {
    pub(crate) fn resource(self) -> ApiResource {
        match self {
            WorkloadKind::Pod => ApiResource::erase::<Pod>(&()),
            WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
            WorkloadKind::Statefulset => ApiResource::erase::<StatefulSet>(&()),
            WorkloadKind::Daemonset => ApiResource::erase::<DaemonSet>(&()),
        }
    }

    pub(crate) fn containers_path(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "/spec/containers",
            _ => "/spec/template/spec/containers",
        }
    }
}

/// `otafleet update VERSION`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpdateArgs {
    /// Version to roll out (written to the `sw_version` label).
    pub version: String,
    /// Wave: canary (1), blue (--count, default 2), green (all), or custom (--steps).
    #[arg(long, default_value = "canary", value_parser = wave_parser())]
    pub wave: Preset,
    /// Objects in a blue wave (ignored by the other waves).
    #[arg(long)]
    pub count: Option<usize>,
    /// Waves of `--wave custom`: cumulative sizes, e.g. `1,10%,100%`; each wave
    /// passes its gate (and bakes) before the next starts.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(Step))]
    pub steps: Vec<Step>,
    /// Label selector of candidates.
    #[arg(long, default_value = "status=idle")]
    pub selector: String,
    /// Only this namespace (default: all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Also set this container image.
    #[arg(long)]
    pub image: Option<String>,
    /// Container to set the image of (default: every container).
    #[arg(long)]
    pub container: Option<String>,
    /// Kind of object to update.
    #[arg(long, value_enum, default_value = "pod")]
    pub kind: WorkloadKind,
    /// How long a workload rollout may take.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub rollout_timeout: Duration,
    /// Attempts per API call on conflicts and server errors.
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// First retry delay; doubles each attempt.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Fraction of a wave's objects that must be updated for it to pass
    /// (default 0: the failure threshold decides).
    #[arg(long)]
    pub success_threshold: Option<f64>,
    /// Fraction of a wave's objects that may fail without rolling the wave back
    /// (0: any failure rolls back).
    #[arg(long, default_value_t = 0.0)]
    pub failure_threshold: f64,
    /// Wait this long after a passed wave before reporting success.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub bake_time: Duration,
}

/// How Kubernetes API calls are retried: `max_retries` attempts in all on
/// conflicts and retryable errors, from `retry_base`, doubling.
#[derive(Clone, Copy, Debug)]
pub struct Retries {
    /// Attempts in all.
    pub max_retries: u32,
    /// First delay.
    pub retry_base: Duration,
}

impl UpdateArgs {
    fn retries(&self) -> Retries {
        Retries { max_retries: self.max_retries, retry_base: self.retry_base }
    }
}

/// One object touched by an update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectRef {
    /// `pod`, `deployment`, ...
    pub kind: WorkloadKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// An object of a wave that could not be updated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedObject {
    /// The object.
    pub target: ObjectRef,
    /// Why (the API error, or the rollout timeout).
    pub error: String,
}

impl std::fmt::Display for FailedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.target, self.error)
    }
}

/// What an update did; returned on success and carried by [`UpdateFailed`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpdateReport {
    /// Version rolled out.
    pub version: String,
    /// Wave preset.
    pub wave: Preset,
    /// Candidates matching the selector.
    pub candidates: usize,
    /// Objects patched (and, for workloads, rolled out).
    pub updated: Vec<ObjectRef>,
    /// Objects that failed; on success, the failures the gate tolerated.
    pub failed: Vec<FailedObject>,
    /// Objects restored after a failure.
    pub rolled_back: Vec<ObjectRef>,
    /// Wall time.
    pub duration: Duration,
}

/// A wave that failed; `report` says what was updated and rolled back.
#[derive(Debug, thiserror::Error)]
#[error("{} wave of {} failed after updating {} objects (rolled back {}): {source}", report.wave, report.version, report.updated.len(), report.rolled_back.len())]
pub struct UpdateFailed {
    /// What happened before and after the failure.
    pub report: UpdateReport,
    /// The failure.
    #[source]
    pub source: Error,
}

/// `otafleet update`. On failure the error downcasts to [`UpdateFailed`].
pub async fn update(args: UpdateArgs) -> anyhow::Result<UpdateReport> {
    Ok(update_with(&args).await?)
}

/// Labels and images before the update, to roll back to.
pub(crate) struct Previous {
    pub(crate) target: ObjectRef,
    pub(crate) version: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) containers: Value,
}

/// [`update`] with a typed error.
pub async fn update_with(args: &UpdateArgs) -> std::result::Result<UpdateReport, UpdateFailed> {
    let started = Instant::now();
    let mut report = UpdateReport {
        version: args.version.clone(),
        wave: args.wave,
        candidates: 0,
        updated: Vec::new(),
        failed: Vec::new(),
        rolled_back: Vec::new(),
        duration: Duration::ZERO,
    };
    let mut done: Vec<Previous> = Vec::new();
    let result = run_wave(args, &mut report, &mut done).await;
    let client = match &result {
        Ok(()) => None,
        Err(_) => crate::client_from_kubeconfig(args.kubeconfig.as_deref()).await.ok(),
    };
    match (result, client) {
        (Ok(()), _) => {
            report.duration = started.elapsed();
            Ok(report)
        }
        (Err(source), client) => {
            if let Some(client) = client {
                for prev in done.iter().rev() {
                    match rollback(&client, args, prev).await {
                        Ok(()) => report.rolled_back.push(prev.target.clone()),
                        Err(e) => warn!(target = %prev.target, error = %e, "rollback failed"),
                    }
                }
            }
            report.duration = started.elapsed();
            Err(UpdateFailed { report, source })
        }
    }
}

pub(crate) fn api(client: &kube::Client, kind: WorkloadKind, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = kind.resource();
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// The strategy of this update: the preset and gate flags resolved by the core.
pub fn strategy(args: &UpdateArgs) -> Result<Strategy> {
    let spec = StrategySpec {
        preset: Some(args.wave),
        // The tracker ignored --count outside a blue wave; the core refuses it there.
        count: match args.wave {
            Preset::Blue => args.count.map(|n| n as u64),
            _ => None,
        },
        steps: (!args.steps.is_empty()).then(|| args.steps.clone()),
        success_threshold: Some(args.success_threshold.unwrap_or(0.0)),
        failure_threshold: Some(args.failure_threshold),
        bake_time_secs: Some(args.bake_time.as_secs() + u64::from(args.bake_time.subsec_nanos() > 0)),
        ..Default::default()
    };
    spec.resolve(0).map_err(|e| Error::Invalid(format!("update strategy: {e}")))
}

/// A stable planner id for an object: kind, namespace and name hashed into a
/// UUID (version 8), the same on every run.
pub fn object_id(target: &ObjectRef) -> uuid::Uuid {
    let key = format!("{:?}/{}/{}", target.kind, target.namespace, target.name);
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The objects of each planned wave, in namespace/name order: the wave sizes
/// come from the core's planner over `objects`, the order from `objects`.
pub fn plan_waves(objects: &[ObjectRef], strategy: &Strategy) -> Vec<Vec<ObjectRef>> {
    let candidates =
        objects.iter().map(|o| Candidate { id: object_id(o), online: true, healthy: true }).collect::<Vec<_>>();
    let mut rest = objects;
    let mut waves = Vec::new();
    for wave in plan(candidates, strategy).waves {
        let (this, next) = rest.split_at(wave.len().min(rest.len()));
        waves.push(this.to_vec());
        rest = next;
    }
    waves
}

async fn run_wave(args: &UpdateArgs, report: &mut UpdateReport, done: &mut Vec<Previous>) -> Result<()> {
    if args.kind != WorkloadKind::Pod && args.image.is_none() {
        return Err(Error::Invalid(format!("--kind {:?} needs --image", args.kind).to_lowercase()));
    }
    let strategy = strategy(args)?;
    let client = crate::client_from_kubeconfig(args.kubeconfig.as_deref()).await?;
    let lp = ListParams::default().labels(&args.selector);
    let all = api(&client, args.kind, args.namespace.as_deref());
    let listed = call(&args.retries(), || all.list(&lp)).await?;
    let mut objects: Vec<ObjectRef> = listed
        .items
        .into_iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .map(|o| ObjectRef { kind: args.kind, namespace: o.namespace().unwrap_or_default(), name: o.name_any() })
        .collect();
    objects.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    report.candidates = objects.len();
    let waves = plan_waves(&objects, &strategy);
    let selected: usize = waves.iter().map(Vec::len).sum();
    info!(wave = %args.wave, selected, "updating");

    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(selected as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    let gate = &strategy.gate;
    for (index, wave) in waves.iter().enumerate() {
        let total = wave.len() as u64;
        let mut counts = WaveCounts { total, scheduled: total, ready: total, ..WaveCounts::default() };
        let mut failures = Vec::new();
        for target in wave {
            bar.set_message(target.name.clone());
            counts.scheduled -= 1;
            counts.ready -= 1;
            match update_one(args, &client, target, done).await {
                Ok(()) => {
                    counts.succeeded += 1;
                    report.updated.push(target.clone());
                }
                Err(e) => {
                    warn!(target = %target, error = %e, "update failed");
                    counts.failed += 1;
                    failures.push(format!("{target}: {e}"));
                    report.failed.push(FailedObject { target: target.clone(), error: e.to_string() });
                }
            }
            bar.inc(1);
            // One object at a time: nothing is in flight between two verdicts.
            if let Verdict::Fail(reason) = verdict(gate, index, &counts, counts.scheduled == 0) {
                bar.finish_and_clear();
                return Err(Error::Gate { reason, failures });
            }
        }
        match verdict(gate, index, &counts, true) {
            Verdict::Pass => {
                if !failures.is_empty() {
                    warn!(wave = index, failed = failures.len(), "wave passed its gate despite failures");
                }
                if !args.bake_time.is_zero() {
                    bar.set_message("baking");
                    tokio::time::sleep(args.bake_time).await;
                }
            }
            // The loop above already returns on Fail; with nothing in flight the
            // verdict is final, so Wait cannot happen either.
            Verdict::Fail(reason) => return Err(Error::Gate { reason, failures }),
            Verdict::Wait => {
                return Err(Error::Gate { reason: format!("wave {index} undecided with nothing in flight"), failures })
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Patches one object (and waits for its rollout); what it was before goes to `done`.
async fn update_one(
    args: &UpdateArgs,
    client: &kube::Client,
    target: &ObjectRef,
    done: &mut Vec<Previous>,
) -> Result<()> {
    let namespaced = api(client, args.kind, Some(&target.namespace));
    let prev = patch_guarded(&args.retries(), &namespaced, target, |current| {
        let mut patch = json!({"metadata": {"labels": {
            VERSION_LABEL: args.version, STATUS_LABEL: "updated"
        }}});
        if let Some(image) = &args.image {
            let containers = with_image(current, args.kind, image, args.container.as_deref());
            set_path(&mut patch, args.kind.containers_path(), containers);
        }
        patch
    })
    .await?;
    done.push(prev);
    if args.kind != WorkloadKind::Pod {
        wait_rollout(args, &namespaced, target).await?;
    }
    Ok(())
}

pub(crate) fn label(obj: &Value, key: &str) -> Option<String> {
    obj.pointer("/metadata/labels").and_then(|l| l.get(key)).and_then(Value::as_str).map(str::to_string)
}

pub(crate) fn with_image(obj: &Value, kind: WorkloadKind, image: &str, container: Option<&str>) -> Value {
    let mut containers = obj.pointer(kind.containers_path()).cloned().unwrap_or(json!([]));
    if let Some(list) = containers.as_array_mut() {
        for c in list {
            if container.is_none_or(|want| c.get("name").and_then(Value::as_str) == Some(want)) {
                c["image"] = json!(image);
            }
        }
    }
    containers
}

pub(crate) fn set_path(doc: &mut Value, path: &str, value: Value) {
    let mut cur = doc;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i + 1 == parts.len() {
            cur[*p] = value;
            return;
        }
        cur = &mut cur[*p];
    }
}

/// Reads the object, builds a patch from it and applies it with the read
/// resourceVersion; on 409 reads again. Returns the state before the patch.
pub(crate) async fn patch_guarded(
    retries: &Retries,
    api: &Api<DynamicObject>,
    target: &ObjectRef,
    build: impl Fn(&Value) -> Value,
) -> Result<Previous> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = serde_json::to_value(call(retries, || api.get(&target.name)).await?)?;
        let mut patch = build(&current);
        set_path(
            &mut patch,
            "/metadata/resourceVersion",
            current.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null),
        );
        let (pp, merge) = (PatchParams::default(), Patch::Merge(&patch));
        let res = call(retries, || api.patch(&target.name, &pp, &merge)).await;
        match res {
            Ok(_) => {
                return Ok(Previous {
                    target: target.clone(),
                    version: label(&current, VERSION_LABEL),
                    status: label(&current, STATUS_LABEL),
                    containers: current.pointer(target.kind.containers_path()).cloned().unwrap_or(Value::Null),
                })
            }
            Err(Error::Kube(e)) if is_conflict(&e) && attempt < retries.max_retries.max(1) => {
                info!(target = %target, "conflict, re-reading");
            }
            Err(e) => return Err(e),
        }
    }
}

async fn rollback(client: &kube::Client, args: &UpdateArgs, prev: &Previous) -> Result<()> {
    let api = api(client, prev.target.kind, Some(&prev.target.namespace));
    patch_guarded(&args.retries(), &api, &prev.target, |_| {
        let mut patch = json!({"metadata": {"labels": {
            VERSION_LABEL: prev.version, STATUS_LABEL: prev.status
        }}});
        if args.image.is_some() && !prev.containers.is_null() {
            set_path(&mut patch, prev.target.kind.containers_path(), prev.containers.clone());
        }
        patch
    })
    .await?;
    if prev.target.kind != WorkloadKind::Pod {
        wait_rollout(args, &api, &prev.target).await?;
    }
    Ok(())
}

pub(crate) fn rollout_ready(kind: WorkloadKind, obj: &Value) -> bool {
    let int = |p: &str| obj.pointer(p).and_then(Value::as_i64);
    let generation = int("/metadata/generation").unwrap_or(0);
    if int("/status/observedGeneration").unwrap_or(-1) < generation {
        return false;
    }
    match kind {
        WorkloadKind::Pod => true,
        WorkloadKind::Deployment | WorkloadKind::Statefulset => {
            let want = int("/spec/replicas").unwrap_or(1);
            int("/status/updatedReplicas").unwrap_or(0) == want && int("/status/readyReplicas").unwrap_or(0) == want
        }
        WorkloadKind::Daemonset => {
            let want = int("/status/desiredNumberScheduled").unwrap_or(0);
            int("/status/updatedNumberScheduled").unwrap_or(-1) == want
                && int("/status/numberAvailable").unwrap_or(-1) == want
        }
    }
}

async fn wait_rollout(args: &UpdateArgs, api: &Api<DynamicObject>, target: &ObjectRef) -> Result<()> {
    let deadline = Instant::now() + args.rollout_timeout;
    let retries = args.retries();
    loop {
        let obj = serde_json::to_value(call(&retries, || api.get(&target.name)).await?)?;
        if rollout_ready(target.kind, &obj) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!("rollout of {target}")));
        }
        tokio::time::sleep(Duration::from_millis(100).min(args.rollout_timeout)).await;
    }
}

/// Runs one API call, retrying 5xx/429/transport errors ([`Error::is_retryable`])
/// up to `--max-retries` attempts in all, waiting `--retry-base`, doubling each
/// time up to 10 s.
pub(crate) async fn call<T, F, Fut>(retries: &Retries, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, kube::Error>>,
{
    let policy =
        otafleet_rt::Retry::new(retries.retry_base, Duration::from_secs(10)).attempts(retries.max_retries.max(1));
    otafleet_rt::retry(&policy, Error::is_retryable, || {
        let attempt = f();
        async move { attempt.await.map_err(Error::from) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_readiness() {
        let ready = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "readyReplicas": 2}});
        assert!(rollout_ready(WorkloadKind::Deployment, &ready));
        let stale = json!({"metadata": {"generation": 3}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "readyReplicas": 2}});
        assert!(!rollout_ready(WorkloadKind::Deployment, &stale));
    }

    fn args(wave: Preset, count: Option<usize>) -> UpdateArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: UpdateArgs,
        }
        let mut argv = vec!["update".to_string(), "2.0".into(), "--wave".into(), wave.to_string()];
        if let Some(n) = count {
            argv.extend(["--count".into(), n.to_string()]);
        }
        Cli::try_parse_from(argv).expect("parses").args
    }

    fn objects(n: usize) -> Vec<ObjectRef> {
        (0..n).map(|i| ObjectRef { kind: WorkloadKind::Pod, namespace: "ns".into(), name: format!("p{i}") }).collect()
    }

    #[test]
    fn wave_sizes_come_from_the_core_planner_in_namespace_name_order() {
        let objs = objects(5);
        let sizes = |wave, count| {
            let waves = plan_waves(&objs, &strategy(&args(wave, count)).expect("strategy"));
            waves.iter().map(Vec::len).collect::<Vec<_>>()
        };
        assert_eq!(sizes(Preset::Canary, None), vec![1]);
        assert_eq!(sizes(Preset::Blue, None), vec![otafleet_core::strategy::BLUE_DEFAULT_COUNT as usize]);
        assert_eq!(sizes(Preset::Blue, Some(4)), vec![4]);
        assert_eq!(sizes(Preset::Canary, Some(4)), vec![1], "--count only applies to blue, as before");
        assert_eq!(sizes(Preset::Green, None), vec![5]);
        let mut custom = args(Preset::Custom, None);
        custom.steps = vec![Step::Count(1), Step::Percent(50.0), Step::Percent(100.0)];
        let waves = plan_waves(&objs, &strategy(&custom).expect("custom"));
        assert_eq!(waves.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 2, 2]);
        assert_eq!(waves.concat(), objs, "every object once, in order");
        assert!(strategy(&args(Preset::Custom, None)).is_err(), "custom needs --steps");
        let mut green = args(Preset::Green, None);
        green.steps = vec![Step::Count(1)];
        assert!(strategy(&green).is_err(), "--steps only with --wave custom");
        let waves = plan_waves(&objs, &strategy(&args(Preset::Blue, Some(3))).expect("strategy"));
        assert_eq!(waves[0], objs[..3].to_vec());
        assert!(plan_waves(&[], &strategy(&args(Preset::Green, None)).expect("strategy")).is_empty());
    }

    #[test]
    fn the_default_gate_fails_on_any_failure() {
        let s = strategy(&args(Preset::Green, None)).expect("strategy");
        assert_eq!((s.gate.failure_threshold, s.gate.success_threshold, s.gate.bake_time_secs), (0.0, 0.0, 0));
        let one_failed = WaveCounts { total: 3, scheduled: 2, ready: 2, failed: 1, ..Default::default() };
        assert!(matches!(verdict(&s.gate, 0, &one_failed, false), Verdict::Fail(_)));
        let mut a = args(Preset::Green, None);
        a.failure_threshold = 1.5;
        assert!(strategy(&a).is_err(), "thresholds are fractions");
    }

    #[test]
    fn object_ids_are_stable_and_distinct() {
        let objs = objects(3);
        assert_eq!(object_id(&objs[0]), object_id(&objs[0].clone()));
        assert_ne!(object_id(&objs[0]), object_id(&objs[1]));
        let deployment = ObjectRef { kind: WorkloadKind::Deployment, ..objs[0].clone() };
        assert_ne!(object_id(&objs[0]), object_id(&deployment));
    }

    #[test]
    fn image_is_set_on_the_named_container_only() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let c = with_image(&pod, WorkloadKind::Pod, "z", Some("b"));
        assert_eq!(c, json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]));
    }
}
