//! Device status frames: a status published live (a batch with no fixes at all) reaches, as one
//! `{"type":"status",..}` message, every client that may see the device and subscribes to it by
//! id, group or `all`; a viewer outside the device's groups and a bounding-box subscriber get
//! none. A client that stops reading is handled as for fixes: its queue keeps the newest status
//! of each device, and past the hard limit it is closed as too slow.

use crate::support::*;
use gps_domain::auth::Role;
use gps_domain::live::{channel_for, LiveBatch, LiveStatus};
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

fn status(device: Uuid, battery: f64) -> LiveStatus {
    let mut status = LiveStatus {
        device,
        uid: format!("uid-{device}"),
        last_seen: 1_790_000_000_000,
        status_time: Some(1_790_000_000_000),
        battery_pct: Some(battery),
        charging: Some(true),
        motion: None,
        alarm: Some("sos".into()),
        alarm_time: Some(1_789_999_990_000),
        attributes: Default::default(),
    };
    status.attributes.insert("rssi".into(), json!(-70));
    status
}

/// Publish a live batch of statuses only (no fixes at all).
async fn publish_statuses(fanout: &mut Running, tenant: Uuid, statuses: Vec<LiveStatus>) {
    let batch = LiveBatch::new(tenant, Vec::new()).with_statuses(statuses);
    redis::cmd("PUBLISH")
        .arg(channel_for(tenant))
        .arg(batch.encode())
        .query_async::<i64>(&mut fanout.redis)
        .await
        .unwrap();
}

/// Every `status` message until the marker device's fix arrives.
async fn statuses_until(ws: &mut Ws, marker: Uuid) -> Vec<Value> {
    let mut statuses = Vec::new();
    loop {
        let message = recv(ws).await;
        if message["type"] == "status" {
            statuses.push(message);
        } else if message["type"] == "fix" && message["device"] == marker.to_string() {
            return statuses;
        }
    }
}

#[tokio::test]
async fn status_frames_reach_exactly_the_clients_that_may_see_the_device() {
    let db = TestDb::new().await;
    let tenant_name = format!("s-{}", unique_suffix());
    let grouped = seed_device(&db.pool, &tenant_name).await;
    let ungrouped = seed_device(&db.pool, &tenant_name).await;
    let marker = seed_device(&db.pool, &tenant_name).await;
    let tenant = grouped.tenant_id;
    let mut fanout = start(db.clone(), config(&db)).await;
    let (viewer_id, viewer) = fanout.user(tenant, Role::Viewer).await;
    create_group(
        &db.pool,
        tenant,
        &[grouped.device_id, marker.device_id],
        &[viewer_id],
    )
    .await;
    let (_, admin) = fanout.user(tenant, Role::Admin).await;

    let mut viewer_all = fanout.connect(&viewer).await;
    subscribe(&mut viewer_all, json!({"type": "subscribe", "all": true})).await;
    let mut admin_by_id = fanout.connect(&admin).await;
    subscribe(
        &mut admin_by_id,
        json!({"type": "subscribe", "devices": [ungrouped.device_id, marker.device_id]}),
    )
    .await;
    let mut admin_by_box = fanout.connect(&admin).await;
    subscribe(
        &mut admin_by_box,
        json!({"type": "subscribe", "bbox": [-180, -90, 180, 90]}),
    )
    .await;

    // Statuses only: no fixes in the message at all.
    let statuses = vec![
        status(grouped.device_id, 42.0),
        status(ungrouped.device_id, 7.0),
    ];
    publish_statuses(&mut fanout, tenant, statuses).await;
    fanout
        .publish(tenant, vec![live(marker.device_id, 5_000, 1.0, 1.0)])
        .await;

    let seen = statuses_until(&mut viewer_all, marker.device_id).await;
    assert_eq!(
        seen.len(),
        1,
        "the viewer sees its group's device only: {seen:?}"
    );
    let frame = &seen[0];
    assert_eq!(frame["device_id"], grouped.device_id.to_string());
    assert_eq!(frame["uid"], format!("uid-{}", grouped.device_id));
    assert_eq!(frame["battery_pct"], 42.0);
    assert_eq!(frame["charging"], true);
    assert_eq!(frame["motion"], Value::Null);
    assert_eq!(frame["alarm"], "sos");
    assert_eq!(frame["alarm_time"], 1_789_999_990_000i64);
    assert_eq!(frame["last_seen"], 1_790_000_000_000i64);
    assert_eq!(frame["attributes"]["rssi"], -70);
    assert!(
        frame.get("seq").is_none(),
        "a status is a state, not a sequence"
    );

    let seen = statuses_until(&mut admin_by_id, marker.device_id).await;
    let devices: Vec<&Value> = seen.iter().map(|s| &s["device_id"]).collect();
    assert_eq!(devices, [&json!(ungrouped.device_id)]);

    assert!(
        statuses_until(&mut admin_by_box, marker.device_id)
            .await
            .is_empty(),
        "a status has no position to place in a box"
    );
    assert_eq!(
        fanout
            .metric("gps_fanout_messages_sent_total{type=\"status\"}")
            .await,
        2.0
    );
    fanout.stop().await;
}

