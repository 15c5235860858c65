//! Who is calling: the principal behind an `Authorization: Bearer` credential, a user JWT
//! ([`JwtKeys`]) or an API key, resolved the same way by the query API and fanout. The header is
//! parsed by the one bearer parser ([`gps_domain::auth::bearer_token`]) and API keys are judged by
//! the one API-key rule ([`crate::credentials::ApiKeyRecord::verify`]), which ingest applies too.
//!
//! Authorization is read from the current state, never from the credential alone: a user JWT
//! proves who is calling, but the role and whether the account may act at all are read from the
//! `users` row on every request (one query), so a role change, disable or delete takes effect on
//! the next request, and a password change refuses every access token issued before it
//! (`users.tokens_not_before`). Long-lived sessions (fanout's WebSockets) re-check a principal
//! they authenticated earlier with [`current`] / [`current_since`], passing when the credential
//! was issued, so that a password change also ends them.

use crate::credentials::{self, KeyVerdict};
use gps_domain::auth::{
    self, AccessClaims, Actor, Principal, Role, API_KEY_PREFIX, JWT_AUDIENCE, JWT_ISSUER,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

/// Why a credential was refused. Every variant but [`AuthError::Unavailable`] maps to 401 at
/// the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential was presented, or the `Authorization` header is not a bearer credential.
    #[error("missing credentials")]
    Missing,
    /// The credential is malformed, forged, expired, not yet valid or for another audience.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The API key is unknown, revoked or expired.
    #[error("invalid api key")]
    InvalidApiKey,
    /// The ticket is unknown, used or expired.
    #[error("invalid or used ticket")]
    InvalidTicket,
    /// The user behind a valid token no longer exists or is disabled.
    #[error("account disabled")]
    Disabled,
    /// The lookup itself failed (database or Redis down): a 503, not a 401.
    #[error("credential store unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// Signs and verifies access tokens (HS256, algorithm pinned, exp/nbf/iss/aud checked).
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(HS256, redacted)")
    }
}

impl JwtKeys {
    /// Keys from the shared secret.
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[JWT_ISSUER]);
        validation.set_audience(&[JWT_AUDIENCE]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        }
    }

    /// Issue an access token valid for `ttl_secs`.
    pub fn issue(&self, user_id: Uuid, tenant_id: Uuid, role: Role, ttl_secs: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            sub: user_id,
            tid: tenant_id,
            role,
            iss: JWT_ISSUER.into(),
            aud: JWT_AUDIENCE.into(),
            exp: now + ttl_secs,
            nbf: now,
            iat: now,
            jti: Uuid::new_v4(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verify a token's signature and claims.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))
    }
}

/// Resolve an `Authorization` header value (`Bearer <jwt or api key>`, see
/// [`auth::bearer_token`]) to a principal.
pub async fn principal_from_bearer(
    pool: &PgPool,
    keys: &JwtKeys,
    header_value: Option<&str>,
) -> Result<Principal, AuthError> {
    credential_from_bearer(pool, keys, header_value)
        .await
        .map(|(principal, _)| principal)
}

/// [`principal_from_bearer`], also returning when the credential was issued (a JWT's `iat`,
/// seconds; `None` for an API key, which a password change does not affect): a session that
/// outlives the request passes it to [`current_since`] so that a later password change ends it.
pub async fn credential_from_bearer(
    pool: &PgPool,
    keys: &JwtKeys,
    header_value: Option<&str>,
) -> Result<(Principal, Option<i64>), AuthError> {
    let token = header_value
        .and_then(auth::bearer_token)
        .ok_or(AuthError::Missing)?;
    if token.starts_with(API_KEY_PREFIX) {
        return Ok((principal_from_api_key(pool, token).await?, None));
    }
    let claims = keys.verify(token)?;
    let user = user_state(pool, claims.tid, claims.sub).await?;
    if user.refuses(Some(claims.iat)) {
        return Err(stale_token());
    }
    let principal = Principal {
        tenant_id: claims.tid,
        actor: Actor::User {
            user_id: claims.sub,
            role: user.role,
        },
    };
    Ok((principal, Some(claims.iat)))
}

