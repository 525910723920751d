//! `otafleet bench`: the performance figures, measured as ratios in one run so
//! they mean the same on any machine.
//!
//! - `plan`: wave planning for N devices (time, peak memory).
//! - `http`: requests/s of `GET /ota/jobs` (1,000 jobs stored), `POST
//!   /api/v1/devices` and `POST /device/v1/checkin`, each against a bare axum
//!   handler served the same way, with the same load generator, in the same run.
//! - `rollout`: a simulated fleet against a separate `otafleet serve` process:
//!   wall time of a canary → 10% → 100% rollout.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use otafleet_agent::sim::{self, SimArgs};
use otafleet_core::plan::{plan, Candidate};
use otafleet_core::StrategySpec;
use serde_json::{json, Value};
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
    },
    /// The FlashJob operator against the in-process fake Kubernetes API server.
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

/// A bare axum server answering a small JSON document: the yardstick.
async fn bare_server(big: axum::body::Bytes) -> Result<String> {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route("/bare", get(|| async { axum::Json(json!({"ok": true})) }))
        .route(
            "/bare",
            post(|body: axum::body::Bytes| async move { axum::Json(json!({"ok": true, "len": body.len()})) }),
        )
        .route(
            "/bare/big",
            get(move || async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], big.clone()) }),
        );
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
    let dev: Value = http
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(&admin)
        .json(&json!({"current_version": "1.0.0"}))
        .send()
        .await?
        .json()
        .await?;
    let dev_token = dev["token"].as_str().context("device token")?.to_string();
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
            c.post(&u).bearer_auth(&t).json(&json!({"name": format!("bench-{i}"), "labels": {"device_type": "bench"}}))
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

async fn bench_rollout(
    devices: usize,
    poll_ms: u64,
    max_connections: usize,
    database_url: Option<String>,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = database_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let admin = otafleet_server::new_secret("ota");
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            &db,
            "--poll-interval-secs",
            &(poll_ms / 1000).max(1).to_string(),
        ])
        .env("OTAFLEET_ADMIN_TOKEN", &admin)
        .env("OTAFLEET_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting otafleet serve")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(&base).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t_reg = Instant::now();
    let args = SimArgs {
        devices,
        latency: 50,
        poll_ms,
        final_only: true,
        max_connections,
        labels: "device_type=bench".into(),
        ..Default::default()
    };
    let fleet = sim::spawn(&base, Some(&admin), &args).await?;
    println!(
        "rollout: {devices} simulated devices (final-state reports only) registered in {:.1} s",
        t_reg.elapsed().as_secs_f64()
    );
    let r = http
        .post(format!("{base}/api/v1/releases"))
        .bearer_auth(&admin)
        .json(&json!({"version": "2.0.0"}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("creating the release: {}", r.status());
    }
    let t0 = Instant::now();
    let checkins0 = fleet.stats.checkins.load(Ordering::Relaxed);
    let body = json!({"version": "2.0.0", "selector": "device_type=bench", "strategy": {"steps": [1, "10%", "100%"], "success_threshold": 0.99, "failure_threshold": 0.01}});
    let r: Value =
        http.post(format!("{base}/api/v1/rollouts")).bearer_auth(&admin).json(&body).send().await?.json().await?;
    let id = r["id"].as_i64().context("rollout id")?;
    println!("  rollout {id} created in {:.1} s", t0.elapsed().as_secs_f64());
    let mut last_wave = -1;
    let mut last_print = Instant::now();
    let state = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r: Value =
            http.get(format!("{base}/api/v1/rollouts/{id}")).bearer_auth(&admin).send().await?.json().await?;
        let wave = r["current_wave"].as_i64().unwrap_or(0);
        if wave != last_wave {
            println!("  wave {wave} started at {:>6.1} s", t0.elapsed().as_secs_f64());
            last_wave = wave;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let w = &r["progress"][wave as usize];
            println!(
                "    {:>6.1} s: wave {wave}: {} succeeded, {} in flight, {} scheduled, {} failed",
                t0.elapsed().as_secs_f64(),
                w["succeeded"],
                w["in_flight"],
                w["scheduled"],
                w["failed"]
            );
        }
        let st = r["state"].as_str().unwrap_or("").to_string();
        if !matches!(st.as_str(), "pending" | "running") {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            break "timeout".into();
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let checkins = fleet.stats.checkins.load(Ordering::Relaxed) - checkins0;
    println!("  rollout {state} in {wall:.1} s ({:.0} check-ins/s served meanwhile)", checkins as f64 / wall);
    println!("  fleet: {}", fleet.stats.line());
    fleet.stop().await;
    let _ = child.kill().await;
    Ok(())
}

pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Plan { devices } => bench_plan(devices),
        BenchCmd::Http { seconds, concurrency, jobs } => bench_http(seconds, concurrency, jobs).await,
        BenchCmd::Rollout { devices, poll_ms, max_connections, database_url } => {
            bench_rollout(devices, poll_ms, max_connections, database_url).await
        }
        BenchCmd::Flashjob { uuids, max_flash_pods } => {
            let r = otafleet_k8s::bench::bench_flashjob(uuids, max_flash_pods).await?;
            println!("{r}");
            Ok(())
        }
    }
}
