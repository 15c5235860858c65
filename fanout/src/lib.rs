//! GPS fanout: live fixes over WebSocket.
//!
//! `run` takes a bound listener so that tests can bind port 0 and call it directly.

use clap::Parser;
use gps_runtime::config::{DatabaseArgs, LogArgs};
use gps_runtime::ops::{self, Readiness};
use gps_runtime::shutdown::Shutdown;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Service configuration: flags and env vars.
#[derive(Debug, Clone, Parser)]
#[command(name = "fanout", about = "GPS fanout: live fixes over WebSocket")]
pub struct Config {
    /// HTTP listen address.
    #[arg(long = "addr", env = "FANOUT_ADDR", default_value = "127.0.0.1:8082")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A dependency or listener failed at start.
    #[error(transparent)]
    Runtime(#[from] gps_runtime::RuntimeError),
    /// Serving failed.
    #[error("http server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Run until `shutdown` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), ServiceError> {
    let pool = gps_runtime::db::connect(&config.database).await?;
    let registry = prometheus::Registry::new();
    let readiness = Readiness::new().with("postgres", move || {
        let pool = pool.clone();
        async move { gps_runtime::db::ping(&pool).await }
    });
    tracing::info!(addr = %listener.local_addr()?, "fanout listening");
    let router = ops::router("fanout", registry, readiness);
    ops::serve(listener, router, shutdown).await?;
    Ok(())
}
