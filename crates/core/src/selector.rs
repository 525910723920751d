//! Label selectors in the Kubernetes syntax: `device_type=esp32,site in (a,b)`.
//!
//! Supported requirements: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
//! `k` (key exists) and `!k` (key absent). Requirements are AND-ed. The parsed form
//! is used both to match in memory and, by the store, to build SQL.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Labels on a device: an ordered map so output is stable.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Requirement {
    Eq { key: String, value: String },
    NotEq { key: String, value: String },
    In { key: String, values: Vec<String> },
    NotIn { key: String, values: Vec<String> },
    Exists { key: String },
    NotExists { key: String },
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::Eq { key, .. }
            | Requirement::NotEq { key, .. }
            | Requirement::In { key, .. }
            | Requirement::NotIn { key, .. }
            | Requirement::Exists { key }
            | Requirement::NotExists { key } => key,
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let got = labels.get(self.key());
        match self {
            Requirement::Eq { value, .. } => got == Some(value),
            Requirement::NotEq { value, .. } => got != Some(value),
            Requirement::In { values, .. } => got.is_some_and(|g| values.contains(g)),
            Requirement::NotIn { values, .. } => !got.is_some_and(|g| values.contains(g)),
            Requirement::Exists { .. } => got.is_some(),
            Requirement::NotExists { .. } => got.is_none(),
        }
    }
}

/// A parsed selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector at position {position}: {message}")]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

impl Selector {
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        Parser { s: input.as_bytes(), pos: 0 }.parse()
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Eq { key, value } => write!(f, "{key}={value}")?,
                Requirement::NotEq { key, value } => write!(f, "{key}!={value}")?,
                Requirement::In { key, values } => write!(f, "{key} in ({})", values.join(","))?,
                Requirement::NotIn { key, values } => write!(f, "{key} notin ({})", values.join(","))?,
                Requirement::Exists { key } => write!(f, "{key}")?,
                Requirement::NotExists { key } => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

/// A label key or value is made of these characters (Kubernetes' alphabet).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')
}

/// Validates one label key (non-empty, at most 253 characters, selector alphabet).
pub fn validate_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err(format!("label key '{key}' must be 1 to 253 characters"));
    }
    if !key.bytes().all(is_word_byte) {
        return Err(format!("label key '{key}' may only contain letters, digits, '.', '_', '-' and '/'"));
    }
    Ok(())
}

/// Validates one label value (at most 63 characters, no '/').
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err(format!("label value '{value}' is longer than 63 characters"));
    }
    if !value.bytes().all(|b| is_word_byte(b) && b != b'/') {
        return Err(format!("label value '{value}' may only contain letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, SelectorError> {
        Err(SelectorError { position: self.pos, message: message.into() })
    }

    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self.pos < self.s.len() && is_word_byte(self.s[self.pos]) {
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.pos]).into_owned()
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let at = self.pos;
        let k = self.word();
        if let Err(m) = validate_label_key(&k) {
            self.pos = at;
            return self.err(if k.is_empty() { "expected a label key".to_string() } else { m });
        }
        Ok(k)
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let at = self.pos;
        let v = self.word();
        if let Err(m) = validate_label_value(&v) {
            self.pos = at;
            return self.err(m);
        }
        Ok(v)
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.skip_ws();
        if !self.eat("(") {
            return self.err("expected '(' after in/notin");
        }
        let mut values = Vec::new();
        loop {
            let v = self.value()?;
            if v.is_empty() {
                return self.err("expected a value in the set");
            }
            values.push(v);
            self.skip_ws();
            if self.eat(")") {
                break;
            }
            if !self.eat(",") {
                return self.err("expected ',' or ')' in value set");
            }
        }
        Ok(values)
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_ws();
        if self.eat("!") {
            let key = self.key()?;
            return Ok(Requirement::NotExists { key });
        }
        let key = self.key()?;
        self.skip_ws();
        if self.eat("!=") {
            return Ok(Requirement::NotEq { key, value: self.value()? });
        }
        if self.eat("==") || self.eat("=") {
            return Ok(Requirement::Eq { key, value: self.value()? });
        }
        // `in`/`notin` must be followed by whitespace or '('.
        let rest = &self.s[self.pos..];
        let boundary = |n: usize| rest.get(n).is_none_or(|b| b.is_ascii_whitespace() || *b == b'(');
        if rest.starts_with(b"notin") && boundary(5) {
            self.pos += 5;
            return Ok(Requirement::NotIn { key, values: self.set()? });
        }
        if rest.starts_with(b"in") && boundary(2) {
            self.pos += 2;
            return Ok(Requirement::In { key, values: self.set()? });
        }
        match self.peek() {
            None | Some(b',') => Ok(Requirement::Exists { key }),
            Some(c) => self.err(format!("unexpected '{}' after key '{key}'", c as char)),
        }
    }

    fn parse(mut self) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        self.skip_ws();
        if self.pos == self.s.len() {
            return Ok(Selector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            self.skip_ws();
            if self.pos == self.s.len() {
                break;
            }
            if !self.eat(",") {
                return self.err("expected ',' between requirements");
            }
        }
        Ok(Selector { requirements })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_the_documented_example() {
        let s = Selector::parse("device_type=esp32,site in (a,b)").unwrap();
        assert_eq!(s.requirements.len(), 2);
        assert!(s.matches(&labels(&[("device_type", "esp32"), ("site", "b")])));
        assert!(!s.matches(&labels(&[("device_type", "esp32"), ("site", "c")])));
        assert!(!s.matches(&labels(&[("site", "a")])));
    }

    #[test]
    fn all_operators() {
        let l = labels(&[("a", "1"), ("b", "2")]);
        for (sel, want) in [
            ("a==1", true),
            ("a!=1", false),
            ("c!=1", true),
            ("a notin (2,3)", true),
            ("c notin (2,3)", true),
            ("a in (2,3)", false),
            ("a", true),
            ("!a", false),
            ("!c", true),
            ("  a = 1 ,  b in ( 2 ) ", true),
            ("", true),
            ("in=x", false),
            ("inx", false),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_position() {
        for bad in ["a=1,", "a in 1", "a in (1", "=1", "a=b=c", "a in ()", "a=(", "a b", "!", "a=x y"] {
            let e = Selector::parse(bad).unwrap_err();
            assert!(e.position <= bad.len(), "{bad}: {e}");
        }
        assert_eq!(Selector::parse("a=1,,b").unwrap_err().position, 4);
    }

    proptest! {
        #[test]
        fn display_round_trips(keys in proptest::collection::vec("[a-z][a-z0-9_.]{0,6}", 0..4),
                               vals in proptest::collection::vec("[a-z0-9]{1,5}", 1..3),
                               op in 0u8..6) {
            let reqs: Vec<Requirement> = keys.into_iter().map(|key| match op {
                0 => Requirement::Eq { key, value: vals[0].clone() },
                1 => Requirement::NotEq { key, value: vals[0].clone() },
                2 => Requirement::In { key, values: vals.clone() },
                3 => Requirement::NotIn { key, values: vals.clone() },
                4 => Requirement::Exists { key },
                _ => Requirement::NotExists { key },
            }).collect();
            let s = Selector { requirements: reqs };
            prop_assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
        }

        #[test]
        fn never_panics(input in ".{0,40}") {
            let _ = Selector::parse(&input);
        }
    }
}
