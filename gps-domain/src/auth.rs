//! The access vocabulary: roles and their `resource:action` permissions, the authenticated
//! [`Principal`] and the devices it may see ([`Visibility`]), the JWT claims every service agrees
//! on, the one parser of `Authorization: Bearer` headers ([`bearer_token`]), and the formats and
//! hashes of device tokens and API keys.
//!
//! Credentials with high entropy (device tokens, API keys, refresh tokens) are stored as SHA-256
//! digests: a slow password hash adds nothing against guessing 256 random bits and would cost a
//! hash per request. Passwords (low entropy) use argon2, in the query API.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// JWT issuer every service expects.
pub const JWT_ISSUER: &str = "gps-telemetry";
/// JWT audience every service expects.
pub const JWT_AUDIENCE: &str = "gps-api";

/// The built-in roles of the design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in its tenant.
    Admin,
    /// Devices and groups, all data of the tenant.
    Manager,
    /// Read and export history and summaries of all devices, live view.
    Analyst,
    /// Live view and history of the devices in its groups only.
    Viewer,
    /// Ingest its own fixes, nothing else.
    Device,
}

/// Which devices a principal's read permissions reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceScope {
    /// Every device of the tenant.
    Tenant,
    /// Only devices in the principal's groups.
    Groups,
    /// Only the device itself.
    OwnDevice,
}

impl Role {
    /// Every role, in decreasing power.
    pub const ALL: [Role; 5] = [
        Self::Admin,
        Self::Manager,
        Self::Analyst,
        Self::Viewer,
        Self::Device,
    ];

    /// Stable lowercase name (database and token form).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Manager => "manager",
            Self::Analyst => "analyst",
            Self::Viewer => "viewer",
            Self::Device => "device",
        }
    }

    /// The permissions this role grants. The migration seeds the same table; a test in
    /// `gps-runtime` keeps the two in step.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Self::Admin => &[
                UsersRead,
                UsersWrite,
                RolesWrite,
                KeysRead,
                KeysWrite,
                DevicesRead,
                DevicesWrite,
                GroupsRead,
                GroupsWrite,
                AuditRead,
                PositionsRead,
                PositionsExport,
                LiveRead,
                FixesWrite,
                GeofencesRead,
                GeofencesWrite,
                EventsRead,
                WebhooksWrite,
            ],
            Self::Manager => &[
                DevicesRead,
                DevicesWrite,
                GroupsRead,
                GroupsWrite,
                PositionsRead,
                PositionsExport,
                LiveRead,
                GeofencesRead,
                GeofencesWrite,
                EventsRead,
                WebhooksWrite,
            ],
            Self::Analyst => &[
                DevicesRead,
                GroupsRead,
                PositionsRead,
                PositionsExport,
                LiveRead,
                GeofencesRead,
                EventsRead,
            ],
            Self::Viewer => &[
                DevicesRead,
                GroupsRead,
                PositionsRead,
                LiveRead,
                GeofencesRead,
                EventsRead,
            ],
            Self::Device => &[FixesWrite],
        }
    }

    /// Whether the role grants `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }

    /// Which devices the role's read permissions reach.
    pub fn device_scope(self) -> DeviceScope {
        match self {
            Self::Admin | Self::Manager | Self::Analyst => DeviceScope::Tenant,
            Self::Viewer => DeviceScope::Groups,
            Self::Device => DeviceScope::OwnDevice,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`"))
    }
}

/// A permission, `resource:action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `users:read`
    UsersRead,
    /// `users:write`
    UsersWrite,
    /// `roles:write` (assign roles)
    RolesWrite,
    /// `keys:read`
    KeysRead,
    /// `keys:write`
    KeysWrite,
    /// `devices:read`
    DevicesRead,
    /// `devices:write`
    DevicesWrite,
    /// `groups:read`
    GroupsRead,
    /// `groups:write`
    GroupsWrite,
    /// `audit:read`
    AuditRead,
    /// `positions:read` (history, latest, summaries)
    PositionsRead,
    /// `positions:export` (GPX, CSV, GeoJSON downloads)
    PositionsExport,
    /// `live:read` (WebSocket live view)
    LiveRead,
    /// `fixes:write` (ingest)
    FixesWrite,
    /// `geofences:read`
    GeofencesRead,
    /// `geofences:write`
    GeofencesWrite,
    /// `events:read` (a group-scoped role: its groups' devices' events only)
    EventsRead,
    /// `webhooks:write` (webhooks and their delivery log)
    WebhooksWrite,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 18] = [
        Self::UsersRead,
        Self::UsersWrite,
        Self::RolesWrite,
        Self::KeysRead,
        Self::KeysWrite,
        Self::DevicesRead,
        Self::DevicesWrite,
        Self::GroupsRead,
        Self::GroupsWrite,
        Self::AuditRead,
        Self::PositionsRead,
        Self::PositionsExport,
        Self::LiveRead,
        Self::FixesWrite,
        Self::GeofencesRead,
        Self::GeofencesWrite,
        Self::EventsRead,
        Self::WebhooksWrite,
    ];

    /// The `resource:action` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UsersRead => "users:read",
            Self::UsersWrite => "users:write",
            Self::RolesWrite => "roles:write",
            Self::KeysRead => "keys:read",
            Self::KeysWrite => "keys:write",
            Self::DevicesRead => "devices:read",
            Self::DevicesWrite => "devices:write",
            Self::GroupsRead => "groups:read",
            Self::GroupsWrite => "groups:write",
            Self::AuditRead => "audit:read",
            Self::PositionsRead => "positions:read",
            Self::PositionsExport => "positions:export",
            Self::LiveRead => "live:read",
            Self::FixesWrite => "fixes:write",
            Self::GeofencesRead => "geofences:read",
            Self::GeofencesWrite => "geofences:write",
            Self::EventsRead => "events:read",
            Self::WebhooksWrite => "webhooks:write",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown permission `{s}`"))
    }
}

