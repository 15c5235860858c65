//! The permission matrix: every role against every route, allowed and denied, the viewer's
//! group limits, and another tenant's objects answering 404 on every route that takes an id.

use crate::support::{Api, User};
use gps_domain::auth::{Permission, Role};
use serde_json::{json, Value};
use uuid::Uuid;

/// Fresh objects of one tenant, recreated per call so destructive routes can run for every role.
struct Objects {
    device: Uuid,
    user: Uuid,
    group: Uuid,
    key: Uuid,
}

async fn objects(api: &Api, tenant: Uuid, viewer: Option<Uuid>) -> Objects {
    let device = api.device(tenant).await;
    let user = api.bare_user(tenant, Role::Viewer).await;
    let members: Vec<Uuid> = viewer.into_iter().collect();
    let group = api.group_with(tenant, &[device], &members).await;
    let key: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (tenant_id, prefix, key_hash, scopes) VALUES ($1, $2, 'x', '{devices:read}') RETURNING id",
    )
    .bind(tenant)
    .bind(Uuid::new_v4().simple().to_string())
    .fetch_one(&api.db.pool)
    .await
    .unwrap();
    Objects {
        device,
        user,
        group,
        key,
    }
}

/// (method, path with placeholders, body, permissions needed, takes an id)
fn routes() -> Vec<(
    &'static str,
    &'static str,
    Option<Value>,
    Vec<Permission>,
    bool,
)> {
    use Permission::*;
    vec![
        ("get", "/v1/devices", None, vec![DevicesRead], false),
        (
            "post",
            "/v1/devices",
            Some(json!({ "uid": "NEW" })),
            vec![DevicesWrite],
            false,
        ),
        ("get", "/v1/devices/{device}", None, vec![DevicesRead], true),
        (
            "patch",
            "/v1/devices/{device}",
            Some(json!({ "name": "renamed" })),
            vec![DevicesWrite],
            true,
        ),
        (
            "post",
            "/v1/devices/{device}/rotate-token",
            None,
            vec![DevicesWrite],
            true,
        ),
        (
            "post",
            "/v1/devices/{device}/rotate-udp-key",
            None,
            vec![DevicesWrite],
            true,
        ),
        (
            "get",
            "/v1/devices/{device}/positions",
            None,
            vec![PositionsRead],
            true,
        ),
        (
            "get",
            "/v1/devices/{device}/status",
            None,
            vec![DevicesRead],
            true,
        ),
        (
            "get",
            "/v1/devices/{device}/positions?format=csv",
            None,
            vec![PositionsRead, PositionsExport],
            true,
        ),
        (
            "get",
            "/v1/devices/{device}/summary",
            None,
            vec![PositionsRead],
            true,
        ),
        (
            "delete",
            "/v1/devices/{device}",
            None,
            vec![DevicesWrite],
            true,
        ),
        (
            "get",
            "/v1/positions?bbox=-180,-90,180,90",
            None,
            vec![PositionsRead],
            false,
        ),
        (
            "get",
            "/v1/positions/latest",
            None,
            vec![PositionsRead],
            false,
        ),
        ("get", "/v1/users", None, vec![UsersRead], false),
        (
            "post",
            "/v1/users",
            Some(json!({ "email": "NEW", "password": "long enough password", "role": "viewer" })),
            vec![UsersWrite, RolesWrite],
            false,
        ),
        ("get", "/v1/users/{user}", None, vec![UsersRead], true),
        (
            "patch",
            "/v1/users/{user}",
            Some(json!({ "display_name": "x" })),
            vec![UsersWrite],
            true,
        ),
        (
            "put",
            "/v1/users/{user}/role",
            Some(json!({ "role": "analyst" })),
            vec![RolesWrite],
            true,
        ),
        ("delete", "/v1/users/{user}", None, vec![UsersWrite], true),
        ("get", "/v1/groups", None, vec![GroupsRead], false),
        (
            "post",
            "/v1/groups",
            Some(json!({ "name": "NEW" })),
            vec![GroupsWrite],
            false,
        ),
        ("get", "/v1/groups/{group}", None, vec![GroupsRead], true),
        (
            "put",
            "/v1/groups/{group}/devices/{device}",
            None,
            vec![GroupsWrite],
            true,
        ),
        (
            "delete",
            "/v1/groups/{group}/devices/{device}",
            None,
            vec![GroupsWrite],
            true,
        ),
        (
            "put",
            "/v1/groups/{group}/members/{user}",
            None,
            vec![GroupsWrite],
            true,
        ),
        (
            "delete",
            "/v1/groups/{group}/members/{user}",
            None,
            vec![GroupsWrite],
            true,
        ),
        (
            "delete",
            "/v1/groups/{group}",
            None,
            vec![GroupsWrite],
            true,
        ),
        ("get", "/v1/api-keys", None, vec![KeysRead], false),
        (
            "post",
            "/v1/api-keys",
            Some(json!({ "scopes": ["devices:read"], "expires_at": crate::auth::in_a_month() })),
            vec![KeysWrite],
            false,
        ),
        ("delete", "/v1/api-keys/{key}", None, vec![KeysWrite], true),
        ("get", "/v1/audit", None, vec![AuditRead], false),
        ("get", "/v1/tenant", None, vec![DevicesRead], false),
        (
            "patch",
            "/v1/tenant",
            Some(json!({ "osmand_speed_unit": "kn" })),
            vec![RolesWrite, DevicesWrite],
            false,
        ),
        ("post", "/v1/live/ticket", None, vec![LiveRead], false),
    ]
}

