//! Maintenance windows such as `Mon-Fri 22:00-04:00 UTC`.
//!
//! Grammar: `[DAYS] HH:MM-HH:MM [UTC|UTC+HH:MM|UTC-HH:MM]` where DAYS is `daily`, a
//! day (`Mon`), a range (`Mon-Fri`, wrapping allowed: `Fri-Mon`) or a list
//! (`Mon,Wed,Fri`). A window whose end is not after its start runs past midnight
//! and belongs to the day it starts on. Without days it applies every day.

use crate::Millis;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 60 * MINUTE;
const NAMES: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// days[0] is Monday.
    days: [bool; 7],
    start_min: i64,
    end_min: i64,
    offset_min: i64,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid maintenance window '{input}': {message} (expected e.g. 'Mon-Fri 22:00-04:00 UTC')")]
pub struct WindowError {
    pub input: String,
    pub message: String,
}

/// Day of week of a Unix timestamp in ms, 0 = Monday (1970-01-01 was a Thursday).
fn weekday(ms: Millis) -> usize {
    (ms.div_euclid(DAY) + 3).rem_euclid(7) as usize
}

impl Window {
    fn length_min(&self) -> i64 {
        if self.end_min > self.start_min {
            self.end_min - self.start_min
        } else {
            self.end_min + 24 * 60 - self.start_min
        }
    }

    /// Start instants of occurrences beginning on the local day of `local` and the day before.
    fn contains_local(&self, local: Millis) -> bool {
        let day_start = local.div_euclid(DAY) * DAY;
        [day_start - DAY, day_start].into_iter().any(|d| {
            let open = d + self.start_min * MINUTE;
            self.days[weekday(d)] && local >= open && local < open + self.length_min() * MINUTE
        })
    }

    pub fn contains(&self, now: Millis) -> bool {
        self.contains_local(now + self.offset_min * MINUTE)
    }

