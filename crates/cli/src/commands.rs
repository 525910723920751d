//! Client-side commands: each one API call (or a few) and its output.

use crate::client::Api;
use crate::output::{self, Format};
use crate::Cmd;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use otafleet_core::Preset;
use serde_json::{json, Value};

/// `--wave`: the clap face of the core's [`Preset`] (custom steps have their own flags).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WaveArg {
    Canary,
    Blue,
    Green,
}

impl From<WaveArg> for Preset {
    fn from(w: WaveArg) -> Preset {
        match w {
            WaveArg::Canary => Preset::Canary,
            WaveArg::Blue => Preset::Blue,
            WaveArg::Green => Preset::Green,
        }
    }
}

impl WaveArg {
    fn as_str(self) -> &'static str {
        Preset::from(self).as_str()
    }
}

#[derive(Args)]
pub struct DeployArgs {
    /// Release version to deploy.
    pub version: String,
    /// canary = 1 device, blue = a subset (default 2), green = all remaining.
    #[arg(long, value_enum, default_value_t = WaveArg::Canary)]
    pub wave: WaveArg,
    /// Devices in a blue wave.
    #[arg(long, conflicts_with = "percent")]
    pub count: Option<u64>,
    /// Percent of the targeted devices in a blue wave.
    #[arg(long)]
    pub percent: Option<f64>,
    /// Only devices matching this label selector (default: the whole fleet).
    #[arg(long)]
    pub selector: Option<String>,
}

#[derive(Args)]
pub struct RollbackArgs {
    /// Version to go back to.
    pub version: String,
    #[arg(long, value_enum, default_value_t = WaveArg::Green)]
    pub wave: WaveArg,
}

