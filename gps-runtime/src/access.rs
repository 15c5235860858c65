//! Who is calling and what may they see: the principal behind a bearer credential (user JWT or
//! API key), single-use WebSocket tickets, and device visibility by role, group and tenant.
//! Shared by the query API (which issues tokens and tickets) and fanout (which accepts them), so
//! that both enforce the same rules.
//!
//! Tenancy rule: every lookup is scoped by the principal's tenant; a device of another tenant is
//! indistinguishable from one that does not exist.

use gps_domain::auth::{
    self, AccessClaims, DeviceScope, Permission, Role, JWT_AUDIENCE, JWT_ISSUER,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::HashSet;
use uuid::Uuid;

/// Why a credential was refused. Every variant maps to 401 at the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential was presented.
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

/// What kind of caller a principal is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A logged-in user.
    User {
        /// User id.
        user_id: Uuid,
        /// The user's role.
        role: Role,
    },
    /// An API key acting for its tenant with its scopes.
    ApiKey {
        /// API key row id.
        key_id: Uuid,
        /// Permission names the key carries.
        scopes: Vec<String>,
    },
}

/// An authenticated caller, always bound to one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The tenant every query is scoped to.
    pub tenant_id: Uuid,
    /// Who it is.
    pub actor: Actor,
}

impl Principal {
    /// Whether the principal holds `permission`.
    pub fn allows(&self, permission: Permission) -> bool {
        match &self.actor {
            Actor::User { role, .. } => role.allows(permission),
            Actor::ApiKey { scopes, .. } => scopes.iter().any(|s| s == permission.as_str()),
        }
    }

    /// Which devices the principal's read permissions reach. API keys act for the whole tenant.
    pub fn device_scope(&self) -> DeviceScope {
        match &self.actor {
            Actor::User { role, .. } => role.device_scope(),
            Actor::ApiKey { .. } => DeviceScope::Tenant,
        }
    }

