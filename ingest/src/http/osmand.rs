//! Traccar Client / OsmAnd at `/` (GET or POST; query string, form body or the Traccar Client
//! JSON body), decoded by `gps_domain::wire::osmand`. Like Traccar, the device is named by its
//! uid alone (`id`/`deviceid`/`device_id`), with no secret; an unknown or disabled uid gets 400,
//! as Traccar answers, and costs the source IP a token of its budget for unknown credentials
//! (`429` once spent, [`AppState::admit`]). Success is `200` with an empty body once Kafka
//! acknowledged.

use super::{body, AppState};
use crate::error::ApiError;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gps_domain::wire::osmand::{self, OsmandError};
use gps_domain::Protocol;
use std::net::{IpAddr, SocketAddr};

/// The handler.
pub async fn report(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    state
        .respond(Protocol::Osmand, handle(&state, peer.ip(), &uri, raw))
        .await
}

fn bad(e: OsmandError) -> ApiError {
    ApiError::bad_field("invalid_field", e.field, e.message)
}

async fn handle(
    state: &AppState,
    source: IpAddr,
    uri: &Uri,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let now = gps_domain::fix::now_millis();
    // Traccar reads the query string, and the body only when the query is empty.
    let report = match uri.query().filter(|q| osmand::has_params(q)) {
        Some(query) => osmand::decode_params(query.as_bytes(), now),
        None => {
            let raw = body(raw)?;
            if raw.trim_ascii_start().starts_with(b"{") {
                osmand::decode_json(&raw)
            } else {
                osmand::decode_params(&raw, now)
            }
        }
    };
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            state
                .metrics
                .fixes_received
                .with_label_values(&[Protocol::Osmand.as_str()])
                .inc();
            return Err(bad(e));
        }
    };
    state
        .metrics
        .fixes_received
        .with_label_values(&[Protocol::Osmand.as_str()])
        .inc_by(report.fixes.len() as u64);
    state.admit(source, state.auth.knows_uid(&report.uid))?;
    let Some(device) = state.auth.device_by_uid(&report.uid).await? else {
        state.unknown_credential(source);
        return Err(ApiError::bad_field(
            "unknown_device",
            "id",
            "unknown device",
        ));
    };
    state
        .producer
        .produce(Protocol::Osmand, vec![(device, report.fixes)])
        .await?;
    Ok(StatusCode::OK.into_response())
}
