//! The migrations on a real PostgreSQL: they apply to an empty database and again with no
//! change, seed the role table the code expects, and (without TimescaleDB) the partition
//! fallback creates, routes and drops daily partitions.

use gps_domain::auth::Role;
use gps_runtime::db::{self, StorageMode};
use gps_runtime::testing::{seed_device, TestDb};
use sqlx::Row;

#[tokio::test]
async fn migrations_apply_once_and_again_without_change() {
    let db = TestDb::new().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, db::MIGRATOR.iter().count());
    let before = schema_fingerprint(&db.pool).await;

    db::migrate(&db.pool).await.expect("second run is a no-op");

    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(again, applied);
    assert_eq!(schema_fingerprint(&db.pool).await, before);
    for table in [
        "tenants",
        "roles",
        "permissions",
        "role_permissions",
        "users",
        "groups",
        "group_members",
        "group_devices",
        "devices",
        "api_keys",
        "refresh_tokens",
        "audit_log",
        "positions",
        "last_positions",
        "positions_hourly",
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(exists, "{table} missing");
    }
}

/// Tables, columns and their types: what a re-run must not change.
async fn schema_fingerprint(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query(
        "SELECT table_name || '.' || column_name || ':' || data_type
         FROM information_schema.columns WHERE table_schema = 'public'
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.get::<String, _>(0))
    .collect()
}

#[tokio::test]
async fn role_permissions_match_the_code() {
    let db = TestDb::new().await;
    for role in Role::ALL {
        let mut in_db: Vec<String> =
            sqlx::query_scalar("SELECT permission FROM role_permissions WHERE role = $1")
                .bind(role.as_str())
                .fetch_all(&db.pool)
                .await
                .unwrap();
        in_db.sort();
        let mut in_code: Vec<String> = role
            .permissions()
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect();
        in_code.sort();
        assert_eq!(in_db, in_code, "role {role}");
    }
}

#[tokio::test]
async fn partition_fallback_creates_routes_and_drops() {
    let db = TestDb::new().await;
    if db::storage_mode(&db.pool).await.unwrap() != StorageMode::Partitioned {
        eprintln!("TimescaleDB is installed here: the partition fallback is not in use");
        return;
    }
    let device = seed_device(&db.pool, "partitions").await;

    // Far from today so the migration's own partitions do not interfere.
    let created: i32 =
        sqlx::query_scalar("SELECT gps_ensure_position_partitions('2031-03-01', '2031-03-03')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(created, 3);
    let again: i32 =
        sqlx::query_scalar("SELECT gps_ensure_position_partitions('2031-03-01', '2031-03-03')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(again, 0, "ensuring is idempotent");

    // A fix at 23:59:59.999 UTC lands in its own day, the next millisecond in the next one.
    for ts in [
        "2031-03-01T23:59:59.999Z",
        "2031-03-02T00:00:00Z",
        "2031-03-03T12:00:00Z",
    ] {
        sqlx::query(
            "INSERT INTO positions (tenant_id, device_id, fix_time, received_at, lat, lon, protocol)
             VALUES ($1, $2, $3::timestamptz, now(), 1, 2, 'json')",
        )
        .bind(device.tenant_id)
        .bind(device.device_id)
        .bind(ts)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let routed: Vec<(String, String)> = sqlx::query_as(
        "SELECT tableoid::regclass::text, to_char(fix_time AT TIME ZONE 'UTC', 'YYYY-MM-DD')
         FROM positions WHERE fix_time >= '2031-01-01' ORDER BY fix_time",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        routed,
        vec![
            ("positions_p20310301".into(), "2031-03-01".into()),
            ("positions_p20310302".into(), "2031-03-02".into()),
            ("positions_p20310303".into(), "2031-03-03".into()),
        ]
    );

    // A fix for a day without a partition is refused, never silently misplaced.
    let missing = sqlx::query(
        "INSERT INTO positions (tenant_id, device_id, fix_time, received_at, lat, lon, protocol)
         VALUES ($1, $2, '2040-01-01T00:00:00Z', now(), 1, 2, 'json')",
    )
    .bind(device.tenant_id)
    .bind(device.device_id)
    .execute(&db.pool)
    .await;
    assert!(missing.is_err());

    // Retention: everything wholly before 2031-03-03 goes, the 3rd stays.
    let dropped: i32 =
        sqlx::query_scalar("SELECT gps_drop_position_partitions('2031-03-03T00:00:00Z')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(dropped >= 2, "dropped {dropped}");
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT to_char(fix_time AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM positions ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, vec!["2031-03-03".to_owned()]);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('positions_p20310302') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn hourly_view_aggregates_positions() {
    let db = TestDb::new().await;
    let device = seed_device(&db.pool, "hourly").await;
    sqlx::query(
        "INSERT INTO positions (tenant_id, device_id, fix_time, received_at, lat, lon, speed_mps, protocol)
         SELECT $1, $2, date_trunc('hour', now()) + make_interval(secs => s), now(), 10, 20, s, 'json'
         FROM generate_series(0, 9) AS s",
    )
    .bind(device.tenant_id)
    .bind(device.device_id)
    .execute(&db.pool)
    .await
    .unwrap();
    if db::storage_mode(&db.pool).await.unwrap() == StorageMode::Timescale {
        sqlx::query("CALL refresh_continuous_aggregate('positions_hourly', NULL, NULL)")
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let (fixes, max_speed): (i64, f64) =
        sqlx::query_as("SELECT fixes, max_speed_mps FROM positions_hourly WHERE device_id = $1")
            .bind(device.device_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(fixes, 10);
    assert_eq!(max_speed, 9.0);
}
