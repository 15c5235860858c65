//! processor integration tests, against the real stack (`dev/stack up`).

mod crash;
mod group;
mod pipeline;
mod smoke;
mod speed;
mod support;
mod writer;
