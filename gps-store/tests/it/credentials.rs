//! Credentials against a real database: the three device lookups give one record, its settings
//! resolved against the tenant's defaults, uid-only lookups see opted-in devices only, API-key rows
//! map onto the rule (revoked, expired, scopes), `last_used_at` is written at most once a minute
//! per key, and principal resolution applies the same rule.

use chrono::{TimeDelta, Utc};
use gps_domain::auth::{self, Actor, Permission};
use gps_domain::fix::units::SpeedUnit;
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use gps_store::credentials::{self, DeviceKey, KeyVerdict};
use gps_store::principal::{principal_from_api_key, AuthError};
use sqlx::PgPool;
use uuid::Uuid;

/// Insert an API key of `tenant`; returns the presented key and its row id.
async fn api_key(pool: &PgPool, tenant: Uuid, scopes: &[&str], extra_sql: &str) -> (String, Uuid) {
    let minted = auth::new_api_key();
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (tenant_id, name, prefix, key_hash, scopes)
         VALUES ($1, 'test', $2, $3, $4) RETURNING id",
    )
    .bind(tenant)
    .bind(&minted.id)
    .bind(auth::secret_digest(&minted.key))
    .bind(scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .fetch_one(pool)
    .await
    .unwrap();
    if !extra_sql.is_empty() {
        sqlx::query(&format!("UPDATE api_keys SET {extra_sql} WHERE id = $1"))
            .bind(id)
            .execute(pool)
            .await
            .unwrap();
    }
    (minted.key, id)
}