    /// The next instant strictly after `now` when this window opens.
    pub fn next_open(&self, now: Millis) -> Option<Millis> {
        let local = now + self.offset_min * MINUTE;
        let day_start = local.div_euclid(DAY) * DAY;
        (0..=7)
            .map(|i| day_start + i * DAY)
            .filter(|d| self.days[weekday(*d)])
            .map(|d| d + self.start_min * MINUTE)
            .find(|open| *open > local)
            .map(|open| open - self.offset_min * MINUTE)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Digits only: `str::parse` would also take a sign (`+5`, `-1`).
fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_hhmm(s: &str) -> Option<i64> {
    let (h, m) = s.split_once(':')?;
    if h.len() > 2 || m.len() != 2 || !is_digits(h) || !is_digits(m) {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    if h == 24 && m == 0 {
        return Some(24 * 60);
    }
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn parse_day(s: &str) -> Option<usize> {
    let s = s.to_ascii_lowercase();
    if s.len() < 3 {
        return None;
    }
    NAMES.iter().position(|full| full.starts_with(&s))
}

fn parse_days(s: &str) -> Option<[bool; 7]> {
    let mut days = [false; 7];
    if s.eq_ignore_ascii_case("daily") || s == "*" {
        return Some([true; 7]);
    }
    for part in s.split(',') {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (parse_day(a)?, parse_day(b)?);
            let mut d = a;
            loop {
                days[d] = true;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        } else {
            days[parse_day(part)?] = true;
        }
    }
    Some(days)
}

fn parse_offset(s: &str) -> Option<i64> {
    let rest = s.strip_prefix("UTC").or_else(|| s.strip_prefix("utc"))?;
    if rest.is_empty() {
        return Some(0);
    }
    let (sign, hhmm) = match rest.as_bytes()[0] {
        b'+' => (1, &rest[1..]),
        b'-' => (-1, &rest[1..]),
        _ => return None,
    };
    // Whole hours: digits only, and checked, as `UTC+3333333333333333333` overflowed
    // (found by the fuzz target `strategy`).
    let mins = if hhmm.contains(':') {
        parse_hhmm(hhmm)?
    } else if is_digits(hhmm) {
        hhmm.parse::<i64>().ok()?.checked_mul(60)?
    } else {
        return None;
    };
    (mins <= 14 * 60).then_some(sign * mins)
}

impl FromStr for Window {
    type Err = WindowError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |m: &str| WindowError { input: input.to_string(), message: m.to_string() };
        let parts: Vec<&str> = input.split_whitespace().collect();
        let (days, times, tz) = match parts.as_slice() {
            [t] => ([true; 7], *t, "UTC"),
            [a, b] if a.contains(':') => ([true; 7], *a, *b),
            [d, t] => (parse_days(d).ok_or_else(|| err("unknown day"))?, *t, "UTC"),
            [d, t, z] => (parse_days(d).ok_or_else(|| err("unknown day"))?, *t, *z),
            _ => return Err(err("expected '[days] HH:MM-HH:MM [UTC]'")),
        };
        let (s, e) = times.split_once('-').ok_or_else(|| err("expected a time range HH:MM-HH:MM"))?;
        let start_min = parse_hhmm(s).filter(|m| *m < 24 * 60).ok_or_else(|| err("bad start time"))?;
        let end_min = parse_hhmm(e).ok_or_else(|| err("bad end time"))?;
        if start_min == end_min {
            return Err(err("start and end are equal"));
        }
        let offset_min = parse_offset(tz).ok_or_else(|| err("time zone must be UTC or UTC±HH:MM"))?;
        Ok(Window { days, start_min, end_min, offset_min, text: input.trim().to_string() })
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: Millis, h: i64, m: i64) -> Millis {
        day + (h * 60 + m) * MINUTE
    }

    fn monday() -> Millis {
        // Find a Monday from a known date: 2026-01-05 00:00 UTC is a Monday.
        let d = 1_767_571_200_000;
        assert_eq!(weekday(d), 0);
        d
    }

    #[test]
    fn weekday_of_epoch_is_thursday() {
        assert_eq!(weekday(0), 3);
    }

    #[test]
    fn overnight_window_belongs_to_its_start_day() {
        let w: Window = "Mon-Fri 22:00-04:00 UTC".parse().unwrap();
        let mon = monday();
        assert!(!w.contains(at(mon, 21, 59)));
        assert!(w.contains(at(mon, 22, 0)));
        assert!(w.contains(at(mon + DAY, 3, 59))); // Tuesday early morning
        assert!(!w.contains(at(mon + DAY, 4, 0)));
        assert!(w.contains(at(mon + 5 * DAY, 2, 0))); // Saturday 02:00, from Friday
        assert!(!w.contains(at(mon + 5 * DAY, 23, 0))); // Saturday night: closed
        assert!(!w.contains(at(mon, 2, 0))); // Monday 02:00 would be Sunday's window
        assert_eq!(w.next_open(at(mon, 12, 0)), Some(at(mon, 22, 0)));
        assert_eq!(w.next_open(at(mon + 5 * DAY, 12, 0)), Some(at(mon + 7 * DAY, 22, 0)));
    }

    #[test]
    fn forms_and_offsets() {
        let mon = monday();
        let w: Window = "09:00-17:00".parse().unwrap();
        assert!(w.contains(at(mon + 6 * DAY, 12, 0)));
        let w: Window = "Sat,Sun 00:00-24:00".parse().unwrap();
        assert!(w.contains(at(mon + 6 * DAY, 23, 59)));
        assert!(!w.contains(at(mon, 0, 1)));
        let w: Window = "daily 10:00-11:00 UTC+02:00".parse().unwrap();
        assert!(w.contains(at(mon, 8, 30)));
        assert!(!w.contains(at(mon, 10, 30)));
        for bad in
            ["", "Funday 10:00-11:00", "10:00", "25:00-26:00", "Mon 10:00-10:00", "Mon 10:00-11:00 PST", "a b c d"]
        {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
        let w: Window = "daily 10:00-11:00 UTC+2".parse().unwrap();
        assert!(w.contains(at(mon, 8, 30)));
        // Out-of-range or signed offsets and times are refused, never overflow.
        for bad in [
            "Mon-Fri 0:00-23:59 UTC+33333333333333333333",
            "10:00-11:00 UTC+3333333333333333333",
            "10:00-11:00 UTC+15",
            "10:00-11:00 UTC+-5",
            "10:00-11:00 UTC++5",
            "10:00-11:00 UTC+-1:00",
            "10:+5-11:00",
            "10:00-+1:00",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }
}
