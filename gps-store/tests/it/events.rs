//! The events SQL against a real database: fences load through the one validation (a stored
//! row that no longer validates is skipped) and their version moves with every change; device
//! profiles carry groups and the device's limit; events insert once, with one webhook delivery
//! per matching enabled webhook of their tenant; state rows lock against a cached stamp and a
//! guarded state write lands only on the row its fold started from; the
//! offline query finds only overdue online devices.

use gps_domain::events::{event_id, DeviceEventState, Event, EventType, LastFix};
use gps_runtime::testing::{seed_device, unique_suffix, SeededDevice, TestDb};
use gps_store::events::{self, Deliveries, StateStamp};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const T0: i64 = 1_790_000_000_000;

async fn seeded(pool: &PgPool) -> SeededDevice {
    seed_device(pool, &format!("events-{}", unique_suffix())).await
}

async fn group(pool: &PgPool, tenant: Uuid) -> Uuid {
    sqlx::query_scalar("INSERT INTO groups (tenant_id, name) VALUES ($1, $2) RETURNING id")
        .bind(tenant)
        .bind(format!("g-{}", unique_suffix()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Insert a fence row as the API would (the bbox columns are not checked against the
/// geometry here).
async fn fence(pool: &PgPool, tenant: Uuid, geometry: serde_json::Value, groups: &[Uuid]) -> Uuid {
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO geofences (tenant_id, name, geometry, bbox_min_lon, bbox_min_lat,
             bbox_max_lon, bbox_max_lat, speed_limit_mps)
         VALUES ($1, 'f', $2, 13.0, 52.0, 13.1, 52.1, 8.0) RETURNING id",
    )
    .bind(tenant)
    .bind(geometry)
    .fetch_one(pool)
    .await
    .unwrap();
    for g in groups {
        sqlx::query("INSERT INTO geofence_groups (geofence_id, group_id) VALUES ($1, $2)")
            .bind(id)
            .bind(g)
            .execute(pool)
            .await
            .unwrap();
    }
    id
}

fn square() -> serde_json::Value {
    json!({"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.1], [13.0, 52.0]]]})
}

#[tokio::test]
async fn fences_load_through_the_validation_and_their_version_follows_changes() {
    let db = TestDb::new().await;
    let s = seeded(&db.pool).await;
    let g = group(&db.pool, s.tenant_id).await;
    let versions = events::all_fence_versions(&db.pool).await.unwrap();
    assert!(
        !versions.contains_key(&s.tenant_id),
        "a tenant without fences has no version"
    );

    let good = fence(&db.pool, s.tenant_id, square(), &[g]).await;
    // A bow tie: stored (the table checks only the type), refused by `Fence::new`.
    let bow_tie = json!({"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.1, 52.1], [13.1, 52.0], [13.0, 52.1], [13.0, 52.0]]]});
    let bad = fence(&db.pool, s.tenant_id, bow_tie, &[]).await;
    let index = events::load_fences(&db.pool, s.tenant_id).await.unwrap();
    assert_eq!(
        index.len(),
        1,
        "the fence that no longer validates is skipped"
    );
    let loaded = index.get(good).expect("the valid fence");
    assert_eq!(loaded.groups, vec![g]);
    assert_eq!(loaded.speed_limit_mps, Some(8.0));
    assert!(index.get(bad).is_none());
    assert_eq!(index.containing(52.05, 13.05).len(), 1);

    let version = |pool: PgPool, tenant: Uuid| async move {
        events::all_fence_versions(&pool).await.unwrap()[&tenant]
    };
    let v1 = version(db.pool.clone(), s.tenant_id).await;
    assert_eq!((v1.fences, v1.group_rows), (2, 1));
    assert_eq!(v1, version(db.pool.clone(), s.tenant_id).await, "stable");
    sqlx::query("DELETE FROM groups WHERE id = $1")
        .bind(g)
        .execute(&db.pool)
        .await
        .unwrap();
    let v2 = version(db.pool.clone(), s.tenant_id).await;
    assert_ne!(v1, v2, "a group deleted under a fence changes the version");
    sqlx::query("UPDATE geofences SET updated_at = now() + interval '1 second' WHERE id = $1")
        .bind(good)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_ne!(v2, version(db.pool.clone(), s.tenant_id).await);
    // Another tenant's fences are not this tenant's.
    let other = seeded(&db.pool).await;
    assert!(events::load_fences(&db.pool, other.tenant_id)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn device_profiles_carry_groups_and_the_devices_own_limit() {
    let db = TestDb::new().await;
    let s = seeded(&db.pool).await;
    let g = group(&db.pool, s.tenant_id).await;
    sqlx::query("INSERT INTO group_devices (group_id, device_id) VALUES ($1, $2)")
        .bind(g)
        .bind(s.device_id)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE devices SET speed_limit_mps = 25 WHERE id = $1")
        .bind(s.device_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let bare = seeded(&db.pool).await;
    let unknown = Uuid::new_v4();
    let profiles = events::device_profiles(&db.pool, &[s.device_id, bare.device_id, unknown])
        .await
        .unwrap();
    assert_eq!(profiles[&s.device_id].groups, vec![g]);
    assert_eq!(profiles[&s.device_id].speed_limit_mps, Some(25.0));
    assert!(profiles[&bare.device_id].groups.is_empty());
    assert_eq!(profiles[&bare.device_id].speed_limit_mps, None);
    assert!(!profiles.contains_key(&unknown));
}

fn event(tenant: Uuid, device: Uuid, event_type: EventType, t: i64, fence: Option<Uuid>) -> Event {
    Event {
        id: event_id(device, event_type, t, fence),
        tenant_id: tenant,
        device_id: device,
        event_type,
        fix_time: t,
        lat: Some(52.05),
        lon: Some(13.05),
        geofence_id: fence,
        details: json!({"speed_mps": 12.5}),
    }
}

async fn webhook(pool: &PgPool, tenant: Uuid, types: &[&str], disabled: bool) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO webhooks (tenant_id, url, event_types, secret, disabled)
         VALUES ($1, 'https://example.com/hook', $2, 'sixteen-chars-secret', $3) RETURNING id",
    )
    .bind(tenant)
    .bind(types.iter().map(|t| t.to_string()).collect::<Vec<_>>())
    .bind(disabled)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn deliveries_of(pool: &PgPool, hook: Uuid) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT event_id FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY event_id",
    )
    .bind(hook)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn events_insert_once_with_one_delivery_per_matching_enabled_webhook() {
    let db = TestDb::new().await;
    let s = seeded(&db.pool).await;
    let other = seeded(&db.pool).await;
    let every = webhook(&db.pool, s.tenant_id, &[], false).await;
    let enters = webhook(&db.pool, s.tenant_id, &["geofence_enter"], false).await;
    let off = webhook(&db.pool, s.tenant_id, &[], true).await;
    let foreign = webhook(&db.pool, other.tenant_id, &[], false).await;
    let fence = Uuid::new_v4();
    let batch = vec![
        event(
            s.tenant_id,
            s.device_id,
            EventType::GeofenceEnter,
            T0,
            Some(fence),
        ),
        event(s.tenant_id, s.device_id, EventType::Overspeed, T0, None),
    ];
    let mut conn = db.pool.acquire().await.unwrap();
    let new = events::insert_events(&mut conn, &batch, Deliveries::Queue)
        .await
        .unwrap();
    assert_eq!(new, batch);
    let mut both: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
    both.sort();
    assert_eq!(deliveries_of(&db.pool, every).await, both);
    assert_eq!(deliveries_of(&db.pool, enters).await, vec![batch[0].id]);
    assert!(deliveries_of(&db.pool, off).await.is_empty());
    assert!(deliveries_of(&db.pool, foreign).await.is_empty());

    // Again (a redelivered batch), and once more with one new event.
    let again = events::insert_events(&mut conn, &batch, Deliveries::Queue)
        .await
        .unwrap();
    assert!(again.is_empty(), "nothing new the second time");
    let mut more = batch.clone();
    more.push(event(
        s.tenant_id,
        s.device_id,
        EventType::GeofenceExit,
        T0 + 1,
        Some(fence),
    ));
    let new = events::insert_events(&mut conn, &more, Deliveries::Skip)
        .await
        .unwrap();
    assert_eq!(new, vec![more[2].clone()]);
    assert_eq!(
        deliveries_of(&db.pool, every).await.len(),
        2,
        "no delivery doubled, none queued when skipped"
    );
    let stored = events::events_of_tenant(&db.pool, s.tenant_id)
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    let enter = stored.iter().find(|e| e.id == batch[0].id).unwrap();
    assert_eq!(enter.parsed_type(), Some(EventType::GeofenceEnter));
    assert_eq!(enter.fix_time.timestamp_millis(), T0);
    assert_eq!(
        (enter.lat, enter.lon, enter.geofence_id),
        (Some(52.05), Some(13.05), Some(fence))
    );
    assert_eq!(enter.details, json!({"speed_mps": 12.5}));
}

fn state(tenant: Uuid, device: Uuid, seen: i64, online: bool) -> DeviceEventState {
    let mut state = DeviceEventState::new(tenant, device);
    state.last_fix = Some(LastFix {
        t: seen,
        lat_e7: 520_500_000,
        lon_e7: 130_500_000,
    });
    state.last_seen = Some(seen);
    state.online = online;
    state
}

#[tokio::test]
async fn state_rows_lock_and_the_timer_finds_overdue_devices() {
    let db = TestDb::new().await;
    let tenant = Uuid::new_v4();
    let (a, b, c, d) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let sa = state(tenant, a, T0, true);
    let sb = state(tenant, b, T0 + 5_000, true);
    let sc = state(tenant, c, T0 - 5_000, false);
    let mut conn = db.pool.acquire().await.unwrap();
    events::upsert_states(&mut conn, &[sa.clone(), sb.clone(), sc.clone()])
        .await
        .unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    let locked = events::lock_states(&mut tx, &[a, b, c, d]).await.unwrap();
    assert_eq!(locked[&a], sa);
    assert_eq!(locked[&b], sb);
    assert_eq!(locked[&c], sc);
    assert!(!locked.contains_key(&d), "no row, no state");
    // While the batch holds the rows, the timer skips them.
    let mut timer = db.pool.begin().await.unwrap();
    let overdue = events::lock_overdue(&mut timer, T0 + 10_000, 10)
        .await
        .unwrap();
    assert!(overdue.is_empty(), "locked rows are skipped: {overdue:?}");
    timer.rollback().await.unwrap();
    tx.rollback().await.unwrap();

    let mut timer = db.pool.begin().await.unwrap();
    let overdue = events::lock_overdue(&mut timer, T0 + 1, 10).await.unwrap();
    let found: Vec<Uuid> = overdue.iter().map(|(s, _)| s.device_id).collect();
    assert_eq!(found, vec![a], "only online devices seen before the cut");
    assert_eq!(overdue[0].0, sa);
    assert_eq!(overdue[0].1, None, "no device row: no uid");
    timer.rollback().await.unwrap();

    events::reset_devices(&mut conn, &[a]).await.unwrap();
    let locked = events::lock_states(&mut conn, &[a]).await.unwrap();
    assert!(locked.is_empty(), "a reset device has no state");
}

#[tokio::test]
async fn a_guarded_state_write_lands_only_on_the_row_it_folded_from() {
    let db = TestDb::new().await;
    let tenant = Uuid::new_v4();
    let (a, b, c, d, e) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let (sa, sb, sc) = (
        state(tenant, a, T0, true),
        state(tenant, b, T0, true),
        state(tenant, c, T0, true),
    );
    let mut conn = db.pool.acquire().await.unwrap();
    events::upsert_states(&mut conn, &[sa.clone(), sb.clone(), sc.clone()])
        .await
        .unwrap();
    // The offline timer wrote b and c offline since the batch cached them.
    let (mut b_offline, mut c_offline) = (sb.clone(), sc.clone());
    b_offline.online = false;
    c_offline.online = false;
    events::upsert_states(&mut conn, &[b_offline.clone(), c_offline.clone()])
        .await
        .unwrap();

    let next = |s: &DeviceEventState| state(tenant, s.device_id, T0 + 1_000, true);
    let (na, nb, nd, ne) = (
        next(&sa),
        next(&sb),
        state(tenant, d, T0, true),
        state(tenant, e, T0, true),
    );
    let guarded = [
        // Folded from what is stored: written.
        events::GuardedState {
            expected: Some(StateStamp::of(&sa)),
            state: &na,
            changed: true,
        },
        // Folded from the stale cache: refused, the row keeps the timer's state.
        events::GuardedState {
            expected: Some(StateStamp::of(&sb)),
            state: &nb,
            changed: true,
        },
        // Unchanged, but from a stale cache: reported, nothing written.
        events::GuardedState {
            expected: Some(StateStamp::of(&sc)),
            state: &sc,
            changed: false,
        },
        // New device, no row: inserted.
        events::GuardedState {
            expected: None,
            state: &nd,
            changed: true,
        },
        // Believed new, but a row appeared (another writer): refused.
        events::GuardedState {
            expected: None,
            state: &ne,
            changed: true,
        },
    ];
    events::upsert_states(&mut conn, std::slice::from_ref(&ne))
        .await
        .unwrap();
    let mut stale = events::write_states_guarded(&mut conn, &guarded)
        .await
        .unwrap();
    stale.sort();
    let mut want = vec![b, c, e];
    want.sort();
    assert_eq!(stale, want);

    let stored = events::read_states(&mut conn, &[a, b, c, d]).await.unwrap();
    assert_eq!(stored[&a], na);
    assert_eq!(stored[&b], b_offline);
    assert_eq!(stored[&c], c_offline);
    assert_eq!(stored[&d], nd);

    // The same write again: a, d now carry the new stamp, so the old expectations fail.
    let again = events::write_states_guarded(&mut conn, &guarded[..1])
        .await
        .unwrap();
    assert_eq!(again, vec![a]);
}
