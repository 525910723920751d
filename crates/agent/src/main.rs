//! `otafleet-agent`: the device agent. See `otafleet_agent::agent`.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "otafleet-agent",
    version,
    about = "otafleet device agent: enrolls, checks in, installs signed releases"
)]
struct Cli {
    #[command(flatten)]
    args: otafleet_agent::agent::AgentArgs,
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("OTAFLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(otafleet_agent::agent::main(cli.args)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
