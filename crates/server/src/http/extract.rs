//! Request extractors that turn malformed input into [`ApiError`]s naming the
//! field at fault (axum's own rejections are plain text).

use super::error::ApiError;
use super::query::BadQuery;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

/// JSON body (an object), deserialized with the path of the first bad field reported.
pub struct ApiJson<T>(pub T);

fn field_of(path: &serde_path_to_error::Path) -> Option<String> {
    let p = path.to_string();
    (p != "." && !p.is_empty()).then_some(p)
}

/// serde's messages mention "at line 1 column 12": keep that, it helps.
fn data_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>, what: &str) -> ApiError {
    let field = field_of(e.path());
    let inner = e.inner().to_string();
    match field {
        Some(f) => ApiError::invalid(&f, format!("{what} field '{f}': {inner}")),
        None => {
            // Missing fields are reported by serde without a path.
            let missing = inner.strip_prefix("missing field `").and_then(|r| r.split('`').next()).map(str::to_string);
            match missing {
                Some(m) => ApiError::invalid(&m, format!("{what}: {inner}")),
                None => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("{what}: {inner}")),
            }
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body is larger than the limit")
            } else {
                ApiError::bad_request(format!("could not read the body: {e}"))
            }
        })?;
        json_object(&bytes).map(ApiJson)
    }
}

/// A JSON object read from `bytes` (a request body, an MQTT payload), with
/// the errors a body gets: malformed JSON (400), or the field at fault (422).
pub fn json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body of this API is an object. serde would also build a
    // struct from an array of its fields in order (`[null, null]`): refuse that.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "body: expected a JSON object"))
        }
        _ => {}
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if e.inner().is_syntax() || e.inner().is_eof() {
            ApiError::bad_request(format!("malformed JSON: {}", e.inner()))
        } else {
            data_error(e, "body")
        }
    })?;
    de.end().map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Query string, with the offending parameter named on error.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        strict_utf8(q)?;
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| data_error(e, "query parameter"))
    }
}

/// [`super::query::strict_utf8`], answered as a 400 naming the parameter.
fn strict_utf8(query: &str) -> Result<(), ApiError> {
    super::query::strict_utf8(query).map_err(|e| match e {
        BadQuery::Name => ApiError::bad_request("a query parameter name is not valid UTF-8"),
        BadQuery::Value(name) => ApiError {
            field: Some(name.clone()),
            ..ApiError::bad_request(format!("query parameter '{}' is not valid UTF-8", name.escape_debug()))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::strict_utf8;

    #[test]
    fn invalid_utf8_in_a_query_is_refused_naming_the_parameter() {
        assert!(strict_utf8("version=2.0.0&wave=canary").is_ok());
        assert!(strict_utf8("version=%E2%9C%93&x=a+b&&flag").is_ok());
        let e = strict_utf8("version=%ff%fe&wave=canary").unwrap_err();
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (400, Some("version")));
        assert!(strict_utf8("%ff=1").is_err());
    }

    fn query() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        const T: &[&str] =
            &["a", "=", "&", "+", "%", "%ff", "%E2%9C", "%93", "%2", "%zz", "%EF%BF%BD", "\u{fffd}", "é", "limit", "1"];
        prop_oneof![prop::collection::vec(prop::sample::select(T), 0..16).prop_map(|t| t.concat()), any::<String>(),]
    }

    /// The property of `any_query_string`, shared with the seeds of the corpus.
    fn check(q: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        if strict_utf8(q).is_ok() {
            let sent_fffd = q.contains('\u{fffd}') || q.to_ascii_uppercase().contains("%EF%BF%BD");
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                proptest::prop_assert!(sent_fffd || !(k.contains('\u{fffd}') || v.contains('\u{fffd}')), "{:?}", q);
            }
            let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
            let _ = serde_path_to_error::deserialize::<_, otafleet_api::DeviceListQuery>(de);
        }
        Ok(())
    }

    /// Every seed of the libFuzzer target `query`'s corpus (kept with the
    /// core's, `crates/core/tests/fuzz-corpus/query`) holds the property.
    #[test]
    fn query_corpus_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fuzz-corpus/query");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let q = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            check(&q).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: std::env::var("OTAFLEET_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
            failure_persistence: None,
            ..Default::default()
        })]
        /// Fuzz (see `otafleet-core`'s `tests/fuzz.rs`; the coverage-guided
        /// target is `fuzz/fuzz_targets/query.rs`): any query string, from
        /// percent-escapes and separators or arbitrary text, never panics, and a
        /// query it lets through decodes without U+FFFD unless the client sent one.
        #[test]
        fn any_query_string(q in query()) {
            check(&q)?;
        }
    }
}
