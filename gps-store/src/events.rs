//! The SQL of events (issue 16): the tenant's fences for the evaluator ([`load_fences`], with a
//! cheap [`all_fence_versions`] fingerprint to tell when to load them again), each device's profile
//! (its groups and its own speed limit, [`device_profiles`]), the per-device event state
//! ([`read_states`] and [`write_states_guarded`] on the batch path, [`lock_states`] and
//! [`upsert_states`] where a guard failed, [`lock_overdue`] for the offline timer,
//! [`reset_devices`]), and the insert of events with their webhook deliveries
//! ([`insert_events`]), in the caller's transaction.
//!
//! The processor is the only writer of `events` and `device_event_state`; it computes them with
//! the pure engine `gps_domain::events` (see `docs/events.md`).

use chrono::{DateTime, Utc};
use gps_domain::events::{DeviceEventState, Event, EventType, Fence, FenceIndex};
use gps_domain::fix::EpochMillis;
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// What changes when a tenant's fences change: their number, their newest `updated_at` and the
/// number of their group rows (a group deleted under a fence changes only that). Equal versions:
/// the fences loaded before are still the fences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceVersion {
    /// Fences of the tenant.
    pub fences: i64,
    /// The newest `updated_at` among them.
    pub newest: Option<DateTime<Utc>>,
    /// Their `geofence_groups` rows.
    pub group_rows: i64,
}

/// The [`FenceVersion`] of every tenant that has fences (one pass over `geofences`; the
/// processor's background refresh). A tenant without fences is absent.
pub async fn all_fence_versions(pool: &PgPool) -> Result<HashMap<Uuid, FenceVersion>, sqlx::Error> {
    let rows: Vec<(Uuid, i64, Option<DateTime<Utc>>, i64)> = sqlx::query_as(
        "SELECT g.tenant_id, count(DISTINCT g.id), max(g.updated_at), count(gg.group_id)
         FROM geofences g LEFT JOIN geofence_groups gg ON gg.geofence_id = g.id
         GROUP BY g.tenant_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, fences, newest, group_rows)| {
            let version = FenceVersion {
                fences,
                newest,
                group_rows,
            };
            (tenant, version)
        })
        .collect())
}

/// A tenant's fences, each through `Fence::new` (the one validation); a row that no longer
/// validates (the rules became stricter since it was stored) is skipped with a warning, so one
/// bad fence never stops the events of the others.
pub async fn load_fences(pool: &PgPool, tenant: Uuid) -> Result<FenceIndex, sqlx::Error> {
    type Row = (
        Uuid,
        serde_json::Value,
        Option<f64>,
        Option<f64>,
        Option<serde_json::Value>,
        Vec<Uuid>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT g.id, g.geometry, g.radius_m, g.speed_limit_mps, g.schedule,
                coalesce(array_agg(gg.group_id) FILTER (WHERE gg.group_id IS NOT NULL), '{}')
         FROM geofences g LEFT JOIN geofence_groups gg ON gg.geofence_id = g.id
         WHERE g.tenant_id = $1
         GROUP BY g.id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let mut fences = Vec::with_capacity(rows.len());
    for (id, geometry, radius_m, speed_limit_mps, schedule, groups) in rows {
        match Fence::new(
            id,
            &geometry,
            radius_m,
            groups,
            speed_limit_mps,
            schedule.as_ref(),
        ) {
            Ok(fence) => fences.push(fence),
            Err(error) => {
                tracing::warn!(%tenant, geofence = %id, %error, "stored geofence no longer validates; skipped");
            }
        }
    }
    Ok(FenceIndex::new(fences))
}

/// What the evaluator needs to know about a device besides its state (the owned form of
/// `gps_domain::events::DeviceProfile`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileRow {
    /// The groups the device is in.
    pub groups: Vec<Uuid>,
    /// Its own speed limit, m/s.
    pub speed_limit_mps: Option<f64>,
}

/// The profiles of `devices` that exist (a device deleted since its fixes were logged has none:
/// no groups, no limit of its own).
pub async fn device_profiles(
    pool: &PgPool,
    devices: &[Uuid],
) -> Result<HashMap<Uuid, ProfileRow>, sqlx::Error> {
    let rows: Vec<(Uuid, Option<f64>, Vec<Uuid>)> = sqlx::query_as(
        "SELECT d.id, d.speed_limit_mps,
                coalesce(array_agg(gd.group_id) FILTER (WHERE gd.group_id IS NOT NULL), '{}')
         FROM devices d LEFT JOIN group_devices gd ON gd.device_id = d.id
         WHERE d.id = ANY($1)
         GROUP BY d.id",
    )
    .bind(devices)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(device, speed_limit_mps, groups)| {
            let profile = ProfileRow {
                groups,
                speed_limit_mps,
            };
            (device, profile)
        })
        .collect())
}

