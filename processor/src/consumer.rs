//! The consumer-group loop of the service: collect a batch (max fixes, max wait), run it
//! through the [`Pipeline`], and only then commit its offsets; publish what was newly stored.
//!
//! Offsets live in Kafka and are committed synchronously after the database transaction
//! committed and every reject was acknowledged. A crash between the two replays the batch,
//! and replaying is harmless: rows are keyed (device, fix time) and inserted with
//! `ON CONFLICT DO NOTHING`, and `last_positions` only moves forward. That gives effectively
//! once storage without tying offsets to the database, so the same group and tools (lag,
//! reset-offsets) work as for any Kafka consumer.
//!
//! Rebalances ([`ProcessorContext`]): on revoke, offsets of finished batches that are not yet
//! committed are committed in the callback; records of revoked partitions still waiting in the
//! batch are dropped (their new owner reads them from the committed offset).

use crate::error::ProcessorError;
use crate::metrics::Metrics;
use crate::pipeline::{InRecord, Pipeline};
use crate::publisher::Publisher;
use gps_runtime::shutdown::Shutdown;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What the rebalance callbacks share with the loop.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Bumped on every revoke; the loop re-checks its batch when it changes.
    generation: u64,
    /// Partitions of the fixes topic currently assigned.
    assigned: HashSet<i32>,
    /// Offsets of finished batches whose commit has not succeeded yet.
    pending: BTreeMap<i32, i64>,
}

/// The consumer context: rebalance callbacks and statistics (consumer lag).
pub struct ProcessorContext {
    state: Arc<Mutex<Assignment>>,
    metrics: Metrics,
    topic: String,
}

