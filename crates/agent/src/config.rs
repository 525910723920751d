//! The agent's configuration: one TOML file, read once at start into
//! [`AgentConfig`] and passed down. Relative paths are resolved against the
//! file's directory, so a config and its key can travel together.
//!
//! ```toml
//! server = "https://otafleet.example:8443"
//! ca_file = "fleet-ca.pem"              # CAs trusted for the server (default: the Mozilla roots)
//! # server_cert_sha256 = "AB:CD:…"      # or pin the server's certificate instead
//! # allow_http = true                   # only for a plain http:// server on a trusted network
//! state_dir = "/var/lib/otafleet-agent"
//! enrollment_token = "enr_…"            # or enrollment_token_file; used once
//! public_key_file = "otafleet-signing.pub"  # or public_key = "<hex>"
//! initial_version = "1.0.0"             # before anything was installed
//! clock_skew_secs = 60                  # signed orders accepted this long past expiry
//! mqtt_url = "mqtts://broker:8883"      # optional push (mqtt:// for plain TCP)
//! # mqtt_ca_file = "broker-ca.pem"      # the broker's CA (default: ca_file, else the Mozilla roots)
//! [labels]                              # proposed at enrollment
//! site = "lab"
//! [health]                              # optional; url or command
//! command = ["sh", "-c", "curl -fs localhost:9000/health"]
//! [telemetry]                           # optional: forward measurements
//! scrape_url = "http://127.0.0.1:9100/metrics"   # a robot app's Prometheus endpoint
//! metrics = ["cpu_temp_c", "loop_latency_ms"]    # what of it to forward
//! interval_secs = 10
//! [handlers.file]                       # per release kind
//! type = "file"
//! dir = "/opt/app"
//! [handlers.firmware]
//! type = "command"
//! command = ["/usr/local/bin/flash", "--image"]   # artifact path in $OTAFLEET_ARTIFACT
//! ```

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL of the otafleet server (`https://`; `http://` only with `allow_http`).
    pub server: String,
    /// PEM bundle of the CAs the server's certificate must chain to, instead
    /// of the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the server's own certificate: that certificate
    /// is accepted from the server's host whatever its issuer, name or dates,
    /// and no other (`openssl x509 -noout -fingerprint -sha256 -in cert.pem`).
    pub server_cert_sha256: Option<String>,
    /// Talk plain HTTP to an `http://` server (a trusted network only: the
    /// agent still verifies signed releases and orders, but a listener learns
    /// what the device runs and could hold updates back).
    #[serde(default)]
    pub allow_http: bool,
    /// Where the agent keeps its identity, state, report queue and downloads.
    pub state_dir: PathBuf,
    /// Enrollment token (first start only; ignored once enrolled).
    pub enrollment_token: Option<String>,
    pub enrollment_token_file: Option<PathBuf>,
    /// Name to enroll with (default: the device id).
    pub name: Option<String>,
    /// Labels proposed at enrollment (the token's labels win).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Hex ed25519 public key releases must be signed with.
    pub public_key: Option<String>,
    pub public_key_file: Option<PathBuf>,
    /// Seconds a signed order is still accepted after its expiry, for a device
    /// clock behind the server's (default 60).
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
    /// Device type checked against a release's compatible types (default: the
    /// `device_type` label the device was enrolled with).
    pub device_type: Option<String>,
    /// Version running before the agent installed anything.
    #[serde(default = "default_version")]
    pub initial_version: String,
    /// Seconds between check-ins (default: what the server asks for).
    pub poll_interval_secs: Option<u64>,
    /// Random spread of each wait, as a fraction of it (default 0.1).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// `mqtt://host:port` or `mqtts://host:port`: wake up on pushes on
    /// `otafleet/<device-id>/cmd`.
    pub mqtt_url: Option<String>,
    /// PEM bundle of the CA of an `mqtts://` broker (default: `ca_file`,
    /// else the Mozilla roots).
    pub mqtt_ca_file: Option<PathBuf>,
    /// Cap on download speed in bytes per second (constrained links).
    pub download_rate_limit: Option<u64>,
    /// Seconds without data before a download is abandoned (and later resumed).
    #[serde(default = "default_stall")]
    pub download_stall_secs: u64,
    #[serde(default)]
    pub health: HealthConfig,
    /// Telemetry to forward (none without this section).
    pub telemetry: Option<TelemetryConfig>,
    /// Install handler per release kind (`file`, `command`, `firmware`, …).
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerConfig>,
}