#[derive(Subcommand)]
pub enum DevicesCmd {
    /// List devices.
    List {
        /// Label selector, e.g. 'device_type=esp32,site in (a,b)'.
        #[arg(long, short = 'l')]
        selector: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Follow pages to the end.
        #[arg(long)]
        all: bool,
    },
    /// Show one device.
    Get { id: String },
    /// Register a device; prints its device token once.
    Register {
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Label as key=value (repeatable).
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// Version the device runs now.
        #[arg(long = "current-version")]
        current_version: Option<String>,
    },
    /// Set (key=value) or remove (key-) labels.
    Label {
        id: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Delete a device.
    Delete { id: String },
    /// Enrollment tokens that let devices (otafleet-agent) register themselves.
    #[command(subcommand, name = "enroll-token")]
    EnrollToken(EnrollTokenCmd),
}

#[derive(Subcommand)]
pub enum EnrollTokenCmd {
    /// Create an enrollment token (operator); prints the secret once.
    Create {
        /// Labels every enrolled device gets, key=value[,key=value] (repeatable).
        #[arg(long = "labels", alias = "label", value_delimiter = ',', value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// Lifetime, e.g. 24h or 7d (default: no expiry).
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
        /// How many devices may enroll with it (default: unlimited).
        #[arg(long)]
        max_uses: Option<i64>,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum ReleasesCmd {
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one release (by id or version).
    Get { id: String },
    /// Create a release.
    Create {
        version: String,
        #[arg(long)]
        name: Option<String>,
        /// firmware, file, command, container or k8s.
        #[arg(long, default_value = "firmware")]
        kind: String,
        /// Compatible device type (repeatable).
        #[arg(long = "compatible")]
        compatible: Vec<String>,
        /// Artifact as name=…,uri=…,size=…,sha256=… (repeatable).
        #[arg(long = "artifact")]
        artifacts: Vec<String>,
    },
    /// Upload a file as an artifact of a release (streamed; stored by SHA-256 on the server).
    Upload {
        /// Release id or version.
        release: String,
        file: std::path::PathBuf,
        /// Artifact name (default: the file name).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum RolloutsCmd {
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show a rollout with per-wave progress.
    Get {
        id: i64,
    },
    /// Per-device actions of a rollout.
    Actions {
        id: i64,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Create a rollout.
    Create {
        version: String,
        #[arg(long, short = 'l', conflicts_with = "device")]
        selector: Option<String>,
        /// Device id (repeatable) instead of a selector.
        #[arg(long)]
        device: Vec<String>,
        /// canary, blue, green; or give --steps.
        #[arg(long, value_enum, conflicts_with = "steps")]
        wave: Option<WaveArg>,
        /// Cumulative steps, e.g. 1,10%,100%.
        #[arg(long, value_delimiter = ',')]
        steps: Vec<String>,
        /// Any other strategy fields as JSON, e.g. '{"bake_time_secs":300,"max_parallel":20}'.
        #[arg(long)]
        strategy: Option<String>,
        /// RFC 3339 start time.
        #[arg(long)]
        start_at: Option<String>,
    },
    Pause {
        id: i64,
    },
    Resume {
        id: i64,
    },
    Abort {
        id: i64,
    },
    /// Skip the remaining bake time of the current wave.
    Promote {
        id: i64,
    },
    /// Roll back every device this rollout updated.
    Rollback {
        id: i64,
    },
}

#[derive(Args)]
pub struct EventsArgs {
    #[arg(long)]
    pub rollout: Option<i64>,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub after: Option<i64>,
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create an API token (needs an admin token); prints the secret once.
    Create {
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        #[arg(long)]
        name: Option<String>,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("'{s}' is not key=value"))
}

fn parse_artifact(s: &str) -> Result<Value> {
    let mut obj = serde_json::Map::new();
    for part in s.split(',') {
        let (k, v) = parse_kv(part).map_err(|e| anyhow!("--artifact: {e}"))?;
        let val = match k.as_str() {
            "size" => json!(v.parse::<i64>().map_err(|_| anyhow!("--artifact: size must be an integer"))?),
            "name" | "uri" | "sha256" | "signature" => json!(v),
            other => bail!("--artifact: unknown key '{other}' (name, uri, size, sha256, signature)"),
        };
        obj.insert(k, val);
    }
    Ok(Value::Object(obj))
}

const JOB_COLS: &[(&str, &str)] =
    &[("ID", "id"), ("VERSION", "version"), ("WAVE", "wave"), ("STATUS", "status"), ("CREATED", "created_at")];
const DEVICE_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("VERSION", "current_version"),
    ("HEALTH", "health"),
    ("LAST SEEN", "last_seen"),
    ("LABELS", "labels"),
];
const RELEASE_COLS: &[(&str, &str)] =
    &[("ID", "id"), ("VERSION", "version"), ("NAME", "name"), ("KIND", "kind"), ("CREATED", "created_at")];
const ROLLOUT_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("VERSION", "version"),
    ("KIND", "kind"),
    ("WAVE", "wave"),
    ("STATE", "state"),
    ("STEP", "current_wave"),
    ("WAVES", "waves"),
    ("CREATED", "created_at"),
];

fn show(fmt: Format, v: &Value, print: impl FnOnce(&Value)) {
    match fmt {
        Format::Json => output::json(v),
        Format::Table => print(v),
    }
}

fn show_rollout(v: &Value) {
    output::record(
        v,
        &[
            "id",
            "version",
            "kind",
            "wave",
            "state",
            "current_wave",
            "waves",
            "reason",
            "created_by",
            "created_at",
            "finished_at",
        ],
    );
    if let Some(p) = v["progress"].as_array() {
        println!();
        output::table(
            p,
            &[
                ("WAVE", "wave"),
                ("TOTAL", "total"),
                ("SCHEDULED", "scheduled"),
                ("IN FLIGHT", "in_flight"),
                ("SUCCEEDED", "succeeded"),
                ("FAILED", "failed"),
                ("SKIPPED", "skipped"),
                ("ROLLED BACK", "rolled_back"),
            ],
        );
    }
}

pub async fn run(cmd: Cmd, api: &Api, fmt: Format) -> Result<()> {
    match cmd {
        Cmd::Deploy(a) => {
            let v: Value = if a.count.is_some() || a.percent.is_some() || a.selector.is_some() {
                if (a.count.is_some() || a.percent.is_some()) && !matches!(a.wave, WaveArg::Blue) {
                    bail!("--count and --percent apply to --wave blue");
                }
                let mut strategy = json!({"wave": a.wave.as_str()});
                if let Some(c) = a.count {
                    strategy["count"] = json!(c);
                }
                if let Some(p) = a.percent {
                    strategy["percent"] = json!(p);
                }
                let body = json!({"version": a.version, "selector": a.selector, "strategy": strategy});
                let r: Value = api.post("/api/v1/rollouts", &[], Some(&body)).await?;
                json!({"job_id": r["id"], "version": r["version"], "status": r["state"], "wave": r["wave"]})
            } else {
                api.post("/ota/deploy", &[("version", a.version.clone()), ("wave", a.wave.as_str().into())], None)
                    .await?
            };
            show(fmt, &v, |v| {
                println!(
                    "job {} created: deploy {} ({} wave), status {}",
                    v["job_id"],
                    output::cell(&v["version"]),
                    output::cell(&v["wave"]),
                    output::cell(&v["status"])
                )
            });
        }
        Cmd::List => {
            let v: Value = api.get("/ota/jobs", &[]).await?;
            show(fmt, &v, |v| output::table(v.as_array().map(Vec::as_slice).unwrap_or_default(), JOB_COLS));
        }
        Cmd::Rollback(a) => {
            let v: Value = api
                .post("/ota/rollback", &[("version", a.version.clone()), ("wave", a.wave.as_str().into())], None)
                .await?;
            show(fmt, &v, |v| {
                println!(
                    "job {} created: roll back to {} ({}), status {}",
                    v["job_id"],
                    output::cell(&v["version"]),
                    a.wave.as_str(),
                    output::cell(&v["status"])
                )
            });
        }
        Cmd::Devices(c) => devices(c, api, fmt).await?,
        Cmd::Releases(c) => releases(c, api, fmt).await?,
        Cmd::Rollouts(c) => rollouts(c, api, fmt).await?,
        Cmd::Events(a) => {
            let mut q = vec![("limit", a.limit.to_string())];
            if let Some(r) = a.rollout {
                q.push(("rollout_id", r.to_string()));
            }
            if let Some(d) = a.device {
                q.push(("device_id", d));
            }
            if let Some(k) = a.kind {
                q.push(("kind", k));
            }
            if let Some(x) = a.after {
                q.push(("after", x.to_string()));
            }
            let v: Value = api.get("/api/v1/events", &q).await?;
            show(fmt, &v, |v| {
                output::table(
                    v["items"].as_array().map(Vec::as_slice).unwrap_or_default(),
                    &[
                        ("ID", "id"),
                        ("AT", "at"),
                        ("KIND", "kind"),
                        ("ROLLOUT", "rollout_id"),
                        ("DEVICE", "device_id"),
                        ("ACTOR", "actor"),
                        ("DATA", "data"),
                    ],
                )
            });
        }
        Cmd::Token(TokenCmd::Create { role, name }) => {
            let name = name.unwrap_or_else(|| format!("{role}-token"));
            let v: Value = api.post("/api/v1/tokens", &[], Some(&json!({"name": name, "role": role}))).await?;
            show(fmt, &v, |v| {
                println!(
                    "created {} token '{}' (id {}). The secret is shown only once:",
                    output::cell(&v["role"]),
                    output::cell(&v["name"]),
                    v["id"]
                );
                println!("{}", output::cell(&v["token"]));
            });
        }
        Cmd::Serve(_)
        | Cmd::Demo(_)
        | Cmd::Sim(_)
        | Cmd::Bench(_)
        | Cmd::Update(_)
        | Cmd::Operator(_)
        | Cmd::Flash(_)
        | Cmd::Agent(_)
        | Cmd::Keys(_)
        | Cmd::Completions { .. } => {
            unreachable!("handled in main")
        }
    }
    Ok(())
}

async fn devices(c: DevicesCmd, api: &Api, fmt: Format) -> Result<()> {
    match c {
        DevicesCmd::List { selector, limit, all } => {
            let mut items = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut q = vec![("limit", limit.to_string())];
                if let Some(s) = &selector {
                    q.push(("selector", s.clone()));
                }
                if let Some(a) = &after {
                    q.push(("after", a.clone()));
                }
                let v: Value = api.get("/api/v1/devices", &q).await?;
                items.extend(v["items"].as_array().cloned().unwrap_or_default());
                after = v["next"].as_str().map(str::to_string);
                if !all || after.is_none() {
                    break;
                }
            }
            show(fmt, &json!(items), |v| {
                output::table(v.as_array().map(Vec::as_slice).unwrap_or_default(), DEVICE_COLS)
            });
        }
        DevicesCmd::Get { id } => {
            let v: Value = api.get(&format!("/api/v1/devices/{id}"), &[]).await?;
            show(fmt, &v, |v| {
                output::record(
                    v,
                    &[
                        "id",
                        "name",
                        "labels",
                        "current_version",
                        "previous_version",
                        "health",
                        "last_seen",
                        "created_at",
                    ],
                )
            });
        }
        DevicesCmd::Register { id, name, labels, current_version } => {
            let labels: serde_json::Map<String, Value> = labels.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let body = json!({"id": id, "name": name, "labels": labels, "current_version": current_version});
            let v: Value = api.post("/api/v1/devices", &[], Some(&body)).await?;
            show(fmt, &v, |v| {
                println!("registered device {} ({})", output::cell(&v["id"]), output::cell(&v["name"]));
                println!("device token (shown once): {}", output::cell(&v["token"]));
            });
        }
        DevicesCmd::Label { id, changes } => {
            let mut labels = serde_json::Map::new();
            for ch in changes {
                if let Some(k) = ch.strip_suffix('-') {
                    labels.insert(k.to_string(), Value::Null);
                } else {
                    let (k, v) = parse_kv(&ch).map_err(|e| anyhow!("{e} (use key=value to set, key- to remove)"))?;
                    labels.insert(k, json!(v));
                }
            }
            let v: Value = api
                .call(reqwest::Method::PATCH, &format!("/api/v1/devices/{id}"), &[], Some(&json!({"labels": labels})))
                .await?;
            show(fmt, &v, |v| output::record(v, &["id", "name", "labels"]));
        }
        DevicesCmd::EnrollToken(EnrollTokenCmd::Create { labels, expires_in, max_uses, name }) => {
            let labels: serde_json::Map<String, Value> = labels.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let body = json!({
                "name": name,
                "labels": labels,
                "expires_in_secs": expires_in.map(|d| d.as_secs().max(1)),
                "max_uses": max_uses,
            });
            let v: Value = api.post("/api/v1/enrollment-tokens", &[], Some(&body)).await?;
            show(fmt, &v, |v| {
                println!(
                    "created enrollment token '{}' (id {}, labels {}). The secret is shown only once:",
                    output::cell(&v["name"]),
                    v["id"],
                    output::cell(&v["labels"])
                );
                println!("{}", output::cell(&v["token"]));
            });
        }
        DevicesCmd::Delete { id } => {
            let _: Value = api.call(reqwest::Method::DELETE, &format!("/api/v1/devices/{id}"), &[], None).await?;
            if fmt == Format::Table {
                println!("deleted device {id}");
            }
        }
    }
    Ok(())
}

async fn releases(c: ReleasesCmd, api: &Api, fmt: Format) -> Result<()> {
    match c {
        ReleasesCmd::List { limit } => {
            let v: Value = api.get("/api/v1/releases", &[("limit", limit.to_string())]).await?;
            show(fmt, &v["items"], |v| {
                output::table(v.as_array().map(Vec::as_slice).unwrap_or_default(), RELEASE_COLS)
            });
        }
        ReleasesCmd::Get { id } => {
            let v: Value = api.get(&format!("/api/v1/releases/{id}"), &[]).await?;
            show(fmt, &v, |v| {
                output::record(v, &["id", "version", "name", "kind", "compatible", "signature", "created_at"]);
                if let Some(a) = v["artifacts"].as_array().filter(|a| !a.is_empty()) {
                    println!();
                    output::table(a, &[("ARTIFACT", "name"), ("URI", "uri"), ("SIZE", "size"), ("SHA256", "sha256")]);
                }
            });
        }
        ReleasesCmd::Create { version, name, kind, compatible, artifacts } => {
            let artifacts = artifacts.iter().map(|a| parse_artifact(a)).collect::<Result<Vec<_>>>()?;
            let body = json!({"version": version, "name": name, "kind": kind, "compatible": compatible, "artifacts": artifacts});
            let v: Value = api.post("/api/v1/releases", &[], Some(&body)).await?;
            show(fmt, &v, |v| println!("created release {} (id {})", output::cell(&v["version"]), v["id"]));
        }
        ReleasesCmd::Upload { release, file, name } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("cannot take an artifact name from {}; pass --name", file.display()))?,
            };
            let path = format!("/api/v1/releases/{release}/artifacts/{name}");
            let v = api.put_file(&path, &file).await?;
            show(fmt, &v, |v| {
                let a = v["artifacts"].as_array().and_then(|a| a.iter().find(|a| a["name"] == json!(name)));
                let a = a.cloned().unwrap_or(Value::Null);
                println!(
                    "uploaded {} to release {}: {} bytes, sha256 {}",
                    name,
                    output::cell(&v["version"]),
                    a["size"],
                    output::cell(&a["sha256"])
                );
            });
        }
    }
    Ok(())
}

