//! Webhooks, the pure part: which events a subscription wants, how a delivery
//! is signed and checked, and when a failed delivery is tried again. The
//! server's worker (`otafleet_server::service::webhooks`) does the I/O.
//!
//! **Signature.** Every delivery carries
//! `Otafleet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! A receiver recomputes the MAC over the timestamp and the raw body with the
//! webhook's secret, compares in constant time, and refuses a timestamp too
//! far from its clock (five minutes is usual), which stops a captured delivery
//! from being replayed later. [`verify`] does exactly that. The scheme is the
//! one Stripe's webhooks use, so receivers' libraries for it apply.

use crate::backoff::Backoff;
use crate::EventKind;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Otafleet-Signature";
/// The header that names the event kind (`rollout.paused`).
pub const EVENT_HEADER: &str = "Otafleet-Event";
/// The header with the delivery's id: the same for every attempt of one
/// delivery, so a receiver can drop a repeat (delivery is at least once).
pub const DELIVERY_HEADER: &str = "Otafleet-Delivery";
/// How far a receiver should let a timestamp stray from its clock.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// One pattern of a subscription: an event kind (`action.failed`), every kind
/// of a group (`rollout.*`), or everything (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventPattern {
    All,
    Group(String),
    Kind(EventKind),
}

/// The groups of event kinds: the part before the dot (`rollout`, `action`, …).
pub fn groups() -> Vec<&'static str> {
    let mut g: Vec<&'static str> =
        EventKind::ALL.iter().filter_map(|k| k.as_str().split_once('.')).map(|p| p.0).collect();
    g.dedup();
    g.sort_unstable();
    g.dedup();
    g
}

impl FromStr for EventPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(EventPattern::All);
        }
        if let Some(group) = s.strip_suffix(".*") {
            return if groups().contains(&group) {
                Ok(EventPattern::Group(group.to_string()))
            } else {
                Err(format!("unknown event group '{group}' in '{s}', expected one of: {}", groups().join(", ")))
            };
        }
        s.parse::<EventKind>().map(EventPattern::Kind).map_err(|_| {
            format!(
                "unknown event kind '{s}': use a kind such as action.failed, a group such as rollout.* \
                 (groups: {}), or *",
                groups().join(", ")
            )
        })
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventPattern::All => f.write_str("*"),
            EventPattern::Group(g) => write!(f, "{g}.*"),
            EventPattern::Kind(k) => f.write_str(k.as_str()),
        }
    }
}

impl EventPattern {
    pub fn matches(&self, kind: EventKind) -> bool {
        match self {
            EventPattern::All => true,
            EventPattern::Group(g) => kind.as_str().split_once('.').is_some_and(|(group, _)| group == g),
            EventPattern::Kind(k) => *k == kind,
        }
    }
}

/// What a webhook subscribes to: at least one pattern; an event is delivered
/// once if any matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter(Vec<EventPattern>);

/// At most this many patterns in one subscription.
pub const MAX_PATTERNS: usize = 64;

