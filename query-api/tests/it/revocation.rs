//! Revocation takes effect at once (issue 14): roles and account state are read per request,
//! password changes, disables and role changes revoke refresh tokens (whole families) and a
//! password change refuses older access tokens, API keys follow their creator and must expire,
//! the last admin of a tenant stays, and refresh and login are rate limited per address and per
//! account.

use crate::auth::in_a_month;
use crate::support::{Api, User};
use gps_domain::auth::Role;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Duration;
use uuid::Uuid;

impl Api {
    /// `POST /v1/auth/refresh` from the default client: status and body.
    async fn refresh(&self, token: &str) -> (u16, Value) {
        refresh_from(&self.client, self, token).await
    }
}

async fn refresh_from(client: &reqwest::Client, api: &Api, token: &str) -> (u16, Value) {
    let response = client
        .post(api.url("/v1/auth/refresh"))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body: Value = response.json().await.unwrap_or(Value::Null);
    if let (Some(secs), Some(object)) = (retry_after, body.as_object_mut()) {
        object.insert("retry_after".into(), Value::String(secs));
    }
    (status, body)
}

fn refresh_token(login: &Value) -> String {
    login["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("a refresh token in {login}"))
        .to_owned()
}

/// A block of loopback addresses of its own (127.a.b.x, random a and b), so that rate-limit
/// buckets of other tests (from 127.0.0.1, or 127.0.0.x) do not count here.
fn address_block() -> [u8; 3] {
    let random = Uuid::new_v4();
    let bytes = random.as_bytes();
    [127, 1 + bytes[0] % 250, bytes[1]]
}

/// A client bound to address `host` of `block`.
fn client_from(block: [u8; 3], host: u8) -> reqwest::Client {
    let [a, b, c] = block;
    reqwest::Client::builder()
        .local_address(IpAddr::from([a, b, c, host]))
        .build()
        .unwrap()
}

/// Rate limits count in fixed one-minute windows: start a counting test early in a window so
/// that its few requests all fall into the same one.
async fn early_in_a_window() {
    let second = chrono::Utc::now().timestamp() % 60;
    if second >= 55 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
}

/// JWTs carry `iat` in whole seconds and a token issued in the second of a password change still
/// passes: wait for the next second so that tokens issued so far are strictly older.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

async fn create_group(api: &Api, token: &str) -> u16 {
    api.call(
        "post",
        "/v1/groups",
        token,
        Some(json!({ "name": format!("g-{}", Uuid::new_v4().simple()) })),
    )
    .await
    .0
}

#[tokio::test]
async fn a_demoted_or_disabled_user_loses_access_on_the_next_request() {
    let api = Api::start().await;
    let tenant = api.tenant("demote").await;
    let admin = api.user(tenant, Role::Admin).await;
    let manager = api.user(tenant, Role::Manager).await;
    assert_eq!(create_group(&api, &manager.token).await, 201);

    // Demoted: the same, unexpired token (it still claims manager) gets 403 at once.
    let (status, body) = api
        .call(
            "put",
            &format!("/v1/users/{}/role", manager.id),
            &admin.token,
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(create_group(&api, &manager.token).await, 403);
    assert_eq!(
        api.call("get", "/v1/devices", &manager.token, None).await.0,
        200,
        "still a viewer"
    );

    // Disabled: 401.
    let (status, body) = api
        .call(
            "patch",
            &format!("/v1/users/{}", manager.id),
            &admin.token,
            Some(json!({ "disabled": true })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        api.call("get", "/v1/devices", &manager.token, None).await.0,
        401
    );

    // Deleted: 401.
    let analyst = api.user(tenant, Role::Analyst).await;
    let path = format!("/v1/users/{}", analyst.id);
    assert_eq!(api.call("delete", &path, &admin.token, None).await.0, 204);
    assert_eq!(
        api.call("get", "/v1/devices", &analyst.token, None).await.0,
        401
    );
}

#[tokio::test]
async fn a_password_reset_revokes_every_session_of_the_user() {
    let api = Api::start().await;
    let tenant = api.tenant("reset").await;
    let admin = api.user(tenant, Role::Admin).await;
    let victim = api.user(tenant, Role::Analyst).await;
    // Two logins: two refresh-token families, plus the access token of `api.user`.
    let first = api.login(&victim.email, &victim.password).await;
    let second = api.login(&victim.email, &victim.password).await;
    let (status, rotated) = api.refresh(&refresh_token(&second)).await;
    assert_eq!(status, 200, "{rotated}");
    next_second().await;

    let new_password = "a brand new password";
    let (status, body) = api
        .call(
            "patch",
            &format!("/v1/users/{}", victim.id),
            &admin.token,
            Some(json!({ "password": new_password })),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    for family in [refresh_token(&first), refresh_token(&rotated)] {
        assert_eq!(api.refresh(&family).await.0, 401, "refresh after the reset");
    }
    for access in [
        victim.token.as_str(),
        rotated["access_token"].as_str().unwrap(),
    ] {
        assert_eq!(
            api.call("get", "/v1/devices", access, None).await.0,
            401,
            "access token issued before the reset"
        );
    }
    // The new password works, at once (same second as the reset or not).
    let fresh = api.login(&victim.email, new_password).await;
    let access = fresh["access_token"].as_str().expect("login works");
    assert_eq!(api.call("get", "/v1/devices", access, None).await.0, 200);
    assert_eq!(api.refresh(&refresh_token(&fresh)).await.0, 200);
    // The admin's own session is untouched.
    assert_eq!(
        api.call("get", "/v1/devices", &admin.token, None).await.0,
        200
    );
}

#[tokio::test]
async fn disabling_or_changing_the_role_revokes_refresh_tokens() {
    let api = Api::start().await;
    let tenant = api.tenant("revoke").await;
    let admin = api.user(tenant, Role::Admin).await;
    let user = api.user(tenant, Role::Analyst).await;

    let before_role_change = refresh_token(&api.login(&user.email, &user.password).await);
    let role_path = format!("/v1/users/{}/role", user.id);
    let (status, _) = api
        .call(
            "put",
            &role_path,
            &admin.token,
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(api.refresh(&before_role_change).await.0, 401);
    // Setting the role it already has changes nothing and revokes nothing.
    let after = refresh_token(&api.login(&user.email, &user.password).await);
    let (status, _) = api
        .call(
            "put",
            &role_path,
            &admin.token,
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, rotated) = api.refresh(&after).await;
    assert_eq!((status, rotated["role"].as_str()), (200, Some("viewer")));

    let (status, _) = api
        .call(
            "patch",
            &format!("/v1/users/{}", user.id),
            &admin.token,
            Some(json!({ "disabled": true })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(api.refresh(&refresh_token(&rotated)).await.0, 401);
    // Re-enabled, the old family stays revoked: a new login is needed.
    let (status, _) = api
        .call(
            "patch",
            &format!("/v1/users/{}", user.id),
            &admin.token,
            Some(json!({ "disabled": false })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(api.refresh(&refresh_token(&rotated)).await.0, 401);
    assert_eq!(
        api.refresh(&refresh_token(
            &api.login(&user.email, &user.password).await
        ))
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn a_rotation_stores_its_successor_within_the_revocable_family() {
    let api = Api::start().await;
    let tenant = api.tenant("race").await;
    let user = api.user(tenant, Role::Analyst).await;
    // The successor is linked from the rotated token, so the family's history is complete.
    let r1 = refresh_token(&api.login(&user.email, &user.password).await);
    let (_, second) = api.refresh(&r1).await;
    let link: Option<Uuid> =
        sqlx::query_scalar("SELECT replaced_by FROM refresh_tokens WHERE token_hash = $1")
            .bind(gps_domain::auth::secret_digest(&r1))
            .fetch_one(&api.db.pool)
            .await
            .unwrap();
    let successor: Uuid = sqlx::query_scalar("SELECT id FROM refresh_tokens WHERE token_hash = $1")
        .bind(gps_domain::auth::secret_digest(&refresh_token(&second)))
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(link, Some(successor));

    // A token presented twice at the same time: whichever rotation wins, the reuse revokes the
    // family including the winner's successor (formerly inserted after the commit, out of reach
    // of the revocation running in that window).
    for round in 0..10 {
        let token = refresh_token(&api.login(&user.email, &user.password).await);
        let (a, b, c) = tokio::join!(
            api.refresh(&token),
            api.refresh(&token),
            api.refresh(&token)
        );
        let answers = [a, b, c];
        let won: Vec<&Value> = answers
            .iter()
            .filter(|(s, _)| *s == 200)
            .map(|(_, body)| body)
            .collect();
        assert!(won.len() <= 1, "round {round}: {answers:?}");
        for body in won {
            assert_eq!(
                api.refresh(&refresh_token(body)).await.0,
                401,
                "round {round}: a successor survived the reuse of its predecessor"
            );
        }
    }
}

async fn mint_key(api: &Api, token: &str, scopes: &[&str]) -> (String, Uuid) {
    let (status, body) = api
        .call(
            "post",
            "/v1/api-keys",
            token,
            Some(json!({ "scopes": scopes, "expires_at": in_a_month() })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    (
        body["key"].as_str().unwrap().to_owned(),
        body["id"].as_str().unwrap().parse().unwrap(),
    )
}

async fn patch_user(api: &Api, admin: &User, user: Uuid, body: Value) {
    let (status, answer) = api
        .call(
            "patch",
            &format!("/v1/users/{user}"),
            &admin.token,
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn api_keys_die_with_their_creator() {
    let api = Api::start().await;
    let tenant = api.tenant("creator").await;
    let creator = api.user(tenant, Role::Admin).await;
    let other = api.user(tenant, Role::Admin).await;
    let (key, _) = mint_key(
        &api,
        &creator.token,
        &["devices:read", "users:read", "keys:write"],
    )
    .await;
    // A key minted through a key answers to the same human.
    let (grandchild, grandchild_id) = mint_key(&api, &key, &["devices:read"]).await;
    let owner: Option<Uuid> = sqlx::query_scalar("SELECT created_by FROM api_keys WHERE id = $1")
        .bind(grandchild_id)
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(owner, Some(creator.id));
    let works = |k: String| {
        let api = &api;
        async move { api.call("get", "/v1/devices", &k, None).await.0 }
    };
    assert_eq!(works(key.clone()).await, 200);
    assert_eq!(works(grandchild.clone()).await, 200);

    // Creator demoted: the key keeps only what a manager holds.
    let (status, _) = api
        .call(
            "put",
            &format!("/v1/users/{}/role", creator.id),
            &other.token,
            Some(json!({ "role": "manager" })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(api.call("get", "/v1/users", &key, None).await.0, 403);
    assert_eq!(works(key.clone()).await, 200);

    // Creator disabled: both keys stop at once.
    patch_user(&api, &other, creator.id, json!({ "disabled": true })).await;
    assert_eq!(works(key.clone()).await, 401);
    assert_eq!(works(grandchild.clone()).await, 401);
    patch_user(&api, &other, creator.id, json!({ "disabled": false })).await;
    assert_eq!(works(key.clone()).await, 200);

    // Creator deleted: the keys go with it.
    let path = format!("/v1/users/{}", creator.id);
    assert_eq!(api.call("delete", &path, &other.token, None).await.0, 204);
    assert_eq!(works(key).await, 401);
    assert_eq!(works(grandchild).await, 401);
    let (_, list) = api.call("get", "/v1/api-keys", &other.token, None).await;
    assert_eq!(list["api_keys"], json!([]), "{list}");
}

#[tokio::test]
async fn api_keys_must_expire_within_the_maximum() {
    let api = Api::start_with(&[
        "--api-rate-limit",
        "100000",
        "--login-rate-limit",
        "100000",
        "--api-key-max-ttl-days",
        "30",
    ])
    .await;
    let tenant = api.tenant("expiry").await;
    let admin = api.user(tenant, Role::Admin).await;
    let now = chrono::Utc::now();
    let days = |d: i64| (now + chrono::TimeDelta::days(d)).to_rfc3339();
    for (body, why) in [
        (json!({ "scopes": ["devices:read"] }), "no expiry"),
        (
            json!({ "scopes": ["devices:read"], "expires_at": null }),
            "null expiry",
        ),
        (
            json!({ "scopes": ["devices:read"], "expires_at": days(31) }),
            "beyond the maximum",
        ),
        (
            json!({ "scopes": ["devices:read"], "expires_at": days(-1) }),
            "in the past",
        ),
    ] {
        let (status, answer) = api
            .call("post", "/v1/api-keys", &admin.token, Some(body))
            .await;
        assert_eq!(
            (status, answer["error"]["field"].as_str()),
            (400, Some("expires_at")),
            "{why}: {answer}"
        );
    }
    let (status, answer) = api
        .call(
            "post",
            "/v1/api-keys",
            &admin.token,
            Some(json!({ "scopes": ["devices:read"], "expires_at": days(29) })),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
}

#[tokio::test]
async fn the_last_admin_cannot_be_disabled_demoted_or_deleted() {
    let api = Api::start().await;
    let tenant = api.tenant("last").await;
    let admin = api.user(tenant, Role::Admin).await;
    // A key with the admin's powers, so that someone other than the admin itself can try.
    let (key, _) = mint_key(&api, &admin.token, &["users:write", "roles:write"]).await;
    let user_path = format!("/v1/users/{}", admin.id);
    let role_path = format!("{user_path}/role");
    let refused = |status: u16, body: &Value| {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("last_admin")),
            "{body}"
        );
    };
    let (s, b) = api
        .call(
            "patch",
            &user_path,
            &admin.token,
            Some(json!({ "disabled": true })),
        )
        .await;
    refused(s, &b);
    let (s, b) = api
        .call("patch", &user_path, &key, Some(json!({ "disabled": true })))
        .await;
    refused(s, &b);
    let (s, b) = api
        .call("put", &role_path, &key, Some(json!({ "role": "manager" })))
        .await;
    refused(s, &b);
    let (s, b) = api.call("delete", &user_path, &key, None).await;
    refused(s, &b);
    assert_eq!(
        api.call("get", "/v1/users", &admin.token, None).await.0,
        200,
        "still an enabled admin"
    );
    // A disabled second admin does not count.
    let second = api.user(tenant, Role::Admin).await;
    patch_user(&api, &admin, second.id, json!({ "disabled": true })).await;
    let (s, b) = api
        .call("put", &role_path, &key, Some(json!({ "role": "manager" })))
        .await;
    refused(s, &b);
    // With another enabled admin, it is allowed.
    patch_user(&api, &admin, second.id, json!({ "disabled": false })).await;
    let (s, b) = api
        .call(
            "put",
            &role_path,
            &second.token,
            Some(json!({ "role": "manager" })),
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn two_admins_disabling_each_other_leave_one() {
    let api = Api::start().await;
    for round in 0..5 {
        let tenant = api.tenant(&format!("duel-{round}")).await;
        let a = api.user(tenant, Role::Admin).await;
        let b = api.user(tenant, Role::Admin).await;
        let disable = |by: &User, whom: Uuid| {
            let api = &api;
            let token = by.token.clone();
            async move {
                api.call(
                    "patch",
                    &format!("/v1/users/{whom}"),
                    &token,
                    Some(json!({ "disabled": true })),
                )
                .await
                .0
            }
        };
        let (x, y) = tokio::join!(disable(&a, b.id), disable(&b, a.id));
        let mut statuses = [x, y];
        statuses.sort();
        // The loser is refused: as the last admin (409) or, disabled already, as nobody (401).
        assert!(
            statuses == [200, 409] || statuses == [200, 401],
            "round {round}: {statuses:?}"
        );
        let enabled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM users WHERE tenant_id = $1 AND role = 'admin' AND NOT disabled",
        )
        .bind(tenant)
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
        assert_eq!(enabled, 1, "round {round}");
    }
}

#[tokio::test]
async fn refresh_is_rate_limited_per_address_and_per_user() {
    let api = Api::start_with(&[
        "--login-rate-limit",
        "100000",
        "--api-rate-limit",
        "100000",
        "--refresh-rate-limit",
        "3",
    ])
    .await;
    let tenant = api.tenant("refresh-limit").await;
    let user = api.user(tenant, Role::Analyst).await;
    early_in_a_window().await;

    // Per address: unknown tokens from one address, refused before any lookup after the limit.
    let block = address_block();
    let client = client_from(block, 1);
    let mut statuses = Vec::new();
    let mut last = Value::Null;
    for _ in 0..4 {
        let (status, body) = refresh_from(&client, &api, "gpsr_not-a-token").await;
        statuses.push(status);
        last = body;
    }
    assert_eq!(statuses, [401, 401, 401, 429], "{last}");
    let secs: u64 = last["retry_after"]
        .as_str()
        .expect("Retry-After on 429")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "{secs}");

    // Per user: one account from fresh addresses, one rotation each; the fourth is refused.
    let mut token = refresh_token(&api.login(&user.email, &user.password).await);
    let mut statuses = Vec::new();
    for i in 1..=4u8 {
        let (status, body) = refresh_from(&client_from(block, 1 + i), &api, &token).await;
        statuses.push(status);
        if status == 200 {
            token = refresh_token(&body);
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[tokio::test]
async fn login_is_limited_per_account_not_only_per_address() {
    let api = Api::start_with(&["--login-rate-limit", "3", "--api-rate-limit", "100000"]).await;
    early_in_a_window().await;
    let email = format!("spread-{}@example.test", Uuid::new_v4().simple());
    let block = address_block();
    let mut statuses = Vec::new();
    for i in 1..=4u8 {
        let response = client_from(block, i)
            .post(api.url("/v1/auth/login"))
            .json(&json!({ "email": email, "password": "not the password" }))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    // Four addresses, one account: the account's bucket refuses the fourth.
    assert_eq!(statuses, [401, 401, 401, 429]);
}

#[tokio::test]
async fn a_users_own_password_change_ends_its_other_sessions() {
    let api = Api::start().await;
    let tenant = api.tenant("own-password").await;
    let user = api.user(tenant, Role::Analyst).await;
    let other_session = api.login(&user.email, &user.password).await;
    next_second().await;
    let change = |current: &str, new: &str| {
        let body = json!({ "current_password": current, "new_password": new });
        let api = &api;
        let token = user.token.clone();
        async move {
            api.call("post", "/v1/auth/password", &token, Some(body))
                .await
        }
    };
    let (status, body) = change("not my password", "a long new password").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("current_password")),
        "{body}"
    );
    let (status, body) = change(&user.password, "short").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("new_password")),
        "{body}"
    );
    let (status, fresh) = change(&user.password, "a long new password").await;
    assert_eq!(status, 200, "{fresh}");

    // Every older session ends: the token that made the change, the other login's tokens.
    assert_eq!(
        api.call("get", "/v1/devices", &user.token, None).await.0,
        401
    );
    let old_access = other_session["access_token"].as_str().unwrap();
    assert_eq!(
        api.call("get", "/v1/devices", old_access, None).await.0,
        401
    );
    assert_eq!(api.refresh(&refresh_token(&other_session)).await.0, 401);
    // The answer is a fresh session.
    let access = fresh["access_token"].as_str().unwrap();
    assert_eq!(api.call("get", "/v1/devices", access, None).await.0, 200);
    assert_eq!(api.refresh(&refresh_token(&fresh)).await.0, 200);
    let relogin = api.login(&user.email, "a long new password").await;
    assert!(relogin["access_token"].is_string(), "{relogin}");

    // API keys have no password.
    let admin = api.user(tenant, Role::Admin).await;
    let (key, _) = mint_key(&api, &admin.token, &["devices:read"]).await;
    let (status, _) = api
        .call(
            "post",
            "/v1/auth/password",
            &key,
            Some(json!({ "current_password": "x", "new_password": "a long new password" })),
        )
        .await;
    assert_eq!(status, 400);
}
