//! Fuzz targets, one test pair per target: the corpus replayed (`*_corpus`), then the target
//! fuzzed from it (`*_fuzz`); round trips where an encoder exists (`*_round_trip`).
//! `FUZZ_CASES` sets the cases per target (see the `gps_fuzz` crate docs).

mod envelope;
mod gen;
mod websocket;
mod wire;
