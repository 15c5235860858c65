//! The service's batch source: a consumer in the processor group ([`GroupSource`]), whose
//! offsets are committed when the batch loop (`batches`) reports a batch done, and the consumer
//! settings it shares with `replay` ([`consumer_config`]).
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
//!
//! Membership: dynamic by default, static (`group.instance.id`) when `PROCESSOR_INSTANCE_ID`
//! is set. Each member runs a [`Watchdog`] (`watchdog.rs`) that rejoins the group when
//! partitions nobody makes progress on are left behind by a dead member.

use crate::batches::BatchSource;
use crate::config::MemberArgs;
use crate::error::{ProcessorError, Severity};
use crate::metrics::Metrics;
use crate::plan::{BatchOutcome, InRecord};
use crate::watchdog::{self, ConsumerMetrics, NewestStored, Watchdog};
use prometheus::IntGauge;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the rebalance callbacks share with the loop.
#[derive(Debug, Default)]
struct Assignment {
    /// Bumped on every revoke; the loop re-checks its batch when it changes.
    generation: u64,
    /// When the assignment last changed (revoke or assign), `None` before the first.
    changed_at: Option<std::time::Instant>,
    /// Partitions of the fixes topic currently assigned.
    assigned: HashSet<i32>,
    /// Offsets of finished batches whose commit has not succeeded yet.
    pending: BTreeMap<i32, i64>,
}

/// The assignment as the rebalance callbacks leave it, shared with the loop and the watchdog.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedAssignment(Arc<Mutex<Assignment>>);

impl SharedAssignment {
    fn lock(&self) -> std::sync::MutexGuard<'_, Assignment> {
        // A panic while holding this lock would already have aborted the batch; keep going.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The partitions assigned now and how long ago the assignment last changed (zero before
    /// the first assignment).
    pub(crate) fn snapshot(&self) -> (HashSet<i32>, Duration) {
        let state = self.lock();
        let age = state.changed_at.map_or(Duration::ZERO, |at| at.elapsed());
        (state.assigned.clone(), age)
    }
}

/// The consumer context: rebalance callbacks (lag is read by the watchdog).
pub(crate) struct ProcessorContext {
    state: SharedAssignment,
    metrics: Metrics,
    assigned: IntGauge,
    topic: String,
}

impl ProcessorContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Assignment> {
        self.state.lock()
    }
}

impl ClientContext for ProcessorContext {}

impl ConsumerContext for ProcessorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                let revoked: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                let pending = {
                    let mut state = self.lock();
                    state.generation += 1;
                    state.changed_at = Some(std::time::Instant::now());
                    for p in &revoked {
                        state.assigned.remove(p);
                    }
                    self.assigned.set(state.assigned.len() as i64);
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
            state.changed_at = Some(std::time::Instant::now());
            state.assigned.extend(added.iter().copied());
            self.assigned.set(state.assigned.len() as i64);
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

/// The consumer settings the service and `replay` share: offsets are never committed or
/// stored automatically (the batch loop decides), a partition without a committed offset
/// starts at its earliest record (every fix in the log is meant to be stored), and the broker
/// holds a fetch at most `fetch_wait_ms`.
pub fn consumer_config(
    kafka: &gps_runtime::config::KafkaArgs,
    client_id: &str,
    group_id: &str,
    fetch_wait_ms: u32,
) -> ClientConfig {
    let mut config = gps_runtime::kafka::client_config(kafka, client_id);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string());
    config
}

/// A consume error: fatal ones end the loop (`Err`), the rest are logged and waited out briefly.
pub(crate) async fn pause_after(error: KafkaError) -> Result<(), ProcessorError> {
    let error = ProcessorError::from(error);
    if error.severity() == Severity::Fatal {
        return Err(error);
    }
    tracing::warn!(%error, "kafka consume error");
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// The group consumer of the service.
pub(crate) type GroupConsumer = StreamConsumer<ProcessorContext>;

/// The service's batch source: the fixes topic, read in the processor's consumer group.
pub struct GroupSource {
    consumer: Arc<GroupConsumer>,
    state: SharedAssignment,
    topic: String,
    /// The assignment generation the batch in hand was collected under.
    generation: u64,
    /// Ingest receive time of the newest fix stored, for the freshness gauge.
    newest_stored: NewestStored,
    metrics: ConsumerMetrics,
}

impl std::fmt::Debug for GroupSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSource")
            .field("topic", &self.topic)
            .finish()
    }
}

