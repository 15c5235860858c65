//! Domain types of the GPS telemetry pipeline, shared by every service.
//!
//! Everything here is pure (no I/O): the [`fix::Fix`] and its units, the versioned Kafka
//! [`envelope`], the [`live`] message that fanout serves, the [`auth`] vocabulary (roles,
//! permissions, principals and visibility, token claims, the bearer parser, credential hashing),
//! the [`geo`] rules (the antimeridian-aware bounding box, great-circle distance) and the
//! [`events`] engine (geofence geometry and index, the per-device event state). Decoders
//! and validation live here too so that benches and the load generator exercise exactly the code
//! the services run.

pub mod auth;
pub mod envelope;
pub mod events;
pub mod fix;
pub mod geo;
pub mod live;
pub mod reject;
pub mod status;
pub mod validation;
pub mod wire;

pub use envelope::{EnvelopeError, EnvelopeFormat, FixEnvelope, ENVELOPE_VERSION};
pub use fix::{Fix, Protocol};
pub use status::DeviceStatus;
