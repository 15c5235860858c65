//! Open sessions follow the current state: a disabled or deleted user, or a revoked API key, is
//! closed with a reason within the re-check interval; a viewer removed from a group stops
//! receiving the group's devices; a password change or reset closes the sessions opened before
//! it (bearer or ticket) and spares those opened after; a ticket is refused when planted in Redis
//! without the key, or when its user was disabled after it was issued.

use crate::support::*;
use gps_domain::auth::{Actor, Principal, Role};
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use gps_store::tickets::{issue_ticket, TicketKey};
use serde_json::json;
use std::time::{Duration, Instant};

/// The re-check interval of these tests.
const RECHECK_SECS: u64 = 1;
/// Closing may take the interval, a sweep, and the Close frame.
const WITHIN: Duration = Duration::from_secs(RECHECK_SECS + 2);

fn fast_recheck(db: &TestDb) -> fanout::Config {
    let mut config = config(db);
    config.recheck_secs = RECHECK_SECS;
    config
}

#[tokio::test]
async fn revoked_credentials_are_closed_with_a_reason_within_the_recheck_interval() {
    let db = TestDb::new().await;
    let device = seed_device(&db.pool, &format!("recheck-{}", unique_suffix())).await;
    let tenant = device.tenant_id;
    let fanout = start(db.clone(), fast_recheck(&db)).await;

    let (disabled_id, disabled) = fanout.user(tenant, Role::Analyst).await;
    let mut disabled_ws = fanout.connect(&disabled).await;
    subscribe(&mut disabled_ws, json!({"type": "subscribe", "all": true})).await;
    let (deleted_id, deleted) = fanout.user(tenant, Role::Viewer).await;
    let mut deleted_ws = fanout.connect(&deleted).await;
    let key = create_api_key(&db.pool, tenant, &["live:read"]).await;
    let mut key_ws = fanout.connect(&key).await;
    let (_, bystander) = fanout.user(tenant, Role::Analyst).await;
    let mut bystander_ws = fanout.connect(&bystander).await;

    sqlx::query("UPDATE users SET disabled = true WHERE id = $1")
        .bind(disabled_id)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(deleted_id)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
    let changed = Instant::now();
    assert_eq!(
        close_of(&mut disabled_ws, WITHIN).await,
        (4401, "account disabled or deleted".to_owned())
    );
    assert_eq!(
        close_of(&mut deleted_ws, WITHIN).await,
        (4401, "account disabled or deleted".to_owned())
    );
    assert_eq!(
        close_of(&mut key_ws, WITHIN).await,
        (4401, "api key revoked or expired".to_owned())
    );
    assert!(changed.elapsed() < WITHIN, "{:?}", changed.elapsed());

    // Everyone else keeps the connection.
    send(&mut bystander_ws, json!({"type": "ping", "id": 1})).await;
    assert_eq!(recv_type(&mut bystander_ws, "pong", WITHIN).await["id"], 1);
    assert_eq!(
        fanout
            .metric("gps_fanout_closes_total{reason=\"account_disabled\"}")
            .await,
        2.0
    );
    assert_eq!(
        fanout
            .metric("gps_fanout_closes_total{reason=\"key_revoked\"}")
            .await,
        1.0
    );
    assert!(
        fanout
            .metric("gps_fanout_rechecks_total{outcome=\"revoked\"}")
            .await
            >= 3.0
    );
    fanout.stop().await;
}

