//! Single-use live-view tickets: the query API issues one for a principal, fanout redeems it
//! once when a browser opens its WebSocket (browsers cannot set an `Authorization` header there).
//! Redis stores only the ticket's digest as the key, with the principal as the value and a short
//! TTL.
//!
//! The value is signed: `v2.<hex HMAC-SHA256>.<payload JSON>`, the payload being the principal
//! and when the ticket was issued (`{"principal": .., "issued_at": <unix seconds>}`; `v1` values,
//! which had no issue time, are refused), the MAC computed with a
//! [`TicketKey`] derived from the JWT secret over the Redis key and the JSON. Write access to
//! Redis therefore does not become authentication: a value planted without the key, or copied
//! under another ticket's key, is refused at redemption (and the attempt logged).
//!
//! The issue time travels with the ticket because the session it opens outlives it: the query
//! API resolved the principal from a valid token when it issued the ticket, so a password change
//! after that instant must end the session ([`crate::principal::current`]).

use crate::principal::AuthError;
use gps_domain::auth::{self, Principal};
use hmac::{Hmac, Mac};
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Redis key prefix of live-view tickets.
const TICKET_PREFIX: &str = "gps:ticket:";
/// Version tag of the signed value format.
const VALUE_VERSION: &str = "v2";
/// Domain separation of the key derivation: the JWT secret signs tokens, this key only tickets.
const KEY_LABEL: &[u8] = b"gps-live-ticket-key-v1";

type HmacSha256 = Hmac<Sha256>;

/// The key that signs and checks ticket values, derived from the JWT secret (which the query
/// API and fanout already share): `HMAC-SHA256(jwt_secret, "gps-live-ticket-key-v1")`.
#[derive(Clone)]
pub struct TicketKey([u8; 32]);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(redacted)")
    }
}

impl TicketKey {
    /// The ticket key of a deployment whose JWT secret is `jwt_secret`.
    pub fn derive(jwt_secret: &SecretString) -> Self {
        let mut mac = HmacSha256::new_from_slice(jwt_secret.expose_secret().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(KEY_LABEL);
        let mut key = [0u8; 32];
        key.copy_from_slice(&mac.finalize().into_bytes());
        Self(key)
    }

    /// The MAC of `payload` stored under `redis_key` (binding the value to its ticket).
    fn mac(&self, redis_key: &str, payload: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(redis_key.as_bytes());
        mac.update(b"\n");
        mac.update(payload.as_bytes());
        mac
    }

    /// The signed Redis value of `payload` under `redis_key`.
    fn seal(&self, redis_key: &str, payload: &str) -> String {
        let tag = self.mac(redis_key, payload).finalize().into_bytes();
        format!("{VALUE_VERSION}.{}.{payload}", hex::encode(tag))
    }

    /// The payload of a signed value, if its MAC is genuine (checked in constant time).
    fn open<'v>(&self, redis_key: &str, value: &'v str) -> Option<&'v str> {
        let rest = value.strip_prefix(VALUE_VERSION)?.strip_prefix('.')?;
        let (tag, payload) = rest.split_once('.')?;
        let tag = hex::decode(tag).ok()?;
        self.mac(redis_key, payload)
            .verify_slice(&tag)
            .ok()
            .map(|()| payload)
    }
}

/// What a ticket stands for: who, and since when (unix seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redeemed {
    /// The principal the ticket was issued for, as it was then.
    pub principal: Principal,
    /// When the ticket was issued: the credential's issue time of the session it opens.
    pub issued_at: i64,
}

fn redis_key(ticket: &str) -> String {
    format!("{TICKET_PREFIX}{}", auth::secret_digest(ticket))
}

/// Issue a single-use ticket for `principal`, valid `ttl_secs` (at least 1).
pub async fn issue_ticket(
    redis: &mut ConnectionManager,
    key: &TicketKey,
    principal: &Principal,
    ttl_secs: u64,
) -> Result<String, AuthError> {
    let ticket = format!("gpst_{}", auth::random_token(32));
    let redis_key = redis_key(&ticket);
    let payload = serde_json::to_string(&Redeemed {
        principal: principal.clone(),
        issued_at: chrono::Utc::now().timestamp(),
    })
    .expect("ticket payload serializes");
    redis::cmd("SET")
        .arg(&redis_key)
        .arg(key.seal(&redis_key, &payload))
        .arg("EX")
        .arg(ttl_secs.max(1))
        .query_async::<()>(redis)
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    Ok(ticket)
}

/// Redeem a ticket: returns its principal once; a second redemption fails, and so does a value
/// not signed with `key` (planted in Redis, or copied from another ticket).
pub async fn redeem_ticket(
    redis: &mut ConnectionManager,
    key: &TicketKey,
    ticket: &str,
) -> Result<Principal, AuthError> {
    redeem_ticket_issued(redis, key, ticket)
        .await
        .map(|redeemed| redeemed.principal)
}

/// [`redeem_ticket`], also returning when the ticket was issued.
pub async fn redeem_ticket_issued(
    redis: &mut ConnectionManager,
    key: &TicketKey,
    ticket: &str,
) -> Result<Redeemed, AuthError> {
    let redis_key = redis_key(ticket);
    let value: Option<String> = redis::cmd("GETDEL")
        .arg(&redis_key)
        .query_async(redis)
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    let value = value.ok_or(AuthError::InvalidTicket)?;
    let Some(payload) = key.open(&redis_key, &value) else {
        // Not a value this deployment wrote: someone with Redis access, or another secret.
        tracing::warn!("live ticket refused: its stored value fails the signature check");
        return Err(AuthError::InvalidTicket);
    };
    serde_json::from_str(payload).map_err(|_| AuthError::InvalidTicket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> TicketKey {
        TicketKey::derive(&SecretString::from(secret.to_owned()))
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_redis_key() {
        let k = key("0123456789abcdef0123456789abcdef");
        let sealed = k.seal("gps:ticket:a", r#"{"x":1}"#);
        assert_eq!(k.open("gps:ticket:a", &sealed), Some(r#"{"x":1}"#));
        // Another deployment's key, another ticket's Redis key.
        assert_eq!(
            key("another-secret-another-secret-xx").open("gps:ticket:a", &sealed),
            None
        );
        assert_eq!(k.open("gps:ticket:b", &sealed), None);
    }

    #[test]
    fn unsigned_tampered_and_malformed_values_are_refused() {
        let k = key("0123456789abcdef0123456789abcdef");
        let sealed = k.seal("gps:ticket:a", r#"{"role":"viewer"}"#);
        let tampered = sealed.replace("viewer", "admin");
        for value in [
            r#"{"tenant_id":"00000000-0000-0000-0000-000000000000"}"#,
            tampered.as_str(),
            "v2..{}",
            "v2.zz.{}",
            "v1.00.{}",
            "v3.00.{}",
            "",
        ] {
            assert_eq!(k.open("gps:ticket:a", value), None, "{value}");
        }
    }

    #[test]
    fn the_key_is_not_the_jwt_secret_and_never_printed() {
        let secret = "0123456789abcdef0123456789abcdef";
        let k = key(secret);
        assert_ne!(&k.0[..], secret.as_bytes());
        assert_eq!(format!("{k:?}"), "TicketKey(redacted)");
    }
}
