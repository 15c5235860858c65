//! Errors: [`IngestError`] stops the service; [`ApiError`] is every refusal a device can get,
//! with the status mapping in one `match`, answered in the shared JSON shape
//! `{"error":{"code","message","field"}}` ([`gps_runtime::http_error`]). 5xx bodies are generic;
//! the detail is logged there.

use crate::producer::{ProduceError, ProduceFailure};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gps_domain::wire::json::ItemError;
use gps_runtime::config::InvalidConfig;
use gps_runtime::http_error::ErrorResponse;

/// Errors that stop the ingest service.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A dependency or listener failed at start.
    #[error(transparent)]
    Runtime(#[from] gps_runtime::RuntimeError),
    /// The configuration is inconsistent (every problem listed).
    #[error(transparent)]
    Config(#[from] InvalidConfig),
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
    /// The source IP tried too many unknown credentials; retry after the given seconds.
    #[error("too many unknown credentials from this address")]
    RateLimited {
        /// Seconds for `Retry-After`.
        retry_after_secs: u32,
    },
    /// Kafka or PostgreSQL cannot take the request now; the device should retry.
    #[error("unavailable: {detail}")]
    Unavailable {
        /// Seconds for `Retry-After`.
        retry_after_secs: u32,
        /// Logged, not returned.
        detail: String,
    },
    /// Kafka did not take the fixes (its fixes are already counted as refused); retry later.
    #[error(transparent)]
    NotProduced(#[from] ProduceError),
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
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable { .. } => "unavailable",
            Self::NotProduced(e) => e.reason(),
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
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } | Self::NotProduced(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::auth::Unavailable> for ApiError {
    /// The credential store did not answer: retry soon.
    fn from(e: crate::auth::Unavailable) -> Self {
        Self::Unavailable {
            retry_after_secs: 1,
            detail: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.reason();
        let response = match self {
            Self::BadRequest {
                code,
                message,
                field,
            } => ErrorResponse::new(status, code, message).field(field),
            Self::InvalidItems(items) => {
                let field = items.first().map(|e| format!("{}.{}", e.index, e.field));
                ErrorResponse::new(status, "invalid_fixes", "no valid fix in the request")
                    .field(field)
                    .extra("accepted", 0.into())
                    .extra("rejected", serde_json::json!(items))
            }
            Self::Unauthorized {
                message,
                basic_realm,
            } => {
                let response = ErrorResponse::new(status, code, message);
                if basic_realm {
                    response.header(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"owntracks\""),
                    )
                } else {
                    response
                }
            }
            Self::Forbidden(message) => ErrorResponse::new(status, code, message),
            Self::TooLarge { message } => ErrorResponse::new(status, code, message),
            Self::RateLimited { retry_after_secs } => {
                ErrorResponse::new(status, code, "too many requests, retry later")
                    .retry_after(retry_after_secs.into())
            }
            Self::Unavailable {
                retry_after_secs,
                detail,
            } => unavailable(status, retry_after_secs).cause(detail),
            // Shed for overload: counted in `gps_ingest_shed_total` and summarized by the guard,
            // not logged per request.
            Self::NotProduced(e) if matches!(e.failure, ProduceFailure::Overloaded) => {
                unavailable(status, e.retry_after_secs).unlogged()
            }
            Self::NotProduced(e) => unavailable(status, e.retry_after_secs).cause(e),
            Self::Internal(detail) => {
                ErrorResponse::new(status, code, "internal error").cause(detail)
            }
        };
        response.into_response()
    }
}

/// The generic 503 body: the device only needs to know when to retry.
fn unavailable(status: StatusCode, retry_after_secs: u32) -> ErrorResponse {
    ErrorResponse::new(
        status,
        "unavailable",
        "temporarily unavailable, retry later",
    )
    .retry_after(retry_after_secs.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::ProduceFailure;

    #[test]
    fn fixes_kafka_did_not_take_are_a_503_with_the_producers_retry_hint() {
        let error = ApiError::from(ProduceError {
            failure: ProduceFailure::QueueFull,
            retry_after_secs: 7,
        });
        assert_eq!(error.reason(), "unavailable");
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }
}
