//! Rate limits: connects per client IP and per principal answer 429 with Retry-After before the
//! upgrade; subscribes over a connection's budget answer a `rate_limited` error, and a client that
//! keeps going is closed.

use crate::support::*;
use gps_domain::auth::Role;
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Error;

/// The 429's Retry-After seconds and error code, or the status of another outcome.
fn limited(result: Result<Ws, Error>) -> Result<(u64, String), String> {
    match result {
        Err(Error::Http(response)) if response.status() == 429 => {
            let retry_after = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            Ok((
                retry_after,
                body["error"]["code"].as_str().unwrap().to_owned(),
            ))
        }
        Err(e) => Err(e.to_string()),
        Ok(_) => Err("accepted".into()),
    }
}

#[tokio::test]
async fn connects_over_the_ip_or_principal_limit_get_429_with_retry_after() {
    let db = TestDb::new().await;
    let device = seed_device(&db.pool, &format!("limits-{}", unique_suffix())).await;
    let tenant = device.tenant_id;
    let mut config = config(&db);
    config.connect_limit_per_ip = 3;
    config.connect_limit_per_principal = 2;
    let fanout = start(db.clone(), config).await;
    let addr = fanout.addr;
    let mut users = Vec::new();
    for _ in 0..6 {
        users.push(fanout.user(tenant, Role::Analyst).await.1);
    }
    fresh_window(10).await;

    // Per IP: three users from one address pass, a fourth is refused before its credential is
    // even looked at (garbage passes the same way).
    let ip = own_loopback_ip();
    for token in &users[..3] {
        connect_from(addr, ip, token)
            .await
            .expect("under the IP limit");
    }
    let (retry_after, code) = limited(connect_from(addr, ip, &users[3]).await).unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(code, "rate_limited");
    assert!(limited(connect_from(addr, ip, "garbage").await).is_ok());

    // Per principal: the same user from three addresses.
    for _ in 0..2 {
        connect_from(addr, own_loopback_ip(), &users[4])
            .await
            .expect("under the principal limit");
    }
    let (retry_after, _) = limited(connect_from(addr, own_loopback_ip(), &users[4]).await).unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Another user from yet another address is not affected.
    connect_from(addr, own_loopback_ip(), &users[5])
        .await
        .expect("another principal");
    assert_eq!(
        fanout
            .metric("gps_fanout_upgrades_refused_total{reason=\"rate_limited\"}")
            .await,
        3.0
    );
    fanout.stop().await;
}

#[tokio::test]
async fn subscribes_over_the_budget_are_refused_then_the_client_is_closed() {
    let db = TestDb::new().await;
    let device = seed_device(&db.pool, &format!("sublimit-{}", unique_suffix())).await;
    let mut config = config(&db);
    config.subscribe_burst = 2;
    config.subscribes_per_minute = 1;
    let fanout = start(db.clone(), config).await;
    let (_, token) = fanout.user(device.tenant_id, Role::Analyst).await;
    let mut ws = fanout.connect(&token).await;

    let request = json!({"type": "subscribe", "id": "s", "devices": [device.device_id]});
    for _ in 0..2 {
        subscribe(&mut ws, request.clone()).await;
    }
    send(&mut ws, request.clone()).await;
    let refused = recv(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited");
    assert_eq!(refused["id"], "s");
    assert!(
        refused["retry_after_ms"].as_u64().unwrap() > 1_000,
        "{refused}"
    );
    // Pings are not subscribes: still answered.
    send(&mut ws, json!({"type": "ping", "id": 2})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");

    // A client that keeps going is closed (after ten more refusals in a row).
    for _ in 0..10 {
        send(&mut ws, request.clone()).await;
    }
    assert_eq!(
        close_of(&mut ws, Duration::from_secs(5)).await,
        (4429, "too many subscribe requests".to_owned())
    );
    assert!(
        fanout
            .metric("gps_fanout_client_errors_total{code=\"rate_limited\"}")
            .await
            >= 10.0
    );
    fanout.stop().await;
}
