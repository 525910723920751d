//! `duration::parse` on any input: never panics; an accepted duration formats
//! to text that parses back to the same duration; `parse_secs` never panics
//! (the properties of `crates/core/tests/fuzz.rs`, `duration_parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otafleet_core::duration;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(d) = duration::parse(&s) {
        let printed = duration::format(d);
        assert_eq!(duration::parse(&printed), Ok(d), "{s:?} printed as {printed:?}");
    }
    let _ = duration::parse_secs(&s);
});
