//! The consumer's watchdog: it reads the group's committed offsets and the high watermarks of
//! every partition of the fixes topic every `PROCESSOR_WATCH_INTERVAL_MS`, publishes lag,
//! stall, the age of the oldest unstored record and freshness as metrics, answers the
//! `consumer` readiness check, and makes this instance rejoin the group when partitions it does
//! not own make no progress.
//!
//! Why (issue 18): on tansu 0.6 the partitions of a SIGKILLed member are never handed to the
//! members that remain, and a member that joins while the dead one still counts gets nothing;
//! measured with real processes, a member that leaves and joins again once the dead member's
//! session ended is given every partition at once. On Apache Kafka the group moves the
//! partitions by itself after the session timeout, their committed offsets move again, and the
//! watchdog stays quiet. Rejoining is safe on both: offsets are committed only after the
//! database (the revoke commits finished batches, the rest is replayed and absorbed by the
//! primary key).
//!
//! The judgement ([`StallTracker`]) is pure, with time passed in, and unit-tested; the task
//! around it ([`Watchdog::run`]) does the I/O.

use crate::consumer::{GroupConsumer, SharedAssignment};
use crate::metrics::Metrics;
use gps_runtime::config::KafkaArgs;
use gps_runtime::ops::register;
use gps_runtime::service::CancellationToken;
use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for a broker answer inside one check.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the first record of each lagging partition (the oldest unstored age).
const OLDEST_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after a change of this instance's assignment (a rebalance) the watchdog waits
/// before it acts: the new owners get that long to commit.
pub const SETTLE: Duration = Duration::from_secs(3);

/// Why the watchdog made this instance rejoin the group (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// This instance owns no partition while partitions of the group are stalled.
    IdleWhileLagging,
    /// This instance owns partitions, and partitions it does not own are stalled.
    OrphanedPartitions,
}

impl Recovery {
    /// Every reason, for pre-registered label values.
    pub const ALL: [Self; 2] = [Self::IdleWhileLagging, Self::OrphanedPartitions];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdleWhileLagging => "idle_while_lagging",
            Self::OrphanedPartitions => "orphaned_partitions",
        }
    }
}

/// The metrics of the group member and its watchdog (the per-partition lag gauge is
/// [`Metrics::consumer_lag`]).
#[derive(Clone)]
pub struct ConsumerMetrics {
    /// Partitions of the fixes topic assigned to this instance.
    pub assigned: IntGauge,
    /// Rejoins made by the watchdog, by reason.
    pub recoveries: IntCounterVec,
    /// Records between the committed offsets and the high watermarks, all partitions of the
    /// group (whoever owns them).
    pub group_lag: IntGauge,
    /// Partitions of the group with lag and no committed progress for the stall time.
    pub stalled: IntGauge,
    /// Seconds since the oldest record not yet committed by the group was produced.
    pub oldest_unstored_age: Gauge,
    /// Seconds between now and the ingest receive time of the newest fix this instance stored.
    pub freshness: Gauge,
}

impl std::fmt::Debug for ConsumerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsumerMetrics")
    }
}

impl ConsumerMetrics {
    /// Create and register the metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            register(registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let seconds = |name: &str, help: &str| {
            register(registry, Gauge::new(name, help).expect("valid metric"))
        };
        let metrics = Self {
            assigned: gauge(
                "gps_processor_assigned_partitions",
                "partitions of the fixes topic assigned to this instance",
            ),
            recoveries: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "gps_processor_consumer_recoveries_total",
                        "consumer group rejoins made by the watchdog, by reason",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            group_lag: gauge(
                "gps_processor_group_lag",
                "records between the group's committed offsets and the high watermarks, all partitions",
            ),
            stalled: gauge(
                "gps_processor_stalled_partitions",
                "partitions with lag and no committed progress for the stall time",
            ),
            oldest_unstored_age: seconds(
                "gps_processor_oldest_unstored_age_seconds",
                "seconds since the oldest record not yet committed by the group was produced",
            ),
            freshness: seconds(
                "gps_processor_freshness_seconds",
                "seconds between now and the ingest receive time of the newest fix stored here",
            ),
        };
        for reason in Recovery::ALL {
            metrics.recoveries.with_label_values(&[reason.as_str()]);
        }
        metrics
    }
}

/// One partition as the broker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionView {
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset (`None`: nothing committed yet).
    pub committed: Option<i64>,
    /// Low watermark (first retained offset).
    pub low: i64,
    /// High watermark (next offset to be written).
    pub high: i64,
}

