//! The operator process: health endpoints and Lease-based leader election.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use otafleet_k8s::fake::fixtures::{akri_instance, device_uuid, flash_job, wait_for};
use otafleet_k8s::fake::FakeApiServer;
use otafleet_k8s::leader::{LeaderElector, LeaseConfig};
use otafleet_k8s::{start_operator, OperatorArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(15);
const STOP: Duration = Duration::from_secs(30);

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connects");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("writes");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("reads");
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

fn args(fake: &FakeApiServer, identity: &str) -> OperatorArgs {
    let mut a = OperatorArgs::with_kubeconfig(Some(fake.kubeconfig_path().to_path_buf()));
    a.metrics_listen = ([127, 0, 0, 1], 0).into();
    a.identity = Some(identity.into());
    a.lease_duration = Duration::from_secs(3);
    a.requeue = Duration::from_secs(2);
    a.error_backoff = Duration::from_millis(100);
    a
}

fn holder(fake: &FakeApiServer) -> Option<String> {
    fake.get::<Lease>(Some("default"), "otafleet-operator").and_then(|l| l.spec).and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    // RUST_LOG=kube_runtime=debug shows the controller's shutdown steps when this misbehaves.
    let filter = std::env::var("RUST_LOG").unwrap_or_default();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    let fake = FakeApiServer::start().await.expect("fake");
    let a = start_operator(args(&fake, "replica-a")).await.expect("a starts");
    wait_for("a leads", WAIT, || async { (holder(&fake).as_deref() == Some("replica-a")).then_some(()) }).await;
    let b = start_operator(args(&fake, "replica-b")).await.expect("b starts");

    for (addr, role) in [(a.metrics_addr, "leader"), (b.metrics_addr, "standby")] {
        assert_eq!(http_get(addr, "/healthz").await, (200, "ok".to_string()));
        let (code, body) = http_get(addr, "/readyz").await;
        assert_eq!(code, 200);
        assert_eq!(body, format!("ready ({role})"));
    }

    fake.insert(&akri_instance("default", "esp32-0", &device_uuid(0), "esp32", "thermo")).expect("instance");
    fake.insert(&flash_job("default", "thermo", &[device_uuid(0)])).expect("job");
    wait_for("pod created", WAIT, || async { (!fake.list::<Pod>(Some("default")).is_empty()).then_some(()) }).await;

    // The pod is counted by the reconcile that follows its creation.
    let metrics_a = wait_for("pending pod in metrics", WAIT, || async {
        let (_, m) = http_get(a.metrics_addr, "/metrics").await;
        m.contains("otafleet_operator_flash_pods{phase=\"Pending\"} 1").then_some(m)
    })
    .await;
    let (_, metrics_b) = http_get(b.metrics_addr, "/metrics").await;
    assert!(metrics_a.contains("otafleet_operator_leader 1"), "{metrics_a}");
    assert!(!metrics_a.contains("otafleet_operator_reconcile_total 0"), "{metrics_a}");
    assert!(metrics_a.contains("otafleet_operator_reconcile_duration_seconds_bucket"));
    assert!(
        metrics_b.contains("otafleet_operator_leader 0"),
        "{metrics_b}\n{:#?}",
        fake.requests().iter().filter(|r| r.path.contains("leases")).map(|r| r.to_string()).collect::<Vec<_>>()
    );
    assert!(metrics_b.contains("otafleet_operator_reconcile_total 0"), "standby reconciled: {metrics_b}");

    // The leader shuts down and releases the Lease; the standby takes over.
    // kube-runtime's controller can hold its runner until its store is ready,
    // deaf to the shutdown signal; the operator bounds that wait (10 s) itself.
    tokio::time::timeout(STOP, a.stop()).await.expect("a stops in time").expect("a stops");
    wait_for("b leads", WAIT, || async { (holder(&fake).as_deref() == Some("replica-b")).then_some(()) }).await;
    wait_for("b reports leader", WAIT, || async { b.health.is_leader().then_some(()) }).await;
    tokio::time::timeout(STOP, b.stop()).await.expect("b stops in time").expect("b stops");
}

#[tokio::test]
async fn lease_writes_are_guarded_by_resource_version() {
    let fake = FakeApiServer::start().await.expect("fake");
    let client = fake.client().await.expect("client");
    let config = |id: &str| LeaseConfig {
        name: "l".into(),
        namespace: "default".into(),
        identity: id.into(),
        lease_duration: Duration::from_secs(30),
    };
    let a = LeaderElector::new(client.clone(), config("a"));
    let b = LeaderElector::new(client.clone(), config("b"));
    assert!(a.try_acquire_or_renew().await.expect("a"), "a creates the lease");
    assert!(!b.try_acquire_or_renew().await.expect("b"), "b must not steal a live lease");
    assert!(a.try_acquire_or_renew().await.expect("a renews"));
    // A concurrent writer changes the Lease between a's read and write: 409, not leader.
    fake.fail_next(Some("PUT"), "/leases/l", 409, 1);
    assert!(!a.try_acquire_or_renew().await.expect("conflict is not an error"));
    a.release().await.expect("release");
    assert!(b.try_acquire_or_renew().await.expect("b"), "released lease is free");
    let lease = fake.get::<Lease>(Some("default"), "l").expect("lease").spec.expect("spec");
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));
    assert_eq!(fake.count_requests("POST", "/leases"), 1);
}

#[tokio::test]
async fn missing_crd_is_reported() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.fail_next(Some("GET"), "/flashjobs", 404, 1);
    let err = start_operator(args(&fake, "x")).await.err().expect("fails");
    assert!(format!("{err:#}").contains("is the CRD installed"), "{err:#}");
}
