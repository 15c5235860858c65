//! Geofences over HTTP: the whole life of a fence (create, read, replace, list, delete, each
//! write audited), tenant isolation (another tenant's fence is 404), RBAC (a viewer reads but
//! does not write), validation naming the field (a self-intersecting polygon), a fence over the
//! antimeridian, and the fence body limit (a fence of thousands of positions fits, a huge body
//! is a 413).

use crate::support::*;
use gps_domain::auth::Role;
use gps_domain::events::{Fence, FenceIndex};
use serde_json::{json, Value};

fn square(lon: f64, lat: f64, side: f64) -> Value {
    json!({ "type": "Polygon", "coordinates": [[
        [lon, lat], [lon + side, lat], [lon + side, lat + side], [lon, lat + side], [lon, lat]
    ]]})
}

/// A ring of `n` positions (+ the closing one) around (lon, lat).
fn circle_ring(lon: f64, lat: f64, n: usize) -> Value {
    let mut ring: Vec<[f64; 2]> = (0..n)
        .map(|i| {
            let a = i as f64 / n as f64 * std::f64::consts::TAU;
            [lon + 0.05 * a.cos(), lat + 0.05 * a.sin()]
        })
        .collect();
    ring.push(ring[0]);
    json!({ "type": "Polygon", "coordinates": [ring] })
}

