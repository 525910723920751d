//! `otafleet update`: the original tracker's canary/blue/green pod updater.
//!
//! Selects pods (or, with `--kind`, Deployments/StatefulSets/DaemonSets) by label
//! selector — default `status=idle`, all namespaces unless `--namespace` — takes
//! the wave's share (canary 1, blue `--count` (2), green all) in a stable
//! namespace/name order, and patches each with `sw_version=<version>`,
//! `status=updated` and, with `--image`, the container image. Workloads are then
//! waited on until their rollout is ready.
//!
//! Every patch is a JSON merge patch carrying the `resourceVersion` just read, so
//! a concurrent writer yields 409 and the object is re-read and patched again;
//! 5xx/429/transport errors are retried with exponential backoff. If any object
//! of the wave fails, the objects already patched get their previous labels and
//! images back, and the error carries the [`UpdateReport`] so the caller can
//! record the failed job.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::error::{is_conflict, Error, Result};
use crate::parse_duration;

/// Label set to the new version.
pub const VERSION_LABEL: &str = "sw_version";
/// Label set to `updated`.
pub const STATUS_LABEL: &str = "status";

/// The tracker's rollout waves.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wave {
    /// One object.
    Canary,
    /// `--count` objects (default 2).
    Blue,
    /// Every selected object.
    Green,
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
    fn resource(self) -> ApiResource {
        match self {
            WorkloadKind::Pod => ApiResource::erase::<Pod>(&()),
            WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
            WorkloadKind::Statefulset => ApiResource::erase::<StatefulSet>(&()),
            WorkloadKind::Daemonset => ApiResource::erase::<DaemonSet>(&()),
        }
    }

    fn containers_path(self) -> &'static str {
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
    /// Wave: canary (1), blue (--count), green (all).
    #[arg(long, value_enum, default_value = "canary")]
    pub wave: Wave,
    /// Objects in a blue wave.
    #[arg(long)]
    pub count: Option<usize>,
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

/// What an update did; returned on success and carried by [`UpdateFailed`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpdateReport {
    /// Version rolled out.
    pub version: String,
    /// Wave.
    pub wave: Wave,
    /// Candidates matching the selector.
    pub candidates: usize,
    /// Objects patched (and, for workloads, rolled out).
    pub updated: Vec<ObjectRef>,
    /// Objects restored after a failure.
    pub rolled_back: Vec<ObjectRef>,
    /// Wall time.
    pub duration: Duration,
}

/// A wave that failed; `report` says what was updated and rolled back.
#[derive(Debug, thiserror::Error)]
#[error("{} wave of {} failed after updating {} objects (rolled back {}): {source}", wave_name(report.wave), report.version, report.updated.len(), report.rolled_back.len())]
pub struct UpdateFailed {
    /// What happened before and after the failure.
    pub report: UpdateReport,
    /// The failure.
    #[source]
    pub source: Error,
}

fn wave_name(w: Wave) -> &'static str {
    match w {
        Wave::Canary => "canary",
        Wave::Blue => "blue",
        Wave::Green => "green",
    }
}

/// `otafleet update`. On failure the error downcasts to [`UpdateFailed`].
pub async fn update(args: UpdateArgs) -> anyhow::Result<UpdateReport> {
    Ok(update_with(&args).await?)
}

/// Labels and images before the update, to roll back to.
struct Previous {
    target: ObjectRef,
    version: Option<String>,
    status: Option<String>,
    containers: Value,
}

