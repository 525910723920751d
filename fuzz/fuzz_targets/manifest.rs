//! A release manifest (`protocol::Manifest`) from any JSON: never panics; its
//! canonical form reads back and is a fixed point (the property of
//! `crates/core/tests/fuzz.rs`, `manifest_json`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otafleet_core::protocol::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let c = m.canonical();
        let back: Manifest = serde_json::from_str(&c).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(back.canonical(), c, "canonical form is a fixed point");
    }
});
