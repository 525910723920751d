//! `otafleet bench`: the performance figures, measured as ratios in one run so
//! they mean the same on any machine.
//!
//! - `plan`: wave planning for N devices (time, peak memory).
//! - `http`: requests/s of `GET /ota/jobs` (1,000 jobs stored), `POST
//!   /api/v1/devices` and `POST /device/v1/checkin`, each against a bare axum
//!   handler served the same way, with the same load generator, in the same run.
//! - `rollout`: a simulated fleet against a separate `otafleet serve` process:
//!   wall time of a canary → 10% → 100% rollout; then, with the fleet stopped,
//!   saturated check-ins/s of the fleet's devices (every request a different
//!   device) against a bare axum handler in a separate process of its own.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use otafleet_agent::sim::{self, SimArgs};
use otafleet_api as api;
use otafleet_core::plan::{plan, Candidate};
use otafleet_core::{RolloutState, Step, StrategySpec};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCmd {
    /// Plan waves (1, 10%, 100%) for N devices.
    Plan {
        #[arg(long, default_value_t = 1_000_000)]
        devices: usize,
    },
    /// HTTP throughput of key endpoints as ratios to a bare axum handler.
    Http {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Jobs stored before measuring GET /ota/jobs.
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
    },
    /// A canary → 10% → 100% rollout over a simulated fleet against `otafleet serve`.
    Rollout {
        #[arg(long, default_value_t = 100_000)]
        devices: usize,
        /// Milliseconds between idle check-ins of each simulated device.
        #[arg(long, default_value_t = 10_000)]
        poll_ms: u64,
        /// HTTP connections the simulated fleet shares (a real fleet has one per device).
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
        /// Database of the server (default: a temporary SQLite file).
        #[arg(long)]
        database_url: Option<String>,
        /// Seconds per check-in throughput measurement after the rollout.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent keep-alive connections for the throughput measurement.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Server replicas on the one database (PostgreSQL only); the fleet's requests go to any of them.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// With replicas: each device keeps to one of them (as behind a load balancer that keeps
        /// its connection) instead of each request going to one at random.
        #[arg(long)]
        sticky: bool,
    },
    /// The dashboard under load: the `rollout` benchmark run twice, without and then with CLIENTS
    /// dashboards open on the rollout page (each: the event stream in summary mode and a re-render of
    /// the page's live part at most every 500 ms, as the page's script does); check-ins/s served as a
    /// ratio; then server render times (p50/p99) of the rollout page, its live part, the fleet and
    /// devices pages.
    Dashboard {
        #[arg(long, default_value_t = 100_000)]
        devices: usize,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 10_000)]
        poll_ms: u64,
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
        /// Sequential requests per page for the render times.
        #[arg(long, default_value_t = 100)]
        renders: usize,
    },
    /// A large registry: bulk-registers DEVICES (5,000 per request) on a fresh server, then times a
    /// selector page, a rollout over a selector matching MATCHING of them, and the server's memory.
    Fleet {
        #[arg(long, default_value_t = 1_000_000)]
        devices: usize,
        /// Devices the rollout's selector matches (`group=g0`).
        #[arg(long, default_value_t = 100_000)]
        matching: usize,
        /// Bulk requests in flight at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Database of the server (default: a temporary SQLite file).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Telemetry ingest: batches of BATCH samples (5 metrics) from DEVICES devices posted by
    /// CONCURRENCY connections for SECONDS, against a bare axum handler taking the same bytes.
    Telemetry {
        #[arg(long, default_value_t = 1_000)]
        devices: usize,
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Paced instead of saturated: each device posts its batch every INTERVAL seconds (e.g.
        /// `--devices 100000 --batch 5 --interval-secs 10 --seconds 150`), to size the writes.
        #[arg(long)]
        interval_secs: Option<u64>,
        /// Database of the server (default: a temporary SQLite file).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// The alert evaluator: DEVICES devices with a minute of telemetry windows for each of RULES metrics
    /// (1% of them hot), RULES per-device rules (one per metric, the worst case: no shared read); times
    /// the first evaluation (alerts become pending) and the next ones (nothing changes).
    Alerts {
        #[arg(long, default_value_t = 100_000)]
        devices: usize,
        #[arg(long, default_value_t = 5)]
        rules: usize,
        /// Evaluations timed after the first.
        #[arg(long, default_value_t = 3)]
        cycles: usize,
        /// Database (default: a temporary SQLite file).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// A bare axum server (the yardstick `rollout` starts as a separate process).
    #[command(hide = true)]
    Bare {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// One rollout over pods in two clusters and Akri boards in one, through
    /// two cluster agents, against in-process fake Kubernetes API servers
    /// (only in a binary built with `--features fake-k8s`).
    Cluster {
        /// Pods, split between the two clusters.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// Akri boards, in the first cluster.
        #[arg(long, default_value_t = 1000)]
        boards: usize,
        /// The cluster agents' poll interval, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
        /// Flash pods per FlashJob at once.
        #[arg(long, default_value_t = 20)]
        max_flash_pods: usize,
    },
    /// The FlashJob operator against the in-process fake Kubernetes API server
    /// (only in a binary built with `--features fake-k8s`).
    Flashjob {
        /// UUIDs in the FlashJob.
        #[arg(long, default_value_t = 1000)]
        uuids: usize,
        /// Flash pods per job at once.
        #[arg(long, default_value_t = 20)]
        max_flash_pods: usize,
    },
}

/// Peak and current resident memory of this process, in KiB (Linux).
fn mem_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmHWM:"), get("VmRSS:"))
}

fn bench_plan(n: usize) -> Result<()> {
    let strategy =
        serde_json::from_value::<StrategySpec>(json!({"steps": [1, "10%", "100%"], "seed": 7}))?.resolve(0)?;
    let (_, rss0) = mem_kib();
    let t0 = Instant::now();
    let candidates: Vec<Candidate> = (0..n as u128)
        .map(|i| Candidate {
            id: uuid::Uuid::from_u128(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i),
            online: i % 10 != 0,
            healthy: i % 50 != 0,
        })
        .collect();
    let t1 = Instant::now();
    let p = plan(candidates, &strategy);
    let t2 = Instant::now();
    let (peak, _) = mem_kib();
    let sizes: Vec<usize> = p.waves.iter().map(Vec::len).collect();
    println!("plan: {n} devices into waves {sizes:?}");
    println!("  planning time      {:>10.1} ms", (t2 - t1).as_secs_f64() * 1e3);
    println!("  (building input    {:>10.1} ms)", (t1 - t0).as_secs_f64() * 1e3);
    println!(
        "  peak memory growth {:>10.1} MiB (peak RSS {:.1} MiB)",
        (peak.saturating_sub(rss0)) as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}

/// One load measurement: `concurrency` loops sending the request for `seconds`.
async fn load<F>(label: &str, seconds: u64, concurrency: usize, make: F) -> Result<f64>
where
    F: Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let make = Arc::new(make);
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..concurrency {
        let (client, make, ok, bad, counter) = (client.clone(), make.clone(), ok.clone(), bad.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                match make(&client, i).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = ok.load(Ordering::Relaxed) as f64 / secs;
    let errors = bad.load(Ordering::Relaxed);
    println!(
        "  {label:<34} {rate:>10.0} req/s{}",
        if errors > 0 { format!("  ({errors} errors)") } else { String::new() }
    );
    if ok.load(Ordering::Relaxed) == 0 {
        bail!("{label}: no request succeeded");
    }
    Ok(rate)
}

/// The yardstick: a bare axum router answering small JSON documents.
fn bare_router(big: axum::body::Bytes) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/bare", get(|| async { axum::Json(json!({"ok": true})) }))
        .route(
            "/bare",
            post(|body: axum::body::Bytes| async move { axum::Json(json!({"ok": true, "len": body.len()})) }),
        )
        .route(
            "/bare/big",
            get(move || async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], big.clone()) }),
        )
}

/// A bare axum server in this process.
async fn bare_server(big: axum::body::Bytes) -> Result<String> {
    let app = bare_router(big);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/bare"))
}

async fn bench_http(seconds: u64, concurrency: usize, jobs: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let admin = otafleet_server::new_secret("ota");
    let server = otafleet_server::start(otafleet_server::Config {
        listen: "127.0.0.1:0".parse()?,
        database_url: format!("sqlite://{}", dir.path().join("bench.db").display()),
        admin_token: Some(admin.clone()),
        ..Default::default()
    })
    .await?;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    for i in 0..jobs {
        let r = http
            .post(format!("{base}/ota/deploy"))
            .bearer_auth(&admin)
            .query(&[("version", format!("1.0.{i}")), ("wave", "canary".into())])
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("creating job {i}: {}", r.status());
        }
    }
    // One idle device for the check-in measurement.
    let dev: api::RegisteredDevice = http
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(&admin)
        .json(&api::RegisterDevice { current_version: Some("1.0.0".into()), ..Default::default() })
        .send()
        .await?
        .json()
        .await
        .context("device registration answer")?;
    let dev_token = dev.token;
    let jobs_body = http.get(format!("{base}/ota/jobs")).bearer_auth(&admin).send().await?.bytes().await?;
    let bare = bare_server(jobs_body.clone()).await?;
    println!("http: {concurrency} connections, {seconds} s each, server on SQLite with {jobs} jobs stored");
    let b1 = load("bare axum GET (JSON)", seconds, concurrency, {
        let u = bare.clone();
        move |c, _| c.get(&u)
    })
    .await?;
    let jobs_rate = load("GET /ota/jobs (1,000 jobs)", seconds, concurrency, {
        let (u, t) = (format!("{base}/ota/jobs"), admin.clone());
        move |c, _| c.get(&u).bearer_auth(&t)
    })
    .await?;
    let b_big = load(&format!("bare axum GET ({} KiB from memory)", jobs_body.len() / 1024), seconds, concurrency, {
        let u = format!("{bare}/big");
        move |c, _| c.get(&u)
    })
    .await?;
    let b2 = load("bare axum POST (JSON)", seconds, concurrency, {
        let u = bare.clone();
        move |c, i| c.post(&u).json(&json!({"name": format!("d{i}")}))
    })
    .await?;
    let reg_rate = load("POST /api/v1/devices", seconds, concurrency, {
        let (u, t) = (format!("{base}/api/v1/devices"), admin.clone());
        move |c, i| {
            let body = api::RegisterDevice {
                name: Some(format!("bench-{i}")),
                labels: [("device_type".to_string(), "bench".to_string())].into(),
                ..Default::default()
            };
            c.post(&u).bearer_auth(&t).json(&body)
        }
    })
    .await?;
    let chk_rate = load("POST /device/v1/checkin (idle)", seconds, concurrency, {
        let (u, t) = (format!("{base}/device/v1/checkin"), dev_token.clone());
        move |c, _| c.post(&u).bearer_auth(&t).json(&json!({"current_version": "1.0.0", "health": "healthy"}))
    })
    .await?;
    println!("ratios to the bare handler:");
    println!(
        "  GET /ota/jobs          {:.3}  ({:.3} against the same body served from memory)",
        jobs_rate / b1,
        jobs_rate / b_big
    );
    println!("  POST /api/v1/devices   {:.3}", reg_rate / b2);
    println!("  POST /device/v1/checkin {:.3}", chk_rate / b2);
    server.shutdown().await?;
    Ok(())
}

