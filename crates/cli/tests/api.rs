//! End-to-end tests of the control plane: the real binary on a free port,
//! driven over HTTP and through the CLI, restarted, read back.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn setup() -> (tempfile::TempDir, Server, Http) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&sqlite_url(&dir), &[]);
    let h = Http::new(&s.url);
    (dir, s, h)
}

fn token(h: &Http, role: &str) -> String {
    let r =
        h.post("/api/v1/tokens", Some(ADMIN), Some(&json!({"name": format!("{role}-t"), "role": role}).to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["token"].as_str().unwrap().to_string()
}

fn device_count(h: &Http) -> usize {
    h.get("/api/v1/devices?limit=1000", Some(ADMIN)).body["items"].as_array().unwrap().len()
}

#[test]
fn health_auth_and_roles() {
    let (_d, _s, h) = setup();
    let r = h.get("/", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["msg"], "OTA Deploy Tracker Running");
    // No token: 401 with a JSON body.
    let r = h.get("/api/v1/devices", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "unauthorized");
    let r = h.get("/api/v1/devices", Some("wrong"));
    assert_eq!(r.status, 401);
    // Viewer can read, not write: 403.
    let viewer = token(&h, "viewer");
    assert_eq!(h.get("/api/v1/devices", Some(&viewer)).status, 200);
    let r = h.post("/api/v1/devices", Some(&viewer), Some("{}"));
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "forbidden");
    // Only admins create tokens.
    let op = token(&h, "operator");
    assert_eq!(h.post("/api/v1/tokens", Some(&op), Some(r#"{"name":"x","role":"admin"}"#)).status, 403);
    // The tracker endpoints take the same tokens.
    assert_eq!(h.get("/ota/jobs", None).status, 401);
    assert_eq!(h.get("/ota/jobs", Some(&viewer)).status, 200);
    assert_eq!(h.post("/ota/deploy?version=1.0.0", Some(&viewer), None).status, 403);
    // Metrics stay open.
    assert_eq!(h.get("/metrics", None).status, 200);
    // Unknown paths are JSON 404s.
    let r = h.get("/nope", None);
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (404, Some("not_found")));
}

#[test]
fn devices_register_list_select_update_delete() {
    let (_d, _s, h) = setup();
    let mut devices = Vec::new();
    for i in 0..30 {
        let ty = if i % 3 == 0 { "esp32" } else { "rpi" };
        let site = ["a", "b", "c"][i % 3];
        devices.push(
            json!({"name": format!("d{i}"), "labels": {"device_type": ty, "site": site}, "current_version": "1.0.0"}),
        );
    }
    let r = h.post("/api/v1/devices/bulk", Some(ADMIN), Some(&json!({"devices": devices}).to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["devices"].as_array().unwrap().len(), 30);
    assert!(r.body["devices"][0]["token"].as_str().unwrap().starts_with("dev_"));
    let one =
        h.post("/api/v1/devices", Some(ADMIN), Some(r#"{"name":"solo","labels":{"device_type":"esp32","site":"z"}}"#));
    assert_eq!(one.status, 201);
    let id = one.body["id"].as_str().unwrap().to_string();

    let sel = |s: &str| {
        let r = h.get(&format!("/api/v1/devices?limit=1000&selector={}", urlenc(s)), Some(ADMIN));
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["items"].as_array().unwrap().len()
    };
    assert_eq!(sel("device_type=esp32"), 11);
    assert_eq!(sel("device_type=esp32,site in (a,z)"), 11);
    assert_eq!(sel("site notin (a)"), 21);
    assert_eq!(sel("!site"), 0);

    // Pagination walks every device exactly once.
    let mut seen = std::collections::HashSet::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(a) => format!("/api/v1/devices?limit=7&after={a}"),
            None => "/api/v1/devices?limit=7".into(),
        };
        let r = h.get(&path, Some(ADMIN));
        for d in r.body["items"].as_array().unwrap() {
            assert!(seen.insert(d["id"].as_str().unwrap().to_string()));
        }
        next = r.body["next"].as_str().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 31);

    let r = h.req(
        "PATCH",
        &format!("/api/v1/devices/{id}"),
        Some(ADMIN),
        Some(r#"{"labels":{"site":null,"tier":"gold"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["labels"], json!({"device_type": "esp32", "tier": "gold"}));
    assert_eq!(h.get(&format!("/api/v1/devices/{id}"), Some(ADMIN)).body["labels"]["tier"], "gold");
    assert_eq!(h.req("DELETE", &format!("/api/v1/devices/{id}"), Some(ADMIN), None).status, 204);
    assert_eq!(h.get(&format!("/api/v1/devices/{id}"), Some(ADMIN)).status, 404);
    assert_eq!(h.req("DELETE", &format!("/api/v1/devices/{id}"), Some(ADMIN), None).status, 404);
    assert_eq!(device_count(&h), 30);
}

fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn bad_input_is_rejected_with_json_and_changes_nothing() {
    let (_d, _s, h) = setup();
    h.post(
        "/api/v1/devices",
        Some(ADMIN),
        Some(r#"{"id":"00000000-0000-0000-0000-000000000001","labels":{"device_type":"esp32"}}"#),
    );
    let before = device_count(&h);
    // (method, path, body, expected status, field named in the error)
    type Case<'a> = (&'a str, &'a str, Option<String>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("POST", "/api/v1/devices", Some("{not json".into()), 400, None),
        ("POST", "/api/v1/devices", Some(r#"{"current_version": 2}"#.into()), 422, Some("current_version")),
        ("POST", "/api/v1/devices", Some(r#"{"labels": {"bad key!": "x"}}"#.into()), 422, Some("labels.bad key!")),
        ("POST", "/api/v1/devices", Some(r#"{"bogus": 1}"#.into()), 422, None),
        ("POST", "/api/v1/devices", Some(r#"{"id":"00000000-0000-0000-0000-000000000001"}"#.into()), 409, None),
        ("POST", "/api/v1/devices", Some(format!(r#"{{"name":"{}"}}"#, "x".repeat(2 << 20))), 413, None),
        (
            "POST",
            "/api/v1/devices/bulk",
            Some(r#"{"devices":[{"name":"ok"},{"id":"nope"}]}"#.into()),
            422,
            Some("devices[1].id"),
        ),
        ("GET", "/api/v1/devices?selector=a%20in%20(", None, 422, Some("selector")),
        ("GET", "/api/v1/devices?limit=abc", None, 422, Some("limit")),
        ("GET", "/api/v1/devices/not-a-uuid", None, 404, None),
        ("GET", "/api/v1/rollouts/999", None, 404, None),
        ("POST", "/api/v1/releases", Some(r#"{"version": 2}"#.into()), 422, Some("version")),
        (
            "POST",
            "/api/v1/releases",
            Some(r#"{"version": "1.0", "artifacts":[{"name":"a","uri":"https://x/a","size":1,"sha256":"zz"}]}"#.into()),
            422,
            Some("artifacts[0].sha256"),
        ),
        ("POST", "/api/v1/rollouts", Some(r#"{"version": "9.9.9"}"#.into()), 422, Some("version")),
        (
            "POST",
            "/api/v1/rollouts",
            Some(r#"{"version": "1.0", "strategy": {"wave": "purple"}}"#.into()),
            422,
            Some("strategy.wave"),
        ),
        ("POST", "/ota/deploy?version=2.0.0&wave=purple", None, 422, Some("wave")),
        ("POST", "/ota/deploy?wave=canary", None, 422, Some("version")),
        ("POST", "/ota/update_status?job_id=abc&status=complete", None, 422, Some("job_id")),
        ("POST", "/ota/update_status?job_id=12345&status=complete", None, 404, None),
        ("DELETE", "/ota/jobs", None, 405, None),
    ];
    for (m, path, body, status, field) in cases {
        let r = h.req(m, path, Some(ADMIN), body.as_deref());
        assert_eq!(r.status, status, "{m} {path}: {}", &r.text[..r.text.len().min(300)]);
        assert!(
            r.body["error"]["message"].is_string(),
            "{m} {path}: not a JSON error: {}",
            &r.text[..r.text.len().min(300)]
        );
        if let Some(f) = field {
            assert_eq!(r.body["error"]["field"], f, "{m} {path}: {}", r.text);
        }
    }
    // A body without a JSON content type.
    let r = h.client_raw_post("/api/v1/devices", "{}");
    assert_eq!(r, 415);
    assert_eq!(device_count(&h), before);
    assert_eq!(h.get("/ota/jobs", Some(ADMIN)).body, json!([]));
    assert_eq!(h.get("/api/v1/releases", Some(ADMIN)).body["items"], json!([]));
}

trait RawPost {
    fn client_raw_post(&self, path: &str, body: &str) -> u16;
}

impl RawPost for Http {
    fn client_raw_post(&self, path: &str, body: &str) -> u16 {
        reqwest::blocking::Client::new()
            .post(format!("{}{}", self.base, path))
            .bearer_auth(ADMIN)
            .header("content-type", "text/plain")
            .body(body.to_string())
            .send()
            .unwrap()
            .status()
            .as_u16()
    }
}

#[test]
fn tracker_compatible_flow_and_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir);
    let mut s = Server::start(&db, &[]);
    let h = Http::new(&s.url);
    let r = h.post("/ota/deploy?version=2.0.0&wave=canary", Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["version"], "2.0.0");
    assert_eq!(r.body["status"], "pending");
    let first = r.body["job_id"].as_i64().unwrap();
    let r = h.post("/ota/deploy?version=2.0.1&wave=blue", Some(ADMIN), None);
    let second = r.body["job_id"].as_i64().unwrap();
    let jobs = h.get("/ota/jobs", Some(ADMIN)).body;
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["id"], second, "newest first");
    for k in ["id", "version", "wave", "status", "created_at"] {
        assert!(jobs[0].get(k).is_some(), "job field {k}");
    }
    assert_eq!(jobs[1]["wave"], "canary");
    // With no devices registered, the job waits for an external executor (the
    // original job runner), which reports completion.
    let r = h.post(&format!("/ota/update_status?job_id={first}&status=complete"), Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"status": "success", "job_id": first, "new_status": "complete"}));
    let r = h.post(&format!("/ota/update_status?job_id={first}&status=bogus"), Some(ADMIN), None);
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some("status")));
    // complete is final: going back is a conflict, and nothing changes.
    let r = h.post(&format!("/ota/update_status?job_id={first}&status=pending"), Some(ADMIN), None);
    assert_eq!(r.status, 409, "{}", r.text);
    let r = h.post("/ota/rollback?version=1.0.0&wave=green", Some(ADMIN), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "rollback_pending");
    assert_eq!(r.body["type"], "rollback");
    let rb = r.body["job_id"].as_i64().unwrap();
    h.post(&format!("/ota/update_status?job_id={rb}&status=rollback_complete"), Some(ADMIN), None);

    // Metrics carry the tracker's names with live values.
    let m = h.get("/metrics", None).text;
    for (name, v) in [
        ("ota_jobs_total", "3"),
        ("ota_jobs_successful", "2"),
        ("ota_jobs_pending", "1"),
        ("ota_updated_pods_total", "0"),
    ] {
        assert!(m.lines().any(|l| l == format!("{name} {v}")), "{name} {v} missing in\n{m}");
    }
    assert!(m.contains("ota_last_run_timestamp_seconds "));
    assert!(m.contains("otafleet_http_request_duration_seconds_bucket"));
    assert!(m.contains("otafleet_rollouts{kind=\"deploy\",state=\"succeeded\"} 1"));

    // kill -9 and restart on the same database: everything is still there.
    s.kill9();
    let s2 = Server::start(&db, &[]);
    let h2 = Http::new(&s2.url);
    let jobs2 = h2.get("/ota/jobs", Some(ADMIN)).body;
    assert_eq!(jobs2.as_array().unwrap().len(), 3);
    assert_eq!(jobs2[2]["status"], "complete");
    assert_eq!(jobs2[0]["status"], "rollback_complete");
    let events = h2.get(&format!("/api/v1/events?rollout_id={first}"), Some(ADMIN)).body;
    let kinds: Vec<&str> = events["items"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["rollout.created", "rollout.succeeded"]);
}

#[test]
fn open_compat_setting_serves_the_python_cli_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&sqlite_url(&dir), &["--open-compat"]);
    let h = Http::new(&s.url);
    assert_eq!(h.post("/ota/deploy?version=3.0.0&wave=green", None, None).status, 200);
    assert_eq!(h.get("/ota/jobs", None).body.as_array().unwrap().len(), 1);
    // The management API still needs a token.
    assert_eq!(h.get("/api/v1/rollouts", None).status, 401);
}

#[test]
fn cli_commands_work_and_fail_clearly() {
    let (_d, s, _h) = setup();
    let (code, out, err) = cli(&s.url, Some(ADMIN), &["deploy", "2.0.0", "--wave", "canary"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("job 1 created"), "{out}");
    let (code, out, _) = cli(&s.url, Some(ADMIN), &["list", "--output", "json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["version"], "2.0.0");
    let (code, out, _) = cli(&s.url, Some(ADMIN), &["list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ID"), "{out}");
    let (code, out, err) = cli(
        &s.url,
        Some(ADMIN),
        &["devices", "register", "--label", "device_type=esp32", "--current-version", "1.0.0"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("device token"));
    let (code, out, _) = cli(&s.url, Some(ADMIN), &["devices", "list", "-l", "device_type=esp32", "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len(), 1);
    let (code, out, _) = cli(&s.url, Some(ADMIN), &["token", "create", "--role", "viewer", "-o", "json"]);
    assert_eq!(code, 0);
    let viewer = serde_json::from_str::<Value>(&out).unwrap()["token"].as_str().unwrap().to_string();
    let (code, _, err) = cli(&s.url, Some(&viewer), &["deploy", "2.0.0"]);
    assert_eq!(code, 1);
    assert!(err.contains("403") && err.contains("operator"), "{err}");
    let (code, _, err) = cli(&s.url, None, &["list"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = cli(&s.url, Some(ADMIN), &["rollouts", "get", "77"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = cli("http://127.0.0.1:1", Some(ADMIN), &["list"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
    let (code, _, _) = cli(&s.url, Some(ADMIN), &["deploy", "2.0.0", "--wave", "purple"]);
    assert_eq!(code, 2, "clap usage error");
    let (code, out, _) = cli(&s.url, None, &["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("otafleet"));
}

#[test]
fn openapi_document_lists_the_api() {
    let (_d, _s, h) = setup();
    let r = h.get("/api/v1/openapi.json", None);
    assert_eq!(r.status, 200);
    for p in ["/api/v1/devices", "/api/v1/rollouts/{id}/pause", "/ota/deploy", "/device/v1/checkin"] {
        assert!(r.body["paths"].get(p).is_some(), "{p} missing from the OpenAPI document");
    }
    // The schemas are the shared otafleet-api types.
    let rollout = &r.body["components"]["schemas"]["Rollout"]["properties"];
    for f in ["preset", "wave", "current_wave", "progress"] {
        assert!(rollout.get(f).is_some(), "Rollout.{f} missing from the OpenAPI document");
    }
    assert!(r.body["components"]["schemas"]["ErrorDetail"]["properties"].get("field").is_some());
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let (_d, mut s, h) = setup();
    assert_eq!(h.get("/", None).status, 200);
    let st = s.terminate();
    assert!(st.success(), "exit status {st:?}");
}

#[test]
fn postgres_backend_serves_the_same_api() {
    let Some(url) = postgres_url() else { return };
    let s = Server::start(&url, &[]);
    let h = Http::new(&s.url);
    let r = h.post(
        "/api/v1/devices/bulk",
        Some(ADMIN),
        Some(
            &json!({"devices": [{"labels": {"device_type": "esp32"}}, {"labels": {"device_type": "rpi"}}]}).to_string(),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        h.get("/api/v1/devices?selector=device_type%3Desp32", Some(ADMIN)).body["items"].as_array().unwrap().len(),
        1
    );
    let r = h.post("/ota/deploy?version=2.0.0&wave=green", Some(ADMIN), None);
    assert_eq!(r.status, 200);
    let id = r.body["job_id"].as_i64().unwrap();
    let r = eventually(Duration::from_secs(10), || {
        let r = h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN));
        // `running` is committed one step before the release: wait for both.
        (r.body["state"] == "running" && r.body["progress"][0]["in_flight"] == 2).then_some(r)
    });
    assert_eq!(r.body["progress"][0]["in_flight"], 2);
}
