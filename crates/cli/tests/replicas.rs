//! Several `otafleet serve` replicas on one PostgreSQL database: exactly one
//! drives rollouts (the holder of the `driver` lease). Three replicas, a fleet
//! spread over two of them: `kill -9` the leader in the middle of a rollout
//! and another takes over within two lease periods, and the rollout still
//! succeeds with no action released twice, every acknowledged report stored
//! and `max_parallel` never exceeded across the replicas. A SIGTERM'd
//! leader releases the lease, so the next one takes over without waiting for
//! it to lapse. What one replica changes reaches the others' caches (through
//! PostgreSQL `LISTEN/NOTIFY`): a token revoked or a device deleted through
//! one is refused by the other within a second, and a fleet whose requests
//! go to either replica at random completes with each action
//! released once and each report stored once. A leader paused (SIGSTOP) past
//! its lease is fenced: the same invariants hold.
//! Replicas whose `LISTEN` connections are cut reconnect, resync their caches
//! (`otafleet_cache_resyncs_total`) and are coherent again.
//! Runs only with `OTAFLEET_TEST_POSTGRES_URL`.

mod common;

use common::*;
use otafleet_agent::sim::{self, SimArgs};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const LEASE_SECS: u64 = 2;

/// The tests of this file run one at a time: each starts two or three
/// servers and a fleet, and their timing (leases of 2 s, takeovers) should
/// not depend on how many others share the two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// Creates release 2.0.0 and a rollout of it over the simulated fleet
/// (`device_type=sim`) through `h`, with `strategy`; returns the rollout's id.
fn create_rollout(h: &Http, strategy: Value) -> i64 {
    assert_eq!(h.post("/api/v1/releases", Some(ADMIN), Some(r#"{"version":"2.0.0"}"#)).status, 201);
    let body = json!({"version": "2.0.0", "selector": "device_type=sim", "strategy": strategy});
    let r = h.post("/api/v1/rollouts", Some(ADMIN), Some(&body.to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["id"].as_i64().unwrap()
}

/// Waits until wave 1 of rollout `id` is running with at least `succeeded` devices updated.
fn until_wave_1_has(h: &Http, id: i64, succeeded: i64) {
    eventually(Duration::from_secs(60), || {
        let r = h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body;
        (r["current_wave"].as_i64().unwrap_or(0) >= 1
            && r["progress"][1]["succeeded"].as_i64().unwrap_or(0) >= succeeded)
            .then_some(())
    });
}

/// Waits until rollout `id` has ended; returns its last answer.
fn until_ended(h: &Http, id: i64) -> Value {
    eventually(Duration::from_secs(120), || {
        let r = h.get(&format!("/api/v1/rollouts/{id}"), Some(ADMIN)).body;
        matches!(r["state"].as_str(), Some("succeeded" | "failed" | "rolled_back")).then_some(r)
    })
}

/// Three replicas on `db`, ready, and which one leads.
fn three(db: &str) -> (Vec<Server>, usize) {
    let servers: Vec<Server> = ["replica-a", "replica-b", "replica-c"].iter().map(|r| start(db, r)).collect();
    for s in &servers {
        eventually(Duration::from_secs(20), || (Http::new(&s.url).get("/readyz", None).status == 200).then_some(()));
        probes_answer(s);
    }
    let refs: Vec<&Server> = servers.iter().collect();
    let leader = the_one_leader(&refs, 5);
    (servers, leader)
}

/// Polls the replicas until one of them leads; which, and the time it took.
fn time_to_new_leader(replicas: &[&Server], from: Instant, limit: Duration) -> (usize, Duration) {
    loop {
        if let Some(i) = (0..replicas.len()).find(|&i| is_leader(replicas[i])) {
            return (i, from.elapsed());
        }
        assert!(from.elapsed() < limit, "no takeover within {limit:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The most install actions of rollout `id` ever in flight at once, from
/// its audit log: released counts (`rollout.released`) less the actions
/// that ended, in event order. A release follows the ends it counted on
/// (the driver reads them committed), so event order is a safe order here.
fn max_in_flight(h: &Http, id: i64) -> i64 {
    let events = h.get(&format!("/api/v1/events?rollout_id={id}&limit=10000"), Some(ADMIN)).body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (mut now, mut max) = (0i64, 0i64);
    for e in &events {
        match e["kind"].as_str().unwrap_or("") {
            "rollout.released" => now += e["data"]["count"].as_i64().unwrap_or(0),
            "action.succeeded" | "action.failed" | "action.skipped" => now -= 1,
            _ => {}
        }
        max = max.max(now);
    }
    max
}

/// The scenario of the two tests below: three replicas, a fleet spread over
/// the two that do not lead (each request to either at random, as behind a
/// load balancer), a rollout with `max_parallel` 3; `disturb` the leader in
/// wave 2; then the rollout completes, no action was released twice, every
/// report a device saw acknowledged is stored, and at most 3 were ever in
/// flight. Returns the replicas, the new leader and the takeover time.
fn three_replicas_through(db: &str, what: &str, disturb: impl FnOnce(&mut Server)) -> (Vec<Server>, usize, Duration) {
    let (mut servers, leader) = three(db);
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = 30;
    let args = SimArgs {
        devices: n,
        latency: 60,
        poll_ms: 100,
        also_via: vec![servers[followers[1]].url.clone()],
        ..Default::default()
    };
    let fleet = rt.block_on(sim::spawn(&servers[followers[0]].url, Some(ADMIN), &args)).unwrap();
    let h = Http::new(&servers[followers[0]].url);
    let id = create_rollout(&h, json!({"steps": [1, "25%", "100%"], "max_parallel": 3, "timeout_secs": 600}));
    until_wave_1_has(&h, id, 1);
    let at = Instant::now();
    disturb(&mut servers[leader]);
    let lease = Duration::from_secs(LEASE_SECS);
    let refs: Vec<&Server> = followers.iter().map(|&i| &servers[i]).collect();
    let (new, took) = time_to_new_leader(&refs, at, 2 * lease);
    let new = followers[new];
    eprintln!("three replicas: takeover after {what} took {took:?} (lease {lease:?}, limit {:?})", 2 * lease);
    let done = until_ended(&h, id);
    std::thread::sleep(Duration::from_millis(300));
    let installs = fleet.stats.installs_ok.load(Ordering::Relaxed);
    let reports = fleet.stats.reports.load(Ordering::Relaxed);
    rt.block_on(fleet.stop());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(installs, n as u64, "every device installed exactly once");
    assert_released_once_and_reports_stored_once(&h, id, n, reports);
    let most = max_in_flight(&h, id);
    eprintln!("three replicas ({what}): at most {most} actions in flight at once (max_parallel 3)");
    assert!((1..=3).contains(&most), "max_parallel held across replicas: {most}");
    assert_eq!(metric(&servers[new].url, "otafleet_leader_takeovers_total"), Some(1));
    (servers, new, took)
}

#[test]
fn three_replicas_a_leader_killed_9_mid_wave_is_replaced_and_nothing_is_released_twice() {
    let _one_at_a_time = serial();
    let Some(db) = postgres_url() else {
        eprintln!("SKIPPED replicas test: set OTAFLEET_TEST_POSTGRES_URL to run three replicas on one database");
        return;
    };
    let (mut servers, leader, _) = three_replicas_through(&db, "kill -9", |s| s.kill9());
    // A graceful stop releases the lease: another replica takes over in about
    // one renew interval, without waiting for the lease to lapse.
    let stopped = Instant::now();
    assert!(servers[leader].terminate().success());
    let alive: Vec<usize> = (0..3).filter(|&i| i != leader && servers[i].child.try_wait().unwrap().is_none()).collect();
    let rest: Vec<&Server> = alive.iter().map(|&i| &servers[i]).collect();
    let lease = Duration::from_secs(LEASE_SECS);
    let (_, took) = time_to_new_leader(&rest, stopped, 2 * lease);
    eprintln!("takeover after SIGTERM took {took:?} (lease {lease:?})");
    assert!(took < lease, "the lease was released, not left to lapse");
}

fn both_ready(a: &Server, b: &Server) {
    eventually(Duration::from_secs(20), || {
        let ok = |s: &Server| Http::new(&s.url).get("/readyz", None).status == 200;
        (ok(a) && ok(b)).then_some(())
    });
}

/// Polls `refused` every 5 ms until it holds; how long that took.
fn time_until(what: &str, limit: Duration, mut refused: impl FnMut() -> bool) -> Duration {
    let from = Instant::now();
    loop {
        if refused() {
            return from.elapsed();
        }
        assert!(from.elapsed() < limit, "{what}: still accepted after {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn checkin(h: &Http, token: &str) -> u16 {
    h.post("/device/v1/checkin", Some(token), Some(r#"{"current_version":"1.0.0"}"#)).status
}

#[test]
fn a_token_revoked_or_a_device_deleted_through_one_replica_is_refused_by_the_other_within_a_second() {
    let _one_at_a_time = serial();
    let Some(db) = postgres_url() else {
        eprintln!("SKIPPED replicas cache coherence test: set OTAFLEET_TEST_POSTGRES_URL to run it");
        return;
    };
    let (a, b) = (start(&db, "replica-a"), start(&db, "replica-b"));
    both_ready(&a, &b);
    let (ha, hb) = (Http::new(&a.url), Http::new(&b.url));
    let second = Duration::from_secs(1);

    // An API token created through A, used (and cached) on B, revoked through A.
    let r = ha.post("/api/v1/tokens", Some(ADMIN), Some(r#"{"name":"ci","role":"viewer"}"#));
    assert_eq!(r.status, 201, "{}", r.text);
    let (secret, id) = (r.body["token"].as_str().unwrap().to_string(), r.body["id"].as_i64().unwrap());
    for _ in 0..3 {
        assert_eq!(hb.get("/api/v1/devices", Some(&secret)).status, 200);
    }
    let r = ha.post(&format!("/api/v1/tokens/{id}/revoke"), Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let took = time_until("revoked token on B", 5 * second, || hb.get("/api/v1/devices", Some(&secret)).status == 401);
    eprintln!("a token revoked through replica A got 401 from replica B after {took:?}");
    assert!(took < second, "{took:?}");
    assert_eq!(ha.get("/api/v1/devices", Some(&secret)).status, 401);

    // Two devices registered through A check in on B (their tokens and versions cached there).
    let body = json!({"devices": [
        {"name": "gone", "current_version": "1.0.0"},
        {"name": "rotated", "current_version": "1.0.0"}]});
    let r = ha.post("/api/v1/devices/bulk", Some(ADMIN), Some(&body.to_string()));
    assert_eq!(r.status, 201, "{}", r.text);
    let dev = |i: usize| {
        let d = &r.body["devices"][i];
        (d["id"].as_str().unwrap().to_string(), d["token"].as_str().unwrap().to_string())
    };
    let ((gone, gone_token), (rotated, old_token)) = (dev(0), dev(1));
    for _ in 0..3 {
        assert_eq!(checkin(&hb, &gone_token), 200);
        assert_eq!(checkin(&hb, &old_token), 200);
    }
    // Deleted through A: B refuses its token.
    assert_eq!(ha.req("DELETE", &format!("/api/v1/devices/{gone}"), Some(ADMIN), None).status, 204);
    let took = time_until("deleted device on B", 5 * second, || checkin(&hb, &gone_token) == 401);
    eprintln!("a device deleted through replica A got 401 from replica B after {took:?}");
    assert!(took < second, "{took:?}");
    // Its token rotated through A: B refuses the old token and takes the new one.
    let r = ha.post(&format!("/api/v1/devices/{rotated}/token"), Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let new_token = r.body["token"].as_str().unwrap().to_string();
    let took = time_until("rotated device token on B", 5 * second, || checkin(&hb, &old_token) == 401);
    eprintln!("a device token rotated through replica A got 401 from replica B after {took:?}");
    assert!(took < second, "{took:?}");
    assert_eq!(checkin(&hb, &new_token), 200);
}

/// Every action of the rollout succeeded on its first attempt, the release
/// events add up to one per device, and each action's four transitions are
/// stored once each: as many as the fleet had acknowledged.
fn assert_released_once_and_reports_stored_once(h: &Http, id: i64, n: usize, acknowledged: u64) {
    let actions: Vec<Value> = h.get(&format!("/api/v1/rollouts/{id}/actions?limit=1000"), Some(ADMIN)).body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(actions.len(), n);
    assert!(actions.iter().all(|a| a["state"] == "succeeded" && a["attempts"] == 1), "{actions:?}");
    let events: Vec<Value> = h.get(&format!("/api/v1/events?rollout_id={id}&limit=10000"), Some(ADMIN)).body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let released: i64 = events
        .iter()
        .filter(|e| e["kind"] == "rollout.released")
        .map(|e| e["data"]["count"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(released, n as i64, "release events add up to one per device");
    let mut per_action: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
    for e in &events {
        if let (Some(a), Some(kind)) = (e["action_id"].as_i64(), e["kind"].as_str()) {
            per_action.entry(a).or_default().push(kind.to_string());
        }
    }
    assert_eq!(per_action.len(), n);
    let steps = ["action.downloading", "action.installing", "action.verifying", "action.succeeded"];
    for (a, kinds) in &per_action {
        for step in steps {
            assert_eq!(kinds.iter().filter(|k| *k == step).count(), 1, "action {a}: {kinds:?}");
        }
        assert!(!kinds.iter().any(|k| k == "action.report_ignored"), "action {a}: {kinds:?}");
    }
    let stored: usize = per_action.values().map(|k| k.iter().filter(|k| steps.contains(&k.as_str())).count()).sum();
    assert_eq!(stored as u64, acknowledged, "every acknowledged report stored once");
    eprintln!("{n} actions released once each; {stored} reports acknowledged and stored");
}

#[test]
fn a_fleet_switching_replicas_at_random_completes_with_each_action_released_once_and_every_report_stored() {
    let _one_at_a_time = serial();
    let Some(db) = postgres_url() else {
        eprintln!("SKIPPED replicas fleet test: set OTAFLEET_TEST_POSTGRES_URL to run it");
        return;
    };
    let (a, b) = (start(&db, "replica-a"), start(&db, "replica-b"));
    both_ready(&a, &b);
    the_one_leader(&[&a, &b], 3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = 40;
    // Each request of a device goes to either replica at random, as behind a
    // load balancer: it checks in on one and reports on either.
    let args = SimArgs { devices: n, latency: 30, poll_ms: 100, also_via: vec![b.url.clone()], ..Default::default() };
    let fleet = rt.block_on(sim::spawn(&a.url, Some(ADMIN), &args)).unwrap();
    let h = Http::new(&b.url);
    let id = create_rollout(&h, json!({"steps": [1, "25%", "100%"], "timeout_secs": 600}));
    let done = until_ended(&h, id);
    // Let the devices check in a few more times: a stale cache would hand a
    // finished action out again, and the device would install it twice.
    std::thread::sleep(Duration::from_millis(500));
    let installs = fleet.stats.installs_ok.load(Ordering::Relaxed);
    let reports = fleet.stats.reports.load(Ordering::Relaxed);
    rt.block_on(fleet.stop());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(installs, n as u64, "every device installed exactly once");
    assert_released_once_and_reports_stored_once(&h, id, n, reports);
}

fn signal(s: &Server, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &s.child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig}");
}

#[test]
fn three_replicas_a_leader_paused_past_its_lease_is_fenced_and_nothing_is_released_twice() {
    let _one_at_a_time = serial();
    let Some(db) = postgres_url() else {
        eprintln!("SKIPPED replicas SIGSTOP test: set OTAFLEET_TEST_POSTGRES_URL to run it");
        return;
    };
    // Frozen past its lease, then woken while the rollout goes on: it still
    // believes it leads until its own clock says otherwise, and the fence
    // refuses whatever it tries meanwhile.
    let (servers, new, _) = three_replicas_through(&db, "SIGSTOP", |s| {
        signal(s, "-STOP");
        let woke = s.child.id();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(LEASE_SECS * 2 + 1));
            let _ = std::process::Command::new("kill").args(["-CONT", &woke.to_string()]).status();
        });
    });
    std::thread::sleep(Duration::from_secs(LEASE_SECS * 2 + 2));
    let refs: Vec<&Server> = servers.iter().collect();
    assert_eq!(the_one_leader(&refs, 5), new, "the new leader stays after the old one wakes");
}

#[test]
fn replicas_whose_notification_connections_were_cut_resync_and_stay_coherent() {
    let _one_at_a_time = serial();
    let Some(db) = postgres_url() else {
        eprintln!("SKIPPED replicas resync test: set OTAFLEET_TEST_POSTGRES_URL to run it");
        return;
    };
    let (a, b) = (start(&db, "replica-a"), start(&db, "replica-b"));
    both_ready(&a, &b);
    let resyncs = |s: &Server| metric(&s.url, "otafleet_cache_resyncs_total").unwrap_or(0);
    assert_eq!((resyncs(&a), resyncs(&b)), (0, 0));
    // Cut every replica's LISTEN connection from the database side.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cut = rt.block_on(async {
        let s = otafleet_store::Store::connect(&db).await.unwrap();
        let r = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        )
        .fetch_all(s.pool())
        .await
        .unwrap();
        s.close().await;
        r.len()
    });
    assert_eq!(cut, 2, "one listener per replica");
    let took = Instant::now();
    eventually(Duration::from_secs(20), || (resyncs(&a) >= 1 && resyncs(&b) >= 1).then_some(()));
    eprintln!("both replicas listening again and resynced {:?} after the cut", took.elapsed());
    // And coherent again: a revocation through A reaches B within a second.
    let (ha, hb) = (Http::new(&a.url), Http::new(&b.url));
    let r = ha.post("/api/v1/tokens", Some(ADMIN), Some(r#"{"name":"after-cut","role":"viewer"}"#));
    assert_eq!(r.status, 201, "{}", r.text);
    let (secret, id) = (r.body["token"].as_str().unwrap().to_string(), r.body["id"].as_i64().unwrap());
    assert_eq!(hb.get("/api/v1/devices", Some(&secret)).status, 200);
    assert_eq!(ha.post(&format!("/api/v1/tokens/{id}/revoke"), Some(ADMIN), None).status, 200);
    let took = time_until("revoked token on B after a resync", Duration::from_secs(5), || {
        hb.get("/api/v1/devices", Some(&secret)).status == 401
    });
    eprintln!("after the resync, a token revoked through A got 401 from B after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}
