//! Load generator integration tests, against the real stack (`dev/stack up`): a short load run,
//! the short fault drill, the two-of-each scale-out and a short compared `loadgen events` run.

mod drill;
mod e2e;
mod events;
mod support;
