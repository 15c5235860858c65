//! Errors: [`ServiceError`] stops the service; [`ApiError`] is every failure of every route,
//! mapped to a status code here, in one `match`, and answered in the shared JSON shape
//! `{"error":{"code","message","field?"}}` ([`gps_runtime::http_error`]). 5xx bodies are
//! generic; the cause is logged there, never returned.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gps_runtime::http_error::ErrorResponse;
use gps_store::principal::AuthError;

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A dependency or listener failed at start, or a critical task stopped.
    #[error(transparent)]
    Runtime(#[from] gps_runtime::RuntimeError),
    /// Bad configuration (every problem listed).
    #[error(transparent)]
    Config(#[from] gps_runtime::config::InvalidConfig),
    /// A listener failed.
    #[error("http server failed: {0}")]
    Serve(#[from] std::io::Error),
    /// An admin command failed.
    #[error("{0}")]
    Admin(String),
}

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
    /// A 400 with a code of its own, naming the field the client must add or change (e.g.
    /// `tenant_required` at login).
    #[error("{message}")]
    NeedsField {
        /// Stable error code.
        code: &'static str,
        /// The field.
        field: &'static str,
        /// What to do.
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
    /// The change would break a rule of the current state (a 409 with its own code, e.g.
    /// `last_admin`).
    #[error("{message}")]
    StateConflict {
        /// Stable error code.
        code: &'static str,
        /// What the rule is.
        message: String,
    },
    /// Too many requests in the window.
    #[error("rate limit exceeded")]
    RateLimited {
        /// Seconds until the window resets.
        retry_after: u64,
    },
    /// The request body is larger than the API accepts.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// The tenant already runs as many history reads (exports) as it may at once.
    #[error("too many concurrent exports")]
    TooManyExports {
        /// The per-tenant limit.
        limit: usize,
        /// Seconds after which a retry may find a free slot.
        retry_after: u64,
    },
    /// A database statement ran longer than the statement timeout and was cancelled.
    #[error("query timed out")]
    QueryTimeout(String),
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
            // query_canceled: the statement timeout fired (or an operator cancelled it).
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
                Self::QueryTimeout(e.to_string())
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
        let response = match self {
            Self::BadRequest { field, message } => {
                ErrorResponse::new(StatusCode::BAD_REQUEST, "bad_request", message).field(field)
            }
            Self::NeedsField {
                code,
                field,
                message,
            } => ErrorResponse::new(StatusCode::BAD_REQUEST, code, message)
                .field(Some(field)),
            Self::Unauthorized => ErrorResponse::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid credentials",
            )
            .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
            Self::Forbidden(permission) => ErrorResponse::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this action needs the permission {permission}"),
            ),
            Self::NotFound => ErrorResponse::new(StatusCode::NOT_FOUND, "not_found", "not found"),
            Self::Conflict(message) => {
                ErrorResponse::new(StatusCode::CONFLICT, "conflict", message)
            }
            Self::StateConflict { code, message } => {
                ErrorResponse::new(StatusCode::CONFLICT, code, message)
            }
            Self::RateLimited { retry_after } => ErrorResponse::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests, retry later",
            )
            .retry_after(retry_after),
            Self::PayloadTooLarge { limit } => ErrorResponse::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is larger than {limit} bytes"),
            ),
            Self::TooManyExports { limit, retry_after } => ErrorResponse::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this tenant already runs {limit} history reads at once; retry when one has ended"
                ),
            )
            .retry_after(retry_after),
            Self::QueryTimeout(cause) => ErrorResponse::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "query_timeout",
                "the query ran longer than the database statement timeout; narrow the time range",
            )
            .cause(cause),
            Self::Unavailable(cause) => ErrorResponse::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "a dependency is unavailable, retry later",
            )
            .retry_after(5)
            .cause(cause),
            Self::Internal(cause) => ErrorResponse::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .cause(cause),
        };
        response.into_response()
    }
}

/// Result of a route.
pub type ApiResult<T> = Result<T, ApiError>;