/// Starts this binary as a child process with `args`, and waits until it answers HTTP on `port`.
async fn child(args: &[&str], port: u16, env: &[(&str, &str)]) -> Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(args).stdout(std::process::Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting otafleet {}", args.join(" ")))?;
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("http://127.0.0.1:{port}/")).send().await.is_ok() {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            bail!("otafleet {} exited early: {status}", args.join(" "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("otafleet {} did not answer on port {port}", args.join(" "))
}

/// CPU seconds (user + system) a process has used so far, from `/proc` (Linux;
/// `None` elsewhere). `/proc` counts in USER_HZ, 100 per second on Linux.
fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
}

/// A load measurement against a child process, with the CPU time the child
/// spent per request (microseconds), when it can be read.
async fn load_child<F>(
    label: &str,
    seconds: u64,
    concurrency: usize,
    pid: Option<u32>,
    make: F,
) -> Result<(f64, Option<f64>)>
where
    F: Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let c0 = cpu_secs(pid);
    let rate = load(label, seconds, concurrency, make).await?;
    let per_req = match (c0, cpu_secs(pid)) {
        (Some(a), Some(b)) => Some((b - a) / (rate * seconds as f64) * 1e6),
        _ => None,
    };
    if let Some(us) = per_req {
        println!("  {:<34} {us:>10.1} µs of server CPU per request", "");
    }
    Ok((rate, per_req))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A server child process on a fresh database (a temporary SQLite file unless `database_url`).
async fn bench_server(dir: &tempfile::TempDir, database_url: Option<&str>, poll_ms: u64) -> Result<BenchServer> {
    let db = database_url
        .map(str::to_string)
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    bench_replica(&db, &otafleet_server::new_secret("ota"), poll_ms, "bench-1").await
}

/// A server child process on `db` with the admin token `admin` (replicas of
/// one database must share it: a different one would revoke it).
async fn bench_replica(db: &str, admin: &str, poll_ms: u64, replica: &str) -> Result<BenchServer> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let poll = (poll_ms / 1000).max(1).to_string();
    // The servers log warnings only, unless OTAFLEET_BENCH_SERVER_LOG says otherwise (e.g. `info`:
    // the time each rollout creation spent resolving, planning and storing).
    let log = std::env::var("OTAFLEET_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into());
    let child = child(
        &["serve", "--listen", &listen, "--database-url", db, "--poll-interval-secs", &poll, "--replica-id", replica],
        port,
        &[("OTAFLEET_ADMIN_TOKEN", admin), ("OTAFLEET_LOG", &log)],
    )
    .await?;
    Ok(BenchServer { child, base: format!("http://127.0.0.1:{port}"), admin: admin.to_string() })
}

struct BenchServer {
    child: tokio::process::Child,
    base: String,
    admin: String,
}

/// How `bench rollout` spreads the fleet over server replicas.
struct Spread {
    replicas: usize,
    /// Each device keeps to one replica.
    sticky: bool,
}

/// What one rollout over the simulated fleet came to.
struct RolloutRun {
    id: i64,
    state: String,
    wall: f64,
    checkins_per_s: f64,
}

/// The benchmark fleet: `devices` simulated devices reporting final states only.
async fn bench_fleet(
    s: &BenchServer,
    devices: usize,
    poll_ms: u64,
    max_connections: usize,
    also_via: Vec<String>,
    sticky: bool,
) -> Result<sim::SimFleet> {
    let t_reg = Instant::now();
    let args = SimArgs {
        also_via,
        sticky,
        devices,
        latency: 50,
        poll_ms,
        final_only: true,
        max_connections,
        labels: "device_type=bench".into(),
        ..Default::default()
    };
    let fleet = sim::spawn(&s.base, Some(&s.admin), &args).await?;
    println!(
        "  {devices} simulated devices (final-state reports only) registered in {:.1} s",
        t_reg.elapsed().as_secs_f64()
    );
    Ok(fleet)
}

/// Creates release 2.0.0 and a canary → 10% → 100% rollout over the fleet,
/// calls `created` with its id, and waits for it to end, printing progress.
async fn run_rollout(s: &BenchServer, fleet: &sim::SimFleet, created: impl FnOnce(i64)) -> Result<RolloutRun> {
    let (base, admin) = (&s.base, &s.admin);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/v1/releases"))
        .bearer_auth(admin)
        .json(&api::CreateRelease { version: "2.0.0".into(), ..Default::default() })
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("creating the release: {}", r.status());
    }
    let t0 = Instant::now();
    let checkins0 = fleet.stats.checkins.load(Ordering::Relaxed);
    let body = api::CreateRollout {
        version: Some("2.0.0".into()),
        selector: Some("device_type=bench".into()),
        strategy: Some(StrategySpec {
            steps: Some(vec![Step::Count(1), Step::Percent(10.0), Step::Percent(100.0)]),
            success_threshold: Some(0.99),
            failure_threshold: Some(0.01),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r: api::Rollout = http
        .post(format!("{base}/api/v1/rollouts"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await?
        .json()
        .await
        .context("rollout creation answer")?;
    let id = r.id;
    println!("  rollout {id} created in {:.1} s", t0.elapsed().as_secs_f64());
    created(id);
    let mut last_wave = -1;
    let mut last_print = Instant::now();
    let state = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r: api::Rollout = http
            .get(format!("{base}/api/v1/rollouts/{id}"))
            .bearer_auth(admin)
            .send()
            .await?
            .json()
            .await
            .context("rollout answer")?;
        let wave = r.current_wave;
        if wave != last_wave {
            println!("  wave {wave} started at {:>6.1} s", t0.elapsed().as_secs_f64());
            last_wave = wave;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            if let Some(w) = r.progress.as_ref().and_then(|p| p.get(wave.max(0) as usize)) {
                println!(
                    "    {:>6.1} s: wave {wave}: {} succeeded, {} in flight, {} scheduled, {} failed",
                    t0.elapsed().as_secs_f64(),
                    w.succeeded,
                    w.in_flight,
                    w.scheduled,
                    w.failed
                );
            }
        }
        if !matches!(r.state, RolloutState::Pending | RolloutState::Running) {
            break r.state.as_str().to_string();
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            break "timeout".into();
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let checkins = fleet.stats.checkins.load(Ordering::Relaxed) - checkins0;
    let checkins_per_s = checkins as f64 / wall;
    println!("  rollout {state} in {wall:.1} s ({checkins_per_s:.0} check-ins/s served meanwhile)");
    println!("  fleet: {}", fleet.stats.line());
    Ok(RolloutRun { id, state, wall, checkins_per_s })
}

async fn bench_rollout(
    devices: usize,
    poll_ms: u64,
    max_connections: usize,
    database_url: Option<String>,
    seconds: u64,
    concurrency: usize,
    Spread { replicas, sticky }: Spread,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let s = bench_server(&dir, database_url.as_deref(), poll_ms).await?;
    let base = s.base.clone();
    let mut others = Vec::new();
    if replicas > 1 {
        let db = match &database_url {
            Some(u) if u.starts_with("postgres") => u.clone(),
            _ => bail!("--replicas above 1 needs --database-url postgres://… (replicas share one PostgreSQL database)"),
        };
        for i in 2..=replicas {
            others.push(bench_replica(&db, &s.admin, poll_ms, &format!("bench-{i}")).await?);
        }
    }
    match sticky {
        true => println!("rollout: {replicas} replica(s), each device keeping to one of them"),
        false => println!("rollout: {replicas} replica(s), each device's requests spread over them at random"),
    }
    let via = others.iter().map(|o| o.base.clone()).collect();
    let fleet = bench_fleet(&s, devices, poll_ms, max_connections, via, sticky).await?;
    let run = run_rollout(&s, &fleet, |_| {}).await?;
    let (id, state) = (run.id, run.state);
    let mut server = s.child;
    // Sticky: the saturated check-ins go to the first replica from its own devices.
    let tokens: Vec<String> = match sticky {
        true => fleet.device_tokens.iter().step_by(replicas.max(1)).cloned().collect(),
        false => fleet.device_tokens.clone(),
    };
    let tokens = Arc::new(tokens);
    fleet.stop().await;
    if state != "succeeded" {
        bail!("rollout {id} ended {state}");
    }

    // Saturated check-ins, each request from the next device of the fleet,
    // against a bare axum POST handler in a separate process of the same binary.
    let bare_port = free_port()?;
    let mut bare = child(&["bench", "bare", "--listen", &format!("127.0.0.1:{bare_port}")], bare_port, &[]).await?;
    println!("check-ins: {concurrency} connections, {seconds} s each, {} devices in turn", tokens.len());
    let (b, b_cpu) = load_child("bare axum POST (separate process)", seconds, concurrency, bare.id(), {
        let u = format!("http://127.0.0.1:{bare_port}/bare");
        move |c, i| c.post(&u).json(&json!({"current_version": "2.0.0", "health": "healthy", "i": i}))
    })
    .await?;
    let _ = bare.kill().await;
    let (chk, chk_cpu) =
        load_child("POST /device/v1/checkin", seconds, concurrency, server.id(), checkins(&base, &tokens)).await?;
    println!("  ratio check-ins / bare axum: {:.3} in req/s", chk / b);
    if let (Some(b), Some(c)) = (b_cpu, chk_cpu) {
        // The load generator shares the machine: CPU per request is the fairer measure.
        println!("                               {:.3} in requests per server CPU second", b / c);
    }
    if replicas > 1 && !sticky {
        // Most devices' last report landed on another replica, so the first
        // check-in of each here reads the registry: the figures above are a
        // cold cache's. Once every device has checked in here, again.
        let t = Instant::now();
        checkin_each(&format!("{base}/device/v1/checkin"), &tokens, concurrency).await?;
        println!("  every device checked in once more ({:.1} s); again, the caches warm:", t.elapsed().as_secs_f64());
        let (warm, warm_cpu) =
            load_child("POST /device/v1/checkin", seconds, concurrency, server.id(), checkins(&base, &tokens)).await?;
        println!("  ratio check-ins / bare axum: {:.3} in req/s", warm / b);
        if let (Some(b), Some(c)) = (b_cpu, warm_cpu) {
            println!("                               {:.3} in requests per server CPU second", b / c);
        }
    }
    let _ = server.kill().await;
    Ok(())
}

/// Check-ins for a saturated load: request `i` from device `i` mod the fleet.
fn checkins(base: &str, tokens: &Arc<Vec<String>>) -> impl Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder {
    let (u, tokens) = (format!("{base}/device/v1/checkin"), tokens.clone());
    move |c, i| {
        c.post(&u)
            .bearer_auth(&tokens[i as usize % tokens.len()])
            .json(&json!({"current_version": "2.0.0", "health": "healthy"}))
    }
}

/// One check-in from each device, `concurrency` at a time.
async fn checkin_each(url: &str, tokens: &Arc<Vec<String>>, concurrency: usize) -> Result<()> {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, next, tokens, url) = (http.clone(), next.clone(), tokens.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(token) = tokens.get(i) else { return Ok::<(), anyhow::Error>(()) };
                let body = json!({"current_version": "2.0.0", "health": "healthy"});
                let r = http.post(&url).bearer_auth(token).json(&body).send().await?;
                if !r.status().is_success() {
                    bail!("check-in of device {i}: {}", r.status());
                }
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Resident memory of a process, KiB (Linux).
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

async fn bench_registry(
    devices: usize,
    matching: usize,
    concurrency: usize,
    database_url: Option<String>,
) -> Result<()> {
    if matching == 0 || matching > devices {
        bail!("--matching must be between 1 and --devices");
    }
    let dir = tempfile::tempdir()?;
    let s = bench_server(&dir, database_url.as_deref(), 30_000).await?;
    let pid = s.child.id();
    let http = reqwest::Client::new();
    let rss0 = rss_kib(pid);
    // Every `groups`-th device is in group g0: `matching` of them.
    let groups = (devices / matching).max(1);
    // Within the server's default 1 MiB body limit.
    let batch = 5_000;
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, next, base, admin) = (http.clone(), next.clone(), s.base.clone(), s.admin.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(batch as u64, Ordering::Relaxed) as usize;
                if from >= devices {
                    return Ok::<(), anyhow::Error>(());
                }
                let body = api::BulkRegister {
                    devices: (from..(from + batch).min(devices))
                        .map(|i| api::RegisterDevice {
                            name: Some(format!("dev-{i}")),
                            labels: [
                                ("device_type".to_string(), "bench".to_string()),
                                ("group".to_string(), format!("g{}", i % groups)),
                                // Independent of the group: each group spans every site.
                                ("site".to_string(), format!("site-{}", (i / groups) % 50)),
                            ]
                            .into(),
                            current_version: Some("1.0.0".into()),
                            ..Default::default()
                        })
                        .collect(),
                };
                let r = http.post(format!("{base}/api/v1/devices/bulk")).bearer_auth(&admin).json(&body).send().await?;
                if !r.status().is_success() {
                    bail!("bulk registration at {from}: {} {}", r.status(), r.text().await.unwrap_or_default());
                }
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let reg = t0.elapsed().as_secs_f64();
    println!("fleet: {devices} devices bulk-registered in {reg:.1} s: {:.0} devices/s", devices as f64 / reg);
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let (Some(a), Some(b)) = (rss0, rss_kib(pid)) {
        println!(
            "  server RSS {:.1} MiB → {:.1} MiB: {:.0} B per registered device",
            a as f64 / 1024.0,
            b as f64 / 1024.0,
            (b.saturating_sub(a) * 1024) as f64 / devices as f64
        );
    }
    if let Some(url) = database_url.as_deref().filter(|u| u.starts_with("postgres")) {
        // As autovacuum would have after a million inserts (it may be off, as
        // on the development machine): the planner needs the tables' statistics.
        let t = Instant::now();
        let store = otafleet_store::Store::connect(url).await?;
        store.analyze().await?;
        store.close().await;
        println!("  ANALYZE (PostgreSQL) in {:.1} s", t.elapsed().as_secs_f64());
    }
    // A selector page, as the devices page or a script asks for it.
    let mut ms = Vec::new();
    for i in 0..100 {
        let t = Instant::now();
        let r = http
            .get(format!("{}/api/v1/devices", s.base))
            .bearer_auth(&s.admin)
            .query(&[
                ("selector", format!("group=g{},site in (site-1,site-2,site-3)", i % groups)),
                ("limit", "50".into()),
            ])
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("selector page: {}", r.status());
        }
        let _ = r.bytes().await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    println!("  selector page (group=gN,site in (…), 50 devices): p50 {:.1} ms, p99 {:.1} ms", ms[49], ms[98]);
    let r = http
        .post(format!("{}/api/v1/releases", s.base))
        .bearer_auth(&s.admin)
        .json(&api::CreateRelease { version: "2.0.0".into(), ..Default::default() })
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("creating the release: {}", r.status());
    }
    let t = Instant::now();
    let body = api::CreateRollout {
        version: Some("2.0.0".into()),
        selector: Some("group=g0".into()),
        strategy: Some(StrategySpec {
            steps: Some(vec![Step::Count(1), Step::Percent(10.0), Step::Percent(100.0)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = http.post(format!("{}/api/v1/rollouts", s.base)).bearer_auth(&s.admin).json(&body).send().await?;
    let took = t.elapsed().as_secs_f64();
    if !r.status().is_success() {
        bail!("creating the rollout: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    let r: api::Rollout = r.json().await?;
    let planned: i64 = r.progress.iter().flatten().map(|w| w.total).sum();
    println!("  rollout over group=g0 ({planned} of {devices} devices) created in {:.2} s", took);
    if let (Some(a), Some(b)) = (rss0, rss_kib(pid)) {
        println!(
            "  server RSS after the rollout: {:.1} MiB ({:.0} B per device above the start)",
            b as f64 / 1024.0,
            (b.saturating_sub(a) * 1024) as f64 / devices as f64
        );
    }
    Ok(())
}

/// A counter's value on a server's `/metrics`.
async fn scrape_counter(http: &reqwest::Client, base: &str, name: &str) -> Result<f64> {
    let text = http.get(format!("{base}/metrics")).send().await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

async fn bench_telemetry(
    devices: usize,
    batch: usize,
    seconds: u64,
    concurrency: usize,
    interval_secs: Option<u64>,
    database_url: Option<String>,
) -> Result<()> {
    if devices == 0 || !(1..=otafleet_core::telemetry::MAX_BATCH).contains(&batch) {
        bail!("--devices must be at least 1 and --batch between 1 and {}", otafleet_core::telemetry::MAX_BATCH);
    }
    let dir = tempfile::tempdir()?;
    let db = database_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let admin = otafleet_server::new_secret("ota");
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let log = std::env::var("OTAFLEET_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into());
    // No rate limit in the way: the benchmark measures the ingest path.
    let mut server = child(
        &["serve", "--listen", &listen, "--database-url", &db, "--replica-id", "bench-1"],
        port,
        &[("OTAFLEET_ADMIN_TOKEN", &admin), ("OTAFLEET_LOG", &log), ("OTAFLEET_TELEMETRY_RATE", "1000000000")],
    )
    .await?;
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let mut tokens = Vec::with_capacity(devices);
    for from in (0..devices).step_by(5_000) {
        let body = api::BulkRegister {
            devices: (from..(from + 5_000).min(devices))
                .map(|i| api::RegisterDevice {
                    name: Some(format!("dev-{i}")),
                    current_version: Some(if i % 2 == 0 { "1.0.0" } else { "2.0.0" }.into()),
                    ..Default::default()
                })
                .collect(),
        };
        let r = http.post(format!("{base}/api/v1/devices/bulk")).bearer_auth(&admin).json(&body).send().await?;
        if !r.status().is_success() {
            bail!("registering the devices: {}", r.status());
        }
        let got: api::BulkRegistered = r.json().await?;
        tokens.extend(got.devices.into_iter().map(|d| d.token));
    }
    // One body per device, built before the clock starts. No timestamps: the
    // server's clock stamps each sample when it comes, as for a device
    // without a clock (fixed ones would all fall in the first minute and be
    // late samples of a closed window from then on).
    let metrics = ["cpu_temp_c", "loop_latency_ms", "battery_v", "sensor_hz", "mem_used_bytes"];
    let bodies: Vec<axum::body::Bytes> = (0..devices)
        .map(|d| {
            let samples: Vec<serde_json::Value> = (0..batch)
                .map(|i| json!({"metric": metrics[i % metrics.len()], "value": 40.0 + ((d * 7 + i) % 400) as f64 / 10.0}))
                .collect();
            axum::body::Bytes::from(json!({ "samples": samples }).to_string())
        })
        .collect();
    let bytes = bodies.iter().map(|b| b.len()).sum::<usize>() / bodies.len();
    println!(
        "telemetry: {devices} devices, batches of {batch} samples ({bytes} bytes), {concurrency} connections, {seconds} s"
    );
    let tokens = Arc::new(tokens);
    let bodies = Arc::new(bodies);
    if let Some(interval) = interval_secs {
        return paced_telemetry(server, &base, tokens, bodies, batch, seconds, concurrency, interval).await;
    }
    let bare_port = free_port()?;
    let mut bare = child(&["bench", "bare", "--listen", &format!("127.0.0.1:{bare_port}")], bare_port, &[]).await?;
    let (b, _) = load_child("bare axum POST, same bytes", seconds, concurrency, bare.id(), {
        let (u, bodies) = (format!("http://127.0.0.1:{bare_port}/bare"), bodies.clone());
        move |c, i| {
            c.post(&u).header("content-type", "application/json").body(bodies[i as usize % bodies.len()].clone())
        }
    })
    .await?;
    let _ = bare.kill().await;
    let (r, cpu) = load_child("POST /device/v1/telemetry", seconds, concurrency, server.id(), {
        let (u, bodies, tokens) = (format!("{base}/device/v1/telemetry"), bodies.clone(), tokens.clone());
        move |c, i| {
            let d = i as usize % bodies.len();
            c.post(&u).bearer_auth(&tokens[d]).header("content-type", "application/json").body(bodies[d].clone())
        }
    })
    .await?;
    let accepted = scrape_counter(&http, &base, "otafleet_telemetry_samples_total").await?;
    println!(
        "  samples ingested and aggregated: {:.0}/s ({} in all); {:.3} of the bare handler's requests/s",
        r * batch as f64,
        accepted,
        r / b
    );
    if let Some(us) = cpu {
        println!("  server CPU per sample: {:.2} µs", us / batch as f64);
    }
    // (The windows are written once closed: `--interval-secs` measures the rows written.)
    if let Some(kib) = rss_kib(server.id()) {
        println!("  server RSS {:.1} MiB", kib as f64 / 1024.0);
    }
    let _ = server.kill().await;
    Ok(())
}

/// Every device posts its batch once per `interval` for `seconds`, spread
/// evenly; then the window rows written per second and the server's memory.
#[allow(clippy::too_many_arguments)]
async fn paced_telemetry(
    mut server: tokio::process::Child,
    base: &str,
    tokens: Arc<Vec<String>>,
    bodies: Arc<Vec<axum::body::Bytes>>,
    batch: usize,
    seconds: u64,
    concurrency: usize,
    interval: u64,
) -> Result<()> {
    let devices = tokens.len();
    let interval = Duration::from_secs(interval.max(1));
    let total = (seconds as f64 / interval.as_secs_f64() * devices as f64) as u64;
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let rss0 = rss_kib(server.id());
    let cpu0 = cpu_secs(server.id());
    let t0 = tokio::time::Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let (late, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, next, tokens, bodies) = (http.clone(), next.clone(), tokens.clone(), bodies.clone());
        let (late, failed, url) = (late.clone(), failed.clone(), format!("{base}/device/v1/telemetry"));
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                let (round, d) = (n / devices as u64, (n % devices as u64) as usize);
                let at = t0 + interval * round as u32 + interval.mul_f64(d as f64 / devices as f64);
                if tokio::time::Instant::now() > at + Duration::from_secs(1) {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep_until(at).await;
                let ok = http
                    .post(&url)
                    .bearer_auth(&tokens[d])
                    .header("content-type", "application/json")
                    .body(bodies[d].clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Rows written from the first minute's end on (before it, nothing has closed).
    let warm = Duration::from_secs(75).min(Duration::from_secs(seconds) / 2);
    tokio::time::sleep(warm).await;
    let t_rows = tokio::time::Instant::now();
    let rows0 = scrape_counter(&http, base, "otafleet_telemetry_window_rows_written_total").await?;
    for t in tasks {
        let _ = t.await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let rows = scrape_counter(&http, base, "otafleet_telemetry_window_rows_written_total").await? - rows0;
    let rows_secs = t_rows.elapsed().as_secs_f64();
    println!(
        "  {} batches ({} samples) in {wall:.1} s: {:.0} samples/s, {} started over a second late, {} failed",
        total,
        total * batch as u64,
        (total * batch as u64) as f64 / wall,
        late.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    println!("  window rows written: {rows:.0} in the last {rows_secs:.1} s: {:.0} rows/s", rows / rows_secs);
    if let (Some(a), Some(b)) = (cpu0, cpu_secs(server.id())) {
        println!("  server CPU: {:.2} of a core", (b - a) / wall);
    }
    if let (Some(a), Some(b)) = (rss0, rss_kib(server.id())) {
        println!(
            "  server RSS {:.1} → {:.1} MiB: {:.0} B per device with telemetry flowing",
            a as f64 / 1024.0,
            b as f64 / 1024.0,
            (b.saturating_sub(a) * 1024) as f64 / devices as f64
        );
    }
    let _ = server.kill().await;
    Ok(())
}

/// What the simulated dashboards did.
#[derive(Default)]
struct DashStats {
    messages: AtomicU64,
    renders: AtomicU64,
    errors: AtomicU64,
}

/// One dashboard on rollout `id`, as the page behaves: loads the page, opens
/// the event stream in summary mode, re-renders the live part at most every
/// 500 ms after a message; until `stop`.
async fn dashboard(
    base: String,
    token: String,
    id: i64,
    stats: Arc<DashStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures::StreamExt;
    // A browser tab: its own connections.
    let http = reqwest::Client::new();
    let cookie = format!("{}={token}", otafleet_server::ui::SESSION);
    let get = |path: String| http.get(format!("{base}{path}")).header("cookie", cookie.clone()).send();
    match get(format!("/ui/rollouts/{id}")).await {
        Ok(r) if r.status().is_success() => {
            let _ = r.bytes().await;
        }
        _ => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut last_render = Instant::now() - Duration::from_secs(1);
    let mut seen = 0i64;
    'reconnect: while !*stop.borrow() {
        let res = http
            .get(format!("{base}/api/v1/events/stream?summary=true&rollout_id={id}"))
            .header("cookie", cookie.clone())
            .send()
            .await;
        let Ok(res) = res.and_then(|r| r.error_for_status()) else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut body = res.bytes_stream();
        let mut pending = false;
        loop {
            let wait = Duration::from_millis(500).saturating_sub(last_render.elapsed());
            tokio::select! {
                chunk = body.next() => match chunk {
                    Some(Ok(c)) => {
                        for l in c.split(|b| *b == b'\n') {
                            if let Some(id) = l.strip_prefix(b"id:").and_then(|v| std::str::from_utf8(v).ok()) {
                                seen = id.trim().parse().unwrap_or(seen);
                            }
                        }
                        let n = c.split(|b| *b == b'\n').filter(|l| l.starts_with(b"data:")).count() as u64;
                        if n > 0 {
                            stats.messages.fetch_add(n, Ordering::Relaxed);
                            pending = true;
                        }
                        continue;
                    }
                    _ => continue 'reconnect,
                },
                _ = tokio::time::sleep(wait), if pending => {}
                _ = stop.changed() => return,
            }
            pending = false;
            last_render = Instant::now();
            match get(format!("/ui/rollouts/{id}/live?seen={seen}")).await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    stats.renders.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Sequential GETs of `path` with the session cookie, `gap` apart: (p50, p99, max) in ms.
async fn render_times(base: &str, token: &str, path: &str, n: usize, gap: Duration) -> Result<(f64, f64, f64, usize)> {
    let http = reqwest::Client::new();
    let cookie = format!("{}={token}", otafleet_server::ui::SESSION);
    let mut ms = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(format!("{base}{path}")).header("cookie", cookie.clone()).send().await?;
        if !r.status().is_success() {
            bail!("GET {path}: {}", r.status());
        }
        size = r.bytes().await?.len();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(gap).await;
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    Ok((at(0.50), at(0.99), *ms.last().unwrap_or(&0.0), size))
}

async fn bench_dashboard(
    devices: usize,
    clients: usize,
    poll_ms: u64,
    max_connections: usize,
    renders: usize,
) -> Result<()> {
    println!("dashboard: the rollout benchmark without dashboards");
    let dir = tempfile::tempdir()?;
    let s = bench_server(&dir, None, poll_ms).await?;
    let fleet = bench_fleet(&s, devices, poll_ms, max_connections, Vec::new(), false).await?;
    let without = run_rollout(&s, &fleet, |_| {}).await?;
    fleet.stop().await;
    drop(s);
    if without.state != "succeeded" {
        bail!("rollout {} ended {}", without.id, without.state);
    }

    println!("dashboard: the same with {clients} dashboards on the rollout page");
    let dir = tempfile::tempdir()?;
    let s = bench_server(&dir, None, poll_ms).await?;
    let fleet = bench_fleet(&s, devices, poll_ms, max_connections, Vec::new(), false).await?;
    let stats = Arc::new(DashStats::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tabs = Vec::new();
    let with = run_rollout(&s, &fleet, |id| {
        for _ in 0..clients {
            tabs.push(tokio::spawn(dashboard(s.base.clone(), s.admin.clone(), id, stats.clone(), stopped.clone())));
        }
    })
    .await?;
    let _ = stop.send(true);
    for t in tabs {
        let _ = t.await;
    }
    fleet.stop().await;
    if with.state != "succeeded" {
        bail!("rollout {} ended {}", with.id, with.state);
    }
    println!(
        "  dashboards: {} stream messages, {} live re-renders ({:.1}/s), {} errors",
        stats.messages.load(Ordering::Relaxed),
        stats.renders.load(Ordering::Relaxed),
        stats.renders.load(Ordering::Relaxed) as f64 / with.wall,
        stats.errors.load(Ordering::Relaxed)
    );
    println!(
        "  ratio with / without dashboards: {:.3} in check-ins/s served, {:.3} in rollout wall time",
        with.checkins_per_s / without.checkins_per_s,
        with.wall / without.wall
    );

    println!(
        "render times, {renders} sequential requests each, fleet stopped ({devices} devices, rollout {} done):",
        with.id
    );
    // The rollout page's live data is shared for 500 ms (`ui::rollouts::LiveCache`):
    // spaced 510 ms apart, every request reads it afresh; back to back, what most dashboards get.
    let spaced = Duration::from_millis(510);
    for (label, path, gap) in [
        ("rollout page (fresh read)", format!("/ui/rollouts/{}", with.id), spaced),
        ("rollout live part (fresh read)", format!("/ui/rollouts/{}/live", with.id), spaced),
        ("rollout page (shared read)", format!("/ui/rollouts/{}", with.id), Duration::ZERO),
        ("rollout live part (shared read)", format!("/ui/rollouts/{}/live", with.id), Duration::ZERO),
        ("fleet page", "/ui/".to_string(), Duration::ZERO),
        ("devices page", "/ui/devices".to_string(), Duration::ZERO),
        ("devices, sorted by last seen", "/ui/devices?sort=-last_seen".to_string(), Duration::ZERO),
    ] {
        let (p50, p99, max, size) = render_times(&s.base, &s.admin, &path, renders, gap).await?;
        println!("  {label:<32} p50 {p50:>7.1} ms  p99 {p99:>7.1} ms  max {max:>7.1} ms  ({} KiB)", size / 1024);
    }
    Ok(())
}

pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Plan { devices } => bench_plan(devices),
        BenchCmd::Http { seconds, concurrency, jobs } => bench_http(seconds, concurrency, jobs).await,
        BenchCmd::Rollout {
            devices,
            poll_ms,
            max_connections,
            database_url,
            seconds,
            concurrency,
            replicas,
            sticky,
        } => {
            let spread = Spread { replicas, sticky };
            bench_rollout(devices, poll_ms, max_connections, database_url, seconds, concurrency, spread).await
        }
        BenchCmd::Dashboard { devices, clients, poll_ms, max_connections, renders } => {
            bench_dashboard(devices, clients, poll_ms, max_connections, renders).await
        }
        BenchCmd::Fleet { devices, matching, concurrency, database_url } => {
            bench_registry(devices, matching, concurrency, database_url).await
        }
        BenchCmd::Telemetry { devices, batch, seconds, concurrency, interval_secs, database_url } => {
            bench_telemetry(devices, batch, seconds, concurrency, interval_secs, database_url).await
        }
        BenchCmd::Alerts { devices, rules, cycles, database_url } => {
            bench_alerts(devices, rules, cycles, database_url).await
        }
        BenchCmd::Bare { listen } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            axum::serve(listener, bare_router(axum::body::Bytes::from_static(b"{}"))).await?;
            Ok(())
        }
        BenchCmd::Flashjob { uuids, max_flash_pods } => bench_flashjob(uuids, max_flash_pods).await,
        BenchCmd::Cluster { pods, boards, poll_ms, max_flash_pods } => {
            bench_cluster(pods, boards, poll_ms, max_flash_pods).await
        }
    }
}

async fn bench_alerts(devices: usize, rules: usize, cycles: usize, database_url: Option<String>) -> Result<()> {
    use otafleet_core::alert::AlertRule;
    use otafleet_core::telemetry::{Aggregate, Resolution};
    use otafleet_store::{NewAlertRule, NewDevice, TelemetryWindow};
    if devices == 0 || rules == 0 {
        bail!("--devices and --rules must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let db = database_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let store = otafleet_store::Store::connect(&db).await?;
    let t = std::time::Instant::now();
    let ids: Vec<uuid::Uuid> = (0..devices).map(|_| uuid::Uuid::now_v7()).collect();
    for chunk in ids.chunks(5_000) {
        let batch: Vec<NewDevice> = chunk
            .iter()
            .map(|id| NewDevice {
                id: *id,
                name: format!("d-{id}"),
                labels: [("device_type".to_string(), "robot".to_string())].into(),
                current_version: Some("1.0.0".into()),
                token: None,
            })
            .collect();
        store.insert_devices(&batch, "bench").await?;
    }
    // A minute's window per device and metric (the default finest resolution), just closed.
    let width = Resolution { width_ms: 60_000, retention_ms: 7 * 86_400_000 };
    let now = otafleet_store::now_ms();
    let bucket = width.bucket_start(now) - width.width_ms;
    let metrics: Vec<String> = (0..rules).map(|i| format!("metric_{i}")).collect();
    let mut windows = Vec::with_capacity(10_000);
    let mut written = 0usize;
    for (n, id) in ids.iter().enumerate() {
        for m in &metrics {
            let mut agg = Aggregate::new();
            let hot = n % 100 == 0;
            for k in 0..6 {
                agg.add(if hot { 90.0 } else { 55.0 + k as f64 }, bucket + k * 10_000);
            }
            windows.push(TelemetryWindow {
                device_id: *id,
                metric: m.clone(),
                version: "1.0.0".into(),
                width_ms: width.width_ms,
                bucket,
                agg,
            });
            if windows.len() == 10_000 {
                written += store.merge_telemetry(&windows).await?;
                windows.clear();
            }
        }
    }
    written += store.merge_telemetry(&windows).await?;
    if store.backend() == otafleet_store::Backend::Postgres {
        // As autovacuum would have (it may be off, as on the development machine).
        store.analyze().await?;
    }
    println!(
        "alerts: {devices} devices, {rules} rules on {rules} metrics, {written} windows seeded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for m in &metrics {
        let rule: AlertRule = serde_json::from_value(serde_json::json!({
            "metric": m, "agg": "max", "window_secs": 60, "op": ">", "threshold": 80, "for_secs": 60,
            "severity": "critical"}))?;
        store
            .create_alert_rule(&NewAlertRule {
                name: m,
                selector: "device_type=robot",
                rule: &rule,
                created_by: "bench",
            })
            .await?;
    }
    let fence = store.take_lease(otafleet_store::DRIVER_LEASE, "bench", Duration::from_secs(3600), now).await?;
    let state = otafleet_server::AppState::new(store, otafleet_server::Config::default());
    let mut times = Vec::new();
    for i in 0..=cycles {
        let start = std::time::Instant::now();
        let c = otafleet_server::service::alerts::evaluate(&state, &fence, now + 1_000 * i as i64).await?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "  evaluation {i}: {:.3} s, {} windows read, {} alerts, {} changes ({} firing)",
            secs, c.windows, c.alerts, c.changes, c.firing
        );
        times.push(secs);
    }
    let steady = &times[1..];
    let mean = if steady.is_empty() { times[0] } else { steady.iter().sum::<f64>() / steady.len() as f64 };
    let (peak, _) = mem_kib();
    println!(
        "alerts: first evaluation {:.3} s (with {} transitions), then {:.3} s a cycle for {devices} devices × {rules} rules \
         (goal < 1 s); {:.2} µs per device and rule; peak RSS {} MiB",
        times[0],
        devices / 100 * rules,
        mean,
        mean * 1e6 / (devices * rules) as f64,
        peak / 1024
    );
    Ok(())
}

#[cfg(feature = "fake-k8s")]
async fn bench_flashjob(uuids: usize, max_flash_pods: usize) -> Result<()> {
    let r = otafleet_k8s::bench::bench_flashjob(uuids, max_flash_pods).await?;
    println!("{r}");
    Ok(())
}

#[cfg(feature = "fake-k8s")]
async fn bench_cluster(pods: usize, boards: usize, poll_ms: u64, max_flash_pods: usize) -> Result<()> {
    use otafleet_k8s::cluster::{ClusterAgent, ClusterArgs};
    use otafleet_k8s::fake::{fixtures, FakeApiServer};
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir()?;
    let server = bench_server(&dir, None, 10_000).await?;
    let http = reqwest::Client::new();
    let admin = server.admin.clone();
    let post = |path: &str, body: serde_json::Value| {
        let (http, url, admin) = (http.clone(), format!("{}{path}", server.base), admin.clone());
        async move {
            let r = http.post(url).bearer_auth(admin).json(&body).send().await?;
            let status = r.status();
            let v: serde_json::Value = r.json().await?;
            anyhow::ensure!(status.is_success(), "{status}: {v}");
            anyhow::Ok(v)
        }
    };
    let clusters = [FakeApiServer::start().await?, FakeApiServer::start().await?];
    clusters[0].set_pod_phase_on_create(Some("Succeeded"));
    for i in 0..pods {
        let pod = fixtures::running_pod(
            "robots",
            &format!("robot-{i}"),
            &[("app", "robot"), ("sw_version", "1.0.0")],
            "robot:1.0.0",
        );
        clusters[i % 2].insert(&pod)?;
    }
    for n in 0..boards {
        let mut b =
            fixtures::akri_instance("robots", &format!("esp32-{n}"), &fixtures::device_uuid(n), "esp32", "thermo");
        b.metadata.labels = Some([("sw_version".to_string(), "1.0.0".to_string())].into());
        clusters[0].insert(&b)?;
    }
    let mut agents = Vec::new();
    let mut sent = Vec::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let controller = otafleet_k8s::fake::fixtures::RunningOperator::start(
        clusters[0].client().await?,
        otafleet_k8s::controller::Settings { max_flash_pods, ..fixtures::fast_settings() },
    );
    for (name, fake) in ["a", "b"].iter().zip(&clusters) {
        let d = post("/api/v1/delegates", serde_json::json!({"name": name, "kind": "cluster"})).await?;
        let args = ClusterArgs {
            server: Some(server.base.clone()),
            token: d["token"].as_str().map(str::to_string),
            cluster: Some(name.to_string()),
            workloads: vec![otafleet_k8s::cluster::parse_watch("pod:app=robot").map_err(|e| anyhow::anyhow!(e))?],
            boards: *name == "a",
            poll_interval: Duration::from_millis(poll_ms),
            rollout_timeout: Duration::from_secs(60),
            ..ClusterArgs::default()
        };
        let agent = ClusterAgent::new(fake.client().await?, args, None)?;
        sent.push(agent.requests_sent());
        let mut stop = stop_rx.clone();
        agents.push(tokio::spawn(agent.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    let targets = pods + boards;
    let registered = Instant::now();
    loop {
        let url = format!("{}/api/v1/delegates", server.base);
        let page: serde_json::Value = http.get(url).bearer_auth(&admin).send().await?.json().await?;
        let total: u64 = page["items"].as_array().into_iter().flatten().filter_map(|d| d["devices"].as_u64()).sum();
        if total as usize >= targets {
            break;
        }
        anyhow::ensure!(
            registered.elapsed() < Duration::from_secs(120),
            "the agents did not register {targets} devices"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{targets} targets registered by two cluster agents in {:.2?}", registered.elapsed());
    let k8s_before: usize = clusters.iter().map(|c| c.requests().iter().filter(|r| !r.watch).count()).sum();
    let plane_before: u64 = sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    post(
        "/api/v1/releases",
        serde_json::json!({"version": "2.0.0", "image": "robot:2.0.0",
        "firmware": "fw/esp32:2.0.0", "flash_pod_image": "flasher:1"}),
    )
    .await?;
    let started = Instant::now();
    let r = post(
        "/api/v1/rollouts",
        serde_json::json!({"version": "2.0.0", "selector": "cluster in (a,b)",
        "strategy": {"steps": [1, "10%", "100%"]}}),
    )
    .await?;
    let id = r["id"].as_i64().context("rollout id")?;
    let state = loop {
        let url = format!("{}/api/v1/rollouts/{id}", server.base);
        let r: serde_json::Value = http.get(url).bearer_auth(&admin).send().await?.json().await?;
        let state = r["state"].as_str().unwrap_or_default().to_string();
        if ["succeeded", "failed", "rolled_back", "aborted"].contains(&state.as_str()) {
            break state;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "rollout {id} still {state} after 10 min");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = started.elapsed();
    let k8s: usize =
        clusters.iter().map(|c| c.requests().iter().filter(|r| !r.watch).count()).sum::<usize>() - k8s_before;
    let plane = sent.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>() - plane_before;
    println!(
        "rollout over {pods} pods in two clusters and {boards} boards ({targets} targets, poll {poll_ms} ms): {state} in {wall:.2?}"
    );
    println!(
        "  Kubernetes API requests: {k8s} ({:.2} per target; the FlashJob controller's included)",
        k8s as f64 / targets as f64
    );
    println!(
        "  control-plane requests:  {plane} ({:.4} per target: batched inventory, check-ins and reports)",
        plane as f64 / targets as f64
    );
    let _ = stop_tx.send(true);
    for a in agents {
        let _ = a.await;
    }
    controller.stop().await;
    Ok(())
}

/// The fake Kubernetes API server is not part of the shipped binary.
#[cfg(not(feature = "fake-k8s"))]
async fn bench_cluster(_pods: usize, _boards: usize, _poll_ms: u64, _max_flash_pods: usize) -> Result<()> {
    anyhow::bail!(
        "`bench cluster` runs on in-process fake Kubernetes API servers, which this binary was built without; \
         build it with: cargo run --release --features fake-k8s -- bench cluster"
    )
}

/// The fake Kubernetes API server is not part of the shipped binary.
#[cfg(not(feature = "fake-k8s"))]
async fn bench_flashjob(_uuids: usize, _max_flash_pods: usize) -> Result<()> {
    anyhow::bail!(
        "`bench flashjob` runs on the in-process fake Kubernetes API server, which this binary was built without; \
         build it with: cargo run --release --features fake-k8s -- bench flashjob"
    )
}
