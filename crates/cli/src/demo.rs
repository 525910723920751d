//! `otafleet demo`: the whole product on embedded defaults in one command.
//!
//! Starts a server on a temporary SQLite database, a simulated fleet, creates a
//! release and deploys it canary → blue → green (the original tracker's waves,
//! one job each) with a progress bar per wave; then a second release whose
//! canary fails its health check and is rolled back automatically. Then it
//! keeps serving (or exits with `--exit`) and prints where the API is.

use crate::client::Api;
use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use otafleet_agent::sim::{self, SimArgs};
use otafleet_api::{self as api, tracker, Page};
use otafleet_core::RolloutState;
use reqwest::Method;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// Address of the demo server (default: a free port on loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Exit when the demo rollouts are done instead of serving until ctrl-c.
    #[arg(long)]
    pub exit: bool,
    /// Milliseconds each simulated install step takes.
    #[arg(long, default_value_t = 150)]
    pub latency: u64,
}

const GOOD: &str = "2.0.0";
const BAD: &str = "2.1.0";

async fn wait_rollout(api: &Api, id: i64, bar: &ProgressBar) -> Result<api::Rollout> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let r: api::Rollout = api.fetch(&format!("/api/v1/rollouts/{id}")).await?.body;
        let (mut total, mut done, mut rb) = (0u64, 0u64, 0u64);
        for w in r.progress.iter().flatten() {
            let n = |x: i64| x.max(0) as u64;
            total += n(w.total);
            done += n(w.succeeded) + n(w.failed) + n(w.skipped);
            rb += n(w.rolled_back);
        }
        bar.set_length(total.max(1));
        bar.set_position(done);
        let state = r.state;
        let extra = if rb > 0 { format!(", {rb} rolled back") } else { String::new() };
        bar.set_message(format!("{state}{extra}"));
        if matches!(state, RolloutState::Succeeded | RolloutState::RolledBack)
            || (matches!(state, RolloutState::Failed | RolloutState::Aborted) && !r.rollback_requested)
        {
            bar.finish();
            if bar.is_hidden() {
                println!("{:>22}  {done}/{total} devices, {state}{extra}", bar.prefix());
            }
            return Ok(r);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("rollout {id} did not finish within 10 minutes (state {state})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tracker job (`POST /ota/deploy`); its id.
async fn deploy(api: &Api, version: &str, wave: &str) -> Result<i64> {
    let q = tracker::DeployQuery { version: version.into(), wave: Some(wave.into()) };
    let job: tracker::DeployResponse = api.query(Method::POST, "/ota/deploy", &q).await?.body;
    Ok(job.job_id)
}

fn bar(multi: &MultiProgress, label: &str) -> ProgressBar {
    let b = multi.add(ProgressBar::new(1));
    b.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30.green/red}] {pos:>3}/{len:3} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(label.to_string());
    b
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let db = dir.path().join("demo.db");
    let admin = otafleet_server::new_secret("ota");
    let config = otafleet_server::Config {
        listen: args.listen,
        database_url: format!("sqlite://{}", db.display()),
        admin_token: Some(admin.clone()),
        poll_interval_secs: 1,
        driver_tick_ms: 200,
        ..Default::default()
    };
    let server = otafleet_server::start(config).await?;
    let base = format!("http://{}", server.addr);
    println!("otafleet demo: server at {base} (temporary SQLite database {})", db.display());
    println!("admin token for this demo: {admin}");
    println!("dashboard: {base}/ui/login#token={admin}\n");
    let api = Api::new(&base, Some(admin.clone()), None)?;

    let sim_args = SimArgs {
        devices: args.devices,
        fail_version: Some(BAD.into()),
        latency: args.latency,
        poll_ms: 300,
        labels: "device_type=robot,site=demo".into(),
        ..Default::default()
    };
    let fleet = sim::spawn(&base, Some(&admin), &sim_args).await?;
    println!("{} simulated devices running {} registered", fleet.device_ids.len(), sim_args.initial_version);

    for v in [GOOD, BAD] {
        let body = api::CreateRelease {
            version: v.into(),
            name: Some(format!("robot-firmware {v}")),
            compatible: vec!["robot".into()],
            ..Default::default()
        };
        let _: api::Release = api.send(Method::POST, "/api/v1/releases", &body).await?.body;
    }
    println!("releases {GOOD} and {BAD} created\n");

    println!("Release {GOOD}: canary → blue → green");
    let multi = MultiProgress::new();
    for wave in ["canary", "blue", "green"] {
        let id = deploy(&api, GOOD, wave).await?;
        let b = bar(&multi, &format!("{GOOD} {wave} (job {id})"));
        let r = wait_rollout(&api, id, &b).await?;
        if r.state != RolloutState::Succeeded {
            bail!("the {wave} wave of {GOOD} ended {} ({})", r.state, r.reason.as_deref().unwrap_or("no reason given"));
        }
    }
    println!("\nRelease {BAD}: its health check fails on the devices");
    let id = deploy(&api, BAD, "canary").await?;
    let b = bar(&multi, &format!("{BAD} canary (job {id})"));
    let r = wait_rollout(&api, id, &b).await?;
    println!("\njob {id}: {} — {}", r.state, r.reason.as_deref().unwrap_or(""));
    let acts: Page<api::Action> = api.fetch(&format!("/api/v1/rollouts/{id}/actions")).await?.body;
    for a in &acts.items {
        println!("  device {}: {} ({})", a.device_id, a.state, a.error.as_deref().unwrap_or("-"));
    }
    let jobs: Vec<tracker::Job> = api.fetch("/ota/jobs").await?.body;
    println!("\nJobs (GET /ota/jobs):");
    crate::output::table(
        &crate::output::rows(&jobs),
        &[("ID", "id"), ("VERSION", "version"), ("WAVE", "wave"), ("STATUS", "status"), ("CREATED", "created_at")],
    );
    println!("\nFleet: {}", fleet.stats.line());
    println!("\nAPI:      {base}/api/v1  (OpenAPI: {base}/api/v1/openapi.json)");
    println!("Metrics:  {base}/metrics");
    println!("Try:      OTAFLEET_URL={base} OTAFLEET_TOKEN={admin} otafleet rollouts list");
    if !args.exit {
        println!("\nServing until ctrl-c.");
        tokio::signal::ctrl_c().await.ok();
    }
    fleet.stop().await;
    server.shutdown().await?;
    Ok(())
}
