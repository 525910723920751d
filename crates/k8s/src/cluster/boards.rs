//! Boards: the Akri Instances' actions, flashed by one FlashJob per batch.

use std::collections::BTreeMap;

use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use otafleet_core::protocol::ActionOrder;
use otafleet_core::ActionState;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::info;

use super::{ClusterAgent, Kind, Reporter, Target, CREATED_ANNOTATION, MANAGED_LABEL, REPORTED_ANNOTATION};
use crate::crd::{FlashJob, FlashJobSpec, Phase};
use crate::error::Error;
use crate::update::call;

/// What the cluster holds of FlashJobs, for boards.
#[derive(Default)]
pub(super) struct Flashes {
    /// Every FlashJob (of the boards' namespaces).
    pub(super) jobs: Vec<FlashJob>,
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
    pub(super) fn last_flash(&self, uuid: &str) -> Option<&FlashJob> {
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

impl ClusterAgent {
    /// The boards' actions of this poll: those done reported, those being
    /// flashed followed, the rest flashed by one FlashJob per batch.
    pub(super) async fn boards(&self, actions: Vec<(Target, ActionOrder)>, flashes: &Flashes) -> anyhow::Result<()> {
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
