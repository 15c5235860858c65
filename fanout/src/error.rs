//! Errors: [`ServiceError`] stops the service; [`ApiError`] refuses a `/v1/live` request before
//! the WebSocket upgrade, with the status mapping in one place and the shared JSON error shape
//! `{"error":{"code","message","field"}}` ([`gps_runtime::http_error`]). 5xx bodies are
//! generic; the detail is only logged, there.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gps_runtime::http_error::ErrorResponse;

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration is invalid (every problem listed).
    #[error(transparent)]
    Config(#[from] gps_runtime::config::InvalidConfig),
    /// A dependency or listener failed at start, or a critical task stopped.
    #[error(transparent)]
    Runtime(#[from] gps_runtime::RuntimeError),
    /// Serving failed.
    #[error("http server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// A refusal before the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or bad credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Authenticated, but without `live:read`.
    #[error("forbidden: the credential lacks live:read")]
    MissingPermission,
    /// A browser origin not in the allow-list.
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// A bad query parameter.
    #[error("bad request: {message}")]
    BadRequest {
        /// The parameter.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// Not a WebSocket upgrade request.
    #[error("websocket upgrade required: {0}")]
    UpgradeRequired(String),
    /// The credential store (database or Redis) did not answer.
    #[error("credential store unavailable: {0}")]
    Unavailable(String),
    /// Too many connects from this client IP or by this principal in the current window.
    #[error("too many connects per {per}, retry in {retry_after} s")]
    RateLimited {
        /// `ip` or `principal`.
        per: &'static str,
        /// Seconds until the window ends.
        retry_after: u64,
    },
}

impl ApiError {
    /// Metric label of the refusal.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::MissingPermission => "forbidden",
            Self::OriginNotAllowed => "origin",
            Self::BadRequest { .. } => "bad_request",
            Self::UpgradeRequired(_) => "not_websocket",
            Self::Unavailable(_) => "unavailable",
            Self::RateLimited { .. } => "rate_limited",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let response = match self {
            Self::Unauthorized(reason) => ErrorResponse::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{reason}: send Authorization: Bearer <token or API key>, or ?ticket=<ticket from the query API>"),
            )
            .header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gps-live\""),
            ),
            Self::MissingPermission => ErrorResponse::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the credential lacks the live:read permission",
            ),
            Self::OriginNotAllowed => ErrorResponse::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "this browser origin may not open live connections (see FANOUT_ALLOWED_ORIGINS)",
            )
            .field(Some("Origin")),
            Self::BadRequest { field, message } => {
                ErrorResponse::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
                    .field(Some(field))
            }
            Self::UpgradeRequired(reason) => ErrorResponse::new(
                StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                format!("/v1/live speaks WebSocket only: {reason}"),
            )
            .header(header::UPGRADE, HeaderValue::from_static("websocket")),
            Self::Unavailable(detail) => ErrorResponse::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "service temporarily unavailable, retry later",
            )
            .retry_after(5)
            .cause(detail),
            Self::RateLimited { per, retry_after } => ErrorResponse::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many live connects per {per}; retry in {retry_after} s"),
            )
            .retry_after(retry_after),
        };
        response.into_response()
    }
}
