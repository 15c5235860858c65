//! The fuzzing harness on stable Rust: proptest drives the targets, a kept corpus seeds them.
//!
//! A *target* is a property over bytes (`Fn(&[u8])` that panics when the property fails): a
//! decoder never panics, refuses with its typed error, and where an encoder exists, round trips.
//! Each target has a corpus, `fuzz/corpus/<target>/`, one input per file: real captures from the
//! tests and tricky cases (overlong numbers, NaN, unicode, empty, huge counts). Every run:
//!
//! 1. [`replay`] runs every corpus file through the target (a regression suite);
//! 2. [`fuzz`] runs the target over [`inputs`]: arbitrary bytes, arbitrary text, and corpus
//!    seeds mutated with flips, cuts, splices and tokens from [`TOKENS`];
//! 3. a failure is shrunk by proptest and the minimal input written to the corpus as
//!    `found-<hash>` (commit it once fixed: it is replayed from then on).
//!
//! Cases per target: `FUZZ_CASES` (default 1,000: a few seconds for every target in CI);
//! `FUZZ_CASES=200000` runs for minutes per target outside CI. The harness is used by this crate's tests (decoders of
//! `gps-domain`, fanout's client message) and by `query-api`'s parameter parser tests.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Default cases per target and run.
const DEFAULT_CASES: u32 = 1000;

/// Tokens spliced into corpus seeds: the values parsers get wrong.
pub const TOKENS: &[&str] = &[
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "-0",
    "1e999",
    "-1e999",
    "1e-400",
    "4.9e-324",
    "1.7976931348623157e308",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775807",
    "99999999999999999999999999999999999999",
    "0.000000000000000000000000000000000001",
    "144115188075855873",
    "2147483647",
    "4294967296",
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "\"\"",
    "\"é\"",
    "\\u0000",
    "\\ud800",
    "\\uDFFF",
    "é",
    "ß",
    "\u{1F600}",
    "\u{202E}",
    "\u{FEFF}",
    "\0",
    "<script>",
    "%",
    "%zz",
    "%C3%A9",
    "%FF",
    "%00",
    "&",
    "=",
    "&&==",
    ",",
    ":",
    "+",
    " ",
    "\r\n",
    "0x1F",
    "+1",
    "-",
    ".",
    "1.",
    ".5",
    "e5",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "10000-01-01T00:00:00Z",
    "2024-02-30T25:61:61Z",
    "2024-05-01 10:00:00",
    "1970-01-01T00:00:00+99:99",
    "-8334632851200001",
];

/// Cases per target: `FUZZ_CASES`, or [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// The corpus directory of `target`: `fuzz/corpus` of the checkout the tests run from (found
/// above the `CARGO_MANIFEST_DIR` that cargo and nextest set when they run a test, whichever
/// package's), else where this crate was compiled. The compile-time path alone is not enough: a
/// shared target directory keeps this crate built from another checkout of the same sources
/// (CI's clone), path and all.
pub fn corpus_dir(target: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .and_then(|dir| {
            PathBuf::from(dir)
                .ancestors()
                .map(|a| a.join("fuzz").join("corpus"))
                .find(|c| c.is_dir())
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"))
        .join(target)
}

/// Every corpus file of `target`, by name. A target without a corpus is a mistake (a renamed
/// directory would silently replay nothing), so that panics.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} cannot be read: {e}", dir.display()));
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path())
                .unwrap_or_else(|err| panic!("corpus file {name} of {target}: {err}"));
            (name, bytes)
        })
        .collect();
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds.sort();
    seeds
}

