//! Telemetry: samples in, windows out.
//!
//! A device's batch (`POST /device/v1/telemetry`) is validated sample by
//! sample (`core::telemetry::validate_batch`), charged to the device's token
//! bucket (over it: 429 with `Retry-After`), and added to this replica's
//! pending aggregates: one [`Aggregate`] per device, metric, version and
//! window of the finest resolution (a minute). A window is written once,
//! when it has closed (its end plus `grace` for late samples) or after it
//! has been held `max_hold`, and merged at once into its window of every
//! coarser resolution (the hour): `Store::merge_telemetry`, additive, so a
//! late sample or another replica's samples for the same window add up.
//! So 100,000 devices sending 5 metrics every 10 s cost ~16,700 rows/s (a
//! minute's row and an hour's), not a row per sample, and memory holds one
//! minute of aggregates. [`run`] checks every `flush` interval; on shutdown
//! everything held is written. A `kill -9` loses what was held: the open
//! minute.
//!
//! A query ([`query`]) reads the windows of the devices a selector matches
//! at the resolution that fits its step and merges them per group and step:
//! fleet percentiles come from merged sketches, never from raw samples.

use crate::AppState;
use otafleet_core::telemetry::{validate_batch, Agg, Aggregate, Resolution, Sample, TokenBucket, MAX_BATCH};
use otafleet_core::{Millis, Selector};
use otafleet_store::{Store, TelemetryWindow};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// How telemetry is kept (`--telemetry-*` flags of `serve`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The resolutions windows are kept at, finest first.
    pub resolutions: Vec<Resolution>,
    /// How often the pending windows are checked and the due ones written.
    pub flush: Duration,
    /// A window is written this long after it closed (for late samples).
    pub grace: Duration,
    /// A window still open is written once it has been held this long.
    pub max_hold: Duration,
    /// Samples a second one device may send, sustained.
    pub rate: f64,
    /// Samples one device may send at once (at least one full batch).
    pub burst: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            // Per device: 1 min kept 7 days, 1 h kept 90 days. (A 10 s
            // resolution per device would be 50,000 rows/s for 100,000
            // devices sending 5 metrics every 10 s.)
            resolutions: vec![
                Resolution { width_ms: 60_000, retention_ms: 7 * 24 * 3_600_000 },
                Resolution { width_ms: 3_600_000, retention_ms: 90 * 24 * 3_600_000 },
            ],
            flush: Duration::from_secs(5),
            grace: Duration::from_secs(10),
            max_hold: Duration::from_secs(300),
            rate: 50.0,
            burst: MAX_BATCH as f64,
        }
    }
}

/// A held window: device, metric, version and start of its window of the
/// finest resolution (the only one held).
type Key = (Uuid, String, String, Millis);

/// This replica's pending aggregates and the devices' token buckets.
#[derive(Default)]
pub struct Telemetry {
    /// Each window's aggregate, with when it was first held (Unix ms).
    pending: Mutex<HashMap<Key, (Aggregate, Millis)>>,
    buckets: Mutex<HashMap<Uuid, TokenBucket>>,
}

