//! One batch from records to committed rows, shared by the service and `replay`: decode,
//! validate against per-tenant thresholds and the device's previous accepted fix, drop
//! duplicates (memory first, then `ON CONFLICT DO NOTHING`), write, and quarantine rejects.
//!
//! A batch either succeeds as a whole or fails with a transient error and can be run again
//! with the same records: caches are only updated with what the database committed, and
//! rejects are produced (and acknowledged) before the caller commits any offset.

use crate::dedupe::{DedupeCache, DeviceCache, FixKey};
use crate::error::ProcessorError;
use crate::metrics::Metrics;
use crate::writer::{EnvelopeMeta, PositionRow, Writer};
use gps_domain::fix::now_millis;
use gps_domain::reject::{RejectReason, RejectRecord, SourcePosition};
use gps_domain::validation::{self, PreviousFix, Thresholds};
use gps_domain::FixEnvelope;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A record of the fixes topic, decoded (or not) as it was consumed.
#[derive(Debug)]
pub struct InRecord {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The envelope, or why it could not be read (with the raw payload).
    pub body: Result<FixEnvelope, BadRecord>,
}

/// A record that is not a readable envelope.
#[derive(Debug)]
pub struct BadRecord {
    /// The reason code.
    pub reason: RejectReason,
    /// The decoder's message.
    pub detail: String,
    /// The raw payload.
    pub raw: Vec<u8>,
}

impl InRecord {
    /// Decode a consumed payload.
    pub fn decode(partition: i32, offset: i64, payload: Option<&[u8]>) -> Self {
        let body = match payload {
            None => Err(BadRecord {
                reason: RejectReason::MalformedRecord,
                detail: "record has no value".into(),
                raw: Vec::new(),
            }),
            Some(bytes) => FixEnvelope::decode(bytes).map_err(|e| BadRecord {
                reason: RejectReason::for_envelope_error(&e),
                detail: e.to_string(),
                raw: bytes.to_vec(),
            }),
        };
        Self {
            partition,
            offset,
            body,
        }
    }

    /// Fixes carried (1 for an unreadable record, which still costs a reject).
    pub fn weight(&self) -> usize {
        match &self.body {
            Ok(envelope) => envelope.fixes.len(),
            Err(_) => 1,
        }
    }
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Newly stored fixes (not duplicates), for the live publish.
    pub stored: Vec<PositionRow>,
    /// Fixes (and unreadable records) quarantined, by reason.
    pub rejected: HashMap<RejectReason, usize>,
    /// Duplicates dropped.
    pub duplicates: usize,
}

/// Produces reject records to the quarantine topic and waits for the broker's acks.
#[derive(Clone)]
pub struct RejectSink {
    producer: FutureProducer,
    topic: String,
}

impl RejectSink {
    /// A sink writing to `topic`.
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        Self { producer, topic }
    }

    /// A producer with the pipeline's delivery guarantees (idempotent, `acks=all`).
    pub fn producer(
        kafka: &gps_runtime::config::KafkaArgs,
    ) -> Result<FutureProducer, ProcessorError> {
        Ok(
            gps_runtime::kafka::client_config(kafka, "gps-processor-rejects")
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .set("message.timeout.ms", "30000")
                .create()?,
        )
    }

    async fn send_all(&self, records: &[RejectRecord]) -> Result<(), ProcessorError> {
        let mut encoded: Vec<(String, Vec<u8>)> = Vec::with_capacity(records.len());
        for record in records {
            encoded.push((record.key(), record.encode()));
        }
        let mut sends = Vec::with_capacity(encoded.len());
        for (key, payload) in &encoded {
            sends.push(self.producer.send(
                FutureRecord::to(&self.topic).key(key).payload(payload),
                Duration::from_secs(30),
            ));
        }
        for result in futures::future::join_all(sends).await {
            if let Err((error, _)) = result {
                return Err(error.into());
            }
        }
        Ok(())
    }
}

