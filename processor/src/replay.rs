//! `processor replay`: rebuild `positions`, `last_positions` and `device_status` from the log.
//!
//! Reads every partition of the fixes topic from the start (or from the first record at or
//! after a given time) up to the high watermark seen at start, then stops. It runs the exact
//! batch pipeline of the service (validation, dedupe, the same writes), so replaying into an
//! empty database gives the rows the live run stored, and replaying into an existing one adds
//! only what is missing. Device statuses come back the same way: a status only moves forward
//! (newest report, newest alarm, newest `last_seen`), so a replay rebuilds each device's row
//! and never rewinds a newer one. It joins no group and commits nothing, and it neither re-quarantines
//! rejects (the live run did) nor publishes live messages (dashboards want the present).

use crate::batches::{run_batches, BatchSource, BatchTotals, RetryPolicy, Sinks};
use crate::config::{Config, ReplayArgs};
use crate::consumer::{consumer_config, pause_after};
use crate::error::ProcessorError;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::plan::InRecord;
use gps_runtime::service::CancellationToken;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// How long replay waits for a record before the high watermark before it gives up.
const STALL: Duration = Duration::from_secs(30);

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
    /// Device statuses moved forward.
    pub statuses: u64,
    /// Rejected fixes and records, by reason code.
    pub rejected: BTreeMap<String, u64>,
}

impl ReplaySummary {
    fn new(partitions: usize, totals: BatchTotals) -> Self {
        let BatchTotals {
            records,
            stored,
            duplicates,
            statuses,
            rejected,
        } = totals;
        Self {
            partitions,
            records,
            stored,
            duplicates,
            statuses,
            rejected,
        }
    }
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rejected: u64 = self.rejected.values().sum();
        write!(
            f,
            "replayed {} records from {} partitions: {} fixes stored, {} duplicates, {} device \
             statuses moved forward, {} rejected",
            self.records, self.partitions, self.stored, self.duplicates, self.statuses, rejected
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
    let (pool, storage) = crate::open_database(config).await?;
    let metrics = Metrics::new(&prometheus::Registry::new());
    let topic = config.kafka.fixes_topic.clone();
    let Some(partitions) = gps_runtime::kafka::partition_count(&config.kafka, &topic).await? else {
        tracing::warn!(%topic, "fixes topic does not exist; nothing to replay");
        return Ok(ReplaySummary::default());
    };
    let consumer: StreamConsumer = consumer_config(
        &config.kafka,
        "gps-processor-replay",
        &format!("gps-processor-replay-{}", uuid::Uuid::new_v4()),
        config.batch.fetch_wait_ms,
    )
    .create()?;
    let bounds = bounds(&consumer, &topic, partitions, args)?;
    if bounds.is_empty() {
        return Ok(ReplaySummary::new(partitions, BatchTotals::default()));
    }
    let mut assignment = TopicPartitionList::new();
    for (p, (start, _)) in &bounds {
        assignment.add_partition_offset(&topic, *p, Offset::Offset(*start))?;
    }
    consumer.assign(&assignment)?;

    let total: u64 = bounds.values().map(|(s, e)| (e - s) as u64).sum();
    let mut source = ReplaySource {
        consumer,
        open: bounds.iter().map(|(p, (_, end))| (*p, *end)).collect(),
        stall_deadline: None,
        progress: progress_bar(total, show_progress),
    };
    let mut pipeline = Pipeline::from_config(config, pool, storage, None, metrics.clone());
    pipeline.events_mut().replaying(args.rebuild_events);
    let sinks = Sinks {
        publisher: None,
        metrics: &metrics,
    };
    let totals = run_batches(
        &mut source,
        &mut pipeline,
        sinks,
        &config.batch.limits(),
        &RetryPolicy::REPLAY,
        &CancellationToken::new(),
    )
    .await?;
    Ok(ReplaySummary::new(partitions, totals))
}

/// Where each partition with something to replay starts, and where it ends (the high
/// watermark now).
fn bounds(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: usize,
    args: &ReplayArgs,
) -> Result<HashMap<i32, (i64, i64)>, ProcessorError> {
    let timeout = Duration::from_secs(10);
    let mut low_high = Vec::new();
    for p in 0..partitions as i32 {
        low_high.push((p, consumer.fetch_watermarks(topic, p, timeout)?));
    }
    let from_time_offsets = match args.start.from_time {
        Some(t) => {
            let mut query = TopicPartitionList::new();
            for (p, _) in &low_high {
                query.add_partition_offset(topic, *p, Offset::Offset(t.timestamp_millis()))?;
            }
            Some(consumer.offsets_for_times(query, timeout)?)
        }
        None => None,
    };
    let mut bounds = HashMap::new();
    for (p, (low, high)) in low_high {
        let start = match &from_time_offsets {
            None => low,
            Some(found) => match found.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(low),
                _ => high,
            },
        };
        if start < high {
            bounds.insert(p, (start, high));
        }
    }
    Ok(bounds)
}

fn progress_bar(total: u64, show: bool) -> ProgressBar {
    let progress = if show {
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
    progress
}

/// `replay`'s batch source: assigned partitions, each read up to the end it had at start.
struct ReplaySource {
    consumer: StreamConsumer,
    /// Partitions not finished yet, with the offset they end before.
    open: HashMap<i32, i64>,
    /// When waiting for the next record turns into a stall: set by the first wait since the
    /// last record or batch, so time spent writing a batch does not count.
    stall_deadline: Option<Instant>,
    progress: ProgressBar,
}

impl BatchSource for ReplaySource {
    async fn recv(&mut self) -> Result<Option<InRecord>, ProcessorError> {
        loop {
            if self.open.is_empty() {
                return Ok(None);
            }
            let deadline = *self
                .stall_deadline
                .get_or_insert_with(|| Instant::now() + STALL);
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => message,
                Ok(Err(error)) => {
                    pause_after(error).await?;
                    continue;
                }
                Err(_) => {
                    return Err(ProcessorError::ReplayStalled {
                        secs: STALL.as_secs(),
                    })
                }
            };
            self.stall_deadline = None;
            let (p, offset) = (message.partition(), message.offset());
            let Some(end) = self.open.get(&p).copied() else {
                continue;
            };
            if offset + 1 >= end {
                self.open.remove(&p);
            }
            if offset < end {
                return Ok(Some(InRecord::decode(p, offset, message.payload())));
            }
        }
    }

    async fn done(&mut self, batch: &[InRecord]) {
        self.stall_deadline = None;
        self.progress.inc(batch.len() as u64);
    }

    async fn close(&mut self) {
        self.progress.finish_and_clear();
    }
}