fn fill(path: &str, o: &Objects) -> String {
    path.replace("{device}", &o.device.to_string())
        .replace("{user}", &o.user.to_string())
        .replace("{group}", &o.group.to_string())
        .replace("{key}", &o.key.to_string())
}

fn fresh_body(body: &Option<Value>) -> Option<Value> {
    body.as_ref().map(|b| {
        let text = b
            .to_string()
            .replace("NEW", &format!("new-{}", Uuid::new_v4().simple()));
        let text = text.replace("\"email\":\"new-", "\"email\":\"x@new-");
        serde_json::from_str(&text).unwrap()
    })
}

#[tokio::test]
async fn every_role_against_every_route() {
    let api = Api::start().await;
    let tenant = api.tenant("a").await;
    let other = api.tenant("b").await;
    let mut users: Vec<(Role, User)> = Vec::new();
    for role in [Role::Admin, Role::Manager, Role::Analyst, Role::Viewer] {
        users.push((role, api.user(tenant, role).await));
    }
    let mut failures = Vec::new();
    for (method, path, body, needs, takes_id) in routes() {
        for (role, user) in &users {
            let viewer = (*role == Role::Viewer).then_some(user.id);
            let own = objects(&api, tenant, viewer).await;
            let allowed = needs.iter().all(|p| role.allows(*p));
            let (status, answer) = api
                .call(method, &fill(path, &own), &user.token, fresh_body(&body))
                .await;
            let ok = if allowed {
                (200..300).contains(&status)
            } else {
                status == 403
            };
            if !ok {
                failures.push(format!("{role} {method} {path}: {status} {answer}"));
            }
            if takes_id && allowed {
                // The same call on another tenant's objects: 404, never 403 or success.
                let foreign = objects(&api, other, None).await;
                let (status, answer) = api
                    .call(
                        method,
                        &fill(path, &foreign),
                        &user.token,
                        fresh_body(&body),
                    )
                    .await;
                if status != 404 {
                    failures.push(format!(
                        "{role} {method} {path} (other tenant): {status} {answer}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "permission matrix mismatches:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn viewer_sees_only_the_devices_of_its_groups() {
    let api = Api::start().await;
    let tenant = api.tenant("v").await;
    let viewer = api.user(tenant, Role::Viewer).await;
    let mine = api.device(tenant).await;
    let not_mine = api.device(tenant).await;
    api.group_with(tenant, &[mine], &[viewer.id]).await;
    api.track(tenant, mine, 1_700_000_000_000, 3).await;
    api.track(tenant, not_mine, 1_700_000_000_000, 3).await;
    sqlx::query(&format!("INSERT INTO last_positions ({COLUMNS}) SELECT DISTINCT ON (device_id) {COLUMNS} FROM positions ORDER BY device_id, fix_time DESC", COLUMNS = gps_store::positions::COLUMNS))
        .execute(&api.db.pool)
        .await
        .unwrap();

    let (status, list) = api.call("get", "/v1/devices", &viewer.token, None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![mine.to_string()]);
    for path in [
        format!("/v1/devices/{not_mine}"),
        format!("/v1/devices/{not_mine}/positions?from=0"),
        format!("/v1/devices/{not_mine}/summary?from=0"),
    ] {
        let (status, _) = api.call("get", &path, &viewer.token, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = api
        .call(
            "get",
            &format!("/v1/devices/{mine}/positions?from=1700000000000&to=1700086400000"),
            &viewer.token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, latest) = api
        .call("get", "/v1/positions/latest", &viewer.token, None)
        .await;
    let latest: Vec<&str> = latest["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(latest, vec![mine.to_string()]);
    let (_, area) = api
        .call(
            "get",
            "/v1/positions?bbox=-180,-90,180,90&from=1700000000000&to=1700086400000",
            &viewer.token,
            None,
        )
        .await;
    assert!(area["positions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["device_id"] == mine.to_string()));
    assert_eq!(area["positions"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn mass_assignment_is_refused() {
    let api = Api::start().await;
    let tenant = api.tenant("m").await;
    let other = api.tenant("n").await;
    let admin = api.user(tenant, Role::Admin).await;
    let manager = api.user(tenant, Role::Manager).await;
    // Unknown fields (a tenant, a role) are refused by name, not ignored.
    let (status, body) = api
        .call(
            "patch",
            &format!("/v1/users/{}", admin.id),
            &admin.token,
            Some(json!({ "role": "admin", "tenant_id": other })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["field"].is_string(), "{body}");
    let (status, _) = api
        .call(
            "post",
            "/v1/devices",
            &admin.token,
            Some(json!({ "uid": "x1", "tenant_id": other })),
        )
        .await;
    assert_eq!(status, 400);
    // Nobody changes their own role; a manager cannot assign roles at all.
    let (status, _) = api
        .call(
            "put",
            &format!("/v1/users/{}/role", admin.id),
            &admin.token,
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = api
        .call(
            "put",
            &format!("/v1/users/{}/role", manager.id),
            &manager.token,
            Some(json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(status, 403);
    // API key scopes cannot exceed the creator's permissions.
    let (status, body) = api
        .call(
            "post",
            "/v1/api-keys",
            &admin.token,
            Some(json!({ "scopes": ["nonsense:perm"] })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("scopes"))
    );
}
