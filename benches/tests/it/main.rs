//! Load generator integration tests, against the real stack (`dev/stack up`).

mod e2e;
