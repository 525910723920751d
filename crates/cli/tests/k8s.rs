//! The Kubernetes commands of the real binary against the in-process fake
//! Kubernetes API server: `operator crd`, and `update` recording its job on a
//! real otafleet server.

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