/// Why a batch was refused.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Field and message of every bad sample (at most 20 are listed).
    Invalid { field: String, message: String },
    /// Over the device's rate: retry after this many seconds.
    TooMany { retry_after_secs: u64 },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Telemetry {
    /// Validates a batch and charges it to the device's bucket; then adds it
    /// to the pending aggregates. All of the batch or none of it.
    pub fn ingest(
        &self,
        settings: &Settings,
        device: Uuid,
        version: &str,
        samples: &[Sample],
        now: Millis,
    ) -> Result<usize, Refusal> {
        if samples.is_empty() || samples.len() > MAX_BATCH {
            return Err(Refusal::Invalid {
                field: "samples".into(),
                message: format!("give 1 to {MAX_BATCH} samples"),
            });
        }
        let errors = validate_batch(samples, now);
        if let Some(first) = errors.first() {
            let listed: Vec<String> = errors.iter().take(20).map(|e| e.to_string()).collect();
            let more = if errors.len() > 20 { format!(" (and {} more)", errors.len() - 20) } else { String::new() };
            return Err(Refusal::Invalid {
                field: first.field.clone(),
                message: format!("{} bad samples: {}{more}", errors.len(), listed.join("; ")),
            });
        }
        {
            let mut buckets = lock(&self.buckets);
            let bucket = buckets.entry(device).or_insert_with(|| TokenBucket::full(settings.burst, now));
            if let Err(wait_ms) = bucket.take(samples.len() as f64, settings.rate, settings.burst, now) {
                return Err(Refusal::TooMany { retry_after_secs: (wait_ms as u64).div_ceil(1000).max(1) });
            }
        }
        // Only the finest resolution is held; the coarser windows are merged
        // from it as it is written.
        if let Some(finest) = settings.resolutions.first() {
            let mut pending = lock(&self.pending);
            for s in samples {
                let ts = s.ts_or(now);
                let key = (device, s.metric.clone(), version.to_string(), finest.bucket_start(ts));
                pending.entry(key).or_insert_with(|| (Aggregate::new(), now)).0.add(s.value, ts);
            }
        }
        Ok(samples.len())
    }

    /// Writes the held windows `which` picks into the database. On failure
    /// they are kept for the next flush. Returns the rows written.
    pub async fn flush(
        &self,
        settings: &Settings,
        store: &Store,
        now: Millis,
        which: Held<'_>,
    ) -> Result<usize, otafleet_store::StoreError> {
        let grace = settings.grace.as_millis() as i64;
        let hold = settings.max_hold.as_millis() as i64;
        let width = settings.resolutions.first().map_or(0, |r| r.width_ms);
        let taken: Vec<(Key, (Aggregate, Millis))> = {
            let mut pending = lock(&self.pending);
            let due: Vec<Key> = pending
                .iter()
                .filter(|((_, metric, _, bucket), (_, since))| match which {
                    Held::All => true,
                    Held::Metric(m) if metric == m => true,
                    Held::Metric(_) | Held::Due => due(width, *bucket, *since, now, grace, hold),
                })
                .map(|(k, _)| k.clone())
                .collect();
            due.into_iter().filter_map(|k| pending.remove_entry(&k)).collect()
        };
        // In transactions of at most CHUNK held windows (and their roll-ups),
        // so other writers get the database between them.
        const CHUNK: usize = 10_000;
        let mut written = 0;
        let mut rest = taken;
        while !rest.is_empty() {
            let later = rest.split_off(rest.len().min(CHUNK));
            let windows: Vec<TelemetryWindow> = rest
                .iter()
                .flat_map(|((device_id, metric, version, bucket), (agg, _))| {
                    settings.resolutions.iter().map(move |r| TelemetryWindow {
                        device_id: *device_id,
                        metric: metric.clone(),
                        version: version.clone(),
                        width_ms: r.width_ms,
                        bucket: r.bucket_start(*bucket),
                        agg: agg.clone(),
                    })
                })
                .collect();
            if let Err(e) = store.merge_telemetry(&windows).await {
                let mut pending = lock(&self.pending);
                for (k, (agg, since)) in rest.into_iter().chain(later) {
                    match pending.get_mut(&k) {
                        Some((a, s)) => {
                            let _ = a.merge(&agg);
                            *s = (*s).min(since);
                        }
                        None => {
                            pending.insert(k, (agg, since));
                        }
                    }
                }
                return Err(e);
            }
            written += windows.len();
            rest = later;
        }
        Ok(written)
    }

    /// Windows held, not yet written.
    pub fn held(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Forgets a deleted device's bucket.
    pub fn forget(&self, device: Uuid) {
        lock(&self.buckets).remove(&device);
    }
}

/// Which held windows a flush writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held<'a> {
    /// The due ones ([`due`]): the periodic flush.
    Due,
    /// Every one: at shutdown.
    All,
    /// Every one of this metric, and the due ones: before an analysis
    /// measures the metric, so it sees the samples received up to now.
    Metric(&'a str),
}

/// Whether a held window is written now: it closed `grace` ago, or it has
/// been held `hold`.
fn due(width: i64, bucket: Millis, since: Millis, now: Millis, grace: i64, hold: i64) -> bool {
    bucket + width + grace <= now || now - since >= hold
}

/// Takes a device's batch: the version it runs is the registry's (cached).
pub async fn ingest(state: &AppState, device: Uuid, samples: &[Sample]) -> Result<usize, IngestError> {
    let version = super::delivery::running_version(state, device).await?;
    let now = otafleet_store::now_ms();
    let n = state
        .telemetry
        .ingest(&state.config.telemetry, device, version.as_deref().unwrap_or(""), samples, now)
        .map_err(IngestError::Refused)?;
    state.metrics.telemetry_samples.inc_by(n as u64);
    Ok(n)
}

#[derive(Debug)]
pub enum IngestError {
    Refused(Refusal),
    Store(otafleet_store::StoreError),
}

impl From<otafleet_store::StoreError> for IngestError {
    fn from(e: otafleet_store::StoreError) -> Self {
        IngestError::Store(e)
    }
}

/// Flushes every interval and applies retention every minute, until `stop`;
/// then flushes what is left.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let settings = state.config.telemetry.clone();
    let mut tick = tokio::time::interval(settings.flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        flush_once(&state, Held::Due).await;
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_prune = Some(std::time::Instant::now());
            let now = otafleet_store::now_ms();
            for r in &settings.resolutions {
                if let Err(e) = state.store.prune_telemetry(r.width_ms, r.retained_from(now)).await {
                    tracing::warn!(error = %e, width_ms = r.width_ms, "telemetry retention failed");
                }
            }
        }
    }
    flush_once(&state, Held::All).await;
}

