//! Device status and invalid fixes in the API: `GET /v1/devices/{id}/status` answers the
//! `device_status` row by the visibility rules (a viewer only its groups' devices, another
//! tenant's device 404), latest positions carry each device's status, and history shows a fix
//! the device called invalid.

use crate::support::*;
use gps_domain::auth::Role;
use gps_store::positions::COLUMNS;
use serde_json::{json, Value};
use uuid::Uuid;

const T: i64 = 1_700_000_000_000;

async fn put_status(api: &Api, tenant: Uuid, device: Uuid, battery: f64) {
    sqlx::query(
        "INSERT INTO device_status (device_id, tenant_id, last_seen, status_time, battery_pct,
             charging, alarm, alarm_time, motion, attributes)
         VALUES ($1, $2, to_timestamp($3 / 1000.0), to_timestamp(($3 - 5000) / 1000.0), $4, true,
             'sos', to_timestamp(($3 - 9000) / 1000.0), NULL, '{\"rssi\": -70}')",
    )
    .bind(device)
    .bind(tenant)
    .bind(T)
    .bind(battery)
    .execute(&api.db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_device_status_is_readable_by_who_may_see_the_device_only() {
    let api = Api::start().await;
    let tenant = api.tenant("st").await;
    let other = api.tenant("st-other").await;
    let viewer = api.user(tenant, Role::Viewer).await;
    let admin = api.user(tenant, Role::Admin).await;
    let mine = api.device(tenant).await;
    let not_mine = api.device(tenant).await;
    let silent = api.device(tenant).await;
    let foreign = api.device(other).await;
    api.group_with(tenant, &[mine, silent], &[viewer.id]).await;
    put_status(&api, tenant, mine, 42.0).await;
    put_status(&api, tenant, not_mine, 7.0).await;
    put_status(&api, other, foreign, 1.0).await;

    let (status, body) = api
        .call(
            "get",
            &format!("/v1/devices/{mine}/status"),
            &viewer.token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "device_id": mine,
            "last_seen": "2023-11-14T22:13:20Z",
            "status_time": "2023-11-14T22:13:15Z",
            "battery_pct": 42.0,
            "charging": true,
            "alarm": "sos",
            "alarm_time": "2023-11-14T22:13:11Z",
            "motion": null,
            "attributes": { "rssi": -70 },
        })
    );
    // Outside the viewer's groups, another tenant's, or no device at all: the same 404.
    for (who, device) in [
        (&viewer, not_mine),
        (&admin, foreign),
        (&admin, Uuid::new_v4()),
    ] {
        let (status, body) = api
            .call(
                "get",
                &format!("/v1/devices/{device}/status"),
                &who.token,
                None,
            )
            .await;
        assert_eq!(status, 404, "{device}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (status, _) = api
        .call("get", "/v1/devices/nope/status", &admin.token, None)
        .await;
    assert_eq!(status, 404);
    // A device never heard from: every field null.
    let (status, body) = api
        .call(
            "get",
            &format!("/v1/devices/{silent}/status"),
            &viewer.token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["device_id"], json!(silent));
    assert_eq!(body["last_seen"], Value::Null);
    assert_eq!(body["battery_pct"], Value::Null);
}

#[tokio::test]
async fn latest_positions_carry_the_status_and_history_shows_invalid_fixes() {
    let api = Api::start().await;
    let tenant = api.tenant("lt").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let with_status = api.device(tenant).await;
    let without = api.device(tenant).await;
    api.track(tenant, with_status, T, 3).await;
    api.track(tenant, without, T, 2).await;
    // The device said its last fix was invalid: history keeps it, latest never takes it.
    sqlx::query("UPDATE positions SET valid = false WHERE device_id = $1 AND fix_time = to_timestamp(($2 + 2000) / 1000.0)")
        .bind(with_status)
        .bind(T)
        .execute(&api.db.pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "INSERT INTO last_positions ({COLUMNS}) SELECT DISTINCT ON (device_id) {COLUMNS}
         FROM positions WHERE valid ORDER BY device_id, fix_time DESC"
    ))
    .execute(&api.db.pool)
    .await
    .unwrap();
    put_status(&api, tenant, with_status, 42.0).await;

    let (status, body) = api
        .call("get", "/v1/positions/latest", &analyst.token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let positions = body["positions"].as_array().unwrap();
    assert_eq!(positions.len(), 2);
    for entry in positions {
        if entry["device_id"] == json!(with_status) {
            assert_eq!(
                entry["fix_time"], "2023-11-14T22:13:21Z",
                "the newest valid fix"
            );
            assert_eq!(entry["status"]["battery_pct"], 42.0);
            assert_eq!(entry["status"]["alarm"], "sos");
            assert_eq!(entry["status"]["last_seen"], "2023-11-14T22:13:20Z");
            assert!(entry["status"].get("tenant_id").is_none());
        } else {
            assert_eq!(entry["status"], Value::Null, "{entry}");
        }
    }

    let path = format!(
        "/v1/devices/{with_status}/positions?from=2023-11-14T22:00:00Z&to=2023-11-14T23:00:00Z"
    );
    let (status, body) = api.call("get", &path, &analyst.token, None).await;
    assert_eq!(status, 200, "{body}");
    let valid: Vec<&Value> = body["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.get("valid").unwrap_or(&Value::Null))
        .collect();
    assert_eq!(valid, [&Value::Null, &Value::Null, &json!(false)]);
}
