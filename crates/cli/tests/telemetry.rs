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

/// A device's side of MQTT telemetry: publishes on its topic, reads the
/// server's answers on every ack topic.
struct MqttDevice {
    client: rumqttc::Client,
    acks: std::sync::mpsc::Receiver<(String, Value)>,
}

impl MqttDevice {
    fn connect(url: &str) -> MqttDevice {
        let rest = url.strip_prefix("mqtt://").expect("an mqtt:// URL");
        let (host, port) = rest.trim_end_matches('/').split_once(':').unwrap_or((rest, "1883"));
        let id = format!("otafleet-test-{}", uuid::Uuid::new_v4());
        let mut opts = rumqttc::MqttOptions::new(id, host, port.parse().unwrap());
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = rumqttc::Client::new(opts, 64);
        client.subscribe("otafleet/+/telemetry/ack", rumqttc::QoS::AtLeastOnce).unwrap();
        let (tx, acks) = std::sync::mpsc::channel();
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if tx.send((p.topic.clone(), v)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("test MQTT connection: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        });
        subscribed.recv_timeout(Duration::from_secs(10)).expect("subscribed to the ack topics");
        MqttDevice { client, acks }
    }

    /// Publishes `payload` on `device`'s telemetry topic and waits for the answer on its ack topic.
    fn send(&self, device: &str, payload: &[u8]) -> Value {
        self.try_send(device, payload, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("no answer on otafleet/{device}/telemetry/ack"))
    }

    fn try_send(&self, device: &str, payload: &[u8], wait: Duration) -> Option<Value> {
        let topic = format!("otafleet/{device}/telemetry");
        self.client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec()).unwrap();
        let ack_topic = format!("otafleet/{device}/telemetry/ack");
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.acks.recv_timeout(left) {
                Ok((t, v)) if t == ack_topic => return Some(v),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

fn mqtt_url() -> Option<String> {
    let url = std::env::var("OTAFLEET_TEST_MQTT_URL").ok().filter(|s| !s.is_empty());
    if url.is_none() {
        eprintln!("SKIPPED MQTT telemetry test: set OTAFLEET_TEST_MQTT_URL (e.g. mqtt://127.0.0.1:1883) to run it");
    }
    url
}

/// Over MQTT a batch is taken exactly as over HTTP: the token proves the
/// device, a device writes only its own series, bad samples are refused each
/// by name, and the answer arrives on the device's ack topic; a simulated
/// fleet sending over MQTT is measured like one sending over HTTP.
#[test]
fn telemetry_over_mqtt_is_taken_like_http() {
    let Some(mqtt) = mqtt_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &sqlite_url(&dir),
        &["--mqtt-url", &mqtt, "--telemetry-flush", "100ms", "--telemetry-hold", "200ms", "--telemetry-rate", "5"],
    );
    let h = Http::new(&server.url);
    let devs = register(
        &h,
        json!([
            {"name": "m-1", "labels": {"site": "mqtt"}, "current_version": "1.0.0"},
            {"name": "m-2", "labels": {"site": "mqtt"}, "current_version": "1.0.0"},
        ]),
    );
    let ((a, a_token), (b, _)) = (&devs[0], &devs[1]);
    let dev = MqttDevice::connect(&mqtt);
    // The server subscribes once it is connected: the first answer (to a
    // message that changes nothing) says it has.
    let probe = json!({"token": "dev_probe", "samples": [{"metric": "probe", "value": 1}]}).to_string();
    let mut probes = 0;
    eventually(Duration::from_secs(30), || {
        probes += 1;
        dev.try_send(a, probe.as_bytes(), Duration::from_millis(500))
    });
    let now = otafleet_store::now_ms();
    let good = json!({"token": a_token, "samples": [
        {"metric": "cpu_temp_c", "value": 61.0, "ts": now},
        {"metric": "cpu_temp_c", "value": 63.0, "ts": now, "labels": {"core": "1"}},
    ]});
    assert_eq!(dev.send(a, good.to_string().as_bytes()), json!({"accepted": 2}));

    // Another device's topic with this token: refused, nothing stored for either.
    let ack = dev.send(b, good.to_string().as_bytes());
    assert_eq!(ack["error"]["code"], "unauthorized", "{ack}");
    let ack = dev.send(a, json!({"token": "dev_not-a-token", "samples": good["samples"]}).to_string().as_bytes());
    assert_eq!(ack["error"]["message"], "unknown device token", "{ack}");
    // Bad samples, named one by one; malformed JSON; an unknown field.
    let bad = json!({"token": a_token, "samples": [
        {"metric": "9bad", "value": 1.0},
        {"metric": "ok", "value": 1.0, "ts": now + 3_600_000},
    ]});
    let ack = dev.send(a, bad.to_string().as_bytes());
    assert_eq!(ack["error"]["field"], "samples[0].metric", "{ack}");
    let msg = ack["error"]["message"].as_str().unwrap();
    assert!(msg.contains("2 bad samples") && msg.contains("samples[1].ts"), "{msg}");
    let ack = dev.send(a, b"{\"token\": ");
    assert_eq!(ack["error"]["code"], "bad_request", "{ack}");
    let ack = dev.send(a, json!({"token": a_token, "samples": [], "extra": 1}).to_string().as_bytes());
    assert!(ack["error"]["message"].as_str().unwrap().contains("unknown field `extra`"), "{ack}");
    // Over the rate: nearly the whole burst (10,000 samples, less the two
    // taken: a 400 kB message), then a hundred more get 429's message, with
    // when to retry.
    let burst: Vec<Value> = (0..9_990).map(|i| json!({"metric": "burst", "value": i})).collect();
    let ack = dev.send(a, json!({"token": a_token, "samples": burst}).to_string().as_bytes());
    assert_eq!(ack, json!({"accepted": 9_990}));
    let more: Vec<Value> = (0..100).map(|i| json!({"metric": "burst", "value": i})).collect();
    let ack = dev.send(a, json!({"token": a_token, "samples": more}).to_string().as_bytes());
    assert_eq!(ack["error"]["code"], "rate_limited", "{ack}");
    assert!(ack["error"]["message"].as_str().unwrap().contains("retry after"), "{ack}");

    // What was taken is what the query API answers.
    let r = eventually(Duration::from_secs(15), || {
        let r = query(&h, "metric=cpu_temp_c&agg=max&step=1h&by=device");
        (series(&r, "device").iter().map(|s| s.1.iter().map(|p| p.1).sum::<u64>()).sum::<u64>() == 2).then_some(r)
    });
    let s = series(&r, "device");
    assert_eq!(s.len(), 1, "only the device whose token it was: {s:?}");
    assert_eq!(s[0].0, *a);
    assert_eq!(s[0].1[0].0, Some(63.0));
    let m = h.get("/metrics", None).text;
    // Probes answered late are counted too, so at most one per probe sent.
    let unauthorized =
        (2..=probes + 2).map(|n| format!("otafleet_telemetry_mqtt_messages_total{{outcome=\"unauthorized\"}} {n}\n"));
    assert!(unauthorized.clone().any(|l| m.contains(&l)), "2 + ≤{probes} unauthorized in\n{m}");
    for (outcome, n) in [("accepted", 2), ("refused", 4)] {
        let line = format!("otafleet_telemetry_mqtt_messages_total{{outcome=\"{outcome}\"}} {n}");
        assert!(m.contains(&line), "{line} in\n{m}");
    }

    // A simulated fleet sending over MQTT.
    let out = std::process::Command::new(bin())
        .args(["sim", "--devices", "5", "--poll-ms", "500", "--labels", "site=sim-mqtt", "--duration", "4"])
        .args(["--metric", "loop_latency_ms=const(12)", "--metric-interval-ms", "300", "--telemetry-mqtt", &mqtt])
        .env("OTAFLEET_URL", &server.url)
        .env("OTAFLEET_TOKEN", ADMIN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let r = eventually(Duration::from_secs(15), || {
        let r = query(&h, "metric=loop_latency_ms&agg=avg&step=1h&selector=site%3Dsim-mqtt");
        let s = series(&r, "");
        (s.len() == 1 && s[0].1.iter().map(|p| p.2).max() == Some(5)).then_some(s)
    });
    assert_eq!(r[0].1[0].0, Some(12.0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("samples 0 "), "the sim counted the server's acks: {stdout}");
}
