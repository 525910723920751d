//! Timestamps at the HTTP edge: stored as Unix milliseconds, shown as RFC 3339.

use std::time::{Duration, UNIX_EPOCH};

pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn rfc3339_opt(ms: Option<i64>) -> Option<String> {
    ms.map(rfc3339)
}

/// Parses an RFC 3339 timestamp into Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("'{s}' is not an RFC 3339 timestamp: {e}"))?;
    Ok(t.duration_since(UNIX_EPOCH).map_err(|_| format!("'{s}' is before 1970"))?.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_milliseconds() {
        let ms = 1_764_000_000_123;
        let s = rfc3339(ms);
        assert!(s.ends_with('Z'), "{s}");
        assert_eq!(parse_rfc3339(&s).unwrap(), ms);
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
