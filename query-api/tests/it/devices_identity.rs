//! Device identity and tenant-scoped uniqueness (issue 14): uids and emails are unique per
//! tenant only (another tenant's never conflicts, so creating one discloses nothing), login
//! asks for the tenant only when the credentials match several, device identity settings are
//! validated and the payload secret is write-only, and uid-only mode is refused (409
//! `uid_taken`) on a uid that is uid-only in another tenant.

use crate::support::{Api, User};
use gps_domain::auth::Role;
use serde_json::{json, Value};
use uuid::Uuid;

fn suffix() -> String {
    Uuid::new_v4().simple().to_string()
}

async fn tenant_name(api: &Api, tenant: Uuid) -> String {
    sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_one(&api.db.pool)
        .await
        .unwrap()
}

/// Two tenants with an admin each.
async fn two_tenants(api: &Api) -> ((Uuid, User), (Uuid, User)) {
    let a = api.tenant("ident-a").await;
    let b = api.tenant("ident-b").await;
    let admin_a = api.user(a, Role::Admin).await;
    let admin_b = api.user(b, Role::Admin).await;
    ((a, admin_a), (b, admin_b))
}

/// A request with a JSON body by the holder of `token`.
async fn send(
    api: &Api,
    method: &str,
    path: impl AsRef<str>,
    token: &str,
    body: Value,
) -> (u16, Value) {
    api.call(method, path.as_ref(), token, Some(body)).await
}

/// The status and error code of an answer.
fn refusal((status, body): &(u16, Value)) -> (u16, &str) {
    (*status, body["error"]["code"].as_str().unwrap_or_default())
}

