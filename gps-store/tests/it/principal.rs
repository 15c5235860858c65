//! Principals follow the current state: a user's role and disabled flag are read per request,
//! a password change refuses older tokens, and an API key follows its creator (disabled, demoted,
//! deleted). [`current`] re-checks a principal already authenticated, as fanout does.

use gps_domain::auth::{self, Actor, Principal, Role};
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use gps_store::principal::{
    credential_from_bearer, current, current_since, principal_from_api_key, principal_from_bearer,
    AuthError, JwtKeys,
};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

fn keys() -> JwtKeys {
    JwtKeys::new(&SecretString::from(
        "gps-store-principal-test-secret-0123456789",
    ))
}

async fn tenant(pool: &PgPool) -> Uuid {
    seed_device(pool, &format!("principal-{}", unique_suffix()))
        .await
        .tenant_id
}

async fn user(pool: &PgPool, tenant: Uuid, role: Role) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO users (tenant_id, email, password_hash, role) VALUES ($1, $2, 'x', $3) RETURNING id",
    )
    .bind(tenant)
    .bind(format!("p-{}@example.test", Uuid::new_v4().simple()))
    .bind(role.as_str())
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn set(pool: &PgPool, user: Uuid, assignment: &str) {
    sqlx::query(&format!("UPDATE users SET {assignment} WHERE id = $1"))
        .bind(user)
        .execute(pool)
        .await
        .unwrap();
}

fn role_of(principal: &Principal) -> Role {
    match principal.actor {
        Actor::User { role, .. } => role,
        Actor::ApiKey { .. } => panic!("a user principal"),
    }
}

#[tokio::test]
async fn a_users_role_and_state_are_read_per_request() {
    let db = TestDb::new().await;
    let tenant = tenant(&db.pool).await;
    let id = user(&db.pool, tenant, Role::Manager).await;
    // The token claims admin: the database says manager, and the database wins.
    let keys = keys();
    let token = keys.issue(id, tenant, Role::Admin, 600);
    let header = format!("Bearer {token}");
    let resolve = || principal_from_bearer(&db.pool, &keys, Some(&header));
    let principal = resolve().await.unwrap();
    assert_eq!(role_of(&principal), Role::Manager);

    set(&db.pool, id, "role = 'viewer'").await;
    assert_eq!(role_of(&resolve().await.unwrap()), Role::Viewer);
    assert_eq!(
        role_of(&current(&db.pool, &principal, None).await.unwrap()),
        Role::Viewer
    );

    // The token's issue time comes back with the principal, for sessions that outlive it.
    let (_, issued_at) = credential_from_bearer(&db.pool, &keys, Some(&header))
        .await
        .unwrap();
    let iat = keys.verify(&token).unwrap().iat;
    assert_eq!(issued_at, Some(iat));
    assert_eq!(
        current_since(&db.pool, &principal)
            .await
            .unwrap()
            .credentials_not_before,
        None
    );

    // Credentials changed after the token was issued: refused, by the request path and by the
    // re-check of a session opened with it; a check without an issue time cannot see it.
    set(
        &db.pool,
        id,
        "tokens_not_before = now() + interval '5 seconds'",
    )
    .await;
    assert!(matches!(resolve().await, Err(AuthError::InvalidToken(_))));
    assert!(matches!(
        current(&db.pool, &principal, Some(iat)).await,
        Err(AuthError::InvalidToken(_))
    ));
    let now = current_since(&db.pool, &principal).await.unwrap();
    assert!(now.refuses(Some(iat)));
    assert!(!now.refuses(Some(iat + 10)));
    assert!(current(&db.pool, &principal, Some(iat + 10)).await.is_ok());
    assert!(current(&db.pool, &principal, None).await.is_ok());
    set(
        &db.pool,
        id,
        "tokens_not_before = now() - interval '5 seconds'",
    )
    .await;
    assert!(resolve().await.is_ok());

    set(&db.pool, id, "disabled = true").await;
    assert!(matches!(resolve().await, Err(AuthError::Disabled)));
    assert!(matches!(
        current(&db.pool, &principal, None).await,
        Err(AuthError::Disabled)
    ));
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(matches!(
        current(&db.pool, &principal, None).await,
        Err(AuthError::Disabled)
    ));
    // Another tenant's principal naming the same user is nobody.
    let elsewhere = Principal {
        tenant_id: Uuid::new_v4(),
        ..principal
    };
    assert!(current(&db.pool, &elsewhere, None).await.is_err());
}

#[tokio::test]
async fn an_api_key_follows_its_creator() {
    let db = TestDb::new().await;
    let tenant = tenant(&db.pool).await;
    let creator = user(&db.pool, tenant, Role::Admin).await;
    let minted = auth::new_api_key();
    let key_id: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (tenant_id, prefix, key_hash, scopes, created_by, expires_at)
         VALUES ($1, $2, $3, '{users:read,devices:read}', $4, now() + interval '1 day')
         RETURNING id",
    )
    .bind(tenant)
    .bind(&minted.id)
    .bind(auth::secret_digest(&minted.key))
    .bind(creator)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let scopes = |p: &Principal| match &p.actor {
        Actor::ApiKey { scopes, .. } => scopes.clone(),
        Actor::User { .. } => panic!("a key principal"),
    };
    let principal = principal_from_api_key(&db.pool, &minted.key).await.unwrap();
    assert_eq!(scopes(&principal), ["users:read", "devices:read"]);

    // A demoted creator's key loses what the creator lost, in scope order.
    set(&db.pool, creator, "role = 'manager'").await;
    let now = principal_from_api_key(&db.pool, &minted.key).await.unwrap();
    assert_eq!(scopes(&now), ["devices:read"]);
    assert_eq!(
        scopes(&current(&db.pool, &principal, None).await.unwrap()),
        ["devices:read"]
    );

    // A disabled creator's key stops working; re-enabled, it works again.
    set(&db.pool, creator, "disabled = true").await;
    assert!(matches!(
        principal_from_api_key(&db.pool, &minted.key).await,
        Err(AuthError::InvalidApiKey)
    ));
    assert!(matches!(
        current(&db.pool, &principal, None).await,
        Err(AuthError::InvalidApiKey)
    ));
    set(&db.pool, creator, "disabled = false").await;
    assert!(current(&db.pool, &principal, None).await.is_ok());

    // Revoked: refused by current() as by the rule.
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(key_id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(matches!(
        current(&db.pool, &principal, None).await,
        Err(AuthError::InvalidApiKey)
    ));
    sqlx::query("UPDATE api_keys SET revoked_at = NULL WHERE id = $1")
        .bind(key_id)
        .execute(&db.pool)
        .await
        .unwrap();

    // A deleted creator takes its keys along.
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(creator)
        .execute(&db.pool)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE id = $1")
        .bind(key_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "keys are deleted with their creator");
    assert!(matches!(
        current(&db.pool, &principal, None).await,
        Err(AuthError::InvalidApiKey)
    ));
}
