//! `otafleet flash` against the fake API server with a running controller.

use std::time::Duration;

use otafleet_k8s::crd::{FlashJob, Phase};
use otafleet_k8s::fake::fixtures::{akri_instance, device_uuid, fast_settings, RunningOperator};
use otafleet_k8s::fake::FakeApiServer;
use otafleet_k8s::flash::{flash_with, FlashArgs};
use otafleet_k8s::Error;

const NS: &str = "default";

async fn fleet() -> FakeApiServer {
    let fake = FakeApiServer::start().await.expect("fake");
    for n in 0..5 {
        fake.insert(&akri_instance(NS, &format!("esp32-{n}"), &device_uuid(n), "esp32", "thermo")).expect("insert");
    }
    fake.insert(&akri_instance(NS, "esp32-other", &device_uuid(99), "esp32", "lights")).expect("insert");
    fake.insert(&akri_instance(NS, "rpi-0", &device_uuid(98), "rpi", "thermo")).expect("insert");
    fake
}

fn args(fake: &FakeApiServer) -> FlashArgs {
    FlashArgs {
        device: "esp32".into(),
        application_type: "thermo".into(),
        uuids: Vec::new(),
        firmware: "registry.example/esp32-thermo:1.3.0".into(),
        version: "1.3.0".into(),
        pod_image: "registry.example/flasher:latest".into(),
        namespace: NS.into(),
        batch_size: 2,
        batch_delay: Duration::ZERO,
        batch_timeout: Duration::from_secs(20),
        poll_interval: Duration::from_millis(20),
        failure_threshold: 0.0,
        host_endpoint: None,
        external_ip: None,
        yes: true,
        dry_run: false,
        kubeconfig: Some(fake.kubeconfig_path().to_path_buf()),
    }
}

#[tokio::test]
async fn dry_run_prints_the_batches() {
    let fake = fleet().await;
    let mut a = args(&fake);
    a.dry_run = true;
    a.yes = false;
    let mut out = Vec::new();
    let report = flash_with(&a, &b""[..], &mut out).await.expect("dry run");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(report.devices.len(), 5, "only esp32/thermo devices");
    assert_eq!(text.matches("kind: FlashJob").count(), 3, "{text}");
    assert!(text.contains("name: flash-esp32-thermo-1.3.0-001"));
    assert!(!text.contains(&device_uuid(99)));
    let docs: Vec<FlashJob> = text
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).expect("valid FlashJob"))
        .collect();
    assert_eq!(docs[2].spec.uuid, vec![device_uuid(4)]);
    assert_eq!(fake.count_requests("POST", "/flashjobs"), 0, "dry run creates nothing");
}

#[tokio::test]
async fn batches_run_one_after_another_and_rerun_resumes() {
    let fake = fleet().await;
    fake.set_pod_phase_on_create(Some("Succeeded"));
    let op = RunningOperator::start(fake.client().await.expect("client"), fast_settings());
    let mut a = args(&fake);
    a.uuids = vec![device_uuid(0), device_uuid(1), device_uuid(3)];
    let mut out = Vec::new();
    let report = flash_with(&a, &b""[..], &mut out).await.expect("flash succeeds");
    assert_eq!(report.completed_jobs, vec!["flash-esp32-thermo-1.3.0-001", "flash-esp32-thermo-1.3.0-002"]);
    let jobs = fake.list::<FlashJob>(Some(NS));
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.status.as_ref().and_then(|s| s.phase) == Some(Phase::Completed)));
    // Batch 2 was created only after batch 1 completed.
    let log = fake.requests();
    let created: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, r)| r.method == "POST" && r.path.ends_with("/flashjobs"))
        .map(|(i, _)| i)
        .collect();
    let batch1_done = log
        .iter()
        .position(|r| r.method == "DELETE" && r.path.contains("flash-flash-esp32-thermo-1-3-0-001"))
        .expect("batch 1 cleaned up");
    assert!(batch1_done < created[1], "second batch started before the first completed");

    let posts = fake.count_requests("POST", "/flashjobs");
    let again = flash_with(&a, &b""[..], &mut Vec::new()).await.expect("rerun");
    assert_eq!(again.completed_jobs.len(), 2);
    assert_eq!(fake.count_requests("POST", "/flashjobs"), posts, "completed batches are skipped");
    op.stop().await;
}

