//! processor integration tests, against the real stack (`dev/stack up`).

mod broker_outage;
mod crash;
mod events;
mod group;
mod pipeline;
mod recovery;
mod smoke;
mod speed;
mod status;
mod support;
mod webhooks;
mod writer;