/// Writes the held windows `which` picks; a failure is logged, not returned.
pub async fn flush_once(state: &AppState, which: Held<'_>) {
    let now = otafleet_store::now_ms();
    match state.telemetry.flush(&state.config.telemetry, &state.store, now, which).await {
        Ok(n) => {
            state.metrics.telemetry_rows.inc_by(n as u64);
        }
        Err(e) => tracing::warn!(error = %e, "telemetry flush failed; kept for the next one"),
    }
    state.metrics.telemetry_held.set(state.telemetry.held() as i64);
}

/// How a query groups devices: not at all, by the version they ran when
/// they measured, by device, or by one of their labels (as labelled now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    Fleet,
    Version,
    Device,
    Label(String),
}

impl GroupBy {
    pub fn parse(raw: Option<&str>) -> Result<GroupBy, String> {
        match raw.map(str::trim) {
            None | Some("") => Ok(GroupBy::Fleet),
            Some("version") => Ok(GroupBy::Version),
            Some("device") => Ok(GroupBy::Device),
            Some(key) => otafleet_core::validate::labels(&[(key.to_string(), "x".to_string())].into())
                .map(|_| GroupBy::Label(key.to_string()))
                .map_err(|(_, e)| format!("must be version, device or a label key: {e}")),
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            GroupBy::Fleet => None,
            GroupBy::Version => Some("version"),
            GroupBy::Device => Some("device"),
            GroupBy::Label(k) => Some(k),
        }
    }
}

/// A telemetry query, checked.
#[derive(Debug, Clone)]
pub struct Query {
    pub metric: String,
    pub selector: Selector,
    pub from: Millis,
    pub to: Millis,
    pub step_ms: i64,
    pub agg: Agg,
    pub by: GroupBy,
}

