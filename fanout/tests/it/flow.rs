//! Subscriptions: snapshot then live fixes in order with per-device sequences; device, group and
//! bbox filters (including a box across the antimeridian); unsubscribe stops the flow.

use crate::support::*;
use gps_domain::auth::Role;
use gps_runtime::testing::{seed_device, unique_suffix, SeededDevice, TestDb};
use serde_json::json;
use std::time::Duration;

/// Three devices of one fresh tenant.
async fn three_devices(db: &TestDb, tenant_prefix: &str) -> [SeededDevice; 3] {
    let tenant_name = format!("{tenant_prefix}-{}", unique_suffix());
    [
        seed_device(&db.pool, &tenant_name).await,
        seed_device(&db.pool, &tenant_name).await,
        seed_device(&db.pool, &tenant_name).await,
    ]
}

#[tokio::test]
async fn snapshot_then_live_fixes_with_device_group_and_bbox_filters() {
    let db = TestDb::new().await;
    let [d1, d2, d3] = three_devices(&db, "flow").await;
    let tenant = d1.tenant_id;
    set_last_position(
        &db.pool,
        tenant,
        d1.device_id,
        1_700_000_001_000,
        10.0,
        10.0,
    )
    .await;
    set_last_position(
        &db.pool,
        tenant,
        d2.device_id,
        1_700_000_002_000,
        50.0,
        50.0,
    )
    .await;
    let group = create_group(&db.pool, tenant, &[d2.device_id], &[]).await;
    let mut fanout = start(db.clone(), config(&db)).await;
    let (_, token) = fanout.user(tenant, Role::Analyst).await;

    // By device: the snapshot carries the last known position, then live fixes follow.
    let mut by_device = fanout.connect(&token).await;
    let (before, snapshot) = subscribe(
        &mut by_device,
        json!({"type": "subscribe", "id": "s1", "devices": [d1.device_id]}),
    )
    .await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["type"], "subscribed");
    assert_eq!(before[0]["id"], "s1");
    assert_eq!(snapshot["id"], "s1");
    assert_eq!(snapshot["count"], 1);
    let position = &snapshot["positions"][0];
    assert_eq!(position["device"], d1.device_id.to_string());
    assert_eq!(position["uid"], d1.uid);
    assert_eq!(position["seq"], 1);
    assert_eq!(position["fix_time"], 1_700_000_001_000i64);
    assert_eq!(position["proto"], "osmand");
    assert_eq!(position["fix"]["lat"], 10.0);
    assert_eq!(position["fix"]["spd"], 1.5);
    assert_eq!(position["fix"]["x"]["tid"], "ab");

    // By bbox: only the device inside; by group: only the group's device.
    let mut by_bbox = fanout.connect(&token).await;
    let (_, snapshot) = subscribe(
        &mut by_bbox,
        json!({"type": "subscribe", "bbox": [0, 0, 20, 20]}),
    )
    .await;
    assert_eq!(snapshot["count"], 1);
    assert_eq!(snapshot["positions"][0]["device"], d1.device_id.to_string());
    let mut by_group = fanout.connect(&token).await;
    let (before, snapshot) = subscribe(
        &mut by_group,
        json!({"type": "subscribe", "groups": [group]}),
    )
    .await;
    assert_eq!(before[0]["subscriptions"]["device_count"], 1);
    assert_eq!(snapshot["count"], 1);
    assert_eq!(snapshot["positions"][0]["device"], d2.device_id.to_string());

    // d1 moves twice, d2 moves into the box then out, d3 (nobody's) moves.
    fanout
        .publish(
            tenant,
            vec![
                live(d1.device_id, 1_700_000_003_000, 11.0, 11.0),
                live(d2.device_id, 1_700_000_003_000, 5.0, 5.0),
                live(d3.device_id, 1_700_000_003_000, 5.0, 5.0),
            ],
        )
        .await;
    fanout
        .publish(
            tenant,
            vec![
                live(d2.device_id, 1_700_000_004_000, 60.0, 60.0),
                live(d1.device_id, 1_700_000_004_000, 12.0, 12.0),
            ],
        )
        .await;

    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(recv(&mut by_device).await);
    }
    assert_eq!(
        got.iter()
            .map(|f| (f["seq"].as_u64().unwrap(), f["fix_time"].as_i64().unwrap()))
            .collect::<Vec<_>>(),
        vec![(2, 1_700_000_003_000), (3, 1_700_000_004_000)],
        "live fixes follow the snapshot's sequence in order: {got:?}"
    );
    assert_eq!(got[0]["type"], "fix");
    assert_eq!(got[0]["fix"]["lat"], 11.0);

    // The bbox client gets whatever moves inside its box, named or not, and not d2 leaving it.
    let mut inside = Vec::new();
    for _ in 0..4 {
        let f = recv(&mut by_bbox).await;
        inside.push((
            f["device"].as_str().unwrap().to_owned(),
            f["fix_time"].as_i64().unwrap(),
        ));
    }
    assert_eq!(
        inside,
        vec![
            (d1.device_id.to_string(), 1_700_000_003_000),
            (d2.device_id.to_string(), 1_700_000_003_000),
            (d3.device_id.to_string(), 1_700_000_003_000),
            (d1.device_id.to_string(), 1_700_000_004_000),
        ],
        "d2 leaving the box is not sent"
    );
    let group_fixes = [recv(&mut by_group).await, recv(&mut by_group).await];
    assert!(group_fixes
        .iter()
        .all(|f| f["device"] == d2.device_id.to_string()));
    assert_eq!(group_fixes[1]["seq"], 3);

    // Unsubscribe stops the flow for that device and nothing else.
    send(
        &mut by_device,
        json!({"type": "subscribe", "devices": [d3.device_id]}),
    )
    .await;
    let ack = recv(&mut by_device).await;
    assert_eq!(ack["type"], "subscribed");
    assert_eq!(recv(&mut by_device).await["type"], "snapshot");
    send(
        &mut by_device,
        json!({"type": "unsubscribe", "id": 9, "devices": [d1.device_id]}),
    )
    .await;
    let ack = recv(&mut by_device).await;
    assert_eq!(ack["type"], "unsubscribed");
    assert_eq!(ack["id"], 9);
    assert_eq!(ack["subscriptions"]["devices"], json!([d3.device_id]));
    fanout
        .publish(
            tenant,
            vec![
                live(d1.device_id, 1_700_000_005_000, 12.0, 12.0),
                live(d3.device_id, 1_700_000_005_000, 12.0, 12.0),
            ],
        )
        .await;
    let next = recv(&mut by_device).await;
    assert_eq!(next["device"], d3.device_id.to_string(), "{next}");
    assert_eq!(next["seq"], 1, "first message about d3 on this connection");

    // Unsubscribe from everything: nothing more arrives.
    send(&mut by_bbox, json!({"type": "unsubscribe"})).await;
    let mut ack = recv(&mut by_bbox).await;
    while ack["type"] == "fix" {
        ack = recv(&mut by_bbox).await; // fixes queued before the unsubscribe
    }
    assert_eq!(ack["type"], "unsubscribed");
    assert_eq!(ack["subscriptions"]["bboxes"], json!([]));
    fanout
        .publish(
            tenant,
            vec![live(d1.device_id, 1_700_000_006_000, 12.0, 12.0)],
        )
        .await;
    assert!(next_frame(&mut by_bbox, Duration::from_millis(300))
        .await
        .is_none());

    // Application ping.
    send(&mut by_bbox, json!({"type": "ping", "id": "p"})).await;
    let pong = recv(&mut by_bbox).await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_str()),
        (Some("pong"), Some("p"))
    );
    fanout.stop().await;
}

