//! Webhooks against the real binary and a real receiver (an HTTP server in
//! this test): created with the CLI, deliveries signed (checked with the
//! receiver's own HMAC), a receiver answering 500 retried with backoff until
//! it answers, one that always fails given up and shown in the delivery log,
//! one that hangs slowing nothing else, a kill -9 of the server losing no
//! delivery, and bad input refused with the field named. On SQLite and on
//! PostgreSQL.

mod common;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use otafleet_core::webhook;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    at: Instant,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<HashMap<String, Vec<Got>>>>,
}

impl Receiver {
    /// Serves `/{name}` on a free port in a thread of its own: `ok` answers
    /// 204, `flaky` 500 to its first two requests then 200, `down` always 500,
    /// `hang` after a minute.
    fn start() -> (Receiver, String) {
        let rx = Receiver::default();
        let state = rx.clone();
        let (tx, addr) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().route("/{name}", post(receive)).with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = addr.recv().unwrap();
        (rx, format!("http://{addr}"))
    }

    fn of(&self, name: &str) -> Vec<Got> {
        self.got.lock().unwrap().get(name).cloned().unwrap_or_default()
    }
}

async fn receive(
    State(rx): State<Receiver>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let n = {
        let mut got = rx.got.lock().unwrap();
        let list = got.entry(name.clone()).or_default();
        list.push(Got { at: Instant::now(), headers, body: body.to_vec() });
        list.len()
    };
    match name.as_str() {
        "flaky" if n <= 2 => StatusCode::INTERNAL_SERVER_ERROR,
        "down" => StatusCode::INTERNAL_SERVER_ERROR,
        "hang" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK
        }
        "flaky" => StatusCode::OK,
        _ => StatusCode::NO_CONTENT,
    }
}

/// `webhooks create` through the CLI: (id, secret).
fn create(server: &str, url: &str, events: &str) -> (i64, String) {
    let (code, out, err) =
        cli(server, Some(ADMIN), &["--output", "json", "webhooks", "create", url, "--events", events]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    (v["id"].as_i64().unwrap(), v["secret"].as_str().unwrap().to_string())
}

fn header<'a>(g: &'a Got, name: &str) -> &'a str {
    g.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn deliveries(h: &Http, id: i64, query: &str) -> Vec<Value> {
    let r = h.get(&format!("/api/v1/webhooks/{id}/deliveries{query}"), Some(ADMIN));
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["items"].as_array().unwrap().clone()
}

