//! ROS applications: rendered manifests against golden files (each object
//! checked against the k8s-openapi types by `render`), bad specs refused
//! naming the field, and apply / status / update / delete against the
//! in-process fake API server.
//!
//! Regenerate the golden files with `OTAFLEET_UPDATE_GOLDEN=1 cargo test -p
//! otafleet-k8s --test app` and read the diff before committing it.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use otafleet_k8s::app::{parse, render, run_app, to_yaml, AppCmd};
use otafleet_k8s::fake::FakeApiServer;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/app")
}

fn check_golden(case: &str) {
    let dir = golden_dir();
    let spec = std::fs::read_to_string(dir.join(format!("{case}.spec.yaml"))).unwrap();
    let rendered = to_yaml(&render(&parse(&spec).unwrap()).unwrap()).unwrap();
    let golden = dir.join(format!("{case}.yaml"));
    if std::env::var("OTAFLEET_UPDATE_GOLDEN").is_ok() {
        std::fs::write(&golden, &rendered).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(rendered, want, "{case}: the rendering changed (OTAFLEET_UPDATE_GOLDEN=1 to accept it)");
}

#[test]
fn ros1_with_a_master_and_storage_renders_as_the_golden_file() {
    check_golden("ros1-master-storage");
    let spec = parse(&std::fs::read_to_string(golden_dir().join("ros1-master-storage.spec.yaml")).unwrap()).unwrap();
    let objects = render(&spec).unwrap();
    let kinds: Vec<(String, String)> = objects
        .iter()
        .map(|o| (o["kind"].as_str().unwrap().into(), o["metadata"]["name"].as_str().unwrap().into()))
        .collect();
    let want = [
        ("Service", "ros-master"),
        ("Deployment", "ros-master"),
        ("PersistentVolumeClaim", "logs-volume-pvc"),
        ("Deployment", "navigation"),
    ];
    assert_eq!(kinds, want.map(|(k, n)| (k.to_string(), n.to_string())));
    let app: Deployment = serde_json::from_value(objects[3].clone()).unwrap();
    let pod = app.spec.unwrap().template.spec.unwrap();
    let main = &pod.containers[0];
    assert_eq!(main.name, "ros-app");
    let env: Vec<_> = main.env.clone().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(env, ["ROS_MASTER_URI", "ROBOT_ID", "LOG_LEVEL"], "additional env merged into ros-app by name");
    assert_eq!(pod.init_containers.unwrap()[0].name, "readiness-init");
    assert!(main.readiness_probe.is_some());
}

#[test]
fn ros2_with_a_discovery_server_renders_as_the_golden_file() {
    check_golden("ros2-discovery");
    let spec = parse(&std::fs::read_to_string(golden_dir().join("ros2-discovery.spec.yaml")).unwrap()).unwrap();
    let objects = render(&spec).unwrap();
    let service: Service = serde_json::from_value(objects[0].clone()).unwrap();
    assert_eq!(service.spec.unwrap().cluster_ip.as_deref(), Some("None"), "headless");
    let app = &objects[2];
    assert_eq!(app["metadata"]["name"], "perception");
    let env = app.pointer("/spec/template/spec/containers/0/env").unwrap().to_string();
    assert!(env.contains("ros-discovery-server:11811") && env.contains("UDPv4"), "{env}");
    assert_eq!(app.pointer("/spec/strategy/rollingUpdate/maxSurge").unwrap(), "25%");
    assert!(!objects.iter().any(|o| o["kind"] == "PersistentVolumeClaim"));
}

#[test]
fn a_rigelfile_is_accepted_as_it_is() {
    check_golden("rigelfile");
    let spec = parse(&std::fs::read_to_string(golden_dir().join("rigelfile.spec.yaml")).unwrap()).unwrap();
    assert_eq!(spec.name, "rigel-k8s-application");
    let objects = render(&spec).unwrap();
    let master = objects.iter().find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "ros-master").unwrap();
    assert_eq!(master.pointer("/spec/template/spec/nodeSelector/role").unwrap(), "master");
    let pvc: PersistentVolumeClaim =
        serde_json::from_value(objects.iter().find(|o| o["kind"] == "PersistentVolumeClaim").unwrap().clone()).unwrap();
    assert_eq!(pvc.metadata.name.as_deref(), Some("logs-volume-pvc"));
    let app = objects.last().unwrap();
    assert_eq!(app.pointer("/spec/template/metadata/labels/app").unwrap(), "rigel-k8s-application");
}

