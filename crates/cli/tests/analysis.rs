//! Analysis gates against the real binary and a simulated fleet that sends
//! telemetry: a release whose canary runs hot (its `cpu_temp_c` above 1.1 ×
//! the baseline of the devices still on the old version) fails its analysis
//! and is rolled back before the next wave; a healthy release passes every
//! wave; a check with no data pauses the rollout with the reason until an
//! operator promotes it; checks this server cannot measure and malformed
//! checks are refused with the field named; a `no_firing_alerts` check fails
//! a canary an alert rule fires for. Every measurement is a
//! `rollout.analysis` event with its numbers. On SQLite and PostgreSQL.
//! Prometheus checks run against Debian's `prometheus` scraping the server's
//! own `/metrics` (SKIPPED where it is not installed, unless
//! `OTAFLEET_TEST_PROMETHEUS` demands it).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const DEVICES: usize = 10;

fn sim(server: &str) -> std::process::Child {
    let fleet = format!(
        "--devices {DEVICES} --poll-ms 200 --latency 20 --labels device_type=robot,site=lab \
         --metric cpu_temp_c=normal(60,1.5) --metric-version 2.2.0:cpu_temp_c=normal(85,1.5) --metric-interval-ms 300"
    );
    spawn_sim(server, &fleet.split_whitespace().collect::<Vec<_>>())
}

struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn release(h: &Http, version: &str) {
    let r = h.post("/api/v1/releases", Some(ADMIN), Some(&json!({ "version": version }).to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
}

/// A check of the canary's temperature against the baseline, and one
/// absolute limit; measured every second, twice.
fn strategy(metric: &str) -> Value {
    json!({
        "steps": [1, "100%"],
        "bake_time_secs": 1,
        "analysis": [
            {"name": "temp-vs-baseline", "kind": "metric", "metric": metric, "agg": "p95", "window_secs": 5,
             "condition": {"op": "<=", "factor": 1.1}, "initial_delay_secs": 2, "interval_secs": 1, "count": 2,
             "min_samples": 3},
            {"name": "temp-limit", "kind": "metric", "metric": metric, "agg": "max", "window_secs": 5,
             "condition": {"op": "<", "threshold": 80}, "initial_delay_secs": 2, "interval_secs": 1, "count": 2,
             "min_samples": 3}
        ]
    })
}

fn create(h: &Http, version: &str, strategy: Value) -> Resp {
    let body = json!({ "version": version, "selector": "device_type=robot", "strategy": strategy });
    h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()))
}