async fn send_rejects(
    sink: Option<&RejectSink>,
    rejects: &[RejectRecord],
) -> Result<(), ProcessorError> {
    match sink {
        Some(sink) if !rejects.is_empty() => sink.send_all(rejects).await,
        _ => Ok(()),
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
        let mut stale: Vec<Uuid> = Vec::new();
        for t in tenants {
            let fresh =
                matches!(self.entries.get(t), Some((_, at)) if now.duration_since(*at) <= self.ttl);
            if !fresh {
                stale.push(*t);
            }
        }
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

/// Settings of a [`Pipeline`].
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Source topic name (goes into reject records).
    pub topic: String,
    /// In-memory dedupe capacity, keys.
    pub dedupe_capacity: usize,
    /// Device cache capacity.
    pub device_cache_capacity: usize,
    /// Tenant settings cache time to live.
    pub tenant_settings_ttl: Duration,
}

/// The batch pipeline and its caches.
pub struct Pipeline {
    pool: PgPool,
    writer: Writer,
    rejects: Option<RejectSink>,
    dedupe: DedupeCache,
    devices: DeviceCache,
    tenants: TenantCache,
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
    /// A pipeline writing with `writer`; rejects go to `rejects`, or are only counted when
    /// `None` (replay: the live run already quarantined them).
    pub fn new(
        pool: PgPool,
        writer: Writer,
        rejects: Option<RejectSink>,
        settings: PipelineSettings,
        metrics: Metrics,
    ) -> Self {
        Self {
            pool,
            writer,
            rejects,
            dedupe: DedupeCache::new(settings.dedupe_capacity),
            devices: DeviceCache::new(settings.device_cache_capacity),
            tenants: TenantCache {
                entries: HashMap::new(),
                ttl: settings.tenant_settings_ttl,
            },
            metrics,
            topic: settings.topic,
        }
    }

    /// Forget per-device state (partitions moved: another instance may have advanced it).
    pub fn forget_devices(&mut self) {
        self.devices.clear();
    }

    /// The writer, for upkeep coordination.
    pub fn writer_mut(&mut self) -> &mut Writer {
        &mut self.writer
    }

    /// Run one batch. On `Err` nothing was committed to the caches and the batch may be run
    /// again with the same records.
    pub async fn process(&mut self, records: &[InRecord]) -> Result<BatchOutcome, ProcessorError> {
        let mut tenants: HashSet<Uuid> = HashSet::new();
        let mut devices: Vec<Uuid> = Vec::new();
        for envelope in records.iter().filter_map(|r| r.body.as_ref().ok()) {
            tenants.insert(envelope.tenant);
            devices.push(envelope.device);
        }
        let thresholds = self.tenants.load(&self.pool, &tenants).await?;
        self.load_devices(devices).await?;

        let now = now_millis();
        let mut outcome = BatchOutcome::default();
        let mut rejects: Vec<RejectRecord> = Vec::new();
        let mut rows: Vec<PositionRow> = Vec::new();
        let mut batch_keys: HashSet<FixKey> = HashSet::new();
        // Newest accepted fix per device within this batch, on top of the device cache.
        let mut newest: HashMap<Uuid, PreviousFix> = HashMap::new();
        let mut memory_dups = 0u64;
        let mut batch_dups = 0u64;

        for record in records {
            let source = || SourcePosition {
                topic: self.topic.clone(),
                partition: record.partition,
                offset: record.offset,
            };
            let envelope = match &record.body {
                Ok(envelope) => envelope,
                Err(bad) => {
                    tracing::warn!(partition = record.partition, offset = record.offset, reason = %bad.reason, detail = %bad.detail, "record quarantined");
                    *outcome.rejected.entry(bad.reason).or_default() += 1;
                    rejects.push(RejectRecord::for_record(
                        &bad.raw,
                        bad.reason,
                        bad.detail.clone(),
                        source(),
                        now,
                    ));
                    continue;
                }
            };
            let meta = Arc::new(EnvelopeMeta {
                tenant: envelope.tenant,
                device: envelope.device,
                uid: envelope.uid.clone(),
                proto: envelope.proto,
                rx: envelope.rx,
            });
            let limits = thresholds
                .get(&envelope.tenant)
                .copied()
                .unwrap_or_default();
            for (index, fix) in envelope.fixes.iter().enumerate() {
                let key = (envelope.device, fix.fix_time);
                if self.dedupe.contains(&key) {
                    memory_dups += 1;
                    continue;
                }
                if batch_keys.contains(&key) {
                    batch_dups += 1;
                    continue;
                }
                let previous = newest
                    .get(&envelope.device)
                    .copied()
                    .or_else(|| self.devices.get(&envelope.device).flatten());
                if let Err(rejection) =
                    validation::validate(fix, envelope.rx, previous.as_ref(), &limits)
                {
                    tracing::debug!(device = %envelope.device, reason = %rejection.reason, detail = %rejection.detail, "fix rejected");
                    *outcome.rejected.entry(rejection.reason).or_default() += 1;
                    rejects.push(RejectRecord::for_fix(
                        envelope,
                        index,
                        fix,
                        rejection.reason,
                        rejection.detail,
                        source(),
                        now,
                    ));
                    continue;
                }
                batch_keys.insert(key);
                let candidate = PreviousFix::of(fix);
                newest
                    .entry(envelope.device)
                    .and_modify(|p| {
                        if candidate.fix_time > p.fix_time {
                            *p = candidate;
                        }
                    })
                    .or_insert(candidate);
                rows.push(PositionRow {
                    meta: meta.clone(),
                    fix: fix.clone(),
                });
            }
        }

        self.metrics.batch_fixes.observe(rows.len() as f64);
        let (written, sent) = tokio::join!(
            self.writer.write(&rows),
            send_rejects(self.rejects.as_ref(), &rejects)
        );
        sent?;
        let inserted = written?;

        // Committed: now the caches and counters may learn from it.
        let database_dups = rows.len() - inserted.len();
        for row in &rows {
            self.dedupe.insert(row.key());
        }
        for (device, fix) in newest {
            self.devices.advance(device, fix);
        }
        outcome.duplicates = memory_dups as usize + batch_dups as usize + database_dups;
        outcome.stored = rows
            .into_iter()
            .filter(|r| inserted.contains(&r.key()))
            .collect();
        let m = &self.metrics;
        m.records.inc_by(records.len() as u64);
        m.accepted.inc_by(outcome.stored.len() as u64);
        m.duplicates
            .with_label_values(&["memory"])
            .inc_by(memory_dups);
        m.duplicates
            .with_label_values(&["batch"])
            .inc_by(batch_dups);
        m.duplicates
            .with_label_values(&["database"])
            .inc_by(database_dups as u64);
        for (reason, count) in &outcome.rejected {
            m.rejected
                .with_label_values(&[reason.as_str()])
                .inc_by(*count as u64);
        }
        Ok(outcome)
    }

    /// Fill the device cache from `last_positions` for devices it does not know.
    async fn load_devices(&mut self, mut unknown: Vec<Uuid>) -> Result<(), sqlx::Error> {
        unknown.retain(|d| self.devices.get(d).is_none());
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort_unstable();
        unknown.dedup();
        let rows: Vec<(Uuid, chrono::DateTime<chrono::Utc>, f64, f64, Option<f64>)> =
            sqlx::query_as(
                "SELECT device_id, fix_time, lat, lon, accuracy_m FROM last_positions
                 WHERE device_id = ANY($1)",
            )
            .bind(&unknown)
            .fetch_all(&self.pool)
            .await?;
        let mut found: HashMap<Uuid, PreviousFix> = rows
            .into_iter()
            .map(|(device, t, lat, lon, accuracy_m)| {
                (
                    device,
                    PreviousFix {
                        fix_time: t.timestamp_millis(),
                        lat,
                        lon,
                        accuracy_m,
                    },
                )
            })
            .collect();
        for device in unknown {
            let previous = found.remove(&device);
            self.devices.set(device, previous);
        }
        Ok(())
    }
}