impl GroupSource {
    /// Join `group_id` (statically when `member` names an instance id) and subscribe to the
    /// fixes topic of `kafka`. Returns the source and its watchdog, whose metrics are
    /// registered in `registry`; the caller runs [`Watchdog::run`].
    pub fn subscribe(
        kafka: &gps_runtime::config::KafkaArgs,
        group_id: &str,
        member: &MemberArgs,
        fetch_wait_ms: u32,
        metrics: Metrics,
        registry: &prometheus::Registry,
    ) -> Result<(Self, Watchdog), ProcessorError> {
        let state = SharedAssignment::default();
        let consumer_metrics = ConsumerMetrics::new(registry);
        let context = ProcessorContext {
            state: state.clone(),
            metrics: metrics.clone(),
            assigned: consumer_metrics.assigned.clone(),
            topic: kafka.fixes_topic.clone(),
        };
        let mut config = consumer_config(kafka, "gps-processor", group_id, fetch_wait_ms);
        config
            .set("session.timeout.ms", member.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", "1000");
        if let Some(instance) = &member.instance_id {
            config.set("group.instance.id", instance);
        }
        let consumer: GroupConsumer = config.create_with_context(context)?;
        consumer.subscribe(&[&kafka.fixes_topic])?;
        let consumer = Arc::new(consumer);
        let newest_stored = NewestStored::default();
        let watchdog = Watchdog {
            consumer: consumer.clone(),
            state: state.clone(),
            kafka: kafka.clone(),
            group_id: group_id.to_owned(),
            stall: member.stall(),
            interval: member.watch_interval(),
            metrics: consumer_metrics.clone(),
            lag: metrics,
            health: watchdog::Health::default(),
            newest_stored: newest_stored.clone(),
        };
        let source = Self {
            consumer,
            state,
            topic: kafka.fixes_topic.clone(),
            generation: 0,
            newest_stored,
            metrics: consumer_metrics,
        };
        Ok((source, watchdog))
    }

    /// Commit the pending offsets synchronously (on a blocking thread: the call waits for the
    /// broker). Failures are logged and left pending; the next commit or the revoke retries
    /// them.
    async fn commit(&self) {
        let pending = self.state.lock().pending.clone();
        if pending.is_empty() {
            return;
        }
        let consumer = self.consumer.clone();
        let tpl = offsets_list(&self.topic, &pending);
        let result =
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await;
        match result {
            Ok(Ok(())) => {
                let mut state = self.state.lock();
                for (p, o) in pending {
                    if state.pending.get(&p) == Some(&o) {
                        state.pending.remove(&p);
                    }
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "offset commit failed; will retry"),
            Err(error) => tracing::warn!(%error, "offset commit task failed"),
        }
    }
}

impl BatchSource for GroupSource {
    async fn recv(&mut self) -> Result<Option<InRecord>, ProcessorError> {
        loop {
            match self.consumer.recv().await {
                Ok(message) => {
                    return Ok(Some(InRecord::decode(
                        message.partition(),
                        message.offset(),
                        message.payload(),
                    )))
                }
                Err(error) => pause_after(error).await?,
            }
        }
    }

    fn prune(&mut self, batch: &mut Vec<InRecord>) -> bool {
        let state = self.state.lock();
        if state.generation == self.generation {
            return false;
        }
        self.generation = state.generation;
        let before = batch.len();
        batch.retain(|r| state.assigned.contains(&r.partition));
        if before != batch.len() {
            tracing::info!(
                dropped = before - batch.len(),
                "records of revoked partitions dropped from the batch"
            );
        }
        true
    }

    fn stored(&mut self, outcome: &BatchOutcome) {
        let Some(newest) = outcome.stored.iter().map(|s| s.received).max() else {
            return;
        };
        let newest = self
            .newest_stored
            .fetch_max(newest, Ordering::Relaxed)
            .max(newest);
        watchdog::update_freshness(&self.metrics.freshness, newest);
    }

    async fn done(&mut self, batch: &[InRecord]) {
        {
            let mut state = self.state.lock();
            for r in batch {
                let next = state.pending.entry(r.partition).or_insert(r.offset + 1);
                *next = (*next).max(r.offset + 1);
            }
        }
        self.commit().await;
    }

    async fn close(&mut self) {
        // Leave the group cleanly so the partitions move at once, not after the session timeout.
        self.commit().await;
        self.consumer.unsubscribe();
        tracing::info!("consumer left the group");
    }
}
