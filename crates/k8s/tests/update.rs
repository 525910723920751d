//! `otafleet update` against the fake API server.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ObjectMeta;
use otafleet_core::Preset;
use otafleet_k8s::fake::FakeApiServer;
use otafleet_k8s::update::{update_with, UpdateArgs, WorkloadKind};

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn pod(ns: &str, name: &str, status: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: labels(&[("status", status), ("sw_version", "1.0")]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("registry.example/app:1.0".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn deployment(name: &str) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("apps".into()),
            labels: labels(&[("status", "idle")]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: LabelSelector { match_labels: labels(&[("app", name)]), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: labels(&[("app", name)]), ..Default::default() }),
                spec: pod("apps", name, "idle").spec,
            },
            ..Default::default()
        }),
        status: None,
    }
}

async fn fleet() -> FakeApiServer {
    let fake = FakeApiServer::start().await.expect("fake");
    for (ns, name, status) in [("a", "p1", "idle"), ("b", "p0", "idle"), ("a", "p2", "idle"), ("a", "busy", "busy")] {
        fake.insert(&pod(ns, name, status)).expect("insert");
    }
    fake
}

fn args(fake: &FakeApiServer, wave: Preset) -> UpdateArgs {
    UpdateArgs {
        version: "2.0".into(),
        wave,
        count: None,
        steps: Vec::new(),
        selector: "status=idle".into(),
        namespace: None,
        image: None,
        container: None,
        kind: WorkloadKind::Pod,
        rollout_timeout: Duration::from_secs(5),
        max_retries: 5,
        retry_base: Duration::from_millis(10),
        kubeconfig: Some(fake.kubeconfig_path().to_path_buf()),
        success_threshold: None,
        failure_threshold: 0.0,
        bake_time: Duration::ZERO,
    }
}

fn pod_labels(fake: &FakeApiServer, ns: &str, name: &str) -> (Option<String>, Option<String>) {
    let p = fake.get::<Pod>(Some(ns), name).expect("pod");
    let l = p.metadata.labels.unwrap_or_default();
    (l.get("sw_version").cloned(), l.get("status").cloned())
}

fn pod_image(fake: &FakeApiServer, ns: &str, name: &str) -> Option<String> {
    fake.get::<Pod>(Some(ns), name).and_then(|p| p.spec).and_then(|s| s.containers[0].image.clone())
}

#[tokio::test]
async fn canary_updates_one_idle_pod() {
    let fake = fleet().await;
    let report = update_with(&args(&fake, Preset::Canary)).await.expect("update");
    assert_eq!(report.candidates, 3, "busy pod is not a candidate");
    assert_eq!(report.updated.len(), 1);
    assert_eq!((report.updated[0].namespace.as_str(), report.updated[0].name.as_str()), ("a", "p1"));
    assert_eq!(pod_labels(&fake, "a", "p1"), (Some("2.0".into()), Some("updated".into())));
    assert_eq!(pod_labels(&fake, "a", "p2"), (Some("1.0".into()), Some("idle".into())));
    let list = fake.requests().into_iter().find(|r| r.method == "GET" && r.path == "/api/v1/pods").expect("listed");
    assert!(list.query.contains("labelSelector=status=idle"), "{}", list.query);
}

#[tokio::test]
async fn blue_and_green_sizes_and_images() {
    let fake = fleet().await;
    let mut a = args(&fake, Preset::Blue);
    a.namespace = Some("a".into());
    let report = update_with(&a).await.expect("blue");
    assert_eq!(report.updated.len(), 2);
    let fake = fleet().await;
    let mut a = args(&fake, Preset::Green);
    a.image = Some("registry.example/app:2.0".into());
    let report = update_with(&a).await.expect("green");
    assert_eq!(report.updated.len(), 3);
    assert_eq!(pod_image(&fake, "b", "p0").as_deref(), Some("registry.example/app:2.0"));
    assert_eq!(pod_image(&fake, "a", "busy").as_deref(), Some("registry.example/app:1.0"));
}

#[tokio::test]
async fn conflicts_are_reread_and_server_errors_retried() {
    let fake = fleet().await;
    fake.fail_next(Some("PATCH"), "/pods/p1", 409, 2);
    fake.fail_next(Some("GET"), "/pods/p1", 500, 1);
    fake.fail_next(Some("GET"), "/api/v1/pods", 503, 1);
    let report = update_with(&args(&fake, Preset::Canary)).await.expect("update despite faults");
    assert_eq!(report.updated.len(), 1);
    assert_eq!(pod_labels(&fake, "a", "p1").1.as_deref(), Some("updated"));
    assert_eq!(fake.count_requests("PATCH", "/pods/p1"), 3, "two conflicts, then success");
    assert_eq!(fake.count_requests("GET", "/pods/p1"), 4, "one 500 plus a read per attempt");
}