#[tokio::test]
async fn a_bbox_crossing_the_antimeridian_covers_both_sides_of_it() {
    let db = TestDb::new().await;
    let [east, west, greenwich] = three_devices(&db, "antimeridian").await;
    let tenant = east.tenant_id;
    for (device, lon) in [(&east, 179.5), (&west, -179.5), (&greenwich, 0.0)] {
        set_last_position(
            &db.pool,
            tenant,
            device.device_id,
            1_700_000_001_000,
            0.5,
            lon,
        )
        .await;
    }
    let mut fanout = start(db.clone(), config(&db)).await;
    let (_, token) = fanout.user(tenant, Role::Analyst).await;

    // 179°E eastwards to 179°W: the snapshot (SQL) holds both sides of 180°, not Greenwich.
    let mut pacific = fanout.connect(&token).await;
    let (_, snapshot) = subscribe(
        &mut pacific,
        json!({"type": "subscribe", "bbox": [179, -1, -179, 1]}),
    )
    .await;
    let positions = snapshot["positions"].as_array().unwrap();
    assert_eq!(
        devices(positions),
        ids(&[east.device_id, west.device_id]),
        "{snapshot}"
    );

    // Live (routing index): the same box, the same answer.
    fanout
        .publish(
            tenant,
            vec![
                live(east.device_id, 1_700_000_002_000, 0.5, 179.5),
                live(greenwich.device_id, 1_700_000_002_000, 0.5, 0.0),
                live(west.device_id, 1_700_000_002_000, 0.5, -179.5),
            ],
        )
        .await;
    fanout
        .publish(
            tenant,
            vec![live(east.device_id, 1_700_000_003_000, 0.5, 180.0)],
        )
        .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let f = recv(&mut pacific).await;
        got.push((
            f["device"].as_str().unwrap().to_owned(),
            f["fix"]["lon"].as_f64().unwrap(),
        ));
    }
    assert_eq!(
        got,
        vec![
            (east.device_id.to_string(), 179.5),
            (west.device_id.to_string(), -179.5),
            (east.device_id.to_string(), 180.0),
        ],
        "the fix at 0° is not sent"
    );
    fanout.stop().await;
}
