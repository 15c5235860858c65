//! fanout integration tests, against the real stack (`dev/stack up`).

mod audit;
mod auth;
mod bad_input;
mod events;
mod flow;
mod limits;
mod proxies;
mod redis_restart;
mod revocation;
mod slow;
mod smoke;
mod status;
mod support;
mod visibility;