impl EventFilter {
    /// Parses patterns as given (each may also be comma-separated, as the CLI
    /// takes them); duplicates are dropped, the order is kept.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<EventFilter, String> {
        let mut out: Vec<EventPattern> = Vec::new();
        for raw in patterns {
            for part in raw.as_ref().split(',') {
                if part.trim().is_empty() {
                    return Err("an empty pattern (a stray comma?)".into());
                }
                let p: EventPattern = part.parse()?;
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        if out.is_empty() {
            return Err("at least one event pattern is needed, e.g. rollout.* or action.failed".into());
        }
        if out.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} patterns"));
        }
        Ok(EventFilter(out))
    }

    pub fn matches(&self, kind: EventKind) -> bool {
        self.0.iter().any(|p| p.matches(kind))
    }

    pub fn patterns(&self) -> &[EventPattern] {
        &self.0
    }

    /// The patterns as strings, as they are stored and shown.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|p| p.to_string()).collect()
    }
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The `Otafleet-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex::encode(mac(secret, timestamp, body).finalize().into_bytes()))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature header (expected t=<seconds>,v1=<hex>)")]
    Malformed,
    #[error("timestamp {0} s away from now, more than the tolerance")]
    Stale(i64),
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// Checks a signature header against `body` at `now` (Unix seconds). Accepts
/// several `v1=` values (a secret being rotated); the timestamp must be within
/// `tolerance_secs` of `now`.
pub fn verify(header: &str, secret: &[u8], body: &[u8], now: i64, tolerance_secs: i64) -> Result<(), SignatureError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now.saturating_sub(t).saturating_abs();
    if skew > tolerance_secs {
        return Err(SignatureError::Stale(skew));
    }
    // `verify_slice` compares in constant time.
    if sigs.iter().any(|s| mac(secret, t, body).verify_slice(s).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// When a failed delivery is tried again, and when it is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 10 s doubling to an hour, 12 attempts: the last about 3.4 hours after
    /// the first, long enough to ride out a receiver's deploy or an outage.
    fn default() -> Self {
        RetryPolicy { backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(3600)), max_attempts: 12 }
    }
}

impl RetryPolicy {
    /// After `attempts` failed attempts, the wait before the next, or None
    /// when the delivery is given up.
    pub fn next(&self, attempts: u32) -> Option<Duration> {
        (attempts < self.max_attempts).then(|| self.backoff.delay(attempts))
    }
}

/// Whether a receiver's answer counts as delivered: any 2xx. Everything else
/// (3xx included: redirects are not followed, the URL is what was registered)
/// is retried.
pub fn delivered(status: u16) -> bool {
    (200..300).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patterns_parse_and_match() {
        let f = EventFilter::parse(&["rollout.*,action.failed"]).unwrap();
        assert_eq!(f.to_strings(), vec!["rollout.*", "action.failed"]);
        assert!(f.matches(EventKind::RolloutPaused));
        assert!(f.matches(EventKind::RolloutGatePassed));
        assert!(f.matches(EventKind::ActionFailed));
        assert!(!f.matches(EventKind::ActionSucceeded));
        assert!(!f.matches(EventKind::DeviceRegistered));
        assert!(EventFilter::parse(&["*"]).unwrap().matches(EventKind::TokenRevoked));
        assert_eq!(EventFilter::parse(&["action.failed", "action.failed"]).unwrap().patterns().len(), 1);
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(EventFilter::parse::<&str>(&[]).unwrap_err().contains("at least one"));
        assert!(EventFilter::parse(&["rollout.*,"]).unwrap_err().contains("empty"));
        let e = EventFilter::parse(&["rolout.*"]).unwrap_err();
        assert!(e.contains("unknown event group 'rolout'") && e.contains("rollout"), "{e}");
        let e = EventFilter::parse(&["action.exploded"]).unwrap_err();
        assert!(e.contains("unknown event kind 'action.exploded'"), "{e}");
        assert!(EventFilter::parse(&["rollout"]).is_err());
        assert!(EventFilter::parse(&["*.failed"]).is_err());
    }

    #[test]
    fn the_groups_are_the_kinds_prefixes() {
        let g = groups();
        for want in ["action", "device", "release", "rollout", "token"] {
            assert!(g.contains(&want), "{g:?}");
        }
    }

    #[test]
    fn a_signature_verifies_and_a_changed_body_or_old_timestamp_does_not() {
        let secret = b"whsec_test";
        let body = br#"{"id":1,"kind":"rollout.paused"}"#;
        let h = sign(secret, 1_700_000_000, body);
        assert!(h.starts_with("t=1700000000,v1="), "{h}");
        assert_eq!(verify(&h, secret, body, 1_700_000_100, 300), Ok(()));
        assert_eq!(verify(&h, secret, b"{}", 1_700_000_100, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(&h, b"other", body, 1_700_000_100, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(&h, secret, body, 1_700_000_301, 300), Err(SignatureError::Stale(301)));
        assert_eq!(verify("v1=00", secret, body, 0, 300), Err(SignatureError::Malformed));
        assert_eq!(verify("t=1,v1=zz", secret, body, 1, 300), Err(SignatureError::Malformed));
        // A second v1 (a rotated secret) is accepted beside a wrong one.
        let two = format!("{},v1={}", sign(b"old", 5, body), sign(secret, 5, body).split("v1=").nth(1).unwrap());
        assert_eq!(verify(&two, secret, body, 5, 300), Ok(()));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // The MAC is over "<t>.<body>".
        let mut m = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        m.update(b"42.hello");
        let want = hex::encode(m.finalize().into_bytes());
        assert_eq!(sign(b"key", 42, b"hello"), format!("t=42,v1={want}"));
        // And the HMAC itself against RFC 4231, test case 2.
        let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retries_back_off_then_give_up() {
        let p = RetryPolicy::default();
        assert_eq!(p.next(1), Some(Duration::from_secs(10)));
        assert_eq!(p.next(2), Some(Duration::from_secs(20)));
        assert_eq!(p.next(11), Some(Duration::from_secs(3600)));
        assert_eq!(p.next(12), None);
        let total: u64 = (1..p.max_attempts).filter_map(|a| p.next(a)).map(|d| d.as_secs()).sum();
        assert_eq!(total, 12_310, "the last attempt about 3.4 h after the first");
        assert!(delivered(204) && !delivered(302) && !delivered(500) && !delivered(199));
    }

    proptest! {
        #[test]
        fn every_signed_body_verifies(secret in proptest::collection::vec(any::<u8>(), 1..64),
                                      body in proptest::collection::vec(any::<u8>(), 0..512),
                                      t in 0i64..4_000_000_000, skew in -300i64..=300) {
            let h = sign(&secret, t, &body);
            prop_assert_eq!(verify(&h, &secret, &body, t + skew, 300), Ok(()));
            let mut other = body.clone();
            other.push(b'x');
            prop_assert_eq!(verify(&h, &secret, &other, t, 300), Err(SignatureError::Mismatch));
        }
    }
}
