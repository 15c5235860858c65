//! The OsmAnd protocol (Traccar Client, the OsmAnd app, GPSLogger) at `/` and at any path no
//! other route takes, with any method (query string, form body or a Traccar Client JSON body),
//! decoded by `gps_domain::wire::osmand`. `speed` is read in the device's unit
//! (`DeviceRecord::speed_unit`); a report without a position is produced as a device status
//! (Traccar Client's heartbeats and push-token posts need a 2xx, or they block its queue). The device names itself by its uid
//! (`id`/`deviceid`/`device_id`) and proves it with its ingest token (`Authorization: Bearer`,
//! or a `token` parameter of the query or form body); only a device opted in to uid-only mode
//! may leave the token out ([`crate::auth::AuthCache::device_for_report`]). An unknown uid, a
//! missing or wrong token and a disabled device all get the same 400 `unknown_device`, as
//! Traccar answers, and cost the source IP a token of its budget for unknown credentials
//! (`429` once spent, [`AppState::admit`]). Success is `200` with an empty body once Kafka
//! acknowledged.

use super::{bearer, body, AppState};
use crate::auth::take_token_param;
use crate::error::ApiError;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gps_domain::wire::osmand::{self, OsmandError};
use gps_domain::Protocol;
use std::net::{IpAddr, SocketAddr};

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
            Protocol::Osmand,
            handle(&state, state.source(peer, &headers), &headers, &uri, raw),
        )
        .await
}

/// Any path no other route takes, as Traccar's OsmAnd port reads every path: a request that
/// carries parameters (query or body) is an OsmAnd report; one that carries nothing is a
/// `404 not_found`, so a mistyped URL is told so.
pub async fn fallback(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let names_nothing = !uri.query().is_some_and(osmand::has_params)
        && raw.as_ref().is_ok_and(|b| b.trim_ascii().is_empty());
    if names_nothing {
        return gps_runtime::http_error::ErrorResponse::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no route for {}: device reports need parameters (`?id=...&lat=...&lon=...`)",
                uri.path()
            ),
        )
        .into_response();
    }
    report(state, peer, headers, uri, raw).await
}

/// The one answer for an unknown uid, a missing or wrong token and a disabled device (Traccar's
/// 400), byte for byte the same whichever it was.
fn unknown_device() -> ApiError {
    ApiError::bad_field(
        "unknown_device",
        "id",
        "unknown device or wrong credentials",
    )
}

fn bad(e: OsmandError) -> ApiError {
    ApiError::bad_field("invalid_field", e.field, e.message)
}

async fn handle(
    state: &AppState,
    source: IpAddr,
    headers: &HeaderMap,
    uri: &Uri,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let now = gps_domain::fix::now_millis();
    // The device token: `Authorization: Bearer`, else a `token` parameter of the query, else of
    // a form body, taken off the parameters before they are decoded (never an attribute).
    let (query_token, query) = take_token_param(uri.query().unwrap_or_default().as_bytes());
    let query = String::from_utf8_lossy(&query);
    let mut credential = bearer(headers).map(str::to_owned).or(query_token);
    // Traccar reads the query string, and the body only when the query is empty.
    let report = match Some(query.as_ref()).filter(|q| osmand::has_params(q)) {
        Some(query) => osmand::decode_params(query.as_bytes(), now),
        None => {
            let raw = body(raw)?;
            if matches!(raw.trim_ascii_start().first(), Some(b'{' | b'[')) {
                osmand::decode_json(&raw, now)
            } else {
                let (form_token, form) = take_token_param(&raw);
                credential = credential.or(form_token);
                osmand::decode_params(&form, now)
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
    if report.fixes.is_empty() && report.status.is_none() {
        // Unreachable by the decoder's rules (no position means a status); never `200` with
        // nothing kept.
        return Err(ApiError::bad_field(
            "invalid_field",
            "lat",
            "no position and no status",
        ));
    }
    let credential = credential.as_deref();
    state.admit(source, state.auth.knows_report(&report.uid, credential))?;
    let Some(device) = state
        .auth
        .device_for_report(&report.uid, credential)
        .await?
    else {
        state.unknown_credential(source);
        return Err(unknown_device());
    };
    // `speed` is read in the device's unit (Traccar Client: knots; OsmAnd, GPSLogger: m/s).
    let (fixes, status) = report.into_parts(device.speed_unit);
    state
        .producer
        .produce_report(Protocol::Osmand, &device, fixes, status)
        .await?;
    Ok(StatusCode::OK.into_response())
}
