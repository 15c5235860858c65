//! processor integration tests, against the real stack (`dev/stack up`).

mod smoke;
