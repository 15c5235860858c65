//! query-api integration tests, against the real stack (`dev/stack up`).

mod auth;
mod history;
mod perf;
mod rbac;
mod smoke;
mod support;
