//! Identity: JWT attacks, API key lifecycle, refresh rotation and reuse, login rate limits,
//! tickets, and the bootstrap command.

use crate::support::{Api, SECRET};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use gps_domain::auth::{self, Role, JWT_AUDIENCE, JWT_ISSUER};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

fn token(secret: &str, alg: Algorithm, claims: serde_json::Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_and_stale_tokens_are_refused() {
    let api = Api::start().await;
    let tenant = api.tenant("jwt").await;
    let admin = api.user(tenant, Role::Admin).await;
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, nbf: i64, aud: &str| {
        json!({ "sub": admin.id, "tid": tenant, "role": "admin", "iss": JWT_ISSUER, "aud": aud,
                "exp": exp, "nbf": nbf, "iat": now, "jti": Uuid::new_v4() })
    };
    // Sanity: a well-formed token of ours works.
    let good = token(
        SECRET,
        Algorithm::HS256,
        claims(now + 60, now, JWT_AUDIENCE),
    );
    assert_eq!(api.call("get", "/v1/users", &good, None).await.0, 200);

    let payload = URL_SAFE_NO_PAD.encode(claims(now + 60, now, JWT_AUDIENCE).to_string());
    let unsigned = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
    );
    let attacks = [
        ("alg none", unsigned),
        (
            "wrong key",
            token(
                "another-secret-another-secret-another-secret",
                Algorithm::HS256,
                claims(now + 60, now, JWT_AUDIENCE),
            ),
        ),
        (
            "other alg",
            token(
                SECRET,
                Algorithm::HS512,
                claims(now + 60, now, JWT_AUDIENCE),
            ),
        ),
        (
            "expired",
            token(
                SECRET,
                Algorithm::HS256,
                claims(now - 120, now - 600, JWT_AUDIENCE),
            ),
        ),
        (
            "not yet valid",
            token(
                SECRET,
                Algorithm::HS256,
                claims(now + 3600, now + 600, JWT_AUDIENCE),
            ),
        ),
        (
            "wrong audience",
            token(
                SECRET,
                Algorithm::HS256,
                claims(now + 60, now, "someone-else"),
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, bad) in attacks {
        let (status, body) = api.call("get", "/v1/users", &bad, None).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{name}");
    }
    let none = api.client.get(api.url("/v1/users")).send().await.unwrap();
    assert_eq!(none.status(), 401);
}

/// An API key expiry the maximum allows (every key must expire).
pub(crate) fn in_a_month() -> String {
    (chrono::Utc::now() + chrono::TimeDelta::days(30)).to_rfc3339()
}

#[tokio::test]
async fn api_keys_work_until_revoked_or_expired() {
    let api = Api::start().await;
    let tenant = api.tenant("keys").await;
    let admin = api.user(tenant, Role::Admin).await;
    let (status, created) = api
        .call(
            "post",
            "/v1/api-keys",
            &admin.token,
            Some(json!({ "name": "ci", "scopes": ["devices:read"], "expires_at": in_a_month() })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(auth::API_KEY_PREFIX));
    assert_eq!(api.call("get", "/v1/devices", &key, None).await.0, 200);
    // Scoped: devices:read only.
    assert_eq!(api.call("get", "/v1/users", &key, None).await.0, 403);
    // Listed without the secret, with last use recorded.
    let (_, list) = api.call("get", "/v1/api-keys", &admin.token, None).await;
    let listed = list.to_string();
    assert!(
        !listed.contains(&key),
        "the key itself must never be listed"
    );
    assert!(list["api_keys"][0]["last_used_at"].is_string(), "{list}");
    // Stored hashed.
    let stored: String = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = $1")
        .bind(Uuid::parse_str(created["id"].as_str().unwrap()).unwrap())
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, auth::secret_digest(&key));
    // Revoked → 401.
    let (status, _) = api
        .call(
            "delete",
            &format!("/v1/api-keys/{}", created["id"].as_str().unwrap()),
            &admin.token,
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(api.call("get", "/v1/devices", &key, None).await.0, 401);
    // Expired → 401.
    let (_, second) = api
        .call(
            "post",
            "/v1/api-keys",
            &admin.token,
            Some(json!({ "scopes": ["devices:read"], "expires_at": in_a_month() })),
        )
        .await;
    let second_key = second["key"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call("get", "/v1/devices", &second_key, None).await.0,
        200
    );
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE prefix = $1")
        .bind(auth::api_key_id(&second_key).unwrap())
        .execute(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(
        api.call("get", "/v1/devices", &second_key, None).await.0,
        401
    );
    // A key with the right prefix but a wrong secret → 401.
    let forged = format!(
        "{}_{}",
        &second_key[..auth::API_KEY_PREFIX.len() + auth::API_KEY_ID_LEN],
        "A".repeat(43)
    );
    assert_eq!(api.call("get", "/v1/devices", &forged, None).await.0, 401);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let api = Api::start().await;
    let tenant = api.tenant("refresh").await;
    let user = api.user(tenant, Role::Analyst).await;
    let first = api.login(&user.email, &user.password).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |t: String| {
        let api = &api;
        async move {
            let response = api
                .client
                .post(api.url("/v1/auth/refresh"))
                .json(&json!({ "refresh_token": t }))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, second) = refresh(r1.clone()).await;
    assert_eq!(status, 200, "{second}");
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert_eq!(
        api.call(
            "get",
            "/v1/devices",
            second["access_token"].as_str().unwrap(),
            None
        )
        .await
        .0,
        200
    );
    // Replaying the rotated token is refused and burns the family: r2 stops working too.
    assert_eq!(refresh(r1).await.0, 401);
    assert_eq!(refresh(r2).await.0, 401);
    // Logout revokes.
    let third = api.login(&user.email, &user.password).await;
    let r3 = third["refresh_token"].as_str().unwrap().to_owned();
    let out = api
        .client
        .post(api.url("/v1/auth/logout"))
        .json(&json!({ "refresh_token": r3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(refresh(r3).await.0, 401);
}

#[tokio::test]
async fn wrong_passwords_fail_and_are_audited() {
    let api = Api::start().await;
    let tenant = api.tenant("login").await;
    let user = api.user(tenant, Role::Admin).await;
    let bad = api
        .client
        .post(api.url("/v1/auth/login"))
        .json(&json!({ "email": user.email, "password": "wrong password!" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let unknown = api
        .client
        .post(api.url("/v1/auth/login"))
        .json(&json!({ "email": "nobody@example.test", "password": "whatever it is" }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    let (_, audit) = api.call("get", "/v1/audit", &user.token, None).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"auth.login"), "{actions:?}");
    assert!(actions.contains(&"auth.login_failed"), "{actions:?}");
}

#[tokio::test]
async fn a_failed_audit_write_is_counted_not_skipped_silently() {
    let api = Api::start().await;
    let tenant = api.tenant("audit-lost").await;
    let user = api.user(tenant, Role::Admin).await;
    let lost = || {
        gps_runtime::testing::scrape_metric(
            &api.client,
            &api.base,
            "gps_query_audit_failures_total",
        )
    };
    let before = lost().await;
    sqlx::query("ALTER TABLE audit_log RENAME TO audit_log_away")
        .execute(&api.db.pool)
        .await
        .unwrap();
    // The audited action still succeeds; the row it could not write is counted.
    let (status, body) = api.call("post", "/v1/live/ticket", &user.token, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(lost().await > before);
    sqlx::query("ALTER TABLE audit_log_away RENAME TO audit_log")
        .execute(&api.db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_login_after_the_limit_gets_429_with_retry_after() {
    let api = Api::start_with(&["--login-rate-limit", "3", "--api-rate-limit", "100000"]).await;
    // A loopback address of its own, so other tests' logins from 127.0.0.1 do not count here.
    let octet = 2 + (Uuid::new_v4().as_u128() % 250) as u8;
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, octet]))
        .build()
        .unwrap();
    let email = format!("limit-{}@example.test", Uuid::new_v4().simple());
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let response = client
            .post(api.url("/v1/auth/login"))
            .json(&json!({ "email": email, "password": "not the password" }))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }
    assert_eq!(statuses, vec![401, 401, 401, 429]);
    let secs: u64 = retry_after.expect("Retry-After on 429").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
}

#[tokio::test]
async fn live_tickets_are_single_use() {
    let api = Api::start().await;
    let tenant = api.tenant("ticket").await;
    let viewer = api.user(tenant, Role::Viewer).await;
    let (status, body) = api
        .call("post", "/v1/live/ticket", &viewer.token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let ticket = body["ticket"].as_str().unwrap();
    let mut redis = gps_runtime::redis_client::connect(&gps_runtime::testing::redis_args())
        .await
        .unwrap();
    // The ticket is signed with the key derived from the JWT secret: the wrong key refuses it
    // (and burns it), the right one redeems it once.
    let key = gps_store::tickets::TicketKey::derive(&secrecy::SecretString::from(SECRET));
    let principal = gps_store::tickets::redeem_ticket(&mut redis, &key, ticket)
        .await
        .unwrap();
    assert_eq!(principal.tenant_id, tenant);
    assert!(gps_store::tickets::redeem_ticket(&mut redis, &key, ticket)
        .await
        .is_err());
    let (_, body) = api
        .call("post", "/v1/live/ticket", &viewer.token, None)
        .await;
    let other_key =
        gps_store::tickets::TicketKey::derive(&secrecy::SecretString::from("another-deployment"));
    let signed_elsewhere = body["ticket"].as_str().unwrap();
    assert!(
        gps_store::tickets::redeem_ticket(&mut redis, &other_key, signed_elsewhere)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn bootstrap_creates_a_tenant_whose_admin_can_log_in() {
    let api = Api::start().await;
    let name = format!("boot-{}", Uuid::new_v4().simple());
    let email = format!("{name}@example.test");
    let mut config = <query_api::Config as clap::Parser>::parse_from([
        "query-api",
        "admin",
        "create-tenant",
        "--name",
        &name,
        "--admin-email",
        &email,
    ]);
    config.database = api.db.args.clone();
    let Some(query_api::Command::Admin { action }) = config.command.clone() else {
        panic!("parsed")
    };
    let message = query_api::run_admin(&config, &action).await.unwrap();
    assert!(message.contains(&email), "{message}");
    let password = message
        .split("\\\"password\\\":\\\"")
        .nth(1)
        .or_else(|| message.split("\"password\":\"").nth(1))
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let login = api.login(&email, &password).await;
    assert_eq!(login["role"], "admin", "{login}");
}
