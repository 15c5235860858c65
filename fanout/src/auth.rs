//! Who may open `/v1/live`: the browser `Origin` check, then the credential (an `Authorization:
//! Bearer` JWT or API key, or a single-use `?ticket=` from the query API, whose signed value is
//! checked and whose principal is re-read from the store, since it was captured at issuance),
//! then `live:read`. Credential checks are the shared store's ([`gps_store::principal`],
//! [`gps_store::tickets`]); this module only decides which to use and maps the outcome to an
//! [`ApiError`]. Once open, a session is re-checked periodically ([`crate::recheck`]).

use crate::config::OriginPolicy;
use crate::error::ApiError;
use axum::http::{header, HeaderMap};
use gps_domain::auth::{Permission, Principal};
use gps_store::principal::{credential_from_bearer, current, AuthError, JwtKeys};
use gps_store::tickets::{redeem_ticket_issued, TicketKey};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

/// Longest ticket accepted (tickets are `gpst_` + 43 characters).
const MAX_TICKET_LEN: usize = 128;

/// How a session authenticated (for the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An `Authorization: Bearer` JWT or API key.
    Bearer,
    /// A single-use ticket.
    Ticket,
}

impl Via {
    /// Audit label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Ticket => "ticket",
        }
    }
}

/// Check the origin and the credential of an upgrade request. Returns the principal, how it
/// authenticated, and when its credential was issued (a JWT's `iat`, or when the ticket was
/// issued; `None` for an API key): the re-check closes the session once the user's credentials
/// change after that instant.
pub async fn authenticate(
    pool: &PgPool,
    redis: &ConnectionManager,
    keys: &JwtKeys,
    ticket_key: &TicketKey,
    origins: &OriginPolicy,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<(Principal, Via, Option<i64>), ApiError> {
    // Browsers always send Origin on a WebSocket handshake; other clients need not.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| ApiError::OriginNotAllowed)?;
        if !origins.allows(origin) {
            return Err(ApiError::OriginNotAllowed);
        }
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::Unauthorized("malformed authorization header"))
        })
        .transpose()?;
    let via = if authorization.is_none() && ticket.is_some() {
        Via::Ticket
    } else {
        Via::Bearer
    };
    let (principal, issued_at) = match (authorization, ticket) {
        (Some(value), _) => credential_from_bearer(pool, keys, Some(value)).await,
        (None, Some(ticket)) => {
            if ticket.is_empty() || ticket.len() > MAX_TICKET_LEN {
                return Err(ApiError::Unauthorized("invalid or used ticket"));
            }
            let mut redis = redis.clone();
            match redeem_ticket_issued(&mut redis, ticket_key, ticket).await {
                // Issued up to the ticket TTL ago: the account may have changed since.
                Ok(issued) => current(pool, &issued.principal, Some(issued.issued_at))
                    .await
                    .map(|principal| (principal, Some(issued.issued_at))),
                Err(e) => Err(e),
            }
        }
        (None, None) => Err(AuthError::Missing),
    }
    .map_err(|e| match e {
        AuthError::Missing => ApiError::Unauthorized("missing credentials"),
        AuthError::InvalidToken(_) => ApiError::Unauthorized("invalid token"),
        AuthError::InvalidApiKey => ApiError::Unauthorized("invalid api key"),
        AuthError::InvalidTicket => ApiError::Unauthorized("invalid or used ticket"),
        AuthError::Disabled => ApiError::Unauthorized("account disabled"),
        AuthError::Unavailable(detail) => ApiError::Unavailable(detail),
    })?;
    if !principal.allows(Permission::LiveRead) {
        return Err(ApiError::MissingPermission);
    }
    Ok((principal, via, issued_at))
}
