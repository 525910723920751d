//! FlashJob controller scenarios against the fake API server.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use otafleet_k8s::crd::{FlashJob, Phase};
use otafleet_k8s::fake::fixtures::{akri_instance, device_uuid, fast_settings, flash_job, wait_for, RunningOperator};
use otafleet_k8s::fake::FakeApiServer;

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(15);

async fn setup(devices: usize) -> FakeApiServer {
    let fake = FakeApiServer::start().await.expect("fake server starts");
    for n in 0..devices {
        fake.insert(&akri_instance(NS, &format!("esp32-{n}"), &device_uuid(n), "esp32", "thermo"))
            .expect("instance inserted");
    }
    fake
}

fn job(fake: &FakeApiServer, name: &str) -> Option<FlashJob> {
    fake.get::<FlashJob>(Some(NS), name)
}

async fn wait_phase(fake: &FakeApiServer, name: &str, phase: Phase) -> FlashJob {
    wait_for(&format!("{name} to be {phase}"), WAIT, || async {
        job(fake, name).filter(|j| j.status.as_ref().and_then(|s| s.phase) == Some(phase))
    })
    .await
}

async fn wait_pods(fake: &FakeApiServer, n: usize) -> Vec<Pod> {
    wait_for(&format!("{n} flash pods"), WAIT, || async {
        let pods = fake.list::<Pod>(Some(NS));
        (pods.len() == n).then_some(pods)
    })
    .await
}

#[tokio::test]
async fn success_completes_and_cleans_up() {
    let fake = setup(3).await;
    let uuids: Vec<String> = (0..3).map(device_uuid).collect();
    fake.insert(&flash_job(NS, "thermo", &uuids)).expect("job inserted");
    let op = RunningOperator::start(fake.client().await.expect("client"), fast_settings());

    let pods = wait_pods(&fake, 3).await;
    let pod = pods
        .iter()
        .find(|p| p.metadata.annotations.as_ref().and_then(|a| a.get("flashjob.nbfc.io/uuid")) == Some(&uuids[0]))
        .expect("pod for first uuid");
    let env: Vec<(String, String)> = pod.spec.as_ref().expect("spec").containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("FIRMWARE"), Some("registry.example/esp32-thermo:1.2.0"));
    assert_eq!(get("UUID"), Some(uuids[0].as_str()));
    assert_eq!(get("HOST_ENDPOINT"), Some("esp32-0.local:8266"));
    assert_eq!(get("DEVICE"), Some("esp32"));
    assert_eq!(get("APPLICATION_TYPE"), Some("thermo"));
    assert_eq!(get("VERSION"), Some("1.2.0"));
    assert_eq!(get("EXTERNAL_IP"), Some(""));
    let owner = &pod.metadata.owner_references.as_ref().expect("owner refs")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("FlashJob", "thermo", Some(true)));
    wait_for("one Service per pod", WAIT, || async { (fake.list::<Service>(Some(NS)).len() == 3).then_some(()) }).await;

    let running = job(&fake, "thermo").expect("job");
    assert_eq!(running.status.as_ref().and_then(|s| s.phase), Some(Phase::InProgress));
    assert!(running.metadata.finalizers.unwrap_or_default().contains(&"flashjob.nbfc.io/cleanup".to_string()));

    for p in &pods {
        assert!(fake.set_pod_phase(NS, p.metadata.name.as_deref().expect("name"), "Succeeded"));
    }
    let done = wait_phase(&fake, "thermo", Phase::Completed).await;
    let status = done.status.expect("status");
    assert_eq!(status.completed_uuids, uuids, "completedUUIDs in spec order");
    assert_eq!(status.host_endpoint.as_deref(), Some("esp32-0.local:8266"));
    let complete = status.conditions.iter().find(|c| c.type_ == "Complete").expect("Complete condition");
    assert_eq!(complete.status, "True");
    assert_eq!(complete.observed_generation, Some(1));
    wait_for("children deleted", WAIT, || async {
        (fake.list::<Pod>(Some(NS)).is_empty() && fake.list::<Service>(Some(NS)).is_empty()).then_some(())
    })
    .await;
    let events = fake.list::<Event>(Some(NS));
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("FlashCompleted")), "{events:?}");
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("FlashStarted")));

    // The API calls, in order: finalizer first, then children, status before deletes.
    let log = fake.requests();
    let first = |pred: &dyn Fn(&otafleet_k8s::fake::RequestRecord) -> bool| {
        log.iter().position(|r| !r.watch && pred(r)).expect("request made")
    };
    let add_finalizer = first(&|r| r.method == "PATCH" && r.path.ends_with("/flashjobs/thermo"));
    let create_pod = first(&|r| r.method == "POST" && r.path.ends_with("/pods"));
    let complete_status = log
        .iter()
        .rposition(|r| r.method == "PATCH" && r.path.ends_with("/flashjobs/thermo/status"))
        .expect("status patched");
    let delete_pod = first(&|r| r.method == "DELETE" && r.path.contains("/pods/"));
    assert!(add_finalizer < create_pod, "finalizer before children");
    assert!(delete_pod < complete_status || fake.count_requests("DELETE", "/pods/") == 3);
    assert_eq!(fake.count_requests("POST", "/namespaces/default/pods"), 3, "each pod created once");
    op.stop().await;
}

