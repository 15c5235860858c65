//! The one JSON error body every HTTP API answers with:
//! `{"error":{"code","message","field?"}, ...extra}`, with `Retry-After` and other headers as
//! the refusal needs. Each service keeps its own error enum and its one status `match`, and
//! turns each variant into an [`ErrorResponse`]. The cause of a 5xx is logged here, in one place,
//! and never sent: 5xx messages are generic.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::fmt::Display;

/// A refusal in the shared shape; build it with the methods, answer it with `into_response`.
#[derive(Debug)]
pub struct ErrorResponse {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    extra: serde_json::Map<String, serde_json::Value>,
    headers: HeaderMap,
    cause: Option<String>,
    /// False for refusals counted elsewhere, too many to log one by one (ingest's sheds).
    logged: bool,
}

impl ErrorResponse {
    /// `status` with `{"error":{"code":code,"message":message}}`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            extra: serde_json::Map::new(),
            headers: HeaderMap::new(),
            cause: None,
            logged: true,
        }
    }

    /// Name the field at fault (`error.field`), when there is one.
    pub fn field(mut self, field: Option<impl Into<String>>) -> Self {
        self.field = field.map(Into::into);
        self
    }

    /// A top-level member beside `error` (ingest's `accepted`/`rejected`).
    pub fn extra(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// `Retry-After: secs` (at least 1: "retry now" is not a hint).
    pub fn retry_after(self, secs: u64) -> Self {
        self.header(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
    }

    /// Any other header (`WWW-Authenticate`, `Upgrade`).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The detail behind a 5xx: logged when answered, never returned.
    pub fn cause(mut self, cause: impl Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// Not logged when answered: a refusal a metric counts and its service summarizes (a
    /// request shed for overload), where a line per request would cost more than the answer.
    pub fn unlogged(mut self) -> Self {
        self.logged = false;
        self
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body, as sent.
    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(field) = &self.field {
            error["field"] = field.as_str().into();
        }
        let mut body = serde_json::Map::with_capacity(1 + self.extra.len());
        body.insert("error".to_owned(), error);
        body.extend(self.extra.clone());
        body.into()
    }

    fn log(&self) {
        if !self.logged || !self.status.is_server_error() {
            return;
        }
        let cause = self.cause.as_deref().unwrap_or("unknown");
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(
                code = self.code,
                cause,
                "request refused, dependency unavailable"
            );
        } else {
            tracing::error!(
                status = self.status.as_u16(),
                code = self.code,
                cause,
                "request failed"
            );
        }
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.status, Json(self.body())).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_appears_only_when_named() {
        let plain = ErrorResponse::new(StatusCode::NOT_FOUND, "not_found", "not found");
        assert_eq!(
            plain.body(),
            serde_json::json!({ "error": { "code": "not_found", "message": "not found" } })
        );
        let named = ErrorResponse::new(StatusCode::BAD_REQUEST, "bad_request", "too far")
            .field(Some("lat"))
            .extra("accepted", 0.into());
        assert_eq!(
            named.body(),
            serde_json::json!({
                "error": { "code": "bad_request", "message": "too far", "field": "lat" },
                "accepted": 0,
            })
        );
    }

    #[test]
    fn headers_and_retry_after_are_sent_and_the_cause_is_not() {
        let response = ErrorResponse::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "retry")
            .retry_after(0)
            .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
            .cause("pool timed out");
        assert!(!response.body().to_string().contains("pool timed out"));
        let response = response.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
