//! What the agent remembers across restarts, in its state dir:
//!
//! - `identity.json` (mode 0600): device id, device token, labels — written
//!   once at enrollment.
//! - `state.json`: the running and previous versions, the newest version
//!   ever installed (below which only a signed rollback order may go), the
//!   sequence counter, the action in flight and its phase, and the offline
//!   queue of status reports not yet delivered (sent in order when the
//!   server is back).
//!
//! Both are written atomically (temp file, fsync, rename, fsync of the
//! directory), so a power cut leaves the old or the new file, never half.

use anyhow::{Context, Result};
use otafleet_core::protocol::StatusReport;
use otafleet_core::{ActionKind, ActionState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub device_id: Uuid,
    pub token: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// How far an install got; decides what a restarted agent does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Fetching artifacts; partial files are kept and resumed.
    Downloading,
    /// Writing the inactive slot / running the install command. Nothing
    /// visible changed yet: redo.
    Installing,
    /// The new version was (or was about to be) activated and awaits its
    /// health check: check again, roll back on failure.
    Activated,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inflight {
    pub action_id: i64,
    pub kind: ActionKind,
    pub version: String,
    /// What ran before this action (the rollback target).
    pub from_version: String,
    pub phase: Phase,
    /// Last state reported for this action (not reported twice).
    pub reported: Option<ActionState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub current_version: String,
    pub previous_version: Option<String>,
    /// The newest version this device ever installed and found healthy: an
    /// install order for an older one is refused (a replayed old release);
    /// only a signed rollback order may go below it. Absent in state files
    /// written before it existed.
    #[serde(default)]
    pub newest_version: Option<String>,
    /// Last sequence number used in a status report.
    pub seq: i64,
    pub inflight: Option<Inflight>,
    /// Reports not yet accepted by the server, oldest first.
    pub queue: VecDeque<StatusReport>,
    /// Recently finished actions: (action id, seq of the final report). An
    /// order re-sent with a lower `last_seq` is our own undelivered report,
    /// not a retry, and is not redone.
    pub finished: VecDeque<(i64, i64)>,
}

/// Most finished actions remembered.
const FINISHED_KEPT: usize = 32;

impl AgentState {
    pub fn new(version: &str) -> Self {
        AgentState {
            current_version: version.to_string(),
            previous_version: None,
            newest_version: None,
            seq: 0,
            inflight: None,
            queue: VecDeque::new(),
            finished: VecDeque::new(),
        }
    }

    /// Queues a report with the next sequence number (at least above `floor`,
    /// the server's last accepted one).
    pub fn enqueue(&mut self, action_id: i64, floor: i64, state: ActionState, message: Option<String>) -> i64 {
        self.seq = self.seq.max(floor) + 1;
        self.queue.push_back(StatusReport {
            action_id,
            seq: self.seq,
            state,
            message,
            current_version: Some(self.current_version.clone()),
        });
        self.seq
    }

    /// `version` was installed and is healthy: remember it if it is the newest yet.
    pub fn installed(&mut self, version: &str) {
        let newer = self
            .newest_version
            .as_deref()
            .is_none_or(|n| otafleet_core::protocol::compare_versions(version, n) == std::cmp::Ordering::Greater);
        if newer {
            self.newest_version = Some(version.to_string());
        }
    }

    pub fn mark_finished(&mut self, action_id: i64, seq: i64) {
        self.finished.retain(|(a, _)| *a != action_id);
        self.finished.push_back((action_id, seq));
        while self.finished.len() > FINISHED_KEPT {
            self.finished.pop_front();
        }
    }

    /// Whether an order for this action is our own final report not yet
    /// seen by the server (as opposed to a retry the server asks for).
    pub fn already_finished(&self, action_id: i64, server_last_seq: i64) -> bool {
        self.finished.iter().any(|(a, s)| *a == action_id && server_last_seq < *s)
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The agent's files in its state dir.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn open(root: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(root.join("downloads"))
            .with_context(|| format!("creating the state dir {}", root.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700));
        }
        Ok(StateDir { root: root.to_path_buf() })
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let p = self.root.join(name);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{} is corrupt; remove it to start over", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    fn write<T: Serialize>(&self, name: &str, v: &T, private: bool) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(v).context("serializing agent state")?;
        write_atomic(&self.root.join(name), &bytes, private)
    }

    pub fn identity(&self) -> Result<Option<Identity>> {
        self.read("identity.json")
    }

    pub fn save_identity(&self, id: &Identity) -> Result<()> {
        self.write("identity.json", id, true)
    }

    pub fn state(&self) -> Result<Option<AgentState>> {
        self.read("state.json")
    }

    pub fn save_state(&self, s: &AgentState) -> Result<()> {
        self.write("state.json", s, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_sequence_numbers_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        assert_eq!(sd.state().unwrap(), None);
        let mut s = AgentState::new("1.0.0");
        assert_eq!(s.enqueue(7, 0, ActionState::Downloading, None), 1);
        assert_eq!(s.enqueue(7, 5, ActionState::Installing, None), 6, "above the server's last seq");
        assert_eq!(s.enqueue(8, 0, ActionState::Downloading, None), 7);
        s.installed("2.0.0");
        s.installed("1.5.0");
        assert_eq!(s.newest_version.as_deref(), Some("2.0.0"), "only ever grows");
        s.installed("2.0.1");
        assert_eq!(s.newest_version.as_deref(), Some("2.0.1"));
        s.mark_finished(7, 6);
        assert!(s.already_finished(7, 5));
        assert!(!s.already_finished(7, 6), "the server saw our final report: a new order is a retry");
        sd.save_state(&s).unwrap();
        assert_eq!(sd.state().unwrap().unwrap(), s);
        assert!(!dir.path().join("state.tmp").exists());
    }

    #[test]
    fn state_files_from_before_the_newest_version_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        let old =
            r#"{"current_version":"1.0.0","previous_version":null,"seq":3,"inflight":null,"queue":[],"finished":[]}"#;
        std::fs::write(dir.path().join("state.json"), old).unwrap();
        let s = sd.state().unwrap().unwrap();
        assert_eq!((s.current_version.as_str(), s.newest_version, s.seq), ("1.0.0", None, 3));
    }

    #[test]
    fn identity_is_private_and_corruption_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        let id = Identity { device_id: Uuid::nil(), token: "dev_x".into(), name: "n".into(), labels: BTreeMap::new() };
        sd.save_identity(&id).unwrap();
        assert_eq!(sd.identity().unwrap(), Some(id));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("identity.json")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("state.json"), "{").unwrap();
        assert!(format!("{:#}", sd.state().unwrap_err()).contains("corrupt"));
    }
}
