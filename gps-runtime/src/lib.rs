//! Runtime plumbing shared by the four services.
//!
//! Each service's `main` parses its typed config ([`config`]), sets up [`telemetry`], creates a
//! [`shutdown::Shutdown`] handle, binds its listeners and calls its library's `run`, which wires
//! its tasks into a [`service::Service`] runner (named tasks, critical exits, one drain deadline).
//! The health and metrics endpoints every service exposes come from [`ops`], the JSON error body
//! of the HTTP APIs from [`http_error`]; connections to PostgreSQL, Kafka and
//! Redis, with errors that say how to start a missing dependency, come from [`db`], [`kafka`] and
//! [`redis_client`]; loopback ports for child processes (tests, the drill) from [`ports`].
//!
//! Only plumbing lives here: credentials, principals, tickets and visibility (application rules
//! over shared tables) are `gps-store`'s, over the pure types of `gps-domain`.

pub mod client_ip;
pub mod config;
pub mod db;
pub mod http_error;
pub mod kafka;
pub mod ops;
pub mod ports;
pub mod redis_client;
pub mod service;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod write_timeout;

/// Errors of the runtime plumbing.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A dependency could not be reached at start.
    #[error("cannot reach {dependency} at {address}: {reason}; start it with `dev/stack up` or point {env_var} at a running one")]
    Unreachable {
        /// Which dependency ("PostgreSQL", "Kafka", "Redis").
        dependency: &'static str,
        /// Where we looked (secrets redacted).
        address: String,
        /// The environment variable that overrides the address.
        env_var: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A configuration value is refused (e.g. a `KAFKA_PROPERTY_*` librdkafka rejects).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Applying the migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A database statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A Kafka admin or client call failed.
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A Redis call failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// A critical task of a service stopped (see [`service::Service::critical`]).
    #[error("{service}: critical task {task} stopped: {reason}")]
    TaskStopped {
        /// The service.
        service: &'static str,
        /// The task that stopped first.
        task: &'static str,
        /// Why: its error, its panic, or "ended unexpectedly".
        reason: String,
    },
    /// Binding or serving a listener failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Bind a TCP listener, naming the env var that moves it when the address is taken.
pub async fn bind_tcp(
    addr: std::net::SocketAddr,
    env_var: &'static str,
) -> Result<tokio::net::TcpListener, RuntimeError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        RuntimeError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} ({env_var}): {e}"),
        ))
    })
}