impl ProcessorContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Assignment> {
        // A panic while holding this lock would already have aborted the batch; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for ProcessorContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let assigned = self.lock().assigned.clone();
        for (partition, stats) in &topic.partitions {
            if *partition >= 0 && assigned.contains(partition) && stats.consumer_lag >= 0 {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[&partition.to_string()])
                    .set(stats.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for ProcessorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let revoked: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                let pending = {
                    let mut state = self.lock();
                    state.generation += 1;
                    for p in &revoked {
                        state.assigned.remove(p);
                    }
                    std::mem::take(&mut state.pending)
                };
                // Commit what is done before the partitions go to another instance.
                if !pending.is_empty() {
                    let tpl = offsets_list(&self.topic, &pending);
                    if let Err(error) = consumer.commit(&tpl, CommitMode::Sync) {
                        tracing::warn!(%error, "commit on revoke failed; the new owner repeats those batches");
                    }
                }
                for p in &revoked {
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[&p.to_string()]);
                }
                tracing::info!(partitions = ?revoked, "partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let added: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
            let mut state = self.lock();
            state.generation += 1;
            state.assigned.extend(added.iter().copied());
            tracing::info!(partitions = ?added, "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(%error, "offset commit failed");
        }
    }
}

fn offsets_list(topic: &str, next: &BTreeMap<i32, i64>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in next {
        // Cannot fail for an offset value.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

/// Consumer settings of the service loop.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// Consumer group id.
    pub group_id: String,
    /// Max fixes per batch.
    pub max_fixes: usize,
    /// Max wait for a batch to fill.
    pub max_wait: Duration,
    /// A gap between records this long closes the batch.
    pub idle: Duration,
    /// The broker's fetch wait (`fetch.wait.max.ms`).
    pub fetch_wait_ms: u32,
}

/// The group consumer of the service.
pub type GroupConsumer = StreamConsumer<ProcessorContext>;

/// Create the group consumer and subscribe it to the fixes topic.
pub fn subscribe(
    kafka: &gps_runtime::config::KafkaArgs,
    settings: &LoopSettings,
    metrics: Metrics,
) -> Result<(Arc<GroupConsumer>, Arc<Mutex<Assignment>>), ProcessorError> {
    let state = Arc::new(Mutex::new(Assignment::default()));
    let context = ProcessorContext {
        state: state.clone(),
        metrics,
        topic: kafka.fixes_topic.clone(),
    };
    let consumer: GroupConsumer = gps_runtime::kafka::client_config(kafka, "gps-processor")
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group reads the whole log: every fix in it is meant to be stored.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("statistics.interval.ms", "5000")
        .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
        .create_with_context(context)?;
    consumer.subscribe(&[&kafka.fixes_topic])?;
    Ok((Arc::new(consumer), state))
}

/// Consume, process and commit until `shutdown`; then finish the batch in hand, commit it and
/// leave the group.
pub async fn run_loop(
    consumer: Arc<GroupConsumer>,
    state: Arc<Mutex<Assignment>>,
    mut pipeline: Pipeline,
    publisher: Publisher,
    settings: LoopSettings,
    metrics: Metrics,
    shutdown: Shutdown,
) -> Result<(), ProcessorError> {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let topic = consumer
        .subscription()
        .ok()
        .and_then(|s| s.elements().first().map(|e| e.topic().to_owned()))
        .unwrap_or_default();
    let mut generation = lock().generation;
    'outer: loop {
        // Collect one batch.
        let mut batch: Vec<InRecord> = Vec::new();
        let mut fixes = 0usize;
        let mut deadline: Option<Instant> = None;
        while fixes < settings.max_fixes {
            let wait = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(settings.idle),
                None => Duration::from_millis(500),
            };
            let received = tokio::select! {
                _ = shutdown.cancelled() => None,
                r = tokio::time::timeout(wait, consumer.recv()) => Some(r),
            };
            // Partitions may have moved during recv: drop what we no longer own.
            let now_generation = lock().generation;
            if now_generation != generation {
                generation = now_generation;
                let assigned = lock().assigned.clone();
                let before = batch.len();
                batch.retain(|r| assigned.contains(&r.partition));
                fixes = batch.iter().map(InRecord::weight).sum();
                if before != batch.len() {
                    tracing::info!(
                        dropped = before - batch.len(),
                        "records of revoked partitions dropped from the batch"
                    );
                }
                pipeline.forget_devices();
            }
            match received {
                None => break,
                Some(Err(_elapsed)) => {
                    if !batch.is_empty() {
                        break;
                    }
                }
                Some(Ok(Err(error))) => {
                    tracing::warn!(%error, "kafka consume error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(Ok(Ok(message))) => {
                    let record =
                        InRecord::decode(message.partition(), message.offset(), message.payload());
                    fixes += record.weight();
                    batch.push(record);
                    deadline.get_or_insert_with(|| Instant::now() + settings.max_wait);
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }

        if !batch.is_empty() {
            // Transient failures: back off and run the same batch again, never commit past it.
            let mut backoff = Duration::from_millis(100);
            let outcome = loop {
                match pipeline.process(&batch).await {
                    Ok(outcome) => break outcome,
                    Err(error) => {
                        metrics.batch_retries.inc();
                        tracing::warn!(%error, records = batch.len(), retry_in_ms = backoff.as_millis() as u64, "batch failed, retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.cancelled() => {
                                tracing::warn!("shutdown while retrying; the batch stays uncommitted");
                                break 'outer;
                            }
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            publisher.publish_stored(&outcome.stored);
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            for r in &batch {
                let e = next.entry(r.partition).or_insert(r.offset + 1);
                *e = (*e).max(r.offset + 1);
            }
            {
                let mut s = lock();
                for (p, o) in &next {
                    s.pending.insert(*p, *o);
                }
            }
            commit(&consumer, &state, &topic).await;
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    // Leave the group cleanly so the partitions move at once, not after the session timeout.
    commit(&consumer, &state, &topic).await;
    consumer.unsubscribe();
    tracing::info!("consumer left the group");
    Ok(())
}

/// Commit the pending offsets synchronously (on a blocking thread: the call waits for the
/// broker). Failures are logged and left pending; the next commit or the revoke retries them.
async fn commit(consumer: &Arc<GroupConsumer>, state: &Arc<Mutex<Assignment>>, topic: &str) {
    let pending = {
        let s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.pending.clone()
    };
    if pending.is_empty() {
        return;
    }
    let consumer = consumer.clone();
    let tpl = offsets_list(topic, &pending);
    let result = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await;
    match result {
        Ok(Ok(())) => {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            for (p, o) in pending {
                if s.pending.get(&p) == Some(&o) {
                    s.pending.remove(&p);
                }
            }
        }
        Ok(Err(error)) => tracing::warn!(%error, "offset commit failed; will retry"),
        Err(error) => tracing::warn!(%error, "offset commit task failed"),
    }
}
