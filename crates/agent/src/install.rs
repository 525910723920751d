//! Install handlers, chosen per release kind from the agent's config, and
//! the health check that decides whether an installed version stays.
//!
//! - **file** (A/B): `dir/slots/a` and `dir/slots/b`; `dir/current` is a
//!   symlink to the active slot. An install writes the inactive slot (each
//!   slot records its version in `.otafleet-version`), then switches
//!   `current` atomically (new symlink + rename). The previous slot stays
//!   untouched, so a rollback is one more switch. Activation is by version
//!   and idempotent, so a restarted agent can redo any step.
//! - **command**: runs the configured argv with the artifact paths and the
//!   version in the environment; exit 0 means installed. An optional
//!   rollback command puts the previous version back.

use crate::config::{HandlerConfig, HealthConfig};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

const VERSION_FILE: &str = ".otafleet-version";

/// A/B slots under one directory.
#[derive(Debug, Clone)]
pub struct Slots {
    pub dir: PathBuf,
}

impl Slots {
    pub fn new(dir: &Path) -> Slots {
        Slots { dir: dir.to_path_buf() }
    }

    pub fn current_link(&self) -> PathBuf {
        self.dir.join("current")
    }

    fn slot(&self, name: &str) -> PathBuf {
        self.dir.join("slots").join(name)
    }

