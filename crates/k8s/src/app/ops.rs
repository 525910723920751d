//! `otafleet app render|apply|status|update|delete` against the current
//! kubeconfig's cluster (or `--kubeconfig`). `apply` is server-side apply
//! (field manager `otafleet`), so applying the same spec again changes
//! nothing; it then waits for every Deployment of the app to be rolled out
//! and ready, and fails with the pods' reason when they will not be.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use otafleet_core::duration::parse_arg as parse_duration;
use serde_json::{json, Value};

use super::{parse, render, to_yaml, APP_CONTAINER, APP_LABEL};
use crate::update::{self, call, patch_guarded, ObjectRef, Retries, WorkloadKind};

/// `otafleet app …`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum AppCmd {
    /// Print the manifests a spec renders to (YAML; `-o json` for JSON).
    Render {
        /// The spec (ours, a Rigelfile, or its orchestration block).
        file: PathBuf,
    },
    /// Apply a spec (server-side apply) and wait until the app is ready.
    Apply {
        /// The spec (ours, a Rigelfile, or its orchestration block).
        file: PathBuf,
        /// How long to wait for readiness (default: the spec's readiness.timeout_seconds, else 5m).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Pods, readiness, versions and the ROS master of an app.
    Status {
        /// The app's name.
        name: String,
        /// Its namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Rolling update of the app's image; waits until it is ready.
    Update {
        /// The app's name.
        name: String,
        /// The new image of `ros-app`.
        #[arg(long)]
        image: String,
        /// The version it is (default: the image's tag).
        #[arg(long)]
        version: Option<String>,
        /// Its namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// How long to wait for readiness.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Remove everything `apply` made for the app (claims only with --delete-volumes).
    Delete {
        /// The app's name.
        name: String,
        /// Its namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Also delete the volume claims (and so the data).
        #[arg(long)]
        delete_volumes: bool,
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

const RETRIES: Retries = Retries { max_retries: 5, retry_base: Duration::from_millis(200) };

fn read_spec(file: &PathBuf) -> anyhow::Result<super::AppSpec> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn resource_of(o: &Value) -> anyhow::Result<ApiResource> {
    let api_version = o["apiVersion"].as_str().context("apiVersion")?;
    let kind = o["kind"].as_str().context("kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Ok(ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind)))
}

/// `otafleet app …`; `json` prints JSON instead of YAML or tables.
pub async fn run_app(cmd: AppCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        AppCmd::Render { file } => {
            let objects = render(&read_spec(&file)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&objects)?);
            } else {
                print!("{}", to_yaml(&objects)?);
            }
            Ok(())
        }
        AppCmd::Apply { file, timeout, kubeconfig } => {
            let spec = read_spec(&file)?;
            let mut objects = render(&spec)?;
            super::annotate(&mut objects, &spec, None);
            let client = crate::client_from_kubeconfig(kubeconfig.as_deref()).await?;
            for line in apply_objects(&client, &spec.namespace, &objects).await? {
                eprintln!("{line}");
            }
            let timeout = timeout
                .or_else(|| spec.readiness.as_ref().and_then(|r| r.timeout_seconds).map(Duration::from_secs))
                .unwrap_or(Duration::from_secs(300));
            let deployments: Vec<String> = objects
                .iter()
                .filter(|o| o["kind"] == "Deployment")
                .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            wait_ready(&client, &spec.namespace, &spec.name, &deployments, timeout).await?;
            eprintln!("app {} is ready ({} {})", spec.name, spec.image, spec.app_version());
            Ok(())
        }
        AppCmd::Status { name, namespace, kubeconfig } => {
            let client = crate::client_from_kubeconfig(kubeconfig.as_deref()).await?;
            let status = status(&client, &namespace, &name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        AppCmd::Update { name, image, version, namespace, timeout, kubeconfig } => {
            otafleet_core::validate::image(&image).map_err(|m| anyhow::anyhow!("--image: {m}"))?;
            let version = version.unwrap_or_else(|| crate::cluster::image_version(&image));
            otafleet_core::validate::version(&version).map_err(|m| anyhow::anyhow!("--version: {m}"))?;
            let client = crate::client_from_kubeconfig(kubeconfig.as_deref()).await?;
            let target = ObjectRef { kind: WorkloadKind::Deployment, namespace: namespace.clone(), name: name.clone() };
            let api = update::api(&client, WorkloadKind::Deployment, Some(&namespace));
            let owned = call(&RETRIES, || api.get_opt(&name)).await?;
            if owned.as_ref().is_none_or(|d| d.labels().get(APP_LABEL) != Some(&name)) {
                bail!("no app '{name}' in namespace {namespace} (no Deployment {name} labelled {APP_LABEL}={name})");
            }
            let label = super::label_safe(&version);
            patch_guarded(&RETRIES, &api, &target, |now| {
                let containers = update::with_image(now, WorkloadKind::Deployment, &image, Some(APP_CONTAINER));
                let mut patch = json!({"metadata": {"labels": {"sw_version": label, "app.kubernetes.io/version": label}},
                    "spec": {"template": {"metadata": {"labels": {"sw_version": label, "app.kubernetes.io/version": label}}}}});
                update::set_path(&mut patch, WorkloadKind::Deployment.containers_path(), containers);
                patch
            })
            .await?;
            wait_ready(&client, &namespace, &name, std::slice::from_ref(&name), timeout).await?;
            eprintln!("app {name} updated to {image} ({version})");
            Ok(())
        }
        AppCmd::Delete { name, namespace, delete_volumes, kubeconfig } => {
            let client = crate::client_from_kubeconfig(kubeconfig.as_deref()).await?;
            let lp = ListParams::default().labels(&format!("{APP_LABEL}={name}"));
            let dp = DeleteParams::default();
            let mut removed = 0;
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
            for d in call(&RETRIES, || deployments.list(&lp)).await?.items {
                let n = d.name_any();
                call(&RETRIES, || deployments.delete(&n, &dp)).await?;
                removed += 1;
            }
            let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
            for s in call(&RETRIES, || services.list(&lp)).await?.items {
                let n = s.name_any();
                call(&RETRIES, || services.delete(&n, &dp)).await?;
                removed += 1;
            }
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
            let kept = call(&RETRIES, || claims.list(&lp)).await?.items;
            if delete_volumes {
                for c in &kept {
                    let n = c.name_any();
                    call(&RETRIES, || claims.delete(&n, &dp)).await?;
                    removed += 1;
                }
            }
            if removed == 0 && kept.is_empty() {
                bail!("no app '{name}' in namespace {namespace} (nothing labelled {APP_LABEL}={name})");
            }
            eprintln!(
                "deleted {removed} objects of app {name}{}",
                if delete_volumes || kept.is_empty() {
                    String::new()
                } else {
                    format!("; kept {} volume claims (--delete-volumes removes them)", kept.len())
                }
            );
            Ok(())
        }
    }
}

/// Server-side applies `objects` (field manager `otafleet`) in order.
pub(crate) async fn apply_objects(
    client: &kube::Client,
    namespace: &str,
    objects: &[Value],
) -> anyhow::Result<Vec<String>> {
    let pp = PatchParams::apply("otafleet").force();
    let mut done = Vec::new();
    for o in objects {
        let ar = resource_of(o)?;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
        let name = o["metadata"]["name"].as_str().context("metadata.name")?.to_string();
        let patch = Patch::Apply(o);
        call(&RETRIES, || api.patch(&name, &pp, &patch)).await?;
        done.push(format!("applied {} {name}", o["kind"].as_str().unwrap_or_default()));
    }
    Ok(done)
}

/// Waits until every named Deployment is rolled out and ready; fails with
/// the reason its pods give (or the timeout).
async fn wait_ready(
    client: &kube::Client,
    namespace: &str,
    app: &str,
    deployments: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(deployments.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {pos}/{len} ready {msg}") {
        bar.set_style(style);
    }
    let api = update::api(client, WorkloadKind::Deployment, Some(namespace));
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    loop {
        let mut ready = 0;
        let mut reason = None;
        for name in deployments {
            let obj = serde_json::to_value(call(&RETRIES, || api.get(name)).await?)?;
            if update::rollout_ready(WorkloadKind::Deployment, &obj) {
                ready += 1;
            } else if let Some(r) = crate::cluster::stuck_reason(WorkloadKind::Deployment, &obj) {
                reason = Some(format!("{name}: {r}"));
            }
        }
        bar.set_position(ready as u64);
        if ready == deployments.len() {
            bar.finish_and_clear();
            return Ok(());
        }
        let lp = ListParams::default().labels(&format!("{APP_LABEL}={app}"));
        for p in call(&RETRIES, || pods.list(&lp)).await?.items {
            let v = serde_json::to_value(&p)?;
            if let Some(r) = crate::cluster::stuck_reason(WorkloadKind::Pod, &v) {
                reason = Some(format!("pod {}: {r}", p.name_any()));
            }
        }
        if let Some(r) = &reason {
            if r.contains("ProgressDeadlineExceeded") || Instant::now() >= deadline {
                bar.finish_and_clear();
                bail!("app {app} is not ready: {r}");
            }
        }
        if Instant::now() >= deadline {
            bar.finish_and_clear();
            bail!(
                "app {app} is not ready within {}s ({ready} of {} Deployments ready)",
                timeout.as_secs(),
                deployments.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `status` shows, as JSON.
async fn status(client: &kube::Client, namespace: &str, app: &str) -> anyhow::Result<Value> {
    let lp = ListParams::default().labels(&format!("{APP_LABEL}={app}"));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let listed = call(&RETRIES, || deployments.list(&lp)).await?.items;
    if listed.is_empty() {
        bail!("no app '{app}' in namespace {namespace} (no Deployment labelled {APP_LABEL}={app})");
    }
    let mut out = Vec::new();
    for d in &listed {
        let v = serde_json::to_value(d)?;
        let image = v.pointer("/spec/template/spec/containers/0/image").cloned().unwrap_or(Value::Null);
        out.push(json!({
            "name": d.name_any(),
            "component": d.labels().get("app.kubernetes.io/component"),
            "version": d.labels().get("sw_version").or(d.labels().get("app.kubernetes.io/version")),
            "image": image,
            "replicas": v.pointer("/spec/replicas"),
            "ready_replicas": v.pointer("/status/readyReplicas").cloned().unwrap_or(json!(0)),
            "ready": update::rollout_ready(WorkloadKind::Deployment, &v),
        }));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pod_rows = Vec::new();
    for p in call(&RETRIES, || pods.list(&lp)).await?.items {
        let v = serde_json::to_value(&p)?;
        let restarts: i64 = v
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(|c| c["restartCount"].as_i64()).sum())
            .unwrap_or(0);
        let ready = v
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        pod_rows.push(json!({"name": p.name_any(), "phase": v.pointer("/status/phase"), "ready": ready,
            "restarts": restarts, "version": p.labels().get("sw_version")}));
    }
    let master = listed.iter().any(|d| d.name_any() == super::ROS_MASTER);
    Ok(json!({"app": app, "namespace": namespace, "ros_master": master, "deployments": out, "pods": pod_rows}))
}

fn print_status(s: &Value) {
    println!(
        "app {} in {} (ROS master: {})",
        s["app"].as_str().unwrap_or_default(),
        s["namespace"].as_str().unwrap_or_default(),
        if s["ros_master"] == true { "yes" } else { "no" }
    );
    println!("{:<28} {:<18} {:<12} {:<8} IMAGE", "DEPLOYMENT", "COMPONENT", "VERSION", "READY");
    for d in s["deployments"].as_array().into_iter().flatten() {
        println!(
            "{:<28} {:<18} {:<12} {:<8} {}",
            d["name"].as_str().unwrap_or_default(),
            d["component"].as_str().unwrap_or("-"),
            d["version"].as_str().unwrap_or("-"),
            format!("{}/{}", d["ready_replicas"], d["replicas"]),
            d["image"].as_str().unwrap_or("-")
        );
    }
    for p in s["pods"].as_array().into_iter().flatten() {
        println!(
            "  pod {:<32} {:<10} ready={} restarts={}",
            p["name"].as_str().unwrap_or_default(),
            p["phase"].as_str().unwrap_or("-"),
            p["ready"],
            p["restarts"]
        );
    }
}
