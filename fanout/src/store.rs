//! Database reads of the fanout: which requested devices and groups a principal may watch
//! (tenant-scoped, by role and group membership, through `gps_store::visibility`), and the
//! snapshot of last known positions (`last_positions` joined to `devices`).

use crate::protocol::EncodedFix;
use gps_domain::auth::{Actor, DeviceScope, Principal, Visibility};
use gps_domain::geo::BBox;
use gps_store::geo::{bbox_condition, bbox_param};
use gps_store::positions::{columns_of, PositionRow};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// Of `requested` devices, those the principal may watch; the rest are refused. Another tenant's
/// device and a device that does not exist are refused alike.
pub async fn visible_devices(
    pool: &PgPool,
    principal: &Principal,
    visibility: &Visibility,
    requested: &[Uuid],
) -> Result<(Vec<Uuid>, Vec<Uuid>), sqlx::Error> {
    if requested.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let existing: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM devices WHERE tenant_id = $1 AND id = ANY($2)")
            .bind(principal.tenant_id)
            .bind(requested)
            .fetch_all(pool)
            .await?;
    Ok(requested
        .iter()
        .partition(|d| existing.contains(d) && visibility.contains(principal.tenant_id, **d)))
}

/// Of `requested` groups, those the principal may watch with their (visible) devices; the rest
/// are refused. Tenant-wide roles may watch any group of the tenant; group-scoped roles only
/// groups they are members of.
pub async fn visible_groups(
    pool: &PgPool,
    principal: &Principal,
    visibility: &Visibility,
    requested: &[Uuid],
) -> Result<(HashMap<Uuid, Vec<Uuid>>, Vec<Uuid>), sqlx::Error> {
    if requested.is_empty() {
        return Ok((HashMap::new(), Vec::new()));
    }
    let member: Option<Uuid> = match (&principal.actor, principal.device_scope()) {
        (_, DeviceScope::Tenant) => None,
        (Actor::User { user_id, .. }, DeviceScope::Groups) => Some(*user_id),
        _ => return Ok((HashMap::new(), requested.to_vec())),
    };
    let allowed: Vec<Uuid> = sqlx::query_scalar(
        "SELECT g.id FROM groups g
         WHERE g.tenant_id = $1 AND g.id = ANY($2)
           AND ($3::uuid IS NULL OR EXISTS (
                SELECT 1 FROM group_members gm WHERE gm.group_id = g.id AND gm.user_id = $3))",
    )
    .bind(principal.tenant_id)
    .bind(requested)
    .bind(member)
    .fetch_all(pool)
    .await?;
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT gd.group_id, gd.device_id FROM group_devices gd
         JOIN devices d ON d.id = gd.device_id AND d.tenant_id = $1
         WHERE gd.group_id = ANY($2)",
    )
    .bind(principal.tenant_id)
    .bind(&allowed)
    .fetch_all(pool)
    .await?;
    let mut groups: HashMap<Uuid, Vec<Uuid>> = allowed.iter().map(|g| (*g, Vec::new())).collect();
    for (group, device) in rows {
        if visibility.contains(principal.tenant_id, device) {
            groups.entry(group).or_default().push(device);
        }
    }
    let refused = requested
        .iter()
        .filter(|g| !groups.contains_key(g))
        .copied()
        .collect();
    Ok((groups, refused))
}

/// What a snapshot covers.
#[derive(Debug, Default)]
pub struct SnapshotQuery<'a> {
    /// Every visible device.
    pub all: bool,
    /// These devices (already checked).
    pub devices: &'a [Uuid],
    /// Devices inside this box.
    pub bbox: Option<BBox>,
}

/// A last known position with its device's uid.
#[derive(sqlx::FromRow)]
struct SnapshotRow {
    uid: String,
    #[sqlx(flatten)]
    position: PositionRow,
}

/// The last known positions that match, at most `limit` (+ whether more matched).
pub async fn snapshot(
    pool: &PgPool,
    tenant: Uuid,
    visibility: &Visibility,
    query: &SnapshotQuery<'_>,
    limit: usize,
) -> Result<(Vec<Arc<EncodedFix>>, bool), sqlx::Error> {
    let only: Option<Vec<Uuid>> = match visibility {
        Visibility::AllOfTenant(_) => None,
        Visibility::Only(set) => Some(set.iter().copied().collect()),
    };
    let in_bbox = bbox_condition("lp.lat", "lp.lon", "$5");
    let columns = columns_of("lp");
    let rows: Vec<SnapshotRow> = sqlx::query_as(&format!(
        "SELECT {columns}, d.uid
         FROM last_positions lp
         JOIN devices d ON d.id = lp.device_id AND d.tenant_id = lp.tenant_id
         WHERE lp.tenant_id = $1
           AND ($2::uuid[] IS NULL OR lp.device_id = ANY($2))
           AND ($3
                OR lp.device_id = ANY($4)
                OR ($5::float8[] IS NOT NULL AND {in_bbox}))
         ORDER BY lp.device_id
         LIMIT $6",
    ))
    .bind(tenant)
    .bind(only)
    .bind(query.all)
    .bind(query.devices)
    .bind(query.bbox.as_ref().map(bbox_param))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1))
    .fetch_all(pool)
    .await?;
    let truncated = rows.len() > limit;
    let now = Instant::now();
    let fixes = rows
        .into_iter()
        .take(limit)
        .map(|SnapshotRow { uid, position: p }| {
            let fix = p.fix();
            Arc::new(EncodedFix::new(
                p.device_id,
                &uid,
                &p.protocol,
                p.received_ms(),
                &fix,
                now,
            ))
        })
        .collect();
    Ok((fixes, truncated))
}
