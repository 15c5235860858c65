//! gps-store integration tests, against the stack's PostgreSQL (`dev/stack up`).

mod credentials;
mod events;
mod principal;
