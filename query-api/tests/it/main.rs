//! query-api integration tests, against the real stack (`dev/stack up`).

mod auth;
mod history;
mod limits;
mod perf;
mod rbac;
mod revocation;
mod smoke;
mod support;
