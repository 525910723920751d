//! Output for people (aligned tables) and for scripts (`--output json`).
//! The table printer is a few lines of padding; a table crate would be a
//! dependency for nothing we need.

use clap::ValueEnum;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

pub fn json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A typed answer as the JSON object the table printers read (the same JSON
/// the server sent: the server serializes these very types).
pub fn value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// Typed rows for [`table`].
pub fn rows<T: Serialize>(items: &[T]) -> Vec<Value> {
    items.iter().map(value).collect()
}

/// Renders a cell: strings bare, null as "-", objects compact.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Prints rows of JSON objects as a table with the given (header, field) columns.
pub fn table(rows: &[Value], cols: &[(&str, &str)]) {
    let cells: Vec<Vec<String>> = rows.iter().map(|r| cols.iter().map(|(_, f)| cell(&r[*f])).collect()).collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).max(h.len()))
        .collect();
    let line = |vals: Vec<String>| {
        let s: Vec<String> = vals.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(cols.iter().map(|(h, _)| h.to_string()).collect());
    for r in cells {
        line(r);
    }
}

/// Prints one object as `key: value` lines.
pub fn record(v: &Value, fields: &[&str]) {
    let w = fields.iter().map(|f| f.len()).max().unwrap_or(0);
    for f in fields {
        println!("{f:<w$}  {}", cell(&v[*f]));
    }
}
