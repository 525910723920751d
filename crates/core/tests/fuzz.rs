//! Fuzzing of the core's parsers as `cargo test` properties.
//!
//! The coverage-guided fuzzing is in `fuzz/` at the repository root: cargo-fuzz
//! (libFuzzer) targets `selector`, `strategy`, `manifest`, `duration` (and the
//! server's `query`) with these same assertions, built on the stable toolchain
//! with `--sanitizer none` and run for a bounded time by `.ci/fuzz`
//! (`OTAFLEET_FUZZ_SECS`, default 20 s per target). Both use one corpus, the
//! committed `tests/fuzz-corpus/<target>/*`.
//!
//! Here the properties run in every `cargo test` without that tooling:
//! every seed of the corpus, then random mutations of those seeds (bytes
//! inserted, replaced, deleted, seeds spliced), strings drawn from each
//! grammar's own tokens, and arbitrary Unicode. Each property asserts no
//! panic and, where the parser has an inverse, that an accepted value
//! round-trips.
//!
//! `OTAFLEET_FUZZ_CASES` sets the cases per property (default 256, so
//! `cargo test` stays quick); e.g. `OTAFLEET_FUZZ_CASES=200000 cargo test -p
//! otafleet-core --test fuzz --release` for a long run. A crash found either
//! way is fixed and its input added to the corpus.

use otafleet_core::protocol::Manifest;
use otafleet_core::selector::{Labels, Selector};
use otafleet_core::{duration, StrategySpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::PathBuf;

fn cases() -> u32 {
    std::env::var("OTAFLEET_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, u8),
    Replace(usize, u8),
    Delete(usize),
    Splice(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes weighted towards the ones parsers care about.
    let byte = prop_oneof![any::<u8>(), prop::sample::select(b"=!,() \t\n\"{}[]:-%.0123456789eE+smhdw\\".to_vec()),];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Replace(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(a, b, c)| Edit::Splice(a, b, c)),
    ]
}

/// A seed of the corpus with a few edits applied.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    (0..n, prop::collection::vec(edit(), 0..6)).prop_map(move |(i, edits)| {
        let mut s = seeds[i].clone();
        for e in edits {
            match e {
                Edit::Insert(at, b) => s.insert(at % (s.len() + 1), b),
                Edit::Replace(at, b) if !s.is_empty() => {
                    let at = at % s.len();
                    s[at] = b;
                }
                Edit::Delete(at) if !s.is_empty() => {
                    s.remove(at % s.len());
                }
                Edit::Splice(other, from, at) => {
                    let o = &seeds[other % n];
                    let from = from % (o.len() + 1);
                    let at = at % (s.len() + 1);
                    let piece = o[from..].to_vec();
                    s.splice(at..at, piece);
                }
                _ => {}
            }
        }
        s
    })
}

/// Strings made of a grammar's tokens, to reach deeper than random text.
fn tokens(alphabet: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(alphabet), 0..24).prop_map(|t| t.concat())
}

/// Runs `check` on every seed, then on mutations, token strings and arbitrary text.
fn fuzz(target: &str, alphabet: &'static [&'static str], check: impl Fn(&[u8]) -> Result<(), TestCaseError>) {
    let seeds = corpus(target);
    for s in &seeds {
        check(s).unwrap_or_else(|e| panic!("{target} seed {:?}: {e}", String::from_utf8_lossy(s)));
    }
    let input = prop_oneof![
        4 => mutated(seeds),
        2 => tokens(alphabet).prop_map(String::into_bytes),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    let runs = std::sync::atomic::AtomicU32::new(0);
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&input, |b| {
        runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        check(&b)
    }) {
        panic!("{target}: {e}");
    }
    assert!(runs.into_inner() >= cases(), "{target}: fewer runs than cases");
}

#[test]
fn selector_parse() {
    const T: &[&str] = &[
        "a",
        "site",
        "k8s.io/role",
        "=",
        "==",
        "!=",
        "!",
        ",",
        " ",
        "in",
        "notin",
        "(",
        ")",
        "x",
        "-",
        "_",
        ".",
        "9",
        "\u{e9}",
        "\t",
    ];
    let mut labels = Labels::new();
    labels.insert("a".into(), "x".into());
    labels.insert("site".into(), "a".into());
    fuzz("selector", T, |b| {
        let s = String::from_utf8_lossy(b);
        if let Ok(sel) = Selector::parse(&s) {
            let printed = sel.to_string();
            let again = Selector::parse(&printed);
            prop_assert_eq!(again.as_ref(), Ok(&sel), "{:?} printed as {:?}", s, printed);
            prop_assert_eq!(sel.matches(&labels), again.map(|a| a.matches(&labels)).unwrap_or(false));
        }
        Ok(())
    });
}

#[test]
fn duration_parse() {
    const T: &[&str] = &["0", "1", "59", "18446744073709551615", "ms", "s", "m", "h", "d", "w", " ", "x", "\u{a0}"];
    fuzz("duration", T, |b| {
        let s = String::from_utf8_lossy(b);
        if let Ok(d) = duration::parse(&s) {
            let printed = duration::format(d);
            prop_assert_eq!(duration::parse(&printed), Ok(d), "{:?} printed as {:?}", s, printed);
        }
        let _ = duration::parse_secs(&s);
        Ok(())
    });
}

#[test]
fn strategy_json_and_resolve() {
    const T: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"preset\"",
        "\"wave\"",
        "\"steps\"",
        "\"count\"",
        "\"percent\"",
        "\"windows\"",
        "\"canary\"",
        "\"blue\"",
        "\"green\"",
        "\"custom\"",
        "1",
        "0",
        "-1",
        "\"10%\"",
        "\"100%\"",
        "1e308",
        "0.5",
        "\"bake_time_secs\"",
        "\"failure_threshold\"",
        "\"batch_size\"",
        "\"Mon-Fri 22:00-04:00 UTC\"",
        "null",
        "true",
    ];
    fuzz("strategy", T, |b| {
        if let Ok(spec) = serde_json::from_slice::<StrategySpec>(b) {
            let json = serde_json::to_string(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: StrategySpec =
                serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
            prop_assert_eq!(&back, &spec);
            let resolved = spec.resolve(7);
            prop_assert_eq!(resolved.is_ok(), back.resolve(7).is_ok());
        }
        Ok(())
    });
}

#[test]
fn manifest_json() {
    const T: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"artifacts\"",
        "\"compatible\"",
        "\"kind\"",
        "\"version\"",
        "\"name\"",
        "\"sha256\"",
        "\"size\"",
        "\"a\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "0",
        "18446744073709551616",
        "-1",
        "null",
    ];
    fuzz("manifest", T, |b| {
        if let Ok(m) = serde_json::from_slice::<Manifest>(b) {
            let c = m.canonical();
            let back: Manifest = serde_json::from_str(&c).map_err(|e| TestCaseError::fail(format!("{c}: {e}")))?;
            prop_assert_eq!(back.canonical(), c, "canonical form is a fixed point");
        }
        Ok(())
    });
}