/// [`update`] with a typed error.
pub async fn update_with(args: &UpdateArgs) -> std::result::Result<UpdateReport, UpdateFailed> {
    let started = Instant::now();
    let mut report = UpdateReport {
        version: args.version.clone(),
        wave: args.wave,
        candidates: 0,
        updated: Vec::new(),
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

fn api(client: &kube::Client, kind: WorkloadKind, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = kind.resource();
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

async fn run_wave(args: &UpdateArgs, report: &mut UpdateReport, done: &mut Vec<Previous>) -> Result<()> {
    if args.kind != WorkloadKind::Pod && args.image.is_none() {
        return Err(Error::Invalid(format!("--kind {:?} needs --image", args.kind).to_lowercase()));
    }
    let client = crate::client_from_kubeconfig(args.kubeconfig.as_deref()).await?;
    let lp = ListParams::default().labels(&args.selector);
    let all = api(&client, args.kind, args.namespace.as_deref());
    let listed = with_backoff(args, || all.list(&lp)).await?;
    let mut candidates: Vec<DynamicObject> =
        listed.items.into_iter().filter(|o| o.metadata.deletion_timestamp.is_none()).collect();
    candidates.sort_by_key(|o| (o.namespace().unwrap_or_default(), o.name_any()));
    report.candidates = candidates.len();
    let take = match args.wave {
        Wave::Canary => 1,
        Wave::Blue => args.count.unwrap_or(2),
        Wave::Green => candidates.len(),
    };
    candidates.truncate(take);
    info!(wave = wave_name(args.wave), selected = candidates.len(), "updating");

    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(candidates.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    for obj in &candidates {
        let target =
            ObjectRef { kind: args.kind, namespace: obj.namespace().unwrap_or_default(), name: obj.name_any() };
        bar.set_message(target.name.clone());
        let namespaced = api(&client, args.kind, Some(&target.namespace));
        let prev = patch_guarded(args, &namespaced, &target, |current| {
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
            wait_rollout(args, &namespaced, &target).await?;
        }
        report.updated.push(target);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

fn label(obj: &Value, key: &str) -> Option<String> {
    obj.pointer("/metadata/labels").and_then(|l| l.get(key)).and_then(Value::as_str).map(str::to_string)
}

fn with_image(obj: &Value, kind: WorkloadKind, image: &str, container: Option<&str>) -> Value {
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

fn set_path(doc: &mut Value, path: &str, value: Value) {
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
async fn patch_guarded(
    args: &UpdateArgs,
    api: &Api<DynamicObject>,
    target: &ObjectRef,
    build: impl Fn(&Value) -> Value,
) -> Result<Previous> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = serde_json::to_value(with_backoff(args, || api.get(&target.name)).await?)?;
        let mut patch = build(&current);
        set_path(
            &mut patch,
            "/metadata/resourceVersion",
            current.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null),
        );
        let (pp, merge) = (PatchParams::default(), Patch::Merge(&patch));
        let res = with_backoff(args, || api.patch(&target.name, &pp, &merge)).await;
        match res {
            Ok(_) => {
                return Ok(Previous {
                    target: target.clone(),
                    version: label(&current, VERSION_LABEL),
                    status: label(&current, STATUS_LABEL),
                    containers: current.pointer(target.kind.containers_path()).cloned().unwrap_or(Value::Null),
                })
            }
            Err(Error::Kube(e)) if is_conflict(&e) && attempt < args.max_retries.max(1) => {
                info!(target = %target, "conflict, re-reading");
            }
            Err(e) => return Err(e),
        }
    }
}

async fn rollback(client: &kube::Client, args: &UpdateArgs, prev: &Previous) -> Result<()> {
    let api = api(client, prev.target.kind, Some(&prev.target.namespace));
    patch_guarded(args, &api, &prev.target, |_| {
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

fn rollout_ready(kind: WorkloadKind, obj: &Value) -> bool {
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
    loop {
        let obj = serde_json::to_value(with_backoff(args, || api.get(&target.name)).await?)?;
        if rollout_ready(target.kind, &obj) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!("rollout of {target}")));
        }
        tokio::time::sleep(Duration::from_millis(100).min(args.rollout_timeout)).await;
    }
}

/// Retries `f` on 5xx/429/transport errors, doubling the delay each time.
async fn with_backoff<T, F, Fut>(args: &UpdateArgs, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, kube::Error>>,
{
    let mut delay = args.retry_base;
    let mut attempt = 1;
    loop {
        match f().await.map_err(Error::from) {
            Err(e) if e.is_retryable() && attempt < args.max_retries.max(1) => {
                warn!(error = %e, attempt, "retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
            other => return other,
        }
    }
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

    #[test]
    fn image_is_set_on_the_named_container_only() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let c = with_image(&pod, WorkloadKind::Pod, "z", Some("b"));
        assert_eq!(c, json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]));
    }
}
