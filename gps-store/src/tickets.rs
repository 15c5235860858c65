//! Single-use live-view tickets: the query API issues one for a principal, fanout redeems it
//! once when a browser opens its WebSocket (browsers cannot set an `Authorization` header there).
//! Redis stores only the ticket's digest, with the principal as the value and a short TTL.

use crate::principal::AuthError;
use gps_domain::auth::{self, Principal};
use redis::aio::ConnectionManager;

/// Redis key prefix of live-view tickets.
const TICKET_PREFIX: &str = "gps:ticket:";

fn redis_key(ticket: &str) -> String {
    format!("{TICKET_PREFIX}{}", auth::secret_digest(ticket))
}

/// Issue a single-use ticket for `principal`, valid `ttl_secs` (at least 1).
pub async fn issue_ticket(
    redis: &mut ConnectionManager,
    principal: &Principal,
    ttl_secs: u64,
) -> Result<String, AuthError> {
    let ticket = format!("gpst_{}", auth::random_token(32));
    let value = serde_json::to_string(principal).expect("principal serializes");
    redis::cmd("SET")
        .arg(redis_key(&ticket))
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
    redis: &mut ConnectionManager,
    ticket: &str,
) -> Result<Principal, AuthError> {
    let value: Option<String> = redis::cmd("GETDEL")
        .arg(redis_key(ticket))
        .query_async(redis)
        .await
        .map_err(|e| AuthError::Unavailable(e.to_string()))?;
    let value = value.ok_or(AuthError::InvalidTicket)?;
    serde_json::from_str(&value).map_err(|_| AuthError::InvalidTicket)
}
