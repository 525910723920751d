//! The server's strict query parsing (`ApiQuery`: `strict_utf8`, then
//! `serde_urlencoded` with the path of a bad field) on any query string: never
//! panics, and a query it lets through decodes without U+FFFD unless the
//! client sent one (the property of `crates/server/src/http/extract.rs`,
//! `any_query_string`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otafleet_api::tracker::DeployQuery;
use otafleet_api::{DeviceListQuery, EventListQuery, RolloutListQuery};
use serde::de::DeserializeOwned;

/// The server's own source, not a copy (see the file's header).
#[path = "../../crates/server/src/http/query.rs"]
#[allow(dead_code)]
mod query;

fn decode<T: DeserializeOwned>(q: &str) {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
    let _ = serde_path_to_error::deserialize::<_, T>(de);
}

fuzz_target!(|data: &[u8]| {
    let q = String::from_utf8_lossy(data);
    if query::strict_utf8(&q).is_ok() {
        let sent_fffd = q.contains('\u{fffd}') || q.to_ascii_uppercase().contains("%EF%BF%BD");
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            assert!(sent_fffd || !(k.contains('\u{fffd}') || v.contains('\u{fffd}')), "{q:?}");
        }
        decode::<DeviceListQuery>(&q);
        decode::<RolloutListQuery>(&q);
        decode::<EventListQuery>(&q);
        decode::<DeployQuery>(&q);
    }
});