/// Run every corpus file of `target` through `property`; a failure names the file.
pub fn replay(target: &str, property: impl Fn(&[u8])) {
    for (name, bytes) in seeds(target) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| property(&bytes))) {
            panic!(
                "corpus file fuzz/corpus/{target}/{name} fails: {}",
                panic_text(&*panic)
            );
        }
    }
}

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, prop::sample::Index),
    Replace(prop::sample::Index, usize, prop::sample::Index),
    Delete(prop::sample::Index, usize),
    Truncate(prop::sample::Index),
    Duplicate(prop::sample::Index, usize, u8),
    Splice(prop::sample::Index, prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<prop::sample::Index>;
    prop_oneof![
        (at(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (at(), at()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (at(), 1usize..8, at()).prop_map(|(i, n, t)| Mutation::Replace(i, n, t)),
        (at(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        at().prop_map(Mutation::Truncate),
        (at(), 1usize..32, 1u8..64).prop_map(|(i, n, k)| Mutation::Duplicate(i, n, k)),
        (at(), at()).prop_map(|(i, s)| Mutation::Splice(i, s)),
    ]
}

fn apply(mut data: Vec<u8>, edits: &[Mutation], seeds: &[Vec<u8>]) -> Vec<u8> {
    // Positions are taken over `len + 1` so that an edit can land at the end.
    let pos = |i: &prop::sample::Index, data: &Vec<u8>| i.index(data.len() + 1);
    for edit in edits {
        match edit {
            Mutation::Flip(i, bit) => {
                if !data.is_empty() {
                    let at = i.index(data.len());
                    data[at] ^= 1 << bit;
                }
            }
            Mutation::Insert(i, t) => {
                let at = pos(i, &data);
                let token = TOKENS[t.index(TOKENS.len())].as_bytes();
                data.splice(at..at, token.iter().copied());
            }
            Mutation::Replace(i, n, t) => {
                let at = pos(i, &data);
                let end = (at + n).min(data.len());
                let token = TOKENS[t.index(TOKENS.len())].as_bytes();
                data.splice(at..end, token.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = pos(i, &data);
                let end = (at + n).min(data.len());
                data.drain(at..end);
            }
            Mutation::Truncate(i) => {
                let at = pos(i, &data);
                data.truncate(at);
            }
            Mutation::Duplicate(i, n, times) => {
                // Repeats a slice: huge counts, deep nesting, long runs of digits.
                let at = pos(i, &data);
                let end = (at + n).min(data.len());
                let slice = data[at..end].to_vec();
                for _ in 0..*times {
                    data.splice(end..end, slice.iter().copied());
                }
            }
            Mutation::Splice(i, s) => {
                // The tail of another seed: crossing two formats' shapes.
                let other = &seeds[s.index(seeds.len())];
                let at = pos(i, &data);
                let from = i.index(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
        }
    }
    data
}

/// Inputs for `target`: arbitrary bytes, arbitrary text, and its corpus seeds mutated.
pub fn inputs(target: &str) -> BoxedStrategy<Vec<u8>> {
    let seeds: Vec<Vec<u8>> = seeds(target).into_iter().map(|(_, b)| b).collect();
    let count = seeds.len();
    let mutated = (
        0..count,
        prop::collection::vec(mutation(), 1..6),
        Just(std::sync::Arc::new(seeds)),
    )
        .prop_map(|(i, edits, seeds)| apply(seeds[i].clone(), &edits, &seeds));
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..2048),
        1 => any::<String>().prop_map(String::into_bytes),
        4 => mutated,
    ]
    .boxed()
}

/// Run `property` over [`inputs`] of `target` for [`cases`] cases; a failure is shrunk, written
/// to the corpus as `found-<hash>`, and reported.
pub fn fuzz(target: &str, property: impl Fn(&[u8])) {
    fuzz_with(
        target,
        inputs(target),
        |data: &Vec<u8>| property(data),
        |v| v.clone(),
    );
}

/// Run `property` over a strategy of structured values (e.g. round trips of generated fixes);
/// `to_bytes` gives the corpus form of a failing value.
pub fn fuzz_with<S: Strategy>(
    target: &str,
    strategy: S,
    property: impl Fn(&S::Value),
    to_bytes: impl Fn(&S::Value) -> Vec<u8>,
) {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    quiet_panics_in_cases();
    let result = runner.run(&strategy, |value| {
        IN_CASE.with(|c| c.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| property(&value)));
        IN_CASE.with(|c| c.set(false));
        outcome.map_err(|panic| TestCaseError::fail(panic_text(&*panic)))
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => {
            let bytes = to_bytes(&value);
            let path = corpus_dir(target).join(format!("found-{:016x}", fnv1a(&bytes)));
            let saved = std::fs::write(&path, &bytes)
                .map(|()| format!("saved as {}", path.display()))
                .unwrap_or_else(|e| format!("not saved ({e})"));
            panic!(
                "fuzz target {target} failed: {reason}\nminimal input ({saved}): {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Err(TestError::Abort(reason)) => panic!("fuzz target {target} aborted: {reason}"),
    }
}

/// Percent-encode the bytes a client could not put in a URI as they are, keeping the query
/// syntax (`&`, `=`, `+`, `%`) so that the parameters split as the server splits them.
pub fn as_query(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    for &b in data {
        if b.is_ascii_alphanumeric() || b"&=+%-._~,:!$'()*;/?@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

thread_local! {
    /// Whether this thread is running a fuzz case (whose panics are reported once, shrunk).
    static IN_CASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic hook that stays quiet inside fuzz cases (each shrink step would print one) and
/// reports every other panic as before; installed once per process.
fn quiet_panics_in_cases() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_CASE.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// A stable 64-bit FNV-1a hash: corpus file names that do not change between runs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds_and_query_encoding_keeps_the_syntax() {
        let seeds = vec![b"abc".to_vec(), Vec::new()];
        let mut runner = TestRunner::default();
        runner
            .run(
                &(0..2usize, prop::collection::vec(mutation(), 1..8)),
                |(i, edits)| {
                    let _ = apply(seeds[i].clone(), &edits, &seeds);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(as_query("a=é&b=1 2".as_bytes()), "a=%C3%A9&b=1%202");
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