/// Whether API-key `scopes` (permission names) grant `permission`: the one scope rule, used for
/// principals acting through a key and by ingest's gateway check alike.
pub fn scopes_allow(scopes: &[String], permission: Permission) -> bool {
    scopes.iter().any(|s| s == permission.as_str())
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
            Actor::ApiKey { scopes, .. } => scopes_allow(scopes, permission),
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

/// The credential of an `Authorization` header value of the `Bearer` scheme (RFC 6750), or `None`
/// when the header carries no usable bearer credential. The one parser every service uses:
///
/// - the scheme is compared case-insensitively (RFC 7235 §2.1): `Bearer`, `bearer`, `BEARER`;
/// - scheme and credential are separated by one or more spaces, and surrounding whitespace is
///   trimmed;
/// - exactly one credential follows: empty, or containing whitespace (`Bearer a b`), is refused.
pub fn bearer_token(authorization_header_value: &str) -> Option<&str> {
    let (scheme, rest) = authorization_header_value.trim().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && !token.contains(|c: char| c.is_whitespace() || c.is_control()))
    .then_some(token)
}

/// Claims of a user access token (HS256 JWT signed with `JWT_SECRET`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// User id.
    pub sub: Uuid,
    /// Tenant id.
    pub tid: Uuid,
    /// Role name.
    pub role: Role,
    /// Issuer, [`JWT_ISSUER`].
    pub iss: String,
    /// Audience, [`JWT_AUDIENCE`].
    pub aud: String,
    /// Expiry, seconds since epoch.
    pub exp: i64,
    /// Not before, seconds since epoch.
    pub nbf: i64,
    /// Issued at, seconds since epoch.
    pub iat: i64,
    /// Token id.
    pub jti: Uuid,
}

/// Prefix of device ingest tokens.
pub const DEVICE_TOKEN_PREFIX: &str = "gpsd_";
/// Prefix of API keys.
pub const API_KEY_PREFIX: &str = "gpsk_";
/// Length of the lookup id inside an API key (after [`API_KEY_PREFIX`]).
pub const API_KEY_ID_LEN: usize = 12;

