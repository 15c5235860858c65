//! The `/v1` routes, one module per resource, and the helpers they share (so that no route
//! module imports a sibling).
//!
//! Mass-assignment safety: request bodies deny unknown fields, the tenant always comes from the
//! credential, and a role changes only through `PUT /v1/users/{id}/role` (`roles:write`, never
//! one's own).

use crate::app::{audit_caller, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use uuid::Uuid;

/// The one time-range rule (history's), shared with the events reader.
pub(crate) use history::time_range;

pub mod api_keys;
pub mod audit;
pub mod devices;
pub mod events;
pub mod geofences;
pub mod groups;
pub mod history;
pub mod identity;
pub mod status;
pub mod tenants;
pub mod users;
pub mod webhooks;

/// Parse an id from a path; a malformed id is just an object that does not exist.
pub(crate) fn parse_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

/// Longest name-like text a body may carry (device, user display, group, API key and tenant
/// names), in characters.
pub(crate) const MAX_NAME_CHARS: usize = 200;

/// `400` naming `field` unless `value` has at most [`MAX_NAME_CHARS`] characters: every
/// name-like field of a create or update body goes through here, so that no caller can store
/// (and have every list page carry) megabytes of name.
pub(crate) fn check_name(field: &str, value: &str) -> ApiResult<()> {
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::field(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(())
}

/// A write that touched no row of the caller's tenant: the object does not exist.
pub(crate) fn not_found_if_zero(rows: u64) -> ApiResult<()> {
    if rows == 0 {
        Err(ApiError::NotFound)
    } else {
        Ok(())
    }
}

/// The shape of every delete and revoke: run `statement` (a write of one object, `$1` its id and
/// `$2` the caller's tenant), `404` when it touched nothing of the tenant, then audit `action` on
/// the object of kind `kind`; answers `204`.
pub(crate) async fn remove_owned(
    state: &AppState,
    caller: &Caller,
    statement: &'static str,
    id: Uuid,
    action: &str,
    kind: &str,
) -> ApiResult<StatusCode> {
    let done = sqlx::query(statement)
        .bind(id)
        .bind(caller.tenant())
        .execute(&state.pool)
        .await?;
    not_found_if_zero(done.rows_affected())?;
    audit_caller(&state.pool, caller, action, kind, id, serde_json::json!({})).await;
    Ok(StatusCode::NO_CONTENT)
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

    #[test]
    fn names_are_capped_in_characters_naming_the_field() {
        assert!(check_name("name", &"é".repeat(MAX_NAME_CHARS)).is_ok());
        match check_name("name", &"x".repeat(MAX_NAME_CHARS + 1)) {
            Err(ApiError::BadRequest { field, .. }) => assert_eq!(field.as_deref(), Some("name")),
            other => panic!("{other:?}"),
        }
    }
}