#[tokio::test]
async fn a_password_change_closes_sessions_opened_before_it_within_the_recheck_interval() {
    let db = TestDb::new().await;
    let device = seed_device(&db.pool, &format!("password-{}", unique_suffix())).await;
    let tenant = device.tenant_id;
    let mut fanout = start(db.clone(), fast_recheck(&db)).await;
    let addr = fanout.addr;

    // One user with a session by bearer JWT and one by ticket, opened before the change.
    let (user_id, token) = fanout.user(tenant, Role::Analyst).await;
    let principal = Principal {
        tenant_id: tenant,
        actor: Actor::User {
            user_id,
            role: Role::Analyst,
        },
    };
    let mut bearer_ws = fanout.connect(&token).await;
    subscribe(&mut bearer_ws, json!({"type": "subscribe", "all": true})).await;
    let ticket = issue_ticket(&mut fanout.redis, &ticket_key(), &principal, 30)
        .await
        .unwrap();
    let mut ticket_ws = connect_with(addr, None, Some(&ticket), None)
        .await
        .expect("ticket upgrade succeeds");
    assert_eq!(recv(&mut ticket_ws).await["type"], "welcome");

    // Issue times have whole seconds, and a credential of the change's own second passes: let
    // the second turn, then change the password as query-api's change and reset do.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sqlx::query("UPDATE users SET tokens_not_before = clock_timestamp() WHERE id = $1")
        .bind(user_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let changed = Instant::now();

    // Sessions opened after the change (a fresh login, a fresh ticket) stay open.
    let fresh_token = fanout.keys.issue(user_id, tenant, Role::Analyst, 600);
    let mut fresh_bearer_ws = fanout.connect(&fresh_token).await;
    let fresh_ticket = issue_ticket(&mut fanout.redis, &ticket_key(), &principal, 30)
        .await
        .unwrap();
    let mut fresh_ticket_ws = connect_with(addr, None, Some(&fresh_ticket), None)
        .await
        .expect("fresh ticket upgrade succeeds");
    assert_eq!(recv(&mut fresh_ticket_ws).await["type"], "welcome");

    assert_eq!(
        close_of(&mut bearer_ws, WITHIN).await,
        (4401, "credentials changed".to_owned())
    );
    assert_eq!(
        close_of(&mut ticket_ws, WITHIN).await,
        (4401, "credentials changed".to_owned())
    );
    assert!(changed.elapsed() < WITHIN, "{:?}", changed.elapsed());

    // A further sweep over the fresh sessions leaves them open.
    tokio::time::sleep(Duration::from_secs(RECHECK_SECS + 1)).await;
    for (i, ws) in [&mut fresh_bearer_ws, &mut fresh_ticket_ws]
        .into_iter()
        .enumerate()
    {
        send(ws, json!({"type": "ping", "id": i})).await;
        assert_eq!(recv_type(ws, "pong", WITHIN).await["id"], i);
    }
    assert_eq!(
        fanout
            .metric("gps_fanout_closes_total{reason=\"credentials_changed\"}")
            .await,
        2.0
    );
    // The old token itself is refused for a new session.
    assert_eq!(
        refused_status(connect_with(addr, Some(&token), None, None).await),
        401
    );
    fanout.stop().await;
}

#[tokio::test]
async fn a_viewer_removed_from_a_group_stops_receiving_its_devices() {
    let db = TestDb::new().await;
    let tenant_name = format!("regroup-{}", unique_suffix());
    let kept = seed_device(&db.pool, &tenant_name).await;
    let lost = seed_device(&db.pool, &tenant_name).await;
    let marker = seed_device(&db.pool, &tenant_name).await;
    let tenant = kept.tenant_id;
    let mut fanout = start(db.clone(), fast_recheck(&db)).await;
    let (viewer_id, viewer) = fanout.user(tenant, Role::Viewer).await;
    let keep_group = create_group(
        &db.pool,
        tenant,
        &[kept.device_id, marker.device_id],
        &[viewer_id],
    )
    .await;
    let lost_group = create_group(&db.pool, tenant, &[lost.device_id], &[viewer_id]).await;

    // One session names the groups, one watches everything it may see.
    let mut by_group = fanout.connect(&viewer).await;
    subscribe(
        &mut by_group,
        json!({"type": "subscribe", "groups": [keep_group, lost_group]}),
    )
    .await;
    let mut by_all = fanout.connect(&viewer).await;
    subscribe(&mut by_all, json!({"type": "subscribe", "all": true})).await;
    let round = |t: i64| {
        vec![
            live(kept.device_id, t, 1.0, 1.0),
            live(lost.device_id, t, 1.0, 1.0),
            live(marker.device_id, t, 1.0, 1.0),
        ]
    };
    fanout.publish(tenant, round(1_000)).await;
    for ws in [&mut by_group, &mut by_all] {
        let fixes = fixes_until(ws, marker.device_id).await;
        assert_eq!(devices(&fixes), ids(&[kept.device_id, lost.device_id]));
    }

    sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
        .bind(lost_group)
        .bind(viewer_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let changed = recv_type(&mut by_group, "access_changed", WITHIN).await;
    assert_eq!(changed["removed"]["groups"], json!([lost_group]));
    assert_eq!(changed["subscriptions"]["groups"], json!([keep_group]));
    assert_eq!(changed["subscriptions"]["device_count"], 2);
    recv_type(&mut by_all, "access_changed", WITHIN).await;

    fanout.publish(tenant, round(2_000)).await;
    for ws in [&mut by_group, &mut by_all] {
        let fixes = fixes_until(ws, marker.device_id).await;
        assert_eq!(devices(&fixes), ids(&[kept.device_id]), "{fixes:?}");
    }
    fanout.stop().await;
}

#[tokio::test]
async fn tickets_planted_in_redis_or_of_a_since_disabled_user_are_refused() {
    let db = TestDb::new().await;
    let device = seed_device(&db.pool, &format!("tickets-{}", unique_suffix())).await;
    let tenant = device.tenant_id;
    let mut fanout = start(db.clone(), config(&db)).await;
    let addr = fanout.addr;
    let (admin_id, _) = fanout.user(tenant, Role::Admin).await;
    let principal = Principal {
        tenant_id: tenant,
        actor: Actor::User {
            user_id: admin_id,
            role: Role::Admin,
        },
    };

    // Someone with write access to Redis plants a ticket: the unsigned value the store used to
    // hold, under the key a chosen ticket maps to.
    let planted = format!("gpst_{}", gps_domain::auth::random_token(32));
    redis::cmd("SET")
        .arg(format!(
            "gps:ticket:{}",
            gps_domain::auth::secret_digest(&planted)
        ))
        .arg(serde_json::to_string(&principal).unwrap())
        .arg("EX")
        .arg(30)
        .query_async::<()>(&mut fanout.redis)
        .await
        .unwrap();
    assert_eq!(
        refused_status(connect_with(addr, None, Some(&planted), None).await),
        401
    );
    // Signed, but with another deployment's key.
    let foreign = TicketKey::derive(&secrecy::SecretString::from("another-deployment-secret"));
    let forged = issue_ticket(&mut fanout.redis, &foreign, &principal, 30)
        .await
        .unwrap();
    assert_eq!(
        refused_status(connect_with(addr, None, Some(&forged), None).await),
        401
    );
    // A genuine ticket works; one whose user was disabled after issuance does not.
    let genuine = issue_ticket(&mut fanout.redis, &ticket_key(), &principal, 30)
        .await
        .unwrap();
    assert!(connect_with(addr, None, Some(&genuine), None).await.is_ok());
    let stale = issue_ticket(&mut fanout.redis, &ticket_key(), &principal, 30)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET disabled = true WHERE id = $1")
        .bind(admin_id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        refused_status(connect_with(addr, None, Some(&stale), None).await),
        401
    );
    fanout.stop().await;
}