fn default_version() -> String {
    "0.0.0".into()
}
fn default_clock_skew() -> u64 {
    60
}
fn default_jitter() -> f64 {
    0.1
}
fn default_stall() -> u64 {
    30
}

/// How to tell that an installed version works. With neither `url` nor
/// `command`, an install that the handler accepted counts as healthy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Healthy when a GET answers 2xx.
    pub url: Option<String>,
    /// Healthy when it exits 0 (env: OTAFLEET_VERSION, OTAFLEET_CURRENT).
    pub command: Option<Vec<String>>,
    /// Per attempt (default 10 s).
    pub timeout_secs: Option<u64>,
    /// Attempts before declaring the version unhealthy (default 3).
    pub retries: Option<u32>,
    /// Pause between attempts (default 2 s).
    pub interval_secs: Option<u64>,
}

impl HealthConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(10).max(1))
    }
    pub fn attempts(&self) -> u32 {
        self.retries.unwrap_or(3).max(1)
    }
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs.unwrap_or(2))
    }
}

/// What the agent forwards to `POST /device/v1/telemetry` every
/// `interval_secs`: the `metrics` named, scraped from `scrape_url` (a
/// Prometheus text endpoint), and the agent's own measurements (install
/// durations and health check results, see `crate::telemetry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An `http://` or `https://` URL answering the Prometheus text format.
    pub scrape_url: Option<String>,
    /// Names of the scraped series to forward (every series of each name,
    /// with its labels). Required with `scrape_url`.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Seconds between two scrapes and sends (default 10, at least 1).
    #[serde(default = "default_telemetry_interval")]
    pub interval_secs: u64,
    /// Forward the agent's own measurements (default true).
    #[serde(default = "default_true")]
    pub own: bool,
}

fn default_telemetry_interval() -> u64 {
    10
}
fn default_true() -> bool {
    true
}

