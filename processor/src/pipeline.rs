//! One batch from records to committed rows, shared by the service and `replay`: load what the
//! pure core needs (tenant thresholds, devices' previous fixes), [`classify`] the batch, load
//! what its event fold needs ([`EventEngine::prepare`]), write its rows, statuses and events in
//! one transaction and quarantine its rejects concurrently, then [`BatchPlan::settle`] the
//! caches.
//!
//! A batch either succeeds as a whole or fails and can be run again with the same records:
//! the caches only learn what the database committed, and rejects are produced (and
//! acknowledged) before the caller commits any offset.

use crate::batches::BatchStage;
use crate::config::Config;
use crate::error::ProcessorError;
use crate::events::EventEngine;
use crate::metrics::Metrics;
use crate::plan::{classify, BatchOutcome, BatchPlan, Caches, InRecord};
use crate::writer::Writer;
use gps_domain::fix::now_millis;
use gps_domain::reject::RejectRecord;
use gps_domain::validation::{PreviousFix, Thresholds};
use gps_runtime::db::StorageMode;
use gps_runtime::kafka::{DeliveryFailure, ReplaceableProducer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// How long the processor waits for the broker to acknowledge a record of its own topics
/// (rejects, events). librdkafka's `message.timeout.ms` is set later than this
/// ([`ReplaceableProducer::message_timeout`]), so a record late by it replaces its producer
/// instead of letting librdkafka time it out and bump the producer's epoch (which wedges tansu;
/// docs/operations.md, "Known broker defects").
pub(crate) const DELIVERY_DEADLINE: Duration = Duration::from_secs(20);

/// Produces reject records to the quarantine topic and waits for the broker's acks.
#[derive(Clone)]
pub struct RejectSink {
    producer: Arc<ReplaceableProducer>,
    topic: String,
}

impl std::fmt::Debug for RejectSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RejectSink")
            .field("topic", &self.topic)
            .finish()
    }
}

/// A producer with the pipeline's delivery guarantees (idempotent, `acks=all`), for the
/// processor's own topics (rejects, events), awaited for at most [`DELIVERY_DEADLINE`].
pub(crate) fn reliable_producer(
    kafka: &gps_runtime::config::KafkaArgs,
    client_id: &str,
) -> Result<Arc<ReplaceableProducer>, ProcessorError> {
    let mut config = gps_runtime::kafka::client_config(kafka, client_id);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            ReplaceableProducer::message_timeout(DELIVERY_DEADLINE),
        )
        // Notice a dead broker quickly instead of waiting for TCP to give up.
        .set("socket.connection.setup.timeout.ms", "3000")
        .set("reconnect.backoff.max.ms", "1000");
    Ok(Arc::new(ReplaceableProducer::new(config)?))
}

/// The Kafka error of a record that was not acknowledged: a deadline passed is a timeout
/// (transient, the batch is retried on the replacement producer).
pub(crate) fn delivery_error(failure: DeliveryFailure) -> KafkaError {
    match failure {
        DeliveryFailure::Broker(error) => error,
        DeliveryFailure::TimedOut => {
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
        }
        DeliveryFailure::ShutDown => KafkaError::Canceled,
    }
}

impl RejectSink {
    /// A sink to the quarantine topic of `kafka`, with the pipeline's delivery guarantees
    /// (idempotent, `acks=all`).
    pub fn new(kafka: &gps_runtime::config::KafkaArgs) -> Result<Self, ProcessorError> {
        let producer = reliable_producer(kafka, "gps-processor-rejects")?;
        Ok(Self {
            producer,
            topic: kafka.rejected_topic.clone(),
        })
    }