/// The columns of `device_event_state` beside the document, which every writer keeps equal to
/// the document's: enough to tell whether a stored state is the one a cache holds (the offline
/// timer changes `online`; the batch path changes the times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateStamp {
    /// `last_fix_time`, ms.
    pub last_fix_time: Option<EpochMillis>,
    /// `last_seen`, ms.
    pub last_seen: Option<EpochMillis>,
    /// `online`.
    pub online: bool,
}

impl StateStamp {
    /// The stamp of `state`.
    pub fn of(state: &DeviceEventState) -> Self {
        Self {
            last_fix_time: state.last_fix.map(|f| f.t),
            last_seen: state.last_seen,
            online: state.online,
        }
    }
}

/// Lock the `device_event_state` rows of `devices` (`FOR UPDATE`, in device order so two
/// transactions never wait on each other in a cycle) and return their stored states (a device
/// without a row has none). Holding the lock until commit serializes the caller with the
/// offline timer: whichever commits second reads what the first wrote. A document that does
/// not parse is logged and treated as missing (the device starts over rather than stopping the
/// pipeline).
pub async fn lock_states(
    conn: &mut PgConnection,
    devices: &[Uuid],
) -> Result<HashMap<Uuid, DeviceEventState>, sqlx::Error> {
    stored_states(conn, devices, "FOR UPDATE").await
}

/// [`lock_states`] without the lock: what the batch path reads for devices it has no cached
/// state for. [`write_states_guarded`] then checks, under the row lock its own write takes, that
/// the row still carries what was read.
pub async fn read_states(
    conn: &mut PgConnection,
    devices: &[Uuid],
) -> Result<HashMap<Uuid, DeviceEventState>, sqlx::Error> {
    stored_states(conn, devices, "").await
}

async fn stored_states(
    conn: &mut PgConnection,
    devices: &[Uuid],
    lock: &str,
) -> Result<HashMap<Uuid, DeviceEventState>, sqlx::Error> {
    if devices.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT device_id, state FROM device_event_state
         WHERE device_id = ANY($1)
         ORDER BY device_id
         {lock}"
    );
    let rows: Vec<(Uuid, serde_json::Value)> = sqlx::query_as(&sql)
        .bind(devices)
        .fetch_all(&mut *conn)
        .await?;
    let mut found = HashMap::with_capacity(rows.len());
    for (device, document) in rows {
        match serde_json::from_value::<DeviceEventState>(document) {
            Ok(state) => {
                found.insert(device, state);
            }
            Err(error) => {
                tracing::warn!(%device, %error, "stored event state unreadable; the device starts over");
            }
        }
    }
    Ok(found)
}

/// One device's outcome of a batch's fold for [`write_states_guarded`]: the state it folded
/// from (`expected`, the stamp of the cached or read state; `None`: no row) and the state it
/// folded to.
#[derive(Debug, Clone, Copy)]
pub struct GuardedState<'a> {
    /// The stamp the stored row must still carry (`None`: there must be no row).
    pub expected: Option<StateStamp>,
    /// The folded state.
    pub state: &'a DeviceEventState,
    /// Whether the fold changed it (an unchanged state is only checked, not written).
    pub changed: bool,
}

