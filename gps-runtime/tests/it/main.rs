//! gps-runtime integration tests, against the real stack (`dev/stack up`).

mod migrations;
mod storage_detection;
