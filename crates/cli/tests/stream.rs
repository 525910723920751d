//! The event stream (`GET /api/v1/events/stream`) against the real binary:
//! live delivery, resume with `Last-Event-ID`, filters, errors, and no event
//! lost while many writers commit at once (on PostgreSQL ids commit out of
//! order).

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

/// An open stream; events arrive on a channel as (id, kind, data).
struct Stream {
    rx: mpsc::Receiver<(i64, String, Value)>,
}

fn open(base: &str, query: &str, last_event_id: Option<i64>) -> Stream {
    let client = reqwest::blocking::Client::builder().timeout(None).build().unwrap();
    let mut req = client.get(format!("{base}/api/v1/events/stream{query}")).bearer_auth(ADMIN);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let res = req.send().unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let (tx, rx) = mpsc::channel();
    let (opened, is_open) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut id, mut kind) = (0, String::new());
        for line in BufReader::new(res).lines() {
            let Ok(line) = line else { return };
            if line.starts_with(": otafleet event stream") {
                let _ = opened.send(());
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().unwrap();
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                if tx.send((id, kind.clone(), serde_json::from_str(v).unwrap())).is_err() {
                    return;
                }
            }
        }
    });
    is_open.recv_timeout(Duration::from_secs(10)).expect("the stream opens");
    Stream { rx }
}

impl Stream {
    fn next(&self) -> (i64, String, Value) {
        self.rx.recv_timeout(Duration::from_secs(10)).expect("an event within 10 s")
    }
    fn quiet(&self, for_: Duration) -> bool {
        self.rx.recv_timeout(for_).is_err()
    }
}