/// Write the changed states of `guarded` whose stored row still carries the expected stamp
/// (insert where no row was expected), and check the unchanged ones; return the devices for
/// which that did not hold (their fold started from a state that is no longer the stored one:
/// the caller locks them with [`lock_states`], folds again and writes with [`upsert_states`]).
///
/// One statement instead of a lock and a write. Why it is as safe as locking first: the
/// `UPDATE` takes the row lock, and if another transaction (the offline timer) holds it, waits
/// for that commit and re-checks the guard against the row it left, so a write succeeds only on
/// the row its fold started from, and holds the lock until commit (the timer's `SKIP LOCKED`
/// passes over it). An insert that meets a row (`ON CONFLICT DO NOTHING`) fails the same way.
/// An unchanged state writes nothing, so nothing is lost if the timer changes the row after
/// this check: that orders the timer after this batch.
pub async fn write_states_guarded(
    conn: &mut PgConnection,
    guarded: &[GuardedState<'_>],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if guarded.is_empty() {
        return Ok(Vec::new());
    }
    let expected = |f: fn(&StateStamp) -> Option<EpochMillis>| -> Vec<Option<DateTime<Utc>>> {
        guarded
            .iter()
            .map(|g| g.expected.as_ref().and_then(f).map(ts))
            .collect()
    };
    let columns = StateColumns::of(guarded.iter().map(|g| g.state));
    sqlx::query_scalar(
        "WITH c AS (
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[]::jsonb[], $4::timestamptz[],
                                 $5::timestamptz[], $6::bool[], $7::bool[], $8::bool[],
                                 $9::timestamptz[], $10::timestamptz[], $11::bool[])
                AS c(device_id, tenant_id, state, last_fix_time, last_seen, online, changed,
                     known, was_fix_time, was_seen, was_online)
        ), upd AS (
            UPDATE device_event_state s SET
                tenant_id = c.tenant_id, state = c.state, last_fix_time = c.last_fix_time,
                last_seen = c.last_seen, online = c.online, updated_at = now()
            FROM c
            WHERE c.changed AND c.known AND s.device_id = c.device_id
              AND s.last_fix_time IS NOT DISTINCT FROM c.was_fix_time
              AND s.last_seen IS NOT DISTINCT FROM c.was_seen
              AND s.online = c.was_online
            RETURNING s.device_id
        ), ins AS (
            INSERT INTO device_event_state (device_id, tenant_id, state, last_fix_time,
                                            last_seen, online)
            SELECT device_id, tenant_id, state, last_fix_time, last_seen, online
            FROM c WHERE c.changed AND NOT c.known
            ON CONFLICT (device_id) DO NOTHING
            RETURNING device_id
        )
        SELECT c.device_id FROM c
        WHERE CASE WHEN c.changed
                   THEN c.device_id NOT IN (SELECT device_id FROM upd
                                            UNION ALL SELECT device_id FROM ins)
                   ELSE c.known IS DISTINCT FROM EXISTS (
                       SELECT 1 FROM device_event_state s
                       WHERE s.device_id = c.device_id
                         AND (NOT c.known
                              OR (s.last_fix_time IS NOT DISTINCT FROM c.was_fix_time
                                  AND s.last_seen IS NOT DISTINCT FROM c.was_seen
                                  AND s.online = c.was_online)))
              END",
    )
    .bind(columns.devices)
    .bind(columns.tenants)
    .bind(columns.documents)
    .bind(columns.last_fix_times)
    .bind(columns.last_seens)
    .bind(columns.online)
    .bind(guarded.iter().map(|g| g.changed).collect::<Vec<_>>())
    .bind(
        guarded
            .iter()
            .map(|g| g.expected.is_some())
            .collect::<Vec<_>>(),
    )
    .bind(expected(|c| c.last_fix_time))
    .bind(expected(|c| c.last_seen))
    .bind(
        guarded
            .iter()
            .map(|g| g.expected.is_some_and(|c| c.online))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await
}

/// The columns of `device_event_state` for a list of states, as bind arrays.
struct StateColumns {
    devices: Vec<Uuid>,
    tenants: Vec<Uuid>,
    documents: Vec<String>,
    last_fix_times: Vec<Option<DateTime<Utc>>>,
    last_seens: Vec<Option<DateTime<Utc>>>,
    online: Vec<bool>,
}

impl StateColumns {
    fn of<'a>(states: impl Iterator<Item = &'a DeviceEventState>) -> Self {
        let mut columns = Self {
            devices: Vec::new(),
            tenants: Vec::new(),
            documents: Vec::new(),
            last_fix_times: Vec::new(),
            last_seens: Vec::new(),
            online: Vec::new(),
        };
        for s in states {
            columns.devices.push(s.device_id);
            columns.tenants.push(s.tenant_id);
            columns
                .documents
                .push(serde_json::to_string(s).expect("event state serializes"));
            columns.last_fix_times.push(s.last_fix.map(|f| ts(f.t)));
            columns.last_seens.push(s.last_seen.map(ts));
            columns.online.push(s.online);
        }
        columns
    }
}

/// Write `states` (insert or replace), keeping the columns beside the document equal to it.
pub async fn upsert_states(
    conn: &mut PgConnection,
    states: &[DeviceEventState],
) -> Result<(), sqlx::Error> {
    if states.is_empty() {
        return Ok(());
    }
    let columns = StateColumns::of(states.iter());
    sqlx::query(
        "INSERT INTO device_event_state (device_id, tenant_id, state, last_fix_time, last_seen, online)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[]::jsonb[], $4::timestamptz[],
                              $5::timestamptz[], $6::bool[])
         ON CONFLICT (device_id) DO UPDATE SET
             tenant_id = EXCLUDED.tenant_id, state = EXCLUDED.state,
             last_fix_time = EXCLUDED.last_fix_time, last_seen = EXCLUDED.last_seen,
             online = EXCLUDED.online, updated_at = now()",
    )
    .bind(columns.devices)
    .bind(columns.tenants)
    .bind(columns.documents)
    .bind(columns.last_fix_times)
    .bind(columns.last_seens)
    .bind(columns.online)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An online device that has not reported since before `seen_before` (ms), its state locked
