//! fanout integration tests, against the real stack (`dev/stack up`).

mod auth;
mod bad_input;
mod flow;
mod redis_restart;
mod slow;
mod smoke;
mod support;
mod visibility;
