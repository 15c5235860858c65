//! The service starts against the real stack, serves its operational endpoints, and closes every
//! client with 1001 (going away) on shutdown.

use crate::support::*;
use futures::StreamExt;
use gps_domain::auth::Role;
use gps_runtime::testing::{assert_ops_endpoints, seed_device, unique_suffix, TestDb};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn serves_health_readiness_metrics_and_closes_clients_on_shutdown() {
    let db = TestDb::new().await;
    let device = seed_device(&db.pool, &format!("smoke-{}", unique_suffix())).await;
    let fanout = start(db.clone(), config(&db)).await;
    let base = format!("http://{}", fanout.addr);
    let client = reqwest::Client::new();
    assert_ops_endpoints(&client, &base, &["postgres", "redis", "live_subscription"]).await;
    let (_, token) = fanout.user(device.tenant_id, Role::Analyst).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(fanout.connect(&token).await);
    }
    assert_eq!(fanout.metric("gps_fanout_connections").await, 3.0);
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "gps_fanout_messages_sent_total",
        "gps_fanout_fixes_coalesced_total",
        "gps_fanout_fixes_dropped_total",
        "gps_fanout_closes_total",
        "gps_fanout_redis_reconnects_total",
        "gps_fanout_subscriptions",
    ] {
        assert!(text.contains(name), "{name} missing");
    }

    fanout.shutdown.trigger();
    for mut ws in clients {
        let code = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("close frame in time");
        assert_eq!(code, Some(1001));
    }
    tokio::time::timeout(Duration::from_secs(15), fanout.server)
        .await
        .expect("fanout stops")
        .unwrap()
        .unwrap();
}
