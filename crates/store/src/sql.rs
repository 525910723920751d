//! A tiny SQL builder for dynamic filters with `$N` placeholders, which both
//! SQLite and PostgreSQL understand through sqlx's `Any` driver.

use crate::Backend;
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;

#[derive(Debug, Clone)]
pub(crate) enum Arg {
    I64(i64),
    F64(f64),
    Str(String),
}

#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub text: String,
    args: Vec<Arg>,
}

impl Sql {
    pub fn new(text: &str) -> Self {
        Sql { text: text.to_string(), args: Vec::new() }
    }

    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Appends a placeholder bound to `arg`.
    pub fn bind(&mut self, arg: Arg) -> &mut Self {
        self.args.push(arg);
        let n = self.args.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    pub fn bind_str(&mut self, s: &str) -> &mut Self {
        self.bind(Arg::Str(s.to_string()))
    }

    pub fn bind_i64(&mut self, v: i64) -> &mut Self {
        self.bind(Arg::I64(v))
    }

    pub fn bind_f64(&mut self, v: f64) -> &mut Self {
        self.bind(Arg::F64(v))
    }

    /// `($1, $2, …)` for a list of strings.
    pub fn bind_list(&mut self, items: &[String]) -> &mut Self {
        self.push("(");
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind_str(it);
        }
        self.push(")")
    }

    pub fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for a in &self.args {
            q = match a {
                Arg::I64(v) => q.bind(*v),
                Arg::F64(v) => q.bind(*v),
                Arg::Str(s) => q.bind(s.clone()),
            };
        }
        q
    }
}

/// The `FROM` item that unpacks bound parameter `$n`, a JSON array of arrays,
/// into rows `j` (in array order by `j.key`): set-based writes of many rows in
/// one statement.
pub(crate) fn json_rows(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => format!("json_each(${n}) j"),
        Backend::Postgres => format!("jsonb_array_elements(${n}::text::jsonb) WITH ORDINALITY AS j(value, key)"),
    }
}

/// Element `i` of a [`json_rows`] row, as text (or with `cast` on PostgreSQL;
/// SQLite keeps the JSON type: integers stay integers).
pub(crate) fn json_col(backend: Backend, i: usize, cast: Option<&str>) -> String {
    match (backend, cast) {
        (Backend::Sqlite, _) => format!("json_extract(j.value, '$[{i}]')"),
        (Backend::Postgres, None) => format!("(j.value ->> {i})"),
        (Backend::Postgres, Some(t)) => format!("(j.value ->> {i})::{t}"),
    }
}

/// A [`json_rows`] row that is a plain string (an array of strings), as text.
pub(crate) fn json_scalar(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => "j.value".to_string(),
        Backend::Postgres => "(j.value #>> '{}')".to_string(),
    }
}