    /// Audit-log actor kind and id.
    pub fn audit_actor(&self) -> (&'static str, Uuid) {
        match &self.actor {
            Actor::User { user_id, .. } => ("user", *user_id),
            Actor::ApiKey { key_id, .. } => ("api_key", *key_id),
        }
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

/// Resolve an `Authorization` header value (`Bearer <jwt or api key>`) to a principal.
pub async fn principal_from_bearer(
    pool: &PgPool,
    keys: &JwtKeys,
    header_value: Option<&str>,
) -> Result<Principal, AuthError> {
    let value = header_value.ok_or(AuthError::Missing)?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthError::Missing)?
        .trim();
    if token.starts_with(auth::API_KEY_PREFIX) {
        return principal_from_api_key(pool, token).await;
    }
    let claims = keys.verify(token)?;
    // A disabled or deleted user loses access at once, not at token expiry.
    let active: Option<bool> =
        sqlx::query_scalar("SELECT NOT disabled FROM users WHERE id = $1 AND tenant_id = $2")
            .bind(claims.sub)
            .bind(claims.tid)
            .fetch_optional(pool)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    if active != Some(true) {
        return Err(AuthError::Disabled);
    }
    Ok(Principal {
        tenant_id: claims.tid,
        actor: Actor::User {
            user_id: claims.sub,
            role: claims.role,
        },
    })
}

/// Resolve an API key (`gpsk_<id>_<secret>`): known, hash matches, not revoked, not expired.
/// Records `last_used_at` (at most once a minute per key, to keep the hot path read-only).
pub async fn principal_from_api_key(
    pool: &PgPool,
    presented: &str,
) -> Result<Principal, AuthError> {
    let id = auth::api_key_id(presented).ok_or(AuthError::InvalidApiKey)?;
    let row: Option<(Uuid, Uuid, String, Vec<String>, bool)> = sqlx::query_as(
        "SELECT id, tenant_id, key_hash, scopes,
                revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
         FROM api_keys WHERE prefix = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    let Some((key_id, tenant_id, key_hash, scopes, usable)) = row else {
        return Err(AuthError::InvalidApiKey);
    };
    if !auth::digests_equal(&key_hash, &auth::secret_digest(presented)) || !usable {
        return Err(AuthError::InvalidApiKey);
    }
    let _ = sqlx::query(
        "UPDATE api_keys SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(key_id)
    .execute(pool)
    .await;
    Ok(Principal {
        tenant_id,
        actor: Actor::ApiKey { key_id, scopes },
    })
}

/// Redis key prefix of live-view tickets.
const TICKET_PREFIX: &str = "gps:ticket:";

/// Issue a single-use ticket for `principal`, valid `ttl_secs`, for browser WebSocket auth.
/// Redis stores only the ticket's digest.
pub async fn issue_ticket(
    redis: &mut redis::aio::ConnectionManager,
    principal: &Principal,
    ttl_secs: u64,
) -> Result<String, AuthError> {
    let ticket = format!("gpst_{}", auth::random_token(32));
    let key = format!("{TICKET_PREFIX}{}", auth::secret_digest(&ticket));
    let value = serde_json::to_string(principal).expect("principal serializes");
    redis::cmd("SET")
        .arg(&key)
        .arg(value)
        .arg("EX")
        .arg(ttl_secs.max(1))
        .query_async::<()>(redis)
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    Ok(ticket)
}

/// Redeem a ticket: returns its principal once; a second redemption fails.
pub async fn redeem_ticket(
    redis: &mut redis::aio::ConnectionManager,
    ticket: &str,
) -> Result<Principal, AuthError> {
    let key = format!("{TICKET_PREFIX}{}", auth::secret_digest(ticket));
    let value: Option<String> = redis::cmd("GETDEL")
        .arg(&key)
        .query_async(redis)
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    let value = value.ok_or(AuthError::InvalidTicket)?;
    serde_json::from_str(&value).map_err(|_| AuthError::InvalidTicket)
}

/// The devices a principal may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// Every device of the tenant.
    AllOfTenant(Uuid),
    /// Exactly these devices (all of the principal's tenant).
    Only(HashSet<Uuid>),
}

impl Visibility {
    /// Whether `device` (already known to be of `tenant`) is visible.
    pub fn contains(&self, tenant: Uuid, device: Uuid) -> bool {
        match self {
            Self::AllOfTenant(t) => *t == tenant,
            Self::Only(devices) => devices.contains(&device),
        }
    }
}

/// The devices `principal` may read, by role scope and group membership.
pub async fn visibility(pool: &PgPool, principal: &Principal) -> Result<Visibility, sqlx::Error> {
    match (&principal.actor, principal.device_scope()) {
        (_, DeviceScope::Tenant) => Ok(Visibility::AllOfTenant(principal.tenant_id)),
        (Actor::User { user_id, .. }, DeviceScope::Groups) => {
            let ids: Vec<Uuid> = sqlx::query_scalar(
                "SELECT DISTINCT gd.device_id
                 FROM group_members gm
                 JOIN groups g ON g.id = gm.group_id AND g.tenant_id = $2
                 JOIN group_devices gd ON gd.group_id = g.id
                 JOIN devices d ON d.id = gd.device_id AND d.tenant_id = $2
                 WHERE gm.user_id = $1",
            )
            .bind(user_id)
            .bind(principal.tenant_id)
            .fetch_all(pool)
            .await?;
            Ok(Visibility::Only(ids.into_iter().collect()))
        }
        _ => Ok(Visibility::Only(HashSet::new())),
    }
}

/// Whether `principal` may read `device_id`: it exists in the principal's tenant and the role's
/// scope reaches it. `false` for another tenant's device (callers answer 404).
pub async fn can_read_device(
    pool: &PgPool,
    principal: &Principal,
    device_id: Uuid,
) -> Result<bool, sqlx::Error> {
    match (&principal.actor, principal.device_scope()) {
        (_, DeviceScope::Tenant) => {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1 AND tenant_id = $2)",
            )
            .bind(device_id)
            .bind(principal.tenant_id)
            .fetch_one(pool)
            .await
        }
        (Actor::User { user_id, .. }, DeviceScope::Groups) => {
            sqlx::query_scalar(
                "SELECT EXISTS (
                    SELECT 1 FROM group_members gm
                    JOIN groups g ON g.id = gm.group_id AND g.tenant_id = $3
                    JOIN group_devices gd ON gd.group_id = g.id AND gd.device_id = $2
                    JOIN devices d ON d.id = gd.device_id AND d.tenant_id = $3
                    WHERE gm.user_id = $1)",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(principal.tenant_id)
            .fetch_one(pool)
            .await
        }
        _ => Ok(false),
    }
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
    fn api_key_scopes_are_the_permissions() {
        let p = Principal {
            tenant_id: Uuid::new_v4(),
            actor: Actor::ApiKey {
                key_id: Uuid::new_v4(),
                scopes: vec!["positions:read".into()],
            },
        };
        assert!(p.allows(Permission::PositionsRead));
        assert!(!p.allows(Permission::FixesWrite));
        assert_eq!(p.device_scope(), DeviceScope::Tenant);
    }
}