/// A fence named `yard` created by `token`: its id.
async fn create_yard(api: &Api, token: &str) -> String {
    let (status, created) = api
        .call(
            "post",
            "/v1/geofences",
            token,
            Some(json!({ "name": "yard", "geometry": square(13.0, 52.0, 0.01) })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

async fn audited(api: &Api, fence: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE object_kind = 'geofence' AND object_id = $1 ORDER BY id",
    )
    .bind(fence)
    .fetch_all(&api.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_fence_is_created_read_replaced_listed_and_deleted() {
    let api = Api::start().await;
    let tenant = api.tenant("gf").await;
    let manager = api.user(tenant, Role::Manager).await;
    let group = api.group_with(tenant, &[], &[]).await;

    let (status, created) = api
        .call(
            "post",
            "/v1/geofences",
            &manager.token,
            Some(json!({
                "name": "depot",
                "geometry": square(13.0, 52.0, 0.01),
                "groups": [group],
                "speed_limit_mps": 8.3,
                "schedule": { "windows": [{ "days": ["mon", "fri"], "start": "06:00", "end": "22:00" }] }
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["name"], "depot");
    assert_eq!(created["bbox"], json!([13.0, 52.0, 13.01, 52.01]));
    assert_eq!(created["groups"], json!([group]));
    assert_eq!(created["speed_limit_mps"], 8.3);
    assert_eq!(
        created["schedule"]["utc_offset_minutes"], 0,
        "stored canonical"
    );

    let (status, read) = api
        .call("get", &format!("/v1/geofences/{id}"), &manager.token, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(read, created);

    let circle = json!({ "type": "Point", "coordinates": [13.4, 52.5] });
    let (status, replaced) = api
        .call(
            "put",
            &format!("/v1/geofences/{id}"),
            &manager.token,
            Some(json!({ "name": "office", "geometry": circle, "radius_m": 250.0 })),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["name"], "office");
    assert_eq!(replaced["radius_m"], 250.0);
    assert_eq!(replaced["groups"], json!([]), "groups replaced too");
    assert_eq!(replaced["schedule"], Value::Null);
    let bbox = replaced["bbox"].as_array().unwrap();
    assert!(bbox[0].as_f64().unwrap() < 13.4 && bbox[2].as_f64().unwrap() > 13.4);

    for _ in 0..2 {
        let (status, _) = api
            .call(
                "post",
                "/v1/geofences",
                &manager.token,
                Some(json!({ "name": "more", "geometry": square(1.0, 1.0, 1.0) })),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (status, page) = api
        .call("get", "/v1/geofences?limit=2", &manager.token, None)
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["geofences"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (_, rest) = api
        .call(
            "get",
            &format!("/v1/geofences?limit=2&cursor={cursor}"),
            &manager.token,
            None,
        )
        .await;
    assert_eq!(rest["geofences"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);

    let (status, _) = api
        .call(
            "delete",
            &format!("/v1/geofences/{id}"),
            &manager.token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = api
        .call("get", &format!("/v1/geofences/{id}"), &manager.token, None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        audited(&api, &id).await,
        ["geofences.create", "geofences.update", "geofences.delete"]
    );
}

#[tokio::test]
async fn another_tenants_fence_is_not_found() {
    let api = Api::start().await;
    let tenant = api.tenant("gf-a").await;
    let other = api.tenant("gf-b").await;
    let admin = api.user(tenant, Role::Admin).await;
    let intruder = api.user(other, Role::Admin).await;
    let id = &create_yard(&api, &admin.token).await;
    let body = json!({ "name": "mine now", "geometry": square(0.0, 0.0, 1.0) });
    for (method, body) in [("get", None), ("put", Some(body)), ("delete", None)] {
        let (status, answer) = api
            .call(
                method,
                &format!("/v1/geofences/{id}"),
                &intruder.token,
                body,
            )
            .await;
        assert_eq!(status, 404, "{method}: {answer}");
    }
    let (_, list) = api
        .call("get", "/v1/geofences", &intruder.token, None)
        .await;
    assert_eq!(list["geofences"], json!([]));
    // Naming another tenant's group is the same 400 as a group that does not exist.
    let foreign_group = api.group_with(other, &[], &[]).await;
    let (status, answer) = api
        .call(
            "post",
            "/v1/geofences",
            &admin.token,
            Some(json!({ "name": "x", "geometry": square(1.0, 1.0, 1.0), "groups": [foreign_group] })),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "groups");
    let (_, still) = api
        .call("get", &format!("/v1/geofences/{id}"), &admin.token, None)
        .await;
    assert_eq!(still["name"], "yard", "untouched");
}

#[tokio::test]
async fn a_viewer_reads_fences_but_does_not_write_them() {
    let api = Api::start().await;
    let tenant = api.tenant("gf-rbac").await;
    let admin = api.user(tenant, Role::Admin).await;
    let id = &create_yard(&api, &admin.token).await;
    for role in [Role::Viewer, Role::Analyst] {
        let user = api.user(tenant, role).await;
        let (status, _) = api
            .call("get", &format!("/v1/geofences/{id}"), &user.token, None)
            .await;
        assert_eq!(status, 200, "{role} reads");
        let (status, list) = api.call("get", "/v1/geofences", &user.token, None).await;
        assert_eq!(status, 200);
        assert_eq!(list["geofences"].as_array().unwrap().len(), 1);
        let body = json!({ "name": "no", "geometry": square(0.0, 0.0, 1.0) });
        let (status, answer) = api
            .call("post", "/v1/geofences", &user.token, Some(body.clone()))
            .await;
        assert_eq!(status, 403, "{role} creates: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden");
        let (status, _) = api
            .call(
                "put",
                &format!("/v1/geofences/{id}"),
                &user.token,
                Some(body),
            )
            .await;
        assert_eq!(status, 403, "{role} replaces");
        let (status, _) = api
            .call("delete", &format!("/v1/geofences/{id}"), &user.token, None)
            .await;
        assert_eq!(status, 403, "{role} deletes");
    }
}

#[tokio::test]
async fn invalid_geometry_is_a_400_naming_the_field() {
    let api = Api::start().await;
    let tenant = api.tenant("gf-400").await;
    let admin = api.user(tenant, Role::Admin).await;
    let bowtie =
        json!({ "type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]] });
    let (status, answer) = api
        .call(
            "post",
            "/v1/geofences",
            &admin.token,
            Some(json!({ "name": "bowtie", "geometry": bowtie })),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "geometry.coordinates[0]");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("self-intersection"),
        "{answer}"
    );
    let unclosed = json!({ "type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]] });
    let point = json!({ "type": "Point", "coordinates": [13.0, 52.0] });
    let out_of_range =
        json!({ "type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 91], [0, 0]]] });
    for (body, field) in [
        (
            json!({ "name": "x", "geometry": unclosed }),
            "geometry.coordinates[0]",
        ),
        (json!({ "name": "x", "geometry": point }), "radius_m"),
        (
            json!({ "name": "x", "geometry": out_of_range }),
            "geometry.coordinates[0][2]",
        ),
        (
            json!({ "name": "", "geometry": square(0.0, 0.0, 1.0) }),
            "name",
        ),
        (
            json!({ "name": "x", "geometry": square(0.0, 0.0, 1.0), "colour": "red" }),
            "colour",
        ),
    ] {
        let (status, answer) = api
            .call("post", "/v1/geofences", &admin.token, Some(body))
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    let (_, list) = api.call("get", "/v1/geofences", &admin.token, None).await;
    assert_eq!(list["geofences"], json!([]), "nothing stored");
}

#[tokio::test]
async fn a_fence_over_the_antimeridian_is_accepted() {
    let api = Api::start().await;
    let tenant = api.tenant("gf-180").await;
    let admin = api.user(tenant, Role::Admin).await;
    let ring = json!({ "type": "Polygon", "coordinates": [[
        [170.0, -10.0], [-170.0, -10.0], [-170.0, 10.0], [170.0, 10.0], [170.0, -10.0]
    ]]});
    let split = json!({ "type": "MultiPolygon", "coordinates": [
        [[[170.0, -10.0], [180.0, -10.0], [180.0, 10.0], [170.0, 10.0], [170.0, -10.0]]],
        [[[-180.0, -10.0], [-170.0, -10.0], [-170.0, 10.0], [-180.0, 10.0], [-180.0, -10.0]]]
    ]});
    for geometry in [ring, split] {
        let (status, created) = api
            .call(
                "post",
                "/v1/geofences",
                &admin.token,
                Some(json!({ "name": "date line", "geometry": geometry })),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["bbox"], json!([170.0, -10.0, -170.0, 10.0]));
    }
    // What is stored is what the evaluator runs: the rows load back through the one validation
    // into an index that finds both fences on either side of the line, and neither elsewhere.
    let rows: Vec<(uuid::Uuid, Value)> =
        sqlx::query_as("SELECT id, geometry FROM geofences WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&api.db.pool)
            .await
            .unwrap();
    let fences = rows
        .into_iter()
        .map(|(id, geometry)| Fence::new(id, &geometry, None, Vec::new(), None, None).unwrap())
        .collect();
    let index = FenceIndex::new(fences);
    assert_eq!(index.containing(0.0, 179.5).len(), 2);
    assert_eq!(index.containing(0.0, -179.5).len(), 2);
    assert!(index.containing(0.0, 0.0).is_empty());
}

#[tokio::test]
async fn a_fence_of_thousands_of_positions_fits_and_a_huge_body_is_a_413() {
    let api = Api::start().await;
    let tenant = api.tenant("gf-big").await;
    let admin = api.user(tenant, Role::Admin).await;
    // ~5,000 positions: far above the 64 KiB of other bodies, within the fence limit.
    let big = json!({ "name": "coast", "geometry": circle_ring(13.0, 52.0, 5_000) });
    assert!(big.to_string().len() > 64 * 1024);
    let (status, created) = api
        .call("post", "/v1/geofences", &admin.token, Some(big))
        .await;
    assert_eq!(status, 201, "{created}");
    let too_many = json!({ "name": "x", "geometry": circle_ring(13.0, 52.0, 10_000) });
    let (status, answer) = api
        .call("post", "/v1/geofences", &admin.token, Some(too_many))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "geometry.coordinates");
    let padding = "x".repeat(2 * 1024 * 1024);
    let (status, answer) = api
        .call(
            "post",
            "/v1/geofences",
            &admin.token,
            Some(json!({ "name": padding, "geometry": square(0.0, 0.0, 1.0) })),
        )
        .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large");
}
