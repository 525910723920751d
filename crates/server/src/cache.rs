//! In-memory caches on the hot paths, each safe with several replicas over
//! one PostgreSQL because each is either immutable, short-lived, or validated
//! against the database:
//!
//! - API and device tokens → identity, kept 30 s (a deleted device is dropped at once).
//! - The last known version of a device, kept 30 s: a check-in that reports the
//!   same version needs no write transaction; its last-seen time and health are
//!   queued here and written in one batch by [`Caches::flush_seen`].
//! - Releases by version: releases are immutable once created.
//! - The rendered `GET /ota/jobs` body, validated by the newest event id
//!   (every rollout change writes an event), also used as its ETag.
//! - On SQLite only (one process owns the database): the *inbox*, the devices
//!   that may have an action in flight. An idle device's check-in is then
//!   answered without touching the database. The driver adds devices after it
//!   commits a release; a check-in that finds nothing removes its device only if
//!   no add happened since it looked (a generation number), so a release is
//!   never hidden.

use otafleet_core::DeviceHealth;
use otafleet_store::{Release, Store, TokenRecord};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Live {
    pub version: Option<String>,
    fetched: Instant,
}

/// What the inbox says about a device.
pub enum Inbox {
    /// No inbox (several replicas may release actions): ask the database.
    Disabled,
    /// Nothing in flight for this device.
    Empty,
    /// Maybe something in flight; the generation to pass to [`Caches::inbox_clear`].
    Maybe(u64),
}

#[derive(Default)]
pub struct Caches {
    inbox: Option<Mutex<HashMap<Uuid, u64>>>,
    generation: std::sync::atomic::AtomicU64,
    tokens: RwLock<HashMap<String, (TokenRecord, Instant)>>,
    device_tokens: RwLock<HashMap<String, (Uuid, Instant)>>,
    devices: RwLock<HashMap<Uuid, Live>>,
    seen: Mutex<HashMap<Uuid, DeviceHealth>>,
    releases: RwLock<HashMap<String, Release>>,
    jobs: Mutex<Option<(i64, axum::body::Bytes)>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Caches {
    /// Caches with the check-in inbox on or off (on only for a single-process database).
    pub fn new(inbox: bool) -> Self {
        Caches { inbox: inbox.then(Default::default), ..Default::default() }
    }

    /// Marks devices as possibly having an action in flight (after the commit).
    pub fn inbox_add(&self, devices: &[Uuid]) {
        if let Some(inbox) = &self.inbox {
            let mut m = inbox.lock().unwrap_or_else(|p| p.into_inner());
            for d in devices {
                let g = self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                m.insert(*d, g);
            }
        }
    }

    pub fn inbox(&self, device: Uuid) -> Inbox {
        match &self.inbox {
            None => Inbox::Disabled,
            Some(inbox) => match inbox.lock().unwrap_or_else(|p| p.into_inner()).get(&device) {
                Some(g) => Inbox::Maybe(*g),
                None => Inbox::Empty,
            },
        }
    }

    /// Forgets a device found idle, unless it was added again since `generation`.
    pub fn inbox_clear(&self, device: Uuid, generation: u64) {
        if let Some(inbox) = &self.inbox {
            let mut m = inbox.lock().unwrap_or_else(|p| p.into_inner());
            if m.get(&device) == Some(&generation) {
                m.remove(&device);
            }
        }
    }

    pub async fn token(&self, store: &Store, secret: &str) -> Result<Option<TokenRecord>, otafleet_store::StoreError> {
        if let Some((t, at)) = read(&self.tokens).get(secret) {
            if at.elapsed() < TTL {
                return Ok(Some(t.clone()));
            }
        }
        let t = store.find_token(secret).await?;
        if let Some(t) = &t {
            write(&self.tokens).insert(secret.to_string(), (t.clone(), Instant::now()));
        }
        Ok(t)
    }

    pub async fn device_id(&self, store: &Store, secret: &str) -> Result<Option<Uuid>, otafleet_store::StoreError> {
        if let Some((id, at)) = read(&self.device_tokens).get(secret) {
            if at.elapsed() < TTL {
                return Ok(Some(*id));
            }
        }
        let id = store.device_id_by_token(secret).await?;
        if let Some(id) = id {
            write(&self.device_tokens).insert(secret.to_string(), (id, Instant::now()));
        }
        Ok(id)
    }

    /// The cached running version of a device, if fresh.
    pub fn live(&self, id: Uuid) -> Option<Live> {
        read(&self.devices).get(&id).filter(|l| l.fetched.elapsed() < TTL).cloned()
    }

    pub fn set_live(&self, id: Uuid, version: Option<String>) {
        write(&self.devices).insert(id, Live { version, fetched: Instant::now() });
    }

    pub fn forget_device(&self, id: Uuid) {
        write(&self.devices).remove(&id);
        write(&self.device_tokens).retain(|_, (d, _)| *d != id);
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Queues a check-in's health for the next batch write of last-seen times.
    pub fn saw(&self, id: Uuid, health: DeviceHealth) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(id, health);
    }

    /// Writes queued check-ins in one transaction, stamped with the flush time
    /// (at most one flush period, 2 s, after the real check-in).
    pub async fn flush_seen(&self, store: &Store) -> Result<usize, otafleet_store::StoreError> {
        let drained: Vec<(Uuid, DeviceHealth)> = {
            let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            m.drain().collect()
        };
        let mut by_health: HashMap<DeviceHealth, Vec<Uuid>> = HashMap::new();
        for (id, h) in &drained {
            by_health.entry(*h).or_default().push(*id);
        }
        let groups: Vec<(DeviceHealth, Vec<Uuid>)> = by_health.into_iter().collect();
        store.touch_devices(&groups, otafleet_store::now_ms()).await?;
        Ok(drained.len())
    }

    pub async fn release(&self, store: &Store, version: &str) -> Result<Option<Release>, otafleet_store::StoreError> {
        if let Some(r) = read(&self.releases).get(version) {
            return Ok(Some(r.clone()));
        }
        let r = store.get_release_by_version(version).await?;
        if let Some(r) = &r {
            write(&self.releases).insert(version.to_string(), r.clone());
        }
        Ok(r)
    }

    pub fn jobs(&self, validator: i64) -> Option<axum::body::Bytes> {
        let g = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().filter(|(v, _)| *v == validator).map(|(_, b)| b.clone())
    }

    pub fn set_jobs(&self, validator: i64, body: axum::body::Bytes) {
        *self.jobs.lock().unwrap_or_else(|p| p.into_inner()) = Some((validator, body));
    }
}
