//! Telemetry against the real binary: devices post batches with their own
//! tokens, bad samples are refused each by name, a device over its rate gets
//! 429 with Retry-After, and the query API answers merged windows grouped by
//! the version a device ran, by label or for the whole selection; what was
//! received before a SIGTERM is flushed and there after the restart. On
//! SQLite and on PostgreSQL.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn register(h: &Http, devices: Value) -> Vec<(String, String)> {
    let r = h.post("/api/v1/devices/bulk", Some(ADMIN), Some(&json!({ "devices": devices }).to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap().to_string(), d["token"].as_str().unwrap().to_string()))
        .collect()
}

fn post(h: &Http, token: &str, samples: Value) -> Resp {
    h.post("/device/v1/telemetry", Some(token), Some(&json!({ "samples": samples }).to_string()))
}

fn query(h: &Http, q: &str) -> Resp {
    h.get(&format!("/api/v1/telemetry/query?{q}"), Some(ADMIN))
}

/// A point: (value, samples, devices).
type Point = (Option<f64>, u64, u64);
/// A series: (group value, points).
type Series = (String, Vec<Point>);

/// The series of a query answer.
fn series(r: &Resp, by: &str) -> Vec<Series> {
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let group = s["group"][by].as_str().unwrap_or("").to_string();
            let points = s["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["value"].as_f64(), p["samples"].as_u64().unwrap(), p["devices"].as_u64().unwrap()))
                .collect();
            (group, points)
        })
        .collect()
}

