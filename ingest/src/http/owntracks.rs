//! OwnTracks HTTP mode at `/owntracks`, decoded by `gps_domain::wire::owntracks`. The device
//! authenticates with HTTP Basic (user = device uid, password = device token; a Bearer token
//! works too). `X-Limit-U`/`X-Limit-D` are not credentials and are ignored. Every accepted
//! message is answered `200 []` (OwnTracks reads the body as a list of messages for it);
//! non-location messages are acknowledged and not produced. Unknown or mismatched credentials
//! are limited per source IP ([`AppState::admit`]).

use super::{basic, bearer, body, AppState};
use crate::error::ApiError;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
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
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    state
        .respond(
            Protocol::Owntracks,
            handle(&state, peer.ip(), &headers, raw),
        )
        .await
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
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (user, token) = match (basic(headers), bearer(headers)) {
        (Some((user, password)), _) => (Some(user), password),
        (None, Some(token)) => (None, token.to_owned()),
        (None, None) => return Err(UNAUTHORIZED),
    };
    state.admit(source, state.auth.knows_token(&token))?;
    let device = state.auth.device_by_token(&token).await?;
    let Some(device) = device.filter(|d| user.as_ref().is_none_or(|u| *u == d.uid)) else {
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
    match owntracks::decode(&raw) {
        Ok(OwntracksMessage::Location(fix)) => {
            received(1);
            state
                .producer
                .produce(Protocol::Owntracks, vec![(device, vec![fix])])
                .await?;
            Ok(empty_list())
        }
        Ok(OwntracksMessage::Other(_)) => Ok(empty_list()),
        Err(e) => {
            received(1);
            Err(ApiError::bad_field("invalid_field", e.field, e.message))
        }
    }
}