fn signed_retried_logged(db_url: &str) {
    let args = ["--webhook-retry-initial", "300ms", "--webhook-max-attempts", "3", "--webhook-timeout", "2s"];
    let mut s = Server::start(db_url, &args);
    let h = Http::new(&s.url);
    let (rx, base) = Receiver::start();

    let (ok_id, ok_secret) = create(&s.url, &format!("{base}/ok"), "rollout.*,action.failed");
    let (flaky_id, flaky_secret) = create(&s.url, &format!("{base}/flaky"), "release.created");
    let (down_id, _) = create(&s.url, &format!("{base}/down"), "release.created");
    let (hang_id, _) = create(&s.url, &format!("{base}/hang"), "*");
    let (code, out, _) = cli(&s.url, Some(ADMIN), &["webhooks", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("rollout.*,action.failed") && out.contains("/flaky"), "{out}");
    assert!(!out.contains(&ok_secret), "the list never shows a secret");

    // A release (release.created), then a rollout on a fleet whose installs
    // fail: rollout.* and action.failed events.
    assert_eq!(h.post("/api/v1/releases", Some(ADMIN), Some(r#"{"version":"2.0.0"}"#)).status, 201);
    let mut sim = spawn_sim(&s.url, &["--devices", "4", "--poll-ms", "200", "--latency", "50", "--fail-rate", "1.0"]);
    eventually(Duration::from_secs(30), || {
        (h.get("/api/v1/devices?limit=100", Some(ADMIN)).body["items"].as_array()?.len() == 4).then_some(())
    });
    let body = json!({"version": "2.0.0", "selector": "device_type=sim",
        "strategy": {"steps": ["100%"], "failure_threshold": 0.5, "retries": 0, "auto_rollback": false}});
    let r = h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    let rollout = r.body["id"].as_i64().unwrap();
    eventually(Duration::from_secs(60), || {
        let st = h.get(&format!("/api/v1/rollouts/{rollout}"), Some(ADMIN)).body["state"].as_str()?.to_string();
        (st == "failed").then_some(())
    });

    // `ok`: every rollout.* and action.failed event, signed, each once, and nothing else.
    let kinds_of = |g: &[Got]| -> Vec<(i64, String)> {
        let mut seen: Vec<(i64, String)> = g
            .iter()
            .map(|g| {
                let e: Value = serde_json::from_slice(&g.body).unwrap();
                (e["id"].as_i64().unwrap(), e["kind"].as_str().unwrap().to_string())
            })
            .collect();
        seen.sort();
        seen
    };
    let (want, got) = eventually(Duration::from_secs(30), || {
        let all = h.get("/api/v1/events?limit=10000", Some(ADMIN)).body["items"].as_array()?.clone();
        let want: Vec<(i64, String)> = all
            .iter()
            .map(|e| (e["id"].as_i64().unwrap(), e["kind"].as_str().unwrap().to_string()))
            .filter(|(_, k)| k.starts_with("rollout.") || k == "action.failed")
            .collect();
        let got = rx.of("ok");
        (kinds_of(&got) == want).then_some((want, got))
    });
    assert!(
        want.iter().any(|(_, k)| k == "action.failed") && want.iter().any(|(_, k)| k == "rollout.created"),
        "{want:?}"
    );
    for g in &got {
        let sig = header(g, "otafleet-signature");
        webhook::verify(sig, ok_secret.as_bytes(), &g.body, now_secs(), 300).expect("a valid signature");
        assert!(webhook::verify(sig, b"another secret", &g.body, now_secs(), 300).is_err());
        let e: Value = serde_json::from_slice(&g.body).unwrap();
        assert_eq!(header(g, "otafleet-event"), e["kind"].as_str().unwrap());
        assert_eq!(header(g, "content-type"), "application/json");
    }

    // `flaky`: 500, 500, then 200, with growing waits; the log says delivered after 3 attempts.
    let f = eventually(Duration::from_secs(20), || {
        let g = rx.of("flaky");
        (g.len() >= 3).then_some(g)
    });
    assert_eq!(header(&f[0], "otafleet-delivery"), header(&f[2], "otafleet-delivery"), "one delivery, three attempts");
    let (w1, w2) = (f[1].at - f[0].at, f[2].at - f[1].at);
    assert!(w1 >= Duration::from_millis(250) && w2 >= w1, "backoff: {w1:?} then {w2:?}");
    webhook::verify(header(&f[2], "otafleet-signature"), flaky_secret.as_bytes(), &f[2].body, now_secs(), 300).unwrap();
    let d = eventually(Duration::from_secs(10), || {
        let d = deliveries(&h, flaky_id, "");
        (d.len() == 1 && d[0]["state"] == "delivered").then_some(d)
    });
    assert_eq!((d[0]["attempts"].as_i64(), d[0]["last_status"].as_i64()), (Some(3), Some(200)));

    // `down`: given up after the 3 attempts allowed, the log says why.
    let d = eventually(Duration::from_secs(20), || {
        let d = deliveries(&h, down_id, "?state=failed");
        (d.len() == 1).then_some(d)
    });
    assert_eq!(d[0]["attempts"], 3);
    assert_eq!(d[0]["last_status"], 500);
    assert!(d[0]["last_error"].as_str().unwrap().contains("500"), "{}", d[0]);
    assert_eq!(rx.of("down").len(), 3, "no attempt after giving up");
    let (code, out, _) = cli(&s.url, Some(ADMIN), &["webhooks", "deliveries", &down_id.to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("failed") && out.contains("HTTP 500"), "{out}");
    // Redelivered on request: one more attempt.
    let did = d[0]["id"].as_i64().unwrap();
    let (code, out, err) = cli(&s.url, Some(ADMIN), &["webhooks", "redeliver", &down_id.to_string(), &did.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    eventually(Duration::from_secs(10), || (rx.of("down").len() == 4).then_some(()));

    // `hang` got its requests, and timed out on them without holding up the
    // others: `ok` and `flaky` were served above while it hung.
    assert!(!rx.of("hang").is_empty());
    let d = eventually(Duration::from_secs(20), || {
        let d = deliveries(&h, hang_id, "");
        d.iter().any(|d| d["last_error"] == "timed out").then_some(d)
    });
    assert!(d.iter().all(|d| d["state"] == "pending"), "retried, not delivered");

    // Killed right after an event, before it could be delivered: the
    // restarted server delivers it.
    let before = rx.of("ok").len();
    assert_eq!(h.post("/api/v1/releases", Some(ADMIN), Some(r#"{"version":"3.0.0"}"#)).status, 201);
    let body = json!({"version": "3.0.0", "selector": "device_type=sim", "strategy": {"bake_time_secs": 3600}});
    let r = h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
    let second = r.body["id"].as_i64().unwrap();
    let r = h.post(&format!("/api/v1/rollouts/{second}/pause"), Some(ADMIN), None);
    s.kill9();
    assert_eq!(r.status, 200, "{}", r.text);
    let s = Server::start(&s.db_url, &args);
    let h = Http::new(&s.url);
    eventually(Duration::from_secs(30), || {
        rx.of("ok")
            .iter()
            .skip(before)
            .any(|g| {
                let e: Value = serde_json::from_slice(&g.body).unwrap();
                e["kind"] == "rollout.paused" && e["rollout_id"] == second
            })
            .then_some(())
    });
    let _ = sim.kill();
    let _ = sim.wait();

    // Deleting stops deliveries and removes the log.
    let (code, _, _) = cli(&s.url, Some(ADMIN), &["webhooks", "delete", &ok_id.to_string()]);
    assert_eq!(code, 0);
    assert_eq!(h.get(&format!("/api/v1/webhooks/{ok_id}"), Some(ADMIN)).status, 404);
    assert_eq!(h.get(&format!("/api/v1/webhooks/{ok_id}/deliveries"), Some(ADMIN)).status, 404);
}

#[test]
fn webhooks_are_signed_retried_and_logged_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    signed_retried_logged(&sqlite_url(&dir));
}

#[test]
fn webhooks_are_signed_retried_and_logged_postgres() {
    let Some(url) = postgres_url() else { return };
    signed_retried_logged(&url);
}

#[test]
fn bad_webhooks_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&sqlite_url(&dir), &[]);
    let h = Http::new(&s.url);
    for (body, field) in [
        (json!({"url": "ftp://x/y", "events": ["*"]}), "url"),
        (json!({"url": "https://", "events": ["*"]}), "url"),
        (json!({"url": "https://x/\u{202e}", "events": ["*"]}), "url"),
        (json!({"url": "https://x/h", "events": []}), "events"),
        (json!({"url": "https://x/h", "events": ["rolout.*"]}), "events"),
        (json!({"url": "https://x/h", "events": ["action.exploded"]}), "events"),
        (json!({"url": "https://x/h", "events": ["*"], "description": "a\nb"}), "description"),
    ] {
        let r = h.post("/api/v1/webhooks", Some(ADMIN), Some(&body.to_string()));
        assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some(field)), "{body}: {}", r.text);
    }
    let r = h.post("/api/v1/webhooks", Some(ADMIN), Some(r#"{"url": "https://x/h", "events": ["*"], "extra": 1}"#));
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(h.get("/api/v1/webhooks", Some(ADMIN)).body["items"].as_array().unwrap().len(), 0, "nothing stored");

    // Admins only.
    let op = h.post("/api/v1/tokens", Some(ADMIN), Some(r#"{"name":"op","role":"operator"}"#));
    let op = op.body["token"].as_str().unwrap().to_string();
    let r = h.post("/api/v1/webhooks", Some(&op), Some(r#"{"url": "https://x/h", "events": ["*"]}"#));
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(h.get("/api/v1/webhooks", Some(&op)).status, 403);
    assert_eq!(h.get("/api/v1/webhooks", None).status, 401);

    // The CLI says what is wrong and exits non-zero.
    let (code, _, err) =
        cli(&s.url, Some(ADMIN), &["webhooks", "create", "https://x/h", "--events", "rollout.*,bogus"]);
    assert_ne!(code, 0);
    assert!(err.contains("events") && err.contains("bogus"), "{err}");
    assert_eq!(h.get("/api/v1/webhooks/77", Some(ADMIN)).status, 404);
    assert_eq!(h.get("/api/v1/webhooks/x/deliveries", Some(ADMIN)).status, 404);
    let r = h.post("/api/v1/webhooks", Some(ADMIN), Some(r#"{"url": "https://x/h", "events": ["*"]}"#));
    let id = r.body["id"].as_i64().unwrap();
    let r = h.get(&format!("/api/v1/webhooks/{id}/deliveries?state=lost"), Some(ADMIN));
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some("state")), "{}", r.text);
}
