//! Group commit of device status reports.
//!
//! Every status report is a write transaction (action, event, device). With
//! one transaction per report the fleet's final reports queue on the single
//! SQLite writer, each paying its own commit. Handlers instead hand their
//! report to one writer task, which takes everything queued so far (up to
//! `MAX_BATCH`) and applies it in one transaction with [`Store::report_statuses`]:
//! under load batches grow by themselves, when idle a report is written alone
//! at once. Each report still gets its own outcome; a database error on a
//! batch is retried report by report, so one bad report cannot fail its
//! neighbours.

use otafleet_core::protocol::StatusReport;
use otafleet_store::{Action, ReportOutcome, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;
use uuid::Uuid;

/// Most reports applied in one transaction.
pub const MAX_BATCH: usize = 512;

type Outcome = Result<(ReportOutcome, Action), StoreError>;

struct Job {
    device: Uuid,
    report: StatusReport,
    reply: oneshot::Sender<Outcome>,
}

/// The handle handlers submit reports through (cheap to clone).
#[derive(Clone)]
pub struct ReportQueue {
    tx: mpsc::Sender<Job>,
}

impl ReportQueue {
    /// Starts the writer task; it ends when the last handle is dropped.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 8);
        tokio::spawn(writer(store, rx));
        Self { tx }
    }

    /// Applies one report (batched with whatever else is waiting).
    pub async fn submit(&self, device: Uuid, report: StatusReport) -> Outcome {
        let (reply, rx) = oneshot::channel();
        let closed = || StoreError::Unavailable("the server is shutting down".into());
        self.tx.send(Job { device, report, reply }).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let now = otafleet_store::now_ms();
        let (reports, replies): (Vec<_>, Vec<_>) = jobs.drain(..).map(|j| ((j.device, j.report), j.reply)).unzip();
        match store.report_statuses(&reports, now).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                warn!(error = %e, reports = reports.len(), "batched status reports failed; applying them one by one");
                for ((device, report), reply) in reports.iter().zip(replies) {
                    let _ = reply.send(store.report_status(*device, report, now).await);
                }
            }
        }
    }
}
