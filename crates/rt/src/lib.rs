//! otafleet-rt: the async plumbing every otafleet process shares, written once.
//!
//! - [`shutdown_signal`]: resolves on SIGTERM or Ctrl-C; the server, the
//!   operator and the agent all stop on it.
//! - [`Retry`] / [`retry`]: exponential backoff with jitter around any
//!   fallible async operation (HTTP calls of the agent and the Kubernetes
//!   code), and the same policy as a loop helper for reconnecting clients
//!   (the MQTT loops). The delays themselves come from
//!   [`otafleet_core::backoff::Backoff`], which the rollout engine uses too.
//! - [`mqtt::run`] (feature `mqtt`): the one MQTT connection loop, which
//!   reconnects with that backoff; the server's publisher and the agent's
//!   subscriber both run on it, and [`mqtt::options`] sets up their
//!   connection (plain or TLS).
//! - [`tls`] (feature `tls`): rustls configuration for the server's listener
//!   and for every client (CA bundle, pinned certificate).
#![forbid(unsafe_code)]

#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "tls")]
pub mod tls;

use otafleet_core::backoff::Backoff;
use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// Resolves when the process is asked to stop: SIGTERM (what Kubernetes and
/// systemd send) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A retry policy: how long to wait between attempts and how many to make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    pub backoff: Backoff,
    /// Attempts in all, the first included (`None`: until it succeeds or is not retryable).
    pub max_attempts: Option<u32>,
    /// Each wait is scaled by a random factor in `[1 - jitter, 1]`, so that many
    /// clients that failed together do not retry together.
    pub jitter: f64,
}

impl Retry {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Retry { backoff: Backoff::new(initial, max), max_attempts: None, jitter: 0.0 }
    }

    pub const fn attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    pub const fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// The wait after failed attempt `attempt` (from 1), jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.backoff.delay(attempt);
        if self.jitter > 0.0 {
            let f = 1.0 - rand::thread_rng().gen_range(0.0..=self.jitter.min(1.0));
            d.mul_f64(f)
        } else {
            d
        }
    }

    /// Whether another attempt may follow failed attempt `attempt`.
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|m| attempt < m.max(1))
    }

    /// A counter for loops that retry by themselves (reconnecting clients):
    /// call [`Attempts::wait`] after a failure and [`Attempts::reset`] after a success.
    pub fn start(&self) -> Attempts {
        Attempts { policy: *self, failed: 0 }
    }
}

/// The failures so far of one retry loop; see [`Retry::start`].
#[derive(Debug, Clone)]
pub struct Attempts {
    policy: Retry,
    failed: u32,
}

impl Attempts {
    /// Records a failure and sleeps for the policy's next delay. Returns false
    /// (without sleeping) once the policy allows no more attempts.
    pub async fn wait(&mut self) -> bool {
        self.failed = self.failed.saturating_add(1);
        if !self.policy.allows(self.failed) {
            return false;
        }
        tokio::time::sleep(self.policy.delay(self.failed)).await;
        true
    }

    /// The connection (or call) worked: the next failure starts from the first delay.
    pub fn reset(&mut self) {
        self.failed = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failed
    }
}

/// Runs `op` until it succeeds, fails with an error `retryable` refuses, or the
/// policy's attempts are spent; waits the policy's delay between attempts. The
/// last error is returned.
pub async fn retry<T, E, F, Fut>(policy: &Retry, mut retryable: impl FnMut(&E) -> bool, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if retryable(&e) && policy.allows(attempt) => {
                let delay = policy.delay(attempt);
                tracing::warn!(error = %format_args!("{e:#}"), attempt, delay_ms = delay.as_millis() as u64, "retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_with_backoff_then_gives_up() {
        let calls = AtomicU32::new(0);
        let policy = Retry::new(Duration::from_millis(100), Duration::from_secs(1)).attempts(4);
        let t0 = tokio::time::Instant::now();
        let r: Result<(), String> = retry(
            &policy,
            |_| true,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("down".to_string())
            },
        )
        .await;
        assert_eq!(r.unwrap_err(), "down");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 100 + 200 + 400 ms of waits between the four attempts.
        assert_eq!(t0.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_once_on_an_error_that_is_not_retryable_and_returns_success() {
        let calls = AtomicU32::new(0);
        let policy = Retry::new(Duration::from_millis(10), Duration::from_secs(1));
        let r: Result<u32, String> = retry(
            &policy,
            |e: &String| e != "fatal",
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    Err("fatal".to_string())
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(r.unwrap_err(), "fatal");
        let r: Result<u32, String> = retry(
            &policy,
            |_| true,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    Err("flaky".to_string())
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_reset_after_success_and_jitter_only_shortens() {
        let policy = Retry::new(Duration::from_millis(100), Duration::from_secs(10)).attempts(3).jitter(0.5);
        for a in 1..10 {
            let d = policy.delay(a);
            let full = policy.backoff.delay(a);
            assert!(d <= full && d >= full / 2, "{d:?} vs {full:?}");
        }
        let mut at = policy.start();
        assert!(at.wait().await);
        assert!(at.wait().await);
        assert!(!at.wait().await, "the third failure spends the policy");
        at.reset();
        assert_eq!(at.failures(), 0);
        assert!(at.wait().await);
    }
}