#[tokio::test]
async fn failing_pod_fails_the_job() {
    let fake = setup(2).await;
    let uuids: Vec<String> = (0..2).map(device_uuid).collect();
    fake.insert(&flash_job(NS, "thermo", &uuids)).expect("job inserted");
    let op = RunningOperator::start(fake.client().await.expect("client"), fast_settings());
    let pods = wait_pods(&fake, 2).await;
    let failed_name = pods[1].metadata.name.clone().expect("name");
    fake.set_pod_phase(NS, pods[0].metadata.name.as_deref().expect("name"), "Succeeded");
    fake.set_pod_phase(NS, &failed_name, "Failed");
    let failed = wait_phase(&fake, "thermo", Phase::Failed).await;
    let message = failed.status.and_then(|s| s.message).expect("message");
    assert!(message.contains(&failed_name), "{message}");
    wait_for("children deleted", WAIT, || async { fake.list::<Pod>(Some(NS)).is_empty().then_some(()) }).await;
    op.stop().await;
}

#[tokio::test]
async fn unknown_uuids_fail_with_their_names() {
    let fake = setup(1).await;
    let uuids = vec![device_uuid(0), "nope-1".to_string(), "nope-2".to_string()];
    fake.insert(&flash_job(NS, "thermo", &uuids)).expect("job inserted");
    let op = RunningOperator::start(fake.client().await.expect("client"), fast_settings());
    let failed = wait_phase(&fake, "thermo", Phase::Failed).await;
    let message = failed.status.and_then(|s| s.message).expect("message");
    assert_eq!(message, "unknown device UUIDs: nope-1, nope-2");
    assert_eq!(fake.count_requests("POST", "/pods"), 0, "no pod for a job that cannot run");
    let events = fake.list::<Event>(Some(NS));
    assert!(events
        .iter()
        .any(|e| e.reason.as_deref() == Some("UnknownDevices") && e.type_.as_deref() == Some("Warning")));
    op.stop().await;
}

#[tokio::test]
async fn deletion_cleans_up_and_removes_finalizer() {
    let fake = setup(2).await;
    let uuids: Vec<String> = (0..2).map(device_uuid).collect();
    fake.insert(&flash_job(NS, "thermo", &uuids)).expect("job inserted");
    let op = RunningOperator::start(fake.client().await.expect("client"), fast_settings());
    wait_pods(&fake, 2).await;
    let client = fake.client().await.expect("client");
    let api: kube::Api<FlashJob> = kube::Api::namespaced(client, NS);
    api.delete("thermo", &Default::default()).await.expect("delete accepted");
    wait_for("job gone", WAIT, || async { job(&fake, "thermo").is_none().then_some(()) }).await;
    assert!(fake.list::<Pod>(Some(NS)).is_empty(), "pods removed before the finalizer");
    assert!(fake.list::<Service>(Some(NS)).is_empty(), "services removed before the finalizer");
    let events = fake.list::<Event>(Some(NS));
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("Deleted")));
    op.stop().await;
}

#[tokio::test]
async fn restart_mid_job_continues() {
    let fake = setup(4).await;
    let uuids: Vec<String> = (0..4).map(device_uuid).collect();
    fake.insert(&flash_job(NS, "thermo", &uuids)).expect("job inserted");
    let mut settings = fast_settings();
    settings.max_flash_pods = 2;
    let op = RunningOperator::start(fake.client().await.expect("client"), settings.clone());
    let first = wait_pods(&fake, 2).await;
    op.stop().await;

    // While no operator runs, the first two devices finish.
    for p in &first {
        fake.set_pod_phase(NS, p.metadata.name.as_deref().expect("name"), "Succeeded");
    }
    let pods_before = fake.count_requests("POST", "/pods");
    let op = RunningOperator::start(fake.client().await.expect("client"), settings);
    let second = wait_for("next batch of pods", WAIT, || async {
        let pods = fake.list::<Pod>(Some(NS));
        let pending: Vec<Pod> = pods
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
            .collect();
        (pending.len() == 2).then_some(pending)
    })
    .await;
    for p in &second {
        fake.set_pod_phase(NS, p.metadata.name.as_deref().expect("name"), "Succeeded");
    }
    let done = wait_phase(&fake, "thermo", Phase::Completed).await;
    assert_eq!(done.status.expect("status").completed_uuids, uuids);
    assert_eq!(fake.count_requests("POST", "/pods"), pods_before + 2, "no device flashed twice");
    op.stop().await;
}

#[tokio::test]
async fn api_conflicts_and_server_errors_are_retried() {
    let fake = setup(2).await;
    let uuids: Vec<String> = (0..2).map(device_uuid).collect();
    fake.insert(&flash_job(NS, "thermo", &uuids)).expect("job inserted");
    fake.fail_next(Some("POST"), "/pods", 500, 2);
    fake.fail_next(Some("PATCH"), "/flashjobs/thermo/status", 409, 1);
    fake.fail_next(Some("GET"), "/instances", 503, 1);
    let op = RunningOperator::start(fake.client().await.expect("client"), fast_settings());
    let pods = wait_pods(&fake, 2).await;
    for p in &pods {
        fake.set_pod_phase(NS, p.metadata.name.as_deref().expect("name"), "Succeeded");
    }
    wait_phase(&fake, "thermo", Phase::Completed).await;
    let failed: Vec<u16> = fake.requests().iter().filter(|r| r.status >= 409).map(|r| r.status).collect();
    assert!(failed.contains(&500) && failed.contains(&503) && failed.contains(&409), "{failed:?}");
    let metrics = op.metrics.encode();
    assert!(metrics.contains("otafleet_operator_reconcile_errors_total{error=\"server\"}"), "{metrics}");
    op.stop().await;
}
