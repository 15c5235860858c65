//! GPS processor: validate, dedupe, store, publish.
//!
//! Consumes `gps.fixes` in a consumer group ([`consumer`]), runs each batch through the
//! [`pipeline`] (validation with reason codes, in-memory and database dedupe, one transaction
//! per batch via [`writer`]), quarantines rejects to `gps.fixes.rejected`, commits offsets
//! after the database commit, and publishes newly stored fixes to Redis ([`publisher`]).
//! [`replay`] rebuilds the projections from the log; [`upkeep`] maintains daily partitions when
//! TimescaleDB is absent. `run` takes a bound listener so tests can bind port 0 and call it.

pub mod config;
pub mod consumer;
pub mod dedupe;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod publisher;
pub mod replay;
pub mod upkeep;
pub mod writer;

pub use config::{Command, Config, ReplayArgs, WriteMode};
pub use error::ProcessorError;

use consumer::LoopSettings;
use gps_runtime::db::StorageMode;
use gps_runtime::ops::{self, Readiness};
use gps_runtime::shutdown::Shutdown;
use metrics::Metrics;
use pipeline::{Pipeline, PipelineSettings, RejectSink};
use publisher::Publisher;
use std::time::Duration;
use tokio::net::TcpListener;
use writer::Writer;

/// Errors that stop the service (kept under its historical name for `main`).
pub type ServiceError = ProcessorError;

/// Run the service until `shutdown` fires: migrate, consume, serve `/healthz`, `/readyz`,
/// `/metrics`. On shutdown the batch in hand is finished and committed and the consumer leaves
/// its group before this returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), ProcessorError> {
    let pool = gps_runtime::db::connect(&config.database).await?;
    // Safe when several instances start together: sqlx takes an advisory lock.
    gps_runtime::db::migrate(&pool).await?;
    let storage = gps_runtime::db::storage_mode(&pool).await?;
    gps_runtime::kafka::probe(&config.kafka, Duration::from_secs(10)).await?;
    gps_runtime::kafka::ensure_standard_topics(&config.kafka).await?;

    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry);

    let settings = LoopSettings {
        group_id: config.group_id.clone(),
        max_fixes: config.batch.max_fixes as usize,
        max_wait: config.batch.max_wait(),
        idle: config.batch.idle(),
        fetch_wait_ms: config.batch.fetch_wait_ms,
    };
    let (consumer, state) = consumer::subscribe(&config.kafka, &settings, metrics.clone())?;
    let rejects = RejectSink::new(
        RejectSink::producer(&config.kafka)?,
        config.kafka.rejected_topic.clone(),
    );
    let writer = Writer::new(
        pool.clone(),
        config.batch.write_mode,
        storage,
        metrics.clone(),
    );
    let pipeline = Pipeline::new(
        pool.clone(),
        writer,
        Some(rejects),
        PipelineSettings {
            topic: config.kafka.fixes_topic.clone(),
            dedupe_capacity: config.batch.dedupe_capacity,
            device_cache_capacity: config.batch.device_cache_capacity,
            tenant_settings_ttl: Duration::from_secs(config.batch.tenant_settings_ttl_secs),
        },
        metrics.clone(),
    );
    let (publisher, publisher_task) = Publisher::spawn(config.redis.clone(), metrics.clone());

    if storage == StorageMode::Partitioned {
        shutdown.spawn(upkeep::run(
            pool.clone(),
            config.upkeep.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }

    let kafka = config.kafka.clone();
    let ready_pool = pool.clone();
    let readiness = Readiness::new()
        .with("postgres", move || {
            let pool = ready_pool.clone();
            async move { gps_runtime::db::ping(&pool).await }
        })
        .with("kafka", move || {
            let kafka = kafka.clone();
            async move {
                gps_runtime::kafka::probe(&kafka, Duration::from_millis(1500))
                    .await
                    .map_err(|e| e.to_string())
            }
        });
    tracing::info!(addr = %listener.local_addr()?, group = %config.group_id, topic = %config.kafka.fixes_topic, ?storage, "processor listening");
    let router = ops::router("processor", registry, readiness);
    let server = tokio::spawn(ops::serve(listener, router, shutdown.clone()));

    let result = consumer::run_loop(
        consumer,
        state,
        pipeline,
        publisher,
        settings,
        metrics,
        shutdown.clone(),
    )
    .await;
    // Whatever ended the loop ends the service.
    shutdown.trigger();
    // The loop dropped its publisher handle: the task drains its queue and stops.
    let _ = tokio::time::timeout(Duration::from_secs(5), publisher_task).await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(ProcessorError::TaskFailed("http server")),
    }
    result
}