#[tokio::test]
async fn declining_the_prompt_creates_nothing() {
    let fake = fleet().await;
    let mut a = args(&fake);
    a.yes = false;
    let mut out = Vec::new();
    let err = flash_with(&a, &b"n\n"[..], &mut out).await.expect_err("aborted");
    assert!(matches!(err, Error::Aborted));
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.contains("Flash 5 devices in 3 batches of up to 2? [y/N]"), "{text}");
    assert!(text.contains(&device_uuid(4)));
    assert_eq!(fake.count_requests("POST", "/flashjobs"), 0);
}

#[tokio::test]
async fn a_failed_batch_stops_the_run() {
    let fake = fleet().await;
    fake.set_pod_phase_on_create(Some("Failed"));
    let op = RunningOperator::start(fake.client().await.expect("client"), fast_settings());
    let err = flash_with(&args(&fake), &b""[..], &mut Vec::new()).await.expect_err("fails");
    match err {
        Error::JobFailed { name, message } => {
            assert_eq!(name, "flash-esp32-thermo-1.3.0-001");
            assert!(message.contains("flashing failed"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(fake.count_requests("POST", "/flashjobs"), 1, "no batch after a failure");
    op.stop().await;
}

#[tokio::test]
async fn a_failure_threshold_lets_failed_batches_pass_like_a_rollout_gate() {
    let fake = fleet().await;
    fake.set_pod_phase_on_create(Some("Failed"));
    let op = RunningOperator::start(fake.client().await.expect("client"), fast_settings());
    // Every device fails: with a threshold of 1 the gate never trips, so all
    // three batches run and the failures are reported.
    let mut a = args(&fake);
    a.failure_threshold = 1.0;
    let mut out = Vec::new();
    let report = flash_with(&a, &b""[..], &mut out).await.expect("within the threshold");
    assert_eq!(fake.count_requests("POST", "/flashjobs"), 3);
    assert_eq!(report.failed_devices.len(), 5);
    assert!(report.completed_jobs.is_empty());
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("within --failure-threshold 1"), "{text}");
    assert!(text.contains("flashed 0 of 5 devices"), "{text}");
    // A threshold below the failed share stops at the first batch, naming the gate.
    let fake2 = fleet().await;
    fake2.set_pod_phase_on_create(Some("Failed"));
    let op2 = RunningOperator::start(fake2.client().await.expect("client"), fast_settings());
    let mut a = args(&fake2);
    a.failure_threshold = 0.5;
    match flash_with(&a, &b""[..], &mut Vec::new()).await.expect_err("gate fails") {
        Error::JobFailed { message, .. } => assert!(message.contains("failure threshold 0.5"), "{message}"),
        other => panic!("unexpected {other}"),
    }
    assert_eq!(fake2.count_requests("POST", "/flashjobs"), 1);
    let bad = FlashArgs { failure_threshold: 1.5, ..args(&fake2) };
    assert!(
        matches!(flash_with(&bad, &b""[..], &mut Vec::new()).await, Err(Error::Invalid(m)) if m.contains("failure-threshold"))
    );
    op.stop().await;
    op2.stop().await;
}

#[tokio::test]
async fn unknown_uuid_is_rejected_before_anything_runs() {
    let fake = fleet().await;
    let mut a = args(&fake);
    a.uuids = vec![device_uuid(99)];
    let err = flash_with(&a, &b""[..], &mut Vec::new()).await.expect_err("rejected");
    assert!(err.to_string().contains(&device_uuid(99)), "{err}");
}

#[tokio::test]
async fn batches_are_the_cores_strategy() {
    let fake = fleet().await;
    let mut a = args(&fake);
    a.batch_size = 2;
    a.batch_delay = Duration::from_millis(1500);
    let s = otafleet_k8s::flash::strategy(&a).expect("strategy");
    assert_eq!((s.batch_size, s.batch_delay_secs), (2, 2), "the delay is whole seconds, rounded up");
    assert_eq!(otafleet_core::batch::delay(&s), Duration::from_secs(2));
    let devices: Vec<String> = (0..5).map(device_uuid).collect();
    let sizes: Vec<usize> = otafleet_core::batch::split(&devices, &s).iter().map(|b| b.len()).collect();
    assert_eq!(sizes, vec![2, 2, 1]);

    // The dry run prints exactly the core's batches.
    a.batch_size = 3;
    a.dry_run = true;
    let mut out = Vec::new();
    flash_with(&a, &b""[..], &mut out).await.expect("dry run");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(text.matches("kind: FlashJob").count(), 2, "{text}");

    a.batch_size = 0;
    assert!(matches!(flash_with(&a, &b""[..], &mut Vec::new()).await, Err(Error::Invalid(_))));
}
