//! The crate's error type.
//!
//! Library code returns [`Error`]; the CLI entry points wrap it in `anyhow` with
//! context. Kubernetes API failures keep their `kube::Error` so callers can tell a
//! conflict (409) from a server error (5xx) with [`Error::is_retryable`].

/// Errors raised by the operator, the flasher and the updater.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the FlashJob finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// An object lacks a field the controller needs (name, namespace, uid).
    #[error("object {0} is missing {1}")]
    MissingField(String, &'static str),
    /// A FlashJob has no flasher image and the operator has no default.
    #[error("FlashJob {0} sets no flashjobPodImage and the operator has no --default-pod-image")]
    NoPodImage(String),
    /// JSON (de)serialization failed.
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    /// YAML (de)serialization failed.
    #[error("yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// The user declined a confirmation prompt.
    #[error("aborted by user")]
    Aborted,
    /// Waiting for a FlashJob or a rollout took longer than allowed.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A FlashJob finished in the Failed phase.
    #[error("FlashJob {name} failed: {message}")]
    JobFailed {
        /// Name of the failed FlashJob.
        name: String,
        /// Its status message.
        message: String,
    },
    /// A wave of `otafleet update` failed its health gate
    /// ([`otafleet_core::engine::verdict`]).
    #[error("{reason}: {}", failures.join("; "))]
    Gate {
        /// The gate's verdict, e.g. the failure rate against the threshold.
        reason: String,
        /// What went wrong with each failed object, in order.
        failures: Vec<String>,
    },
    /// Invalid input (selector, arguments).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Local I/O (stdin/stdout, files).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// HTTP status code of an API error, if this is one.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            Error::Kube(kube::Error::Api(resp)) => Some(resp.code),
            _ => None,
        }
    }

    /// Whether repeating the same request may succeed: 5xx, 429 and transport errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(resp)) => resp.code >= 500 || resp.code == 429,
            Error::Kube(kube::Error::HyperError(_))
            | Error::Kube(kube::Error::Service(_))
            | Error::Kube(kube::Error::ReadEvents(_)) => true,
            _ => false,
        }
    }

    /// Short label for metrics; errors of a reconcile inside the finalizer are
    /// labelled by their cause.
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Error::Kube(kube::Error::Api(r)) if r.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(r)) if r.code >= 500 => "server",
            Error::Kube(_) => "api",
            Error::MissingField(..) | Error::Invalid(_) | Error::NoPodImage(_) => "invalid",
            _ => "other",
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a kube error is a 404.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == 404)
}

/// Whether a kube error is a 409 (AlreadyExists or Conflict).
pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == 409)
}

pub(crate) fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}