fn rollout(h: &Http, id: i64) -> Value {
    let r = h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

fn wait_state(h: &Http, id: i64, states: &[&str]) -> Value {
    eventually(Duration::from_secs(60), || {
        let r = rollout(h, id);
        states.contains(&r["state"].as_str().unwrap_or("")).then_some(r)
    })
}

fn analysis_events(h: &Http, id: i64) -> Vec<Value> {
    let r = h.get(&format!("/api/v1/events?rollout_id={id}&kind=rollout.analysis&limit=100"), Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["items"].as_array().cloned().unwrap_or_default()
}

fn versions(h: &Http) -> Vec<String> {
    let r = h.get("/api/v1/devices?selector=device_type%3Drobot&limit=100", Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["current_version"].as_str().unwrap_or("").to_string())
        .collect()
}

fn run(db: &str) {
    let server = Server::start(db, &[&["--poll-interval-secs", "1"][..], &QUICK_TELEMETRY].concat());
    let h = Http::new(&server.url);
    let _sim = Guard(sim(&server.url));
    eventually(Duration::from_secs(30), || (versions(&h).len() == DEVICES).then_some(()));
    for v in ["2.1.0", "2.2.0", "2.3.0", "2.4.0"] {
        release(&h, v);
    }

    // Refused before anything is stored: checks this server cannot measure, bad values.
    let prom = json!({"analysis": [{"name": "p", "kind": "prometheus", "query": "up", "condition": {"op": ">", "threshold": 0}}]});
    let r = create(&h, "2.1.0", prom);
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "strategy.analysis[0].kind", "{}", r.text);
    assert!(r.text.contains("--prometheus-url"), "{}", r.text);
    let mut bad = strategy("cpu_temp_c");
    bad["analysis"][1]["failure_limit"] = json!(2);
    let r = create(&h, "2.1.0", bad);
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "strategy.analysis[1].failure_limit", "{}", r.text);
    let mut unknown = strategy("cpu_temp_c");
    unknown["analysis"][0]["threshold"] = json!(1);
    let r = create(&h, "2.1.0", unknown);
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("threshold"), "{}", r.text);
    let r = h.get("/api/v1/rollouts", Some(ADMIN));
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(0), "a refused rollout stores nothing: {}", r.text);

    // 1. The hot release: its canary fails the analysis, the fleet is rolled back, wave 1 never starts.
    let r = create(&h, "2.2.0", strategy("cpu_temp_c"));
    assert_eq!(r.status, 201, "{}", r.text);
    let hot = r.body["id"].as_i64().unwrap();
    let done = wait_state(&h, hot, &["rolled_back", "succeeded", "paused"]);
    assert_eq!(done["state"], "rolled_back", "{done}");
    assert_eq!(done["current_wave"], 0, "stopped at the canary: {done}");
    assert!(done["reason"].as_str().unwrap().contains("failed"), "{done}");
    let events = analysis_events(&h, hot);
    let failed: Vec<&Value> =
        events.iter().filter(|e| e["data"]["measurement"]["outcome"]["outcome"] == "fail").collect();
    assert!(!failed.is_empty(), "{events:?}");
    let d = &failed[0]["data"]["measurement"]["detail"];
    let observed = d["observed"].as_f64().unwrap();
    assert!(observed > 80.0, "the canary runs hot: {d}");
    if d["name"] == "temp-vs-baseline" {
        let baseline = d["baseline"].as_f64().unwrap();
        assert!((55.0..66.0).contains(&baseline), "the baseline is the fleet on 1.0.0: {d}");
        assert_eq!(d["devices"], 1, "{d}");
        assert_eq!(d["baseline_devices"].as_u64(), Some(DEVICES as u64 - 1), "{d}");
    }
    // The API and the CLI show each check with its latest numbers.
    let failed_check = done["analysis"].as_array().unwrap().iter().find(|c| c["verdict"] == "failed").unwrap();
    let last = &failed_check["last"];
    assert!(last["observed"].as_f64().unwrap() > last["threshold"].as_f64().unwrap(), "{failed_check}");
    let (code, out, err) = cli(&server.url, Some(ADMIN), &["rollouts", "get", &hot.to_string()]);
    assert_eq!(code, 0, "{err}");
    let name = failed_check["name"].as_str().unwrap();
    let row = out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("failed") && row.contains(&otafleet_core::analysis::num(last["observed"].as_f64().unwrap())),
        "{out}"
    );
    assert!(out.contains(&format!("{name}: ")), "the last problem is quoted: {out}");
    eventually(Duration::from_secs(30), || versions(&h).iter().all(|v| v == "1.0.0").then_some(()));
    let actions = h.get(&format!("/api/v1/rollouts/{hot}/actions?limit=100"), Some(ADMIN));
    let installs: Vec<&Value> =
        actions.body["items"].as_array().unwrap().iter().filter(|a| a["kind"] == "install").collect();
    assert_eq!(installs.iter().filter(|a| a["state"] == "succeeded").count(), 1, "only the canary installed");
    assert!(installs.iter().filter(|a| a["wave"] == 1).all(|a| a["state"] == "skipped"));

    // 2. A healthy release passes both waves' analysis.
    let r = create(&h, "2.1.0", strategy("cpu_temp_c"));
    assert_eq!(r.status, 201, "{}", r.text);
    let ok = r.body["id"].as_i64().unwrap();
    let done = wait_state(&h, ok, &["succeeded", "failed", "rolled_back", "paused"]);
    assert_eq!(done["state"], "succeeded", "{done} {:?}", analysis_events(&h, ok));
    let events = analysis_events(&h, ok);
    assert!(events.iter().all(|e| e["data"]["measurement"]["outcome"]["outcome"] == "pass"), "{events:?}");
    // Wave 0: both checks twice; wave 1 (everyone): the absolute one only, twice.
    let wave1: Vec<&Value> = events.iter().filter(|e| e["data"]["wave"] == 1).collect();
    assert_eq!(wave1.len(), 2, "{events:?}");
    assert!(wave1.iter().all(|e| e["data"]["check"] == "temp-limit"));
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(versions(&h).iter().all(|v| v == "2.1.0"));

    // 3. No data: the rollout pauses, says why, and waits; a promote lets it go on.
    let r = create(
        &h,
        "2.3.0",
        json!({"steps": [1, "100%"], "analysis": [
        {"name": "sensor-rate", "kind": "metric", "metric": "lidar_hz", "agg": "avg", "window_secs": 5,
         "condition": {"op": ">=", "factor": 0.9}, "interval_secs": 1}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let quiet = r.body["id"].as_i64().unwrap();
    let paused = wait_state(&h, quiet, &["paused", "succeeded", "failed"]);
    assert_eq!(paused["state"], "paused", "{paused}");
    assert!(paused["reason"].as_str().unwrap().contains("inconclusive"), "{paused}");
    assert_eq!(paused["analysis"][0]["verdict"], "inconclusive", "{paused}");
    let events = analysis_events(&h, quiet);
    assert!(
        events[0]["data"]["measurement"]["detail"]["reason"].as_str().unwrap().starts_with("no data"),
        "{events:?}"
    );
    // Still paused a while later: nobody passed it silently.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rollout(&h, quiet)["state"], "paused");
    let (code, out, err) = cli(&server.url, Some(ADMIN), &["rollouts", "promote", &quiet.to_string()]);
    assert_eq!(code, 0, "{out} {err}");
    let done = wait_state(&h, quiet, &["succeeded", "failed", "rolled_back"]);
    assert_eq!(done["state"], "succeeded", "{done}");
    // The relative check does not apply to the last wave of everyone.
    assert_eq!(done["analysis"][0]["verdict"], "not_applicable", "{done}");

    // 4. An alert rule fires on the hot canary; a no_firing_alerts check fails the rollout.
    let rule = json!({"name": "robot-hot", "metric": "cpu_temp_c", "agg": "max", "window_secs": 2, "op": ">",
                      "threshold": 80, "selector": "device_type=robot", "severity": "critical"});
    let r = h.post("/api/v1/alerts/rules", Some(ADMIN), Some(&rule.to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    // The fleet runs 2.3.0 (~60 °C); the canary on 2.2.0 runs hot again (~85 °C).
    let r = create(
        &h,
        "2.2.0",
        json!({"steps": [1, "100%"], "analysis": [
        {"name": "no-critical-alerts", "kind": "no_firing_alerts", "min_severity": "critical",
         "initial_delay_secs": 3, "interval_secs": 1}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let alerted = r.body["id"].as_i64().unwrap();
    let done = wait_state(&h, alerted, &["rolled_back", "succeeded", "paused"]);
    assert_eq!(done["state"], "rolled_back", "{done} {:?}", analysis_events(&h, alerted));
    let events = analysis_events(&h, alerted);
    let d = &events.last().unwrap()["data"]["measurement"]["detail"];
    let listed = d["firing"][0].as_str().unwrap();
    assert!(listed.ends_with("/robot-hot (critical)"), "{d}");
}

struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's Prometheus scraping `target` (host:port) every second, or None (SKIPPED).
fn prometheus(target: &str) -> Option<Prometheus> {
    if !std::path::Path::new("/usr/bin/prometheus").exists() {
        assert!(
            std::env::var_os("OTAFLEET_TEST_PROMETHEUS").is_none(),
            "OTAFLEET_TEST_PROMETHEUS is set but prometheus is not installed"
        );
        eprintln!("SKIPPED Prometheus checks: install Debian's prometheus to run them");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: otafleet\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start prometheus");
    let url = format!("http://127.0.0.1:{port}");
    let ready = format!("{url}/-/ready");
    eventually(Duration::from_secs(60), || {
        reqwest::blocking::get(&ready).ok().filter(|r| r.status().is_success()).map(|_| ())
    });
    Some(Prometheus { child, url, _dir: dir })
}

/// Waits until Prometheus has scraped the server.
fn scraped(prom: &Prometheus) {
    let q = format!("{}/api/v1/query?query=up%7Bjob%3D%22otafleet%22%7D", prom.url);
    eventually(Duration::from_secs(60), || {
        let body: Value = reqwest::blocking::get(&q).ok()?.json().ok()?;
        (body["data"]["result"][0]["value"][1] == "1").then_some(())
    });
}

fn prometheus_checks() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    // Prometheus must know the server's address before the server knows Prometheus':
    // the server is started on a port chosen here.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let Some(prom) = prometheus(&listen) else { return };
    let server = Server::start_at(&db, &listen, &["--poll-interval-secs", "1", "--prometheus-url", &prom.url]);
    let h = Http::new(&server.url);
    let _sim = Guard(sim(&server.url));
    eventually(Duration::from_secs(30), || (versions(&h).len() == DEVICES).then_some(()));
    scraped(&prom);
    for v in ["3.0.0", "3.1.0", "3.2.0"] {
        release(&h, v);
    }
    let check = |query: &str, op: &str, threshold: f64| {
        json!({"steps": [1, "100%"], "analysis": [{"name": "prom", "kind": "prometheus", "query": query,
            "condition": {"op": op, "threshold": threshold}, "initial_delay_secs": 1, "interval_secs": 1}]})
    };
    // Healthy: the fleet checks in (placeholders rendered into the query).
    let r =
        create(&h, "3.0.0", check("sum(otafleet_device_checkins_total) + 0 * {{rollout}} + 0 * {{wave}}", ">", 0.0));
    assert_eq!(r.status, 201, "{}", r.text);
    let ok = r.body["id"].as_i64().unwrap();
    let done = wait_state(&h, ok, &["succeeded", "rolled_back", "paused"]);
    assert_eq!(done["state"], "succeeded", "{done} {:?}", analysis_events(&h, ok));
    let events = analysis_events(&h, ok);
    let d = &events[0]["data"]["measurement"]["detail"];
    assert!(d["observed"].as_f64().unwrap() > 0.0, "{d}");
    assert_eq!(d["query"], format!("sum(otafleet_device_checkins_total) + 0 * {ok} + 0 * 0"), "{d}");
    // Failing: the same value against an impossible bound.
    let r = create(&h, "3.1.0", check("sum(otafleet_device_checkins_total)", "<", 0.0));
    let bad = r.body["id"].as_i64().unwrap();
    let done = wait_state(&h, bad, &["rolled_back", "succeeded", "paused"]);
    assert_eq!(done["state"], "rolled_back", "{done}");
    // No series: no data, the rollout pauses.
    let r = create(&h, "3.2.0", check("sum(no_such_metric_anywhere)", ">", 0.0));
    let quiet = r.body["id"].as_i64().unwrap();
    let done = wait_state(&h, quiet, &["paused", "succeeded", "rolled_back"]);
    assert_eq!(done["state"], "paused", "{done}");
    // Prometheus gone: a failed query is inconclusive, never a pass (resume measures again).
    drop(prom);
    let r = h.post(&format!("/api/v1/rollouts/{quiet}/resume"), Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let done = wait_state(&h, quiet, &["paused", "succeeded", "rolled_back"]);
    assert_eq!(done["state"], "paused", "{done}");
    let last = analysis_events(&h, quiet).last().cloned().unwrap();
    let reason = last["data"]["measurement"]["detail"]["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("query failed"), "{reason}");
}

#[test]
fn prometheus_checks_against_a_real_prometheus() {
    prometheus_checks();
}

#[test]
fn analysis_gates_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    run(&sqlite_url(&dir));
}

#[test]
fn analysis_gates_on_postgres() {
    let Some(url) = postgres_url() else { return };
    run(&url);
}
