//! The strict UTF-8 check of a query string behind [`super::extract::ApiQuery`].
//!
//! Self-contained on purpose (std and `percent_encoding` only, nothing of the
//! server): the libFuzzer target `fuzz/fuzz_targets/query.rs` compiles this
//! very file with `#[path]`, so fuzzing it does not build the whole server.

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadQuery {
    /// A parameter name does not decode to UTF-8.
    Name,
    /// The value of this parameter (its decoded name) does not decode to UTF-8.
    Value(String),
}

/// `form_urlencoded` decodes invalid UTF-8 to U+FFFD, which would then be
/// stored as if the client had sent it: refuse such a query instead, naming
/// the parameter. Decodes as `form_urlencoded` does: pairs split on `&`, name
/// and value on the first `=`, `+` is a space, then percent-escapes.
pub fn strict_utf8(query: &str) -> Result<(), BadQuery> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let plus = s.replace('+', " ");
            percent_encoding::percent_decode_str(&plus).decode_utf8().map(|c| c.into_owned())
        };
        let name = decode(key).map_err(|_| BadQuery::Name)?;
        if decode(value).is_err() {
            return Err(BadQuery::Value(name));
        }
    }
    Ok(())
}
