//! The Kubernetes commands of the real binary against the in-process fake
//! Kubernetes API server: `operator crd`, `update` recording its job on a
//! real otafleet server and its wave gate flags, and `bench flashjob` (which
//! needs the `fake-k8s` feature).

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::ObjectMeta;
use otafleet_k8s::fake::FakeApiServer;

fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("robots".into()),
            labels: Some(
                [("status".to_string(), "idle".to_string()), ("sw_version".to_string(), "1.0.0".to_string())].into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "robot".into(),
                image: Some("robot:1.0.0".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

#[test]
fn operator_crd_prints_the_flashjob_definition() {
    let (code, out, err) = cli("http://127.0.0.1:1", None, &["operator", "crd"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kind: CustomResourceDefinition"), "{out}");
    assert!(out.contains("application.flashjob.nbfc.io"));
    assert!(out.contains("FlashJob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_patches_pods_wave_by_wave_and_records_the_job() {
    let fake = FakeApiServer::start().await.unwrap();
    for n in ["r1", "r2", "r3"] {
        fake.insert(&pod(n)).unwrap();
    }
    let kubeconfig = fake.kubeconfig_path().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    let (code, out, err, jobs) = tokio::task::spawn_blocking(move || {
        let s = Server::start(&db, &[]);
        let (code, out, err) = cli(
            &s.url,
            Some(ADMIN),
            &["update", "2.0.0", "--wave", "blue", "--count", "2", "--kubeconfig", &kubeconfig],
        );
        let jobs = Http::new(&s.url).get("/ota/jobs", Some(ADMIN)).body;
        (code, out, err, jobs)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("2 of 3 candidates updated"), "{out}");
    let pods: Vec<Pod> = fake.list(Some("robots"));
    let updated = pods
        .iter()
        .filter(|p| p.metadata.labels.as_ref().unwrap().get("sw_version").map(String::as_str) == Some("2.0.0"))
        .count();
    assert_eq!(updated, 2);
    assert!(pods.iter().filter(|p| p.metadata.labels.as_ref().unwrap()["status"] == "updated").count() == 2);
    assert_eq!(jobs[0]["version"], "2.0.0");
    assert_eq!(jobs[0]["wave"], "blue");
    assert_eq!(jobs[0]["status"], "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_gate_flags_tolerate_failures_and_report_them() {
    let fake = FakeApiServer::start().await.unwrap();
    for n in ["r1", "r2", "r3"] {
        fake.insert(&pod(n)).unwrap();
    }
    fake.fail_next(Some("PATCH"), "/namespaces/robots/pods/r2", 422, 1);
    let kubeconfig = fake.kubeconfig_path().display().to_string();
    let argv = [
        "update",
        "2.0.0",
        "--wave",
        "green",
        "--failure-threshold",
        "0.5",
        "--bake-time",
        "100ms",
        "--kubeconfig",
        &kubeconfig,
    ]
    .map(str::to_string);
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        cli("http://127.0.0.1:1", None, &argv)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("green wave of 2.0.0: 2 of 3 candidates updated"), "{out}");
    assert!(out.contains("1 failed, tolerated"), "{out}");
    assert!(out.contains("failed Pod robots/r2"), "{out}");

    // The default gate (failure threshold 0): the same failure rolls the wave back.
    let fake = FakeApiServer::start().await.unwrap();
    for n in ["r1", "r2", "r3"] {
        fake.insert(&pod(n)).unwrap();
    }
    fake.fail_next(Some("PATCH"), "/namespaces/robots/pods/r2", 422, 1);
    let kubeconfig = fake.kubeconfig_path().display().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli("http://127.0.0.1:1", None, &["update", "3.0.0", "--wave", "green", "--kubeconfig", &kubeconfig])
    })
    .await
    .unwrap();
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(err.contains("exceeded the failure threshold 0"), "{err}");
    let r1: Pod = fake.get(Some("robots"), "r1").unwrap();
    assert_eq!(r1.metadata.labels.unwrap()["sw_version"], "1.0.0", "r1 was rolled back");
}

#[test]
fn bench_flashjob_needs_the_fake_k8s_feature() {
    let (code, out, err) =
        cli("http://127.0.0.1:1", None, &["bench", "flashjob", "--uuids", "5", "--max-flash-pods", "2"]);
    if cfg!(feature = "fake-k8s") {
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("FlashJob with 5 UUIDs"), "{out}");
    } else {
        assert_ne!(code, 0, "{out}");
        assert!(err.contains("cargo run --release --features fake-k8s -- bench flashjob"), "{err}");
    }
}