#[test]
fn bad_specs_are_refused_naming_the_field() {
    let base = "image: robot:1\n";
    for (extra, field) in [
        ("imagee: x\n", "imagee"),
        ("persistent_storage:\n  volumes:\n    - {name: logs, size: -1Gi}\n", "persistent_storage.volumes[0].size"),
        ("persistent_storage:\n  volumes:\n    - {name: logs, size: 5Gb}\n", "persistent_storage.volumes[0].size"),
        ("persistent_storage:\n  volumes:\n    - {name: logs, size: 1Gi, sise: 2}\n", "persistent_storage.volumes[0]"),
        ("rolling_update: {max_surge: -1}\n", "rolling_update.max_surge"),
        ("rolling_update: {max_unavailable: 150%}\n", "rolling_update.max_unavailable"),
        ("replicas: -2\n", "replicas"),
        ("resources: {requests: {memory: 5Gb}}\n", "resources.requests.memory"),
        ("name: Bad_Name\n", "name"),
        ("devices: [ttyUSB0]\n", "devices[0]"),
        (
            "additional_k8s_params:\n  spec:\n    template:\n      spec:\n        containers:\n          - {name: ros-app, imagePullPolicyy: Always}\n",
            "additional_k8s_params",
        ),
    ] {
        let text = format!("{base}{extra}");
        let e = parse(&text).and_then(|s| render(&s).map(|_| ())).expect_err(&text);
        assert!(e.field.starts_with(field), "{text}: {e}");
    }
    let e = parse("name: x\n").unwrap_err();
    assert!(e.message.contains("image"), "{e}");
}

fn write_spec(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let p = dir.path().join("app.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn apply_status_update_and_delete_on_the_fake_api_server() {
    let fake = FakeApiServer::start().await.unwrap();
    let kc = Some(fake.kubeconfig_path().to_path_buf());
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        &dir,
        "name: nav\nimage: robot:1.0.0\ndeploy_ros_master: true\npersistent_storage:\n  volumes:\n    - {name: logs-volume, size: 1Gi}\n",
    );
    run_app(
        AppCmd::Apply { file: spec.clone(), timeout: Some(std::time::Duration::from_secs(5)), kubeconfig: kc.clone() },
        false,
    )
    .await
    .unwrap();
    let app = fake.get::<Deployment>(Some("default"), "nav").expect("app deployment");
    assert_eq!(app.metadata.labels.as_ref().unwrap()["otafleet.io/app"], "nav");
    assert!(fake.get::<Service>(Some("default"), "ros-master").is_some());
    let rv = app.metadata.resource_version.clone();

    // Applying the same spec again changes nothing.
    run_app(AppCmd::Apply { file: spec.clone(), timeout: None, kubeconfig: kc.clone() }, false).await.unwrap();
    assert_eq!(fake.get::<Deployment>(Some("default"), "nav").unwrap().metadata.resource_version, rv);
    run_app(AppCmd::Status { name: "nav".into(), namespace: "default".into(), kubeconfig: kc.clone() }, true)
        .await
        .unwrap();

    // A rolling update to a new image, waited for.
    let update = |image: &str| AppCmd::Update {
        name: "nav".into(),
        image: image.into(),
        version: None,
        namespace: "default".into(),
        timeout: std::time::Duration::from_secs(3),
        kubeconfig: kc.clone(),
    };
    run_app(update("robot:1.1.0"), false).await.unwrap();
    let app = fake.get::<Deployment>(Some("default"), "nav").unwrap();
    let pod = app.spec.unwrap().template;
    assert_eq!(pod.spec.unwrap().containers[0].image.as_deref(), Some("robot:1.1.0"));
    assert_eq!(pod.metadata.unwrap().labels.unwrap()["sw_version"], "1.1.0");

    // A readiness that never comes: the reason is in the error.
    fake.set_failing_image("robot:9.9.9", "CrashLoopBackOff");
    let e = run_app(update("robot:9.9.9"), false).await.unwrap_err().to_string();
    assert!(e.contains("CrashLoopBackOff") && e.contains("not ready"), "{e}");
    let e = run_app(update("robot:1.2.0").clone(), false).await;
    assert!(e.is_ok(), "{e:?}");
    // An apply whose readiness never comes fails with the reason, too.
    let broken = write_spec(&dir, "name: cam\nimage: robot:9.9.9\ndeploy_ros_master: false\nros_version: 1\n");
    let e = run_app(
        AppCmd::Apply { file: broken, timeout: Some(std::time::Duration::from_secs(3)), kubeconfig: kc.clone() },
        false,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("CrashLoopBackOff") && e.contains("cam"), "{e}");
    let missing = AppCmd::Status { name: "nope".into(), namespace: "default".into(), kubeconfig: kc.clone() };
    assert!(run_app(missing, false).await.is_err());

    // Delete keeps the claims unless asked.
    let delete = |volumes: bool| AppCmd::Delete {
        name: "nav".into(),
        namespace: "default".into(),
        delete_volumes: volumes,
        kubeconfig: kc.clone(),
    };
    run_app(delete(false), false).await.unwrap();
    assert!(fake.get::<Deployment>(Some("default"), "nav").is_none());
    assert!(fake.get::<Deployment>(Some("default"), "ros-master").is_none());
    assert!(fake.get::<PersistentVolumeClaim>(Some("default"), "logs-volume-pvc").is_some());
    run_app(delete(true), false).await.unwrap();
    assert!(fake.get::<PersistentVolumeClaim>(Some("default"), "logs-volume-pvc").is_none());
    assert!(run_app(delete(true), false).await.is_err(), "nothing left to delete");
}