/// A client with a tiny socket receive buffer, so that not reading fills the server's queue fast.
async fn slow_client(addr: std::net::SocketAddr, token: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut ws = connect_on(socket, addr, token).await.unwrap();
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    subscribe(&mut ws, json!({"type": "subscribe", "all": true})).await;
    ws
}

/// Publish `rounds` rounds of padded statuses of every device (battery = the round).
async fn publish_rounds(fanout: &mut Running, tenant: Uuid, devices: &[Uuid], rounds: u32) {
    for round in 0..rounds {
        let statuses = devices
            .iter()
            .map(|d| {
                let mut s = status(*d, f64::from(round));
                s.attributes.insert("pad".into(), json!("x".repeat(1000)));
                s
            })
            .collect();
        publish_statuses(fanout, tenant, statuses).await;
    }
}

async fn slow_setup(capacity: usize, hard_limit: usize) -> (Running, Uuid, Vec<Uuid>, Uuid, Ws) {
    let db = TestDb::new().await;
    let name = format!("s-{}", unique_suffix());
    let mut devices = Vec::new();
    for _ in 0..40 {
        devices.push(seed_device(&db.pool, &name).await);
    }
    let tenant = devices[0].tenant_id;
    let marker = seed_device(&db.pool, &name).await.device_id;
    let mut settings = config(&db);
    settings.queue_capacity = capacity;
    settings.queue_hard_limit = hard_limit;
    settings.slow_client_grace_ms = 120_000;
    let fanout = start(db, settings).await;
    let (_, admin) = fanout.user(tenant, Role::Admin).await;
    let ws = slow_client(fanout.addr, &admin).await;
    let devices = devices.into_iter().map(|d| d.device_id).collect();
    (fanout, tenant, devices, marker, ws)
}

#[tokio::test]
async fn a_stalled_client_gets_the_newest_status_of_each_device() {
    let (mut fanout, tenant, devices, marker, mut slow) = slow_setup(128, 512).await;
    publish_rounds(&mut fanout, tenant, &devices, 400).await;
    fanout
        .publish(tenant, vec![live(marker, 5_000, 1.0, 1.0)])
        .await;
    // Now read: whatever was coalesced, the last status of each device is the newest round.
    let mut newest = std::collections::HashMap::new();
    let mut frames = 0;
    for frame in statuses_until(&mut slow, marker).await {
        frames += 1;
        newest.insert(
            frame["device_id"].to_string(),
            frame["battery_pct"].as_f64(),
        );
    }
    assert_eq!(newest.len(), devices.len());
    assert!(newest.values().all(|b| *b == Some(399.0)), "{newest:?}");
    assert!(
        frames < 100 * devices.len(),
        "nothing was coalesced: {frames} frames"
    );
    fanout.stop().await;
}

#[tokio::test]
async fn statuses_past_the_hard_limit_close_a_stalled_client_as_too_slow() {
    let (mut fanout, tenant, devices, _, mut slow) = slow_setup(2, 8).await;
    publish_rounds(&mut fanout, tenant, &devices, 50).await;
    let (code, reason) = close_of(&mut slow, Duration::from_secs(20)).await;
    assert_eq!((code, reason.as_str()), (4008, "too slow"));
    fanout.stop().await;
}
