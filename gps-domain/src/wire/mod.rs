//! Device wire formats: decoders for every ingest protocol (and the encoders the load generator
//! and tests use), pure functions from bytes to [`crate::Fix`]es in SI units.