    /// The active slot's name (`a` or `b`), if any.
    pub fn active(&self) -> Option<String> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        target.file_name().and_then(|n| n.to_str()).map(str::to_string)
    }

    fn version_of(&self, slot: &str) -> Option<String> {
        std::fs::read_to_string(self.slot(slot).join(VERSION_FILE)).ok().map(|s| s.trim().to_string())
    }

    /// The version `current` points to.
    pub fn running(&self) -> Option<String> {
        self.version_of(&self.active()?)
    }

    fn slot_with(&self, version: &str) -> Option<&'static str> {
        ["a", "b"].into_iter().find(|s| self.version_of(s).as_deref() == Some(version))
    }

    pub fn has(&self, version: &str) -> bool {
        self.slot_with(version).is_some()
    }

    /// Writes the artifacts into the inactive slot as `version` (replacing
    /// whatever that slot held). `current` is not touched.
    pub fn write_inactive(&self, version: &str, files: &[(String, PathBuf)]) -> Result<()> {
        let target = match self.active().as_deref() {
            Some("a") => "b",
            _ => "a",
        };
        let dir = self.slot(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing slot {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating slot {}", dir.display()))?;
        for (name, src) in files {
            let dst = dir.join(name);
            std::fs::copy(src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", dst.display()))?;
        }
        // The version file last: a slot without it is never activated.
        crate::state::write_atomic(&dir.join(VERSION_FILE), format!("{version}\n").as_bytes(), false)
    }

    /// Removes `current`: back to the state before the agent installed
    /// anything (the version that came with the device is in no slot).
    pub fn deactivate(&self) -> Result<()> {
        match std::fs::remove_file(self.current_link()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.current_link().display())),
        }
    }

    /// Points `current` at the slot holding `version`, atomically.
    pub fn activate(&self, version: &str) -> Result<()> {
        let slot = self.slot_with(version).ok_or_else(|| anyhow!("no slot holds version {version}"))?;
        if self.active().as_deref() == Some(slot) {
            return Ok(());
        }
        let tmp = self.dir.join("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        #[cfg(unix)]
        std::os::unix::fs::symlink(Path::new("slots").join(slot), &tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        #[cfg(not(unix))]
        bail!("the file handler needs symlinks (unix)");
        std::fs::rename(&tmp, self.current_link())
            .with_context(|| format!("switching {}", self.current_link().display()))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Environment given to install, rollback and health commands.
#[derive(Debug, Clone, Default)]
pub struct InstallEnv {
    pub version: String,
    pub previous_version: String,
    pub artifacts: Vec<PathBuf>,
    /// The file handler's `current` directory.
    pub current: Option<PathBuf>,
}

impl InstallEnv {
    fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.env("OTAFLEET_VERSION", &self.version).env("OTAFLEET_PREVIOUS_VERSION", &self.previous_version);
        if let Some(first) = self.artifacts.first() {
            cmd.env("OTAFLEET_ARTIFACT", first);
        }
        let all: Vec<String> = self.artifacts.iter().map(|p| p.display().to_string()).collect();
        cmd.env("OTAFLEET_ARTIFACTS", all.join("\n"));
        if let Some(c) = &self.current {
            cmd.env("OTAFLEET_CURRENT", c);
        }
    }
}

/// Runs argv with a timeout; Ok if it exits 0, else the exit status and the
/// end of its stderr.
pub async fn run_command(argv: &[String], env: &InstallEnv, timeout: Duration) -> Result<()> {
    let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    env.apply(&mut cmd);
    let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.with_context(|| format!("running {program}"))?,
        Err(_) => bail!("{program} did not finish within {timeout:?} (killed)"),
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr.trim().chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
    bail!("{program} exited with {}{}", out.status, if tail.is_empty() { String::new() } else { format!(": {tail}") })
}

/// The configured install handler for one release kind.
#[derive(Debug, Clone)]
pub enum Handler {
    File(Slots),
    Command { command: Vec<String>, rollback: Option<Vec<String>>, timeout: Duration },
}

impl Handler {
    pub fn from_config(c: &HandlerConfig) -> Handler {
        match c {
            HandlerConfig::File { dir } => Handler::File(Slots::new(dir)),
            HandlerConfig::Command { command, rollback, timeout_secs } => Handler::Command {
                command: command.clone(),
                rollback: rollback.clone(),
                timeout: Duration::from_secs((*timeout_secs).max(1)),
            },
        }
    }

    /// Whether the version is already on the device, so a rollback needs no download.
    pub fn has(&self, version: &str) -> bool {
        match self {
            Handler::File(s) => s.has(version),
            Handler::Command { .. } => false,
        }
    }

    /// Installs without activating (file: write the inactive slot) — the
    /// step that is safe to redo after a restart.
    pub async fn prepare(&self, env: &InstallEnv, names: &[String]) -> Result<()> {
        match self {
            Handler::File(s) => {
                let files: Vec<(String, PathBuf)> = names.iter().cloned().zip(env.artifacts.iter().cloned()).collect();
                let (s, v) = (s.clone(), env.version.clone());
                tokio::task::spawn_blocking(move || s.write_inactive(&v, &files)).await.context("install task")?
            }
            Handler::Command { .. } => Ok(()),
        }
    }

    /// Makes `env.version` the running version.
    pub async fn activate(&self, env: &InstallEnv) -> Result<()> {
        match self {
            Handler::File(s) => s.activate(&env.version),
            Handler::Command { command, timeout, .. } => run_command(command, env, *timeout).await,
        }
    }

    /// On resuming an action recorded as activated: makes `env.version` the
    /// running one where doing so again is harmless. The agent records the
    /// phase before it switches (so a crash in between rolls back), and may
    /// have stopped in between: a slot switch is repeated (it is idempotent);
    /// an install command is not run twice.
    pub async fn reactivate(&self, env: &InstallEnv) -> Result<()> {
        match self {
            Handler::File(s) => s.activate(&env.version),
            Handler::Command { .. } => Ok(()),
        }
    }

    /// Puts `version` back after a failed health check.
    pub async fn roll_back_to(&self, version: &str, env: &InstallEnv) -> Result<()> {
        match self {
            // A version in no slot came with the device, before the agent
            // installed anything: going back to it means no `current` at all.
            Handler::File(s) if !s.has(version) => s.deactivate(),
            Handler::File(s) => s.activate(version),
            Handler::Command { rollback: Some(cmd), timeout, .. } => {
                let env =
                    InstallEnv { version: version.to_string(), previous_version: env.version.clone(), ..env.clone() };
                run_command(cmd, &env, *timeout).await
            }
            Handler::Command { rollback: None, .. } => bail!("no rollback command is configured for this kind"),
        }
    }

    pub fn current_dir(&self) -> Option<PathBuf> {
        match self {
            Handler::File(s) => Some(s.current_link()),
            Handler::Command { .. } => None,
        }
    }
}

/// Runs the health check until it passes or its attempts run out; the error
/// is the last attempt's reason.
pub async fn health_check(cfg: &HealthConfig, env: &InstallEnv, http: &reqwest::Client) -> Result<(), String> {
    if cfg.url.is_none() && cfg.command.is_none() {
        return Ok(());
    }
    let mut last = String::new();
    for attempt in 1..=cfg.attempts() {
        let r = if let Some(url) = &cfg.url {
            match http.get(url).timeout(cfg.timeout()).send().await {
                Ok(res) if res.status().is_success() => Ok(()),
                Ok(res) => Err(format!("GET {url} answered {}", res.status())),
                Err(e) => Err(format!("GET {url}: {e}")),
            }
        } else if let Some(cmd) = &cfg.command {
            run_command(cmd, env, cfg.timeout()).await.map_err(|e| format!("{e:#}"))
        } else {
            Ok(())
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::info!(attempt, error = %e, "health check failed");
                last = e;
            }
        }
        if attempt < cfg.attempts() {
            tokio::time::sleep(cfg.interval()).await;
        }
    }
    Err(format!("health check failed {} times: {last}", cfg.attempts()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, body: &str) -> (String, PathBuf) {
        let p = dir.join(format!("src-{name}"));
        std::fs::write(&p, body).unwrap();
        (name.to_string(), p)
    }

    #[test]
    fn ab_slots_switch_atomically_and_keep_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = Slots::new(&dir.path().join("app"));
        assert_eq!(s.running(), None);
        s.write_inactive("1.0.0", &[file(dir.path(), "fw.bin", "one")]).unwrap();
        assert_eq!(s.running(), None, "writing a slot activates nothing");
        s.activate("1.0.0").unwrap();
        assert_eq!(s.running().as_deref(), Some("1.0.0"));
        s.write_inactive("2.0.0", &[file(dir.path(), "fw.bin", "two")]).unwrap();
        s.activate("2.0.0").unwrap();
        assert_eq!(std::fs::read_to_string(s.current_link().join("fw.bin")).unwrap(), "two");
        // Roll back: the previous slot is still there.
        s.activate("1.0.0").unwrap();
        assert_eq!(std::fs::read_to_string(s.current_link().join("fw.bin")).unwrap(), "one");
        s.activate("1.0.0").unwrap();
        // The next install overwrites the inactive slot (2.0.0), never the running one.
        s.write_inactive("3.0.0", &[file(dir.path(), "fw.bin", "three")]).unwrap();
        assert!(!s.has("2.0.0") && s.has("1.0.0") && s.has("3.0.0"));
        assert!(s.activate("9.9.9").unwrap_err().to_string().contains("no slot holds"));
    }

    #[tokio::test]
    async fn a_resumed_activation_switches_a_slot_again_and_runs_no_command_twice() {
        let dir = tempfile::tempdir().unwrap();
        let s = Slots::new(&dir.path().join("app"));
        s.write_inactive("1.0.0", &[file(dir.path(), "fw.bin", "one")]).unwrap();
        s.activate("1.0.0").unwrap();
        // Stopped after recording "activated", before the switch.
        s.write_inactive("2.0.0", &[file(dir.path(), "fw.bin", "two")]).unwrap();
        let env = InstallEnv { version: "2.0.0".into(), previous_version: "1.0.0".into(), ..Default::default() };
        let h = Handler::File(s.clone());
        h.reactivate(&env).await.unwrap();
        assert_eq!(s.running().as_deref(), Some("2.0.0"));
        h.reactivate(&env).await.unwrap();
        assert_eq!(s.running().as_deref(), Some("2.0.0"), "again: nothing changes");
        let out = dir.path().join("ran");
        let cmd = Handler::Command {
            command: vec!["sh".into(), "-c".into(), format!("echo x >> {}", out.display())],
            rollback: None,
            timeout: Duration::from_secs(5),
        };
        cmd.reactivate(&env).await.unwrap();
        assert!(!out.exists(), "an install command is not run again");
    }

    #[tokio::test]
    async fn commands_get_the_environment_and_failures_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let env = InstallEnv {
            version: "2.0.0".into(),
            previous_version: "1.0.0".into(),
            artifacts: vec![PathBuf::from("/tmp/fw.bin")],
            current: None,
        };
        let script =
            format!("echo \"$OTAFLEET_VERSION $OTAFLEET_PREVIOUS_VERSION $OTAFLEET_ARTIFACT\" > {}", out.display());
        let argv = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        run_command(&argv(&script), &env, Duration::from_secs(5)).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "2.0.0 1.0.0 /tmp/fw.bin");
        let e = run_command(&argv("echo flash error >&2; exit 3"), &env, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("exit status: 3") && e.to_string().contains("flash error"), "{e}");
        let e = run_command(&argv("sleep 5"), &env, Duration::from_millis(200)).await.unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
    }

    #[tokio::test]
    async fn health_checks_retry_then_report_the_last_reason() {
        let http = reqwest::Client::new();
        let env = InstallEnv::default();
        let cfg = HealthConfig {
            command: Some(vec!["sh".into(), "-c".into(), "echo not ready >&2; exit 1".into()]),
            retries: Some(2),
            interval_secs: Some(0),
            ..Default::default()
        };
        let e = health_check(&cfg, &env, &http).await.unwrap_err();
        assert!(e.contains("2 times") && e.contains("not ready"), "{e}");
        let ok = HealthConfig { command: Some(vec!["true".into()]), ..Default::default() };
        assert!(health_check(&ok, &env, &http).await.is_ok());
        let url =
            HealthConfig { url: Some("http://127.0.0.1:9/health".into()), retries: Some(1), ..Default::default() };
        assert!(health_check(&url, &env, &http).await.unwrap_err().contains("GET http://127.0.0.1:9/health"));
    }
}