/// SHA-256 hex digest of a high-entropy secret (device token, API key, refresh token, ticket).
pub fn secret_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two digests.
pub fn digests_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// `n` random bytes as unpadded base64url.
pub fn random_token(n: usize) -> String {
    use rand::RngCore;
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh device ingest token (`gpsd_` + 256 random bits).
pub fn new_device_token() -> String {
    format!("{DEVICE_TOKEN_PREFIX}{}", random_token(32))
}

/// A fresh UDP HMAC key, 32 random bytes.
pub fn new_udp_key() -> [u8; 32] {
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    key
}

/// A freshly minted API key: the full key (shown once) and its lookup id (stored in clear).
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// `gpsk_<id>_<secret>`, shown to the user once.
    pub key: String,
    /// The visible lookup id (`<id>`), stored in clear as the key's prefix.
    pub id: String,
}

/// Mint an API key.
pub fn new_api_key() -> NewApiKey {
    let id: String = random_token(12)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .chain(std::iter::repeat('x'))
        .take(API_KEY_ID_LEN)
        .collect();
    let key = format!("{API_KEY_PREFIX}{id}_{}", random_token(32));
    NewApiKey { key, id }
}

/// The lookup id of a presented API key, if it has the API key shape.
pub fn api_key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(API_KEY_PREFIX)?;
    let (id, secret) = rest.split_at_checked(API_KEY_ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    (id.chars().all(|c| c.is_ascii_alphanumeric()) && secret.len() >= 16).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_and_permission_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), p);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn roles_grant_what_the_design_says() {
        assert!(Role::Admin.allows(Permission::AuditRead));
        assert!(!Role::Manager.allows(Permission::UsersWrite));
        assert!(Role::Manager.allows(Permission::GroupsWrite));
        assert!(Role::Analyst.allows(Permission::PositionsExport));
        assert!(!Role::Analyst.allows(Permission::DevicesWrite));
        assert!(!Role::Viewer.allows(Permission::PositionsExport));
        assert_eq!(Role::Viewer.device_scope(), DeviceScope::Groups);
        assert_eq!(Role::Device.permissions(), &[Permission::FixesWrite]);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_takes_one_token() {
        for value in [
            "Bearer abc.def",
            "bearer abc.def",
            "BEARER abc.def",
            "BeArEr abc.def",
            "Bearer   abc.def  ",
            "  Bearer abc.def",
        ] {
            assert_eq!(bearer_token(value), Some("abc.def"), "{value:?}");
        }
        for value in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Bearer a b",
            "Bearer a\tb",
            "Bearerabc",
            "Basic abc",
            "Bearer\tabc",
            "Token abc",
            "Bearer, abc",
        ] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
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
        assert_eq!(p.audit_actor().0, "api_key");
    }

    #[test]
    fn user_principals_follow_their_role_and_survive_a_round_trip() {
        let user_id = Uuid::new_v4();
        let p = Principal {
            tenant_id: Uuid::new_v4(),
            actor: Actor::User {
                user_id,
                role: Role::Viewer,
            },
        };
        assert!(p.allows(Permission::LiveRead));
        assert!(!p.allows(Permission::PositionsExport));
        assert_eq!(p.device_scope(), DeviceScope::Groups);
        assert_eq!(p.audit_actor(), ("user", user_id));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Principal>(&json).unwrap(), p);
    }

    #[test]
    fn visibility_is_tenant_or_an_explicit_set() {
        let (tenant, device, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(Visibility::AllOfTenant(tenant).contains(tenant, device));
        assert!(!Visibility::AllOfTenant(tenant).contains(other, device));
        let only = Visibility::Only(HashSet::from([device]));
        assert!(only.contains(tenant, device));
        assert!(!only.contains(tenant, other));
    }

    #[test]
    fn api_keys_parse_back_to_their_id() {
        let minted = new_api_key();
        assert_eq!(api_key_id(&minted.key), Some(minted.id.as_str()));
        assert_eq!(api_key_id("gpsk_short"), None);
        assert_eq!(api_key_id("Bearer something"), None);
        assert_ne!(new_api_key().key, minted.key);
    }

    #[test]
    fn digests_are_stable_and_compared_exactly() {
        let token = new_device_token();
        assert!(token.starts_with(DEVICE_TOKEN_PREFIX));
        let d = secret_digest(&token);
        assert_eq!(d.len(), 64);
        assert!(digests_equal(&d, &secret_digest(&token)));
        assert!(!digests_equal(&d, &secret_digest("other")));
    }
}
