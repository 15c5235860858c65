//! Two tenants, every role: each client receives exactly the fixes it may see.

use crate::support::*;
use gps_domain::auth::Role;
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use serde_json::json;

#[tokio::test]
async fn each_principal_receives_exactly_what_it_may_see() {
    let db = TestDb::new().await;
    let (ta, tb) = (
        format!("a-{}", unique_suffix()),
        format!("b-{}", unique_suffix()),
    );
    let a1 = seed_device(&db.pool, &ta).await;
    let a2 = seed_device(&db.pool, &ta).await;
    let a3 = seed_device(&db.pool, &ta).await;
    let a_marker = seed_device(&db.pool, &ta).await;
    let b1 = seed_device(&db.pool, &tb).await;
    let b_marker = seed_device(&db.pool, &tb).await;
    let (tenant_a, tenant_b) = (a1.tenant_id, b1.tenant_id);
    let mut fanout = start(db.clone(), config(&db)).await;

    let (viewer_id, viewer) = fanout.user(tenant_a, Role::Viewer).await;
    let (_, lonely_viewer) = fanout.user(tenant_a, Role::Viewer).await;
    create_group(
        &db.pool,
        tenant_a,
        &[a1.device_id, a_marker.device_id],
        &[viewer_id],
    )
    .await;
    let api_key = create_api_key(&db.pool, tenant_a, &["live:read"]).await;
    let mut tenant_wide = Vec::new();
    for role in [Role::Admin, Role::Manager, Role::Analyst] {
        tenant_wide.push((
            role.as_str().to_owned(),
            fanout.user(tenant_a, role).await.1,
        ));
    }
    tenant_wide.push(("api_key".to_owned(), api_key));
    let (_, admin_b) = fanout.user(tenant_b, Role::Admin).await;

    // Everyone subscribes to everything it may see.
    let mut clients = Vec::new();
    for (name, token) in &tenant_wide {
        let mut ws = fanout.connect(token).await;
        let (before, _) = subscribe(&mut ws, json!({"type": "subscribe", "all": true})).await;
        assert_eq!(before.len(), 1, "{name}: only the ack: {before:?}");
        clients.push((
            name.clone(),
            ws,
            a_marker.device_id,
            ids(&[a1.device_id, a2.device_id, a3.device_id]),
        ));
    }
    let mut ws = fanout.connect(&viewer).await;
    subscribe(&mut ws, json!({"type": "subscribe", "all": true})).await;
    clients.push((
        "viewer".into(),
        ws,
        a_marker.device_id,
        ids(&[a1.device_id]),
    ));
    let mut ws = fanout.connect(&admin_b).await;
    subscribe(&mut ws, json!({"type": "subscribe", "all": true})).await;
    clients.push((
        "admin_b".into(),
        ws,
        b_marker.device_id,
        ids(&[b1.device_id]),
    ));

    // A viewer outside every group sees nothing, and asking for a device by id is refused.
    let mut lonely = fanout.connect(&lonely_viewer).await;
    let (before, snapshot) = subscribe(
        &mut lonely,
        json!({"type": "subscribe", "id": 1, "devices": [a1.device_id]}),
    )
    .await;
    assert_eq!(before[0]["type"], "error");
    assert_eq!(before[0]["code"], "not_found");
    assert_eq!(before[0]["devices"], json!([a1.device_id]));
    assert_eq!(snapshot["count"], 0);

    // The viewer asking for a device of its tenant outside its groups, and tenant A's admin
    // asking for tenant B's device, get the same refusal as for a device that does not exist.
    let (_, admin_a) = &tenant_wide[0];
    let mut probe = fanout.connect(admin_a).await;
    let ghost = uuid::Uuid::new_v4();
    let (before, _) = subscribe(
        &mut probe,
        json!({"type": "subscribe", "devices": [b1.device_id, ghost, a2.device_id]}),
    )
    .await;
    assert_eq!(before[0]["code"], "not_found", "{before:?}");
    assert_eq!(
        {
            let mut refused: Vec<String> =
                serde_json::from_value(before[0]["devices"].clone()).unwrap();
            refused.sort();
            refused
        },
        ids(&[b1.device_id, ghost])
    );
    assert_eq!(before[1]["subscriptions"]["devices"], json!([a2.device_id]));

    let ws = clients
        .iter_mut()
        .find(|c| c.0 == "viewer")
        .map(|c| &mut c.1)
        .unwrap();
    let (before, _) = subscribe(
        ws,
        json!({"type": "subscribe", "devices": [a2.device_id, b1.device_id]}),
    )
    .await;
    assert_eq!(before[0]["code"], "not_found");

    for (tenant, devices) in [(tenant_a, vec![&a1, &a2, &a3]), (tenant_b, vec![&b1])] {
        let fixes = devices
            .iter()
            .enumerate()
            .map(|(i, d)| live(d.device_id, 1_000 + i as i64, 10.0, 10.0))
            .collect();
        fanout.publish(tenant, fixes).await;
    }
    fanout
        .publish(tenant_a, vec![live(a_marker.device_id, 5_000, 1.0, 1.0)])
        .await;
    fanout
        .publish(tenant_b, vec![live(b_marker.device_id, 5_000, 1.0, 1.0)])
        .await;

    for (name, ws, marker, expected) in &mut clients {
        let fixes = fixes_until(ws, *marker).await;
        assert_eq!(devices(&fixes), *expected, "{name} saw the wrong fixes");
        for fix in &fixes {
            assert_eq!(fix["seq"], 1, "{name}: first message about the device");
        }
    }
    // The lonely viewer got nothing at all, not even the marker.
    assert!(
        next_frame(&mut lonely, std::time::Duration::from_millis(300))
            .await
            .is_none()
    );
    fanout.stop().await;
}
