//! The token lifecycle end to end: the real binary on a free port, driven
//! through the CLI and over HTTP. Secrets never appear in listings; a revoked,
//! an expired, a replaced bootstrap and a rotated device token are refused at
//! once.

mod common;

use common::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn setup() -> (tempfile::TempDir, Server, Http) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&sqlite_url(&dir), &[]);
    let h = Http::new(&s.url);
    (dir, s, h)
}

/// The secret: the last line of a `create` command's output.
fn secret_of(out: &str) -> String {
    out.lines().last().unwrap_or_default().trim().to_string()
}

#[test]
fn create_list_use_revoke_an_api_token_through_the_cli() {
    let (_d, s, h) = setup();
    let (code, out, err) =
        cli(&s.url, Some(ADMIN), &["token", "create", "--role", "operator", "--name", "ci-bot", "--expires-in", "30d"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("expires "), "{out}");
    let secret = secret_of(&out);
    assert!(secret.starts_with("ota_"), "{out}");

    // Listed with its lifecycle, in a table and in JSON, never with a secret.
    let (code, table, err) = cli(&s.url, Some(ADMIN), &["token", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("ci-bot") && table.contains("operator") && table.contains("active"), "{table}");
    assert!(table.contains("LAST USED") && table.contains("EXPIRES"), "{table}");
    let (code, json_out, _) = cli(&s.url, Some(ADMIN), &["-o", "json", "token", "list"]);
    assert_eq!(code, 0);
    for text in [&table, &json_out] {
        assert!(!text.contains(&secret) && !text.contains(ADMIN), "a secret in the listing:\n{text}");
    }
    let list: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    let t = list["items"].as_array().unwrap().iter().find(|t| t["name"] == "ci-bot").unwrap().clone();
    let id = t["id"].as_i64().unwrap();
    assert!(t["expires_at"].is_string() && t["last_used_at"].is_null() && t["revoked_at"].is_null(), "{t}");
    // Only admins list tokens.
    let (code, _, err) = cli(&s.url, Some(&secret), &["token", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("403"), "{err}");

    // Used: works, and its last use is recorded.
    assert_eq!(h.get("/api/v1/devices", Some(&secret)).status, 200);
    let shown = eventually(Duration::from_secs(10), || {
        let (code, out, _) = cli(&s.url, Some(ADMIN), &["-o", "json", "token", "show", &id.to_string()]);
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["last_used_at"].is_string().then_some(v)
    });
    assert_eq!(shown["state"], "active");
    let (code, out, _) = cli(&s.url, Some(ADMIN), &["token", "show", &id.to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("ci-bot") && out.contains("last_used_at") && !out.contains(&secret), "{out}");

    // Revoked: the very next request is a 401.
    let (code, out, err) = cli(&s.url, Some(ADMIN), &["token", "revoke", &id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("revoked token 'ci-bot'"), "{out}");
    let r = h.get("/api/v1/devices", Some(&secret));
    assert_eq!(r.status, 401, "{}", r.text);
    let (code, _, err) = cli(&s.url, Some(&secret), &["devices", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
    let (_, out, _) = cli(&s.url, Some(ADMIN), &["token", "list"]);
    assert!(out.lines().any(|l| l.contains("ci-bot") && l.contains("revoked")), "{out}");
    // Bad input is a 4xx naming the field.
    let r = h.post("/api/v1/tokens", Some(ADMIN), Some(r#"{"name":"x","role":"viewer","expires_in_secs":0}"#));
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some("expires_in_secs")), "{}", r.text);
}

#[test]
fn an_expired_token_is_refused() {
    let (_d, _s, h) = setup();
    let r = h.post(
        "/api/v1/tokens",
        Some(ADMIN),
        Some(&json!({"name": "brief", "role": "viewer", "expires_in_secs": 1}).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let secret = r.body["token"].as_str().unwrap().to_string();
    // Used (and cached) while valid...
    let start = Instant::now();
    let first = h.get("/api/v1/devices", Some(&secret)).status;
    if start.elapsed() < Duration::from_millis(900) {
        assert_eq!(first, 200);
    }
    std::thread::sleep(Duration::from_millis(1200));
    // ...refused once expired, although still in the cache.
    let r = h.get("/api/v1/devices", Some(&secret));
    assert_eq!(r.status, 401, "{}", r.text);
    let list = h.get("/api/v1/tokens", Some(ADMIN));
    let t = list.body["items"].as_array().unwrap().iter().find(|t| t["name"] == "brief").unwrap().clone();
    assert_eq!(t["state"], "expired");
}

#[test]
fn a_too_short_admin_token_stops_serve_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &sqlite_url(&dir)])
        .env("OTAFLEET_ADMIN_TOKEN", "too-short-secret")
        .env("OTAFLEET_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("serve did not exit with a too-short OTAFLEET_ADMIN_TOKEN");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(stderr.contains("OTAFLEET_ADMIN_TOKEN must be at least 32 characters"), "{stderr}");
}

fn restart_with_another_bootstrap_token(db: &str) {
    let mut s = Server::start(db, &[]);
    let h = Http::new(&s.url);
    assert_eq!(h.get("/api/v1/devices", Some(ADMIN)).status, 200);
    assert_eq!(s.terminate().code(), Some(0));

    let second = "ota_second_bootstrap_admin_token_0123456789";
    let mut s = Server::start_with_admin(db, "127.0.0.1:0", &[], second);
    let h = Http::new(&s.url);
    assert_eq!(h.get("/api/v1/devices", Some(ADMIN)).status, 401, "the previous bootstrap token is revoked");
    assert_eq!(h.get("/api/v1/devices", Some(second)).status, 200);
    let list = h.get("/api/v1/tokens", Some(second));
    let boot: Vec<_> =
        list.body["items"].as_array().unwrap().iter().filter(|t| t["bootstrap"] == true).cloned().collect();
    assert_eq!(boot.len(), 2, "{}", list.text);
    assert_eq!((boot[0]["state"].as_str(), boot[1]["state"].as_str()), (Some("revoked"), Some("active")));
    assert_eq!(s.terminate().code(), Some(0));

    // Going back to the revoked one is refused at start, with the reason.
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", db])
        .env("OTAFLEET_ADMIN_TOKEN", ADMIN)
        .env("OTAFLEET_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OTAFLEET_ADMIN_TOKEN") && stderr.contains("revoked"), "{stderr}");
}

#[test]
fn restarting_with_another_bootstrap_token_revokes_the_old_one_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    restart_with_another_bootstrap_token(&sqlite_url(&dir));
}

#[test]
fn restarting_with_another_bootstrap_token_revokes_the_old_one_postgres() {
    if let Some(db) = postgres_url() {
        restart_with_another_bootstrap_token(&db);
    }
}

#[test]
fn rotating_a_device_token_refuses_the_old_one() {
    let (_d, s, h) = setup();
    let r = h.post("/api/v1/devices", Some(ADMIN), Some(r#"{"name":"edge-1","labels":{"device_type":"esp32"}}"#));
    assert_eq!(r.status, 201, "{}", r.text);
    let (id, old) = (r.body["id"].as_str().unwrap().to_string(), r.body["token"].as_str().unwrap().to_string());
    let checkin = r#"{"current_version":"1.0.0","health":"healthy"}"#;
    assert_eq!(h.post("/device/v1/checkin", Some(&old), Some(checkin)).status, 200);

    let (code, out, err) = cli(&s.url, Some(ADMIN), &["devices", "rotate-token", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let new = out.lines().last().unwrap().rsplit(' ').next().unwrap().to_string();
    assert!(new.starts_with("dev_") && new != old, "{out}");
    let r = h.post("/device/v1/checkin", Some(&old), Some(checkin));
    assert_eq!(r.status, 401, "the old device token is refused at once: {}", r.text);
    let r = h.post("/device/v1/checkin", Some(&new), Some(checkin));
    assert_eq!(r.status, 200, "{}", r.text);
    // A viewer may not rotate.
    let v = h.post("/api/v1/tokens", Some(ADMIN), Some(r#"{"name":"v","role":"viewer"}"#));
    let viewer = v.body["token"].as_str().unwrap();
    assert_eq!(h.post(&format!("/api/v1/devices/{id}/token"), Some(viewer), None).status, 403);
}

#[test]
fn enrollment_tokens_are_listed_without_secrets_and_revoked() {
    let (_d, s, h) = setup();
    let (code, out, err) = cli(
        &s.url,
        Some(ADMIN),
        &[
            "devices",
            "enroll-token",
            "create",
            "--labels",
            "device_type=esp32",
            "--name",
            "line-1",
            "--expires-in",
            "1h",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let secret = secret_of(&out);
    let r = h.post("/device/v1/enroll", Some(&secret), Some(r#"{"name":"e1"}"#));
    assert_eq!(r.status, 201, "{}", r.text);

    let (code, table, _) = cli(&s.url, Some(ADMIN), &["devices", "enroll-token", "list"]);
    assert_eq!(code, 0);
    assert!(table.contains("line-1") && table.contains("active") && !table.contains(&secret), "{table}");
    let (code, out, _) = cli(&s.url, Some(ADMIN), &["-o", "json", "devices", "enroll-token", "list"]);
    assert_eq!(code, 0);
    assert!(!out.contains(&secret), "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = &list["items"][0];
    assert_eq!(
        (t["uses"].as_i64(), t["last_used_at"].is_string(), t["expires_at"].is_string()),
        (Some(1), true, true),
        "{t}"
    );
    let id = t["id"].as_i64().unwrap().to_string();
    let (code, out, _) = cli(&s.url, Some(ADMIN), &["devices", "enroll-token", "show", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("line-1") && out.contains("device_type=esp32") && !out.contains(&secret), "{out}");

    let (code, out, err) = cli(&s.url, Some(ADMIN), &["devices", "enroll-token", "revoke", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let r = h.post("/device/v1/enroll", Some(&secret), Some(r#"{"name":"e2"}"#));
    assert_eq!(r.status, 401, "{}", r.text);
    let (_, out, _) = cli(&s.url, Some(ADMIN), &["devices", "enroll-token", "show", &id]);
    assert!(out.contains("revoked"), "{out}");
    // Viewers may not see them.
    let v = h.post("/api/v1/tokens", Some(ADMIN), Some(r#"{"name":"v","role":"viewer"}"#));
    assert_eq!(h.get("/api/v1/enrollment-tokens", v.body["token"].as_str()).status, 403);
}