#[tokio::test]
async fn a_failed_wave_rolls_back_what_it_patched() {
    let fake = fleet().await;
    fake.fail_next(Some("PATCH"), "/namespaces/a/pods/p2", 422, 1);
    let mut a = args(&fake, Preset::Green);
    a.image = Some("registry.example/app:2.0".into());
    let failed = update_with(&a).await.expect_err("wave fails");
    assert_eq!(failed.report.updated.len(), 1, "p1 was updated before p2 failed");
    assert_eq!(failed.report.rolled_back.len(), 1);
    assert_eq!(pod_labels(&fake, "a", "p1"), (Some("1.0".into()), Some("idle".into())));
    assert_eq!(pod_image(&fake, "a", "p1").as_deref(), Some("registry.example/app:1.0"));
    assert_eq!(pod_labels(&fake, "b", "p0"), (Some("1.0".into()), Some("idle".into())), "never reached");
    let err: anyhow::Error = failed.into();
    assert!(err.downcast_ref::<otafleet_k8s::UpdateFailed>().is_some());
}

#[tokio::test]
async fn deployments_wait_for_rollout_and_roll_back_on_timeout() {
    let fake = FakeApiServer::start().await.expect("fake");
    fake.insert(&deployment("web")).expect("insert");
    let mut a = args(&fake, Preset::Canary);
    a.kind = WorkloadKind::Deployment;
    a.image = Some("registry.example/app:2.0".into());
    let report = update_with(&a).await.expect("rollout");
    assert_eq!(report.updated.len(), 1);
    let d = fake.get::<Deployment>(Some("apps"), "web").expect("deployment");
    assert_eq!(
        d.spec.expect("spec").template.spec.expect("pod spec").containers[0].image.as_deref(),
        Some("registry.example/app:2.0")
    );

    fake.set_simulate_rollouts(false);
    let mut a = args(&fake, Preset::Canary);
    a.kind = WorkloadKind::Deployment;
    a.selector = "status=updated".into();
    a.version = "3.0".into();
    a.image = Some("registry.example/app:3.0".into());
    a.rollout_timeout = Duration::from_millis(300);
    let failed = update_with(&a).await.expect_err("rollout never becomes ready");
    assert!(failed.source.to_string().contains("timed out"), "{}", failed.source);
    let d = fake.get::<Deployment>(Some("apps"), "web").expect("deployment");
    assert_eq!(d.metadata.labels.expect("labels").get("sw_version").map(String::as_str), Some("2.0"));
    assert_eq!(
        d.spec.expect("spec").template.spec.expect("pod spec").containers[0].image.as_deref(),
        Some("registry.example/app:2.0")
    );
}

#[tokio::test]
async fn workloads_need_an_image() {
    let fake = FakeApiServer::start().await.expect("fake");
    let mut a = args(&fake, Preset::Canary);
    a.kind = WorkloadKind::Statefulset;
    let failed = update_with(&a).await.expect_err("invalid");
    assert!(failed.source.to_string().contains("needs --image"));
}

#[tokio::test]
async fn one_failure_fails_the_default_gate_and_rolls_back() {
    let fake = fleet().await;
    fake.fail_next(Some("PATCH"), "/namespaces/b/pods/p0", 422, 1);
    let failed = update_with(&args(&fake, Preset::Green)).await.expect_err("failure_threshold 0");
    let r = &failed.report;
    assert_eq!(r.updated.len(), 2, "a/p1 and a/p2 came before b/p0");
    assert_eq!(r.failed.len(), 1);
    assert_eq!((r.failed[0].target.namespace.as_str(), r.failed[0].target.name.as_str()), ("b", "p0"));
    assert_eq!(r.rolled_back.len(), 2);
    let reason = failed.source.to_string();
    assert!(reason.contains("exceeded the failure threshold 0"), "{reason}");
    assert!(reason.contains("b/p0"), "{reason}");
    for (ns, name) in [("a", "p1"), ("a", "p2"), ("b", "p0")] {
        assert_eq!(pod_labels(&fake, ns, name), (Some("1.0".into()), Some("idle".into())), "{ns}/{name}");
    }
}

