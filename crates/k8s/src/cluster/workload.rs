//! One workload's action, run in a task of its own: an image (or an app
//! spec) set, readiness waited for, the previous state restored when it
//! does not come.

use std::time::{Duration, Instant};

use kube::api::DynamicObject;
use kube::Api;
use otafleet_core::protocol::ActionOrder;
use otafleet_core::{ActionKind, ActionState, DeviceHealth};
use serde_json::{json, Value};

use super::{
    annotation, containers_of, pod_ready, restarts, rollout_ready, stuck_reason, target_image, workload_health,
    workload_version, Reporter, IMAGE_ANNOTATION, MAX_RESTARTS, PREVIOUS_IMAGE_ANNOTATION, PREVIOUS_VERSION_ANNOTATION,
};
use crate::error::Result;
use crate::update::{self, call, patch_guarded, ObjectRef, Retries, WorkloadKind};

/// One workload's action, run in a task of its own.
pub(super) struct WorkloadJob {
    pub(super) client: kube::Client,
    pub(super) retries: Retries,
    pub(super) timeout: Duration,
    pub(super) container: Option<String>,
    pub(super) object: ObjectRef,
    pub(super) device: uuid::Uuid,
}

impl WorkloadJob {
    pub(super) async fn execute(&self, order: &ActionOrder, r: &mut Reporter) -> Result<()> {
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

/// The status of a pod's container on `image` (a registry may spell it
/// out: `docker.io/library/…`), if there is one.
fn status_on<'a>(obj: &'a Value, image: &str) -> Option<&'a Value> {
    let statuses = obj.pointer("/status/containerStatuses").and_then(Value::as_array)?;
    statuses.iter().find(|s| {
        s.get("image").and_then(Value::as_str).is_some_and(|i| i == image || i.ends_with(&format!("/{image}")))
    })
}

/// Whether a pod's status shows a container on `image`, ready or not.
fn pod_runs_image(obj: &Value, image: &str) -> bool {
    status_on(obj, image).is_some()
}

/// Whether a pod's status shows the container on `image` ready.
fn pod_runs(obj: &Value, image: &str) -> bool {
    status_on(obj, image).is_some_and(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
}
