//! Ingest integration tests, against the real stack (`dev/stack up`).

mod abuse;
mod bad_input;
mod broker_down;
mod conformance;
mod credentials;
mod identity;
mod overload;
mod protocols;
mod proxies;
mod smoke;
mod support;
mod teltonika;
