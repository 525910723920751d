//! End-to-end device agent: the real `otafleet serve` with a signing key and
//! several real agent processes (`otafleet agent`, the same code as the
//! `otafleet-agent` binary) in temporary directories on loopback.
//!
//! Covered: enrollment and token scoping, artifact upload and ranged
//! download, a rollout that succeeds, one whose health check fails and is
//! rolled back on the device, one whose artifact was tampered with on the
//! server and is refused, a download killed in the middle and resumed, and
//! (when `OTAFLEET_TEST_MQTT_URL` is set) an MQTT push that starts an update
//! within about a second. Signed orders: a man in the middle ([`Mitm`])
//! replaying another device's or an old action's signed detail as a
//! rollback, or holding an order back until it expired, is refused with the
//! reason; so is an order signed with another key; the tracker's
//! `/ota/rollback` and `otafleet rollback` roll real agents back, after which
//! an install of a version older than the newest ever installed is refused.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A server with a fresh signing key and data dir.
struct Env {
    dir: tempfile::TempDir,
    server: Server,
    h: Http,
    args: Vec<String>,
    /// The test PKI when the server serves HTTPS.
    pki: Option<Pki>,
}

impl Env {
    fn start(extra: &[&str]) -> Env {
        Self::start_with(extra, false)
    }

