//! Ingest integration tests, against the real stack (`dev/stack up`).

mod abuse;
mod bad_input;
mod broker_down;
mod credentials;
mod protocols;
mod smoke;
mod support;
