//! Reading events over HTTP (the rows are inserted directly, as the processor will write them):
//! by device, type and range in keyset pages, as CSV, under the visibility rules (a viewer only
//! its groups' devices' events, another tenant's device 404), the event-type list, and the
//! table's unique key absorbing a replayed event.

use crate::support::*;
use gps_domain::auth::Role;
use gps_domain::events::{event_id, EventType};
use serde_json::{json, Value};
use uuid::Uuid;

const T: i64 = 1_700_000_000_000;

/// Insert one event as the processor would (deterministic id, `ON CONFLICT DO NOTHING`);
/// whether a row was inserted.
async fn put_event(
    api: &Api,
    tenant: Uuid,
    device: Uuid,
    event_type: EventType,
    at_ms: i64,
    fence: Option<Uuid>,
) -> bool {
    sqlx::query(
        "INSERT INTO events (id, tenant_id, device_id, type, fix_time, lat, lon, geofence_id, details)
         VALUES ($1, $2, $3, $4, to_timestamp($5 / 1000.0), 52.5, 13.4, $6, $7)
         ON CONFLICT DO NOTHING",
    )
    .bind(event_id(device, event_type, at_ms, fence))
    .bind(tenant)
    .bind(device)
    .bind(event_type.as_str())
    .bind(at_ms)
    .bind(fence)
    .bind(json!({ "n": at_ms - T }))
    .execute(&api.db.pool)
    .await
    .unwrap()
    .rows_affected()
        == 1
}

fn range() -> String {
    format!("from={}&to={}", T - 1, T + 3_600_000)
}