    /// With `tls`, the server serves HTTPS with a certificate of a test CA
    /// (`pki`), which the test's HTTP helper and CLI trust.
    fn start_with(extra: &[&str], tls: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let pki = tls.then(|| pki(&dir.path().join("pki")));
        let keys = dir.path().join("keys");
        let (code, out, err) = cli("http://unused", None, &["keys", "generate", "--out", keys.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
        let key = keys.join("otafleet-signing.key");
        let data = dir.path().join("data");
        let mut args = vec![
            "--poll-interval-secs",
            "1",
            "--signing-key",
            key.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        let (cert, key) = match &pki {
            Some(p) => (p.cert.to_str().unwrap().to_string(), p.key.to_str().unwrap().to_string()),
            None => Default::default(),
        };
        if pki.is_some() {
            args.extend(["--tls-cert", &cert, "--tls-key", &key]);
        }
        args.extend_from_slice(extra);
        let server = Server::start(&sqlite_url(&dir), &args);
        let h = Http::trusting(&server.url, pki.as_ref().map(|p| p.ca.as_path()));
        let args = args.iter().map(|s| s.to_string()).collect();
        Env { dir, server, h, args, pki }
    }

    /// The CLI against this server (trusting its CA).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let ca = self.pki.as_ref().map(|p| p.ca.to_str().unwrap().to_string());
        let env: Vec<(&str, &str)> = ca.iter().map(|c| ("OTAFLEET_CA_FILE", c.as_str())).collect();
        cli_env(&self.server.url, Some(ADMIN), args, &env)
    }

    /// Kills the server (-9) and starts it again on the same address.
    fn restart_server(&mut self, offline: impl FnOnce()) {
        self.server.kill9();
        offline();
        let listen = self.server.url.split_once("://").unwrap().1.to_string();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.server = Server::start_at(&sqlite_url(&self.dir), &listen, &args);
    }

    fn public_key(&self) -> PathBuf {
        self.dir.path().join("keys").join("otafleet-signing.pub")
    }

    /// A rollout of `version` to the given devices only.
    fn rollout_to(&self, version: &str, devices: &[&str], strategy: Value) -> i64 {
        let body = json!({"version": version, "devices": devices, "strategy": strategy});
        let r = self.h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_i64().unwrap()
    }

    /// The error of the one failed action of a finished rollout.
    fn failure(&self, id: i64) -> String {
        let r = self.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 120);
        assert_ne!(r["state"], "succeeded", "{r}");
        let acts = self.actions(id);
        let failed: Vec<&Value> = acts.iter().filter(|a| a["state"] == "failed").collect();
        assert_eq!(failed.len(), 1, "{acts:?}");
        failed[0]["error"].as_str().unwrap_or_default().to_string()
    }

    fn enrollment_token(&self, labels: &str) -> String {
        let (code, out, err) = self.cli(&["-o", "json", "devices", "enroll-token", "create", "--labels", labels]);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str::<Value>(&out).unwrap()["token"].as_str().unwrap().to_string()
    }

    /// Creates a release of kind `file` for esp32 with one uploaded artifact.
    fn release(&self, version: &str, content: &[u8]) -> Value {
        let body = json!({"version": version, "kind": "file", "compatible": ["esp32"]});
        let r = self.h.post("/api/v1/releases", Some(ADMIN), Some(&body.to_string()));
        assert_eq!(r.status, 201, "{}", r.text);
        let file = self.dir.path().join(format!("app-{version}.txt"));
        std::fs::write(&file, content).unwrap();
        let (code, out, err) =
            self.cli(&["-o", "json", "releases", "upload", version, file.to_str().unwrap(), "--name", "app.txt"]);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str(&out).unwrap()
    }

    fn rollout(&self, version: &str, strategy: Value) -> i64 {
        let body = json!({"version": version, "selector": "device_type=esp32", "strategy": strategy});
        let r = self.h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_i64().unwrap()
    }

    /// Waits until the rollout rests in one of `states`. A rollout with a
    /// rollback requested is not at rest before `rolled_back`: `failed` is
    /// visible between the gate's decision and the rollback phase's end.
    fn wait_rollout(&self, id: i64, states: &[&str], secs: u64) -> Value {
        eventually(Duration::from_secs(secs), || {
            let r = self.h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body;
            let state = r["state"].as_str().unwrap_or("");
            let resting = state == "rolled_back" || r["rollback_requested"] != true;
            (resting && states.contains(&state)).then_some(r)
        })
    }

    fn actions(&self, id: i64) -> Vec<Value> {
        self.h.get(&format!("/api/v1/rollouts/{id}/actions?limit=1000"), Some(ADMIN)).body["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// One agent process with its own state and install directories.
struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
    runs: usize,
}

const HEALTH: &str = r#"["sh", "-c", "! grep -q broken \"$OTAFLEET_CURRENT/app.txt\""]"#;

impl Agent {
    fn start(env: &Env, name: &str, token: &str, extra: &str) -> Agent {
        Self::start_with(env, name, token, extra, HEALTH)
    }

    fn start_with(env: &Env, name: &str, token: &str, extra: &str, health: &str) -> Agent {
        Self::start_via(env, &env.server.url, &env.public_key(), name, token, extra, health)
    }

    /// An agent talking to `server` (the real one or a [`Mitm`] in front of
    /// it) and trusting the public key in `key`.
    fn start_via(env: &Env, server: &str, key: &Path, name: &str, token: &str, extra: &str, health: &str) -> Agent {
        let dir = env.dir.path().join(format!("agent-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("agent.toml");
        let text = format!(
            r#"server = "{server}"
{allow_http}state_dir = "state"
enrollment_token = "{token}"
public_key_file = "{key}"
name = "{name}"
initial_version = "1.0.0"
jitter = 0.0
{poll}{extra}
[health]
command = {health}
retries = 2
interval_secs = 0

[handlers.file]
type = "file"
dir = "app"
"#,
            key = key.display(),
            allow_http = if server.starts_with("http://") { "allow_http = true\n" } else { "" },
            poll = if extra.contains("poll_interval_secs") { "" } else { "poll_interval_secs = 1\n" },
        );
        std::fs::write(&config, text).unwrap();
        let mut a = Agent { child: None, dir, config, runs: 0 };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let log = std::fs::File::create(self.dir.join(format!("run{}.log", self.runs))).unwrap();
        let child = Command::new(bin())
            .args(["agent", "--config", self.config.to_str().unwrap()])
            .env("OTAFLEET_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn otafleet agent");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log of one run, without terminal colour codes.
    fn log(&self, run: usize) -> String {
        let raw = std::fs::read_to_string(self.dir.join(format!("run{run}.log"))).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    fn logs(&self) -> String {
        (1..=self.runs).map(|r| self.log(r)).collect::<Vec<_>>().join("\n")
    }

    /// The content the device runs now (file handler's `current` slot).
    fn running(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("app/current/app.txt")).ok()
    }

    fn device_id(&self) -> String {
        let v: Value = eventually(Duration::from_secs(30), || {
            std::fs::read(self.dir.join("state/identity.json")).ok().and_then(|b| serde_json::from_slice(&b).ok())
        });
        v["device_id"].as_str().unwrap().to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn device(env: &Env, id: &str) -> Value {
    env.h.get(&format!("/api/v1/devices/{id}"), Some(ADMIN)).body
}

#[test]
fn agents_install_roll_back_on_failed_health_and_refuse_tampered_artifacts() {
    let env = Env::start(&[]);
    let token = env.enrollment_token("device_type=esp32");
    let agents: Vec<Agent> = (0..3).map(|i| Agent::start(&env, &format!("a{i}"), &token, "")).collect();
    let ids: Vec<String> = agents.iter().map(Agent::device_id).collect();
    for id in &ids {
        let d = device(&env, id);
        assert_eq!(d["labels"]["device_type"], "esp32", "{d}");
        assert_eq!(d["current_version"], "1.0.0");
    }

    // 1. A good release reaches every device.
    env.release("2.0.0", b"version two\n");
    let first = env.rollout("2.0.0", json!({"steps": [1, "100%"]}));
    let r = env.wait_rollout(first, &["succeeded", "failed", "rolled_back"], 120);
    assert_eq!(r["state"], "succeeded", "{r}\n{}", agents[0].logs());
    for (a, id) in agents.iter().zip(&ids) {
        assert_eq!(a.running().as_deref(), Some("version two\n"));
        assert_eq!(device(&env, id)["current_version"], "2.0.0");
    }

    // 2. A release that installs but fails its health check: the canary rolls
    // back locally, reports rolled_back, the rollout stops there.
    env.release("2.1.0", b"broken build\n");
    let id = env.rollout("2.1.0", json!({"steps": [1, "100%"], "retries": 0}));
    let r = env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 120);
    assert_eq!(r["state"], "rolled_back", "{r}");
    let acts = env.actions(id);
    let canary: Vec<&Value> = acts.iter().filter(|a| a["state"] == "rolled_back").collect();
    assert_eq!(canary.len(), 1, "{acts:?}");
    let err = canary[0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("health check failed") && err.contains("rolled back locally to 2.0.0"), "{err}");
    for a in &agents {
        assert_eq!(a.running().as_deref(), Some("version two\n"), "every device still runs 2.0.0");
    }

    // 3. An artifact changed on the server after it was signed: refused.
    let rel = env.release("2.2.0", b"version two point two\n");
    let sha = rel["artifacts"][0]["sha256"].as_str().unwrap().to_string();
    let stored = env.dir.path().join("data/artifacts").join(&sha);
    std::fs::write(&stored, b"version two point TWO\n").unwrap();
    let id = env.rollout("2.2.0", json!({"steps": [1, "100%"], "retries": 0}));
    let r = env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 120);
    assert_ne!(r["state"], "succeeded", "{r}");
    let acts = env.actions(id);
    let failed: Vec<&Value> = acts.iter().filter(|a| a["state"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{acts:?}");
    let err = failed[0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("SHA-256") && err.contains("tampered"), "{err}");
    for a in &agents {
        assert_eq!(a.running().as_deref(), Some("version two\n"));
    }

    // 4. The operator rolls the first rollout back: each device returns to the
    // version it came with, locally (nothing to download or verify).
    let r = env.h.post(&format!("/api/v1/rollouts/{first}/rollback"), Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = env.wait_rollout(first, &["rolled_back"], 120);
    assert_eq!(r["state"], "rolled_back", "{r}");
    for (a, id) in agents.iter().zip(&ids) {
        assert_eq!(a.running(), None, "back to the factory version: no slot active");
        assert_eq!(device(&env, id)["current_version"], "1.0.0");
    }
    let logs = agents[0].logs();
    assert!(logs.contains("rolled back to 1.0.0 locally"), "{logs}");
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let env = Env::start(&[]);
    let token = env.enrollment_token("device_type=esp32");
    // 4 MiB/s over 12 MiB: about three seconds, long enough to kill it in the middle.
    let mut agent = Agent::start(&env, "slow", &token, "download_rate_limit = 4194304");
    let dev = agent.device_id();
    let content: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    let rel = env.release("3.0.0", &content);
    let sha = rel["artifacts"][0]["sha256"].as_str().unwrap().to_string();
    let part = agent.dir.join("state/downloads").join(format!("{sha}.part"));
    let id = env.rollout("3.0.0", json!({"steps": ["100%"], "timeout_secs": 120}));
    let at = eventually(Duration::from_secs(60), || {
        let n = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        (n > 2 << 20).then_some(n)
    });
    agent.kill9();
    assert!(at < content.len() as u64, "killed in the middle ({at} bytes)");
    agent.spawn();
    let r = env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 120);
    assert_eq!(r["state"], "succeeded", "{r}\n{}", agent.logs());
    let second = agent.log(2);
    assert!(second.contains("resuming download"), "{second}");
    let resumed: u64 = second
        .lines()
        .find(|l| l.contains("downloaded"))
        .and_then(|l| l.split("resumed_from=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(resumed >= at.min(2 << 20), "resumed from byte {resumed}, killed at {at}\n{second}");
    assert_eq!(std::fs::read(agent.dir.join("app/current/app.txt")).unwrap(), content);
    assert_eq!(device(&env, &dev)["current_version"], "3.0.0");
}

#[test]
fn a_restart_during_the_health_check_checks_again_without_reinstalling() {
    let env = Env::start(&[]);
    let token = env.enrollment_token("device_type=esp32");
    let slow = r#"["sh", "-c", "sleep 2; ! grep -q broken \"$OTAFLEET_CURRENT/app.txt\""]"#;
    let mut agent = Agent::start_with(&env, "restart", &token, "", slow);
    let dev = agent.device_id();
    env.release("4.0.0", b"version four\n");
    let id = env.rollout("4.0.0", json!({"steps": ["100%"], "timeout_secs": 120}));
    // Killed after the switch, while the health check runs.
    let state = agent.dir.join("state/state.json");
    // (The phase is recorded just before the switch: wait for both. A kill
    // between the two is resumed by switching again, `Handler::reactivate`.)
    eventually(Duration::from_secs(60), || {
        let activated = std::fs::read_to_string(&state).ok().is_some_and(|s| s.contains("\"activated\""));
        (activated && agent.running().as_deref() == Some("version four\n")).then_some(())
    });
    agent.kill9();
    assert_eq!(agent.running().as_deref(), Some("version four\n"), "the new slot is active, not yet confirmed");
    agent.spawn();
    let r = env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 120);
    assert_eq!(r["state"], "succeeded", "{r}\n{}", agent.logs());
    let second = agent.log(2);
    assert!(!second.contains("download started") && !second.contains("resuming download"), "{second}");
    assert!(second.contains("4.0.0 installed and healthy"), "{second}");
    assert_eq!(device(&env, &dev)["current_version"], "4.0.0");
}

#[test]
fn reports_made_while_the_server_is_down_are_delivered_in_order_later() {
    let mut env = Env::start(&[]);
    let token = env.enrollment_token("device_type=esp32");
    let slow = r#"["sh", "-c", "sleep 2; ! grep -q broken \"$OTAFLEET_CURRENT/app.txt\""]"#;
    let agent = Agent::start_with(&env, "offline", &token, "", slow);
    let dev = agent.device_id();
    env.release("5.0.0", b"version five\n");
    let id = env.rollout("5.0.0", json!({"steps": ["100%"], "timeout_secs": 120}));
    let state_file = agent.dir.join("state/state.json");
    let read_state = || -> Value { serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap() };
    eventually(Duration::from_secs(60), || (read_state()["inflight"]["phase"] == "activated").then_some(()));
    env.restart_server(|| {
        // The agent finishes the install offline; its final report waits on disk.
        let st = eventually(Duration::from_secs(30), || {
            let st = read_state();
            (st["inflight"].is_null() && st["current_version"] == "5.0.0").then_some(st)
        });
        let queued: Vec<&str> = st["queue"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap()).collect();
        assert_eq!(queued.last(), Some(&"succeeded"), "{st}");
    });
    let r = env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 120);
    assert_eq!(r["state"], "succeeded", "{r}\n{}", agent.logs());
    assert_eq!(read_state()["queue"].as_array().map(Vec::len), Some(0));
    assert_eq!(device(&env, &dev)["current_version"], "5.0.0");
}

#[test]
fn device_tokens_are_scoped_and_bad_input_is_refused() {
    let env = Env::start(&[]);
    let h = &env.h;
    // Enrollment tokens: operator only, validated, used up.
    let r = h.post("/api/v1/enrollment-tokens", None, Some(r#"{"labels":{}}"#));
    assert_eq!(r.status, 401);
    let r = h.post("/api/v1/enrollment-tokens", Some(ADMIN), Some(r#"{"labels":{"bad key!":"x"}}"#));
    assert_eq!(r.status, 422, "{}", r.text);
    let r = h.post("/api/v1/enrollment-tokens", Some(ADMIN), Some(r#"{"max_uses":0}"#));
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some("max_uses")));
    let r = h.post(
        "/api/v1/enrollment-tokens",
        Some(ADMIN),
        Some(r#"{"labels":{"device_type":"esp32"},"max_uses":2,"expires_in_secs":600}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let enr = r.body["token"].as_str().unwrap().to_string();
    let enroll = |name: &str| h.post("/device/v1/enroll", Some(&enr), Some(&json!({"name": name}).to_string()));
    let a = enroll("a");
    let b = enroll("b");
    assert_eq!((a.status, b.status), (201, 201), "{}", a.text);
    let third = enroll("c");
    assert_eq!(third.status, 401);
    assert!(third.text.contains("no uses left"), "{}", third.text);
    assert_eq!(h.post("/device/v1/enroll", Some("nope"), Some("{}")).status, 401);
    assert_eq!(
        h.post("/device/v1/checkin", Some(&enr), Some("{}")).status,
        401,
        "an enrollment token is no device token"
    );
    let (ta, tb) = (a.body["token"].as_str().unwrap().to_string(), b.body["token"].as_str().unwrap().to_string());
    assert_eq!(a.body["labels"]["device_type"], "esp32");

    // A device token opens nothing on the management API.
    assert_eq!(h.get("/api/v1/devices", Some(&ta)).status, 401);
    assert_eq!(h.post("/api/v1/enrollment-tokens", Some(&ta), Some("{}")).status, 401);

    // Uploads: validated, streamed, content-addressed.
    let rel = env.release("2.0.0", b"0123456789abcdef");
    let sha = rel["artifacts"][0]["sha256"].as_str().unwrap().to_string();
    assert_eq!(rel["artifacts"][0]["uri"], format!("/device/v1/artifacts/{sha}"));
    assert_eq!(rel["artifacts"][0]["size"], 16);
    let put = |path: &str, token: Option<&str>| h.req("PUT", path, token, None);
    assert_eq!(put("/api/v1/releases/9.9.9/artifacts/x", Some(ADMIN)).status, 404);
    assert_eq!(put("/api/v1/releases/2.0.0/artifacts/x?sha256=abc", Some(ADMIN)).status, 422);
    let wrong = put(&format!("/api/v1/releases/2.0.0/artifacts/x?sha256={}", "0".repeat(64)), Some(ADMIN));
    assert_eq!(wrong.status, 422, "{}", wrong.text);
    assert_eq!(put("/api/v1/releases/2.0.0/artifacts/x", Some(&ta)).status, 401);

    // Rollout to device a only; b cannot see or report on a's action.
    let ida = a.body["device_id"].as_str().unwrap();
    let body = json!({"version": "2.0.0", "devices": [ida]});
    let r = h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    let action = eventually(Duration::from_secs(20), || {
        let c = h.post("/device/v1/checkin", Some(&ta), Some("{}"));
        c.body["action"]["action_id"].as_i64()
    });
    let mine = h.get(&format!("/device/v1/actions/{action}"), Some(&ta));
    assert_eq!(mine.status, 200, "{}", mine.text);
    assert!(mine.body["manifest"].as_str().unwrap().contains(&sha));
    assert_eq!(mine.body["signature"].as_str().unwrap().len(), 128);
    let theirs = h.get(&format!("/device/v1/actions/{action}"), Some(&tb));
    assert_eq!(theirs.status, 404, "{}", theirs.text);
    let report =
        json!({"action_id": action, "seq": 1, "state": "downloading", "message": null, "current_version": null});
    assert_eq!(h.post("/device/v1/status", Some(&tb), Some(&report.to_string())).status, 404);
    assert_eq!(h.get("/device/v1/actions/abc", Some(&ta)).status, 404);

    // Ranged download with the device token only.
    let path = format!("/device/v1/artifacts/{sha}");
    assert_eq!(h.get(&path, None).status, 401);
    assert_eq!(h.get(&path, Some(ADMIN)).status, 401, "an API token is no device token");
    let full = h.get(&path, Some(&ta));
    assert_eq!((full.status, full.text.as_str()), (200, "0123456789abcdef"));
    let client = reqwest::blocking::Client::new();
    let part =
        client.get(format!("{}{path}", env.server.url)).bearer_auth(&ta).header("Range", "bytes=10-").send().unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 10-15/16");
    assert_eq!(part.text().unwrap(), "abcdef");
    let bad =
        client.get(format!("{}{path}", env.server.url)).bearer_auth(&ta).header("Range", "bytes=99-").send().unwrap();
    assert_eq!(bad.status(), 416);
    assert_eq!(h.get(&format!("/device/v1/artifacts/{}", "0".repeat(64)), Some(&ta)).status, 404);

    // The release is in use now: its artifacts are frozen.
    let file = env.dir.path().join("again.bin");
    std::fs::write(&file, b"x").unwrap();
    let (code, _, err) = cli(&env.server.url, Some(ADMIN), &["releases", "upload", "2.0.0", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("used by a rollout"), "{err}");
}

#[test]
fn agent_refuses_unsigned_releases_and_bad_configs() {
    // A server without a signing key hands out unsigned manifests.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &sqlite_url(&dir),
        &["--poll-interval-secs", "1", "--data-dir", dir.path().join("d").to_str().unwrap()],
    );
    let keys = dir.path().join("keys");
    cli("http://unused", None, &["keys", "generate", "--out", keys.to_str().unwrap()]);
    let env = Env { dir, server, h: Http::new("http://unused"), args: Vec::new(), pki: None };
    let env = Env { h: Http::new(&env.server.url), ..env };
    let token = env.enrollment_token("device_type=esp32");
    let agent = Agent::start(&env, "u", &token, "");
    agent.device_id();
    env.release("2.0.0", b"unsigned\n");
    let id = env.rollout("2.0.0", json!({"steps": ["100%"], "retries": 0}));
    let r = env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 60);
    assert_ne!(r["state"], "succeeded");
    let err = env.actions(id)[0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("the server sent no signed order"), "{err}");
    assert_eq!(agent.running(), None, "nothing was installed");

    // Config errors are one clear line.
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, "server = \"https://x\"\nstate_dir = \"s\"\n").unwrap();
    let out = Command::new(bin()).args(["agent", "--config", bad.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("public_key"), "{}", String::from_utf8_lossy(&out.stderr));
    // Plain HTTP only when asked for.
    let key = env.dir.path().join("keys/otafleet-signing.pub");
    std::fs::write(
        &bad,
        format!("server = \"http://x\"\nstate_dir = \"s\"\npublic_key_file = \"{}\"\n", key.display()),
    )
    .unwrap();
    let out = Command::new(bin()).args(["agent", "--config", bad.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plain http://") && err.contains("allow_http = true"), "{err}");
}

/// A robot application's Prometheus endpoint: answers `/metrics` with
/// whatever `body` holds (or 500 while it holds None).
fn exporter(body: Arc<Mutex<Option<String>>>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let answer = match body.lock().unwrap().clone() {
                Some(b) => format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}", b.len()),
                None => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    url
}

/// The samples the server holds of one device's metric over the last hour: (count, max).
fn measured(env: &Env, device: &str, metric: &str) -> (u64, Option<f64>) {
    let r = env.h.get(&format!("/api/v1/telemetry/query?metric={metric}&agg=max&step=1h&by=device"), Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.text);
    let series = r.body["series"].as_array().unwrap();
    let mine = series.iter().find(|s| s["group"]["device"] == device);
    let points = mine.map(|s| s["points"].as_array().unwrap().clone()).unwrap_or_default();
    let count = points.iter().map(|p| p["samples"].as_u64().unwrap()).sum();
    let max = points.iter().filter_map(|p| p["value"].as_f64()).reduce(f64::max);
    (count, max)
}

#[test]
fn the_agent_forwards_scraped_and_its_own_measurements() {
    let env = Env::start(&["--telemetry-flush", "100ms", "--telemetry-hold", "200ms"]);
    let body = Arc::new(Mutex::new(Some(
        "# TYPE cpu_temp_c gauge\ncpu_temp_c{core=\"0\"} 61.5\ncpu_temp_c{core=\"1\"} 64\nnot_forwarded 7\n"
            .to_string(),
    )));
    let url = exporter(body.clone());
    let token = env.enrollment_token("device_type=esp32");
    let extra = format!("[telemetry]\nscrape_url = \"{url}\"\nmetrics = [\"cpu_temp_c\"]\ninterval_secs = 1\n");
    let agent = Agent::start(&env, "measured", &token, &extra);
    let id = agent.device_id();

    // The named series arrive with their values; the others do not.
    let (n, max) = eventually(Duration::from_secs(30), || {
        let (n, max) = measured(&env, &id, "cpu_temp_c");
        (n >= 4).then_some((n, max))
    });
    assert_eq!(max, Some(64.0), "{n} samples");
    assert_eq!(measured(&env, &id, "not_forwarded").0, 0);
    assert_eq!(measured(&env, &id, "otafleet_agent_scrape_up").1, Some(1.0));

    // The exporter fails: the agent says so (up = 0) and keeps going.
    *body.lock().unwrap() = None;
    eventually(Duration::from_secs(30), || {
        let r = env.h.get("/api/v1/telemetry/query?metric=otafleet_agent_scrape_up&agg=min&step=1h", Some(ADMIN));
        (r.body["series"][0]["points"][0]["value"].as_f64() == Some(0.0)).then_some(())
    });
    *body.lock().unwrap() = Some("cpu_temp_c 70\n".into());

    // An update: the agent measures its install and its health check.
    env.release("2.0.0", b"version two\n");
    let rollout = env.rollout("2.0.0", json!({"steps": ["100%"]}));
    let r = env.wait_rollout(rollout, &["succeeded", "failed", "rolled_back"], 60);
    assert_eq!(r["state"], "succeeded", "{r}");
    let (n, secs) = eventually(Duration::from_secs(30), || {
        let m = measured(&env, &id, "otafleet_agent_install_seconds");
        (m.0 >= 1).then_some(m)
    });
    assert!(n == 1 && secs.is_some_and(|s| s > 0.0 && s < 60.0), "{n} {secs:?}");
    let (n, passed) = measured(&env, &id, "otafleet_agent_health_check");
    assert_eq!((n, passed), (1, Some(1.0)));
    // What the device measured on the new version is grouped under it.
    eventually(Duration::from_secs(30), || {
        let r = env.h.get("/api/v1/telemetry/query?metric=cpu_temp_c&agg=max&step=1h&by=version", Some(ADMIN));
        let series = r.body["series"].as_array()?.clone();
        series.iter().any(|s| s["group"]["version"] == "2.0.0" && s["points"][0]["value"] == 70.0).then_some(())
    });
}

#[test]
fn mqtt_push_starts_the_update_within_a_second() {
    let Some(mqtt) = std::env::var("OTAFLEET_TEST_MQTT_URL").ok().filter(|s| !s.is_empty()) else {
        eprintln!("SKIPPED MQTT push test: set OTAFLEET_TEST_MQTT_URL (e.g. mqtt://127.0.0.1:1883) to run it");
        return;
    };
    let env = Env::start(&["--mqtt-url", &mqtt]);
    let token = env.enrollment_token("device_type=esp32");
    // Polls only every 10 minutes: anything sooner is the push.
    let extra = format!("mqtt_url = \"{mqtt}\"\npoll_interval_secs = 600");
    let agent = Agent::start(&env, "pushed", &token, &extra);
    push_starts_the_update(&env, &agent, "MQTT push", b"pushed\n");
}

/// With the agent polling only every 10 minutes, a rollout of 2.0.0
/// (`content`) must start downloading on it within 3 s (the push) and
/// succeed.
fn push_starts_the_update(env: &Env, agent: &Agent, what: &str, content: &[u8]) {
    agent.device_id();
    eventually(Duration::from_secs(30), || agent.logs().contains("push connected").then_some(()));
    // Let the first check-in pass so the next one can only come from a push.
    std::thread::sleep(Duration::from_millis(500));
    env.release("2.0.0", content);
    let start = Instant::now();
    let id = env.rollout("2.0.0", json!({"steps": ["100%"]}));
    let begun = eventually(Duration::from_secs(30), || {
        let a = env.actions(id);
        let s = a.first().and_then(|a| a["state"].as_str().map(str::to_string)).unwrap_or_default();
        ["downloading", "installing", "verifying", "succeeded"].contains(&s.as_str()).then(|| start.elapsed())
    });
    eprintln!("{what}: rollout created → device downloading in {begun:?}");
    assert!(begun < Duration::from_secs(3), "took {begun:?}; a poll would take 10 minutes\n{}", agent.logs());
    let r = env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 60);
    assert_eq!(r["state"], "succeeded", "{r}");
}

/// What the man in the middle does to the action details it forwards.
#[derive(Clone, Default)]
enum Tamper {
    /// Forwards them unchanged.
    #[default]
    None,
    /// Answers a device's request for any action with this captured detail,
    /// relabelled as a rollback of the action asked for (only the unsigned
    /// fields can be changed).
    Replay { device: String, detail: Value },
    /// Holds every action detail back this long before forwarding it.
    Delay(Duration),
}

/// A man in the middle on the plain-HTTP device protocol: forwards every
/// request to the server, records every action detail it sees (by device
/// id), and tampers with them as told.
struct Mitm {
    url: String,
    tamper: Arc<Mutex<Tamper>>,
    /// Action details seen, by the device whose request fetched them.
    seen: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    _rt: tokio::runtime::Runtime,
}

impl Mitm {
    fn start(upstream: &str) -> Mitm {
        use axum::body::Body;
        use axum::extract::{Request, State};
        use axum::response::Response;

        #[derive(Clone)]
        struct Ctx {
            upstream: String,
            client: reqwest::Client,
            tamper: Arc<Mutex<Tamper>>,
            seen: Arc<Mutex<HashMap<String, Vec<Value>>>>,
            /// Bearer token → device id, learnt from check-in answers.
            devices: Arc<Mutex<HashMap<String, String>>>,
        }

        async fn forward(State(c): State<Ctx>, req: Request) -> Response {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            let token = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let mut out = c.client.request(parts.method.clone(), format!("{}{path}", c.upstream));
            for (k, v) in &parts.headers {
                if k != "host" && k != "content-length" {
                    out = out.header(k, v);
                }
            }
            let res = out.body(body.to_vec()).send().await.expect("forward to the server");
            let status = res.status();
            let headers = res.headers().clone();
            let mut bytes = res.bytes().await.unwrap_or_default().to_vec();
            if path == "/device/v1/checkin" && status.is_success() {
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    if let Some(d) = v["device_id"].as_str() {
                        c.devices.lock().unwrap().insert(token.clone(), d.to_string());
                    }
                }
            }
            if let Some(asked) = path.strip_prefix("/device/v1/actions/") {
                let device = c.devices.lock().unwrap().get(&token).cloned().unwrap_or_default();
                if let (true, Ok(detail)) = (status.is_success(), serde_json::from_slice::<Value>(&bytes)) {
                    c.seen.lock().unwrap().entry(device.clone()).or_default().push(detail);
                }
                let tamper = c.tamper.lock().unwrap().clone();
                match tamper {
                    Tamper::None => {}
                    Tamper::Delay(d) => tokio::time::sleep(d).await,
                    Tamper::Replay { device: victim, mut detail } if victim == device => {
                        detail["action_id"] = json!(asked.parse::<i64>().unwrap_or(0));
                        detail["kind"] = json!("rollback");
                        bytes = serde_json::to_vec(&detail).unwrap();
                    }
                    Tamper::Replay { .. } => {}
                }
            }
            let mut r = Response::builder().status(status);
            for (k, v) in &headers {
                if k != "content-length" && k != "transfer-encoding" && k != "connection" {
                    r = r.header(k, v);
                }
            }
            r.body(Body::from(bytes)).unwrap()
        }

        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let tamper = Arc::new(Mutex::new(Tamper::None));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let ctx = Ctx {
            upstream: upstream.to_string(),
            client: reqwest::Client::new(),
            tamper: tamper.clone(),
            seen: seen.clone(),
            devices: Default::default(),
        };
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(forward).with_state(ctx);
        rt.spawn(async move { axum::serve(listener, app).await });
        Mitm { url, tamper, seen, _rt: rt }
    }

    fn tamper(&self, t: Tamper) {
        *self.tamper.lock().unwrap() = t;
    }

    /// The last action detail `device` fetched for `version`.
    fn captured(&self, device: &str, version: &str) -> Value {
        let seen = self.seen.lock().unwrap();
        let all = seen.get(device).cloned().unwrap_or_default();
        all.into_iter().rev().find(|d| d["version"] == version).unwrap_or_else(|| panic!("no detail of {version} seen"))
    }
}

/// The version the server and the device's own state file say it runs.
fn versions(env: &Env, agent: &Agent, id: &str) -> (String, String) {
    let st: Value = serde_json::from_slice(&std::fs::read(agent.dir.join("state/state.json")).unwrap()).unwrap();
    let server = device(env, id)["current_version"].as_str().unwrap_or_default().to_string();
    (server, st["current_version"].as_str().unwrap_or_default().to_string())
}

#[test]
fn replayed_signed_orders_are_refused_by_real_agents() {
    let env = Env::start(&[]);
    let mitm = Mitm::start(&env.server.url);
    let token = env.enrollment_token("device_type=esp32");
    let a = Agent::start_via(&env, &mitm.url, &env.public_key(), "victim", &token, "", HEALTH);
    let b = Agent::start_via(&env, &mitm.url, &env.public_key(), "other", &token, "", HEALTH);
    let (ida, idb) = (a.device_id(), b.device_id());

    // Two good releases; the MITM sees (and keeps) every signed detail.
    env.release("2.0.0", b"version two\n");
    let id = env.rollout("2.0.0", json!({"steps": ["100%"]}));
    assert_eq!(env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 120)["state"], "succeeded");
    env.release("3.0.0", b"version three\n");
    let id = env.rollout("3.0.0", json!({"steps": ["100%"]}));
    assert_eq!(env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 120)["state"], "succeeded");
    assert_eq!(a.running().as_deref(), Some("version three\n"));

    // 1. The other device's valid signed order for the old release, served to
    // the victim as a rollback of its next action.
    env.release("3.1.0", b"version three point one\n");
    let detail = mitm.captured(&idb, "2.0.0");
    assert_eq!(detail["kind"], "install");
    mitm.tamper(Tamper::Replay { device: ida.clone(), detail });
    let id = env.rollout_to("3.1.0", &[&ida], json!({"steps": ["100%"], "retries": 0}));
    let err = env.failure(id);
    assert!(err.contains(&format!("the signed order is for device {idb}, this is device {ida}")), "{err}");
    assert_eq!(a.running().as_deref(), Some("version three\n"), "{}", a.logs());
    assert_eq!(versions(&env, &a, &ida), ("3.0.0".into(), "3.0.0".into()));

    // 2. The victim's own old signed order, relabelled as a rollback of the
    // action it asks about now.
    let detail = mitm.captured(&ida, "2.0.0");
    let old_action = detail["action_id"].as_i64().unwrap();
    mitm.tamper(Tamper::Replay { device: ida.clone(), detail });
    let id = env.rollout_to("3.1.0", &[&ida], json!({"steps": ["100%"], "retries": 0}));
    let err = env.failure(id);
    let asked = env.actions(id)[0]["id"].as_i64().unwrap();
    assert!(
        err.contains(&format!("the signed order is for action {old_action}, the device asked for action {asked}")),
        "{err}"
    );
    assert_eq!(a.running().as_deref(), Some("version three\n"));
    assert_eq!(versions(&env, &a, &ida), ("3.0.0".into(), "3.0.0".into()));

    // Untouched, the same action goes through.
    mitm.tamper(Tamper::None);
    let id = env.rollout_to("3.1.0", &[&ida], json!({"steps": ["100%"]}));
    assert_eq!(env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 120)["state"], "succeeded");
    assert_eq!(a.running().as_deref(), Some("version three point one\n"));
}

#[test]
fn an_order_held_back_until_it_expired_is_refused() {
    let env = Env::start(&["--order-ttl", "1s"]);
    let mitm = Mitm::start(&env.server.url);
    let token = env.enrollment_token("device_type=esp32");
    let a = Agent::start_via(&env, &mitm.url, &env.public_key(), "held", &token, "clock_skew_secs = 0", HEALTH);
    let id = a.device_id();
    env.release("2.0.0", b"version two\n");
    // The MITM cannot forge an order, but it can sit on one (a freeze).
    mitm.tamper(Tamper::Delay(Duration::from_millis(2500)));
    let rollout = env.rollout("2.0.0", json!({"steps": ["100%"], "retries": 0}));
    let err = env.failure(rollout);
    assert!(err.contains("expired at") && err.contains("held back or replayed"), "{err}");
    assert_eq!(a.running(), None, "nothing was installed");
    assert_eq!(versions(&env, &a, &id), ("1.0.0".into(), "1.0.0".into()));
}

#[test]
fn an_order_signed_with_another_key_is_refused() {
    let env = Env::start(&[]);
    let other = env.dir.path().join("other-keys");
    let (code, out, err) = cli("http://unused", None, &["keys", "generate", "--out", other.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let token = env.enrollment_token("device_type=esp32");
    let pubkey = other.join("otafleet-signing.pub");
    let a = Agent::start_via(&env, &env.server.url, &pubkey, "wrongkey", &token, "", HEALTH);
    let id = a.device_id();
    env.release("2.0.0", b"version two\n");
    let rollout = env.rollout("2.0.0", json!({"steps": ["100%"], "retries": 0}));
    let err = env.failure(rollout);
    assert!(err.contains("the order signature does not verify with the configured public key"), "{err}");
    assert_eq!(a.running(), None, "nothing was installed");
    assert_eq!(versions(&env, &a, &id), ("1.0.0".into(), "1.0.0".into()));
}

#[test]
fn tracker_rollbacks_roll_real_agents_back() {
    let env = Env::start(&[]);
    let token = env.enrollment_token("device_type=esp32");
    let agents: Vec<Agent> = (0..2).map(|i| Agent::start(&env, &format!("t{i}"), &token, "")).collect();
    let ids: Vec<String> = agents.iter().map(Agent::device_id).collect();
    let job_status = |job: i64| -> String {
        let jobs = env.h.get("/ota/jobs", Some(ADMIN)).body;
        let job = jobs.as_array().unwrap().iter().find(|j| j["id"] == job).cloned().unwrap_or_default();
        job["status"].as_str().unwrap_or_default().to_string()
    };
    let wait_job = |job: i64, want: &str| {
        eventually(Duration::from_secs(120), || {
            let s = job_status(job);
            (s == want || s == "failed" || s == "rolled_back").then_some(s)
        })
    };
    env.release("2.0.0", b"version two\n");
    let deploy = |env: &Env| {
        let r = env.h.post("/ota/deploy?version=2.0.0&wave=green", Some(ADMIN), None);
        assert_eq!(r.status, 200, "{}", r.text);
        let job = r.body["job_id"].as_i64().unwrap();
        assert_eq!(wait_job(job, "complete"), "complete");
        for (a, id) in agents.iter().zip(&ids) {
            assert_eq!(a.running().as_deref(), Some("version two\n"));
            assert_eq!(versions(env, a, id), ("2.0.0".into(), "2.0.0".into()));
        }
    };
    deploy(&env);

    // 1. POST /ota/rollback: rollback orders, carried out (the version is
    // older than the newest the devices installed).
    let r = env.h.post("/ota/rollback?version=1.0.0", Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.body["status"].as_str(), r.body["type"].as_str()), (Some("rollback_pending"), Some("rollback")));
    let job = r.body["job_id"].as_i64().unwrap();
    assert_eq!(wait_job(job, "rollback_complete"), "rollback_complete", "{}", agents[0].logs());
    for (a, id) in agents.iter().zip(&ids) {
        assert_eq!(a.running(), None, "back to the factory version");
        assert_eq!(versions(&env, a, id), ("1.0.0".into(), "1.0.0".into()));
    }
    assert!(agents[0].logs().contains("rolled back to 1.0.0 locally"), "{}", agents[0].logs());

    // 2. Again, forward and back with `otafleet rollback`.
    deploy(&env);
    let (code, out, err) = cli(&env.server.url, Some(ADMIN), &["-o", "json", "rollback", "1.0.0"]);
    assert_eq!(code, 0, "{out}{err}");
    let job = serde_json::from_str::<Value>(&out).unwrap()["job_id"].as_i64().unwrap();
    assert_eq!(wait_job(job, "rollback_complete"), "rollback_complete", "{}", agents[0].logs());
    for (a, id) in agents.iter().zip(&ids) {
        assert_eq!(versions(&env, a, id), ("1.0.0".into(), "1.0.0".into()));
    }

    // 3. An *install* of a version older than the newest ever installed is
    // refused, although the device runs an even older one now.
    env.release("1.5.0", b"version one point five\n");
    let id = env.rollout_to("1.5.0", &[&ids[0]], json!({"steps": ["100%"], "retries": 0}));
    let err = env.failure(id);
    assert!(err.contains("refusing 1.5.0: older than 2.0.0, the newest version this device installed"), "{err}");
    assert_eq!(versions(&env, &agents[0], &ids[0]), ("1.0.0".into(), "1.0.0".into()));
}

/// Waits up to 20 s for `text` in the agent's log; fails showing the log.
fn wait_for_log(agent: &Agent, text: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    while !agent.logs().contains(text) {
        assert!(Instant::now() < end, "no '{text}' in the log:\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first free port on loopback (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn https_with_a_fleet_ca_or_a_pinned_certificate_and_nothing_else() {
    let env = Env::start_with(&[], true);
    let pki = env.pki.as_ref().unwrap();
    assert!(env.server.url.starts_with("https://127.0.0.1:"), "{}", env.server.url);
    assert_eq!(env.h.get("/readyz", None).status, 200);

    // The CLI verifies the server: with the CA it works, without it it says why.
    let (code, out, err) = env.cli(&["rollouts", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(&env.server.url, Some(ADMIN), &["rollouts", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("certificate") || err.contains("UnknownIssuer"), "{err}");
    // Plain HTTP to the TLS port gets no answer from the API.
    let plain = env.server.url.replacen("https://", "http://", 1);
    let (code, _, _) = cli(&plain, Some(ADMIN), &["rollouts", "list"]);
    assert_ne!(code, 0);

    let token = env.enrollment_token("device_type=esp32");
    let ca = format!("ca_file = \"{}\"", pki.ca.display());
    let by_ca = Agent::start(&env, "by-ca", &token, &ca);
    let pin = format!("server_cert_sha256 = \"{}\"", pki.fingerprint);
    let by_pin = Agent::start(&env, "by-pin", &token, &pin);
    let mut wrong = pki.fingerprint.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = format!("server_cert_sha256 = \"{}\"", String::from_utf8(wrong).unwrap());
    let wrong_pin = Agent::start(&env, "wrong-pin", &token, &wrong);
    let mozilla = Agent::start(&env, "mozilla-roots", &token, "");
    let ids = [by_ca.device_id(), by_pin.device_id()];

    env.release("2.0.0", b"over tls\n");
    let id = env.rollout("2.0.0", json!({"steps": ["100%"]}));
    let r = env.wait_rollout(id, &["succeeded", "failed", "rolled_back"], 120);
    assert_eq!(r["state"], "succeeded", "{r}\n{}", by_ca.logs());
    for (a, id) in [&by_ca, &by_pin].into_iter().zip(&ids) {
        assert_eq!(a.running().as_deref(), Some("over tls\n"));
        assert_eq!(device(&env, id)["current_version"], "2.0.0");
    }
    // The other two never got past the handshake: not enrolled, and their logs say why.
    let devices = env.h.get("/api/v1/devices?limit=100", Some(ADMIN)).body;
    assert_eq!(devices["items"].as_array().unwrap().len(), 2, "{devices}");
    wait_for_log(&wrong_pin, "is not the pinned one");
    wait_for_log(&mozilla, "UnknownIssuer");
    assert_eq!(wrong_pin.running(), None);
    assert_eq!(mozilla.running(), None);

    // The simulated fleet trusts the global --ca-file too.
    let sim = ["sim", "--devices", "3", "--duration", "1", "--poll-ms", "200", "--labels", "device_type=simtls"];
    let (code, _, err) = cli(&env.server.url, Some(ADMIN), &sim);
    assert_ne!(code, 0);
    assert!(err.contains("certificate") || err.contains("UnknownIssuer"), "{err}");
    let (code, out, err) = env.cli(&sim);
    assert_eq!(code, 0, "{out}{err}");
    let sims = env.h.get("/api/v1/devices?selector=device_type%3Dsimtls&limit=100", Some(ADMIN)).body;
    assert_eq!(sims["items"].as_array().unwrap().len(), 3, "{sims}");
}

/// A Mosquitto of our own with a TLS listener on a free port, signed by the
/// test CA; None (and a SKIPPED line) where mosquitto is not installed.
struct TlsBroker {
    child: Child,
    port: u16,
}

impl TlsBroker {
    fn start(dir: &Path, pki: &Pki) -> Option<TlsBroker> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(bin) = bin else {
            eprintln!("SKIPPED mqtts test: no mosquitto binary (apt-get install mosquitto)");
            return None;
        };
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        // `user root`: started as root, mosquitto would otherwise switch to its
        // own user, which cannot read this test's files.
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n",
                pki.ca.display(),
                pki.cert.display(),
                pki.key.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        let mut broker = TlsBroker { child, port };
        let up = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("mosquitto exited ({status}): {}", std::fs::read_to_string(dir.join("mosquitto.log")).unwrap());
            }
            assert!(up.elapsed() < Duration::from_secs(10), "mosquitto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        broker.port = port;
        Some(broker)
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mqtts_push_reaches_an_agent_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let broker_pki = pki(&dir.path().join("broker-pki"));
    let Some(broker) = TlsBroker::start(dir.path(), &broker_pki) else { return };
    let url = format!("mqtts://localhost:{}", broker.port);
    let ca = broker_pki.ca.to_str().unwrap().to_string();
    let env = Env::start_with(&["--mqtt-url", &url, "--mqtt-ca-file", &ca], true);
    let token = env.enrollment_token("device_type=esp32");
    // The server and the broker have different CAs: the agent is told each.
    let extra = format!(
        "ca_file = \"{}\"\nmqtt_url = \"mqtts://127.0.0.1:{}\"\nmqtt_ca_file = \"{ca}\"\npoll_interval_secs = 600",
        env.pki.as_ref().unwrap().ca.display(),
        broker.port
    );
    let agent = Agent::start(&env, "pushed-tls", &token, &extra);
    push_starts_the_update(&env, &agent, "MQTT over TLS", b"pushed over tls\n");

    // An agent that does not trust the broker's CA gets no push (and says why).
    let token = env.enrollment_token("device_type=esp32");
    let extra = format!(
        "ca_file = \"{}\"\nmqtt_url = \"mqtts://127.0.0.1:{}\"\npoll_interval_secs = 600",
        env.pki.as_ref().unwrap().ca.display(),
        broker.port
    );
    let distrustful = Agent::start(&env, "no-broker-ca", &token, &extra);
    distrustful.device_id();
    wait_for_log(&distrustful, "MQTT connect failed");
    let logs = distrustful.logs();
    assert!(logs.contains("invalid peer certificate") && !logs.contains("push connected"), "{logs}");
}
