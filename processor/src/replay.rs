//! `processor replay`: rebuild `positions` and `last_positions` from the log.
//!
//! Reads every partition of the fixes topic from the start (or from the first record at or
//! after a given time) up to the high watermark seen at start, then stops. It runs the exact
//! batch pipeline of the service (validation, dedupe, the same writes), so replaying into an
//! empty database gives the rows the live run stored, and replaying into an existing one adds
//! only what is missing. It joins no group and commits nothing, and it neither re-quarantines
//! rejects (the live run did) nor publishes live messages (dashboards want the present).

use crate::config::{Config, ReplayArgs};
use crate::error::ProcessorError;
use crate::metrics::Metrics;
use crate::pipeline::{InRecord, Pipeline, PipelineSettings};
use crate::writer::Writer;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Partitions read.
    pub partitions: usize,
    /// Records read.
    pub records: u64,
    /// Fixes newly stored.
    pub stored: u64,
    /// Duplicates (already stored, or repeated in the log).
    pub duplicates: u64,
    /// Rejected fixes and records, by reason code.
    pub rejected: BTreeMap<String, u64>,
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rejected: u64 = self.rejected.values().sum();
        write!(
            f,
            "replayed {} records from {} partitions: {} fixes stored, {} duplicates, {} rejected",
            self.records, self.partitions, self.stored, self.duplicates, rejected
        )?;
        for (reason, count) in &self.rejected {
            write!(f, "\n  {reason}: {count}")?;
        }
        Ok(())
    }
}

/// Run a replay with `config`'s database, topics and batch settings.
pub async fn replay(
    config: &Config,
    args: &ReplayArgs,
    show_progress: bool,
) -> Result<ReplaySummary, ProcessorError> {
    let pool = gps_runtime::db::connect(&config.database).await?;
    gps_runtime::db::migrate(&pool).await?;
    let storage = gps_runtime::db::storage_mode(&pool).await?;
    let metrics = Metrics::new(&prometheus::Registry::new());
    let topic = config.kafka.fixes_topic.clone();
    let Some(partitions) = gps_runtime::kafka::partition_count(&config.kafka, &topic).await? else {
        tracing::warn!(%topic, "fixes topic does not exist; nothing to replay");
        return Ok(ReplaySummary::default());
    };

    let consumer: StreamConsumer =
        gps_runtime::kafka::client_config(&config.kafka, "gps-processor-replay")
            .set(
                "group.id",
                format!("gps-processor-replay-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;

    // Where each partition starts and ends (the high watermark now).
    let timeout = Duration::from_secs(10);
    let mut bounds: HashMap<i32, (i64, i64)> = HashMap::new();
    let mut low_high = Vec::new();
    for p in 0..partitions as i32 {
        low_high.push((p, consumer.fetch_watermarks(&topic, p, timeout)?));
    }
    let from_time_offsets = match args.from_time {
        Some(t) => {
            let mut query = TopicPartitionList::new();
            for (p, _) in &low_high {
                query.add_partition_offset(&topic, *p, Offset::Offset(t.timestamp_millis()))?;
            }
            Some(consumer.offsets_for_times(query, timeout)?)
        }
        None => None,
    };
    for (p, (low, high)) in low_high {
        let start = match &from_time_offsets {
            None => low,
            Some(found) => match found.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(low),
                _ => high,
            },
        };
        if start < high {
            bounds.insert(p, (start, high));
        }
    }
    let total: u64 = bounds.values().map(|(s, e)| (e - s) as u64).sum();
    let mut summary = ReplaySummary {
        partitions,
        ..Default::default()
    };
    if bounds.is_empty() {
        return Ok(summary);
    }
    let mut assignment = TopicPartitionList::new();
    for (p, (start, _)) in &bounds {
        assignment.add_partition_offset(&topic, *p, Offset::Offset(*start))?;
    }
    consumer.assign(&assignment)?;

    let writer = Writer::new(
        pool.clone(),
        config.batch.write_mode,
        storage,
        metrics.clone(),
    );
    let mut pipeline = Pipeline::new(
        pool,
        writer,
        None,
        PipelineSettings {
            topic: topic.clone(),
            dedupe_capacity: config.batch.dedupe_capacity,
            device_cache_capacity: config.batch.device_cache_capacity,
            tenant_settings_ttl: Duration::from_secs(config.batch.tenant_settings_ttl_secs),
        },
        metrics,
    );
    let progress = if show_progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} records ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let mut open: HashMap<i32, i64> = bounds.iter().map(|(p, (_, end))| (*p, *end)).collect();
    let max_fixes = config.batch.max_fixes as usize;
    while !open.is_empty() {
        let mut batch: Vec<InRecord> = Vec::new();
        let mut fixes = 0usize;
        while fixes < max_fixes && !open.is_empty() {
            let message = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await
            {
                Ok(Ok(m)) => m,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "kafka consume error during replay");
                    continue;
                }
                Err(_) => {
                    return Err(ProcessorError::TaskFailed(
                        "replay (no record for 30s before the high watermark)",
                    ))
                }
            };
            let (p, offset) = (message.partition(), message.offset());
            let Some(end) = open.get(&p).copied() else {
                continue;
            };
            if offset >= end {
                open.remove(&p);
                continue;
            }
            if offset + 1 >= end {
                open.remove(&p);
            }
            let record = InRecord::decode(p, offset, message.payload());
            fixes += record.weight();
            batch.push(record);
        }
        if batch.is_empty() {
            continue;
        }
        let mut attempt = 0;
        let outcome = loop {
            match pipeline.process(&batch).await {
                Ok(outcome) => break outcome,
                Err(error) if attempt < 10 => {
                    attempt += 1;
                    tracing::warn!(%error, attempt, "replay batch failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(error) => return Err(error),
            }
        };
        summary.records += batch.len() as u64;
        summary.stored += outcome.stored.len() as u64;
        summary.duplicates += outcome.duplicates as u64;
        for (reason, count) in outcome.rejected {
            *summary
                .rejected
                .entry(reason.as_str().to_owned())
                .or_default() += count as u64;
        }
        progress.inc(batch.len() as u64);
    }
    progress.finish_and_clear();
    Ok(summary)
}