impl PartitionView {
    /// Where the group resumes: the committed offset, or the first retained record.
    pub fn resume_at(&self) -> i64 {
        self.committed.unwrap_or(self.low).max(self.low)
    }

    /// Records not yet committed.
    pub fn lag(&self) -> i64 {
        (self.high - self.resume_at()).max(0)
    }
}

/// What one check concluded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Lag per partition, all partitions.
    pub lag: BTreeMap<i32, i64>,
    /// Partitions with lag and no committed progress for the stall time.
    pub stalled: Vec<i32>,
    /// Stalled partitions this instance does not own.
    pub stalled_elsewhere: Vec<i32>,
    /// Rejoin now, for this reason.
    pub recover: Option<Recovery>,
    /// Not ready: this instance owns nothing while partitions of the group are stalled.
    pub idle_while_lagging: bool,
}

/// Per-partition progress judged over successive checks. Time is a `Duration` since any fixed
/// start, passed in by the caller.
#[derive(Debug)]
pub struct StallTracker {
    stall: Duration,
    /// Per partition: the committed position last seen and since when it has not moved
    /// (reset while the partition has no lag).
    progress: BTreeMap<i32, (i64, Duration)>,
    last_recovery: Option<Duration>,
}

impl StallTracker {
    /// A tracker calling a partition stalled after `stall` without progress.
    pub fn new(stall: Duration) -> Self {
        Self {
            stall,
            progress: BTreeMap::new(),
            last_recovery: None,
        }
    }

    /// Judge one check at `now`: `views` of every partition, the partitions this instance owns
    /// and how long ago that assignment last changed. A rejoin is called for
    /// when a partition this instance does not own is stalled, the assignment has not changed
    /// for [`SETTLE`] (a rebalance that just moved partitions gets its chance), none of its
    /// own partitions is stalled (a shared cause, such as the database being down, is waited
    /// out) and no rejoin was made within the stall time.
    pub fn observe(
        &mut self,
        now: Duration,
        views: &[PartitionView],
        assigned: &HashSet<i32>,
        assignment_age: Duration,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        for view in views {
            let (resume_at, lag) = (view.resume_at(), view.lag());
            verdict.lag.insert(view.partition, lag);
            let progress = self
                .progress
                .entry(view.partition)
                .or_insert((resume_at, now));
            if progress.0 != resume_at || lag == 0 {
                *progress = (resume_at, now);
            }
            if lag > 0 && now.saturating_sub(progress.1) >= self.stall {
                verdict.stalled.push(view.partition);
            }
        }
        verdict.stalled_elsewhere = verdict
            .stalled
            .iter()
            .copied()
            .filter(|p| !assigned.contains(p))
            .collect();
        verdict.idle_while_lagging = assigned.is_empty() && !verdict.stalled.is_empty();
        let settled = assignment_age >= SETTLE
            && self
                .last_recovery
                .is_none_or(|at| now.saturating_sub(at) >= self.stall);
        // Its own partitions stalled too: the cause is shared (the database is down), and a
        // rejoin would only move partitions between members that all wait.
        let own_stalled = verdict.stalled.len() > verdict.stalled_elsewhere.len();
        if settled && !own_stalled && !verdict.stalled_elsewhere.is_empty() {
            verdict.recover = Some(if assigned.is_empty() {
                Recovery::IdleWhileLagging
            } else {
                Recovery::OrphanedPartitions
            });
            self.last_recovery = Some(now);
        }
        verdict
    }
}

/// What the `consumer` readiness check reports: `Some(problem)` while not ready.
pub type Health = Arc<Mutex<Option<String>>>;

/// Newest ingest receive time (ms since the epoch) of a fix stored by this instance, 0 = none.
pub type NewestStored = Arc<AtomicI64>;

/// Set the freshness gauge from `newest` (ms since the epoch, 0 = nothing stored yet).
pub fn update_freshness(gauge: &Gauge, newest: i64) {
    if newest > 0 {
        let age_ms = gps_domain::fix::now_millis().saturating_sub(newest).max(0);
        gauge.set(age_ms as f64 / 1000.0);
    }
}

