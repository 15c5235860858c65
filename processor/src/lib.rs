//! GPS processor: validate, dedupe, store, publish.
//!
//! Reading order: [`plan`] is the pure core (one batch of records in, the rows to write, the
//! rejects to quarantine and the duplicates out); [`pipeline`] loads what it needs, writes with
//! [`writer`] and quarantines in one go; [`batches`] is the one batch loop (fill, run with
//! retries, publish, commit) over a batch source: the consumer group of the service
//! ([`consumer`]) or a bounded range of the log ([`replay`]). [`events`] folds each batch's
//! reports into events in the batch's transaction and runs the offline timer, over the
//! tenants' geofences that [`fences`] keeps loaded off the batch path. [`publisher`]
//! sends newly stored valid fixes, changed device statuses and new events to Redis (and the
//! events to their topic) after the commit; [`upkeep`] maintains daily partitions when TimescaleDB is
//! absent; [`watchdog`] watches the group's progress (lag, stalls, freshness, readiness) and
//! rejoins the group when a dead member left partitions behind. `run` takes a bound listener so tests can bind port 0 and call it.

pub mod batches;
pub mod config;
pub mod consumer;
pub mod dedupe;
pub mod error;
pub mod events;
pub mod fences;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod publisher;
pub mod replay;
pub mod upkeep;
pub mod watchdog;
pub mod writer;

pub use config::{Command, Config, ReplayArgs, ReplayStart, WriteMode};
pub use error::ProcessorError;

use batches::{run_batches, RetryPolicy, Sinks};
use consumer::GroupSource;
use gps_runtime::db::StorageMode;
use gps_runtime::ops::{self, Readiness};
use gps_runtime::service::Service;
use gps_runtime::shutdown::Shutdown;
use metrics::Metrics;
use pipeline::{Pipeline, RejectSink};
use publisher::{EventTopic, Publisher};
use sqlx::PgPool;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long the tasks get to finish once the service stops (the batch in hand, the offset
/// commit, the live queue).
const DRAIN: Duration = Duration::from_secs(20);

/// Connect to the database of `config`, migrate it (safe when several instances start
/// together: sqlx takes an advisory lock) and tell which storage path it took.
pub(crate) async fn open_database(
    config: &Config,
) -> Result<(PgPool, StorageMode), ProcessorError> {
    let pool = gps_runtime::db::connect(&config.database).await?;
    gps_runtime::db::migrate(&pool).await?;
    let storage = gps_runtime::db::storage_mode(&pool).await?;
    Ok((pool, storage))
}

/// Run the service until `shutdown` fires or a critical task stops: migrate, consume, serve
/// `/healthz`, `/readyz`, `/metrics`. On shutdown the batch in hand is finished and committed and
/// the consumer leaves its group before this returns; a batch that fails fatally stops the
/// service with its error.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), ProcessorError> {
    config
        .member
        .check()
        .map_err(gps_runtime::RuntimeError::from)?;
    let (pool, storage) = open_database(&config).await?;
    gps_runtime::kafka::probe(&config.kafka, Duration::from_secs(10)).await?;
    gps_runtime::kafka::ensure_standard_topics(&config.kafka).await?;

    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry);
    let webhook_metrics = gps_webhooks::Metrics::new(&registry);
    let (mut source, watchdog) = GroupSource::subscribe(
        &config.kafka,
        &config.group_id,
        &config.member,
        config.batch.fetch_wait_ms,
        metrics.clone(),
        &registry,
    )?;
    let rejects = RejectSink::new(&config.kafka)?;
    let mut pipeline = Pipeline::from_config(
        &config,
        pool.clone(),
        storage,
        Some(rejects),
        metrics.clone(),
    );
    // Every tenant's fences before the first batch: a restart never folds against fences not
    // yet read, and no batch waits for them (later changes: the `fence-refresh` task).
    let fence_cache = pipeline.events_mut().fence_cache();
    let started = std::time::Instant::now();
    let loaded = fence_cache.refresh(&pool).await?;
    tracing::info!(
        tenants = loaded.loaded,
        fences = loaded.fences,
        ms = started.elapsed().as_millis(),
        "geofences loaded"
    );
    let (publisher, publish_task) = Publisher::new(config.redis.clone(), metrics.clone());
    let publisher = publisher.with_event_topic(EventTopic::new(&config.kafka)?);
    let lag_gauges = registry.clone();
    // Redis is not needed now: an outage only delays the live view (counted, announced).
    let readiness = Readiness::new()
        .postgres(&pool)
        .kafka(&config.kafka)
        .with("consumer", watchdog.readiness_check());
    let addr = listener
        .local_addr()
        .map_err(gps_runtime::RuntimeError::from)?;
    tracing::info!(%addr, group = %config.group_id, instance = ?config.member.instance_id, topic = %config.kafka.fixes_topic, ?storage, "processor listening");

    let service = Service::new("processor", shutdown);
    let stop = service.token();
    service
        .serve(
            "http",
            listener,
            ops::router("processor", registry, readiness),
        )
        .background("publisher", publish_task)
        .background(
            "fence-refresh",
            fences::refresher(
                fence_cache,
                pool.clone(),
                config.events.fence_refresh(),
                stop.clone(),
            ),
        )
        .background("watchdog", watchdog.run(stop.clone()))
        .background(
            "offline-timer",
            events::offline_timer(
                pool.clone(),
                config.events.rules.offline_after_ms,
                config.events.offline_check(),
                move || events::unstored_age(&lag_gauges),
                publisher.clone(),
                metrics.clone(),
                stop.clone(),
            ),
        );
    // Webhook deliveries of the outbox the batches fill; every instance delivers (`SKIP LOCKED`
    // shares the rows). Ends only at shutdown, or at start when no HTTP client can be built.
    service.critical(
        "webhooks",
        gps_webhooks::run(
            pool.clone(),
            config.webhooks.clone(),
            webhook_metrics,
            stop.clone(),
        ),
    );
    if storage == StorageMode::Partitioned {
        let drops = pipeline.writer().partition_drops();
        let upkeep = upkeep::run(
            pool,
            config.upkeep.clone(),
            metrics.clone(),
            drops,
            stop.clone(),
        );
        service.background("upkeep", upkeep);
    }
    let limits = config.batch.limits();
    let consume = async move {
        // Owns the publisher handle: when the loop ends, the publisher drains and stops.
        let sinks = Sinks {
            publisher: Some(&publisher),
            metrics: &metrics,
        };
        run_batches(
            &mut source,
            &mut pipeline,
            sinks,
            &limits,
            &RetryPolicy::SERVICE,
            &stop,
        )
        .await
        .map(drop)
    };
    service.critical("consumer", consume);
    service.run(DRAIN).await?;
    Ok(())
}