fn release(h: &Http, v: &str) {
    let r = h.post("/api/v1/releases", Some(ADMIN), Some(&format!(r#"{{"version":"{v}"}}"#)));
    assert_eq!(r.status, 201, "{}", r.text);
}

fn live_resume_filters_and_errors(db_url: &str) {
    let s = Server::start(db_url, &[]);
    let h = Http::new(&s.url);
    let live = open(&s.url, "?kind=release.created", None);
    release(&h, "1.0.0");
    let (id1, kind, data) = live.next();
    assert_eq!(kind, "release.created");
    assert_eq!(data["id"], id1);
    assert_eq!(data["data"]["version"], "1.0.0");
    drop(live);

    // Missed while disconnected: three releases and a device (another kind).
    for v in ["1.1.0", "1.2.0", "1.3.0"] {
        release(&h, v);
    }
    assert_eq!(h.post("/api/v1/devices", Some(ADMIN), Some(r#"{"name":"d1"}"#)).status, 201);
    let resumed = open(&s.url, "?kind=release.created", Some(id1));
    let versions: Vec<String> =
        (0..3).map(|_| resumed.next().2["data"]["version"].as_str().unwrap().to_string()).collect();
    assert_eq!(versions, ["1.1.0", "1.2.0", "1.3.0"], "every missed event, in order, once");
    assert!(resumed.quiet(Duration::from_millis(800)), "the device event is filtered out");
    release(&h, "1.4.0");
    assert_eq!(resumed.next().2["data"]["version"], "1.4.0", "then live again");

    // `after` does what Last-Event-ID does; everything without a filter.
    let all = open(&s.url, &format!("?after={id1}"), None);
    let kinds: BTreeSet<String> = (0..5).map(|_| all.next().1).collect();
    assert!(kinds.contains("device.registered") && kinds.contains("release.created"), "{kinds:?}");

    // Refusals are JSON naming the field; no token is 401.
    let bad = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/events/stream", s.url))
        .bearer_auth(ADMIN)
        .header("Last-Event-ID", "yesterday")
        .send()
        .unwrap();
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.json::<Value>().unwrap()["error"]["field"], "Last-Event-ID");
    let r = h.get("/api/v1/events/stream?kind=rollout.exploded", Some(ADMIN));
    assert_eq!((r.status, r.body["error"]["field"].as_str()), (422, Some("kind")), "{}", r.text);
    assert_eq!(h.get("/api/v1/events/stream", None).status, 401);
}

/// Writers on eight threads at once while a stream is open: every event the
/// list API has, the stream delivered.
fn no_event_lost_under_concurrent_writers(db_url: &str) {
    let s = Server::start(db_url, &[]);
    let base = s.url.clone();
    let stream = open(&s.url, "?kind=release.created", None);
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let base = base.clone();
            std::thread::spawn(move || {
                let h = Http::new(&base);
                for i in 0..25 {
                    release(&h, &format!("{t}.{i}.0"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut got = BTreeSet::new();
    while got.len() < 200 {
        let (id, _, _) = stream.next();
        got.insert(id);
    }
    let h = Http::new(&s.url);
    let listed: BTreeSet<i64> = h.get("/api/v1/events?kind=release.created&limit=1000", Some(ADMIN)).body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, listed);
}

#[test]
fn event_stream_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    live_resume_filters_and_errors(&sqlite_url(&dir));
    let dir = tempfile::tempdir().unwrap();
    no_event_lost_under_concurrent_writers(&sqlite_url(&dir));
}

#[test]
fn event_stream_on_postgres() {
    let Some(url) = postgres_url() else { return };
    live_resume_filters_and_errors(&url);
    let Some(url) = postgres_url() else { return };
    no_event_lost_under_concurrent_writers(&url);
}

fn sim(server: &str, n: &str, extra: &[&str]) -> std::process::Child {
    spawn_sim(server, &[&["--devices", n, "--poll-ms", "200", "--latency", "100", "--labels"][..], extra].concat())
}

/// `otafleet rollouts watch ID` follows a rollout through the stream to its
/// end: a line per change without a terminal, exit 0 on success and
/// non-zero on failure.
#[test]
fn rollouts_watch_follows_a_rollout_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&sqlite_url(&dir), &["--poll-interval-secs", "1"]);
    let h = Http::new(&s.url);
    let mut good = sim(&s.url, "6", &["device_type=good"]);
    let mut bad = sim(&s.url, "3", &["device_type=bad", "--fail-rate", "1.0"]);
    eventually(Duration::from_secs(30), || {
        (h.get("/api/v1/devices?limit=100", Some(ADMIN)).body["items"].as_array()?.len() == 9).then_some(())
    });
    release(&h, "2.0.0");
    let create = |selector: &str| {
        let body = serde_json::json!({"version": "2.0.0", "selector": selector,
            "strategy": {"steps": [1, "100%"], "retries": 0, "auto_rollback": false, "failure_threshold": 0.5}});
        let r = h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_i64().unwrap().to_string()
    };

    let summarized = open(&s.url, "?summary=true", None);
    let id = create("device_type=good");
    let (code, out, err) = cli(&s.url, Some(ADMIN), &["rollouts", "watch", &id]);
    assert_eq!(code, 0, "{out}{err}");
    // Summary mode: no action.* event, their count in actions.summary events
    // (each for this rollout, at most one per 500 ms), rollout.* as they are.
    let mut actions = 0;
    let mut summaries = 0;
    loop {
        let (_, kind, data) = summarized.next();
        assert!(!kind.starts_with("action."), "{kind}");
        if kind == "actions.summary" {
            summaries += 1;
            actions += data["count"].as_i64().unwrap();
            assert_eq!(data["rollout_ids"], serde_json::json!([id.parse::<i64>().unwrap()]));
        }
        if kind == "rollout.succeeded" {
            break;
        }
    }
    let listed = h.get(&format!("/api/v1/events?rollout_id={id}&limit=1000"), Some(ADMIN)).body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("action."))
        .count() as i64;
    assert_eq!(actions, listed, "every action event counted once");
    assert!(summaries >= 1 && summaries < listed, "{summaries} summaries for {listed} action events");
    assert!(out.contains(&format!("rollout {id} → 2.0.0: running")), "{out}");
    assert!(out.contains("wave 1: 1/1 done: 1 ok") && out.contains("wave 2: 5/5 done: 5 ok"), "{out}");
    assert!(out.trim_end().ends_with(&format!("rollout {id} succeeded")), "{out}");
    assert_eq!(h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body["state"], "succeeded");

    let id = create("device_type=bad");
    let (code, out, err) = cli(&s.url, Some(ADMIN), &["rollouts", "watch", &id]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains(&format!("rollout {id} ended failed")), "{err}");
    assert!(out.contains("1 failed"), "{out}");

    // Already over: answers at once; JSON mode prints the rollout.
    let (code, out, _) = cli(&s.url, Some(ADMIN), &["--output", "json", "rollouts", "watch", "1"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["state"], "succeeded");
    let (code, _, err) = cli(&s.url, Some(ADMIN), &["rollouts", "watch", "999"]);
    assert_ne!(code, 0);
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = cli(&s.url, None, &["rollouts", "watch", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
    for c in [&mut good, &mut bad] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