/// A principal's present state ([`current_since`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    /// The principal as the store has it now (role, key scopes).
    pub principal: Principal,
    /// For a user: credentials issued (`iat`, seconds) before this are refused, since the
    /// password was changed or reset then (`users.tokens_not_before`, whole seconds). `None` for
    /// an API key, or a user whose password never changed.
    pub credentials_not_before: Option<i64>,
}

impl Current {
    /// Whether a credential issued at `issued_at` (seconds; `None`: not a token, e.g. an API
    /// key) predates the last credential change, and so is refused.
    pub fn refuses(&self, issued_at: Option<i64>) -> bool {
        refuses(self.credentials_not_before, issued_at)
    }
}

/// The one freshness rule: `iat` has whole seconds, so a token issued in the same second as the
/// change still passes, and a login right after a password reset is not refused.
fn refuses(not_before: Option<i64>, issued_at: Option<i64>) -> bool {
    matches!((not_before, issued_at), (Some(cutoff), Some(iat)) if iat < cutoff)
}

fn stale_token() -> AuthError {
    AuthError::InvalidToken("issued before the account's credentials changed".into())
}

/// Re-read `principal`'s present state: a user must still exist in its tenant and be enabled,
/// and comes back with its current role; an API key must still exist, be neither revoked nor
/// expired, and its creator must be active, and comes back with its current (creator-capped)
/// scopes. For sessions that outlive a request (a WebSocket): call it periodically and close the
/// session on `Err` (every variant but [`AuthError::Unavailable`] is a refusal).
///
/// `issued_at` is when the session's credential was issued (a JWT's `iat`, or when a ticket was
/// issued); a user whose credentials changed after it is refused like a stale token. `None`
/// skips that check (an API key, or a caller with no issue time).
pub async fn current(
    pool: &PgPool,
    principal: &Principal,
    issued_at: Option<i64>,
) -> Result<Principal, AuthError> {
    let now = current_since(pool, principal).await?;
    if now.refuses(issued_at) {
        return Err(stale_token());
    }
    Ok(now.principal)
}

/// [`current`] for many sessions of one principal at once: one query, and the cutoff
/// ([`Current::credentials_not_before`]) to judge each session's own issue time with
/// ([`Current::refuses`]).
pub async fn current_since(pool: &PgPool, principal: &Principal) -> Result<Current, AuthError> {
    match &principal.actor {
        Actor::User { user_id, .. } => {
            let user = user_state(pool, principal.tenant_id, *user_id).await?;
            Ok(Current {
                principal: Principal {
                    tenant_id: principal.tenant_id,
                    actor: Actor::User {
                        user_id: *user_id,
                        role: user.role,
                    },
                },
                credentials_not_before: user.not_before,
            })
        }
        Actor::ApiKey { key_id, .. } => {
            let key = credentials::api_key_by_id(pool, principal.tenant_id, *key_id)
                .await?
                .ok_or(AuthError::InvalidApiKey)?;
            if !key.usable(chrono::Utc::now()) {
                return Err(AuthError::InvalidApiKey);
            }
            Ok(Current {
                principal: Principal {
                    tenant_id: key.tenant_id,
                    actor: Actor::ApiKey {
                        key_id: key.id,
                        scopes: key.scopes,
                    },
                },
                credentials_not_before: None,
            })
        }
    }
}

/// A user's role and credential cutoff ([`user_state`]).
struct UserState {
    role: Role,
    /// `users.tokens_not_before`, truncated to whole seconds.
    not_before: Option<i64>,
}

impl UserState {
    fn refuses(&self, issued_at: Option<i64>) -> bool {
        refuses(self.not_before, issued_at)
    }
}

/// The current role and credential cutoff of user `user` of `tenant`, in one query: refused when
/// the user no longer exists in the tenant or is disabled ([`AuthError::Disabled`]).
async fn user_state(pool: &PgPool, tenant: Uuid, user: Uuid) -> Result<UserState, AuthError> {
    let row: Option<(String, bool, Option<i64>)> = sqlx::query_as(
        "SELECT role, disabled,
                extract(epoch FROM date_trunc('second', tokens_not_before))::bigint
         FROM users WHERE id = $1 AND tenant_id = $2",
    )
    .bind(user)
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    let Some((role, disabled, not_before)) = row else {
        return Err(AuthError::Disabled);
    };
    if disabled {
        return Err(AuthError::Disabled);
    }
    match role.parse::<Role>() {
        Ok(Role::Device) | Err(_) => {
            // The roles table knows more names than a user may hold: refuse, never guess.
            tracing::warn!(user = %user, role = %role, "user row holds a role no user may act with");
            Err(AuthError::Disabled)
        }
        Ok(role) => Ok(UserState { role, not_before }),
    }
}

