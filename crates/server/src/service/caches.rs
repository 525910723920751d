//! In-memory caches on the hot paths, each safe with several replicas over
//! one PostgreSQL because each is either immutable, short-lived, or validated
//! against the database:
//!
//! - API and device tokens → identity, kept 30 s (a deleted device is dropped at once).
//!   A token revoked or a device token rotated through this process is dropped at
//!   once, so its next request here is a 401; other replicas notice within the 30 s.
//!   An expired API token is refused from its `expires_at` on, cached or not. A
//!   request with an API token records its last use, written at most once a
//!   minute per token (one indexed `UPDATE`, off the request's path).
//! - The last known version of a device, kept 30 s: a check-in that reports the
//!   same version needs no write transaction; its last-seen time and health are
//!   queued here and written in one batch by [`Caches::flush_seen`]. A device
//!   whose health is unchanged and whose last-seen time was written less than
//!   one poll interval ago is not queued again: the stored time is then at
//!   most two poll intervals and one flush old (devices count as online for
//!   three), and a fleet polling every interval costs half the writes.
//! - Releases by version: releases are immutable once created.
//! - The kind of each rollout (deploy or rollback), which never changes: it
//!   decides the kind of order a device is handed (`protocol::order_kind`).
//! - The rendered `GET /ota/jobs` body, validated by the newest event id
//!   (every rollout change writes an event), also used as its ETag.
//!
//! On SQLite one process owns the database, so every change goes through this
//! process and the caches may hold on longer:
//!
//! - Device tokens and versions are kept 10 minutes instead of 30 s (every
//!   path that changes them here updates or drops the entry; the time limit
//!   is only a backstop).
//! - The *inbox*: the devices that may have an action in flight, with that
//!   action when it is known. An idle device's check-in is answered without
//!   touching the database, and so is a check-in for a known action. The
//!   driver puts actions in after it commits their release; an applied status
//!   report moves the cached action along (or drops it when it ends); a timeout
//!   makes the entry unknown again (the next check-in reads the database). A
//!   check-in that reads the database stores what it found only if nothing was
//!   put in since it looked (a generation number), so a release is never hidden.
//!
//! On PostgreSQL ([`Caches::notified`]) other replicas change the database
//! too, and tell this one through `LISTEN/NOTIFY` (`otafleet_store::notify`,
//! received by `service::coherence`, applied by `delivery::changed_elsewhere`):
//! the inbox is on as well, and device tokens and versions are kept 10
//! minutes too (every path that changes them, on any replica, updates or
//! drops the entry, here or through a notification; API tokens keep 30 s).
//! The rules:
//!
//! - Every change another replica makes to an action (released, reported,
//!   timed out, failed by a check-in) makes the device's inbox entry unknown
//!   and drops its cached version: its next check-in here reads the
//!   database. A revoked token, a rotated device token and a deleted device
//!   are dropped as on the replica that made the change. The notification is
//!   sent in the change's transaction and arrives after its commit, so the
//!   read it causes sees the change; a read already under way when it
//!   arrives cannot store what it found (the generation moved on).
//! - The caches are *in sync* only while the listener is connected and has
//!   heard its own heartbeat (every second) within the last three. Whenever
//!   it is not ([`Caches::desync`]: at start, on a lost connection, on a
//!   missing heartbeat) nothing is answered from memory: no inbox, no cached
//!   token, device token or version; every check-in and request reads the
//!   database. Notifications sent meanwhile are lost, so on reconnecting,
//!   once `LISTEN` is in place, [`Caches::resync`] forgets everything the
//!   caches knew (inbox entries become unknown, with every device that has an
//!   action in flight added; tokens and versions cleared) before serving from
//!   memory again.

use otafleet_core::{DeviceHealth, RolloutKind};
use otafleet_store::{Action, Release, Store, TokenRecord};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(30);

/// How often a token's last-use time is written at most.
const TOKEN_USE_RESOLUTION: Duration = Duration::from_secs(60);

/// How long device tokens and versions are kept when this process owns the
/// database, or hears of every change the others make (notifications in sync).
const SINGLE_OWNER_TTL: Duration = Duration::from_secs(600);

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
    /// This action is in flight, as of the last change this process made to it.
    Known(Box<Action>),
    /// Maybe something in flight; the generation to pass to [`Caches::inbox_found`].
    Maybe(u64),
}

/// An inbox entry: when it was last put in, and the action if known.
struct Entry {
    generation: u64,
    action: Option<Box<Action>>,
}

