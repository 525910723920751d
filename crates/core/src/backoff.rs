//! Exponential backoff, computed once for everyone who waits before trying
//! again: the engine's retry of a failed device (`Gate::backoff_ms`), and —
//! through `otafleet-rt` — HTTP retries in the agent and the Kubernetes code
//! and the MQTT reconnect loops. Pure: the caller sleeps, and adds jitter if it
//! wants some (`otafleet_rt::retry` does).

use std::time::Duration;

/// `initial`, doubling with every attempt, never above `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max }
    }

    /// The wait after failed attempt `attempt` (counting from 1) before the next one.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << exp).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let got: Vec<u128> = (1..=6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }
}
