//! Webhooks over HTTP: the whole life of a webhook (create, read, change, list, delete, each
//! write audited, the secret never answered nor audited), the SSRF policy at creation (a refused
//! address is a 400 `private_address` on `url`, unless allowed by configuration), validation
//! naming the field, tenant isolation (404), RBAC (`webhooks:write`), the per-tenant cap, and the
//! delivery log with its pages, filter and redelivery.

use crate::support::*;
use gps_domain::auth::Role;
use serde_json::{json, Value};
use uuid::Uuid;

const SECRET: &str = "whsec-0123456789-abcdef";
/// A public address literal: accepted without a DNS lookup.
const PUBLIC_URL: &str = "https://93.184.216.34/gps?token=receiver-token";

async fn create(api: &Api, token: &str, body: Value) -> (u16, Value) {
    api.call("post", "/v1/webhooks", token, Some(body)).await
}

/// A webhook to [`PUBLIC_URL`] created by `token`: (status, answer).
async fn create_public(api: &Api, token: &str) -> (u16, Value) {
    create(api, token, json!({ "url": PUBLIC_URL, "secret": SECRET })).await
}

/// The id of a new webhook to [`PUBLIC_URL`] created by `token`.
async fn public_webhook(api: &Api, token: &str) -> String {
    let (status, created) = create_public(api, token).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// The status `method path` answers `token` (no body).
async fn status_of(api: &Api, method: &str, path: &str, token: &str) -> u16 {
    api.call(method, path, token, None).await.0
}

async fn audited(api: &Api, kind: &str) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT action, detail FROM audit_log WHERE object_kind = $1 ORDER BY id")
        .bind(kind)
        .fetch_all(&api.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_webhook_is_created_read_changed_listed_and_deleted_and_its_secret_never_shown() {
    let api = Api::start().await;
    let tenant = api.tenant("wh").await;
    let manager = api.user(tenant, Role::Manager).await;
    let (status, created) = create(
        &api,
        &manager.token,
        json!({ "url": PUBLIC_URL, "event_types": ["overspeed", "geofence_enter", "overspeed"], "secret": SECRET }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert!(!created.to_string().contains(SECRET), "{created}");
    assert!(created.get("secret").is_none());
    assert_eq!(created["url"], PUBLIC_URL);
    assert_eq!(
        created["event_types"],
        json!(["geofence_enter", "overspeed"])
    );
    assert_eq!(created["disabled"], false);
    let id = created["id"].as_str().unwrap().to_owned();
    let stored: String = sqlx::query_scalar("SELECT secret FROM webhooks WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, SECRET, "kept to sign deliveries");

    let (status, read) = api
        .call("get", &format!("/v1/webhooks/{id}"), &manager.token, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(read["id"], id.as_str());
    assert!(!read.to_string().contains(SECRET));

    // Disable, then change the types and the secret: the fields absent are kept.
    let (status, changed) = api
        .call(
            "put",
            &format!("/v1/webhooks/{id}"),
            &manager.token,
            Some(json!({ "disabled": true })),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["disabled"], true);
    assert_eq!(changed["url"], PUBLIC_URL);
    assert_eq!(
        changed["event_types"],
        json!(["geofence_enter", "overspeed"])
    );
    let new_secret = "another-secret-of-24-chars";
    let (status, changed) = api
        .call(
            "put",
            &format!("/v1/webhooks/{id}"),
            &manager.token,
            Some(json!({ "event_types": [], "secret": new_secret, "disabled": false })),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["event_types"], json!([]));
    assert_eq!(changed["disabled"], false);
    assert!(!changed.to_string().contains(new_secret));

    let (status, list) = api.call("get", "/v1/webhooks", &manager.token, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(new_secret));

    assert_eq!(
        status_of(
            &api,
            "delete",
            &format!("/v1/webhooks/{id}"),
            &manager.token
        )
        .await,
        204
    );
    assert_eq!(
        status_of(&api, "get", &format!("/v1/webhooks/{id}"), &manager.token).await,
        404
    );
    assert_eq!(
        status_of(
            &api,
            "delete",
            &format!("/v1/webhooks/{id}"),
            &manager.token
        )
        .await,
        404
    );

    let audit = audited(&api, "webhook").await;
    let actions: Vec<&str> = audit.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "webhooks.create",
            "webhooks.update",
            "webhooks.update",
            "webhooks.delete"
        ]
    );
    assert_eq!(audit[0].1["host"], "93.184.216.34");
    for (_, detail) in &audit {
        let text = detail.to_string();
        assert!(
            !text.contains(SECRET) && !text.contains(new_secret),
            "{text}"
        );
        assert!(!text.contains("receiver-token"), "only the host: {text}");
    }
}

#[tokio::test]
async fn refused_urls_and_bad_fields_are_400s_naming_the_field() {
    let api = Api::start().await;
    let tenant = api.tenant("wh").await;
    let admin = api.user(tenant, Role::Admin).await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://127.0.0.1:8080/hook",
        "http://[::1]/",
        "http://[::ffff:192.168.0.1]/",
        "http://0x7f000001/",
        "http://localhost:9/hook",
    ] {
        let (status, body) =
            create(&api, &admin.token, json!({ "url": url, "secret": SECRET })).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "private_address", "{url}: {body}");
        assert_eq!(body["error"]["field"], "url");
    }
    for url in [
        "ftp://93.184.216.34/",
        "https://user:pw@93.184.216.34/",
        "not a url",
    ] {
        let (status, body) =
            create(&api, &admin.token, json!({ "url": url, "secret": SECRET })).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
        assert_eq!(body["error"]["field"], "url");
    }
    let long = format!("https://93.184.216.34/{}", "x".repeat(2048));
    let (status, body) = create(&api, &admin.token, json!({ "url": long, "secret": SECRET })).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("url"))
    );
    let (status, body) = create(
        &api,
        &admin.token,
        json!({ "url": PUBLIC_URL, "secret": "too-short" }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("secret"))
    );
    assert!(!body.to_string().contains("too-short"));
    let (status, body) = create(
        &api,
        &admin.token,
        json!({ "url": PUBLIC_URL, "secret": SECRET, "event_types": ["alarm", "teleport"] }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("event_types[1]"))
    );
    let (status, body) = create(
        &api,
        &admin.token,
        json!({ "url": PUBLIC_URL, "secret": SECRET, "tenant_id": tenant }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("tenant_id"))
    );
    let (status, body) = create(&api, &admin.token, json!({ "secret": SECRET })).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("url"))
    );

    // A change to a refused URL is refused the same way, and changes nothing.
    let id = &public_webhook(&api, &admin.token).await;
    let (status, body) = api
        .call(
            "put",
            &format!("/v1/webhooks/{id}"),
            &admin.token,
            Some(json!({ "url": "http://10.1.2.3/" })),
        )
        .await;
    assert_eq!(body["error"]["code"], "private_address", "{body}");
    assert_eq!(status, 400);
    let (_, read) = api
        .call("get", &format!("/v1/webhooks/{id}"), &admin.token, None)
        .await;
    assert_eq!(read["url"], PUBLIC_URL);
}