async fn login(api: &Api, body: Value) -> (u16, Value) {
    let r = api
        .client
        .post(api.url("/v1/auth/login"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn uids_and_emails_are_unique_per_tenant_only() {
    let api = Api::start().await;
    let ((_, admin_a), (_, admin_b)) = two_tenants(&api).await;
    let uid = format!("X-{}", suffix());
    let device = json!({ "uid": uid });
    let (status, body) = send(&api, "post", "/v1/devices", &admin_a.token, device.clone()).await;
    assert_eq!(status, 201, "{body}");
    // Another tenant's uid is no conflict (it was a 409 that disclosed it).
    let (status, body) = send(&api, "post", "/v1/devices", &admin_b.token, device.clone()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = send(&api, "post", "/v1/devices", &admin_a.token, device).await;
    assert_eq!(status, 409, "{body}");

    let email = format!("a-{}@x.test", suffix());
    let user = |email: &str| json!({ "email": email, "password": "long enough password", "role": "viewer" });
    let (status, body) = send(&api, "post", "/v1/users", &admin_a.token, user(&email)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = send(&api, "post", "/v1/users", &admin_b.token, user(&email)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = send(
        &api,
        "post",
        "/v1/users",
        &admin_a.token,
        user(&email.to_uppercase()),
    )
    .await;
    assert_eq!(status, 409, "case-insensitive within the tenant: {body}");
}

#[tokio::test]
async fn an_email_of_several_tenants_logs_in_with_its_tenant() {
    let api = Api::start().await;
    let ((a, _), (b, _)) = two_tenants(&api).await;
    let email = format!("shared-{}@x.test", suffix());
    let password = "the same password in both";
    for tenant in [a, b] {
        query_api::routes::users::insert_user(
            &api.db.pool,
            tenant,
            &email,
            password,
            Role::Viewer,
            "",
        )
        .await
        .unwrap();
    }
    // The password fits both accounts: the tenant is needed.
    let (status, body) = login(&api, json!({ "email": email, "password": password })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "tenant_required");
    assert_eq!(body["error"]["field"], "tenant");
    // By name or by id.
    let (status, body) = login(
        &api,
        json!({ "email": email, "password": password, "tenant": tenant_name(&api, a).await }),
    )
    .await;
    assert_eq!(
        (status, body["tenant_id"].as_str()),
        (200, Some(a.to_string().as_str())),
        "{body}"
    );
    let (status, body) = login(
        &api,
        json!({ "email": email.to_uppercase(), "password": password, "tenant": b.to_string() }),
    )
    .await;
    assert_eq!(
        (status, body["tenant_id"].as_str()),
        (200, Some(b.to_string().as_str())),
        "{body}"
    );
    // A wrong password, or a tenant without that user, is the usual 401.
    let (status, body) = login(
        &api,
        json!({ "email": email, "password": "wrong password!" }),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _) = login(
        &api,
        json!({ "email": email, "password": password, "tenant": "no-such-tenant" }),
    )
    .await;
    assert_eq!(status, 401);

    // Only one account still fits (the other disabled): no tenant needed.
    sqlx::query("UPDATE users SET disabled = true WHERE tenant_id = $1 AND lower(email) = $2")
        .bind(b)
        .bind(&email)
        .execute(&api.db.pool)
        .await
        .unwrap();
    let (status, body) = login(&api, json!({ "email": email, "password": password })).await;
    assert_eq!(
        (status, body["tenant_id"].as_str()),
        (200, Some(a.to_string().as_str())),
        "{body}"
    );

    // Different passwords: each one names its account.
    let other = format!("split-{}@x.test", suffix());
    for (tenant, password) in [(a, "password of tenant a"), (b, "password of tenant b")] {
        query_api::routes::users::insert_user(
            &api.db.pool,
            tenant,
            &other,
            password,
            Role::Viewer,
            "",
        )
        .await
        .unwrap();
    }
    let (status, body) = login(
        &api,
        json!({ "email": other, "password": "password of tenant b" }),
    )
    .await;
    assert_eq!(
        (status, body["tenant_id"].as_str()),
        (200, Some(b.to_string().as_str())),
        "{body}"
    );
}

#[tokio::test]
async fn identity_settings_are_validated_and_the_payload_secret_is_write_only() {
    let api = Api::start().await;
    let ((_, admin), _) = two_tenants(&api).await;
    let secret = format!("owntracks-secret-{}", suffix());
    let (status, body) = send(
        &api,
        "post",
        "/v1/devices",
        &admin.token,
        json!({ "uid": format!("s-{}", suffix()), "uid_only": true,
                         "speed_unit": "kmh", "payload_secret": secret }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let device = &body["device"];
    assert_eq!(
        (
            &device["uid_only"],
            &device["speed_unit"],
            &device["payload_secret_set"]
        ),
        (&json!(true), &json!("kmh"), &json!(true))
    );
    assert!(!body.to_string().contains(&secret), "{body}");
    let id = device["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/devices/{id}");
    let (_, read) = api.call("get", &path, &admin.token, None).await;
    assert!(!read.to_string().contains(&secret) && read["payload_secret_set"] == json!(true));
    let (_, list) = api.call("get", "/v1/devices", &admin.token, None).await;
    assert!(!list.to_string().contains(&secret));

    // null: back to the tenant default, or no secret; absent: unchanged.
    let (status, body) = send(
        &api,
        "patch",
        &path,
        &admin.token,
        json!({ "speed_unit": null, "payload_secret": null }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            &body["uid_only"],
            &body["speed_unit"],
            &body["payload_secret_set"]
        ),
        (&json!(true), &Value::Null, &json!(false))
    );
    for (bad, field) in [
        (json!({ "speed_unit": "furlongs" }), "speed_unit"),
        (json!({ "payload_secret": "" }), "payload_secret"),
        (
            json!({ "payload_secret": "x".repeat(257) }),
            "payload_secret",
        ),
    ] {
        let (status, body) = send(&api, "patch", &path, &admin.token, bad).await;
        assert_eq!(
            (status, &body["error"]["field"]),
            (400, &json!(field)),
            "{body}"
        );
    }
    let (status, _) = send(
        &api,
        "patch",
        &path,
        &admin.token,
        json!({ "uid_only": "yes" }),
    )
    .await;
    assert_eq!(status, 400);

    // Tenant defaults: read by anyone who reads devices, validated.
    let (status, body) = api.call("get", "/v1/tenant", &admin.token, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({ "uid_only_devices": false, "osmand_speed_unit": "kn" })
    );
    let (status, body) = send(
        &api,
        "patch",
        "/v1/tenant",
        &admin.token,
        json!({ "osmand_speed_unit": "mph" }),
    )
    .await;
    assert_eq!(
        (status, &body["osmand_speed_unit"]),
        (200, &json!("mph")),
        "{body}"
    );
    let (status, body) = send(
        &api,
        "patch",
        "/v1/tenant",
        &admin.token,
        json!({ "osmand_speed_unit": "warp" }),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("osmand_speed_unit"))
    );

    // Nothing of the secret reached the audit log.
    let audit: Vec<Value> = sqlx::query_scalar("SELECT detail FROM audit_log WHERE object_id = $1")
        .bind(&id)
        .fetch_all(&api.db.pool)
        .await
        .unwrap();
    assert!(!audit.is_empty());
    assert!(
        audit.iter().all(|d| !d.to_string().contains(&secret)),
        "{audit:?}"
    );
}

#[tokio::test]
async fn uid_only_on_a_uid_that_is_uid_only_elsewhere_is_uid_taken() {
    let api = Api::start().await;
    let ((_, admin_a), (_, admin_b)) = two_tenants(&api).await;
    let create_a = |body: Value| send(&api, "post", "/v1/devices", &admin_a.token, body);
    let create_b = |body: Value| send(&api, "post", "/v1/devices", &admin_b.token, body);
    let patch_b = |path: String, body: Value| send(&api, "patch", path, &admin_b.token, body);
    let uid_taken = (409, "uid_taken");

    let legacy = format!("L-{}", suffix());
    let created = create_a(json!({ "uid": legacy, "uid_only": true })).await;
    assert_eq!(created.0, 201, "{}", created.1);
    // B may have the uid with a token, and another uid in uid-only mode...
    let (status, body) = create_b(json!({ "uid": legacy })).await;
    assert_eq!(status, 201, "{body}");
    let b_device = format!("/v1/devices/{}", body["device"]["id"].as_str().unwrap());
    let other = create_b(json!({ "uid": format!("{legacy}-2"), "uid_only": true })).await;
    assert_eq!(other.0, 201, "{}", other.1);
    // ...but not that uid in uid-only mode, on create or on change.
    let answer = patch_b(b_device.clone(), json!({ "uid_only": true })).await;
    assert_eq!(refusal(&answer), uid_taken, "{}", answer.1);
    let (_, read) = api.call("get", &b_device, &admin_b.token, None).await;
    assert_eq!(
        read["uid_only"],
        Value::Null,
        "the refused change was rolled back"
    );

    // Nor through the tenant default, which would make that device uid-only.
    let answer = patch_b("/v1/tenant".into(), json!({ "uid_only_devices": true })).await;
    assert_eq!(refusal(&answer), uid_taken, "{}", answer.1);
    assert!(answer.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&legacy));
    let (_, defaults) = api.call("get", "/v1/tenant", &admin_b.token, None).await;
    assert_eq!(defaults["uid_only_devices"], json!(false), "rolled back");
    // Once that device opts out explicitly, the tenant default may be turned on.
    assert_eq!(patch_b(b_device, json!({ "uid_only": false })).await.0, 200);
    let (status, body) = patch_b("/v1/tenant".into(), json!({ "uid_only_devices": true })).await;
    assert_eq!(
        (status, &body["uid_only_devices"]),
        (200, &json!(true)),
        "{body}"
    );

    // B's new devices are now uid-only by default, which A cannot then take.
    let fresh = format!("M-{}", suffix());
    let (status, body) = create_b(json!({ "uid": fresh })).await;
    assert_eq!(
        (status, &body["device"]["uid_only"]),
        (201, &Value::Null),
        "{body}"
    );
    let answer = create_a(json!({ "uid": fresh, "uid_only": true })).await;
    assert_eq!(refusal(&answer), uid_taken, "{}", answer.1);
    let (status, _) = create_a(json!({ "uid": fresh })).await;
    assert_eq!(status, 201, "with a token it is just another tenant's uid");
}
