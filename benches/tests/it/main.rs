//! Load generator integration tests, against the real stack (`dev/stack up`): a short load run,
//! the short fault drill and the two-of-each scale-out.

mod drill;
mod e2e;
