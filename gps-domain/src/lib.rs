//! Domain types of the GPS telemetry pipeline, shared by every service.
//!
//! Everything here is pure (no I/O): the [`fix::Fix`] and its units, the versioned Kafka
//! [`envelope`], the [`live`] message that fanout serves, and the [`auth`] vocabulary (roles,
//! permissions, token claims, credential hashing). Decoders and validation live here too so
//! that benches and the load generator exercise exactly the code the services run.

pub mod auth;
pub mod envelope;
pub mod fix;
pub mod live;
pub mod reject;
pub mod validation;
pub mod wire;

pub use envelope::{EnvelopeError, FixEnvelope, ENVELOPE_VERSION};
pub use fix::{Fix, Protocol};
