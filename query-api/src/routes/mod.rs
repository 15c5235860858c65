//! The `/v1` routes, one module per resource.

pub mod history;
pub mod identity;
pub mod manage;