fn times(body: &Value) -> Vec<i64> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["n"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn events_are_read_by_device_type_and_range_in_pages() {
    let api = Api::start().await;
    let tenant = api.tenant("ev").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let (car, van) = (api.device(tenant).await, api.device(tenant).await);
    let fence = Uuid::new_v4();
    for i in 0..5 {
        let t = if i % 2 == 0 {
            EventType::GeofenceEnter
        } else {
            EventType::GeofenceExit
        };
        assert!(put_event(&api, tenant, car, t, T + i * 1000, Some(fence)).await);
    }
    put_event(&api, tenant, van, EventType::Overspeed, T + 500, None).await;
    // Outside the range.
    put_event(&api, tenant, car, EventType::Alarm, T - 10_000, None).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor
            .as_deref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let (status, page) = api
            .call(
                "get",
                &format!("/v1/events?device={car}&{}&limit=2{after}", range()),
                &analyst.token,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        assert!(page["events"].as_array().unwrap().len() <= 2);
        seen.extend(times(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [0, 1000, 2000, 3000, 4000],
        "oldest first, every page"
    );

    let (_, entered) = api
        .call(
            "get",
            &format!("/v1/events?type=geofence_enter&{}", range()),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(times(&entered), [0, 2000, 4000]);
    let first = &entered["events"][0];
    assert_eq!(first["device_id"], json!(car));
    assert_eq!(first["type"], "geofence_enter");
    assert_eq!(first["geofence_id"], json!(fence));
    assert_eq!(first["lat"], 52.5);
    assert_eq!(
        first["id"],
        json!(event_id(car, EventType::GeofenceEnter, T, Some(fence)))
    );

    let (_, everything) = api
        .call(
            "get",
            &format!("/v1/events?{}", range()),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(times(&everything), [0, 500, 1000, 2000, 3000, 4000]);

    let (status, answer) = api
        .call("get", "/v1/events?type=teleport", &analyst.token, None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["field"], "type");
    let (status, answer) = api
        .call(
            "get",
            "/v1/events?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(status, 400, "range cap");
    assert_eq!(answer["error"]["field"], "from");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'events.read' AND tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&api.db.pool)
    .await
    .unwrap();
    assert!(audited >= 3, "{audited}");
}

#[tokio::test]
async fn a_viewer_reads_only_its_groups_devices_events() {
    let api = Api::start().await;
    let tenant = api.tenant("ev-vis").await;
    let other = api.tenant("ev-vis-other").await;
    let viewer = api.user(tenant, Role::Viewer).await;
    let (mine, not_mine) = (api.device(tenant).await, api.device(tenant).await);
    let foreign = api.device(other).await;
    api.group_with(tenant, &[mine], &[viewer.id]).await;
    put_event(&api, tenant, mine, EventType::Alarm, T, None).await;
    put_event(&api, tenant, not_mine, EventType::Alarm, T + 1, None).await;
    put_event(&api, other, foreign, EventType::Alarm, T + 2, None).await;

    let (status, body) = api
        .call(
            "get",
            &format!("/v1/events?{}", range()),
            &viewer.token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let devices: Vec<&Value> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["device_id"])
        .collect();
    assert_eq!(devices, [&json!(mine)]);
    for device in [not_mine, foreign] {
        let (status, _) = api
            .call(
                "get",
                &format!("/v1/events?device={device}&{}", range()),
                &viewer.token,
                None,
            )
            .await;
        assert_eq!(status, 404, "{device}");
    }
    let admin = api.user(tenant, Role::Admin).await;
    let (_, all) = api
        .call(
            "get",
            &format!("/v1/events?{}", range()),
            &admin.token,
            None,
        )
        .await;
    assert_eq!(times(&all), [0, 1], "the whole tenant, never the other one");
    let (status, _) = api
        .call(
            "get",
            &format!("/v1/events?device={foreign}&{}", range()),
            &admin.token,
            None,
        )
        .await;
    assert_eq!(status, 404, "another tenant's device");
}

#[tokio::test]
async fn events_export_as_csv() {
    let api = Api::start().await;
    let tenant = api.tenant("ev-csv").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    for i in 0..3 {
        put_event(&api, tenant, device, EventType::MotionStart, T + i, None).await;
    }
    let response = api
        .client
        .get(api.url(&format!("/v1/events?format=csv&limit=2&{}", range())))
        .bearer_auth(&analyst.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(response.headers().contains_key("x-next-cursor"));
    let text = response.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap(),
        vec![
            "id",
            "device_id",
            "type",
            "fix_time",
            "lat",
            "lon",
            "geofence_id",
            "details"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][1], device.to_string());
    assert_eq!(&rows[0][2], "motion_start");
    assert_eq!(&rows[0][3], "2023-11-14T22:13:20.000Z");
    assert_eq!(&rows[0][7], r#"{"n":0}"#);
}

#[tokio::test]
async fn event_types_are_listed_and_a_replayed_event_is_stored_once() {
    let api = Api::start().await;
    let tenant = api.tenant("ev-types").await;
    let viewer = api.user(tenant, Role::Viewer).await;
    let (status, body) = api
        .call("get", "/v1/event-types", &viewer.token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "geofence_enter",
            "geofence_exit",
            "overspeed",
            "alarm",
            "device_online",
            "device_offline",
            "motion_start",
            "motion_stop"
        ]
    );
    // The same event computed again (a replay) is absorbed by the key, fence or no fence.
    let device = api.device(tenant).await;
    let fence = Some(Uuid::new_v4());
    assert!(put_event(&api, tenant, device, EventType::GeofenceExit, T, fence).await);
    assert!(!put_event(&api, tenant, device, EventType::GeofenceExit, T, fence).await);
    assert!(put_event(&api, tenant, device, EventType::Alarm, T, None).await);
    assert!(!put_event(&api, tenant, device, EventType::Alarm, T, None).await);
    // Another id for the same (device, type, time, no fence) is refused by the unique key.
    let duplicate = sqlx::query(
        "INSERT INTO events (id, tenant_id, device_id, type, fix_time)
         VALUES ($1, $2, $3, 'alarm', to_timestamp($4 / 1000.0)) ON CONFLICT DO NOTHING",
    )
    .bind(Uuid::new_v4())
    .bind(tenant)
    .bind(device)
    .bind(T)
    .execute(&api.db.pool)
    .await
    .unwrap();
    assert_eq!(duplicate.rows_affected(), 0);
}

#[tokio::test]
async fn a_device_summary_counts_its_events_of_the_range_per_type() {
    let api = Api::start().await;
    let tenant = api.tenant("ev-summary").await;
    let other_tenant = api.tenant("ev-summary-other").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let (device, other) = (api.device(tenant).await, api.device(tenant).await);
    api.track(tenant, device, T, 11).await;
    let fence = Some(Uuid::new_v4());
    put_event(
        &api,
        tenant,
        device,
        EventType::GeofenceEnter,
        T + 500,
        fence,
    )
    .await;
    put_event(&api, tenant, device, EventType::Overspeed, T + 1_000, None).await;
    put_event(&api, tenant, device, EventType::Overspeed, T + 2_000, None).await;
    // Not counted: before the range, another device, a row of another tenant.
    put_event(&api, tenant, device, EventType::Alarm, T - 10_000, None).await;
    put_event(&api, tenant, other, EventType::Overspeed, T + 1_000, None).await;
    put_event(
        &api,
        other_tenant,
        device,
        EventType::Alarm,
        T + 3_000,
        None,
    )
    .await;

    let path = format!("/v1/devices/{device}/summary?{}", range());
    let (status, body) = api.call("get", &path, &analyst.token, None).await;
    assert_eq!(status, 200, "{body}");
    let summary = &body["summary"];
    assert_eq!(summary["fix_count"], 11, "{summary}");
    let counts = summary["event_counts"].as_object().expect("event_counts");
    assert_eq!(counts.len(), EventType::ALL.len(), "every type, zeros too");
    assert_eq!(counts["overspeed"], 2);
    assert_eq!(counts["geofence_enter"], 1);
    assert_eq!(counts["alarm"], 0);
    assert_eq!(counts["motion_stop"], 0);

    // A caller without `events:read` (a key scoped to positions) gets the track figures only.
    let admin = api.user(tenant, Role::Admin).await;
    let (status, created) = api
        .call(
            "post",
            "/v1/api-keys",
            &admin.token,
            Some(json!({
                "name": "tracks",
                "scopes": ["positions:read"],
                "expires_at": crate::auth::in_a_month(),
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap();
    let (status, body) = api.call("get", &path, key, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["summary"]["fix_count"], 11);
    assert!(body["summary"].get("event_counts").is_none(), "{body}");
}

#[tokio::test]
async fn a_device_speed_limit_is_created_changed_cleared_and_range_checked() {
    let api = Api::start().await;
    let tenant = api.tenant("ev-limit").await;
    let admin = api.user(tenant, Role::Admin).await;
    let create = |body: Value| api.call("post", "/v1/devices", &admin.token, Some(body));
    for bad in [json!(0), json!(-3.5), json!(150.01)] {
        let (status, body) = create(json!({ "uid": "car-bad", "speed_limit_mps": bad })).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (400, Some("speed_limit_mps")),
            "{bad}: {body}"
        );
    }
    let (status, body) = create(json!({ "uid": "car-1", "speed_limit_mps": 27.8 })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["device"]["speed_limit_mps"], 27.8);
    let id = body["device"]["id"].as_str().unwrap().to_owned();
    let (_, plain) = create(json!({ "uid": "car-2" })).await;
    assert_eq!(plain["device"]["speed_limit_mps"], Value::Null, "no limit");

    let path = format!("/v1/devices/{id}");
    let patch = |body: Value| api.call("patch", &path, &admin.token, Some(body));
    let stored = || async {
        sqlx::query_scalar::<_, Option<f64>>("SELECT speed_limit_mps FROM devices WHERE id = $1")
            .bind(id.parse::<Uuid>().unwrap())
            .fetch_one(&api.db.pool)
            .await
            .unwrap()
    };
    assert_eq!(stored().await, Some(27.8), "what the processor reads");
    let (status, body) = patch(json!({ "speed_limit_mps": 150 })).await;
    assert_eq!((status, &body["speed_limit_mps"]), (200, &json!(150.0)));
    let (status, body) = patch(json!({ "speed_limit_mps": 151 })).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("speed_limit_mps"))
    );
    let (status, body) = patch(json!({ "name": "renamed" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["speed_limit_mps"], 150.0, "absent: unchanged");
    let (_, body) = api.call("get", &path, &admin.token, None).await;
    assert_eq!(body["speed_limit_mps"], 150.0);
    let (_, list) = api.call("get", "/v1/devices", &admin.token, None).await;
    assert!(list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["id"] == id.as_str() && d["speed_limit_mps"] == 150.0));
    let (status, body) = patch(json!({ "speed_limit_mps": null })).await;
    assert_eq!((status, &body["speed_limit_mps"]), (200, &Value::Null));
    assert_eq!(stored().await, None);

    // Another tenant's admin cannot see or change it.
    let stranger_tenant = api.tenant("ev-limit-other").await;
    let stranger = api.user(stranger_tenant, Role::Admin).await;
    let (status, _) = api
        .call(
            "patch",
            &path,
            &stranger.token,
            Some(json!({ "speed_limit_mps": 10 })),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(stored().await, None);
}
