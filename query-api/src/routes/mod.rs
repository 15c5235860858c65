//! The `/v1` routes, one module per resource, and the helpers they share (so that no route
//! module imports a sibling).
//!
//! Mass-assignment safety: request bodies deny unknown fields, the tenant always comes from the
//! credential, and a role changes only through `PUT /v1/users/{id}/role` (`roles:write`, never
//! one's own).

use crate::error::{ApiError, ApiResult};
use uuid::Uuid;

pub mod api_keys;
pub mod audit;
pub mod devices;
pub mod groups;
pub mod history;
pub mod identity;
pub mod tenants;
pub mod users;

/// Parse an id from a path; a malformed id is just an object that does not exist.
pub(crate) fn parse_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

/// A write that touched no row of the caller's tenant: the object does not exist.
pub(crate) fn not_found_if_zero(rows: u64) -> ApiResult<()> {
    if rows == 0 {
        Err(ApiError::NotFound)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_id_is_not_found() {
        let id = Uuid::new_v4();
        assert_eq!(parse_id(&id.to_string()).unwrap(), id);
        assert!(matches!(parse_id("42"), Err(ApiError::NotFound)));
        assert!(matches!(not_found_if_zero(0), Err(ApiError::NotFound)));
        assert!(not_found_if_zero(1).is_ok());
    }
}