    /// Produce every record and wait until the broker acknowledged them all, at most
    /// [`DELIVERY_DEADLINE`]; on `Err` the batch is run again (a reject may then be quarantined
    /// twice, never lost).
    pub async fn send_all(&self, records: &[RejectRecord]) -> Result<(), ProcessorError> {
        let mut pending = Vec::with_capacity(records.len());
        let mut refused = None;
        for record in records {
            let (key, payload) = (record.key(), record.encode());
            match self
                .producer
                .send(FutureRecord::to(&self.topic).key(&key).payload(&payload))
            {
                Ok(delivery) => pending.push(delivery),
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        // Even after a refused enqueue (a full queue), what was enqueued is awaited: a record
        // nobody waits for would reach librdkafka's own timeout.
        let acks = pending
            .into_iter()
            .map(|p| self.producer.acknowledged(p, DELIVERY_DEADLINE));
        let delivered: Result<Vec<()>, _> =
            futures::future::join_all(acks).await.into_iter().collect();
        delivered.map_err(delivery_error)?;
        match refused {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

/// Per-tenant thresholds from `tenants.settings`, cached for a while.
#[derive(Debug)]
struct TenantCache {
    entries: HashMap<Uuid, (Thresholds, Instant)>,
    ttl: Duration,
}

impl TenantCache {
    async fn load(
        &mut self,
        pool: &PgPool,
        tenants: &HashSet<Uuid>,
    ) -> Result<HashMap<Uuid, Thresholds>, sqlx::Error> {
        let now = Instant::now();
        let stale: Vec<Uuid> = tenants
            .iter()
            .filter(|t| {
                !matches!(self.entries.get(t), Some((_, at)) if now.duration_since(*at) <= self.ttl)
            })
            .copied()
            .collect();
        if !stale.is_empty() {
            let rows: Vec<(Uuid, serde_json::Value)> =
                sqlx::query_as("SELECT id, settings FROM tenants WHERE id = ANY($1)")
                    .bind(&stale)
                    .fetch_all(pool)
                    .await?;
            let mut found: HashMap<Uuid, serde_json::Value> = rows.into_iter().collect();
            for tenant in stale {
                let thresholds = match found.remove(&tenant) {
                    Some(settings) => {
                        let (thresholds, problems) = Thresholds::from_settings(&settings);
                        for problem in problems {
                            tracing::warn!(%tenant, %problem, "tenant validation setting ignored");
                        }
                        thresholds
                    }
                    None => Thresholds::default(),
                };
                self.entries.insert(tenant, (thresholds, now));
            }
        }
        Ok(tenants
            .iter()
            .map(|t| (*t, self.entries.get(t).map(|e| e.0).unwrap_or_default()))
            .collect())
    }
}

/// The batch pipeline and its caches.
pub struct Pipeline {
    pool: PgPool,
    writer: Writer,
    rejects: Option<RejectSink>,
    caches: Caches,
    tenants: TenantCache,
    events: EventEngine,
    metrics: Metrics,
    topic: String,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Pipeline {
    /// The pipeline `config` describes, on `pool` (the service and `replay` alike). Rejects go
    /// to `rejects`, or are only counted when `None` (replay: the live run already quarantined
    /// them).
    pub fn from_config(
        config: &Config,
        pool: PgPool,
        storage: StorageMode,
        rejects: Option<RejectSink>,
        metrics: Metrics,
    ) -> Self {
        let batch = &config.batch;
        Self {
            writer: Writer::new(pool.clone(), batch.write_mode, storage, metrics.clone()),
            events: EventEngine::new(pool.clone(), &config.events, batch.device_cache_capacity),
            pool,
            rejects,
            caches: Caches::new(batch.dedupe_capacity, batch.device_cache_capacity),
            tenants: TenantCache {
                entries: HashMap::new(),
                ttl: Duration::from_secs(batch.tenant_settings_ttl_secs),
            },
            metrics,
            topic: config.kafka.fixes_topic.clone(),
        }
    }

    /// The writer, to wire partition upkeep to it.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// The event engine, to set it up for a replay ([`EventEngine::replaying`]).
    pub fn events_mut(&mut self) -> &mut EventEngine {
        &mut self.events
    }

    /// Run one batch. On `Err` nothing was committed to the caches and the batch may be run
    /// again with the same records.
    pub async fn process(&mut self, records: &[InRecord]) -> Result<BatchOutcome, ProcessorError> {
        let started = std::time::Instant::now();
        let thresholds = self.load(records).await?;
        let loaded = started.elapsed();
        let plan = classify(
            records,
            &self.caches,
            &thresholds,
            &self.topic,
            now_millis(),
        );
        log_rejects(&plan);
        self.metrics.batch_fixes.observe(plan.rows.len() as f64);
        self.events.prepare(&plan).await?;
        let prepared = started.elapsed();
        let fold = self.events.fold(&plan);
        let (written, sent) = tokio::join!(
            self.writer
                .write_with_events(&plan.rows, &plan.statuses, &plan.seen, Some(&fold)),
            async {
                match &self.rejects {
                    Some(sink) if !plan.rejects.is_empty() => sink.send_all(&plan.rejects).await,
                    _ => Ok(()),
                }
            }
        );
        sent?;
        let written = written?;
        // Committed: now the caches and counters may learn from it.
        self.events.learn(&written.events);
        self.metrics.count_events(&written.events.new);
        let fixes = plan.rows.len();
        let outcome = plan.settle(&mut self.caches, &written);
        self.count(records.len(), &outcome);
        // Where a slow batch spent its time (the first one of new devices reads their last
        // positions, event states and profiles).
        tracing::debug!(
            records = records.len(),
            fixes,
            events = written.events.new.len(),
            load_ms = loaded.as_millis(),
            prepare_ms = (prepared - loaded).as_millis(),
            write_ms = (started.elapsed() - prepared).as_millis(),
            "batch written"
        );
        Ok(outcome)
    }

    /// What [`classify`] needs from the database: the thresholds of the batch's tenants, and
    /// the previous fix of devices the cache does not know.
    async fn load(
        &mut self,
        records: &[InRecord],
    ) -> Result<HashMap<Uuid, Thresholds>, ProcessorError> {
        let mut tenants: HashSet<Uuid> = HashSet::new();
        let mut devices: Vec<Uuid> = Vec::new();
        for envelope in records.iter().filter_map(|r| r.body.as_ref().ok()) {
            tenants.insert(envelope.tenant);
            devices.push(envelope.device);
        }
        let thresholds = self.tenants.load(&self.pool, &tenants).await?;
        self.load_devices(devices).await?;
        Ok(thresholds)
    }

    /// Fill the device cache from `last_positions` for devices it does not know.
    async fn load_devices(&mut self, mut unknown: Vec<Uuid>) -> Result<(), sqlx::Error> {
        let devices = &mut self.caches.devices;
        unknown.retain(|d| devices.get(d).is_none());
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort_unstable();
        unknown.dedup();
        type Time = chrono::DateTime<chrono::Utc>;
        let rows: Vec<(Uuid, Time, Time, f64, f64, Option<f64>)> = sqlx::query_as(
            "SELECT device_id, fix_time, received_at, lat, lon, accuracy_m FROM last_positions
             WHERE device_id = ANY($1)",
        )
        .bind(&unknown)
        .fetch_all(&self.pool)
        .await?;
        let mut found: HashMap<Uuid, PreviousFix> = rows
            .into_iter()
            .map(|(device, t, received, lat, lon, accuracy_m)| {
                let previous = PreviousFix {
                    fix_time: t.timestamp_millis(),
                    lat,
                    lon,
                    accuracy_m,
                    received_at: received.timestamp_millis(),
                };
                (device, previous)
            })
            .collect();
        for device in unknown {
            let previous = found.remove(&device);
            self.caches.devices.set(device, previous);
        }
        Ok(())
    }

    fn count(&self, records: usize, outcome: &BatchOutcome) {
        let m = &self.metrics;
        m.records.inc_by(records as u64);
        m.accepted.inc_by(outcome.stored.len() as u64);
        let d = outcome.duplicates;
        for (stage, count) in [
            ("memory", d.memory),
            ("batch", d.batch),
            ("database", d.database),
        ] {
            m.duplicates
                .with_label_values(&[stage])
                .inc_by(count as u64);
        }
        for (reason, count) in &outcome.rejected {
            m.rejected
                .with_label_values(&[reason.as_str()])
                .inc_by(*count as u64);
        }
    }
}

impl BatchStage for Pipeline {
    async fn process(&mut self, records: &[InRecord]) -> Result<BatchOutcome, ProcessorError> {
        Pipeline::process(self, records).await
    }

    fn forget_devices(&mut self) {
        self.caches.devices.clear();
        self.events.forget_devices();
    }
}

/// Unreadable records are worth a warning each; refused fixes are routine (debug).
fn log_rejects(plan: &BatchPlan) {
    for reject in &plan.rejects {
        let source = &reject.source;
        match reject.device {
            None => tracing::warn!(
                partition = source.partition,
                offset = source.offset,
                reason = %reject.reason,
                detail = %reject.detail,
                "record quarantined"
            ),
            Some(device) => tracing::debug!(
                %device,
                reason = %reject.reason,
                detail = %reject.detail,
                "fix rejected"
            ),
        }
    }
}