async fn rollouts(c: RolloutsCmd, api: &Api, fmt: Format) -> Result<()> {
    let control = |verb: &'static str, id: i64| async move {
        let v: Value = api.post(&format!("/api/v1/rollouts/{id}/{verb}"), &[], None).await?;
        Ok::<Value, anyhow::Error>(v)
    };
    let v = match c {
        RolloutsCmd::List { state, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = state {
                q.push(("state", s));
            }
            let v: Value = api.get("/api/v1/rollouts", &q).await?;
            show(fmt, &v["items"], |v| {
                output::table(v.as_array().map(Vec::as_slice).unwrap_or_default(), ROLLOUT_COLS)
            });
            return Ok(());
        }
        RolloutsCmd::Actions { id, state, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = state {
                q.push(("state", s));
            }
            let v: Value = api.get(&format!("/api/v1/rollouts/{id}/actions"), &q).await?;
            show(fmt, &v["items"], |v| {
                output::table(
                    v.as_array().map(Vec::as_slice).unwrap_or_default(),
                    &[
                        ("ID", "id"),
                        ("DEVICE", "device_id"),
                        ("WAVE", "wave"),
                        ("KIND", "kind"),
                        ("STATE", "state"),
                        ("FROM", "from_version"),
                        ("TO", "to_version"),
                        ("TRIES", "attempts"),
                        ("ERROR", "error"),
                    ],
                )
            });
            return Ok(());
        }
        RolloutsCmd::Get { id } => api.get(&format!("/api/v1/rollouts/{id}"), &[]).await?,
        RolloutsCmd::Create { version, selector, device, wave, steps, strategy, start_at } => {
            let mut s: Value = match strategy {
                Some(j) => serde_json::from_str(&j).context("--strategy is not valid JSON")?,
                None => json!({}),
            };
            if !s.is_object() {
                bail!("--strategy must be a JSON object");
            }
            if let Some(w) = wave {
                s["wave"] = json!(w.as_str());
            }
            if !steps.is_empty() {
                let parsed: Vec<Value> = steps
                    .iter()
                    .map(|x| x.trim().parse::<u64>().map(|n| json!(n)).unwrap_or_else(|_| json!(x.trim())))
                    .collect();
                s["steps"] = json!(parsed);
            }
            let mut body = json!({"version": version, "strategy": s, "start_at": start_at});
            if !device.is_empty() {
                body["devices"] = json!(device);
            } else if let Some(sel) = selector {
                body["selector"] = json!(sel);
            }
            api.post("/api/v1/rollouts", &[], Some(&body)).await?
        }
        RolloutsCmd::Pause { id } => control("pause", id).await?,
        RolloutsCmd::Resume { id } => control("resume", id).await?,
        RolloutsCmd::Abort { id } => control("abort", id).await?,
        RolloutsCmd::Promote { id } => control("promote", id).await?,
        RolloutsCmd::Rollback { id } => control("rollback", id).await?,
    };
    show(fmt, &v, show_rollout);
    Ok(())
}

