//! The one API error type: every failure of every route maps to a status code here, in one
//! `match`, with the JSON shape `{"error":{"code","message","field?"}}`. 5xx bodies are generic;
//! the cause is logged, never returned.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gps_runtime::access::AuthError;

/// Everything a route can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; names the field when there is one.
    #[error("{message}")]
    BadRequest {
        /// The offending field, if any.
        field: Option<String>,
        /// What is wrong with it.
        message: String,
    },
    /// No valid credential.
    #[error("authentication required")]
    Unauthorized,
    /// Authenticated, but the role lacks the permission.
    #[error("missing permission {0}")]
    Forbidden(&'static str),
    /// Not there, or not the caller's tenant's (indistinguishable on purpose).
    #[error("not found")]
    NotFound,
    /// A unique constraint: the object already exists.
    #[error("{0}")]
    Conflict(String),
    /// Too many requests in the window.
    #[error("rate limit exceeded")]
    RateLimited {
        /// Seconds until the window resets.
        retry_after: u64,
    },
    /// A dependency (database, Redis) is unavailable.
    #[error("service unavailable")]
    Unavailable(String),
    /// Anything else: logged, answered as a generic 500.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    /// A 400 without a field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: None,
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::Conflict("an object with these unique fields already exists".into())
            }
            sqlx::Error::Database(db) if db.is_check_violation() => {
                Self::bad_request("a value is out of its allowed range")
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => Self::Unavailable(e.to_string()),
            _ => Self::Internal(e.to_string()),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(format!("redis: {e}"))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(reason) => Self::Unavailable(reason),
            _ => Self::Unauthorized,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, field) = match &self {
            Self::BadRequest { field, message } => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                message.clone(),
                field.clone(),
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid credentials".to_owned(),
                None,
            ),
            Self::Forbidden(permission) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this action needs the permission {permission}"),
                None,
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "not found".to_owned(),
                None,
            ),
            Self::Conflict(message) => (StatusCode::CONFLICT, "conflict", message.clone(), None),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests, retry later".to_owned(),
                None,
            ),
            Self::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "dependency unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a dependency is unavailable, retry later".to_owned(),
                    None,
                )
            }
            Self::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_owned(),
                    None,
                )
            }
        };
        let mut error = serde_json::json!({ "code": code, "message": message });
        if let Some(field) = field {
            error["field"] = field.into();
        }
        let mut response = (status, Json(serde_json::json!({ "error": error }))).into_response();
        let retry_after = match &self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            Self::Unavailable(_) => Some(5),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Result of a route.
pub type ApiResult<T> = Result<T, ApiError>;
