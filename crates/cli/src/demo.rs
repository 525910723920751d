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
use serde_json::{json, Value};
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

async fn wait_rollout(api: &Api, id: i64, bar: &ProgressBar) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let r: Value = api.get(&format!("/api/v1/rollouts/{id}"), &[]).await?;
        let (mut total, mut done, mut rb) = (0, 0, 0);
        for w in r["progress"].as_array().into_iter().flatten() {
            total += w["total"].as_u64().unwrap_or(0);
            done += w["succeeded"].as_u64().unwrap_or(0)
                + w["failed"].as_u64().unwrap_or(0)
                + w["skipped"].as_u64().unwrap_or(0);
            rb += w["rolled_back"].as_u64().unwrap_or(0);
        }
        bar.set_length(total.max(1));
        bar.set_position(done);
        let state = r["state"].as_str().unwrap_or("?").to_string();
        let extra = if rb > 0 { format!(", {rb} rolled back") } else { String::new() };
        bar.set_message(format!("{state}{extra}"));
        if matches!(state.as_str(), "succeeded" | "rolled_back")
            || (matches!(state.as_str(), "failed" | "aborted") && !r["rollback_requested"].as_bool().unwrap_or(false))
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
    println!("admin token for this demo: {admin}\n");
    let api = Api::new(&base, Some(admin.clone()))?;

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
        let _: Value = api
            .post(
                "/api/v1/releases",
                &[],
                Some(&json!({"version": v, "name": format!("robot-firmware {v}"), "compatible": ["robot"]})),
            )
            .await?;
    }
    println!("releases {GOOD} and {BAD} created\n");

    println!("Release {GOOD}: canary → blue → green");
    let multi = MultiProgress::new();
    for wave in ["canary", "blue", "green"] {
        let job: Value = api.post("/ota/deploy", &[("version", GOOD.into()), ("wave", wave.into())], None).await?;
        let id = job["job_id"].as_i64().context("no job_id in the answer")?;
        let b = bar(&multi, &format!("{GOOD} {wave} (job {id})"));
        let r = wait_rollout(&api, id, &b).await?;
        if r["state"] != "succeeded" {
            bail!("the {wave} wave of {GOOD} ended {} ({})", r["state"], r["reason"]);
        }
    }
    println!("\nRelease {BAD}: its health check fails on the devices");
    let job: Value = api.post("/ota/deploy", &[("version", BAD.into()), ("wave", "canary".into())], None).await?;
    let id = job["job_id"].as_i64().context("no job_id in the answer")?;
    let b = bar(&multi, &format!("{BAD} canary (job {id})"));
    let r = wait_rollout(&api, id, &b).await?;
    println!("\njob {id}: {} — {}", r["state"].as_str().unwrap_or("?"), r["reason"].as_str().unwrap_or(""));
    let acts: Value = api.get(&format!("/api/v1/rollouts/{id}/actions"), &[]).await?;
    for a in acts["items"].as_array().into_iter().flatten() {
        println!(
            "  device {}: {} ({})",
            a["device_id"].as_str().unwrap_or("?"),
            a["state"].as_str().unwrap_or("?"),
            a["error"].as_str().unwrap_or("-")
        );
    }
    let jobs: Value = api.get("/ota/jobs", &[]).await?;
    println!("\nJobs (GET /ota/jobs):");
    crate::output::table(
        jobs.as_array().map(Vec::as_slice).unwrap_or_default(),
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
