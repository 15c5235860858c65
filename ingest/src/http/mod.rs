//! The device-facing HTTP API: `POST /v1/fixes` ([`json`]), the OsmAnd protocol (Traccar
//! Client, the OsmAnd app, GPSLogger) at `/` and, like Traccar's OsmAnd port, at any path no
//! other route takes ([`osmand`]), and OwnTracks at `/owntracks` and the Recorder's `/pub`
//! ([`owntracks`]), merged with the operational router (`/healthz`, `/readyz`, `/metrics`). Shared here: the state, body and credential extraction, the per-source limit on
//! unknown credentials ([`AppState::admit`]), and per-request metrics. Producing a request's
//! envelopes is [`crate::producer::FixProducer::produce`].
//!
//! Unknown credentials cost database lookups and enumerate uids, so each one (an unknown or
//! disabled token, uid or API key, a wrong secret) takes a token from its source IP's bucket
//! (`--unknown-credential-per-sec`, `--unknown-credential-burst`). A source out of tokens gets
//! `429` with `Retry-After` before any lookup, unless the cache knows its credential as valid:
//! known devices behind the same address are never slowed down. The buckets are per ingest
//! instance, in memory. The source is the TCP peer, or behind a proxy listed in `TRUSTED_PROXIES`
//! the client it names in `X-Forwarded-For` ([`AppState::source`]); without that setting every
//! client behind a reverse proxy shares the proxy's bucket.

pub mod json;
pub mod osmand;
pub mod owntracks;

use crate::auth::{retry_after_secs, AuthCache, SourceLimiter};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::producer::FixProducer;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use bytes::Bytes;
use gps_domain::Protocol;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared state of the device endpoints.
#[derive(Clone)]
pub struct AppState {
    /// Credential lookups.
    pub auth: Arc<AuthCache>,
    /// The Kafka producer.
    pub producer: FixProducer,
    /// Metrics.
    pub metrics: Metrics,
    /// Most fixes per `POST /v1/fixes`.
    pub max_batch: usize,
    /// Unknown credentials per source IP.
    pub unknown_credentials: Arc<SourceLimiter>,
    /// The reverse proxies whose `X-Forwarded-For` names the source (`TRUSTED_PROXIES`).
    pub trusted_proxies: gps_runtime::client_ip::TrustedProxies,
}

/// The device routes plus `ops` (health and metrics), with the body cap and request timeout.
pub fn router(
    state: AppState,
    ops: Router,
    max_body_bytes: usize,
    request_timeout: Duration,
) -> Router {
    Router::new()
        .route("/v1/fixes", post(json::post_fixes))
        .route("/", any(osmand::report))
        .route("/owntracks", post(owntracks::report))
        .route("/pub", post(owntracks::report))
        // Traccar's OsmAnd port ignores the path: any path no other route takes is OsmAnd.
        .fallback(osmand::fallback)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .merge(ops)
}

impl AppState {
    /// The source IP of a request from `peer`: the client behind a trusted proxy, else the
    /// TCP peer (an untrusted peer's `X-Forwarded-For` is ignored).
    pub fn source(&self, peer: std::net::SocketAddr, headers: &HeaderMap) -> IpAddr {
        self.trusted_proxies.client_ip(peer.ip(), headers)
    }

    /// Let a request from `source` look its credential up: always when `known` (the cache
    /// knows the credential as valid), else only while the source has tokens left for unknown
    /// credentials; `429` otherwise, before any database query.
    pub fn admit(&self, source: IpAddr, known: bool) -> Result<(), ApiError> {
        if known {
            return Ok(());
        }
        self.unknown_credentials
            .check(source)
            .map_err(|wait| ApiError::RateLimited {
                retry_after_secs: retry_after_secs(wait),
            })
    }

    /// A credential from `source` was unknown, disabled or wrong: it costs the source a token.
    pub fn unknown_credential(&self, source: IpAddr) {
        let _ = self.unknown_credentials.take(source);
    }

    /// Run one request's handler, record its outcome and turn it into a response.
    pub async fn respond(
        &self,
        protocol: Protocol,
        handler: impl Future<Output = Result<Response, ApiError>>,
    ) -> Response {
        let started = Instant::now();
        let response = match handler.await {
            Ok(response) => response,
            Err(error) => {
                if !matches!(error, ApiError::InvalidItems(_) | ApiError::NotProduced(_)) {
                    // Item-level refusals and fixes Kafka did not take are counted per fix
                    // where they are made.
                    self.metrics.refused(protocol, error.reason(), 1);
                }
                error.into_response()
            }
        };
        self.metrics
            .requests
            .with_label_values(&[protocol.as_str(), response.status().as_str()])
            .inc();
        self.metrics
            .request_seconds
            .with_label_values(&[protocol.as_str()])
            .observe(started.elapsed().as_secs_f64());
        response
    }
}

/// The body, or the API's own error for an oversized or unreadable one.
pub fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge {
                message: "request body exceeds the configured limit".into(),
            }
        } else {
            ApiError::bad_field("unreadable_body", "", rejection.body_text())
        }
    })
}

/// The bearer token of the `Authorization` header, if any, by the one bearer parser
/// ([`gps_domain::auth::bearer_token`]).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    gps_domain::auth::bearer_token(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// User and password of HTTP Basic `Authorization`, if any.
pub fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// 401 for a device endpoint.
pub const UNAUTHORIZED: ApiError = ApiError::Unauthorized {
    message: "missing, unknown or disabled credential",
    basic_realm: false,
};

/// Answer helper: status and JSON.
pub fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    (status, axum::Json(value)).into_response()
}
