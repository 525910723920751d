//! The application layer: what the server does, independent of how a request
//! arrived. HTTP handlers (`http::*`), the tracker-compatible API, the driver
//! and the MQTT bridge call into it; it calls the store and owns the hot-path
//! caches. It has its own error type, [`ServiceError`], which the HTTP edge
//! translates to status codes (`http::error`), so nothing here knows HTTP.
//!
//! - [`alerts`]: the alert evaluator (leader only) and the Alertmanager push.
//! - [`analysis`]: what a rollout's analysis checks measure (telemetry
//!   windows, Prometheus queries), gathered for the driver.
//! - [`rollouts`]: creating a rollout (release, target, eligibility, plan).
//! - [`delivery`]: the seam through which an action reaches a target and its
//!   progress comes back (check-in, status report, release notification),
//!   and the only code that keeps [`caches`] coherent with the store.
//! - [`caches`]: the caches themselves, each with its invariant.
//! - [`coherence`]: on PostgreSQL, the listener that applies other replicas'
//!   changes to the caches (through [`delivery`]).
//! - [`stream`]: the live event feed (`/api/v1/events/stream`, the dashboard).
//! - [`tokens`]: the bootstrap admin token.
//! - [`webhooks`]: the worker that delivers events to webhooks (leader only).

pub mod alerts;
pub mod analysis;
pub mod caches;
pub mod coherence;
pub mod delivery;
pub mod rollouts;
pub mod stream;
pub mod telemetry;
pub mod tokens;
pub mod webhooks;

pub use rollouts::{create_rollout, CreateRollout, ReleaseRef};

use otafleet_store::StoreError;

/// The HTTP client of the server's own outbound calls that are not webhook
/// deliveries (Prometheus queries, the Alertmanager push): one connection
/// pool, no redirects followed; each call sets its own timeout.
pub fn outbound_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap_or_default()
    })
}

/// Why an operation of the application layer failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Input that cannot be accepted, naming the field at fault.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The caller is not who it claims to be (e.g. a device token whose device is gone).
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but contradicts the current state (an illegal transition).
    #[error("{0}")]
    Conflict(String),
    /// The store is shutting down or unreachable for now.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: logged with its detail, never shown to a client.
    #[error(transparent)]
    Internal(StoreError),
}

impl ServiceError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ServiceError::Invalid { field: field.to_string(), message: message.into() }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ServiceError::Conflict(m),
            StoreError::NotFound(m) => ServiceError::NotFound(m),
            StoreError::Invalid(m) => ServiceError::Invalid { field: String::new(), message: m },
            StoreError::Unavailable(m) => ServiceError::Unavailable(m),
            other => ServiceError::Internal(other),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;
