//! `otafleet flash`: gradual flashing of Akri-discovered devices, batch by batch.
//!
//! This replaces the old `filter_uuid.py`: pick the Akri `Instance`s of one device
//! model and application (optionally only some UUIDs), show them, ask, then
//! create one FlashJob per batch and wait for it to complete before the next.
//! FlashJob names are deterministic (`flash-<device>-<app>-<version>-<batch>`),
//! so re-running the same command resumes: completed batches are skipped, a
//! batch still in progress is waited for, a failed one stops the run.
//!
//! The batching is the core's: `--batch-size` and `--batch-delay` become the
//! `batch_size` and `batch_delay_secs` of an [`otafleet_core::Strategy`] (one
//! green wave over the selected devices), and [`otafleet_core::batch`] cuts the
//! wave into batches, as a rollout's engine releases them.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use crate::akri::Instance;
use crate::crd::{FlashJob, FlashJobSpec, Phase};
use crate::error::{Error, Result};
use otafleet_core::duration::parse_arg as parse_duration;
use otafleet_core::engine::{self, Verdict, WaveCounts};
use otafleet_core::{batch, Preset, Strategy, StrategySpec};

/// `otafleet flash`.
#[derive(clap::Args, Debug, Clone)]
pub struct FlashArgs {
    /// Device model (Akri broker property DEVICE), e.g. esp32.
    #[arg(long)]
    pub device: String,
    /// Application (Akri broker property APPLICATION_TYPE), e.g. thermo.
    #[arg(long)]
    pub application_type: String,
    /// Only these device UUIDs (repeatable); default: every matching device.
    #[arg(long = "uuid", value_name = "UUID")]
    pub uuids: Vec<String>,
    /// Firmware image.
    #[arg(long)]
    pub firmware: String,
    /// Firmware version.
    #[arg(long)]
    pub version: String,
    /// Flasher pod image.
    #[arg(long)]
    pub pod_image: String,
    /// Namespace of the Akri Instances and FlashJobs.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Devices per FlashJob.
    #[arg(long, default_value_t = 5)]
    pub batch_size: usize,
    /// Pause between batches (whole seconds, rounded up).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub batch_delay: Duration,
    /// Give up on a batch after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub batch_timeout: Duration,
    /// How often to poll a batch's FlashJob.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Fraction of the devices flashed so far that may fail before the run
    /// stops: the failure threshold of a rollout's gate. 0 (the default): the
    /// first failed FlashJob stops the run.
    #[arg(long, default_value_t = 0.0)]
    pub failure_threshold: f64,
    /// Override the devices' HOST_ENDPOINT.
    #[arg(long)]
    pub host_endpoint: Option<String>,
    /// Address devices reach the flasher at.
    #[arg(long)]
    pub external_ip: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the FlashJobs as YAML instead of creating them.
    #[arg(long)]
    pub dry_run: bool,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// What a flash run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlashReport {
    /// Devices selected, in flashing order.
    pub devices: Vec<String>,
    /// Devices whose FlashJob failed without recording them as flashed, within
    /// the failure threshold (beyond it the run stops with an error instead).
    pub failed_devices: Vec<String>,
    /// FlashJobs (one per batch) that completed, including ones completed by an earlier run.
    pub completed_jobs: Vec<String>,
}

/// `otafleet flash`, reading the confirmation from stdin and writing to stdout.
pub async fn flash(args: FlashArgs) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    flash_with(&args, stdin.lock(), stdout.lock()).await.context("flash")?;
    Ok(())
}

fn dns_name(parts: &[&str]) -> String {
    let raw = parts.join("-").to_ascii_lowercase();
    let mut name: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    name.truncate(240);
    name.trim_matches(|c| c == '-' || c == '.').to_string()
}

/// Name of the FlashJob of batch `index` (1-based).
pub fn batch_job_name(args: &FlashArgs, index: usize) -> String {
    dns_name(&["flash", &args.device, &args.application_type, &args.version, &format!("{index:03}")])
}

