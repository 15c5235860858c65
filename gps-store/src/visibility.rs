//! Which devices a principal may read: every device of its tenant for tenant-wide roles and API
//! keys, the devices of its groups for group-scoped roles, none otherwise. The rule itself
//! ([`gps_domain::auth::Principal::device_scope`], [`Visibility`]) is pure; this module adds the
//! group-membership queries, always scoped to the principal's tenant.

use gps_domain::auth::{Actor, DeviceScope, Principal, Visibility};
use sqlx::PgPool;
use std::collections::HashSet;
use uuid::Uuid;

/// The devices `principal` may read, by role scope and group membership.
pub async fn visibility(pool: &PgPool, principal: &Principal) -> Result<Visibility, sqlx::Error> {
    match (&principal.actor, principal.device_scope()) {
        (_, DeviceScope::Tenant) => Ok(Visibility::AllOfTenant(principal.tenant_id)),
        (Actor::User { user_id, .. }, DeviceScope::Groups) => {
            let ids: Vec<Uuid> = sqlx::query_scalar(
                "SELECT DISTINCT gd.device_id
                 FROM group_members gm
                 JOIN groups g ON g.id = gm.group_id AND g.tenant_id = $2
                 JOIN group_devices gd ON gd.group_id = g.id
                 JOIN devices d ON d.id = gd.device_id AND d.tenant_id = $2
                 WHERE gm.user_id = $1",
            )
            .bind(user_id)
            .bind(principal.tenant_id)
            .fetch_all(pool)
            .await?;
            Ok(Visibility::Only(ids.into_iter().collect()))
        }
        _ => Ok(Visibility::Only(HashSet::new())),
    }
}

/// Whether `principal` may read `device_id`: it exists in the principal's tenant and the role's
/// scope reaches it. `false` for another tenant's device (callers answer 404).
pub async fn can_read_device(
    pool: &PgPool,
    principal: &Principal,
    device_id: Uuid,
) -> Result<bool, sqlx::Error> {
    match (&principal.actor, principal.device_scope()) {
        (_, DeviceScope::Tenant) => {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1 AND tenant_id = $2)",
            )
            .bind(device_id)
            .bind(principal.tenant_id)
            .fetch_one(pool)
            .await
        }
        (Actor::User { user_id, .. }, DeviceScope::Groups) => {
            sqlx::query_scalar(
                "SELECT EXISTS (
                    SELECT 1 FROM group_members gm
                    JOIN groups g ON g.id = gm.group_id AND g.tenant_id = $3
                    JOIN group_devices gd ON gd.group_id = g.id AND gd.device_id = $2
                    JOIN devices d ON d.id = gd.device_id AND d.tenant_id = $3
                    WHERE gm.user_id = $1)",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(principal.tenant_id)
            .fetch_one(pool)
            .await
        }
        _ => Ok(false),
    }
}