#[tokio::test]
async fn a_tolerated_failure_passes_the_gate_and_is_reported() {
    let fake = fleet().await;
    fake.fail_next(Some("PATCH"), "/namespaces/a/pods/p2", 422, 1);
    let mut a = args(&fake, Preset::Green);
    a.failure_threshold = 0.5;
    let report = update_with(&a).await.expect("1 of 3 failing is within 0.5");
    assert_eq!(report.updated.len(), 2);
    assert!(report.rolled_back.is_empty());
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].target.name, "p2");
    assert!(
        report.failed[0].error.contains("422") || report.failed[0].error.contains("injected"),
        "{}",
        report.failed[0]
    );
    assert_eq!(pod_labels(&fake, "a", "p1"), (Some("2.0".into()), Some("updated".into())));
    assert_eq!(pod_labels(&fake, "a", "p2"), (Some("1.0".into()), Some("idle".into())));
    assert_eq!(pod_labels(&fake, "b", "p0"), (Some("2.0".into()), Some("updated".into())));
}

#[tokio::test]
async fn too_many_failures_fail_a_tolerant_gate_and_the_success_threshold_counts() {
    let fake = fleet().await;
    fake.fail_next(Some("PATCH"), "/namespaces/a/pods/p1", 422, 1);
    fake.fail_next(Some("PATCH"), "/namespaces/a/pods/p2", 422, 1);
    let mut a = args(&fake, Preset::Green);
    a.failure_threshold = 0.5;
    let failed = update_with(&a).await.expect_err("2 of 3 exceed 0.5");
    assert_eq!(failed.report.failed.len(), 2);
    assert!(failed.report.updated.is_empty(), "the gate failed before b/p0");
    assert_eq!(pod_labels(&fake, "b", "p0"), (Some("1.0".into()), Some("idle".into())));

    let fake = fleet().await;
    fake.fail_next(Some("PATCH"), "/namespaces/a/pods/p2", 422, 1);
    let mut a = args(&fake, Preset::Green);
    a.failure_threshold = 0.5;
    a.success_threshold = Some(0.9);
    let failed = update_with(&a).await.expect_err("2 of 3 updated is below 0.9");
    assert!(failed.source.to_string().contains("success threshold"), "{}", failed.source);
    assert_eq!(failed.report.rolled_back.len(), 2);
    assert_eq!(pod_labels(&fake, "a", "p1"), (Some("1.0".into()), Some("idle".into())));
}

#[tokio::test]
async fn a_passed_wave_bakes_before_success() {
    let fake = fleet().await;
    let mut a = args(&fake, Preset::Canary);
    a.bake_time = Duration::from_millis(300);
    let report = update_with(&a).await.expect("update");
    assert_eq!(report.updated.len(), 1);
    assert!(report.duration >= Duration::from_millis(300), "{:?}", report.duration);
}

#[tokio::test]
async fn the_fake_server_selects_with_the_cores_selector() {
    let fake = fleet().await;
    let mut a = args(&fake, Preset::Green);
    a.selector = "status in (idle,busy),sw_version,!gone".into();
    let report = update_with(&a).await.expect("set-based selector");
    assert_eq!(report.candidates, 4);

    let fake = fleet().await;
    let mut a = args(&fake, Preset::Green);
    a.selector = "status notin (busy)".into();
    assert_eq!(update_with(&a).await.expect("notin").candidates, 3);

    let mut a = args(&fake, Preset::Green);
    a.selector = "status in (idle".into();
    let failed = update_with(&a).await.expect_err("the fake answers 400 to a selector the core rejects");
    assert_eq!(failed.source.api_code(), Some(400), "{}", failed.source);
    assert!(failed.report.updated.is_empty());
}

#[tokio::test]
async fn custom_steps_run_wave_after_wave_each_behind_its_gate() {
    let fake = fleet().await;
    let mut a = args(&fake, Preset::Custom);
    a.steps = "1,100%".split(',').map(|s| s.parse().expect("step")).collect();
    let report = update_with(&a).await.expect("two waves");
    assert_eq!(report.updated.len(), 3);

    // A failure in the second wave rolls back the first wave too.
    let fake = fleet().await;
    fake.fail_next(Some("PATCH"), "/namespaces/b/pods/p0", 422, 1);
    let a = UpdateArgs { kubeconfig: Some(fake.kubeconfig_path().to_path_buf()), ..a };
    let failed = update_with(&a).await.expect_err("second wave fails");
    assert!(failed.source.to_string().contains("wave 1"), "{}", failed.source);
    assert_eq!(failed.report.rolled_back.len(), 2);
    assert_eq!(pod_labels(&fake, "a", "p1"), (Some("1.0".into()), Some("idle".into())));
}