impl TelemetryConfig {
    fn check(&self) -> Result<()> {
        if let Some(u) = &self.scrape_url {
            let url = reqwest::Url::parse(u).map_err(|e| anyhow::anyhow!("telemetry.scrape_url '{u}': {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                bail!("telemetry.scrape_url must be an http:// or https:// URL, got '{u}'");
            }
            if self.metrics.is_empty() {
                bail!("telemetry.metrics: name the scraped metrics to forward");
            }
        } else if !self.metrics.is_empty() {
            bail!("telemetry.metrics needs telemetry.scrape_url to scrape them from");
        }
        for m in &self.metrics {
            otafleet_core::telemetry::validate_metric_name(m)
                .map_err(|e| anyhow::anyhow!("telemetry.metrics: '{m}': {e}"))?;
        }
        if self.interval_secs == 0 {
            bail!("telemetry.interval_secs must be at least 1");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HandlerConfig {
    /// A/B slots under `dir`: artifacts are written to the inactive slot and
    /// `dir/current` is switched atomically; the previous slot stays for rollback.
    File { dir: PathBuf },
    /// Runs `command` (argv) with OTAFLEET_ARTIFACT, OTAFLEET_ARTIFACTS,
    /// OTAFLEET_VERSION and OTAFLEET_PREVIOUS_VERSION in the environment;
    /// exit 0 = installed. `rollback` (optional) is run with OTAFLEET_VERSION
    /// set to the version to return to after a failed health check.
    Command {
        command: Vec<String>,
        rollback: Option<Vec<String>>,
        #[serde(default = "default_command_timeout")]
        timeout_secs: u64,
    },
}

fn default_command_timeout() -> u64 {
    600
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl AgentConfig {
    /// What the server's certificate is checked against.
    pub fn trust(&self) -> Result<otafleet_rt::tls::Trust> {
        let pin = match &self.server_cert_sha256 {
            Some(fp) => {
                let url = reqwest::Url::parse(&self.server)?;
                let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
                let sha256 = otafleet_rt::tls::parse_fingerprint(fp).context("server_cert_sha256")?;
                Some(otafleet_rt::tls::Pin { host: host.to_string(), sha256 })
            }
            None => None,
        };
        Ok(otafleet_rt::tls::Trust { ca_file: self.ca_file.clone(), pin })
    }

    /// What an `mqtts://` broker's certificate is checked against.
    pub fn mqtt_trust(&self) -> otafleet_rt::tls::Trust {
        otafleet_rt::tls::Trust::ca(self.mqtt_ca_file.clone().or_else(|| self.ca_file.clone()))
    }

    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<AgentConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &base).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str, base: &Path) -> Result<AgentConfig> {
        let mut c: AgentConfig = toml::from_str(text)?;
        let url = reqwest::Url::parse(&c.server)
            .map_err(|e| anyhow::anyhow!("server must be an https:// URL, got '{}': {e}", c.server))?;
        match url.scheme() {
            "https" => {}
            "http" if c.allow_http => {}
            "http" => bail!(
                "server is plain http:// ('{}'): use https://, or set allow_http = true on a trusted network",
                c.server
            ),
            _ => bail!("server must be an https:// URL, got '{}'", c.server),
        }
        if url.host_str().is_none() {
            bail!("server '{}' names no host", c.server);
        }
        if c.server_cert_sha256.is_some() && url.scheme() != "https" {
            bail!("server_cert_sha256 pins the certificate of an https:// server");
        }
        c.server = c.server.trim_end_matches('/').to_string();
        c.state_dir = resolve(base, &c.state_dir);
        c.ca_file = c.ca_file.as_deref().map(|p| resolve(base, p));
        c.mqtt_ca_file = c.mqtt_ca_file.as_deref().map(|p| resolve(base, p));
        if let Some(p) = &c.enrollment_token_file {
            let p = resolve(base, p);
            let t = std::fs::read_to_string(&p)
                .with_context(|| format!("reading enrollment_token_file {}", p.display()))?;
            c.enrollment_token = Some(t.trim().to_string());
        }
        if let Some(p) = &c.public_key_file {
            let p = resolve(base, p);
            let k = std::fs::read_to_string(&p).with_context(|| format!("reading public_key_file {}", p.display()))?;
            c.public_key = Some(k.trim().to_string());
        }
        if c.public_key.is_none() {
            bail!("public_key or public_key_file is required: the agent installs only signed releases");
        }
        crate::verify::parse_public_key(c.public_key.as_deref().unwrap_or_default())?;
        if !(0.0..=1.0).contains(&c.jitter) {
            bail!("jitter must be between 0 and 1");
        }
        // Read the certificates now, so a bad file stops the agent at start.
        c.trust().context("server trust (ca_file, server_cert_sha256)")?.client_config()?;
        if let Some(u) = &c.mqtt_url {
            let url = crate::push::parse_broker(u)?;
            if url.tls {
                c.mqtt_trust().client_config().context("mqtt_ca_file")?;
            } else if c.mqtt_ca_file.is_some() {
                bail!("mqtt_ca_file is only used with an mqtts:// mqtt_url");
            }
        }
        if let Some(t) = &c.telemetry {
            t.check()?;
        }
        if c.health.url.is_some() && c.health.command.is_some() {
            bail!("health: give url or command, not both");
        }
        if c.health.command.as_ref().is_some_and(Vec::is_empty) {
            bail!("health.command must not be empty");
        }
        for (kind, h) in c.handlers.iter_mut() {
            match h {
                HandlerConfig::File { dir } => *dir = resolve(base, dir),
                HandlerConfig::Command { command, rollback, .. } => {
                    if command.is_empty() || rollback.as_ref().is_some_and(Vec::is_empty) {
                        bail!("handlers.{kind}: command and rollback must not be empty lists");
                    }
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";

    #[test]
    fn a_full_config_parses_with_paths_resolved() {
        let text = format!(
            r#"
            server = "http://127.0.0.1:8000/"
            allow_http = true
            state_dir = "state"
            enrollment_token = "enr_x"
            public_key = "{KEY}"
            mqtt_url = "mqtt://127.0.0.1:1883"
            [labels]
            site = "a"
            [health]
            command = ["true"]
            retries = 2
            [handlers.file]
            type = "file"
            dir = "app"
            [handlers.firmware]
            type = "command"
            command = ["sh", "-c", "cp $OTAFLEET_ARTIFACT /tmp/x"]
            "#
        );
        let c = AgentConfig::parse(&text, Path::new("/etc/ota")).unwrap();
        assert_eq!(c.server, "http://127.0.0.1:8000");
        assert_eq!(c.state_dir, Path::new("/etc/ota/state"));
        assert!(matches!(&c.handlers["file"], HandlerConfig::File { dir } if dir == Path::new("/etc/ota/app")));
        assert!(matches!(&c.handlers["firmware"], HandlerConfig::Command { timeout_secs: 600, .. }));
        assert_eq!(c.health.attempts(), 2);
    }

    #[test]
    fn telemetry_is_checked_at_start() {
        let base = format!("server = \"http://h\"\nallow_http = true\nstate_dir = \"s\"\npublic_key = \"{KEY}\"\n");
        let ok =
            format!("{base}[telemetry]\nscrape_url = \"http://127.0.0.1:9100/metrics\"\nmetrics = [\"cpu_temp_c\"]\n");
        let t = AgentConfig::parse(&ok, Path::new("/")).unwrap().telemetry.unwrap();
        assert_eq!((t.interval_secs, t.own, t.metrics.len()), (10, true, 1));
        // Own measurements only.
        let own = format!("{base}[telemetry]\ninterval_secs = 5\n");
        assert!(AgentConfig::parse(&own, Path::new("/")).unwrap().telemetry.unwrap().scrape_url.is_none());
        for (bad, says) in [
            ("scrape_url = \"ftp://x/m\"\nmetrics = [\"a\"]", "http:// or https://"),
            ("scrape_url = \"http://x/m\"", "name the scraped metrics"),
            ("metrics = [\"a\"]", "needs telemetry.scrape_url"),
            ("scrape_url = \"http://x/m\"\nmetrics = [\"9a\"]", "telemetry.metrics: '9a'"),
            ("interval_secs = 0", "at least 1"),
            ("scrape = 1", "unknown field"),
        ] {
            let e = format!(
                "{:#}",
                AgentConfig::parse(&format!("{base}[telemetry]\n{bad}\n"), Path::new("/")).unwrap_err()
            );
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_pinned_server_is_pinned_by_its_host() {
        let fp = "AB:".repeat(31) + "AB";
        let text = format!(
            "server = \"https://[::1]:8443\"\nstate_dir = \"s\"\npublic_key = \"{KEY}\"\nserver_cert_sha256 = \"{fp}\"\nca_file = \"ca.pem\"\nmqtt_url = \"mqtts://b\"\n"
        );
        // The CA file is read at parse time; check the pin without it.
        let c: AgentConfig = toml::from_str(&text).unwrap();
        let pin = c.trust().unwrap().pin.unwrap();
        assert_eq!(pin.host, "::1");
        assert_eq!(pin.sha256, [0xab; 32]);
        assert_eq!(c.mqtt_trust().ca_file, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let err = |t: &str| format!("{:#}", AgentConfig::parse(t, Path::new("/")).unwrap_err());
        assert!(err(r#"server = "x"
state_dir = "s""#)
        .contains("https://"));
        assert!(err(r#"server = "ftp://a"
state_dir = "s""#)
        .contains("https://"));
        assert!(err(&format!("server = \"http://a\"\nstate_dir = \"s\"\npublic_key = \"{KEY}\"\n"))
            .contains("set allow_http = true"));
        assert!(err(r#"server = "https://a"
state_dir = "s""#)
        .contains("public_key"));
        assert!(err(r#"server = "https://a"
state_dir = "s"
public_key = "abc""#)
        .contains("public key"));
        let base = format!("server = \"https://a\"\nstate_dir = \"s\"\npublic_key = \"{KEY}\"\n");
        assert!(err(&format!("{base}ca_file = \"/nonexistent/ca.pem\"\n")).contains("/nonexistent/ca.pem"));
        assert!(err(&format!("{base}server_cert_sha256 = \"abc\"\n")).contains("64 hex digits"));
        assert!(err(&format!("{base}mqtt_url = \"mqtt://b\"\nmqtt_ca_file = \"ca.pem\"\n"))
            .contains("only used with an mqtts://"));
        let plain = format!("server = \"http://a\"\nallow_http = true\nstate_dir = \"s\"\npublic_key = \"{KEY}\"\n");
        assert!(err(&format!("{plain}server_cert_sha256 = \"{}\"\n", "ab".repeat(32))).contains("https:// server"));
        let t = format!(
            "server = \"https://a\"\nstate_dir = \"s\"\npublic_key = \"{KEY}\"\n[handlers.x]\ntype = \"nope\"\n"
        );
        assert!(err(&t).contains("unknown variant"));
        let t = format!("server = \"https://a\"\nstate_dir = \"s\"\npublic_key = \"{KEY}\"\nsurprise = 1\n");
        assert!(err(&t).contains("unknown field"));
    }
}
