//! Database reads of the fanout: which requested devices and groups a principal may watch
//! (tenant-scoped, by role and group membership, through the shared access layer), and the
//! snapshot of last known positions (`last_positions` joined to `devices`).

use crate::protocol::{BBox, EncodedFix};
use gps_domain::auth::DeviceScope;
use gps_domain::fix::Fix;
use gps_runtime::access::{Actor, Principal, Visibility};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
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

type Row = (
    Uuid,
    String,
    i64,
    i64,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<i16>,
    Option<f64>,
    String,
    Option<serde_json::Value>,
);

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
    let bbox = query.bbox.map(BBox::to_array);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT lp.device_id, d.uid,
                (extract(epoch FROM lp.fix_time) * 1000)::int8,
                (extract(epoch FROM lp.received_at) * 1000)::int8,
                lp.lat, lp.lon, lp.altitude_m, lp.speed_mps, lp.heading_deg, lp.accuracy_m,
                lp.battery_pct, lp.satellites, lp.hdop, lp.protocol, lp.attributes
         FROM last_positions lp
         JOIN devices d ON d.id = lp.device_id AND d.tenant_id = lp.tenant_id
         WHERE lp.tenant_id = $1
           AND ($2::uuid[] IS NULL OR lp.device_id = ANY($2))
           AND ($3
                OR lp.device_id = ANY($4)
                OR ($5::float8[] IS NOT NULL
                    AND lp.lat BETWEEN $5[2] AND $5[4]
                    AND CASE WHEN $5[1] <= $5[3] THEN lp.lon BETWEEN $5[1] AND $5[3]
                             ELSE lp.lon >= $5[1] OR lp.lon <= $5[3] END))
         ORDER BY lp.device_id
         LIMIT $6",
    )
    .bind(tenant)
    .bind(only)
    .bind(query.all)
    .bind(query.devices)
    .bind(bbox.map(|b| b.to_vec()))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1))
    .fetch_all(pool)
    .await?;
    let truncated = rows.len() > limit;
    let now = Instant::now();
    let fixes = rows
        .into_iter()
        .take(limit)
        .map(|row| {
            let (
                device,
                uid,
                fix_time,
                rx,
                lat,
                lon,
                alt,
                spd,
                hdg,
                acc,
                bat,
                sat,
                hdop,
                proto,
                attrs,
            ) = row;
            let mut fix = Fix::new(fix_time, lat, lon);
            fix.altitude_m = alt;
            fix.speed_mps = spd;
            fix.heading_deg = hdg;
            fix.accuracy_m = acc;
            fix.battery_pct = bat;
            fix.satellites = sat.and_then(|s| u16::try_from(s).ok());
            fix.hdop = hdop;
            if let Some(serde_json::Value::Object(map)) = attrs {
                fix.attributes = map.into_iter().collect::<BTreeMap<_, _>>();
            }
            Arc::new(EncodedFix::new(device, &uid, &proto, rx, &fix, now))
        })
        .collect();
    Ok((fixes, truncated))
}