/// Resolve an API key (`gpsk_<id>_<secret>`) by the one API-key rule; its scopes travel with
/// the principal to each route's permission check. Records `last_used_at` when due (at most once
/// a minute per key); a failed update is logged and does not refuse the request.
pub async fn principal_from_api_key(
    pool: &PgPool,
    presented: &str,
) -> Result<Principal, AuthError> {
    let prefix = auth::api_key_id(presented).ok_or(AuthError::InvalidApiKey)?;
    let key = credentials::api_key(pool, prefix)
        .await?
        .ok_or(AuthError::InvalidApiKey)?;
    let now = chrono::Utc::now();
    match key.verify(presented, None, now) {
        KeyVerdict::Accepted { touch_last_used } => {
            if touch_last_used {
                if let Err(e) = credentials::touch_api_key(pool, key.id, now).await {
                    tracing::warn!(key_id = %key.id, error = %e, "api key last_used_at update failed");
                }
            }
        }
        KeyVerdict::MissingScope | KeyVerdict::Invalid => return Err(AuthError::InvalidApiKey),
    }
    Ok(Principal {
        tenant_id: key.tenant_id,
        actor: Actor::ApiKey {
            key_id: key.id,
            scopes: key.scopes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(&SecretString::from("0123456789abcdef0123456789abcdef-test"))
    }

    #[test]
    fn issued_tokens_verify() {
        let (user, tenant) = (Uuid::new_v4(), Uuid::new_v4());
        let token = keys().issue(user, tenant, Role::Analyst, 60);
        let claims = keys().verify(&token).unwrap();
        assert_eq!(
            (claims.sub, claims.tid, claims.role),
            (user, tenant, Role::Analyst)
        );
    }

    #[test]
    fn expired_forged_and_unsigned_tokens_fail() {
        let k = keys();
        let expired = k.issue(Uuid::new_v4(), Uuid::new_v4(), Role::Admin, -3600);
        assert!(k.verify(&expired).is_err());
        let other = JwtKeys::new(&SecretString::from("another-secret-another-secret-another"));
        let forged = other.issue(Uuid::new_v4(), Uuid::new_v4(), Role::Admin, 60);
        assert!(k.verify(&forged).is_err());
        // alg=none: header {"alg":"none","typ":"JWT"} with the same claims and no signature.
        let valid = k.issue(Uuid::new_v4(), Uuid::new_v4(), Role::Admin, 60);
        let payload = valid.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(k.verify(&none).is_err());
    }

    #[test]
    fn credentials_issued_before_the_cutoff_second_are_refused() {
        // A password never changed, or a credential with no issue time (an API key): no cutoff.
        assert!(!refuses(None, Some(100)));
        assert!(!refuses(Some(100), None));
        // Issued in the cutoff's second or later passes; a second earlier does not.
        assert!(!refuses(Some(100), Some(100)));
        assert!(!refuses(Some(100), Some(101)));
        assert!(refuses(Some(100), Some(99)));
    }

    #[tokio::test]
    async fn headers_without_a_bearer_credential_are_missing_before_any_lookup() {
        // A lazy pool never connects: reaching the database would fail the test differently.
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        for header in [
            None,
            Some("Basic dXNlcjpwdw=="),
            Some("Bearer"),
            Some("Bearer a b"),
        ] {
            let refused = principal_from_bearer(&pool, &keys(), header).await;
            assert!(matches!(refused, Err(AuthError::Missing)), "{header:?}");
        }
        let token = keys().issue(Uuid::new_v4(), Uuid::new_v4(), Role::Admin, -3600);
        let refused = principal_from_bearer(&pool, &keys(), Some(&format!("BEARER {token}"))).await;
        assert!(
            matches!(refused, Err(AuthError::InvalidToken(_))),
            "scheme case ignored"
        );
        let refused = principal_from_bearer(&pool, &keys(), Some("bearer gpsk_short")).await;
        assert!(matches!(refused, Err(AuthError::InvalidApiKey)));
    }
}
