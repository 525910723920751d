//! `otafleet demo`: the whole product on embedded defaults in one command.
//!
//! Starts a server on a temporary SQLite database, a simulated fleet, creates a
//! release and deploys it canary → blue → green (the original tracker's waves,
//! one job each) with a progress bar per wave; then a second release whose
//! canary fails its health check and is rolled back automatically; then a
//! third that installs fine but makes its canary run hot: the devices send
//! `cpu_temp_c`, the rollout's analysis compares the canary with the devices
//! still on the old version, fails it and rolls the fleet back, showing the
//! numbers. Then it keeps serving (or exits with `--exit`) and prints where
//! the API is.

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
const HOT: &str = "2.2.0";

/// The third act's strategy: a canary, then everyone, the canary's
/// temperature compared with the fleet still on the old version.
fn hot_strategy() -> Result<otafleet_core::StrategySpec> {
    let spec = serde_json::json!({
        "steps": [1, "100%"],
        "bake_time_secs": 5,
        "analysis": [{
            "name": "cpu-temp-vs-baseline", "kind": "metric", "metric": "cpu_temp_c", "agg": "p95",
            "window_secs": 10, "condition": {"op": "<=", "factor": 1.1},
            "initial_delay_secs": 3, "interval_secs": 2, "count": 2, "min_samples": 3
        }]
    });
    Ok(serde_json::from_value(spec)?)
}

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

/// Act three: a release that installs fine and runs hot, stopped by its analysis.
async fn hot_act(api: &Api, multi: &MultiProgress) -> Result<()> {
    println!(
        "\nRelease {HOT}: installs fine, but its canary's cpu_temp_c climbs; the analysis compares it with the fleet"
    );
    let body = api::CreateRollout {
        version: Some(HOT.into()),
        selector: Some("device_type=robot".into()),
        strategy: Some(hot_strategy()?),
        ..Default::default()
    };
    let r: api::Rollout = api.send(Method::POST, "/api/v1/rollouts", &body).await?.body;
    let b = bar(multi, &format!("{HOT} canary+all (rollout {})", r.id));
    let r = wait_rollout(api, r.id, &b).await?;
    println!("\nrollout {}: {} — {}", r.id, r.state, r.reason.as_deref().unwrap_or(""));
    let events: Page<api::Event> =
        api.fetch(&format!("/api/v1/events?rollout_id={}&kind=rollout.analysis&limit=20", r.id)).await?.body;
    for e in events.items.iter().rev() {
        let d = &e.data["measurement"]["detail"];
        let outcome = e.data["measurement"]["outcome"]["outcome"].as_str().unwrap_or("?");
        let num = |k: &str| d[k].as_f64().map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "  {} wave {}: {outcome}: p95 {} °C on {} canary device(s), limit {} = 1.1 × baseline {} from {} devices on the old version",
            e.data["check"].as_str().unwrap_or("?"),
            e.data["wave"],
            num("observed"),
            d["devices"],
            num("threshold"),
            num("baseline"),
            d["baseline_devices"],
        );
    }
    if r.state != RolloutState::RolledBack {
        bail!("the hot release {HOT} ended {} instead of being rolled back", r.state);
    }
    Ok(())
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
        // Second-wide windows, so the analysis of a few seconds' bake has data.
        telemetry: otafleet_server::service::telemetry::Settings {
            resolutions: otafleet_core::telemetry::parse_resolutions("1s:1h,1m:1d").map_err(anyhow::Error::msg)?,
            flush: Duration::from_millis(500),
            grace: Duration::from_secs(1),
            max_hold: Duration::from_secs(2),
            ..Default::default()
        },
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
        metrics: vec!["cpu_temp_c=normal(60,2)".into()],
        metric_versions: vec![format!("{HOT}:cpu_temp_c=normal(85,2)")],
        metric_interval_ms: 1000,
        ..Default::default()
    };
    let fleet = sim::spawn(&base, Some(&admin), &sim_args).await?;
    println!("{} simulated devices running {} registered", fleet.device_ids.len(), sim_args.initial_version);

    for v in [GOOD, BAD, HOT] {
        let body = api::CreateRelease {
            version: v.into(),
            name: Some(format!("robot-firmware {v}")),
            compatible: vec!["robot".into()],
            ..Default::default()
        };
        let _: api::Release = api.send(Method::POST, "/api/v1/releases", &body).await?.body;
    }
    println!("releases {GOOD}, {BAD} and {HOT} created\n");

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
    hot_act(&api, &multi).await?;
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
