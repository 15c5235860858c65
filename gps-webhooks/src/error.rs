//! The crate's one error type.

/// What stops the delivery worker from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The HTTP client could not be built (TLS backend).
    #[error("webhook http client: {0}")]
    Client(#[from] reqwest::Error),
    /// A statement on `webhook_deliveries` failed.
    #[error("webhook deliveries: {0}")]
    Database(#[from] sqlx::Error),
}
