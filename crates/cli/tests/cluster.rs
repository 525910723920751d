//! Kubernetes workloads and Akri boards as rollout targets: the real
//! `otafleet serve`, two cluster agents (`otafleet operator run --cluster …
//! --workloads … --boards`) as processes, each against an in-process fake
//! Kubernetes API server standing for its cluster.

mod common;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use otafleet_k8s::crd::FlashJob;
use otafleet_k8s::fake::{fixtures, FakeApiServer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "robots";

fn robot_pod(name: &str, image: &str, version: &str) -> Pod {
    fixtures::running_pod(NS, name, &[("app", "robot"), ("sw_version", version)], image)
}

/// A Deployment of the robot, rolled out (the fake plays its controller).
fn robot_deployment(name: &str, image: &str, version: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "robot", "sw_version": version}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"run": name}},
            "template": {"metadata": {"labels": {"run": name}},
                "spec": {"containers": [{"name": "robot", "image": image}]}}},
    }))
    .unwrap()
}

/// A board discovered by Akri, running `version` (its Instance's `sw_version` label).
fn board(fake: &FakeApiServer, n: usize, version: &str) -> String {
    let uuid = fixtures::device_uuid(n);
    let mut i = fixtures::akri_instance(NS, &format!("esp32-{n}"), &uuid, "esp32", "thermo");
    i.metadata.labels = Some(BTreeMap::from([("sw_version".to_string(), version.to_string())]));
    fake.insert(&i).unwrap();
    uuid
}

/// A child process killed when dropped (a failing test leaves no agent behind).
struct Proc(Child);