async fn last_used(pool: &PgPool, id: Uuid) -> Option<chrono::DateTime<Utc>> {
    sqlx::query_scalar("SELECT last_used_at FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_device_is_the_same_record_by_token_tenant_uid_and_id() {
    let db = TestDb::new().await;
    let seeded = seed_device(&db.pool, &format!("cred-{}", unique_suffix())).await;
    let digest = auth::secret_digest(&seeded.token);
    let mut found = Vec::new();
    for key in [
        DeviceKey::TokenDigest(&digest),
        DeviceKey::TenantUid(seeded.tenant_id, &seeded.uid),
        DeviceKey::Id(seeded.device_id),
    ] {
        found.push(
            credentials::device(&db.pool, key)
                .await
                .unwrap()
                .expect("found"),
        );
    }
    assert!(found.windows(2).all(|w| w[0] == w[1]), "{found:?}");
    let device = &found[0];
    assert_eq!(
        (
            device.id,
            device.tenant_id,
            device.uid.as_str(),
            device.disabled
        ),
        (
            seeded.device_id,
            seeded.tenant_id,
            seeded.uid.as_str(),
            false
        )
    );
    assert_eq!(device.udp_key, Some(seeded.udp_key));

    // The raw token is not a digest: looking it up as one finds nothing.
    assert_eq!(
        credentials::device(&db.pool, DeviceKey::TokenDigest(&seeded.token))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        credentials::device(
            &db.pool,
            DeviceKey::TenantUid(seeded.tenant_id, "no-such-uid")
        )
        .await
        .unwrap(),
        None
    );
    // The uid of another tenant is not found through this tenant.
    assert_eq!(
        credentials::device(&db.pool, DeviceKey::TenantUid(Uuid::new_v4(), &seeded.uid))
            .await
            .unwrap(),
        None
    );
    // Disabled devices are returned as such: callers decide.
    sqlx::query("UPDATE devices SET disabled = true WHERE id = $1")
        .bind(seeded.device_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let disabled = credentials::device(&db.pool, DeviceKey::Id(seeded.device_id))
        .await
        .unwrap()
        .unwrap();
    assert!(disabled.disabled);
}

/// Set a device column (`uid_only`, `speed_unit`, `payload_secret`) to a SQL value.
async fn set_device(pool: &PgPool, id: Uuid, assignment: &str) {
    sqlx::query(&format!("UPDATE devices SET {assignment} WHERE id = $1"))
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

async fn set_tenant_settings(pool: &PgPool, tenant: Uuid, settings: serde_json::Value) {
    sqlx::query("UPDATE tenants SET settings = $2 WHERE id = $1")
        .bind(tenant)
        .bind(settings)
        .execute(pool)
        .await
        .unwrap();
}

async fn by_id(pool: &PgPool, id: Uuid) -> credentials::DeviceRecord {
    credentials::device(pool, DeviceKey::Id(id))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn device_settings_resolve_device_then_tenant_then_built_in_default() {
    let db = TestDb::new().await;
    let seeded = seed_device(&db.pool, &format!("settings-{}", unique_suffix())).await;
    let device = by_id(&db.pool, seeded.device_id).await;
    assert_eq!(
        (device.uid_only, device.speed_unit, &device.payload_secret),
        (false, SpeedUnit::Knots, &None),
        "built-in defaults: token required, knots, no payload secret"
    );

    set_tenant_settings(
        &db.pool,
        seeded.tenant_id,
        serde_json::json!({"uid_only_devices": true, "osmand_speed_unit": "kmh"}),
    )
    .await;
    let device = by_id(&db.pool, seeded.device_id).await;
    assert_eq!(
        (device.uid_only, device.speed_unit),
        (true, SpeedUnit::KilometresPerHour)
    );

    set_device(
        &db.pool,
        seeded.device_id,
        "uid_only = false, speed_unit = 'mps', payload_secret = 'owntracks-key'",
    )
    .await;
    let device = by_id(&db.pool, seeded.device_id).await;
    assert_eq!(
        (device.uid_only, device.speed_unit),
        (false, SpeedUnit::MetresPerSecond)
    );
    let secret = device.payload_secret.as_ref().expect("payload secret");
    assert_eq!(secret.expose(), "owntracks-key");
    assert!(
        !format!("{device:?}").contains("owntracks-key"),
        "a logged record does not show the payload secret"
    );

    // A malformed tenant setting counts as absent, never as an error or a surprise.
    set_device(
        &db.pool,
        seeded.device_id,
        "uid_only = NULL, speed_unit = NULL",
    )
    .await;
    set_tenant_settings(
        &db.pool,
        seeded.tenant_id,
        serde_json::json!({"uid_only_devices": "yes", "osmand_speed_unit": "furlongs"}),
    )
    .await;
    let device = by_id(&db.pool, seeded.device_id).await;
    assert_eq!(
        (device.uid_only, device.speed_unit),
        (false, SpeedUnit::Knots)
    );
    // The column refuses an unknown unit.
    let refused = sqlx::query("UPDATE devices SET speed_unit = 'furlongs' WHERE id = $1")
        .bind(seeded.device_id)
        .execute(&db.pool)
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn uids_are_unique_per_tenant_and_uid_only_lookups_see_opted_in_devices() {
    let db = TestDb::new().await;
    let a = seed_device(&db.pool, &format!("uid-a-{}", unique_suffix())).await;
    let b = seed_device(&db.pool, &format!("uid-b-{}", unique_suffix())).await;
    // Tenant B may have a device with tenant A's uid; A may not have two.
    let insert = |tenant: Uuid| {
        sqlx::query("INSERT INTO devices (tenant_id, uid) VALUES ($1, $2) RETURNING id")
            .bind(tenant)
            .bind(a.uid.clone())
    };
    let twin: Uuid =
        sqlx::query_scalar("INSERT INTO devices (tenant_id, uid) VALUES ($1, $2) RETURNING id")
            .bind(b.tenant_id)
            .bind(&a.uid)
            .fetch_one(&db.pool)
            .await
            .expect("the same uid in another tenant");
    assert!(insert(a.tenant_id).execute(&db.pool).await.is_err());

    // Neither is opted in: a uid-only lookup finds nothing.
    let found = credentials::uid_only_devices(&db.pool, &a.uid)
        .await
        .unwrap();
    assert!(found.is_empty(), "{found:?}");
    // A explicitly opts in: exactly A's device.
    set_device(&db.pool, a.device_id, "uid_only = true").await;
    let found = credentials::uid_only_devices(&db.pool, &a.uid)
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![a.device_id]
    );
    // B opts its devices in by tenant default: both match, and the caller sees the ambiguity.
    set_tenant_settings(
        &db.pool,
        b.tenant_id,
        serde_json::json!({"uid_only_devices": true}),
    )
    .await;
    let found = credentials::uid_only_devices(&db.pool, &a.uid)
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = found.iter().map(|d| d.id).collect();
    ids.sort();
    let mut expected = vec![a.device_id, twin];
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn stored_keys_are_judged_by_the_one_rule() {
    let db = TestDb::new().await;
    let tenant = seed_device(&db.pool, &format!("keys-{}", unique_suffix()))
        .await
        .tenant_id;
    let now = Utc::now();
    let cases = [
        (
            "",
            KeyVerdict::Accepted {
                touch_last_used: true,
            },
        ),
        ("revoked_at = now()", KeyVerdict::Invalid),
        (
            "expires_at = now() - interval '1 second'",
            KeyVerdict::Invalid,
        ),
        (
            "expires_at = now() + interval '1 hour'",
            KeyVerdict::Accepted {
                touch_last_used: true,
            },
        ),
        (
            "last_used_at = now()",
            KeyVerdict::Accepted {
                touch_last_used: false,
            },
        ),
        ("scopes = '{positions:read}'", KeyVerdict::MissingScope),
    ];
    for (extra_sql, expected) in cases {
        let (key, id) = api_key(&db.pool, tenant, &["fixes:write"], extra_sql).await;
        let prefix = auth::api_key_id(&key).unwrap();
        let record = credentials::api_key(&db.pool, prefix)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((record.id, record.tenant_id), (id, tenant));
        assert_eq!(
            record.verify(&key, Some(Permission::FixesWrite), now),
            expected,
            "{extra_sql:?}"
        );
    }
    assert_eq!(
        credentials::api_key(&db.pool, "nosuchkey123")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn last_used_at_is_written_at_most_once_a_minute_per_key() {
    let db = TestDb::new().await;
    let tenant = seed_device(&db.pool, &format!("touch-{}", unique_suffix()))
        .await
        .tenant_id;
    let (_, id) = api_key(&db.pool, tenant, &[], "").await;
    let (_, other) = api_key(&db.pool, tenant, &[], "").await;
    let t0 = Utc::now();
    let at = |secs: i64| t0 + TimeDelta::seconds(secs);
    assert!(credentials::touch_api_key(&db.pool, id, at(0))
        .await
        .unwrap());
    assert!(!credentials::touch_api_key(&db.pool, id, at(30))
        .await
        .unwrap());
    assert!(!credentials::touch_api_key(&db.pool, id, at(59))
        .await
        .unwrap());
    assert!(
        credentials::touch_api_key(&db.pool, other, at(30))
            .await
            .unwrap(),
        "the guard is per key"
    );
    let stored = last_used(&db.pool, id).await.unwrap();
    assert!(
        (stored - at(0)).num_milliseconds().abs() < 1,
        "{stored} vs {}",
        at(0)
    );
    assert!(credentials::touch_api_key(&db.pool, id, at(60))
        .await
        .unwrap());
    let stored = last_used(&db.pool, id).await.unwrap();
    assert!((stored - at(60)).num_milliseconds().abs() < 1);
}

#[tokio::test]
async fn principals_from_api_keys_follow_the_rule_and_record_their_use() {
    let db = TestDb::new().await;
    let tenant = seed_device(&db.pool, &format!("principal-{}", unique_suffix()))
        .await
        .tenant_id;
    let (key, id) = api_key(&db.pool, tenant, &["positions:read"], "").await;
    let principal = principal_from_api_key(&db.pool, &key).await.unwrap();
    assert_eq!(principal.tenant_id, tenant);
    assert_eq!(
        principal.actor,
        Actor::ApiKey {
            key_id: id,
            scopes: vec!["positions:read".into()]
        }
    );
    let first = last_used(&db.pool, id).await.expect("use recorded");
    principal_from_api_key(&db.pool, &key).await.unwrap();
    assert_eq!(
        last_used(&db.pool, id).await,
        Some(first),
        "not again within a minute"
    );

    let (revoked, _) = api_key(&db.pool, tenant, &["positions:read"], "revoked_at = now()").await;
    let (expired, _) = api_key(
        &db.pool,
        tenant,
        &["positions:read"],
        "expires_at = now() - interval '1 second'",
    )
    .await;
    let mut wrong_secret = key.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == 'A' { 'B' } else { 'A' });
    for presented in [revoked.as_str(), expired.as_str(), wrong_secret.as_str()] {
        assert!(
            matches!(
                principal_from_api_key(&db.pool, presented).await,
                Err(AuthError::InvalidApiKey)
            ),
            "{presented}"
        );
    }
}