/// for the offline timer (`FOR UPDATE SKIP LOCKED`: a row a batch is folding right now is left
/// to the next round, and several processors share the work), oldest first, at most `limit`;
/// with the device's uid (`None` for a deleted device).
pub async fn lock_overdue(
    conn: &mut PgConnection,
    seen_before: EpochMillis,
    limit: i64,
) -> Result<Vec<(DeviceEventState, Option<String>)>, sqlx::Error> {
    let rows: Vec<(Uuid, serde_json::Value, Option<String>)> = sqlx::query_as(
        "SELECT s.device_id, s.state, d.uid
         FROM device_event_state s LEFT JOIN devices d ON d.id = s.device_id
         WHERE s.online AND s.last_seen < $1
         ORDER BY s.last_seen
         LIMIT $2
         FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(ts(seen_before))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(device, document, uid)| {
            match serde_json::from_value::<DeviceEventState>(document) {
                Ok(state) => Some((state, uid)),
                Err(error) => {
                    tracing::warn!(%device, %error, "stored event state unreadable; offline check skipped");
                    None
                }
            }
        })
        .collect())
}

/// Forget everything derived for `devices`: their events and their states (a replay that
/// rebuilds events from the start of the log, in the transaction of the batch that first
/// meets each device).
pub async fn reset_devices(conn: &mut PgConnection, devices: &[Uuid]) -> Result<(), sqlx::Error> {
    if devices.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM events WHERE device_id = ANY($1)")
        .bind(devices)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM device_event_state WHERE device_id = ANY($1)")
        .bind(devices)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Whether [`insert_events`] also queues webhook deliveries for what it inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deliveries {
    /// One `webhook_deliveries` row per new event and matching enabled webhook of its tenant.
    Queue,
    /// None (a replay rebuilding the past does not notify anyone again).
    Skip,
}

/// Insert `events` (`ON CONFLICT DO NOTHING`: an event already stored, by id or by its unique
/// key, is left as it is) and, with [`Deliveries::Queue`], in the same statement one
/// `webhook_deliveries` row per newly inserted event and per enabled webhook of its tenant whose
/// `event_types` is empty or names the event's type. Returns the events that were new, in the
/// order given.
pub async fn insert_events(
    conn: &mut PgConnection,
    events: &[Event],
    deliveries: Deliveries,
) -> Result<Vec<Event>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let queue = match deliveries {
        Deliveries::Queue => {
            ", queued AS (
                INSERT INTO webhook_deliveries (webhook_id, tenant_id, event_id)
                SELECT w.id, ins.tenant_id, ins.id
                FROM ins JOIN webhooks w ON w.tenant_id = ins.tenant_id
                WHERE NOT w.disabled
                  AND (cardinality(w.event_types) = 0 OR ins.type = ANY(w.event_types))
                ON CONFLICT DO NOTHING
            )"
        }
        Deliveries::Skip => "",
    };
    let sql = format!(
        "WITH ins AS (
            INSERT INTO events (id, tenant_id, device_id, type, fix_time, lat, lon, geofence_id,
                                details)
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[],
                                 $5::timestamptz[], $6::float8[], $7::float8[], $8::uuid[],
                                 $9::text[]::jsonb[])
            ON CONFLICT DO NOTHING
            RETURNING id, tenant_id, type
        ){queue}
        SELECT id FROM ins"
    );
    let new: Vec<Uuid> = sqlx::query_scalar(&sql)
        .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.tenant_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.device_id).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| ts(e.fix_time)).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.lat).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.lon).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.geofence_id).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.details.to_string())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    let new: HashSet<Uuid> = new.into_iter().collect();
    Ok(events
        .iter()
        .filter(|e| new.contains(&e.id))
        .cloned()
        .collect())
}

/// One stored event, as [`events_of_tenant`] reads it back (for comparisons: replay equals live).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredEvent {
    /// Event id.
    pub id: Uuid,
    /// Device.
    pub device_id: Uuid,
    /// Type name.
    #[sqlx(rename = "type")]
    pub event_type: String,
    /// Fix time.
    pub fix_time: DateTime<Utc>,
    /// Latitude.
    pub lat: Option<f64>,
    /// Longitude.
    pub lon: Option<f64>,
    /// Fence.
    pub geofence_id: Option<Uuid>,
    /// Details.
    pub details: serde_json::Value,
}

impl StoredEvent {
    /// The type, parsed.
    pub fn parsed_type(&self) -> Option<EventType> {
        self.event_type.parse().ok()
    }
}

/// Every event of `tenant`, by device, fix time and id.
pub async fn events_of_tenant(
    pool: &PgPool,
    tenant: Uuid,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, device_id, type, fix_time, lat, lon, geofence_id, details FROM events
         WHERE tenant_id = $1 ORDER BY device_id, fix_time, id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

fn ts(ms: EpochMillis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
