//! A rollout strategy (`StrategySpec`) from any JSON: never panics; an
//! accepted spec re-serializes to JSON that reads back to an equal spec, and
//! both resolve alike (the properties of `crates/core/tests/fuzz.rs`,
//! `strategy_json_and_resolve`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use otafleet_core::StrategySpec;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<StrategySpec>(data) {
        let json = serde_json::to_string(&spec).expect("a parsed spec serializes");
        let back: StrategySpec = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(back, spec);
        let resolved = spec.resolve(7);
        assert_eq!(resolved.is_ok(), back.resolve(7).is_ok());
    }
});
