//! Several `otafleet serve` replicas on one PostgreSQL database: exactly one
//! drives rollouts (the holder of the `driver` lease); `kill -9` it in the
//! middle of a rollout and another takes over within two lease periods, and
//! the rollout still succeeds with no action released twice. A SIGTERM'd
//! leader releases the lease, so the next one takes over without waiting for
//! it to lapse. Runs only with `OTAFLEET_TEST_POSTGRES_URL`.

mod common;

use common::*;
use otafleet_agent::sim::{self, SimArgs};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const LEASE_SECS: u64 = 2;

fn start(db: &str, replica: &str) -> Server {
    Server::start(db, &["--lease-secs", &LEASE_SECS.to_string(), "--replica-id", replica, "--poll-interval-secs", "1"])
}

/// A value of `/metrics`, by the start of its line (`otafleet_leader{`), or
/// None when the replica does not answer.
fn metric(url: &str, prefix: &str) -> Option<i64> {
    let res =
        reqwest::blocking::Client::new().get(format!("{url}/metrics")).timeout(Duration::from_secs(2)).send().ok()?;
    let text = res.text().ok()?;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
}

fn is_leader(s: &Server) -> bool {
    metric(&s.url, "otafleet_leader{") == Some(1)
}

/// Which of the replicas say they lead, sampled `samples` times 100 ms apart:
/// always exactly one, always the same. Returns its index.
fn the_one_leader(replicas: &[&Server], samples: usize) -> usize {
    let first = eventually(Duration::from_secs(10), || {
        let leaders: Vec<usize> = (0..replicas.len()).filter(|&i| is_leader(replicas[i])).collect();
        (leaders.len() == 1).then(|| leaders[0])
    });
    for _ in 0..samples {
        let leaders: Vec<usize> = (0..replicas.len()).filter(|&i| is_leader(replicas[i])).collect();
        assert_eq!(leaders, vec![first], "exactly one leader, and it stays");
        std::thread::sleep(Duration::from_millis(100));
    }
    first
}

fn probes_answer(s: &Server) {
    let h = Http::new(&s.url);
    let alive = h.get("/healthz", None);
    assert_eq!(alive.status, 200, "{}", alive.text);
    let ready = h.get("/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["status"], "ready");
}

/// Polls the replica until it leads; the time it took.
fn time_to_lead(s: &Server, from: Instant, limit: Duration) -> Duration {
    loop {
        if is_leader(s) {
            return from.elapsed();
        }
        assert!(from.elapsed() < limit, "no takeover within {limit:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn one_replica_drives_and_another_takes_over_after_kill_9_without_releasing_anything_twice() {
    let Some(db) = postgres_url() else {
        eprintln!("SKIPPED replicas test: set OTAFLEET_TEST_POSTGRES_URL to run two replicas on one database");
        return;
    };
    let mut a = start(&db, "replica-a");
    let mut b = start(&db, "replica-b");
    let leader = the_one_leader(&[&a, &b], 20);
    probes_answer(&a);
    probes_answer(&b);
    // The follower serves the fleet and the API; the leader drives.
    let (leader, follower) = if leader == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = 30;
    let args = SimArgs { devices: n, latency: 60, poll_ms: 100, ..Default::default() };
    let fleet = rt.block_on(sim::spawn(&follower.url, Some(ADMIN), &args)).unwrap();
    let h = Http::new(&follower.url);
    assert_eq!(h.post("/api/v1/releases", Some(ADMIN), Some(r#"{"version":"2.0.0"}"#)).status, 201);
    let body = json!({"version": "2.0.0", "selector": "device_type=sim",
        "strategy": {"steps": [1, "25%", "100%"], "max_parallel": 3, "timeout_secs": 600}});
    let r = h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_i64().unwrap();
    // Pull the plug on the leader in the middle of a wave.
    eventually(Duration::from_secs(60), || {
        let r = h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body;
        (r["current_wave"].as_i64().unwrap_or(0) >= 1 && r["progress"][1]["succeeded"].as_i64().unwrap_or(0) >= 2)
            .then_some(())
    });
    let killed = Instant::now();
    leader.kill9();
    let lease = Duration::from_secs(LEASE_SECS);
    let took = time_to_lead(follower, killed, 2 * lease);
    eprintln!("takeover after kill -9 took {took:?} (lease {lease:?}, limit {:?})", 2 * lease);
    assert!(took < 2 * lease);
    assert_eq!(metric(&follower.url, "otafleet_leader_takeovers_total"), Some(1));
    probes_answer(follower);
    // The new leader finishes the rollout.
    let done = eventually(Duration::from_secs(120), || {
        let r = h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body;
        matches!(r["state"].as_str(), Some("succeeded" | "failed" | "rolled_back")).then_some(r)
    });
    let installs = fleet.stats.installs_ok.load(Ordering::Relaxed);
    rt.block_on(fleet.stop());
    assert_eq!(done["state"], "succeeded", "{done}");
    let actions: Vec<Value> = h.get(&format!("/api/v1/rollouts/{id}/actions?limit=1000"), Some(ADMIN)).body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(actions.len(), n);
    assert!(actions.iter().all(|a| a["state"] == "succeeded" && a["attempts"] == 1), "{actions:?}");
    assert_eq!(installs, n as u64, "every device installed exactly once");
    let released = h.get(&format!("/api/v1/events?rollout_id={id}&kind=rollout.released&limit=1000"), Some(ADMIN));
    let released: i64 = released.body["items"]
        .as_array()
        .map(|evs| evs.iter().map(|e| e["data"]["count"].as_i64().unwrap_or(0)).sum())
        .unwrap_or(0);
    assert_eq!(released, n as i64, "release events add up to one per device");

    // A graceful stop releases the lease: a fresh replica takes over in about
    // one renew interval, without waiting for the lease to lapse.
    let c = start(&db, "replica-c");
    assert_eq!(the_one_leader(&[follower, &c], 5), 0, "the leader keeps its lease");
    let stopped = Instant::now();
    assert!(follower.terminate().success());
    let took = time_to_lead(&c, stopped, 2 * lease);
    eprintln!("takeover after SIGTERM took {took:?} (lease {lease:?})");
    assert!(took < lease, "the lease was released, not left to lapse");
}
