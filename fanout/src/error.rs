//! Errors: [`ServiceError`] stops the service; [`ApiError`] refuses a `/v1/live` request before
//! the WebSocket upgrade, with the status mapping in one place and the shared JSON error shape
//! `{"error":{"code","message","field"}}`. 5xx bodies are generic; the detail is only logged.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration is invalid (every problem listed).
    #[error("invalid configuration:\n{0}")]
    Config(String),
    /// A dependency or listener failed at start.
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
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, field) = match &self {
            Self::Unauthorized(reason) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{reason}: send Authorization: Bearer <token or API key>, or ?ticket=<ticket from the query API>"),
                None,
            ),
            Self::MissingPermission => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "the credential lacks the live:read permission".to_owned(),
                None,
            ),
            Self::OriginNotAllowed => (
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "this browser origin may not open live connections (see FANOUT_ALLOWED_ORIGINS)"
                    .to_owned(),
                Some("Origin"),
            ),
            Self::BadRequest { field, message } => (
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                message.clone(),
                Some(*field),
            ),
            Self::UpgradeRequired(reason) => (
                StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                format!("/v1/live speaks WebSocket only: {reason}"),
                None,
            ),
            Self::Unavailable(detail) => {
                tracing::error!(error = %detail, "credential store unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "service temporarily unavailable, retry later".to_owned(),
                    None,
                )
            }
        };
        let mut body = json!({ "error": { "code": code, "message": message } });
        if let Some(field) = field {
            body["error"]["field"] = json!(field);
        }
        let mut response = (status, Json(body)).into_response();
        match self {
            Self::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gps-live\""),
                );
            }
            Self::UpgradeRequired(_) => {
                response
                    .headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            Self::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}
