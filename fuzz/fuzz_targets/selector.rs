//! `Selector::parse` on any input: never panics; an accepted selector prints
//! to a form that parses back to an equal selector, and both match the same
//! label sets (the properties of `crates/core/tests/fuzz.rs`, `selector_parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otafleet_core::selector::{Labels, Selector};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fuzz_target!(|data: &[u8]| {
    let sets = [
        labels(&[("a", "x"), ("site", "a")]),
        labels(&[]),
        labels(&[("k8s.io/role", "edge"), ("site", "b"), ("x", "-")]),
    ];
    let s = String::from_utf8_lossy(data);
    if let Ok(sel) = Selector::parse(&s) {
        let printed = sel.to_string();
        let again = Selector::parse(&printed);
        assert_eq!(again.as_ref(), Ok(&sel), "{s:?} printed as {printed:?}");
        let again = again.unwrap();
        for l in &sets {
            assert_eq!(sel.matches(l), again.matches(l), "{s:?} on {l:?}");
        }
    }
});
