//! End-to-end rollouts: the real server binary, a simulated fleet speaking the
//! real device protocol, and a `kill -9` of the server in the middle.

mod common;

use common::*;
use otafleet_agent::sim::{self, SimArgs};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rollout(h: &Http, id: i64) -> Value {
    h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body
}

/// Waits until the rollout rests in one of `states` (with a rollback
/// requested, `failed` is only a step on the way to `rolled_back`).
fn wait_state(h: &Http, id: i64, states: &[&str], secs: u64) -> Value {
    eventually(Duration::from_secs(secs), || {
        let r = rollout(h, id);
        let state = r["state"].as_str().unwrap_or("");
        let resting = state == "rolled_back" || r["rollback_requested"] != true;
        (resting && states.contains(&state)).then_some(r)
    })
}

fn all_actions(h: &Http, id: i64) -> Vec<Value> {
    h.get(&format!("/api/v1/rollouts/{id}/actions?limit=10000"), Some(ADMIN)).body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_succeed_and_a_failing_canary_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&sqlite_url(&dir), &["--poll-interval-secs", "1"]);
    let url = s.url.clone();
    let args =
        SimArgs { devices: 20, latency: 20, poll_ms: 100, fail_version: Some("3.0.0".into()), ..Default::default() };
    let fleet = sim::spawn(&url, Some(ADMIN), &args).await.unwrap();
    let (good, bad) = tokio::task::spawn_blocking(move || {
        let h = Http::new(&url);
        let body = json!({"version": "2.0.0", "selector": "device_type=sim", "strategy": {"steps": [1, "25%", "100%"], "max_parallel": 4}});
        assert_eq!(h.post("/api/v1/releases", Some(ADMIN), Some(r#"{"version":"2.0.0"}"#)).status, 201);
        let r = h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.body["id"].as_i64().unwrap();
        let done = wait_state(&h, id, &["succeeded", "failed", "rolled_back"], 120);
        // Bad release: the canary fails its health check and rolls back on its own.
        let r = h.post("/ota/deploy?version=3.0.0&wave=canary", Some(ADMIN), None);
        let bad_id = r.body["job_id"].as_i64().unwrap();
        let bad = wait_state(&h, bad_id, &["rolled_back", "succeeded"], 120);
        let devices = h.get("/api/v1/devices?limit=1000", Some(ADMIN)).body;
        let jobs = h.get("/ota/jobs", Some(ADMIN)).body;
        let events = h.get(&format!("/api/v1/events?rollout_id={bad_id}&kind=rollout.failed"), Some(ADMIN)).body;
        ((done, devices), (bad, jobs, events))
    })
    .await
    .unwrap();
    fleet.stop().await;
    let ((done, devices), (bad, jobs, events)) = (good, bad);
    assert_eq!(done["state"], "succeeded", "{done}");
    let sizes: Vec<i64> =
        done["progress"].as_array().unwrap().iter().map(|w| w["succeeded"].as_i64().unwrap()).collect();
    assert_eq!(sizes, vec![1, 4, 15]);
    // The registry shows the real versions; the failed canary still runs 2.0.0.
    let versions: Vec<&str> =
        devices["items"].as_array().unwrap().iter().map(|d| d["current_version"].as_str().unwrap()).collect();
    assert!(versions.iter().all(|v| *v == "2.0.0"), "{versions:?}");
    assert_eq!(bad["state"], "rolled_back", "{bad}");
    assert!(bad["reason"].as_str().unwrap().contains("failure threshold"));
    assert_eq!(jobs[0]["status"], "rolled_back");
    // The gate decision is recorded with the numbers that led to it.
    assert_eq!(events["items"][0]["data"]["gate"]["failed"], 1);
    assert_eq!(events["items"][0]["data"]["gate"]["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_rollout_resumes_without_repeating_or_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let extra = ["--poll-interval-secs", "1"];
    let start = |db: &str| {
        let mut s = Server::start_at(db, &listen, &extra);
        s.url = format!("http://{listen}");
        s
    };
    let mut server = start(&db);
    let url = server.url.clone();
    let n = 40;
    let args = SimArgs { devices: n, latency: 60, poll_ms: 100, ..Default::default() };
    let fleet = sim::spawn(&url, Some(ADMIN), &args).await.unwrap();
    let (id, before) = tokio::task::spawn_blocking(move || {
        let h = Http::new(&url);
        h.post("/api/v1/releases", Some(ADMIN), Some(r#"{"version":"2.0.0"}"#));
        let body = json!({"version": "2.0.0", "strategy": {"steps": [1, "25%", "100%"], "max_parallel": 5, "timeout_secs": 600}});
        let r = h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.body["id"].as_i64().unwrap();
        // Wait until the last wave is under way, then pull the plug.
        let before = eventually(Duration::from_secs(60), || {
            let r = rollout(&h, id);
            (r["current_wave"] == 2 && r["progress"][2]["succeeded"].as_i64().unwrap_or(0) >= 3).then_some(r)
        });
        (id, before)
    })
    .await
    .unwrap();
    server.kill9();
    assert_eq!(before["state"], "running");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server2 = start(&db);
    let url2 = server2.url.clone();
    let (done, actions, devices) = tokio::task::spawn_blocking(move || {
        let h = Http::new(&url2);
        let done = wait_state(&h, id, &["succeeded", "failed", "rolled_back"], 120);
        (done, all_actions(&h, id), h.get("/api/v1/devices?limit=1000", Some(ADMIN)).body)
    })
    .await
    .unwrap();
    let installs = fleet.stats.installs_ok.load(Ordering::Relaxed);
    fleet.stop().await;
    assert_eq!(done["state"], "succeeded", "{done}");
    // Exactly one install action per device, each attempted once, and every
    // device installed exactly once: nothing repeated, nothing lost.
    assert_eq!(actions.len(), n);
    let mut ids: Vec<&str> = actions.iter().map(|a| a["device_id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
    assert!(actions.iter().all(|a| a["state"] == "succeeded" && a["attempts"] == 1), "{actions:?}");
    assert_eq!(installs, n as u64);
    assert!(devices["items"].as_array().unwrap().iter().all(|d| d["current_version"] == "2.0.0"));
}
