//! A FlashJob benchmark on the fake API server (`otafleet bench` can call it).
//!
//! Measures one FlashJob of `n` devices from creation to `Completed`, with the
//! fake server moving each flash pod to `Succeeded` as soon as it is created, so
//! the figure is the controller's own overhead: reconciles and API round trips.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::controller::Settings;
use crate::crd::{FlashJob, Phase};
use crate::error::{Error, Result};
use crate::fake::fixtures::{akri_instance, device_uuid, flash_job, RunningOperator};
use crate::fake::FakeApiServer;

/// Result of [`bench_flashjob`].
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Devices in the FlashJob.
    pub uuids: usize,
    /// `max_flash_pods` used.
    pub max_flash_pods: usize,
    /// Creation to Completed.
    pub wall: Duration,
    /// Non-watch API requests the controller made.
    pub api_requests: usize,
    /// Reconciles run.
    pub reconciles: u64,
}

impl BenchReport {
    /// API requests per reconcile.
    pub fn requests_per_reconcile(&self) -> f64 {
        self.api_requests as f64 / self.reconciles.max(1) as f64
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FlashJob with {} UUIDs (max {} flash pods): Completed in {:.2?}, {} reconciles, {} API requests ({:.1} per reconcile)",
            self.uuids,
            self.max_flash_pods,
            self.wall,
            self.reconciles,
            self.api_requests,
            self.requests_per_reconcile()
        )
    }
}

/// Runs one FlashJob of `n` devices to completion against a fresh fake API server.
pub async fn bench_flashjob(n: usize, max_flash_pods: usize) -> Result<BenchReport> {
    let fake = FakeApiServer::start().await?;
    let uuids: Vec<String> = (0..n).map(device_uuid).collect();
    for (i, uuid) in uuids.iter().enumerate() {
        fake.insert(&akri_instance("default", &format!("esp32-{i}"), uuid, "esp32", "thermo"))?;
    }
    fake.set_pod_phase_on_create(Some("Succeeded"));
    let settings = Settings {
        max_flash_pods,
        requeue: Duration::from_secs(5),
        error_backoff: Duration::from_millis(100),
        ..Settings::default()
    };
    let op = RunningOperator::start(fake.client().await?, settings);
    let metrics = Arc::clone(&op.metrics);
    let started = Instant::now();
    fake.insert(&flash_job("default", "bench", &uuids))?;
    let deadline = started + Duration::from_secs(600);
    loop {
        let phase = fake.get::<FlashJob>(Some("default"), "bench").and_then(|j| j.status).and_then(|s| s.phase);
        match phase {
            Some(Phase::Completed) => break,
            Some(Phase::Failed) => {
                op.stop().await;
                return Err(Error::JobFailed { name: "bench".into(), message: "benchmark job failed".into() });
            }
            _ if Instant::now() > deadline => {
                op.stop().await;
                return Err(Error::Timeout("benchmark FlashJob".into()));
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let wall = started.elapsed();
    let report = BenchReport {
        uuids: n,
        max_flash_pods,
        wall,
        api_requests: fake.requests().iter().filter(|r| !r.watch).count(),
        reconciles: metrics.reconciles.get(),
    };
    op.stop().await;
    Ok(report)
}
