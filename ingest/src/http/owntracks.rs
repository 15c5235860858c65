//! OwnTracks HTTP mode at `/owntracks` and at the OwnTracks Recorder's `/pub` (`?u=&d=` or the
//! app's `X-Limit-U`/`X-Limit-D` headers name the user and device), decoded by
//! `gps_domain::wire::owntracks`. The device
//! authenticates with HTTP Basic (user = device uid, password = device token; a Bearer token
//! works too). A device opted in to uid-only mode may send no password (Basic with an empty
//! one, or no `Authorization` at all: the uid is then `X-Limit-U`, the app's user name); every
//! other case is one identical `401` ([`crate::auth::AuthCache::device_for_report`]).
//! `X-Limit-U`/`X-Limit-D` are never credentials. Every accepted
//! message is answered `200 []` (OwnTracks reads the body as a list of messages for it): a
//! location is produced as a fix (with a status when it carries battery or charging), `status`
//! and `transition` messages as a device status, other types only acknowledged. An encrypted
//! payload (`_type=encrypted`) is opened with the device's payload secret; without one it is a
//! `400 encryption_not_configured`, with a wrong one `400 decryption_failed`: never `200 []`
//! with nothing kept. Unknown or mismatched credentials are limited per source IP
//! ([`AppState::admit`]).

use super::{basic, bearer, body, AppState};
use crate::error::ApiError;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gps_domain::wire::owntracks::{self, OwntracksMessage};
use gps_domain::Protocol;
use std::net::{IpAddr, SocketAddr};

const UNAUTHORIZED: ApiError = ApiError::Unauthorized {
    message: "basic auth required: user = device uid, password = device token",
    basic_realm: true,
};

/// The handler.
pub async fn report(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    state
        .respond(
            Protocol::Owntracks,
            handle(&state, state.source(peer, &headers), &headers, &uri, raw),
        )
        .await
}

/// The OwnTracks user: the Recorder's `?u=` query parameter (`/pub?u=&d=`), else the app's
/// `X-Limit-U` header. A name, never a credential.
fn limit_user<'a>(headers: &'a HeaderMap, query: &'a [(String, String)]) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == "u")
        .map(|(_, v)| v.as_str())
        .or_else(|| headers.get("x-limit-u").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|u| !u.is_empty())
}

fn empty_list() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "[]",
    )
        .into_response()
}

async fn handle(
    state: &AppState,
    source: IpAddr,
    headers: &HeaderMap,
    uri: &Uri,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(uri.query().unwrap_or_default()).unwrap_or_default();
    let device = match (basic(headers), bearer(headers)) {
        // Basic: the user is the uid, the password its token; an empty password (or no
        // Authorization, the uid then read from `X-Limit-U`) asks for uid-only mode. Both go
        // through the one rule of report protocols.
        (Some((uid, password)), _) => {
            let credential = Some(password.as_str()).filter(|p| !p.is_empty());
            state.admit(source, state.auth.knows_report(&uid, credential))?;
            state.auth.device_for_report(&uid, credential).await?
        }
        // A bearer token names its device by itself, as on `/v1/fixes`.
        (None, Some(token)) => {
            state.admit(source, state.auth.knows_token(token))?;
            state.auth.device_by_token(token).await?
        }
        (None, None) => {
            let uid = limit_user(headers, &query).ok_or(UNAUTHORIZED)?;
            state.admit(source, state.auth.knows_report(uid, None))?;
            state.auth.device_for_report(uid, None).await?
        }
    };
    let Some(device) = device else {
        state.unknown_credential(source);
        return Err(UNAUTHORIZED);
    };
    let raw = body(raw)?;
    let received = |n: u64| {
        state
            .metrics
            .fixes_received
            .with_label_values(&[Protocol::Owntracks.as_str()])
            .inc_by(n)
    };
    let now = gps_domain::fix::now_millis();
    let bad =
        |e: owntracks::OwntracksError| ApiError::bad_field("invalid_field", e.field, e.message);
    let mut message = owntracks::decode(&raw, now)
        .inspect_err(|_| received(1))
        .map_err(bad)?;
    if let OwntracksMessage::Encrypted(data) = &message {
        // Payload encryption: open with the device's secret, then read the inner message.
        // Without a secret, or with the wrong one, the app must hear it: acknowledging would
        // lose every location it sends.
        let Some(secret) = &device.payload_secret else {
            received(1);
            return Err(ApiError::bad_field(
                "encryption_not_configured",
                "data",
                "the app encrypts its payload but this device has no payload secret: set the device's payload secret to the app's encryption key",
            ));
        };
        let plain = owntracks::decrypt(data, secret.expose()).map_err(|e| {
            received(1);
            ApiError::bad_field("decryption_failed", "data", e.to_string())
        })?;
        message = owntracks::decode(&plain, now)
            .inspect_err(|_| received(1))
            .map_err(bad)?;
        if matches!(message, OwntracksMessage::Encrypted(_)) {
            received(1);
            return Err(ApiError::bad_field(
                "invalid_field",
                "data",
                "an encrypted payload holds a plain message, not another encrypted one",
            ));
        }
    }
    match message {
        OwntracksMessage::Location(fix, status) => {
            received(1);
            state
                .producer
                .produce_report(Protocol::Owntracks, &device, vec![fix], status)
                .await?;
        }
        OwntracksMessage::Status(status) => {
            state
                .producer
                .produce_report(Protocol::Owntracks, &device, Vec::new(), Some(status))
                .await?;
        }
        OwntracksMessage::Encrypted(_) | OwntracksMessage::Other(_) => {}
    }
    Ok(empty_list())
}