/// `otafleet update`: the tracker's direct update of robot pods, then (when a
/// token is configured) a job recorded on the server with the outcome.
pub async fn update(args: otafleet_k8s::update::UpdateArgs, server: &str, token: Option<String>) -> Result<()> {
    let wave = args.wave;
    let mut strategy = json!({"wave": wave.as_str()});
    if !args.steps.is_empty() {
        strategy["steps"] = json!(args.steps);
    }
    let selector = args.selector.clone();
    let version = args.version.clone();
    let outcome = otafleet_k8s::update::update(args).await;
    if let Some(t) = token {
        let api = Api::new(server, Some(t))?;
        let body = json!({"version": version, "selector": selector, "strategy": strategy});
        let recorded: Result<Value> = async {
            // The release may already exist (409): that is fine.
            let release = json!({"version": version, "kind": "k8s"});
            if let Err(e) = api.post::<Value>("/api/v1/releases", &[], Some(&release)).await {
                match e.downcast_ref::<crate::client::ApiFailure>() {
                    Some(f) if f.status == reqwest::StatusCode::CONFLICT => {}
                    _ => return Err(e),
                }
            }
            let r: Value = api.post("/api/v1/rollouts", &[], Some(&body)).await?;
            let id = r["id"].as_i64().context("no rollout id")?;
            let status = if outcome.is_ok() { "complete" } else { "failed" };
            api.post("/ota/update_status", &[("job_id", id.to_string()), ("status", status.into())], None).await
        }
        .await;
        match recorded {
            Ok(v) => eprintln!("recorded as job {} ({})", v["job_id"], output::cell(&v["new_status"])),
            Err(e) => eprintln!("warning: the update was not recorded on the server: {e:#}"),
        }
    }
    let report = outcome?;
    println!(
        "{} wave of {}: {} of {} candidates updated in {:.1} s",
        wave,
        report.version,
        report.updated.len(),
        report.candidates,
        report.duration.as_secs_f64()
    );
    for o in &report.updated {
        println!("  updated {o}");
    }
    if !report.failed.is_empty() {
        println!("{} failed, tolerated by the wave's gate (--failure-threshold):", report.failed.len());
        for f in &report.failed {
            println!("  failed {f}");
        }
    }
    Ok(())
}
