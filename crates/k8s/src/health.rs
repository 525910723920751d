//! The operator's HTTP endpoints: `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` answers as long as the process serves requests. `/readyz` turns
//! 200 once the API server was reached and the FlashJob CRD is installed —
//! standby replicas are ready too (they serve metrics and wait for the Lease);
//! the body says which role the replica has.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Shared state of the health server.
pub struct Health {
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    leader: AtomicBool,
}

impl Health {
    /// Not ready, not leader.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics, ready: AtomicBool::new(false), leader: AtomicBool::new(false) }
    }

    /// Marks the replica ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::SeqCst);
        self.metrics.leader.set(i64::from(leader));
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }
}

/// The health router.
pub fn router(state: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if !h.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready");
    }
    (StatusCode::OK, if h.is_leader() { "ready (leader)" } else { "ready (standby)" })
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], h.metrics.encode())
}

/// Binds `addr`; returns the bound address and the serving future.
pub async fn bind(
    addr: SocketAddr,
    state: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let serve = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown);
    Ok((bound, async move { serve.await }))
}
