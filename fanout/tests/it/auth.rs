//! Who may open `/v1/live`: bearer JWT or API key, single-use ticket, browser origin allow-list,
//! and the live:read permission. Refusals happen before the upgrade, with the API's error shape.

use crate::support::*;
use gps_domain::auth::{Actor, Principal, Role};
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use gps_store::principal::JwtKeys;
use gps_store::tickets::issue_ticket;
use serde_json::Value;

#[tokio::test]
async fn credentials_tickets_origins_and_permissions_are_checked_before_the_upgrade() {
    let db = TestDb::new().await;
    let device = seed_device(&db.pool, &format!("auth-{}", unique_suffix())).await;
    let tenant = device.tenant_id;
    let mut config = config(&db);
    config.allowed_origins = vec!["https://maps.example.com".into()];
    let mut fanout = start(db.clone(), config).await;
    let addr = fanout.addr;
    let (user_id, viewer) = fanout.user(tenant, Role::Viewer).await;

    // No credential, a garbage token, an expired token, a forged one: 401 with the error shape.
    assert_eq!(
        refused_status(connect_with(addr, None, None, None).await),
        401
    );
    assert_eq!(
        refused_status(connect_with(addr, Some("nonsense"), None, None).await),
        401
    );
    let expired = fanout.keys.issue(user_id, tenant, Role::Viewer, -3600);
    assert_eq!(
        refused_status(connect_with(addr, Some(&expired), None, None).await),
        401
    );
    let forged = JwtKeys::new(&secrecy::SecretString::from(
        "some-other-secret-some-other-secret-xx",
    ))
    .issue(user_id, tenant, Role::Admin, 600);
    assert_eq!(
        refused_status(connect_with(addr, Some(&forged), None, None).await),
        401
    );
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/v1/live"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    // Not a WebSocket request at all: 426, and a ticket in it would not be burnt.
    let plain = reqwest::get(format!("http://{addr}/v1/live"))
        .await
        .unwrap();
    assert_eq!(plain.status(), 426);

    // A user row holding the device role may not act at all (the role is read from the store,
    // `gps_store::principal`): 401. An API key without live:read: 403.
    let (_, device_user) = fanout.user(tenant, Role::Device).await;
    assert_eq!(
        refused_status(connect_with(addr, Some(&device_user), None, None).await),
        401
    );
    let write_only = create_api_key(&db.pool, tenant, &["fixes:write"]).await;
    assert_eq!(
        refused_status(connect_with(addr, Some(&write_only), None, None).await),
        403
    );
    let live_key = create_api_key(&db.pool, tenant, &["live:read"]).await;
    assert!(connect_with(addr, Some(&live_key), None, None)
        .await
        .is_ok());

    // A disabled user is refused even with a valid token.
    let (disabled_id, disabled) = fanout.user(tenant, Role::Admin).await;
    sqlx::query("UPDATE users SET disabled = true WHERE id = $1")
        .bind(disabled_id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        refused_status(connect_with(addr, Some(&disabled), None, None).await),
        401
    );

    // Browser origins: allowed one passes, another is refused; no Origin (non-browser) passes.
    assert!(
        connect_with(addr, Some(&viewer), None, Some("https://maps.example.com"))
            .await
            .is_ok()
    );
    assert_eq!(
        refused_status(connect_with(addr, Some(&viewer), None, Some("https://evil.example")).await),
        403
    );

    // A ticket works once.
    let principal = Principal {
        tenant_id: tenant,
        actor: Actor::User {
            user_id,
            role: Role::Viewer,
        },
    };
    let ticket = issue_ticket(&mut fanout.redis, &ticket_key(), &principal, 30)
        .await
        .unwrap();
    let mut ws = connect_with(addr, None, Some(&ticket), Some("https://maps.example.com"))
        .await
        .expect("ticket accepted");
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["scope"], "groups");
    assert_eq!(welcome["tenant"], tenant.to_string());
    assert_eq!(
        refused_status(connect_with(addr, None, Some(&ticket), None).await),
        401
    );
    assert_eq!(
        refused_status(connect_with(addr, None, Some("gpst_guess"), None).await),
        401
    );

    assert!(
        fanout
            .metric("gps_fanout_upgrades_refused_total{reason=\"unauthorized\"}")
            .await
            >= 6.0
    );
    fanout.stop().await;
}