impl Proc {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster agent for `fake` as cluster `name` speaking for the robot pods
/// and Deployments (and, with `boards`, the Akri boards), its log on stderr.
fn agent(fake: &FakeApiServer, server: &str, token: &str, name: &str, boards: bool) -> Proc {
    let mut extra = vec!["--workloads", "pod:app=robot", "--workloads", "deployment:app=robot"];
    if boards {
        extra.push("--boards");
    }
    agent_with(fake, server, token, name, &extra)
}

fn agent_with(fake: &FakeApiServer, server: &str, token: &str, name: &str, extra: &[&str]) -> Proc {
    let kubeconfig = fake.kubeconfig_path().display().to_string();
    let mut args = vec![
        "operator",
        "run",
        "--kubeconfig",
        &kubeconfig,
        "--cluster",
        name,
        "--poll-interval",
        "250ms",
        "--rollout-timeout",
        "3s",
        "--metrics-listen",
        "127.0.0.1:0",
        "--lease-duration",
        "2s",
        "--requeue",
        "1s",
    ];
    args.extend_from_slice(extra);
    Proc(
        Command::new(bin())
            .args(&args)
            .env("OTAFLEET_URL", server)
            .env("OTAFLEET_TOKEN", token)
            .env("OTAFLEET_LOG", "warn,otafleet_k8s=info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn otafleet operator run"),
    )
}

fn delegate(server: &str, name: &str) -> String {
    let (code, out, err) = cli(server, Some(ADMIN), &["-o", "json", "delegates", "create", name, "--kind", "cluster"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn devices(http: &Http, selector: &str) -> Vec<Value> {
    let path = format!("/api/v1/devices?limit=1000&selector={}", urlencode(selector));
    let r = http.get(&path, Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["items"].as_array().cloned().unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn create(http: &Http, path: &str, body: Value) -> Value {
    let r = http.post(path, Some(ADMIN), Some(&body.to_string()));
    assert!(r.status == 201 || r.status == 200, "{path}: {} {}", r.status, r.body);
    r.body
}

fn rollout_state(http: &Http, id: i64) -> Value {
    http.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body
}

fn wait_state(http: &Http, id: i64, want: &[&str], timeout: Duration) -> Value {
    let end = std::time::Instant::now() + timeout;
    loop {
        let r = rollout_state(http, id);
        if want.iter().any(|w| r["state"] == *w) {
            return r;
        }
        assert!(std::time::Instant::now() < end, "rollout {id} not {want:?} within {timeout:?}: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn images(fake: &FakeApiServer) -> BTreeMap<String, (String, Option<String>)> {
    fake.list::<Pod>(Some(NS))
        .into_iter()
        .filter(|p| p.metadata.labels.as_ref().is_some_and(|l| l.get("app").is_some_and(|a| a == "robot")))
        .map(|p| {
            let image = p.spec.as_ref().and_then(|s| s.containers[0].image.clone()).unwrap_or_default();
            let version = p.metadata.labels.as_ref().and_then(|l| l.get("sw_version").cloned());
            (p.metadata.name.unwrap_or_default(), (image, version))
        })
        .collect()
}

/// One rollout over pods in two clusters and boards in one, canary → 4 →
/// everyone; the server is killed (-9) and restarted, and the first
/// cluster's agent killed and restarted, in the middle. Every pod ends on the
/// new image, every board is flashed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rollout_reaches_pods_in_two_clusters_and_boards_through_restarts() {
    let a = Arc::new(FakeApiServer::start().await.unwrap());
    let b = Arc::new(FakeApiServer::start().await.unwrap());
    // The flasher pods succeed at once (the test plays the kubelet).
    a.set_pod_phase_on_create(Some("Succeeded"));
    for n in 0..3 {
        a.insert(&robot_pod(&format!("a{n}"), "robot:1.0.0", "1.0.0")).unwrap();
        b.insert(&robot_pod(&format!("b{n}"), "robot:1.0.0", "1.0.0")).unwrap();
    }
    b.insert(&robot_deployment("arm", "robot:1.0.0", "1.0.0")).unwrap();
    let uuids: Vec<String> = (0..3).map(|n| board(&a, n, "1.0.0")).collect();
    let (fa, fb) = (a.clone(), b.clone());
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_url(&dir);
        let mut server = Server::start(&db, &[]);
        let http = Http::new(&server.url);
        let (ta, tb) = (delegate(&server.url, "a"), delegate(&server.url, "b"));
        let mut agent_a = agent(&fa, &server.url, &ta, "a", true);
        let agent_b = agent(&fb, &server.url, &tb, "b", false);
        let all = eventually(Duration::from_secs(30), || {
            let d = devices(&http, "cluster in (a,b)");
            (d.len() == 10).then_some(d)
        });
        let by_kind = |k: &str| all.iter().filter(|d| d["labels"]["kind"] == k).count();
        assert_eq!((by_kind("pod"), by_kind("deployment"), by_kind("board")), (6, 1, 3), "{all:?}");
        let pod = all.iter().find(|d| d["labels"]["name"] == "a0").unwrap();
        assert_eq!(pod["labels"]["node"], "node-a0");
        assert_eq!(pod["labels"]["app"], "robot", "the pod's own labels come along");
        assert_eq!(pod["current_version"], "1.0.0");
        let esp = all.iter().find(|d| d["labels"]["kind"] == "board").unwrap();
        assert_eq!(
            (esp["labels"]["device_type"].as_str(), esp["labels"]["application_type"].as_str()),
            (Some("esp32"), Some("thermo"))
        );

        // The API server errs and conflicts: retried with backoff, re-read.
        fb.fail_next(Some("PATCH"), "/pods/", 503, 2);
        fb.fail_next(Some("PATCH"), "/pods/", 409, 1);
        create(
            &http,
            "/api/v1/releases",
            json!({"version": "2.0.0", "kind": "container", "image": "robot:2.0.0",
            "firmware": "fw/esp32-thermo:2.0.0", "flash_pod_image": "flasher:1"}),
        );
        let r = create(
            &http,
            "/api/v1/rollouts",
            json!({"version": "2.0.0", "selector": "cluster in (a,b)",
            "strategy": {"steps": [1, 4, "100%"], "bake_time_secs": 1}}),
        );
        let id = r["id"].as_i64().unwrap();
        assert_eq!(r["waves"], 3, "{r}");

        // The canary done: kill -9 the server and the first cluster's agent, start both again.
        eventually(Duration::from_secs(30), || {
            let r = rollout_state(&http, id);
            (r["current_wave"].as_i64() >= Some(1)).then_some(())
        });
        server.kill9();
        agent_a.kill();
        let server = Server::start_at(&db, server.url.trim_start_matches("http://"), &[]);
        let agent_a = agent(&fa, &server.url, &ta, "a", true);

        let done = wait_state(&http, id, &["succeeded", "failed", "rolled_back"], Duration::from_secs(60));
        assert_eq!(done["state"], "succeeded", "{done}");
        for fake in [&fa, &fb] {
            for (name, (image, version)) in images(fake) {
                assert_eq!((image.as_str(), version.as_deref()), ("robot:2.0.0", Some("2.0.0")), "{name}");
            }
        }
        let arm = fb.get::<Deployment>(Some(NS), "arm").unwrap();
        let arm_image = arm.spec.unwrap().template.spec.unwrap().containers[0].image.clone();
        assert_eq!(arm_image.as_deref(), Some("robot:2.0.0"));
        let now = devices(&http, "cluster in (a,b)");
        assert!(now.iter().all(|d| d["current_version"] == "2.0.0"), "{now:?}");
        // Each board flashed once, through FlashJobs of batches, none repeated after the restart.
        let jobs: Vec<FlashJob> = fa.list::<FlashJob>(Some(NS));
        for u in &uuids {
            let flashes = jobs.iter().filter(|j| j.spec.uuid.contains(u)).count();
            assert_eq!(flashes, 1, "board {u} in {flashes} FlashJobs");
        }
        assert!(jobs.iter().all(|j| j.spec.firmware == "fw/esp32-thermo:2.0.0" && j.spec.version == "2.0.0"));

        // Drift: an image set behind otafleet's back shows as the device's version.
        assert!(fb.modify::<Pod>(Some(NS), "b1", |p| p["spec"]["containers"][0]["image"] = json!("robot:2.1.7")));
        eventually(Duration::from_secs(10), || {
            let d = devices(&http, "cluster=b,name=b1");
            (d[0]["current_version"] == "2.1.7").then_some(())
        });
        // Gone: a pod deleted from the cluster is marked, not deleted.
        assert!(fb.delete::<Pod>(Some(NS), "b2"));
        eventually(Duration::from_secs(10), || {
            let d = devices(&http, "cluster=b,name=b2");
            (d.len() == 1 && d[0]["gone_at"].is_string()).then_some(())
        });

        // Scopes: b's token cannot report for a's devices (404) nor use the management API (403).
        let a_pod = devices(&http, "cluster=a,name=a0")[0]["id"].as_str().unwrap().to_string();
        let body = json!({"reports": [{"device_id": a_pod, "report": {"action_id": 1, "seq": 99, "state": "failed"}}]});
        let r = http.post("/delegate/v1/status", Some(&tb), Some(&body.to_string()));
        assert_eq!(r.status, 404, "{}", r.body);
        let r = http.get("/api/v1/rollouts", Some(&tb));
        assert_eq!(r.status, 403, "{}", r.body);
        let refused = fb.requests().iter().filter(|r| r.method == "PATCH" && [503, 409].contains(&r.status)).count();
        let patches: Vec<String> = fb.requests().iter().filter(|r| r.method != "GET").map(|r| r.to_string()).collect();
        assert_eq!(refused, 3, "the injected faults were met and overcome: {patches:?}");
        let requests = fa.requests().len() + fb.requests().len();
        eprintln!("Kubernetes API requests: {requests} for 10 targets");
        drop((agent_a, agent_b, server));
    })
    .await
    .unwrap();
}

/// A canary whose pod never becomes ready (ImagePullBackOff) gets its image
/// back and fails the rollout; a flash pod that fails fails its boards and
/// the boards already flashed are flashed back to the previous firmware.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_in_the_cluster_roll_back_images_and_firmware() {
    let a = Arc::new(FakeApiServer::start().await.unwrap());
    a.set_failing_image("robot:3.0.0-broken", "ImagePullBackOff");
    a.set_pod_phase_on_create(Some("Succeeded"));
    for n in 0..3 {
        a.insert(&robot_pod(&format!("a{n}"), "robot:2.0.0", "2.0.0")).unwrap();
    }
    let uuids: Vec<String> = (0..3).map(|n| board(&a, n, "1.0.0")).collect();
    let fa = a.clone();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&sqlite_url(&dir), &[]);
        let http = Http::new(&server.url);
        let token = delegate(&server.url, "a");
        let agent_a = agent(&fa, &server.url, &token, "a", true);
        eventually(Duration::from_secs(30), || (devices(&http, "cluster=a").len() == 6).then_some(()));

        // The pods: a canary that never becomes ready.
        create(
            &http,
            "/api/v1/releases",
            json!({"version": "3.0.0-broken", "kind": "container", "image": "robot:3.0.0-broken"}),
        );
        let r = create(
            &http,
            "/api/v1/rollouts",
            json!({"version": "3.0.0-broken", "selector": "cluster=a,kind=pod",
            "strategy": {"preset": "canary"}}),
        );
        let id = r["id"].as_i64().unwrap();
        let done = wait_state(&http, id, &["succeeded", "failed", "rolled_back"], Duration::from_secs(30));
        assert_ne!(done["state"], "succeeded", "{done}");
        let actions = http.get(&format!("/api/v1/rollouts/{id}/actions"), Some(ADMIN)).body;
        let canary = &actions["items"][0];
        assert_eq!(canary["state"], "rolled_back", "{actions}");
        assert!(canary["error"].as_str().unwrap_or_default().contains("ImagePullBackOff"), "{canary}");
        for (name, (image, version)) in images(&fa) {
            assert_eq!((image.as_str(), version.as_deref()), ("robot:2.0.0", Some("2.0.0")), "{name} restored");
        }

        // The boards: the canary flashes, then every flash pod fails.
        create(
            &http,
            "/api/v1/releases",
            json!({"version": "1.0.0", "kind": "firmware",
            "firmware": "fw/esp32-thermo:1.0.0", "flash_pod_image": "flasher:1"}),
        );
        create(
            &http,
            "/api/v1/releases",
            json!({"version": "2.0.0", "kind": "firmware",
            "firmware": "fw/esp32-thermo:2.0.0", "flash_pod_image": "flasher:1"}),
        );
        let r = create(
            &http,
            "/api/v1/rollouts",
            json!({"version": "2.0.0", "selector": "cluster=a,kind=board",
            "strategy": {"steps": [1, "100%"], "bake_time_secs": 3}}),
        );
        let id = r["id"].as_i64().unwrap();
        let canary = eventually(Duration::from_secs(30), || {
            devices(&http, "cluster=a,kind=board").into_iter().find(|d| d["current_version"] == "2.0.0")
        });
        fa.set_pod_phase_on_create(Some("Failed"));
        let failed = wait_state(&http, id, &["failed", "rolled_back", "succeeded"], Duration::from_secs(30));
        assert_ne!(failed["state"], "succeeded", "{failed}");
        let actions = http.get(&format!("/api/v1/rollouts/{id}/actions?state=failed"), Some(ADMIN)).body;
        let failure = actions["items"][0]["error"].as_str().unwrap_or_default().to_string();
        assert!(failure.contains("FlashJob"), "{actions}");
        // The rollback flashes the canary back to 1.0.0's firmware.
        fa.set_pod_phase_on_create(Some("Succeeded"));
        let back = wait_state(&http, id, &["rolled_back"], Duration::from_secs(30));
        assert_eq!(back["state"], "rolled_back", "{back}");
        let canary_now = devices(&http, &format!("cluster=a,name={}", canary["labels"]["name"].as_str().unwrap()));
        assert_eq!(canary_now[0]["current_version"], "1.0.0", "{canary_now:?}");
        let jobs: Vec<FlashJob> = fa.list::<FlashJob>(Some(NS));
        assert!(
            jobs.iter().any(|j| j.spec.version == "1.0.0" && j.spec.firmware == "fw/esp32-thermo:1.0.0"),
            "{jobs:?}"
        );
        assert!(jobs.iter().all(|j| j.spec.uuid.iter().all(|u| uuids.contains(u))));
        drop(agent_a);
    })
    .await
    .unwrap();
}

/// A green rollout of `version` over the app `nav`, ended as `want`
/// (`failed` also accepts `rolled_back`).
fn roll_out_to_nav(http: &Http, version: &str, want: &str) {
    let r = create(
        http,
        "/api/v1/rollouts",
        json!({"version": version, "selector": "otafleet.io/app=nav", "strategy": {"preset": "green"}}),
    );
    let done =
        wait_state(http, r["id"].as_i64().unwrap(), &["succeeded", "failed", "rolled_back"], Duration::from_secs(30));
    assert!(done["state"] == want || (want == "failed" && done["state"] == "rolled_back"), "{version}: {done}");
}

/// A ROS application deployed with `otafleet app apply`, then its image
/// changes released through the control plane: the cluster agent sets the
/// `ros-app` container of the app's Deployment; a broken image is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ros_app_is_applied_then_rolled_out_through_the_cluster_agent() {
    let a = Arc::new(FakeApiServer::start().await.unwrap());
    a.set_failing_image("nav:3.0.0", "CrashLoopBackOff");
    let fa = a.clone();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("nav.yaml");
        std::fs::write(
            &spec,
            "name: nav\nnamespace: robots\nimage: registry.example/nav:1.0.0\ndeploy_ros_master: true\n",
        )
        .unwrap();
        let (spec, kc) = (spec.display().to_string(), fa.kubeconfig_path().display().to_string());
        let (code, out, err) = cli("http://127.0.0.1:1", None, &["-o", "json", "app", "render", &spec]);
        assert_eq!(code, 0, "{err}");
        let rendered: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(rendered.as_array().map(Vec::len), Some(3), "master Service, master Deployment, app: {out}");
        let (code, _, err) = cli("http://127.0.0.1:1", None, &["app", "apply", &spec, "--kubeconfig", &kc]);
        assert_eq!(code, 0, "{err}");
        let (code, out, err) = cli(
            "http://127.0.0.1:1",
            None,
            &["-o", "json", "app", "status", "nav", "--namespace", NS, "--kubeconfig", &kc],
        );
        assert_eq!(code, 0, "{err}");
        let status: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(status["ros_master"], true, "{status}");
        let (code, _, err) =
            cli("http://127.0.0.1:1", None, &["app", "apply", "/nonexistent.yaml", "--kubeconfig", &kc]);
        assert_ne!(code, 0);
        assert!(err.contains("/nonexistent.yaml"), "{err}");