/// One group's points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// `{by: value}` (empty for the fleet).
    pub group: BTreeMap<String, String>,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Start of the step, Unix ms.
    pub t: Millis,
    /// The aggregation's value; None when it has none (no finite result).
    pub value: Option<f64>,
    pub samples: u64,
    pub devices: usize,
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub resolution_ms: i64,
    pub series: Vec<Series>,
}

/// Most windows one query may read.
pub const MAX_WINDOWS_READ: i64 = 200_000;

/// Why a query cannot be answered as asked: (field, message).
pub type QueryRefusal = (&'static str, String);

/// The resolution a step is read at: the coarsest whose width divides the
/// step and which still keeps `from`.
pub fn resolution_for(
    settings: &Settings,
    step_ms: i64,
    from: Millis,
    now: Millis,
) -> Result<Resolution, QueryRefusal> {
    let fits: Vec<&Resolution> = settings.resolutions.iter().filter(|r| step_ms % r.width_ms == 0).collect();
    if fits.is_empty() {
        let widths: Vec<String> = settings.resolutions.iter().map(|r| format!("{} s", r.width_ms / 1000)).collect();
        return Err(("step", format!("must be a multiple of a kept resolution ({})", widths.join(", "))));
    }
    fits.iter()
        .filter(|r| r.retained_from(now) <= from)
        .max_by_key(|r| r.width_ms)
        .map(|r| **r)
        .ok_or_else(|| ("from", "is older than the retention of every resolution that fits the step".to_string()))
}

/// Reads and merges the windows a query covers.
pub async fn query(
    state: &AppState,
    q: &Query,
    now: Millis,
) -> Result<Result<Answer, QueryRefusal>, otafleet_store::StoreError> {
    let r = match resolution_for(&state.config.telemetry, q.step_ms, q.from, now) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    // Steps aligned to the resolution: a window belongs to the step it starts in.
    let from = r.bucket_start(q.from);
    let rows =
        state.store.telemetry_windows(&q.metric, r.width_ms, from, q.to, &q.selector, MAX_WINDOWS_READ + 1).await?;
    if rows.len() as i64 > MAX_WINDOWS_READ {
        return Ok(Err((
            "selector",
            format!(
                "the query would read more than {MAX_WINDOWS_READ} device windows: narrow the selector or the time \
                 range, or take a larger step"
            ),
        )));
    }
    type Cell = (Aggregate, HashSet<Uuid>);
    let mut groups: BTreeMap<BTreeMap<String, String>, BTreeMap<Millis, Cell>> = BTreeMap::new();
    for row in rows {
        let w = row.window;
        let value = match &q.by {
            GroupBy::Fleet => None,
            GroupBy::Version => Some(w.version.clone()),
            GroupBy::Device => Some(w.device_id.to_string()),
            GroupBy::Label(k) => Some(row.labels.get(k).cloned().unwrap_or_default()),
        };
        let group: BTreeMap<String, String> = match (q.by.name(), value) {
            (Some(name), Some(v)) => [(name.to_string(), v)].into(),
            _ => BTreeMap::new(),
        };
        let t = from + (w.bucket - from).div_euclid(q.step_ms) * q.step_ms;
        let cell = groups.entry(group).or_default().entry(t).or_insert_with(|| (Aggregate::new(), HashSet::new()));
        if cell.0.merge(&w.agg).is_err() {
            // A window kept at another accuracy: start the cell from it instead of losing it.
            cell.0 = w.agg.clone();
        }
        cell.1.insert(w.device_id);
    }
    let series = groups
        .into_iter()
        .map(|(group, cells)| Series {
            group,
            points: cells
                .into_iter()
                .map(|(t, (agg, devices))| Point {
                    t,
                    value: agg.value(q.agg),
                    samples: agg.value(Agg::Count).map(|c| c as u64).unwrap_or(0),
                    devices: devices.len(),
                })
                .collect(),
        })
        .collect();
    Ok(Ok(Answer { resolution_ms: r.width_ms, series }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metric: &str, value: f64, ts: Option<Millis>) -> Sample {
        Sample { metric: metric.into(), value, ts, labels: Default::default() }
    }

    #[test]
    fn a_batch_is_taken_whole_or_refused_whole() {
        let t = Telemetry::default();
        let s = Settings { rate: 1.0, burst: 10.0, ..Default::default() };
        let d = Uuid::from_u128(1);
        let now = 1_000_000_000_000;
        let bad = vec![sample("ok", 1.0, None), sample("bad name", 1.0, None), sample("x", 1.0, Some(now + 3_600_000))];
        match t.ingest(&s, d, "1.0.0", &bad, now) {
            Err(Refusal::Invalid { field, message }) => {
                assert_eq!(field, "samples[1].metric");
                assert!(message.starts_with("2 bad samples: samples[1].metric"), "{message}");
                assert!(message.contains("samples[2].ts"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(lock(&t.pending).is_empty(), "nothing of a refused batch is kept");
        let good: Vec<Sample> = (0..8).map(|i| sample("cpu", i as f64, Some(now - 1_000))).collect();
        assert_eq!(t.ingest(&s, d, "1.0.0", &good, now), Ok(8));
        // Only the finest resolution is held.
        assert_eq!(lock(&t.pending).len(), 1);
        assert_eq!(t.ingest(&s, d, "1.0.0", &good, now), Err(Refusal::TooMany { retry_after_secs: 6 }));
        // Another device has its own bucket.
        assert_eq!(t.ingest(&s, Uuid::from_u128(2), "1.0.0", &good, now), Ok(8));
        assert_eq!(
            t.ingest(&s, d, "1.0.0", &[], now).unwrap_err(),
            Refusal::Invalid { field: "samples".into(), message: format!("give 1 to {MAX_BATCH} samples") }
        );
    }

    #[test]
    fn a_window_is_written_once_closed_and_graced_or_held_too_long() {
        let (m, h) = (60_000, 3_600_000);
        // A minute's window from 0: open, closed but in its grace, written.
        assert!(!due(m, 0, 0, 59_999, 10_000, 300_000));
        assert!(!due(m, 0, 0, 69_999, 10_000, 300_000));
        assert!(due(m, 0, 0, 70_000, 10_000, 300_000));
        // An hour's window, first held at 1,000: written after 5 minutes held, though open.
        assert!(!due(h, 0, 1_000, 300_999, 10_000, 300_000));
        assert!(due(h, 0, 1_000, 301_000, 10_000, 300_000));
    }

    #[test]
    fn a_step_is_read_at_the_coarsest_resolution_that_divides_it_and_keeps_from() {
        let s = Settings::default();
        let now = 100 * 24 * 3_600_000;
        assert_eq!(resolution_for(&s, 60_000, now - 3_600_000, now).unwrap().width_ms, 60_000);
        assert_eq!(resolution_for(&s, 7_200_000, now - 3_600_000, now).unwrap().width_ms, 3_600_000);
        // Older than a minute's retention: only hours keep it.
        assert_eq!(resolution_for(&s, 3_600_000, now - 30 * 24 * 3_600_000, now).unwrap().width_ms, 3_600_000);
        assert_eq!(resolution_for(&s, 120_000, now - 30 * 24 * 3_600_000, now).unwrap_err().0, "from");
        assert_eq!(resolution_for(&s, 90_000, now, now).unwrap_err().0, "step");
    }

    #[test]
    fn group_by_takes_version_device_or_a_label_key() {
        assert_eq!(GroupBy::parse(None), Ok(GroupBy::Fleet));
        assert_eq!(GroupBy::parse(Some("version")), Ok(GroupBy::Version));
        assert_eq!(GroupBy::parse(Some("site")), Ok(GroupBy::Label("site".into())));
        assert!(GroupBy::parse(Some("not a key!")).is_err());
    }
}
