//! Client-side commands: each one API call (or a few) and its output.

use crate::client::{Answer, Api};
use crate::output::{self, Format};
use crate::Cmd;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use otafleet_api::{self as api, tracker, Page};
use otafleet_core::{Preset, Step, StrategySpec};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

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
    /// Version to go back to: every device gets a signed rollback order for it, which agents carry out
    /// even though the version is older than what they run.
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
    /// Give a device a new token (operator); prints it once. The old one is refused from now on.
    #[command(name = "rotate-token")]
    RotateToken { id: String },
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
        #[arg(long, value_parser = otafleet_core::duration::parse_arg)]
        expires_in: Option<std::time::Duration>,
        /// How many devices may enroll with it (default: unlimited).
        #[arg(long)]
        max_uses: Option<i64>,
        #[arg(long)]
        name: Option<String>,
    },
    /// List enrollment tokens (operator): state, uses, expiry, last use; never the secrets.
    List,
    /// Show one enrollment token (never its secret).
    Show { id: i64 },
    /// Revoke an enrollment token: no device can enroll with it any more.
    Revoke { id: i64 },
}

#[derive(Subcommand)]
pub enum ArtifactsCmd {
    /// Delete the stored artifact blobs no release references (admin); prints what it freed.
    Gc {
        /// Only print what would be freed.
        #[arg(long)]
        dry_run: bool,
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
        /// A container release's image (what cluster agents set), e.g. registry/robot@sha256:….
        #[arg(long)]
        image: Option<String>,
        /// A firmware release's firmware image, flashed onto FlashJob boards (with --flash-pod-image).
        #[arg(long)]
        firmware: Option<String>,
        /// The image of the pod that flashes it.
        #[arg(long)]
        flash_pod_image: Option<String>,
        /// An app release's ROS application spec (YAML, as `otafleet app` takes it); with --kind app.
        #[arg(long)]
        app_spec: Option<std::path::PathBuf>,
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
    /// Follow a rollout live (the event stream): a progress bar per wave until it ends; exits
    /// non-zero if it failed, was aborted or rolled back.
    Watch {
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
pub enum TelemetryCmd {
    /// Aggregate a metric over the devices a selector matches, per step and group:
    /// `otafleet telemetry query cpu_temp_c --agg p95 --by version --step 5m`.
    Query {
        metric: String,
        #[arg(long)]
        selector: Option<String>,
        /// Start, RFC 3339 (default: an hour before --to).
        #[arg(long)]
        from: Option<String>,
        /// End, RFC 3339 (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Width of each point (`1m`, `1h`).
        #[arg(long, default_value = "1m")]
        step: String,
        /// avg, min, max, sum, count, last, p50, p90, p95, p99 or pNN.N.
        #[arg(long, default_value = "avg")]
        agg: String,
        /// version, device or a label key.
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AlertsCmd {
    /// Alert rules: create, list, show, delete.
    #[command(subcommand)]
    Rules(AlertRulesCmd),
    /// The alerts pending or firing, firing first.
    List {
        /// firing or pending (default: both).
        #[arg(long, value_parser = ["firing", "pending"])]
        state: Option<String>,
        /// Only this rule's alerts.
        #[arg(long)]
        rule: Option<i64>,
    },
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, from the command line
pub enum AlertRulesCmd {
    /// Create a rule: `otafleet alerts rules create --metric cpu_temp_c --agg max --window 1m --op '>'
    /// --threshold 80 --clear-below 75 --for 2m --selector device_type=esp32 --severity critical`.
    Create {
        /// Unique name (default: made from metric, aggregation, comparison and threshold).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        metric: String,
        /// avg, min, max, sum, count, last, p50, p90, p95, p99 or pNN.N.
        #[arg(long)]
        agg: String,
        /// The span the aggregation is read over (`1m`, `5m`).
        #[arg(long, value_parser = otafleet_core::duration::parse_arg)]
        window: std::time::Duration,
        /// >, >=, < or <=.
        #[arg(long, value_parser = [">", ">=", "<", "<="])]
        op: String,
        #[arg(long, allow_hyphen_values = true)]
        threshold: f64,
        /// Hysteresis: a firing alert resolves once the value is back past this (below it for > and >=,
        /// above it for < and <=).
        #[arg(long, visible_alias = "clear-below", visible_alias = "clear-above", allow_hyphen_values = true)]
        clear: Option<f64>,
        /// How long the condition must hold before the alert fires (default: at once).
        #[arg(long = "for", value_parser = otafleet_core::duration::parse_arg)]
        for_: Option<std::time::Duration>,
        /// The devices watched (default: all).
        #[arg(long, short = 'l')]
        selector: Option<String>,
        #[arg(long, value_parser = ["info", "warning", "critical"])]
        severity: Option<String>,
        /// per_device (an alert per device, default) or group (one over the selected devices).
        #[arg(long, value_parser = ["per_device", "group"])]
        scope: Option<String>,
        /// Fire also when a device sent no sample of the metric for this long.
        #[arg(long, value_parser = otafleet_core::duration::parse_arg)]
        no_data: Option<std::time::Duration>,
    },
    /// List the rules.
    List,
    /// Show one rule.
    Show { id: i64 },
    /// Delete a rule and its alerts.
    Delete { id: i64 },
}

const ALERT_RULE_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("SELECTOR", "selector"),
    ("METRIC", "metric"),
    ("AGG", "agg"),
    ("WINDOW", "window_secs"),
    ("OP", "op"),
    ("THRESHOLD", "threshold"),
    ("CLEAR", "clear"),
    ("FOR", "for_secs"),
    ("SEVERITY", "severity"),
    ("SCOPE", "scope"),
];

const ALERT_RULE_FIELDS: &[&str] = &[
    "id",
    "name",
    "selector",
    "metric",
    "agg",
    "window_secs",
    "op",
    "threshold",
    "clear",
    "for_secs",
    "severity",
    "scope",
    "no_data_secs",
    "created_by",
    "created_at",
];

const ALERT_COLS: &[(&str, &str)] = &[
    ("RULE", "rule"),
    ("SEVERITY", "severity"),
    ("DEVICE", "device_id"),
    ("STATE", "state"),
    ("SINCE", "since"),
    ("CAUSE", "cause"),
    ("VALUE", "value"),
];

async fn alerts(c: AlertsCmd, api: &Api, fmt: Format) -> Result<()> {
    match c {
        AlertsCmd::List { state, rule } => {
            let q = api::AlertListQuery { state, rule_id: rule };
            let p: Answer<Page<api::Alert>> = api.query(Method::GET, "/api/v1/alerts", &q).await?;
            show(fmt, &p.json, &p.body, |p| {
                if p.items.is_empty() {
                    println!("no alert pending or firing");
                } else {
                    output::table(&output::rows(&p.items), ALERT_COLS)
                }
            });
        }
        AlertsCmd::Rules(AlertRulesCmd::Create {
            name,
            metric,
            agg,
            window,
            op,
            threshold,
            clear,
            for_,
            selector,
            severity,
            scope,
            no_data,
        }) => {
            let body = api::CreateAlertRule {
                name,
                selector,
                metric,
                agg,
                window_secs: window.as_secs(),
                op,
                threshold,
                clear,
                for_secs: for_.map(|d| d.as_secs()),
                severity,
                scope,
                no_data_secs: no_data.map(|d| d.as_secs()),
            };
            let r: Answer<api::AlertRule> = api.send(Method::POST, "/api/v1/alerts/rules", &body).await?;
            show(fmt, &r.json, &r.body, |r| {
                println!(
                    "created alert rule {} '{}': {}({}) over {} s {} {}",
                    r.id, r.name, r.agg, r.metric, r.window_secs, r.op, r.threshold
                )
            });
        }
        AlertsCmd::Rules(AlertRulesCmd::List) => {
            let p: Answer<Page<api::AlertRule>> = api.fetch("/api/v1/alerts/rules").await?;
            show(fmt, &p.json, &p.body, |p| output::table(&output::rows(&p.items), ALERT_RULE_COLS));
        }
        AlertsCmd::Rules(AlertRulesCmd::Show { id }) => {
            let r: Answer<api::AlertRule> = api.fetch(&format!("/api/v1/alerts/rules/{id}")).await?;
            show(fmt, &r.json, &r.body, |r| output::record(&output::value(r), ALERT_RULE_FIELDS));
        }
        AlertsCmd::Rules(AlertRulesCmd::Delete { id }) => {
            let _: Answer<Value> = api.empty(Method::DELETE, &format!("/api/v1/alerts/rules/{id}")).await?;
            if fmt == Format::Table {
                println!("deleted alert rule {id}");
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create an API token (needs an admin token); prints the secret once.
    Create {
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 24h, 30d (default: no expiry).
        #[arg(long, value_parser = otafleet_core::duration::parse_arg)]
        expires_in: Option<std::time::Duration>,
    },
    /// List API tokens (admin): role, state, created, expires, last used; never the secrets.
    List,
    /// Show one API token (never its secret).
    Show { id: i64 },
    /// Revoke an API token: refused from the next request on.
    Revoke { id: i64 },
}

#[derive(Subcommand)]
pub enum DelegatesCmd {
    /// Create a delegate (admin): a cluster agent or gateway that speaks for its own devices;
    /// prints its token once (for `otafleet operator run --server … --token …`).
    Create {
        /// Unique name (letters, digits, '.', '_', '-').
        name: String,
        #[arg(long, value_parser = ["cluster", "gateway"], default_value = "cluster")]
        kind: String,
    },
    /// List delegates (admin): kind, state, devices, last inventory; never the secrets.
    List,
    /// Show one delegate.
    Show { id: String },
    /// Revoke a delegate's token: refused from the next request on; its devices stay.
    Revoke { id: String },
}

const DELEGATE_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("KIND", "kind"),
    ("STATE", "state"),
    ("DEVICES", "devices"),
    ("LAST SEEN", "last_seen"),
    ("CREATED", "created_at"),
];

const DELEGATE_FIELDS: &[&str] =
    &["id", "name", "kind", "state", "devices", "last_seen", "created_by", "created_at", "revoked_at"];

#[derive(Subcommand)]
pub enum WebhooksCmd {
    /// Create a webhook (admin): every event matching --events from now on is POSTed to URL, signed
    /// with the secret printed once (header Otafleet-Signature: t=<unix s>,v1=<hex HMAC-SHA256>).
    Create {
        /// http:// or https:// URL of the receiver.
        url: String,
        /// Event kinds (action.failed), groups (rollout.*) or *, comma-separated.
        #[arg(long, required = true, value_delimiter = ',')]
        events: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List webhooks (admin) with their deliveries by state; never the secrets.
    List,
    /// Show one webhook.
    Show { id: i64 },
    /// Delete a webhook and its delivery log.
    Delete { id: i64 },
    /// A webhook's delivery log, newest first.
    Deliveries {
        id: i64,
        /// pending, delivered or failed.
        #[arg(long, value_parser = ["pending", "delivered", "failed"])]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Send one delivery again now.
    Redeliver { id: i64, delivery: i64 },
}

const WEBHOOK_FIELDS: &[&str] =
    &["id", "url", "events", "description", "created_at", "created_by", "after_event_id", "deliveries"];

const DELIVERY_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("EVENT", "event_id"),
    ("KIND", "event_kind"),
    ("STATE", "state"),
    ("ATTEMPTS", "attempts"),
    ("LAST", "last_attempt_at"),
    ("STATUS", "last_status"),
    ("ERROR", "last_error"),
    ("NEXT", "next_attempt_at"),
];

const TOKEN_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("ROLE", "role"),
    ("STATE", "state"),
    ("CREATED", "created_at"),
    ("EXPIRES", "expires_at"),
    ("LAST USED", "last_used_at"),
    ("REVOKED", "revoked_at"),
];

const TOKEN_FIELDS: &[&str] = &[
    "id",
    "name",
    "role",
    "state",
    "bootstrap",
    "created_at",
    "created_by",
    "expires_at",
    "last_used_at",
    "revoked_at",
];

const ENROLL_TOKEN_COLS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("LABELS", "labels"),
    ("STATE", "state"),
    ("USES", "uses"),
    ("MAX", "max_uses"),
    ("EXPIRES", "expires_at"),
    ("LAST USED", "last_used_at"),
    ("REVOKED", "revoked_at"),
];

const ENROLL_TOKEN_FIELDS: &[&str] = &[
    "id",
    "name",
    "labels",
    "state",
    "uses",
    "max_uses",
    "created_at",
    "created_by",
    "expires_at",
    "last_used_at",
    "revoked_at",
];

/// A lifetime flag as the API's `expires_in_secs` (at least one second).
fn lifetime_secs(d: Option<std::time::Duration>) -> Option<u64> {
    d.map(|d| d.as_secs().max(1))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("'{s}' is not key=value"))
}

fn parse_artifact(s: &str) -> Result<api::Artifact> {
    let (mut name, mut uri, mut size, mut sha256, mut signature) = (None, None, None, None, None);
    for part in s.split(',') {
        let (k, v) = parse_kv(part).map_err(|e| anyhow!("--artifact: {e}"))?;
        match k.as_str() {
            "size" => size = Some(v.parse::<i64>().map_err(|_| anyhow!("--artifact: size must be an integer"))?),
            "name" => name = Some(v),
            "uri" => uri = Some(v),
            "sha256" => sha256 = Some(v),
            "signature" => signature = Some(v),
            other => bail!("--artifact: unknown key '{other}' (name, uri, size, sha256, signature)"),
        }
    }
    Ok(api::Artifact {
        name: required(name, "name")?,
        uri: required(uri, "uri")?,
        size: required(size, "size")?,
        sha256: required(sha256, "sha256")?,
        signature,
    })
}

fn required<T>(v: Option<T>, key: &str) -> Result<T> {
    v.ok_or_else(|| anyhow!("--artifact: {key}=… is required (name, uri, size, sha256)"))
}

fn labels_map(labels: Vec<(String, String)>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
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
    ("PRESET", "preset"),
    ("STATE", "state"),
    ("WAVE", "current_wave"),
    ("WAVES", "waves"),
    ("CREATED", "created_at"),
];

/// `--output json` prints the server's JSON as sent; tables read the typed answer.
/// `s` as one URL path segment: every byte outside the unreserved set
/// (RFC 3986) percent-encoded, so `#`, `?`, `/` and `%` stay part of it.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn show<T>(fmt: Format, json: &Value, body: &T, print: impl FnOnce(&T)) {
    match fmt {
        Format::Json => output::json(json),
        Format::Table => print(body),
    }
}

fn show_rollout(r: &api::Rollout) {
    output::record(
        &output::value(r),
        &[
            "id",
            "version",
            "kind",
            "preset",
            "state",
            "current_wave",
            "waves",
            "reason",
            "created_by",
            "created_at",
            "finished_at",
        ],
    );
    if let Some(p) = &r.progress {
        println!();
        output::table(
            &output::rows(p),
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
    if !r.analysis.is_empty() {
        println!();
        let num = |v: Option<f64>| v.map(otafleet_core::analysis::num);
        let rows: Vec<serde_json::Value> = r
            .analysis
            .iter()
            .map(|c| {
                let last = c.last.as_ref();
                serde_json::json!({
                    "name": c.name, "condition": c.condition, "verdict": c.verdict,
                    "passed": c.passed, "failed": c.failed, "inconclusive": c.inconclusive,
                    "observed": num(last.and_then(|l| l.observed)),
                    "threshold": num(last.and_then(|l| l.threshold)),
                    "samples": last.and_then(|l| l.samples), "devices": last.and_then(|l| l.devices),
                })
            })
            .collect();
        output::table(
            &rows,
            &[
                ("CHECK", "name"),
                ("REQUIRES", "condition"),
                ("VERDICT", "verdict"),
                ("PASSED", "passed"),
                ("FAILED", "failed"),
                ("INCONCLUSIVE", "inconclusive"),
                ("LAST", "observed"),
                ("VS", "threshold"),
                ("SAMPLES", "samples"),
                ("DEVICES", "devices"),
            ],
        );
        for c in &r.analysis {
            if let Some(p) = &c.last_problem {
                println!("{}: {p}", c.name);
            }
        }
    }
}

pub async fn run(cmd: Cmd, api: &Api, fmt: Format) -> Result<()> {
    match cmd {
        Cmd::Deploy(a) => {
            let (json, job) = if a.count.is_some() || a.percent.is_some() || a.selector.is_some() {
                if (a.count.is_some() || a.percent.is_some()) && !matches!(a.wave, WaveArg::Blue) {
                    bail!("--count and --percent apply to --wave blue");
                }
                let strategy =
                    StrategySpec { count: a.count, percent: a.percent, ..StrategySpec::preset(a.wave.into()) };
                let body = api::CreateRollout {
                    version: Some(a.version.clone()),
                    selector: a.selector.clone(),
                    strategy: Some(strategy),
                    ..Default::default()
                };
                let r: api::Rollout = api.send(Method::POST, "/api/v1/rollouts", &body).await?.body;
                // Answered in the tracker's shape, as `/ota/deploy` does.
                let job = tracker::DeployResponse {
                    job_id: r.id,
                    version: r.version,
                    status: r.state.as_str().into(),
                    wave: r.wave.as_str().into(),
                };
                (output::value(&job), job)
            } else {
                let q = tracker::DeployQuery { version: a.version.clone(), wave: Some(a.wave.as_str().into()) };
                let Answer { json, body } = api.query(Method::POST, "/ota/deploy", &q).await?;
                (json, body)
            };
            show(fmt, &json, &job, |j: &tracker::DeployResponse| {
                println!("job {} created: deploy {} ({} wave), status {}", j.job_id, j.version, j.wave, j.status)
            });
        }
        Cmd::List => {
            let a: Answer<Vec<tracker::Job>> = api.fetch("/ota/jobs").await?;
            show(fmt, &a.json, &a.body, |jobs| output::table(&output::rows(jobs), JOB_COLS));
        }
        Cmd::Rollback(a) => {
            let q = tracker::RollbackQuery { version: a.version.clone(), wave: Some(a.wave.as_str().into()) };
            let r: Answer<tracker::RollbackResponse> = api.query(Method::POST, "/ota/rollback", &q).await?;
            show(fmt, &r.json, &r.body, |r| {
                println!(
                    "job {} created: roll back to {} ({}), status {}",
                    r.job_id,
                    r.version,
                    a.wave.as_str(),
                    r.status
                )
            });
        }
        Cmd::Devices(c) => devices(c, api, fmt).await?,
        Cmd::Releases(c) => releases(c, api, fmt).await?,
        Cmd::Artifacts(ArtifactsCmd::Gc { dry_run }) => {
            let q = api::ArtifactGcQuery { dry_run: dry_run.then_some(true) };
            let r: Answer<api::ArtifactGc> = api.query(Method::POST, "/api/v1/admin/artifacts/gc", &q).await?;
            show(fmt, &r.json, &r.body, |g| {
                for f in &g.freed {
                    println!("{} {} ({} bytes)", if g.dry_run { "would delete" } else { "deleted" }, f.sha256, f.size);
                }
                let n = g.freed.len();
                println!(
                    "{} {n} artifact{} ({} bytes)",
                    if g.dry_run { "would free" } else { "freed" },
                    if n == 1 { "" } else { "s" },
                    g.bytes
                );
            });
        }
        Cmd::Rollouts(c) => rollouts(c, api, fmt).await?,
        Cmd::Events(a) => {
            let device_id = a
                .device
                .map(|d| d.parse::<Uuid>().map_err(|_| anyhow!("--device: '{d}' is not a device id (a UUID)")))
                .transpose()?;
            let q = api::EventListQuery {
                rollout_id: a.rollout,
                device_id,
                kind: a.kind,
                after: a.after,
                limit: Some(a.limit),
                ..Default::default()
            };
            let p: Answer<Page<api::Event>> = api.query(Method::GET, "/api/v1/events", &q).await?;
            show(fmt, &p.json, &p.body, |p| {
                output::table(
                    &output::rows(&p.items),
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
        Cmd::Token(TokenCmd::Create { role, name, expires_in }) => {
            let name = name.unwrap_or_else(|| format!("{role}-token"));
            let body = api::CreateToken { name, role, expires_in_secs: lifetime_secs(expires_in) };
            let t: Answer<api::CreatedToken> = api.send(Method::POST, "/api/v1/tokens", &body).await?;
            show(fmt, &t.json, &t.body, |t| {
                let expiry = t.expires_at.as_deref().map(|e| format!(", expires {e}")).unwrap_or_default();
                println!("created {} token '{}' (id {}{expiry}). The secret is shown only once:", t.role, t.name, t.id);
                println!("{}", t.token);
            });
        }
        Cmd::Token(TokenCmd::List) => {
            let p: Answer<Page<api::TokenInfo>> = api.fetch("/api/v1/tokens").await?;
            show(fmt, &p.json, &p.body, |p| output::table(&output::rows(&p.items), TOKEN_COLS));
        }
        Cmd::Token(TokenCmd::Show { id }) => {
            let t: Answer<api::TokenInfo> = api.fetch(&format!("/api/v1/tokens/{id}")).await?;
            show(fmt, &t.json, &t.body, |t| output::record(&output::value(t), TOKEN_FIELDS));
        }
        Cmd::Token(TokenCmd::Revoke { id }) => {
            let t: Answer<api::TokenInfo> = api.empty(Method::POST, &format!("/api/v1/tokens/{id}/revoke")).await?;
            show(fmt, &t.json, &t.body, |t| println!("revoked token '{}' (id {})", t.name, t.id));
        }
        Cmd::Delegates(c) => delegates(c, api, fmt).await?,
        Cmd::Webhooks(c) => webhooks(c, api, fmt).await?,
        Cmd::Alerts(c) => alerts(c, api, fmt).await?,
        Cmd::Telemetry(TelemetryCmd::Query { metric, selector, from, to, step, agg, by }) => {
            let q = api::TelemetryQuery { metric, selector, from, to, step: Some(step), agg: Some(agg), by };
            let a: Answer<api::TelemetryAnswer> = api.query(Method::GET, "/api/v1/telemetry/query", &q).await?;
            show(fmt, &a.json, &a.body, |t| {
                let rows: Vec<serde_json::Value> = t
                    .series
                    .iter()
                    .flat_map(|s| {
                        s.points.iter().map(move |p| {
                            serde_json::json!({
                                "group": s.group, "t": p.t, "value": p.value, "samples": p.samples, "devices": p.devices,
                            })
                        })
                    })
                    .collect();
                if rows.is_empty() {
                    println!("no samples of {} in that range", t.metric);
                    return;
                }
                output::table(
                    &rows,
                    &[
                        ("GROUP", "group"),
                        ("T", "t"),
                        ("VALUE", "value"),
                        ("SAMPLES", "samples"),
                        ("DEVICES", "devices"),
                    ],
                );
            });
        }
        Cmd::Serve(_)
        | Cmd::Demo(_)
        | Cmd::Sim(_)
        | Cmd::Bench(_)
        | Cmd::Update(_)
        | Cmd::Operator(_)
        | Cmd::Flash(_)
        | Cmd::App(_)
        | Cmd::Agent(_)
        | Cmd::Keys(_)
        | Cmd::Completions { .. } => {
            unreachable!("handled in main")
        }
    }
    Ok(())
}

async fn webhooks(c: WebhooksCmd, api: &Api, fmt: Format) -> Result<()> {
    match c {
        WebhooksCmd::Create { url, events, description } => {
            let body = api::CreateWebhook { url, events, description };
            let w: Answer<api::CreatedWebhook> = api.send(Method::POST, "/api/v1/webhooks", &body).await?;
            show(fmt, &w.json, &w.body, |w| {
                println!(
                    "created webhook {} → {} for {}. The signing secret is shown only once:",
                    w.id,
                    w.url,
                    w.events.join(",")
                );
                println!("{}", w.secret);
            });
        }
        WebhooksCmd::List => {
            let p: Answer<Page<api::Webhook>> = api.fetch("/api/v1/webhooks").await?;
            show(fmt, &p.json, &p.body, |p| {
                let rows: Vec<Value> = p
                    .items
                    .iter()
                    .map(|w| {
                        serde_json::json!({
                            "id": w.id, "url": w.url, "events": w.events.join(","), "pending": w.deliveries.pending,
                            "delivered": w.deliveries.delivered, "failed": w.deliveries.failed,
                            "created_at": w.created_at,
                        })
                    })
                    .collect();
                output::table(
                    &rows,
                    &[
                        ("ID", "id"),
                        ("URL", "url"),
                        ("EVENTS", "events"),
                        ("PENDING", "pending"),
                        ("DELIVERED", "delivered"),
                        ("FAILED", "failed"),
                        ("CREATED", "created_at"),
                    ],
                )
            });
        }
        WebhooksCmd::Show { id } => {
            let w: Answer<api::Webhook> = api.fetch(&format!("/api/v1/webhooks/{id}")).await?;
            show(fmt, &w.json, &w.body, |w| output::record(&output::value(w), WEBHOOK_FIELDS));
        }
        WebhooksCmd::Delete { id } => {
            let _: Answer<Value> = api.empty(Method::DELETE, &format!("/api/v1/webhooks/{id}")).await?;
            if fmt == Format::Table {
                println!("deleted webhook {id}");
            }
        }
        WebhooksCmd::Deliveries { id, state, limit } => {
            let q = api::DeliveryListQuery { state, limit: Some(limit), before: None };
            let p: Answer<Page<api::Delivery>> =
                api.query(Method::GET, &format!("/api/v1/webhooks/{id}/deliveries"), &q).await?;
            show(fmt, &p.json, &p.body, |p| output::table(&output::rows(&p.items), DELIVERY_COLS));
        }
        WebhooksCmd::Redeliver { id, delivery } => {
            let path = format!("/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver");
            let d: Answer<api::Delivery> = api.empty(Method::POST, &path).await?;
            show(fmt, &d.json, &d.body, |d| println!("delivery {} of webhook {} is due again now", d.id, d.webhook_id));
        }
    }
    Ok(())
}

async fn devices(c: DevicesCmd, api: &Api, fmt: Format) -> Result<()> {
    match c {
        DevicesCmd::List { selector, limit, all } => {
            let (mut json, mut items) = (Vec::new(), Vec::new());
            let mut after: Option<Uuid> = None;
            loop {
                let q = api::DeviceListQuery {
                    selector: selector.clone(),
                    limit: Some(limit),
                    after,
                    ..Default::default()
                };
                let p: Answer<Page<api::Device>> = api.query(Method::GET, "/api/v1/devices", &q).await?;
                json.extend(p.json["items"].as_array().cloned().unwrap_or_default());
                items.extend(p.body.items);
                after = p.body.next.as_deref().map(str::parse).transpose().context("the server's next cursor")?;
                if !all || after.is_none() {
                    break;
                }
            }
            show(fmt, &Value::Array(json), &items, |items| output::table(&output::rows(items), DEVICE_COLS));
        }
        DevicesCmd::Get { id } => {
            let d: Answer<api::Device> = api.fetch(&format!("/api/v1/devices/{id}")).await?;
            show(fmt, &d.json, &d.body, |d| {
                output::record(
                    &output::value(d),
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
            let id = id
                .map(|i| i.parse::<Uuid>().map_err(|_| anyhow!("--id: '{i}' is not a device id (a UUID)")))
                .transpose()?;
            let body = api::RegisterDevice { id, name, labels: labels_map(labels), current_version };
            let d: Answer<api::RegisteredDevice> = api.send(Method::POST, "/api/v1/devices", &body).await?;
            show(fmt, &d.json, &d.body, |d| {
                println!("registered device {} ({})", d.device.id, d.device.name);
                println!("device token (shown once): {}", d.token);
            });
        }
        DevicesCmd::Label { id, changes } => {
            let mut labels = BTreeMap::new();
            for ch in changes {
                if let Some(k) = ch.strip_suffix('-') {
                    labels.insert(k.to_string(), None);
                } else {
                    let (k, v) = parse_kv(&ch).map_err(|e| anyhow!("{e} (use key=value to set, key- to remove)"))?;
                    labels.insert(k, Some(v));
                }
            }
            let body = api::UpdateDevice { labels };
            let d: Answer<api::Device> = api.send(Method::PATCH, &format!("/api/v1/devices/{id}"), &body).await?;
            show(fmt, &d.json, &d.body, |d| output::record(&output::value(d), &["id", "name", "labels"]));
        }
        DevicesCmd::EnrollToken(EnrollTokenCmd::Create { labels, expires_in, max_uses, name }) => {
            let body = api::CreateEnrollmentToken {
                name,
                labels: labels_map(labels),
                expires_in_secs: lifetime_secs(expires_in),
                max_uses,
            };
            let t: Answer<api::EnrollmentToken> = api.send(Method::POST, "/api/v1/enrollment-tokens", &body).await?;
            show(fmt, &t.json, &t.body, |t| {
                println!(
                    "created enrollment token '{}' (id {}, labels {}). The secret is shown only once:",
                    t.name,
                    t.id,
                    output::cell(&output::value(&t.labels))
                );
                println!("{}", t.token);
            });
        }
        DevicesCmd::EnrollToken(EnrollTokenCmd::List) => {
            let p: Answer<Page<api::EnrollmentTokenInfo>> = api.fetch("/api/v1/enrollment-tokens").await?;
            show(fmt, &p.json, &p.body, |p| output::table(&output::rows(&p.items), ENROLL_TOKEN_COLS));
        }
        DevicesCmd::EnrollToken(EnrollTokenCmd::Show { id }) => {
            let t: Answer<api::EnrollmentTokenInfo> = api.fetch(&format!("/api/v1/enrollment-tokens/{id}")).await?;
            show(fmt, &t.json, &t.body, |t| output::record(&output::value(t), ENROLL_TOKEN_FIELDS));
        }
        DevicesCmd::EnrollToken(EnrollTokenCmd::Revoke { id }) => {
            let path = format!("/api/v1/enrollment-tokens/{id}/revoke");
            let t: Answer<api::EnrollmentTokenInfo> = api.empty(Method::POST, &path).await?;
            show(fmt, &t.json, &t.body, |t| println!("revoked enrollment token '{}' (id {})", t.name, t.id));
        }
        DevicesCmd::RotateToken { id } => {
            let t: Answer<api::DeviceToken> = api.empty(Method::POST, &format!("/api/v1/devices/{id}/token")).await?;
            show(fmt, &t.json, &t.body, |t| {
                println!("device {} has a new token; the old one is refused from now on.", t.device_id);
                println!("device token (shown once): {}", t.token);
            });
        }
        DevicesCmd::Delete { id } => {
            let _: Answer<Value> = api.empty(Method::DELETE, &format!("/api/v1/devices/{id}")).await?;
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
            let q = api::ReleaseListQuery { limit: Some(limit), before: None };
            let p: Answer<Page<api::Release>> = api.query(Method::GET, "/api/v1/releases", &q).await?;
            show(fmt, &p.json["items"], &p.body, |p| output::table(&output::rows(&p.items), RELEASE_COLS));
        }
        ReleasesCmd::Get { id } => {
            let r: Answer<api::Release> = api.fetch(&format!("/api/v1/releases/{id}")).await?;
            show(fmt, &r.json, &r.body, |r| {
                output::record(
                    &output::value(r),
                    &["id", "version", "name", "kind", "compatible", "signature", "created_at"],
                );
                if !r.artifacts.is_empty() {
                    println!();
                    output::table(
                        &output::rows(&r.artifacts),
                        &[("ARTIFACT", "name"), ("URI", "uri"), ("SIZE", "size"), ("SHA256", "sha256")],
                    );
                }
            });
        }
        ReleasesCmd::Create {
            version,
            name,
            kind,
            compatible,
            artifacts,
            image,
            firmware,
            flash_pod_image,
            app_spec,
        } => {
            let artifacts = artifacts.iter().map(|a| parse_artifact(a)).collect::<Result<Vec<_>>>()?;
            let app_spec = match app_spec {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                    let spec = otafleet_k8s::app::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
                    Some(serde_json::to_value(spec)?)
                }
                None => None,
            };
            let body = api::CreateRelease {
                version,
                name,
                kind: Some(kind),
                compatible,
                artifacts,
                signature: None,
                image,
                firmware,
                flash_pod_image,
                app_spec,
            };
            let r: Answer<api::Release> = api.send(Method::POST, "/api/v1/releases", &body).await?;
            show(fmt, &r.json, &r.body, |r| println!("created release {} (id {})", r.version, r.id));
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
            otafleet_core::validate::artifact_name(&name).map_err(|m| anyhow!("--name: {m}"))?;
            let path = format!("/api/v1/releases/{}/artifacts/{}", path_segment(&release), path_segment(&name));
            let r: Answer<api::Release> = api.put_file(&path, &file).await?;
            let Some(a) = r.body.artifacts.iter().find(|a| a.name == name) else {
                bail!("the server's answer does not list the artifact '{name}' it was sent");
            };
            show(fmt, &r.json, &r.body, |r| {
                println!("uploaded {} to release {}: {} bytes, sha256 {}", name, r.version, a.size, a.sha256)
            });
        }
    }
    Ok(())
}

async fn delegates(c: DelegatesCmd, api: &Api, fmt: Format) -> Result<()> {
    match c {
        DelegatesCmd::Create { name, kind } => {
            let body = api::CreateDelegate { name, kind };
            let d: Answer<api::CreatedDelegate> = api.send(Method::POST, "/api/v1/delegates", &body).await?;
            show(fmt, &d.json, &d.body, |d| {
                println!(
                    "created {} delegate '{}' (id {}). Its token is shown only once:",
                    d.delegate.kind, d.delegate.name, d.delegate.id
                );
                println!("{}", d.token);
            });
        }
        DelegatesCmd::List => {
            let p: Answer<Page<api::Delegate>> = api.fetch("/api/v1/delegates").await?;
            show(fmt, &p.json, &p.body, |p| output::table(&output::rows(&p.items), DELEGATE_COLS));
        }
        DelegatesCmd::Show { id } => {
            let d: Answer<api::Delegate> = api.fetch(&format!("/api/v1/delegates/{}", path_segment(&id))).await?;
            show(fmt, &d.json, &d.body, |d| output::record(&output::value(d), DELEGATE_FIELDS));
        }
        DelegatesCmd::Revoke { id } => {
            let path = format!("/api/v1/delegates/{}/revoke", path_segment(&id));
            let d: Answer<api::Delegate> = api.empty(Method::POST, &path).await?;
            show(fmt, &d.json, &d.body, |d| println!("revoked delegate '{}' (id {})", d.name, d.id));
        }
    }
    Ok(())
}

async fn rollouts(c: RolloutsCmd, api: &Api, fmt: Format) -> Result<()> {
    let control = |verb: &'static str, id: i64| async move {
        api.empty::<api::Rollout>(Method::POST, &format!("/api/v1/rollouts/{id}/{verb}")).await
    };
    let r = match c {
        RolloutsCmd::List { state, limit } => {
            let q = api::RolloutListQuery { state, limit: Some(limit), ..Default::default() };
            let p: Answer<Page<api::Rollout>> = api.query(Method::GET, "/api/v1/rollouts", &q).await?;
            show(fmt, &p.json["items"], &p.body, |p| output::table(&output::rows(&p.items), ROLLOUT_COLS));
            return Ok(());
        }
        RolloutsCmd::Actions { id, state, limit } => {
            let q = api::ActionListQuery { state, limit: Some(limit), after: None };
            let p: Answer<Page<api::Action>> =
                api.query(Method::GET, &format!("/api/v1/rollouts/{id}/actions"), &q).await?;
            show(fmt, &p.json["items"], &p.body, |p| {
                output::table(
                    &output::rows(&p.items),
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
        RolloutsCmd::Watch { id } => return crate::watch::watch(api, id, fmt).await,
        RolloutsCmd::Get { id } => api.fetch(&format!("/api/v1/rollouts/{id}")).await?,
        RolloutsCmd::Create { version, selector, device, wave, steps, strategy, start_at } => {
            let mut s: StrategySpec = match strategy {
                Some(j) => {
                    let v: Value = serde_json::from_str(&j).context("--strategy is not valid JSON")?;
                    if !v.is_object() {
                        bail!("--strategy must be a JSON object");
                    }
                    serde_json::from_value(v).context("--strategy")?
                }
                None => StrategySpec::default(),
            };
            if let Some(w) = wave {
                s.preset = Some(w.into());
            }
            if !steps.is_empty() {
                let parsed = steps.iter().map(|x| x.parse::<Step>()).collect::<Result<Vec<_>, _>>();
                s.steps = Some(parsed.map_err(|e| anyhow!("--steps: {}", e.message))?);
            }
            let devices = device
                .iter()
                .map(|d| d.parse::<Uuid>().map_err(|_| anyhow!("--device: '{d}' is not a device id (a UUID)")))
                .collect::<Result<Vec<_>>>()?;
            let body = api::CreateRollout {
                version: Some(version),
                selector: if devices.is_empty() { selector } else { None },
                devices: (!devices.is_empty()).then_some(devices),
                strategy: Some(s),
                start_at,
                release_id: None,
                executor: None,
            };
            api.send(Method::POST, "/api/v1/rollouts", &body).await?
        }
        RolloutsCmd::Pause { id } => control("pause", id).await?,
        RolloutsCmd::Resume { id } => control("resume", id).await?,
        RolloutsCmd::Abort { id } => control("abort", id).await?,
        RolloutsCmd::Promote { id } => control("promote", id).await?,
        RolloutsCmd::Rollback { id } => control("rollback", id).await?,
    };
    show(fmt, &r.json, &r.body, show_rollout);
    Ok(())
}

/// `otafleet update`: the tracker's direct update of robot pods, then (when a
/// token is configured) a job recorded on the server with the outcome.
pub async fn update(
    args: otafleet_k8s::update::UpdateArgs,
    server: &str,
    token: Option<String>,
    ca_file: Option<&std::path::Path>,
) -> Result<()> {
    let wave = args.wave;
    let mut strategy = json!({"wave": wave.as_str()});
    if !args.steps.is_empty() {
        strategy["steps"] = json!(args.steps);
    }
    let selector = args.selector.clone();
    let version = args.version.clone();
    let outcome = otafleet_k8s::update::update(args).await;
    if let Some(t) = token {
        let api = Api::new(server, Some(t), ca_file)?;
        // Run here, recorded there: the server plans nothing for it.
        let body = json!({"version": version, "selector": selector, "strategy": strategy, "executor": "external"});
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