/// The FlashJob for one batch.
pub fn batch_job(args: &FlashArgs, index: usize, uuids: &[String]) -> FlashJob {
    FlashJob {
        metadata: ObjectMeta {
            name: Some(batch_job_name(args, index)),
            namespace: Some(args.namespace.clone()),
            labels: Some(
                [("app.kubernetes.io/managed-by", "otafleet-flash"), ("flashjob.nbfc.io/batch", &format!("{index}"))]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: FlashJobSpec {
            uuid: uuids.to_vec(),
            firmware: args.firmware.clone(),
            version: args.version.clone(),
            host_endpoint: args.host_endpoint.clone(),
            device: Some(args.device.clone()),
            application_type: Some(args.application_type.clone()),
            external_ip: args.external_ip.clone(),
            flashjob_pod_image: Some(args.pod_image.clone()),
        },
        status: None,
    }
}

/// The strategy of a flash run: one wave of every selected device, released
/// `--batch-size` at a time with `--batch-delay` (whole seconds, rounded up) between batches.
pub fn strategy(args: &FlashArgs) -> Result<Strategy> {
    if args.batch_size == 0 {
        return Err(Error::Invalid("--batch-size must be at least 1".into()));
    }
    let delay = args.batch_delay;
    let spec = StrategySpec {
        preset: Some(Preset::Green),
        batch_size: Some(args.batch_size as u64),
        batch_delay_secs: Some(delay.as_secs() + u64::from(delay.subsec_nanos() > 0)),
        failure_threshold: Some(args.failure_threshold),
        // The failure threshold alone decides: every device of a finished
        // FlashJob is either completed or failed.
        success_threshold: Some(0.0),
        ..Default::default()
    };
    spec.resolve(0).map_err(|e| Error::Invalid(format!("--{}: {}", e.field.replace('_', "-"), e.message)))
}

/// [`flash`] with explicit input/output, for tests and embedding.
pub async fn flash_with<R: BufRead, W: Write>(args: &FlashArgs, mut input: R, mut out: W) -> Result<FlashReport> {
    let strategy = strategy(args)?;
    let client = crate::client_from_kubeconfig(args.kubeconfig.as_deref()).await?;
    let instances: Api<Instance> = Api::namespaced(client.clone(), &args.namespace);
    let mut matching: Vec<Instance> = instances
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|i| i.matches(&args.device, &args.application_type))
        .filter(|i| args.uuids.is_empty() || args.uuids.iter().any(|u| u == i.device_uuid()))
        .collect();
    matching.sort_by_key(|i| i.name_any());
    let missing: Vec<&str> = args
        .uuids
        .iter()
        .filter(|u| !matching.iter().any(|i| i.device_uuid() == u.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "no {} {} device with UUID {}",
            args.device,
            args.application_type,
            missing.join(", ")
        )));
    }
    if matching.is_empty() {
        writeln!(out, "no {} {} devices found in namespace {}", args.device, args.application_type, args.namespace)?;
        return Ok(FlashReport::default());
    }
    let devices: Vec<String> = matching.iter().map(|i| i.device_uuid().to_string()).collect();
    let batches: Vec<&[String]> = batch::split(&devices, &strategy);

    if args.dry_run {
        for (i, batch) in batches.iter().enumerate() {
            write!(out, "---\n{}", serde_yaml::to_string(&batch_job(args, i + 1, batch))?)?;
        }
        return Ok(FlashReport { devices, ..FlashReport::default() });
    }

    writeln!(out, "{} {} devices to flash with {} ({}):", matching.len(), args.device, args.firmware, args.version)?;
    for i in &matching {
        writeln!(
            out,
            "  {}  {}  {}",
            i.device_uuid(),
            i.display_name(),
            i.property(crate::akri::HOST_ENDPOINT).unwrap_or("-")
        )?;
    }
    if !args.yes {
        write!(
            out,
            "Flash {} devices in {} batches of up to {}? [y/N] ",
            devices.len(),
            batches.len(),
            strategy.batch_size
        )?;
        out.flush()?;
        let mut answer = String::new();
        input.read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(Error::Aborted);
        }
    }

    let jobs: Api<FlashJob> = Api::namespaced(client, &args.namespace);
    let mut report = FlashReport { devices: devices.clone(), ..FlashReport::default() };
    // The run is one wave whose gate is judged after every batch.
    let mut counts = WaveCounts::default();
    for (i, batch) in batches.iter().enumerate() {
        let job = batch_job(args, i + 1, batch);
        let name = job.name_any();
        let existing = jobs.get_opt(&name).await?;
        let already_done =
            existing.as_ref().and_then(|j| j.status.as_ref()).and_then(|s| s.phase) == Some(Phase::Completed);
        if already_done {
            writeln!(out, "batch {}/{}: {name} already completed", i + 1, batches.len())?;
            report.completed_jobs.push(name);
            continue;
        }
        if existing.is_none() {
            jobs.create(&PostParams::default(), &job).await?;
        }
        writeln!(out, "batch {}/{}: {name} flashing {} devices", i + 1, batches.len(), batch.len())?;
        counts.total += batch.len() as u64;
        match wait_for_job(&jobs, &name, args.batch_timeout, args.poll_interval).await {
            Ok(_) => {
                counts.succeeded += batch.len() as u64;
                writeln!(out, "batch {}/{}: {name} completed", i + 1, batches.len())?;
            }
            Err(Error::JobFailed { name, message }) => {
                // The devices the job recorded as flashed count as done; the rest failed.
                let done = jobs.get(&name).await?.status.map(|s| s.completed_uuids).unwrap_or_default();
                let failed: Vec<String> = batch.iter().filter(|u| !done.contains(u)).cloned().collect();
                counts.succeeded += (batch.len() - failed.len()) as u64;
                counts.failed += failed.len() as u64;
                report.failed_devices.extend(failed);
                if let Verdict::Fail(reason) = engine::verdict(&strategy.gate, 0, &counts, false) {
                    return Err(Error::JobFailed { name, message: format!("{message} ({reason})") });
                }
                writeln!(
                    out,
                    "batch {}/{}: {name} failed ({message}); {} of {} devices failed so far, within --failure-threshold {}",
                    i + 1,
                    batches.len(),
                    counts.failed,
                    counts.total,
                    strategy.gate.failure_threshold
                )?;
                let delay = batch::delay(&strategy);
                if i + 1 < batches.len() && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        report.completed_jobs.push(name);
        let delay = batch::delay(&strategy);
        if i + 1 < batches.len() && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    writeln!(
        out,
        "flashed {} of {} devices in {} batches",
        devices.len() - report.failed_devices.len(),
        devices.len(),
        batches.len()
    )?;
    Ok(report)
}

/// Polls a FlashJob until it is Completed (Ok) or Failed (Err), or `timeout` passes.
pub async fn wait_for_job(jobs: &Api<FlashJob>, name: &str, timeout: Duration, poll: Duration) -> Result<FlashJob> {
    let deadline = Instant::now() + timeout;
    loop {
        let job = jobs.get(name).await?;
        let status = job.status.clone().unwrap_or_default();
        match status.phase {
            Some(Phase::Completed) => return Ok(job),
            Some(Phase::Failed) => {
                return Err(Error::JobFailed { name: name.to_string(), message: status.message.unwrap_or_default() })
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!("FlashJob {name}")));
        }
        tokio::time::sleep(poll).await;
    }
}