        let dbdir = tempfile::tempdir().unwrap();
        let server = Server::start(&sqlite_url(&dbdir), &[]);
        let http = Http::new(&server.url);
        let token = delegate(&server.url, "a");
        let _agent = agent_with(
            &fa,
            &server.url,
            &token,
            "a",
            &["--workloads", "deployment:app.kubernetes.io/component=application", "--container", "ros-app"],
        );
        let device = eventually(Duration::from_secs(30), || {
            devices(&http, "cluster=a,kind=deployment").into_iter().find(|d| d["labels"]["name"] == "nav")
        });
        assert_eq!(device["current_version"], "1.0.0", "{device}");
        assert_eq!(device["labels"]["otafleet.io/app"], "nav", "{device}");
        let image = || {
            let d = fa.get::<Deployment>(Some(NS), "nav").unwrap();
            d.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap_or_default()
        };
        for (version, want) in [("2.0.0", "succeeded"), ("3.0.0", "failed")] {
            create(
                &http,
                "/api/v1/releases",
                json!({"version": version, "kind": "container",
                "image": format!("registry.example/nav:{version}")}),
            );
            roll_out_to_nav(&http, version, want);
        }
        assert_eq!(image(), "registry.example/nav:2.0.0", "the broken image was rolled back");
        // Releases of the whole spec: applied by the agent, a broken one rolled back to the previous spec.
        fa.set_failing_image("nav:5.0.0", "ImagePullBackOff");
        let mode = || {
            let d = fa.get::<Deployment>(Some(NS), "nav").unwrap();
            let env = d.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap_or_default();
            env.into_iter().find(|e| e.name == "MODE").and_then(|e| e.value)
        };
        for (version, want) in [("4.0.0", "succeeded"), ("5.0.0", "failed")] {
            let spec = json!({"name": "nav", "namespace": NS, "image": format!("registry.example/nav:{version}"),
                "deploy_ros_master": true, "replicas": 2, "env": {"MODE": format!("mode-{version}")}});
            create(&http, "/api/v1/releases", json!({"version": version, "kind": "app", "app_spec": spec}));
            roll_out_to_nav(&http, version, want);
        }
        assert_eq!(
            (image().as_str(), mode().as_deref()),
            ("registry.example/nav:4.0.0", Some("mode-4.0.0")),
            "4.0.0's spec is back"
        );
        let d = devices(&http, "otafleet.io/app=nav");
        assert_eq!(d[0]["current_version"], "4.0.0", "{d:?}");
        let (code, _, err) =
            cli("http://127.0.0.1:1", None, &["app", "delete", "nav", "--namespace", NS, "--kubeconfig", &kc]);
        assert_eq!(code, 0, "{err}");
        assert!(fa.get::<Deployment>(Some(NS), "nav").is_none());
    })
    .await
    .unwrap();
}