fn run(db: &str) {
    // Windows written within 200 ms of arriving (not at the end of their minute).
    let mut server =
        Server::start(db, &["--telemetry-flush", "100ms", "--telemetry-hold", "200ms", "--telemetry-rate", "5"]);
    let h = Http::new(&server.url);
    let devs = register(
        &h,
        json!([
            {"name": "old-1", "labels": {"site": "a"}, "current_version": "1.0.0"},
            {"name": "new-1", "labels": {"site": "b"}, "current_version": "2.0.0"},
            {"name": "busy", "labels": {"site": "c"}, "current_version": "1.0.0"},
        ]),
    );
    let now = otafleet_store::now_ms();
    let (old, new, busy) = (&devs[0].1, &devs[1].1, &devs[2].1);
    let r = post(
        &h,
        old,
        json!([
            {"metric": "cpu_temp_c", "value": 50.0, "ts": now - 1_000},
            {"metric": "cpu_temp_c", "value": 60.0},
            {"metric": "cpu_temp_c", "value": 70.0, "labels": {"core": "1"}},
            {"metric": "loop_latency_ms", "value": 3.5},
        ]),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["accepted"], 4);
    assert_eq!(
        post(&h, new, json!([{"metric": "cpu_temp_c", "value": 80.0}, {"metric": "cpu_temp_c", "value": 90.0}])).status,
        202
    );

    // Refused, each bad sample named, nothing of the batch kept.
    let r = post(
        &h,
        old,
        json!([
            {"metric": "cpu_temp_c", "value": 1000.0},
            {"metric": "cpu temp", "value": 1.0},
            {"metric": "cpu_temp_c", "value": 1.0, "ts": now + 3_600_000},
            {"metric": "cpu_temp_c", "value": 1.0, "labels": {"bad-label": "x"}},
        ]),
    );
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "samples[1].metric", "{}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("3 bad samples") && msg.contains("samples[2].ts") && msg.contains("samples[3].labels"),
        "{msg}"
    );
    for (body, field) in [
        (json!({"samples": []}), "samples"),
        (json!({"samples": [{"metric": "x", "value": "hot"}]}), "samples[0].value"),
        (json!({"samples": [{"metric": "x", "value": 1.0}], "extra": 1}), "extra"),
    ] {
        let r = h.post("/device/v1/telemetry", Some(old), Some(&body.to_string()));
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert!(
            r.body["error"]["field"].as_str().unwrap_or("").starts_with(field) || r.text.contains(field),
            "{body}: {}",
            r.text
        );
    }
    assert_eq!(h.post("/device/v1/telemetry", None, Some(r#"{"samples":[]}"#)).status, 401);
    assert_eq!(
        h.post("/device/v1/telemetry", Some(ADMIN), Some(r#"{"samples":[]}"#)).status,
        401,
        "an API token is not a device's"
    );

    // Over the rate: a full batch (the burst) then one more sample.
    let full: Vec<Value> = (0..10_000).map(|i| json!({"metric": "noise", "value": i as f64})).collect();
    assert_eq!(post(&h, busy, Value::Array(full)).status, 202);
    let r = post(&h, busy, json!([{"metric": "noise", "value": 1.0}]));
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry), "one sample at 5/s: {retry}");
    assert_eq!(post(&h, old, json!([{"metric": "other", "value": 1.0}])).status, 202, "other devices are not limited");

    // The query API, once flushed.
    let by_version = eventually(Duration::from_secs(10), || {
        let s = series(&query(&h, "metric=cpu_temp_c&agg=max&by=version&step=1h"), "version");
        (s.iter().map(|(_, p)| p.iter().map(|x| x.1).sum::<u64>()).sum::<u64>() == 5).then_some(s)
    });
    let get = |s: &[Series], g: &str| {
        let (_, points) = s.iter().find(|(k, _)| k == g).unwrap_or_else(|| panic!("no group {g} in {s:?}"));
        let samples: u64 = points.iter().map(|p| p.1).sum();
        let max = points.iter().filter_map(|p| p.0).fold(f64::MIN, f64::max);
        (max, samples)
    };
    assert_eq!(get(&by_version, "1.0.0"), (70.0, 3));
    assert_eq!(get(&by_version, "2.0.0"), (90.0, 2));
    // The fleet's median from merged sketches (within the sketch's 1 %).
    let fleet = series(&query(&h, "metric=cpu_temp_c&agg=p50&step=1h"), "");
    assert_eq!(fleet.len(), 1);
    let total: u64 = fleet[0].1.iter().map(|p| p.1).sum();
    assert_eq!(total, 5);
    if fleet[0].1.len() == 1 {
        let p50 = fleet[0].1[0].0.unwrap();
        assert!((p50 - 70.0).abs() <= 0.7 + 1e-9, "p50 {p50}");
        assert_eq!(fleet[0].1[0].2, 2, "two devices");
    }
    // By label, with a selector.
    let by_site = series(&query(&h, "metric=cpu_temp_c&agg=count&by=site&selector=site%20in%20(b,c)&step=1h"), "site");
    assert_eq!(by_site.len(), 1, "{by_site:?}");
    assert_eq!(by_site[0].0, "b");
    assert_eq!(series(&query(&h, "metric=nothing_here&step=1m"), "").len(), 0);
    let minutes = query(&h, "metric=cpu_temp_c&step=1m");
    assert_eq!(minutes.body["resolution_secs"], 60, "{}", minutes.text);

    // Bad queries name their parameter.
    for (q, field) in [
        ("metric=cpu%20temp", "metric"),
        ("metric=cpu_temp_c&agg=p101", "agg"),
        ("metric=cpu_temp_c&step=90s", "step"),
        ("metric=cpu_temp_c&step=1m&from=2020-01-01T00:00:00Z&to=2021-01-01T00:00:00Z", "step"),
        ("metric=cpu_temp_c&from=yesterday", "from"),
        ("metric=cpu_temp_c&by=no%20such", "by"),
        ("metric=cpu_temp_c&selector=site%20in", "selector"),
    ] {
        let r = query(&h, q);
        assert_eq!(r.status, 422, "{q}: {}", r.text);
        assert_eq!(r.body["error"]["field"], field, "{q}: {}", r.text);
    }
    let r = h.get("/api/v1/telemetry/query?metric=cpu_temp_c", None);
    assert_eq!(r.status, 401);
    // The CLI's table of the same, and its refusal.
    let (code, out, err) = cli(
        &server.url,
        Some(ADMIN),
        &["telemetry", "query", "cpu_temp_c", "--agg", "max", "--by", "version", "--step", "1h"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("GROUP"), "{out}");
    let line = out.lines().find(|l| l.contains("version=2.0.0")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(" 90"), "{line}");
    let (code, _, err) = cli(&server.url, Some(ADMIN), &["telemetry", "query", "cpu_temp_c", "--agg", "hottest"]);
    assert_ne!(code, 0);
    assert!(err.contains("agg"), "{err}");

    // Received but not yet flushed when SIGTERM comes: flushed on the way out.
    drop(h);
    assert!(server.terminate().success());
    let mut server = Server::start(db, &["--telemetry-flush", "1h", "--telemetry-hold", "1h"]);
    let h = Http::new(&server.url);
    assert_eq!(post(&h, old, json!([{"metric": "late_metric", "value": 42.0}])).status, 202);
    assert!(server.terminate().success());
    let server = Server::start(db, &[]);
    let h = Http::new(&server.url);
    let late = series(&query(&h, "metric=late_metric&agg=last&step=1h"), "");
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].1.last().unwrap().0, Some(42.0));
    // The counters.
    let m = h.get("/metrics", None).text;
    assert!(m.contains("otafleet_telemetry_samples_total"), "{m}");
}

#[test]
fn telemetry_is_ingested_refused_limited_and_queried_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    run(&sqlite_url(&dir));
}

#[test]
fn telemetry_is_ingested_refused_limited_and_queried_postgres() {
    if let Some(url) = postgres_url() {
        run(&url);
    }
}
