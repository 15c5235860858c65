//! Errors: [`IngestError`] stops the service; [`ApiError`] is every refusal a device can get,
//! with the status mapping in one `match` and the JSON shape
//! `{"error":{"code","message","field"}}`. 5xx bodies are generic; the detail is logged.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gps_domain::wire::json::ItemError;

/// Errors that stop the ingest service.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A dependency or listener failed at start.
    #[error(transparent)]
    Runtime(#[from] gps_runtime::RuntimeError),
    /// The configuration is inconsistent.
    #[error("invalid configuration:\n{0}")]
    Config(String),
    /// The Kafka producer could not be created.
    #[error("kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// A refusal, as the device sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; `field` names what is wrong when one field is.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// Human-readable reason.
        message: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// Every item of a batch was refused.
    #[error("no valid fix in the request")]
    InvalidItems(Vec<ItemError>),
    /// No, a malformed, an unknown or a disabled credential.
    #[error("{message}")]
    Unauthorized {
        /// Why (never says whether the device exists).
        message: &'static str,
        /// Ask for HTTP Basic credentials (OwnTracks).
        basic_realm: bool,
    },
    /// The credential is valid but may not do this (API key without `fixes:write`).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Body or batch over the configured cap.
    #[error("{message}")]
    TooLarge {
        /// Which cap.
        message: String,
    },
    /// Kafka or PostgreSQL cannot take the request now; the device should retry.
    #[error("unavailable: {detail}")]
    Unavailable {
        /// Seconds for `Retry-After`.
        retry_after_secs: u32,
        /// Logged, not returned.
        detail: String,
    },
    /// A bug or an unexpected failure; logged, generic answer.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming the field.
    pub fn bad_field(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let field: String = field.into();
        Self::BadRequest {
            code,
            message: message.into(),
            field: (!field.is_empty()).then_some(field),
        }
    }

    /// The metric `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::InvalidItems(_) => "invalid_field",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::TooLarge { .. } => "too_large",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } | Self::InvalidItems(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let error = |code: &str, message: &str, field: Option<&str>| {
            let mut e = serde_json::json!({ "code": code, "message": message });
            if let Some(field) = field {
                e["field"] = field.into();
            }
            e
        };
        let body = match &self {
            Self::BadRequest {
                code,
                message,
                field,
            } => serde_json::json!({ "error": error(code, message, field.as_deref()) }),
            Self::InvalidItems(items) => {
                let first = items.first();
                let field = first.map(|e| format!("{}.{}", e.index, e.field));
                serde_json::json!({
                    "error": error("invalid_fixes", &self.to_string(), field.as_deref()),
                    "accepted": 0,
                    "rejected": items,
                })
            }
            Self::Unauthorized { message, .. } => {
                serde_json::json!({ "error": error("unauthorized", message, None) })
            }
            Self::Forbidden(message) => {
                serde_json::json!({ "error": error("forbidden", message, None) })
            }
            Self::TooLarge { message } => {
                serde_json::json!({ "error": error("too_large", message, None) })
            }
            Self::Unavailable { detail, .. } => {
                tracing::warn!(error = %detail, "request refused, dependency unavailable");
                serde_json::json!({ "error": error("unavailable", "temporarily unavailable, retry later", None) })
            }
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                serde_json::json!({ "error": error("internal", "internal error", None) })
            }
        };
        let mut response = (status, Json(body)).into_response();
        match &self {
            Self::Unavailable {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Unauthorized {
                basic_realm: true, ..
            } => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"owntracks\""),
                );
            }
            _ => {}
        }
        response
    }
}
