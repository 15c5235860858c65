//! query-api integration tests, against the real stack (`dev/stack up`).

mod auth;
mod devices_identity;
mod events;
mod geofences;
mod history;
mod limits;
mod perf;
mod proxies;
mod rbac;
mod revocation;
mod smoke;
mod stalled;
mod status;
mod support;
mod webhooks;
