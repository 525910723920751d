//! `otafleet operator run|crd`: the operator process around the controller.
//!
//! `run` builds the client (`--kubeconfig`, else `KUBECONFIG`/`~/.kube/config`/
//! in-cluster), serves `/healthz`, `/readyz` and `/metrics`, then loops: wait for
//! the leader Lease, run the controller while the Lease is held, stop the
//! controller (finishing in-flight reconciles) when it is lost, and try again.
//! On shutdown the Lease is released so a standby takes over at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::api::ListParams;
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cluster::{ClusterAgent, ClusterArgs};
use crate::controller::{run_controller, Context, Settings};
use crate::crd::FlashJob;
use crate::health::Health;
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use otafleet_core::duration::parse_arg as parse_duration;

/// `otafleet operator run`.
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, env = "OTAFLEET_OPERATOR_METRICS_LISTEN", default_value = "127.0.0.1:8081")]
    pub metrics_listen: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "otafleet-operator")]
    pub lease_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (defaults to hostname and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease validity; the leader renews every third of it.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Watch FlashJobs only in this namespace (default: all namespaces).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Namespace of Akri Instances (default: each FlashJob's namespace).
    #[arg(long)]
    pub akri_namespace: Option<String>,
    /// Flasher image for FlashJobs without spec.flashjobPodImage.
    #[arg(long, env = "OTAFLEET_FLASHER_IMAGE")]
    pub default_pod_image: Option<String>,
    /// Maximum unfinished flash pods per FlashJob.
    #[arg(long, default_value_t = 20)]
    pub max_flash_pods: usize,
    /// FlashJobs reconciled in parallel.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u16,
    /// Periodic requeue of in-progress FlashJobs.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub requeue: Duration,
    /// Delay before retrying a failed reconcile.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub error_backoff: Duration,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster agent: with `--server`, this cluster's workloads and
    /// boards are targets of the control plane's rollouts.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl OperatorArgs {
    /// Defaults as on the command line, with the given kubeconfig.
    pub fn with_kubeconfig(kubeconfig: Option<PathBuf>) -> Self {
        Self {
            metrics_listen: ([127, 0, 0, 1], 8081).into(),
            lease_name: "otafleet-operator".into(),
            lease_namespace: "default".into(),
            identity: None,
            lease_duration: Duration::from_secs(15),
            namespace: None,
            akri_namespace: None,
            default_pod_image: None,
            max_flash_pods: 20,
            concurrency: 4,
            requeue: Duration::from_secs(60),
            error_backoff: Duration::from_secs(5),
            kubeconfig,
            cluster: ClusterArgs {
                poll_interval: Duration::from_secs(10),
                rollout_timeout: Duration::from_secs(300),
                ..ClusterArgs::default()
            },
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            default_pod_image: self.default_pod_image.clone(),
            max_flash_pods: self.max_flash_pods.max(1),
            concurrency: self.concurrency.max(1),
            requeue: self.requeue,
            error_backoff: self.error_backoff,
            akri_namespace: self.akri_namespace.clone(),
            watch_namespace: self.namespace.clone(),
        }
    }
}

/// `otafleet operator crd`: prints the FlashJob CRD YAML to stdout.
pub fn print_crd() -> anyhow::Result<()> {
    print!("{}", crate::crd::crd_yaml().context("rendering the FlashJob CRD")?);
    Ok(())
}

/// `otafleet operator run`: runs until Ctrl-C or SIGTERM.
pub async fn run_operator(args: OperatorArgs) -> anyhow::Result<()> {
    let handle = start_operator(args).await?;
    tokio::select! {
        _ = otafleet_rt::shutdown_signal() => info!("shutting down"),
        _ = handle.stopped() => {}
    }
    handle.stop().await
}

/// A running operator.
pub struct OperatorHandle {
    /// Where /metrics, /healthz and /readyz are served.
    pub metrics_addr: SocketAddr,
    /// Health state (leader flag, metrics).
    pub health: Arc<Health>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl OperatorHandle {
    /// Resolves when the operator stopped on its own (an error).
    pub async fn stopped(&self) {
        while !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the controller gracefully, releases the Lease and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("operator task panicked")?
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Starts the operator in the background (used by [`run_operator`] and by tests).
pub async fn start_operator(args: OperatorArgs) -> anyhow::Result<OperatorHandle> {
    let client =
        crate::client_from_kubeconfig(args.kubeconfig.as_deref()).await.context("building the Kubernetes client")?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(metrics.clone()));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (metrics_addr, serve) = crate::health::bind(args.metrics_listen, health.clone(), wait_for(shutdown_rx.clone()))
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    info!(%metrics_addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(e) = serve.await {
            warn!(error = %e, "health server failed");
        }
    });

    Api::<FlashJob>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .context("listing FlashJobs (is the CRD installed? `otafleet operator crd | kubectl apply -f -`)")?;
    health.set_ready(true);

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "otafleet-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let elector = LeaderElector::new(
        client.clone(),
        LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
            lease_duration: args.lease_duration,
        },
    );
    // Checked now, so bad flags fail the start, not the first leadership.
    if args.cluster.enabled() {
        ClusterAgent::new(client.clone(), args.cluster.clone(), args.akri_namespace.clone())?;
    }
    let agent = args.cluster.enabled().then(|| (client.clone(), args.cluster.clone(), args.akri_namespace.clone()));
    let ctx = Arc::new(Context::new(client, metrics, args.settings(), Some(identity)));
    let task = tokio::spawn(lead_loop(elector, ctx, agent, health.clone(), shutdown_rx));
    Ok(OperatorHandle { metrics_addr, health, shutdown, task })
}

/// What the cluster agent is built from at each leadership.
type AgentParts = (kube::Client, ClusterArgs, Option<String>);

async fn lead_loop(
    elector: LeaderElector,
    ctx: Arc<Context>,
    agent: Option<AgentParts>,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = wait_for(shutdown.clone()) => return Ok(()),
            _ = elector.acquire() => {}
        }
        health.set_leader(true);
        let (stop_tx, stop_rx) = watch::channel(false);
        let controller = tokio::spawn(run_controller(ctx.clone(), wait_for(stop_rx.clone())));
        // The cluster agent speaks for the cluster only while this replica leads.
        let cluster_agent = match &agent {
            Some((client, args, akri_ns)) => match ClusterAgent::new(client.clone(), args.clone(), akri_ns.clone()) {
                Ok(a) => Some(tokio::spawn(a.run(wait_for(stop_rx)))),
                Err(e) => {
                    warn!(error = %e, "cluster agent not started");
                    None
                }
            },
            None => None,
        };
        let shutting_down = tokio::select! {
            _ = wait_for(shutdown.clone()) => true,
            _ = elector.hold() => false,
        };
        let _ = stop_tx.send(true);
        // A reconcile stuck on the API server must not keep a former leader
        // reconciling (or its process from exiting): give it a bounded grace.
        let abort = controller.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), controller).await.is_err() {
            warn!("controller did not stop within 10 s; aborting it");
            abort.abort();
        }
        if let Some(a) = cluster_agent {
            let abort = a.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), a).await.is_err() {
                warn!("cluster agent did not stop within 10 s; aborting it");
                abort.abort();
            }
        }
        health.set_leader(false);
        if shutting_down {
            if let Err(e) = elector.release().await {
                warn!(error = %e, "releasing the lease failed");
            }
            return Ok(());
        }
        warn!("lost leadership; controller stopped, waiting to lead again");
    }
}