/// The watchdog task of one group member.
pub struct Watchdog {
    pub(crate) consumer: Arc<GroupConsumer>,
    pub(crate) state: SharedAssignment,
    pub(crate) kafka: KafkaArgs,
    pub(crate) group_id: String,
    pub(crate) stall: Duration,
    pub(crate) interval: Duration,
    pub(crate) metrics: ConsumerMetrics,
    pub(crate) lag: Metrics,
    pub(crate) health: Health,
    pub(crate) newest_stored: NewestStored,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("topic", &self.kafka.fixes_topic)
            .field("stall", &self.stall)
            .finish()
    }
}

impl Watchdog {
    /// The `consumer` readiness check: failing while this instance owns no partition and
    /// partitions of the group have lag without progress.
    pub fn readiness_check(
        &self,
    ) -> impl Fn() -> std::future::Ready<Result<(), String>> + Send + Sync + 'static {
        let health = self.health.clone();
        move || {
            let problem = health.lock().unwrap_or_else(|e| e.into_inner()).clone();
            std::future::ready(problem.map_or(Ok(()), Err))
        }
    }

    /// Check every interval until `stop`; a failed check is logged and tried again.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let probe = match this.oldest_probe() {
            Ok(probe) => Some(Arc::new(probe)),
            Err(error) => {
                tracing::warn!(%error, "cannot create the oldest-record probe; age not measured");
                None
            }
        };
        let started = Instant::now();
        let mut tracker = StallTracker::new(this.stall);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(this.interval) => {}
            }
            let worker = this.clone();
            let checked = tokio::task::spawn_blocking(move || worker.partitions()).await;
            let views = match checked {
                Ok(Ok(found)) => {
                    failing = false;
                    found
                }
                Ok(Err(error)) => {
                    if !failing {
                        tracing::warn!(%error, "consumer watchdog cannot read the group's offsets");
                    }
                    failing = true;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "consumer watchdog check failed");
                    continue;
                }
            };
            let (assigned, assignment_age) = this.state.snapshot();
            let verdict = tracker.observe(started.elapsed(), &views, &assigned, assignment_age);
            this.publish(&verdict, &assigned);
            if let Some(reason) = verdict.recover {
                this.rejoin(reason, &verdict, &assigned).await;
            }
            // After the decision: reading records may take a while.
            if let Some(probe) = &probe {
                let (worker, probe) = (this.clone(), probe.clone());
                let oldest =
                    tokio::task::spawn_blocking(move || worker.oldest_unstored(&probe, &views))
                        .await
                        .ok()
                        .flatten();
                let age = oldest.map_or(0.0, |produced| {
                    (gps_domain::fix::now_millis() - produced).max(0) as f64 / 1000.0
                });
                this.metrics.oldest_unstored_age.set(age);
            }
        }
    }

    /// Metrics and readiness from one verdict.
    fn publish(&self, verdict: &Verdict, assigned: &HashSet<i32>) {
        self.metrics.assigned.set(assigned.len() as i64);
        self.metrics.group_lag.set(verdict.lag.values().sum());
        self.metrics.stalled.set(verdict.stalled.len() as i64);
        for (partition, lag) in &verdict.lag {
            let label = partition.to_string();
            if assigned.contains(partition) {
                self.lag.consumer_lag.with_label_values(&[&label]).set(*lag);
            } else {
                let _ = self.lag.consumer_lag.remove_label_values(&[&label]);
            }
        }
        update_freshness(
            &self.metrics.freshness,
            self.newest_stored.load(Ordering::Relaxed),
        );
        let problem = verdict.idle_while_lagging.then(|| {
            format!(
                "assigned no partition while partitions {:?} of the group have lag and no progress for {}s",
                verdict.stalled,
                self.stall.as_secs()
            )
        });
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Leave the group and join it again as a new member (a blocking librdkafka call).
    async fn rejoin(&self, reason: Recovery, verdict: &Verdict, assigned: &HashSet<i32>) {
        let mut owned: Vec<i32> = assigned.iter().copied().collect();
        owned.sort_unstable();
        tracing::warn!(
            reason = reason.as_str(),
            stalled = ?verdict.stalled_elsewhere,
            assigned = ?owned,
            stall_secs = self.stall.as_secs(),
            "partitions of the group make no progress; rejoining the consumer group"
        );
        self.metrics
            .recoveries
            .with_label_values(&[reason.as_str()])
            .inc();
        let consumer = self.consumer.clone();
        let topic = self.kafka.fixes_topic.clone();
        let result = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            consumer.subscribe(&[&topic])
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "rejoining the consumer group failed"),
            Err(error) => tracing::error!(%error, "rejoining the consumer group failed"),
        }
    }

    /// Read every partition's committed offset and watermarks (blocking).
    fn partitions(&self) -> KafkaResult<Vec<PartitionView>> {
        let topic = &self.kafka.fixes_topic;
        let metadata = self.consumer.fetch_metadata(Some(topic), BROKER_TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut wanted = TopicPartitionList::new();
        for p in &partitions {
            wanted.add_partition(topic, *p);
        }
        let committed = self.consumer.committed_offsets(wanted, BROKER_TIMEOUT)?;
        let mut views = Vec::with_capacity(partitions.len());
        for p in partitions {
            let (low, high) = self.consumer.fetch_watermarks(topic, p, BROKER_TIMEOUT)?;
            let committed = committed
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            views.push(PartitionView {
                partition: p,
                committed,
                low,
                high,
            });
        }
        Ok(views)
    }

    /// A consumer outside the group that reads one record where the group resumes.
    fn oldest_probe(&self) -> KafkaResult<BaseConsumer> {
        gps_runtime::kafka::client_config(&self.kafka, "gps-processor-watchdog")
            .set("group.id", format!("{}-watchdog", self.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "10")
            .set("max.partition.fetch.bytes", "65536")
            .set("fetch.max.bytes", "1048576")
            .set("queued.max.messages.kbytes", "1024")
            .create()
    }

    /// The produce time (ms) of the oldest record the group has not committed, over every
    /// partition with lag: the first record at each partition's resume offset. `None` when
    /// nothing lags or no record arrived in time.
    fn oldest_unstored(&self, probe: &BaseConsumer, views: &[PartitionView]) -> Option<i64> {
        let topic = &self.kafka.fixes_topic;
        let mut tpl = TopicPartitionList::new();
        let mut waiting = HashSet::new();
        for view in views.iter().filter(|v| v.lag() > 0) {
            tpl.add_partition_offset(topic, view.partition, Offset::Offset(view.resume_at()))
                .ok()?;
            waiting.insert(view.partition);
        }
        if waiting.is_empty() {
            return None;
        }
        probe.assign(&tpl).ok()?;
        let deadline = Instant::now() + OLDEST_PROBE_TIMEOUT;
        let mut oldest: Option<i64> = None;
        while !waiting.is_empty() && Instant::now() < deadline {
            let Some(Ok(message)) = probe.poll(Duration::from_millis(100)) else {
                continue;
            };
            if waiting.remove(&message.partition()) {
                if let Some(at) = message.timestamp().to_millis() {
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
                // Stop fetching what we have seen.
                let mut done = TopicPartitionList::new();
                done.add_partition(topic, message.partition());
                let _ = probe.pause(&done);
            }
        }
        let _ = probe.unassign();
        oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(15);
    /// An assignment that has not changed for long.
    const LONG_AGO: Duration = Duration::from_secs(3600);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn view(partition: i32, committed: i64, high: i64) -> PartitionView {
        PartitionView {
            partition,
            committed: Some(committed),
            low: 0,
            high,
        }
    }

    fn owned(partitions: &[i32]) -> HashSet<i32> {
        partitions.iter().copied().collect()
    }

    #[test]
    fn lag_counts_from_the_committed_offset_or_the_first_retained_record() {
        assert_eq!(view(0, 40, 100).lag(), 60);
        let fresh = PartitionView {
            partition: 0,
            committed: None,
            low: 30,
            high: 100,
        };
        assert_eq!((fresh.resume_at(), fresh.lag()), (30, 70));
        // Committed below retention: resumes at the first retained record.
        assert_eq!(view(0, 10, 5).lag(), 0);
    }

    #[test]
    fn partitions_that_progress_or_have_no_lag_never_stall() {
        let mut tracker = StallTracker::new(STALL);
        let mine = owned(&[0]);
        for t in 0..60u64 {
            let views = [view(0, t as i64 * 10, t as i64 * 10 + 5), view(1, 50, 50)];
            let verdict = tracker.observe(secs(t), &views, &mine, LONG_AGO);
            assert!(verdict.stalled.is_empty(), "at {t}s: {verdict:?}");
            assert_eq!(verdict.recover, None);
        }
    }

    #[test]
    fn a_dead_members_partitions_make_the_survivor_rejoin_once_per_stall_time() {
        let mut tracker = StallTracker::new(STALL);
        let mine = owned(&[0]);
        // Partition 1 was another member's; it stops moving at 0 s while records keep coming.
        let at = |t: u64| {
            [
                view(0, 100 + t as i64, 101 + t as i64),
                view(1, 7, 20 + t as i64),
            ]
        };
        for t in [0, 5, 10] {
            let verdict = tracker.observe(secs(t), &at(t), &mine, LONG_AGO);
            assert_eq!(verdict.recover, None, "at {t}s");
        }
        let verdict = tracker.observe(secs(15), &at(15), &mine, LONG_AGO);
        assert_eq!(verdict.stalled, [1]);
        assert_eq!(verdict.stalled_elsewhere, [1]);
        assert_eq!(verdict.recover, Some(Recovery::OrphanedPartitions));
        assert!(!verdict.idle_while_lagging, "it owns a partition");
        // Not again within the stall time, even if still stalled.
        assert_eq!(
            tracker.observe(secs(20), &at(20), &mine, LONG_AGO).recover,
            None
        );
        // The rejoin changed nothing (the dead member still counted): try again later.
        assert_eq!(
            tracker.observe(secs(30), &at(30), &mine, LONG_AGO).recover,
            Some(Recovery::OrphanedPartitions)
        );
    }

    #[test]
    fn an_idle_member_is_not_ready_and_rejoins() {
        let mut tracker = StallTracker::new(STALL);
        let nothing = owned(&[]);
        let views = [view(0, 7, 20), view(1, 3, 3)];
        let first = tracker.observe(secs(0), &views, &nothing, LONG_AGO);
        assert!(!first.idle_while_lagging, "not stalled yet");
        let later = tracker.observe(secs(16), &views, &nothing, LONG_AGO);
        assert!(later.idle_while_lagging);
        assert_eq!(later.recover, Some(Recovery::IdleWhileLagging));
        // Once it owns the partition, it is ready again, though still catching up.
        let owns = tracker.observe(secs(17), &views, &owned(&[0, 1]), Duration::ZERO);
        assert!(!owns.idle_while_lagging);
        assert_eq!(owns.recover, None);
    }

    #[test]
    fn a_recent_assignment_change_gets_its_chance_first() {
        let mut tracker = StallTracker::new(STALL);
        let views = [view(0, 7, 20)];
        let mine = owned(&[1]);
        tracker.observe(secs(0), &views, &mine, LONG_AGO);
        // A rebalance at 14 s (the dead member's session ended): partition 0, stalled from
        // 15 s, is not acted on until the assignment has been still for SETTLE.
        assert_eq!(
            tracker.observe(secs(15), &views, &mine, secs(1)).recover,
            None
        );
        assert_eq!(
            tracker
                .observe(secs(14) + SETTLE, &views, &mine, SETTLE)
                .recover,
            Some(Recovery::OrphanedPartitions)
        );
    }

    #[test]
    fn a_shared_outage_stalls_every_partition_and_nobody_rejoins() {
        // The database is down: this member's partitions stall as well as the other's.
        let mut tracker = StallTracker::new(STALL);
        let mine = owned(&[0]);
        let views = [view(0, 7, 20), view(1, 3, 9)];
        for t in (0..120).step_by(5) {
            let verdict = tracker.observe(secs(t), &views, &mine, LONG_AGO);
            assert_eq!(verdict.recover, None, "at {t}s: {verdict:?}");
        }
        // Once its own partition moves again, the other's (still stuck) is acted on.
        let verdict = tracker.observe(
            secs(121),
            &[view(0, 20, 20), view(1, 3, 9)],
            &mine,
            LONG_AGO,
        );
        assert_eq!(verdict.recover, Some(Recovery::OrphanedPartitions));
    }

    #[test]
    fn a_stalled_partition_of_its_own_never_makes_it_rejoin() {
        // Its own database outage: rejoining would not help.
        let mut tracker = StallTracker::new(STALL);
        let mine = owned(&[0, 1]);
        let views = [view(0, 7, 20), view(1, 3, 9)];
        for t in (0..120).step_by(5) {
            let verdict = tracker.observe(secs(t), &views, &mine, LONG_AGO);
            assert_eq!(verdict.recover, None);
            assert!(!verdict.idle_while_lagging);
        }
        assert_eq!(
            tracker.observe(secs(120), &views, &mine, LONG_AGO).stalled,
            [0, 1]
        );
    }
}