#[tokio::test]
async fn loopback_is_accepted_when_the_configuration_allows_it() {
    let api = Api::start_with(&[
        "--api-rate-limit",
        "100000",
        "--login-rate-limit",
        "100000",
        "--webhook-allow-private-cidrs",
        "127.0.0.0/8",
    ])
    .await;
    let tenant = api.tenant("wh").await;
    let admin = api.user(tenant, Role::Admin).await;
    for url in ["http://127.0.0.1:9000/hook", "http://localhost:9000/hook"] {
        let (status, body) =
            create(&api, &admin.token, json!({ "url": url, "secret": SECRET })).await;
        assert_eq!(status, 201, "{url}: {body}");
    }
    // Only that block: the metadata address stays refused.
    let (status, body) = create(
        &api,
        &admin.token,
        json!({ "url": "http://169.254.169.254/", "secret": SECRET }),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("private_address"))
    );
}

#[tokio::test]
async fn another_tenants_webhook_is_404_and_readers_are_403() {
    let api = Api::start().await;
    let (mine, theirs) = (api.tenant("a").await, api.tenant("b").await);
    let admin = api.user(mine, Role::Admin).await;
    let other = api.user(theirs, Role::Admin).await;
    let id = &public_webhook(&api, &admin.token).await;
    let event = Uuid::new_v4();
    let delivery: i64 = sqlx::query_scalar(
        "INSERT INTO webhook_deliveries (webhook_id, tenant_id, event_id, status)
         VALUES ($1::uuid, $2, $3, 'failed') RETURNING id",
    )
    .bind(id)
    .bind(mine)
    .bind(event)
    .fetch_one(&api.db.pool)
    .await
    .unwrap();
    for (method, path, body) in [
        ("get", format!("/v1/webhooks/{id}"), None),
        (
            "put",
            format!("/v1/webhooks/{id}"),
            Some(json!({ "disabled": true })),
        ),
        ("delete", format!("/v1/webhooks/{id}"), None),
        ("get", format!("/v1/webhooks/{id}/deliveries"), None),
        (
            "post",
            format!("/v1/webhooks/{id}/deliveries/{delivery}/redeliver"),
            None,
        ),
    ] {
        let (status, answer) = api.call(method, &path, &other.token, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (_, list) = api.call("get", "/v1/webhooks", &other.token, None).await;
    assert_eq!(list["webhooks"], json!([]));
    let status: String = sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE id = $1")
        .bind(delivery)
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(
        status, "failed",
        "the other tenant's redeliver moved nothing"
    );

    for role in [Role::Analyst, Role::Viewer] {
        let reader = api.user(mine, role).await;
        assert_eq!(
            status_of(&api, "get", "/v1/webhooks", &reader.token).await,
            403
        );
        let (status, _) = create_public(&api, &reader.token).await;
        assert_eq!(status, 403);
        assert_eq!(
            status_of(
                &api,
                "get",
                &format!("/v1/webhooks/{id}/deliveries"),
                &reader.token
            )
            .await,
            403
        );
    }
}

#[tokio::test]
async fn a_tenant_has_at_most_100_webhooks() {
    let api = Api::start().await;
    let tenant = api.tenant("wh").await;
    let admin = api.user(tenant, Role::Admin).await;
    sqlx::query(
        "INSERT INTO webhooks (tenant_id, url, secret)
         SELECT $1, 'https://93.184.216.34/' || n, 'sixteen-chars-secret' FROM generate_series(1, 100) n",
    )
    .bind(tenant)
    .execute(&api.db.pool)
    .await
    .unwrap();
    let (status, body) = create_public(&api, &admin.token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("too_many_webhooks"))
    );
}

#[tokio::test]
async fn the_delivery_log_pages_filters_and_redelivers() {
    let api = Api::start().await;
    let tenant = api.tenant("wh").await;
    let admin = api.user(tenant, Role::Admin).await;
    let id = &public_webhook(&api, &admin.token).await;
    let second = &public_webhook(&api, &admin.token).await;
    // Five deliveries as the processor and the worker leave them: oldest first.
    let mut ids = Vec::new();
    for (status, attempts, response, error) in [
        ("delivered", 1, Some(200), None),
        ("failed", 12, Some(500), Some("receiver answered 500")),
        ("pending", 2, None, Some("timed out")),
        ("delivered", 3, Some(204), None),
        (
            "failed",
            12,
            None,
            Some("refused: 10.0.0.1 is a private address"),
        ),
    ] {
        let event = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO events (id, tenant_id, device_id, type, fix_time, details)
             VALUES ($1, $2, $3, 'alarm', now(), '{\"alarm\": \"sos\"}')",
        )
        .bind(event)
        .bind(tenant)
        .bind(Uuid::new_v4())
        .execute(&api.db.pool)
        .await
        .unwrap();
        let delivery: i64 = sqlx::query_scalar(
            "INSERT INTO webhook_deliveries (webhook_id, tenant_id, event_id, status, attempts,
                                             response_status, error, last_attempt_at)
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, now()) RETURNING id",
        )
        .bind(id)
        .bind(tenant)
        .bind(event)
        .bind(status)
        .bind(attempts)
        .bind(response)
        .bind(error)
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
        ids.push((delivery, event));
    }
    let path = format!("/v1/webhooks/{id}/deliveries");
    let (status, page) = api
        .call("get", &format!("{path}?limit=2"), &admin.token, None)
        .await;
    assert_eq!(status, 200, "{page}");
    let first: Vec<i64> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(first, [ids[4].0, ids[3].0], "newest first");
    let newest = &page["deliveries"][0];
    assert_eq!(newest["event_id"], ids[4].1.to_string());
    assert_eq!(newest["event_type"], "alarm");
    assert_eq!(newest["status"], "failed");
    assert_eq!(newest["attempts"], 12);
    assert_eq!(newest["error"], "refused: 10.0.0.1 is a private address");
    assert_eq!(newest["next_attempt_at"], Value::Null, "not pending");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = api
        .call(
            "get",
            &format!("{path}?limit=10&cursor={cursor}"),
            &admin.token,
            None,
        )
        .await;
    assert_eq!(rest["deliveries"].as_array().unwrap().len(), 3);
    assert_eq!(rest["next_cursor"], Value::Null);
    let (_, failed) = api
        .call("get", &format!("{path}?status=failed"), &admin.token, None)
        .await;
    let failed: Vec<i64> = failed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(failed, [ids[4].0, ids[1].0]);
    let (_, pending) = api
        .call("get", &format!("{path}?status=pending"), &admin.token, None)
        .await;
    assert!(pending["deliveries"][0]["next_attempt_at"].is_string());
    for (query, field) in [
        ("status=lost", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=abc", "cursor"),
    ] {
        let (status, body) = api
            .call("get", &format!("{path}?{query}"), &admin.token, None)
            .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (400, Some(field)),
            "{query}"
        );
    }
    let (_, other_log) = api
        .call(
            "get",
            &format!("/v1/webhooks/{second}/deliveries"),
            &admin.token,
            None,
        )
        .await;
    assert_eq!(other_log["deliveries"], json!([]), "one webhook's log only");

    // Redeliver the failed one: pending, due now, a fresh budget, the same event.
    let (failed_id, failed_event) = ids[1];
    let (status, again) = api
        .call(
            "post",
            &format!("{path}/{failed_id}/redeliver"),
            &admin.token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "pending");
    assert_eq!(again["attempts"], 0);
    assert_eq!(again["event_id"], failed_event.to_string());
    assert!(again["next_attempt_at"].is_string());
    let due: bool = sqlx::query_scalar(
        "SELECT next_attempt_at <= now() AND status = 'pending' FROM webhook_deliveries WHERE id = $1",
    )
    .bind(failed_id)
    .fetch_one(&api.db.pool)
    .await
    .unwrap();
    assert!(due);
    // Through another webhook of the same tenant, or an id that is no delivery: 404.
    for bad in [
        format!("/v1/webhooks/{second}/deliveries/{failed_id}/redeliver"),
        format!("/v1/webhooks/{id}/deliveries/999999999/redeliver"),
        format!("/v1/webhooks/{id}/deliveries/nope/redeliver"),
    ] {
        let (status, _) = api.call("post", &bad, &admin.token, None).await;
        assert_eq!(status, 404, "{bad}");
    }
    let audit = audited(&api, "webhook_delivery").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].0, "webhooks.redeliver");
}
