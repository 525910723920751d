//! `otafleet`: the control plane server and its command-line client.
//!
//! Server-side commands (`serve`, `demo`, `sim`, `bench`) run in this process;
//! every other command talks HTTP to a server (`--server`/`OTAFLEET_URL`,
//! `--token`/`OTAFLEET_TOKEN`). Tables for people, `--output json` for scripts;
//! any failure prints one line to stderr and exits non-zero.
#![forbid(unsafe_code)]

mod bench;
mod client;
mod commands;
mod demo;
mod output;
mod serve;
mod watch;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use output::Format;

/// mimalloc: the server allocates many small short-lived objects per request
/// (headers, JSON); glibc's allocator cost ~10% of a busy server's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "otafleet", version, about = "Over-the-air rollouts to fleets of robots and IoT devices")]
pub struct Cli {
    /// URL of the otafleet server.
    #[arg(long, global = true, env = "OTAFLEET_URL", default_value = "http://127.0.0.1:8000")]
    pub server: String,
    /// PEM bundle of the CAs to trust for an https:// server (default: the Mozilla roots).
    #[arg(long, global = true, env = "OTAFLEET_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// API token (see `otafleet token create`).
    #[arg(long, global = true, env = "OTAFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the control plane (HTTP APIs, rollout driver, metrics).
    Serve(serve::ServeArgs),
    /// Start a server on a temporary database with a simulated fleet and run rollouts.
    Demo(demo::DemoArgs),
    /// Create a deployment job (tracker-compatible): a rollout over the fleet with a wave.
    Deploy(commands::DeployArgs),
    /// List deployment jobs, newest first (tracker-compatible).
    List,
    /// Roll devices back to VERSION (tracker-compatible).
    Rollback(commands::RollbackArgs),
    /// The device registry.
    #[command(subcommand)]
    Devices(commands::DevicesCmd),
    /// The release catalogue.
    #[command(subcommand)]
    Releases(commands::ReleasesCmd),
    /// Stored artifact blobs.
    #[command(subcommand)]
    Artifacts(commands::ArtifactsCmd),
    /// Rollouts: create, inspect, pause, resume, abort, promote, roll back.
    #[command(subcommand)]
    Rollouts(commands::RolloutsCmd),
    /// The audit log.
    Events(commands::EventsArgs),
    /// What the devices measure: aggregated telemetry.
    #[command(subcommand)]
    Telemetry(commands::TelemetryCmd),
    /// Alert rules over telemetry, and the alerts pending or firing.
    #[command(subcommand)]
    Alerts(commands::AlertsCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(commands::TokenCmd),
    /// Delegates: cluster agents and gateways that speak for their own devices.
    #[command(subcommand)]
    Delegates(commands::DelegatesCmd),
    /// Webhooks: events POSTed to a URL, signed, retried; their delivery log.
    #[command(subcommand)]
    Webhooks(commands::WebhooksCmd),
    /// Roll a version out to robot pods/workloads in the current kubeconfig's cluster.
    Update(otafleet_k8s::update::UpdateArgs),
    /// The FlashJob operator.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// ROS applications on Kubernetes: render, apply, status, update, delete.
    #[command(subcommand)]
    App(otafleet_k8s::app::AppCmd),
    /// Flash firmware to Akri-discovered devices, batch by batch, through FlashJobs.
    Flash(otafleet_k8s::flash::FlashArgs),
    /// Run N simulated devices against a server.
    Sim(otafleet_agent::sim::SimArgs),
    /// Run the device agent (the same as the `otafleet-agent` binary).
    Agent(otafleet_agent::agent::AgentArgs),
    /// Release-signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Measure performance (see docs/BENCHMARKS.md for the figures).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

// Parsed once at start; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum OperatorCmd {
    /// Run the FlashJob controller (leader-elected), with /metrics, /healthz, /readyz; with
    /// --server and --token also the cluster agent, which makes this cluster's workloads and
    /// boards targets of the control plane's rollouts.
    Run(otafleet_k8s::operator::OperatorArgs),
    /// Print the FlashJob CustomResourceDefinition (YAML).
    Crd,
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Write a new ed25519 key pair: the private key for `serve --signing-key`,
    /// the public key for the agents' `public_key_file`.
    Generate {
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OTAFLEET_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = std::env::var("OTAFLEET_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli, matches: clap::ArgMatches) -> Result<()> {
    match cli.cmd {
        Cmd::Serve(args) => {
            let sub = matches.subcommand_matches("serve").cloned().unwrap_or_default();
            serve::run(args, &sub).await
        }
        Cmd::Demo(args) => demo::run(args).await,
        Cmd::Sim(args) => {
            let args = otafleet_agent::sim::SimArgs { ca_file: cli.ca_file.clone(), ..args };
            otafleet_agent::sim::run(&cli.server, cli.token.as_deref(), args).await.map(|_| ())
        }
        Cmd::Bench(b) => bench::run(b).await,
        Cmd::Agent(args) => otafleet_agent::agent::main(args).await,
        Cmd::Keys(KeysCmd::Generate { out }) => {
            let (private, public) = otafleet_server::signing::generate(&out)?;
            println!("private key (keep secret; serve --signing-key): {}", private.display());
            println!("public key (agents' public_key_file): {}", public.display());
            Ok(())
        }
        Cmd::Operator(OperatorCmd::Run(mut args)) => {
            // The cluster agent talks to the server the CLI names, with its token.
            args.cluster.server = Some(cli.server.clone());
            args.cluster.token = cli.token.clone();
            args.cluster.server_ca_file = cli.ca_file.clone();
            otafleet_k8s::operator::run_operator(args).await
        }
        Cmd::Operator(OperatorCmd::Crd) => otafleet_k8s::operator::print_crd(),
        Cmd::Flash(args) => otafleet_k8s::flash::flash(args).await,
        Cmd::App(cmd) => otafleet_k8s::app::run_app(cmd, matches!(cli.output, Format::Json)).await,
        Cmd::Update(args) => commands::update(args, &cli.server, cli.token.clone(), cli.ca_file.as_deref()).await,
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "otafleet", &mut std::io::stdout());
            Ok(())
        }
        cmd => {
            let api = client::Api::new(&cli.server, cli.token.clone(), cli.ca_file.as_deref())?;
            commands::run(cmd, &api, cli.output).await
        }
    }
}

fn main() {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_tracing(match cli.cmd {
        Cmd::Serve(_) | Cmd::Operator(_) => "info,sqlx=warn,tower_http=warn,kube=warn",
        // The demo narrates itself; the server's gate warnings would interleave with it.
        Cmd::Demo(_) => "error",
        Cmd::Agent(_) => "info",
        _ => "warn",
    });
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli, matches)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
