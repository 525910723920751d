//! The one duration convention: what a person types (`30s`, `5m`, `1h30m`,
//! `7d`, `250ms`; a bare number is seconds) everywhere a duration is typed —
//! CLI flags, config files, `otafleet flash --batch-delay` — and whole seconds
//! (`*_secs` fields) in JSON, where machines read it.
//!
//! Written here rather than taken from `humantime`, whose grammar also accepts
//! months and years of inexact length and tells `m` from `M` only by case: a
//! rollout's bake time should never depend on the length of a month.

use std::time::Duration;

/// A duration that does not parse, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration '{input}': {reason} (examples: 30s, 5m, 1h30m, 7d)")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

const UNITS: &[(&str, u64)] =
    &[("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000), ("w", 604_800_000)];

/// Parses `30s`, `5m`, `1h30m`, `7d`, `250ms`, or a bare number of seconds.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError { input: input.to_string(), reason };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = s.parse().map_err(|_| err("too large"))?;
        return n.checked_mul(1000).map(Duration::from_millis).ok_or_else(|| err("too large"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    let mut last_scale = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err("too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = UNITS.iter().find(|(u, _)| *u == unit).map(|(_, m)| *m).ok_or_else(|| {
            err(if unit.is_empty() {
                "a number inside a duration needs a unit"
            } else {
                "unknown unit (use ms, s, m, h, d or w)"
            })
        })?;
        if scale >= last_scale {
            return Err(err("units must go from largest to smallest, each once"));
        }
        last_scale = scale;
        total = n.checked_mul(scale).and_then(|v| total.checked_add(v)).ok_or_else(|| err("too large"))?;
    }
    Ok(Duration::from_millis(total))
}

/// Parses a duration that must be whole seconds (for `*_secs` fields).
pub fn parse_secs(input: &str) -> Result<u64, DurationError> {
    let d = parse(input)?;
    if d.subsec_millis() != 0 {
        return Err(DurationError { input: input.to_string(), reason: "must be whole seconds" });
    }
    Ok(d.as_secs())
}

/// Formats a duration the way [`parse`] reads it, largest unit first: `1h30m`, `7d`, `250ms`, `0s`.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis().min(u64::MAX as u128) as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, scale) in UNITS.iter().rev() {
        if ms >= *scale {
            out.push_str(&format!("{}{unit}", ms / scale));
            ms %= scale;
        }
    }
    out
}

/// `clap` value parser form of [`parse`].
pub fn parse_arg(s: &str) -> Result<Duration, String> {
    parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_forms_people_type() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse("2w").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1m500ms").unwrap(), Duration::from_millis(60_500));
        assert_eq!(parse(" 90 ").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_secs("1h").unwrap(), 3600);
    }

    #[test]
    fn mistakes_are_named() {
        for (s, why) in [
            ("", "empty"),
            ("5x", "unknown unit"),
            ("s", "expected a number"),
            ("1h30", "needs a unit"),
            ("30m1h", "largest to smallest"),
            ("5m5m", "largest to smallest"),
            ("1.5h", "unknown unit"),
            ("99999999999999999999s", "too large"),
        ] {
            let e = parse(s).unwrap_err();
            assert!(e.reason.contains(why), "{s:?}: {e}");
            assert!(e.to_string().contains("examples"), "{e}");
        }
        assert!(parse_secs("1500ms").is_err());
    }

    proptest! {
        #[test]
        fn format_round_trips(ms in 0u64..10_000_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