#[derive(Default)]
pub struct Caches {
    ttl: Duration,
    /// Not in sync with the database's changes (see the module's rules):
    /// nothing is answered from memory.
    unsynced: std::sync::atomic::AtomicBool,
    inbox: Option<Mutex<HashMap<Uuid, Entry>>>,
    generation: std::sync::atomic::AtomicU64,
    tokens: RwLock<HashMap<String, (TokenRecord, Instant)>>,
    /// API tokens revoked through this process: refused even if a lookup that
    /// raced with the revocation cached them.
    revoked: RwLock<std::collections::HashSet<i64>>,
    /// When each API token's last use was last written.
    token_used: Mutex<HashMap<i64, Instant>>,
    device_tokens: RwLock<HashMap<String, (Uuid, Instant)>>,
    devices: RwLock<HashMap<Uuid, Live>>,
    seen: Mutex<HashMap<Uuid, DeviceHealth>>,
    /// What the last flush wrote for each device, and when.
    written: Mutex<HashMap<Uuid, (DeviceHealth, Instant)>>,
    /// How long a written last-seen time stands before a check-in rewrites it.
    seen_resolution: Duration,
    releases: RwLock<HashMap<String, Release>>,
    rollout_kinds: RwLock<HashMap<i64, RolloutKind>>,
    jobs: Mutex<Option<(i64, axum::body::Bytes)>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Caches {
    /// Caches for a database this process owns alone (SQLite: the inbox is
    /// on and entries live longer) or shares with other replicas, for devices
    /// told to check in every `poll_interval`.
    pub fn new(single_owner: bool, poll_interval: Duration) -> Self {
        Caches {
            inbox: single_owner.then(Default::default),
            ttl: if single_owner { SINGLE_OWNER_TTL } else { TTL },
            seen_resolution: poll_interval,
            ..Default::default()
        }
    }

    /// Caches for a PostgreSQL database shared with other replicas whose
    /// changes arrive as notifications: kept like a single owner's (inbox on,
    /// device tokens and versions 10 minutes), but nothing is served from
    /// memory while out of sync, from the start until [`Caches::resync`].
    pub fn notified(poll_interval: Duration) -> Self {
        Caches {
            inbox: Some(Default::default()),
            unsynced: true.into(),
            ttl: SINGLE_OWNER_TTL,
            seen_resolution: poll_interval,
            ..Default::default()
        }
    }

    fn synced(&self) -> bool {
        !self.unsynced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Changes may have been missed: stop answering from memory until [`Caches::resync`].
    pub fn desync(&self) {
        self.unsynced.store(true, std::sync::atomic::Ordering::Release);
        self.clear_identities();
    }

    /// Listening again (or for the first time): forgets everything the caches
    /// knew about actions, tokens and versions, marks `in_flight` (every
    /// device with an action in flight, read after `LISTEN`) as unknown, and
    /// serves from memory again.
    pub fn resync(&self, in_flight: &[Uuid]) {
        self.with_inbox(|m| {
            for e in m.values_mut() {
                *e = Entry { generation: self.next_generation(), action: None };
            }
        });
        self.inbox_add(in_flight);
        self.clear_identities();
        self.unsynced.store(false, std::sync::atomic::Ordering::Release);
    }

    fn clear_identities(&self) {
        write(&self.tokens).clear();
        write(&self.device_tokens).clear();
        write(&self.devices).clear();
    }

    fn with_inbox<R>(&self, f: impl FnOnce(&mut HashMap<Uuid, Entry>) -> R) -> Option<R> {
        self.inbox.as_ref().map(|m| f(&mut m.lock().unwrap_or_else(|p| p.into_inner())))
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    /// Marks devices as possibly having an action in flight, not known here
    /// (at start, or after a change this process did not follow).
    pub fn inbox_add(&self, devices: &[Uuid]) {
        self.with_inbox(|m| {
            for d in devices {
                m.insert(*d, Entry { generation: self.next_generation(), action: None });
            }
        });
    }

    /// Puts in actions just released (after the commit).
    pub fn inbox_put(&self, actions: &[Action]) {
        self.with_inbox(|m| {
            for a in actions {
                let e = Entry { generation: self.next_generation(), action: Some(Box::new(a.clone())) };
                m.insert(a.device_id, e);
            }
        });
    }

    pub fn inbox(&self, device: Uuid) -> Inbox {
        if !self.synced() {
            return Inbox::Disabled;
        }
        self.with_inbox(|m| match m.get(&device) {
            Some(Entry { action: Some(a), .. }) => Inbox::Known(a.clone()),
            Some(Entry { generation, action: None }) => Inbox::Maybe(*generation),
            None => Inbox::Empty,
        })
        .unwrap_or(Inbox::Disabled)
    }

    /// Records what a database read found for a device (`Inbox::Maybe(generation)`),
    /// unless something was put in since.
    pub fn inbox_found(&self, device: Uuid, generation: u64, action: Option<&Action>) {
        self.with_inbox(|m| {
            if m.get(&device).map(|e| e.generation) == Some(generation) {
                match action {
                    Some(a) if a.state.is_in_flight() => {
                        m.insert(device, Entry { generation, action: Some(Box::new(a.clone())) });
                    }
                    _ => {
                        m.remove(&device);
                    }
                }
            }
        });
    }

    /// Follows an applied status report: the cached action takes the stored
    /// state, or leaves the inbox when it ended. Only the same action, and only
    /// forward (reports of one device may finish out of order).
    pub fn inbox_reported(&self, a: &Action) {
        self.with_inbox(|m| {
            let Some(e) = m.get_mut(&a.device_id) else { return };
            let Some(cached) = e.action.as_mut().filter(|c| c.id == a.id && c.last_seq <= a.last_seq) else { return };
            if a.state.is_in_flight() {
                **cached = a.clone();
            } else {
                m.remove(&a.device_id);
            }
        });
    }

    /// Forgets what is known of these devices' actions (a timeout changed
    /// them behind the inbox's back): their next check-in reads the database.
    pub fn inbox_unknown(&self, devices: &[Uuid]) {
        self.inbox_add(devices);
    }

    /// The valid (neither revoked nor expired) API token with this secret.
    pub async fn token(&self, store: &Store, secret: &str) -> Result<Option<TokenRecord>, otafleet_store::StoreError> {
        let now = otafleet_store::now_ms();
        let cached = match self.synced() {
            true => read(&self.tokens).get(secret).filter(|(_, at)| at.elapsed() < TTL).map(|(t, _)| t.clone()),
            false => None,
        };
        let t = match cached {
            Some(t) if t.is_valid_at(now) && !read(&self.revoked).contains(&t.id) => Some(t),
            Some(_) => {
                write(&self.tokens).remove(secret);
                None
            }
            None => {
                let t = store.find_token(secret).await?.filter(|t| !read(&self.revoked).contains(&t.id));
                if let Some(t) = t.as_ref().filter(|_| self.synced()) {
                    write(&self.tokens).insert(secret.to_string(), (t.clone(), Instant::now()));
                }
                t
            }
        };
        if let Some(t) = &t {
            self.token_used(store, t.id, now);
        }
        Ok(t)
    }

    /// Writes a token's last use unless it was written less than a minute ago.
    fn token_used(&self, store: &Store, id: i64, now: i64) {
        {
            let mut m = self.token_used.lock().unwrap_or_else(|p| p.into_inner());
            if m.get(&id).is_some_and(|at| at.elapsed() < TOKEN_USE_RESOLUTION) {
                return;
            }
            m.insert(id, Instant::now());
        }
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_token(id, now).await {
                tracing::warn!(token = id, error = %e, "could not record the token's last use");
            }
        });
    }

    /// Forgets a revoked API token: its next request reads the database (and is refused).
    pub fn forget_token(&self, id: i64) {
        write(&self.revoked).insert(id);
        write(&self.tokens).retain(|_, (t, _)| t.id != id);
    }

    /// Forgets a device's cached token (rotated): the old secret is looked up again, and refused.
    pub fn forget_device_token(&self, device: Uuid) {
        write(&self.device_tokens).retain(|_, (d, _)| *d != device);
    }

    pub async fn device_id(&self, store: &Store, secret: &str) -> Result<Option<Uuid>, otafleet_store::StoreError> {
        if let Some((id, at)) = read(&self.device_tokens).get(secret).filter(|_| self.synced()) {
            if at.elapsed() < self.ttl {
                return Ok(Some(*id));
            }
        }
        let id = store.device_id_by_token(secret).await?;
        if let Some(id) = id.filter(|_| self.synced()) {
            write(&self.device_tokens).insert(secret.to_string(), (id, Instant::now()));
        }
        Ok(id)
    }

    /// The cached running version of a device, if fresh.
    pub fn live(&self, id: Uuid) -> Option<Live> {
        if !self.synced() {
            return None;
        }
        read(&self.devices).get(&id).filter(|l| l.fetched.elapsed() < self.ttl).cloned()
    }

    /// Forgets the cached versions of these devices (changed elsewhere).
    pub fn forget_live(&self, ids: &[Uuid]) {
        let mut m = write(&self.devices);
        for id in ids {
            m.remove(id);
        }
    }

    pub fn set_live(&self, id: Uuid, version: Option<String>) {
        write(&self.devices).insert(id, Live { version, fetched: Instant::now() });
    }

    pub fn forget_device(&self, id: Uuid) {
        write(&self.devices).remove(&id);
        write(&self.device_tokens).retain(|_, (d, _)| *d != id);
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        self.with_inbox(|m| m.remove(&id));
    }

    /// Queues a check-in's health for the next batch write of last-seen times.
    pub fn saw(&self, id: Uuid, health: DeviceHealth) {
        let fresh = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|(h, at)| *h == health && at.elapsed() < self.seen_resolution);
        if !fresh {
            self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(id, health);
        }
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
        let at = Instant::now();
        if let Err(e) = store.touch_devices(&groups, otafleet_store::now_ms()).await {
            // Not written: queue them again unless a newer check-in did.
            let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            for (id, h) in drained {
                m.entry(id).or_insert(h);
            }
            return Err(e);
        }
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        for (id, h) in &drained {
            w.insert(*id, (*h, at));
        }
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

    /// The kind of a rollout (None: no such rollout).
    pub async fn rollout_kind(
        &self,
        store: &Store,
        id: i64,
    ) -> Result<Option<RolloutKind>, otafleet_store::StoreError> {
        if let Some(k) = read(&self.rollout_kinds).get(&id) {
            return Ok(Some(*k));
        }
        let kind = store.get_rollout(id).await?.map(|r| r.kind);
        if let Some(k) = kind {
            write(&self.rollout_kinds).insert(id, k);
        }
        Ok(kind)
    }

    pub fn jobs(&self, validator: i64) -> Option<axum::body::Bytes> {
        let g = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().filter(|(v, _)| *v == validator).map(|(_, b)| b.clone())
    }

    pub fn set_jobs(&self, validator: i64, body: axum::body::Bytes) {
        *self.jobs.lock().unwrap_or_else(|p| p.into_inner()) = Some((validator, body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otafleet_core::{ActionKind, ActionState};

    const POLL: Duration = Duration::from_secs(30);

    fn action(id: i64, device: Uuid, state: ActionState, seq: i64) -> Action {
        Action {
            id,
            rollout_id: 1,
            device_id: device,
            wave: 0,
            position: 0,
            kind: ActionKind::Install,
            state,
            from_version: Some("1.0.0".into()),
            to_version: "2.0.0".into(),
            attempts: 1,
            last_seq: seq,
            not_before: 0,
            deadline: Some(1),
            error: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn known(c: &Caches, d: Uuid) -> Option<(i64, ActionState)> {
        match c.inbox(d) {
            Inbox::Known(a) => Some((a.id, a.state)),
            _ => None,
        }
    }

    #[test]
    fn a_recently_written_check_in_is_not_written_again() {
        let c = Caches::new(true, POLL);
        let (d, e) = (Uuid::new_v4(), Uuid::new_v4());
        let queued = |c: &Caches, id| c.seen.lock().unwrap().contains_key(&id);
        c.written.lock().unwrap().insert(d, (DeviceHealth::Healthy, Instant::now()));
        c.written.lock().unwrap().insert(e, (DeviceHealth::Healthy, Instant::now() - POLL));
        c.saw(d, DeviceHealth::Healthy);
        assert!(!queued(&c, d), "written just now, same health");
        c.saw(d, DeviceHealth::Degraded);
        assert!(queued(&c, d), "a health change is written at once");
        c.saw(e, DeviceHealth::Healthy);
        assert!(queued(&c, e), "written a poll interval ago");
        c.forget_device(d);
        assert!(!queued(&c, d) && !c.written.lock().unwrap().contains_key(&d));
    }

    #[test]
    fn shared_database_has_no_inbox() {
        let c = Caches::new(false, POLL);
        let d = Uuid::new_v4();
        c.inbox_put(&[action(1, d, ActionState::Notified, 0)]);
        assert!(matches!(c.inbox(d), Inbox::Disabled));
        assert_eq!(c.ttl, TTL);
    }

    #[test]
    fn released_action_is_answered_then_followed_to_its_end() {
        let c = Caches::new(true, POLL);
        let d = Uuid::new_v4();
        assert!(matches!(c.inbox(d), Inbox::Empty));
        c.inbox_put(&[action(7, d, ActionState::Notified, 0)]);
        assert_eq!(known(&c, d), Some((7, ActionState::Notified)));
        c.inbox_reported(&action(7, d, ActionState::Installing, 2));
        assert_eq!(known(&c, d), Some((7, ActionState::Installing)));
        // An older report finishing later does not move it back.
        c.inbox_reported(&action(7, d, ActionState::Downloading, 1));
        assert_eq!(known(&c, d), Some((7, ActionState::Installing)));
        // Another action's report leaves it alone.
        c.inbox_reported(&action(8, d, ActionState::Succeeded, 5));
        assert_eq!(known(&c, d), Some((7, ActionState::Installing)));
        c.inbox_reported(&action(7, d, ActionState::Succeeded, 3));
        assert!(matches!(c.inbox(d), Inbox::Empty));
    }

    #[test]
    fn a_read_does_not_hide_a_release_made_meanwhile() {
        let c = Caches::new(true, POLL);
        let d = Uuid::new_v4();
        c.inbox_add(&[d]);
        let Inbox::Maybe(g) = c.inbox(d) else { panic!("expected Maybe") };
        // The driver releases an action while the check-in reads the database...
        c.inbox_put(&[action(3, d, ActionState::Notified, 0)]);
        // ...which found nothing: the release stays.
        c.inbox_found(d, g, None);
        assert_eq!(known(&c, d), Some((3, ActionState::Notified)));
    }

    #[test]
    fn a_read_settles_an_unknown_entry() {
        let c = Caches::new(true, POLL);
        let (idle, busy, done) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        c.inbox_add(&[idle, busy, done]);
        for (d, found) in [
            (idle, None),
            (busy, Some(action(4, busy, ActionState::Downloading, 1))),
            (done, Some(action(5, done, ActionState::Succeeded, 2))),
        ] {
            let Inbox::Maybe(g) = c.inbox(d) else { panic!("expected Maybe") };
            c.inbox_found(d, g, found.as_ref());
        }
        assert!(matches!(c.inbox(idle), Inbox::Empty));
        assert_eq!(known(&c, busy), Some((4, ActionState::Downloading)));
        assert!(matches!(c.inbox(done), Inbox::Empty));
    }

    #[test]
    fn timeouts_and_deleted_devices_drop_what_is_known() {
        let c = Caches::new(true, POLL);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        c.inbox_put(&[action(1, a, ActionState::Notified, 0), action(2, b, ActionState::Notified, 0)]);
        c.inbox_unknown(&[a]);
        assert!(matches!(c.inbox(a), Inbox::Maybe(_)));
        c.forget_device(b);
        assert!(matches!(c.inbox(b), Inbox::Empty));
    }

    #[test]
    fn notified_caches_serve_nothing_from_memory_out_of_sync_and_forget_all_on_resync() {
        let c = Caches::notified(POLL);
        let (a, b, idle) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        // Before the listener is in place: every check-in reads the database.
        c.inbox_put(&[action(1, a, ActionState::Notified, 0)]);
        c.set_live(a, Some("1.0.0".into()));
        assert!(matches!(c.inbox(a), Inbox::Disabled) && c.live(a).is_none());
        // Listening: what was known is unknown, in-flight devices too, the rest idle.
        c.resync(&[b]);
        assert!(matches!(c.inbox(a), Inbox::Maybe(_)));
        assert!(matches!(c.inbox(b), Inbox::Maybe(_)));
        assert!(matches!(c.inbox(idle), Inbox::Empty));
        assert!(c.live(a).is_none(), "versions are forgotten");
        c.inbox_put(&[action(2, idle, ActionState::Notified, 0)]);
        c.set_live(idle, Some("1.0.0".into()));
        assert_eq!(known(&c, idle), Some((2, ActionState::Notified)));
        assert!(c.live(idle).is_some());
        // Another replica changed it: unknown here, version dropped.
        c.inbox_unknown(&[idle]);
        c.forget_live(&[idle]);
        assert!(matches!(c.inbox(idle), Inbox::Maybe(_)) && c.live(idle).is_none());
        // Notifications lost: nothing from memory until the next resync.
        c.inbox_put(&[action(3, idle, ActionState::Notified, 0)]);
        c.desync();
        assert!(matches!(c.inbox(idle), Inbox::Disabled));
        c.resync(&[]);
        assert!(matches!(c.inbox(idle), Inbox::Maybe(_)), "a known action is read again after a resync");
    }
}
