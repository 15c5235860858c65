//! Ingest: accepts GPS fixes from devices over HTTP (JSON, Traccar Client/OsmAnd, OwnTracks) and
//! UDP, and produces them to Kafka; a device is answered only after Kafka acknowledged.
//!
//! `run` takes bound listeners so that tests can bind port 0 and call it directly.
//! Modules: [`config`], [`error`], [`metrics`], [`auth`] (credential cache), [`producer`]
//! (Kafka), [`http`] (one module per protocol), [`udp`].

pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod producer;
pub mod udp;

pub use config::Config;
pub use error::{ApiError, IngestError};

use gps_runtime::ops::{self, Readiness};
use gps_runtime::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

/// Run ingest on the given listeners until `shutdown` fires, then stop accepting, flush the
/// producer (bounded by `--flush-timeout-ms`) and return.
pub async fn run(
    config: Config,
    http: TcpListener,
    udp: UdpSocket,
    shutdown: Shutdown,
) -> Result<(), IngestError> {
    config.validate().map_err(IngestError::Config)?;
    let pool = gps_runtime::db::connect(&config.database).await?;
    gps_runtime::kafka::probe(&config.kafka, Duration::from_secs(10)).await?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry);
    let producer = producer::FixProducer::new(&config.kafka, &config.producer, metrics.clone())?;
    let auth = Arc::new(auth::AuthCache::new(pool.clone(), &config.auth));
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

    // The queue-depth gauge is sampled; librdkafka has no callback for it.
    {
        let producer = producer.clone();
        let gauge = metrics.producer_queue_depth.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => gauge.set(i64::from(producer.queue_depth())),
                }
            }
        });
    }

    let udp_addr = udp.local_addr()?;
    let udp_task = shutdown.spawn(
        udp::UdpIngest::new(auth.clone(), producer.clone(), metrics.clone())
            .run(udp, shutdown.clone()),
    );

    let state = http::AppState {
        auth,
        producer: producer.clone(),
        metrics,
        max_batch: config.limits.max_batch as usize,
    };
    let router = http::router(
        state,
        ops::router("ingest", registry, readiness),
        config.limits.max_body_bytes as usize,
        Duration::from_millis(config.limits.request_timeout_ms),
    );
    tracing::info!(http = %http.local_addr()?, udp = %udp_addr, topic = %config.kafka.fixes_topic, "ingest listening");
    let served = ops::serve(http, router, shutdown.clone()).await;
    // Whatever ended serving, stop the other tasks too.
    shutdown.trigger();
    let _ = udp_task.await;
    let flush_timeout = Duration::from_millis(config.producer.flush_timeout_ms);
    let flushed = tokio::task::spawn_blocking(move || producer.flush(flush_timeout)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("producer flushed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "producer flush incomplete at shutdown"),
        Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
    }
    served?;
    Ok(())
}
