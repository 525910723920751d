//! The timing rules of a lease, shared by every leader election in otafleet
//! (the server's driver lease in the database, the FlashJob operator's
//! Kubernetes `Lease`): renew every third of the lease; a holder acts for two
//! thirds of it after its last successful renewal, so it stops a third of the
//! lease before anyone else may take over. Pure: callers measure time.

use std::time::Duration;

/// The timing of one lease duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseClock {
    /// How long the lease holds without renewal.
    pub ttl: Duration,
}

impl LeaseClock {
    /// A clock for `ttl` (at least 30 ms, so its thirds are not zero).
    pub fn new(ttl: Duration) -> Self {
        LeaseClock { ttl: ttl.max(Duration::from_millis(30)) }
    }

    /// Time between two attempts to take or renew the lease: a third of it.
    pub fn renew_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// How long the holder acts after an attempt that succeeded, counted from
    /// when the attempt was sent (the database counts the lease from then too):
    /// two thirds of it, so it stops a third of the lease before anyone else
    /// may take over.
    pub fn act_window(&self) -> Duration {
        self.ttl * 2 / 3
    }
}
