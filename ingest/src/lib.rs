//! Ingest: accepts GPS fixes from devices over HTTP (JSON, Traccar Client/OsmAnd, OwnTracks) and
//! UDP, and produces them to Kafka; a device is answered only after Kafka acknowledged.
//!
//! `run` takes bound listeners so that tests can bind port 0 and call it directly.
//! Modules: [`config`], [`error`], [`metrics`], [`auth`] (credential cache), [`producer`]
//! (Kafka), [`overload`] (shedding while the store is behind), [`http`] (one module per protocol),
//! [`udp`], [`teltonika`] (Codec 8/8E, TCP and UDP).

pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod overload;
pub mod producer;
pub mod teltonika;
pub mod udp;

pub use config::Config;
pub use error::{ApiError, IngestError};

use gps_runtime::ops::{self, Readiness};
use gps_runtime::service::{CancellationToken, Service};
use gps_runtime::shutdown::Shutdown;
use producer::FixProducer;
use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

/// Run ingest on the given listeners until `shutdown` fires (or a listener fails), then stop
/// accepting, let open requests finish (at most `--request-timeout-ms`), flush the producer
/// (at most `--flush-timeout-ms`) and return. Without Teltonika listeners: see [`run_with`].
pub async fn run(
    config: Config,
    http: TcpListener,
    udp: UdpSocket,
    shutdown: Shutdown,
) -> Result<(), IngestError> {
    run_with(config, http, udp, None, shutdown).await
}

/// [`run`], serving Teltonika devices too when `teltonika` listeners are given (the binary binds
/// them on `INGEST_TELTONIKA_ADDR` unless `INGEST_TELTONIKA_DISABLED`).
pub async fn run_with(
    config: Config,
    http: TcpListener,
    udp: UdpSocket,
    teltonika: Option<teltonika::TeltonikaListeners>,
    shutdown: Shutdown,
) -> Result<(), IngestError> {
    config.validate()?;
    let pool = gps_runtime::db::connect(&config.database).await?;
    gps_runtime::kafka::probe(&config.kafka, Duration::from_secs(10)).await?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry);
    let mut producer = FixProducer::new(&config.kafka, &config.producer, metrics.clone())?;
    let shed_guard = overload::Overload::new(&config.overload, &registry);
    let lag_monitor = if shed_guard.enabled() {
        producer = producer.with_overload(shed_guard.clone());
        Some(overload::LagMonitor::new(
            &config.kafka,
            &config.overload.group(),
            Duration::from_secs(5),
        )?)
    } else {
        None
    };
    let auth = Arc::new(auth::AuthCache::new(pool.clone(), &config.auth));
    let readiness = Readiness::new().postgres(&pool).kafka(&config.kafka);
    tracing::info!(http = %http.local_addr()?, udp = %udp.local_addr()?, topic = %config.kafka.fixes_topic, "ingest listening");

    let service = Service::new("ingest", shutdown);
    let udp_ingest = udp::UdpIngest::new(
        auth.clone(),
        producer.clone(),
        metrics.clone(),
        &config.auth,
    );
    let teltonika_ingest = teltonika::TeltonikaIngest::new(
        auth.clone(),
        producer.clone(),
        metrics.clone(),
        &config.teltonika,
        &config.auth,
    );
    let state = http::AppState {
        auth,
        producer: producer.clone(),
        metrics: metrics.clone(),
        max_batch: config.limits.max_batch as usize,
        unknown_credentials: Arc::new(auth::SourceLimiter::new(
            config.auth.unknown_per_sec,
            config.auth.unknown_burst,
            config.auth.capacity,
        )),
        trusted_proxies: config.client_ip.trusted_proxies.clone(),
    };
    let router = http::router(
        state,
        ops::router("ingest", registry, readiness),
        config.limits.max_body_bytes as usize,
        Duration::from_millis(config.limits.request_timeout_ms),
    );
    service
        .serve("http", http, router)
        .critical("udp", udp_ingest.run(udp, service.tasks()))
        .background(
            "queue-depth",
            sample_queue_depth(
                producer.clone(),
                metrics.producer_queue_depth.clone(),
                service.token(),
            ),
        );
    if let Some(monitor) = lag_monitor {
        service.background(
            "store-lag",
            monitor.run(shed_guard, config.overload.poll_interval(), service.token()),
        );
    }
    if let Some(listeners) = teltonika {
        tracing::info!(tcp = %listeners.tcp.local_addr()?, udp = %listeners.udp.local_addr()?, "teltonika listening");
        service
            .critical(
                "teltonika-tcp",
                teltonika_ingest
                    .clone()
                    .serve_tcp(listeners.tcp, service.tasks()),
            )
            .critical(
                "teltonika-udp",
                teltonika_ingest.serve_udp(listeners.udp, service.tasks()),
            );
    }
    // An open request ends within its timeout, which bounds its wait for Kafka too.
    let stopped = service
        .run(Duration::from_millis(config.limits.request_timeout_ms))
        .await;
    flush(
        producer,
        Duration::from_millis(config.producer.flush_timeout_ms),
    )
    .await;
    Ok(stopped?)
}

/// Sample the producer's queue depth into `gauge`; librdkafka has no callback for it.
async fn sample_queue_depth(producer: FixProducer, gauge: IntGauge, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => gauge.set(i64::from(producer.queue_depth())),
        }
    }
}

/// Deliver what is still queued, waiting at most `timeout`.
async fn flush(producer: FixProducer, timeout: Duration) {
    match tokio::task::spawn_blocking(move || producer.flush(timeout)).await {
        Ok(Ok(())) => tracing::info!("producer flushed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "producer flush incomplete at shutdown"),
        Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
    }
}
