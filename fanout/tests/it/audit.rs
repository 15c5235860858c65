//! Live viewing is in the audit log: a session's start and what it subscribed to, with actor,
//! tenant and address; a row that cannot be written is counted, not skipped silently.

use crate::support::*;
use gps_domain::auth::Role;
use gps_runtime::testing::{seed_device, unique_suffix, wait_until, TestDb};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

async fn rows(pool: &PgPool, actor: Uuid) -> Vec<(Uuid, String, Option<String>, Value)> {
    sqlx::query_as(
        "SELECT tenant_id, action, host(ip), detail FROM audit_log
         WHERE actor_id = $1 ORDER BY id",
    )
    .bind(actor)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn live_sessions_and_subscriptions_are_audited_and_lost_rows_counted() {
    let db = TestDb::new().await;
    let tenant_name = format!("audit-{}", unique_suffix());
    let watched = seed_device(&db.pool, &tenant_name).await;
    let tenant = watched.tenant_id;
    let fanout = start(db.clone(), config(&db)).await;
    let (viewer_id, viewer) = fanout.user(tenant, Role::Viewer).await;
    let group = create_group(&db.pool, tenant, &[watched.device_id], &[viewer_id]).await;

    let mut ws = fanout.connect(&viewer).await;
    subscribe(
        &mut ws,
        json!({"type": "subscribe", "groups": [group], "bbox": [0.5, 0.5, 10.5, 10.5]}),
    )
    .await;
    wait_until(Duration::from_secs(5), "live audit rows", || {
        let pool = db.pool.clone();
        async move { rows(&pool, viewer_id).await.len() >= 2 }
    })
    .await;
    let audited = rows(&db.pool, viewer_id).await;
    let actions: Vec<&str> = audited.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(actions, ["live.connect", "live.subscribe"]);
    for (row_tenant, _, ip, detail) in &audited {
        assert_eq!(*row_tenant, tenant);
        assert_eq!(ip.as_deref(), Some("127.0.0.1"));
        assert!(detail["connection"].is_u64(), "{detail}");
    }
    assert_eq!(audited[0].3["via"], "bearer");
    assert_eq!(audited[0].3["scope"], "groups");
    let subscribed = &audited[1].3;
    assert_eq!(subscribed["groups"], json!([group]));
    assert_eq!(subscribed["bboxes"], json!([[0.5, 0.5, 10.5, 10.5]]));
    assert_eq!(subscribed["requests"], 1);

    // The audit table is gone: the session still opens, and the lost row is counted.
    let before = fanout.metric("gps_fanout_audit_failures_total").await;
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_away")
        .execute(&db.pool)
        .await
        .unwrap();
    let (_, analyst) = fanout.user(tenant, Role::Analyst).await;
    let mut ws = fanout.connect(&analyst).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    wait_until(Duration::from_secs(5), "the audit failure count", || {
        let fanout = &fanout;
        async move { fanout.metric("gps_fanout_audit_failures_total").await > before }
    })
    .await;
    sqlx::query("ALTER TABLE audit_log_away RENAME TO audit_log")
        .execute(&db.pool)
        .await
        .unwrap();
    fanout.stop().await;
}
