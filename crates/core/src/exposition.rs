//! The Prometheus text exposition format (version 0.0.4), read: what a
//! robot application's `/metrics` answers, which the agent scrapes and
//! forwards as telemetry samples.
//!
//! Only what forwarding needs is read: each sample line's metric name,
//! labels, value and optional timestamp. `# HELP` and `# TYPE` lines and
//! comments are skipped (a histogram's series arrive as the `_bucket`,
//! `_sum` and `_count` lines they are). A line that does not parse is
//! reported with its number and skipped, so one bad line of an exporter
//! does not hide the rest. Hand-written: the format is a dozen rules, and
//! the crates that read it bring a regex engine and a date library along.

use crate::Millis;
use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct ExposedSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// As written: `NaN`, `+Inf` and `-Inf` read as such.
    pub value: f64,
    /// Unix milliseconds, if the line has a timestamp.
    pub ts: Option<Millis>,
}

/// A line that could not be read: its number (from 1) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ExpositionError {
    pub line: usize,
    pub message: String,
}

/// Reads every sample line of `text`; the lines that do not parse are
/// returned beside them.
pub fn parse(text: &str) -> (Vec<ExposedSample>, Vec<ExpositionError>) {
    let (mut samples, mut errors) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(s) => samples.push(s),
            Err(message) => errors.push(ExpositionError { line: i + 1, message }),
        }
    }
    (samples, errors)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_line(line: &str) -> Result<ExposedSample, String> {
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..name_end];
    if !name.starts_with(is_name_start) {
        return Err(format!("'{}' does not start with a metric name", truncate(line)));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = parse_labels(r, &mut labels)?;
    }
    let mut parts = rest.split_ascii_whitespace();
    let value = parts.next().ok_or_else(|| format!("{name}: no value"))?;
    let value = parse_value(value).ok_or_else(|| format!("{name}: '{}' is not a number", truncate(value)))?;
    let ts = match parts.next() {
        None => None,
        Some(t) => Some(t.parse::<Millis>().map_err(|_| format!("{name}: '{}' is not a timestamp", truncate(t)))?),
    };
    if let Some(extra) = parts.next() {
        return Err(format!("{name}: unexpected '{}' after the timestamp", truncate(extra)));
    }
    Ok(ExposedSample { name: name.to_string(), labels, value, ts })
}

/// Reads `a="1",b="2"}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut BTreeMap<String, String>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(r) = s.strip_prefix('}') {
            return Ok(r);
        }
        let end = s.find(|c: char| !is_name_char(c)).unwrap_or(s.len());
        let key = &s[..end];
        if key.is_empty() || !key.starts_with(is_name_start) {
            return Err(format!("a label name was expected at '{}'", truncate(s)));
        }
        s = s[end..].trim_start().strip_prefix('=').ok_or_else(|| format!("label {key}: '=' expected"))?;
        s = s.trim_start().strip_prefix('"').ok_or_else(|| format!("label {key}: a quoted value expected"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                None => return Err(format!("label {key}: the value is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("label {key}: the value is not closed")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        s = s[close + 1..].trim_start();
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err(format!("label {key}: ',' or '}}' expected"));
        }
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_an_exporter_writes() {
        let text = "# HELP cpu_temp_c The CPU's temperature.\n\
                    # TYPE cpu_temp_c gauge\n\
                    cpu_temp_c 61.5\n\
                    \n\
                    loop_latency_ms{quantile=\"0.99\",node=\"planner\"} 12 1700000000000\n\
                    http_requests_total{code=\"200\", path=\"/a \\\"b\\\" \\\\ c\\nd\",} 1027\n\
                    sensor_rate_hz{} +Inf\n\
                    up NaN\n";
        let (samples, errors) = parse(text);
        assert_eq!(errors, vec![]);
        assert_eq!(samples.len(), 5);
        assert_eq!((samples[0].name.as_str(), samples[0].value, samples[0].ts), ("cpu_temp_c", 61.5, None));
        assert_eq!(samples[1].labels["quantile"], "0.99");
        assert_eq!(samples[1].labels["node"], "planner");
        assert_eq!(samples[1].ts, Some(1_700_000_000_000));
        assert_eq!(samples[2].labels["path"], "/a \"b\" \\ c\nd");
        assert_eq!(samples[2].value, 1027.0);
        assert_eq!(samples[3].value, f64::INFINITY);
        assert!(samples[4].value.is_nan());
    }

    #[test]
    fn bad_lines_are_named_and_the_rest_kept() {
        let text = "good 1\n9bad 1\nno_value\nx{a=1} 2\nx{a=\"1\" 2\ny abc\nz 1 notatime\nw 1 2 3\nok{a=\"b\"} 3\n";
        let (samples, errors) = parse(text);
        assert_eq!(samples.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["good", "ok"]);
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 3, 4, 5, 6, 7, 8]);
        assert!(errors[0].to_string().starts_with("line 2: "), "{}", errors[0]);
        assert!(errors[4].message.contains("is not a number"), "{}", errors[4]);
    }

    proptest! {
        /// Whatever the bytes, reading never panics, and every line is
        /// either a sample or an error (or a comment or blank).
        #[test]
        fn never_panics(text in "\\PC{0,300}") {
            let (samples, errors) = parse(&text);
            let lines = text.lines().filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#')).count();
            prop_assert_eq!(samples.len() + errors.len(), lines);
        }

        /// What a writer writes (names, escaped label values, finite values) reads back.
        #[test]
        fn round_trips(
            name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            labels in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", "\\PC{0,12}", 0..4),
            value in -1e12f64..1e12,
            ts in proptest::option::of(0i64..4_000_000_000_000),
        ) {
            let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let body: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
            let mut line = format!("{name}{{{}}} {value}", body.join(","));
            if let Some(t) = ts { line.push_str(&format!(" {t}")); }
            let (samples, errors) = parse(&line);
            prop_assert_eq!(errors, vec![]);
            prop_assert_eq!(samples, vec![ExposedSample { name, labels, value, ts }]);
        }
    }
}
