//! Overload shedding: when the store falls behind, ingest refuses new fixes (`503` with
//! `Retry-After` over HTTP, a counted drop over UDP) before the backlog turns into minutes of
//! latency, and it does so per tenant, fairly: the tenants sending most of the load are shed
//! first, a quiet tenant keeps getting through.
//!
//! **How far behind.** [`LagMonitor`] polls Kafka every `--shed-poll-ms` for the processor
//! group's lag on the fixes topic: the sum over partitions of the high watermark minus the
//! group's committed offset (minus the low watermark where the group never committed). That is
//! records (one per device per request) the store has not written yet; it costs one offset fetch
//! and one watermark query per partition, off the request path.
//!
//! **Who is shed.** While the lag is at or below `--shed-lag-records` nothing is checked beyond
//! one atomic load. Above it, every tenant gets a token bucket of the same rate, the *tenant
//! limit*, in fixes per second (a status report without a fix counts as one). The limit starts
//! at half the whole recent offered rate, so a tenant sending more than half of everything is
//! shed at once, and halves every poll while the lag keeps growing (held while it shrinks), down
//! to `--shed-tenant-floor-per-sec`: water-filling, the heaviest tenants hit the limit first and
//! a tenant below the floor is never shed. Once the lag is back under the bound the limit
//! doubles every poll and is lifted when it exceeds twice the offered rate. A request may take
//! its bucket into debt (a batch larger than the burst still passes once); the debt sets
//! `Retry-After`.
//!
//! The buckets are per ingest instance, in memory; tenants are the authenticated ones, so the
//! map is bounded by the tenants that exist and is cleared when shedding ends.

use gps_runtime::config::KafkaArgs;
use gps_runtime::ops::register;
use gps_runtime::service::CancellationToken;
use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Tenants that get a label of their own on the shed counter; the rest count as `other`.
const LABELLED_TENANTS: usize = 20;
/// Factor of the tenant limit per poll while the lag grows over the bound.
const DECREASE: f64 = 0.5;
/// Factor of the tenant limit per poll once the lag is back under the bound.
const INCREASE: f64 = 2.0;
/// Longest `Retry-After` a shed request is given, seconds.
const MAX_RETRY_AFTER_SECS: u32 = 30;
/// Weight of the newest poll in the smoothed offered rate.
const RATE_SMOOTHING: f64 = 0.5;

/// Overload settings (flags and env vars).
#[derive(Debug, Clone, clap::Args)]
pub struct OverloadArgs {
    /// Shed load while the processor group's lag on the fixes topic exceeds this many records
    /// (one record per device per request); 0 turns shedding (and the lag poll) off.
    #[arg(
        long = "shed-lag-records",
        env = "INGEST_SHED_LAG_RECORDS",
        default_value_t = 100_000
    )]
    pub lag_records: u64,
    /// The consumer group whose lag is the store's backlog. Default: `PROCESSOR_GROUP_ID` when
    /// set (a deployment that sets it for the processor sets it for ingest alike), else
    /// `gps-processor`, the processor's default.
    #[arg(long = "shed-group", env = "INGEST_SHED_GROUP")]
    pub group: Option<String>,
    /// How often the lag is polled, ms.
    #[arg(long = "shed-poll-ms", env = "INGEST_SHED_POLL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub poll_ms: u64,
    /// Fixes per second every tenant keeps while shedding: the limit never shrinks below it.
    #[arg(
        long = "shed-tenant-floor-per-sec",
        env = "INGEST_SHED_TENANT_FLOOR_PER_SEC",
        default_value_t = 10.0
    )]
    pub tenant_floor_per_sec: f64,
}

impl OverloadArgs {
    /// The processor's consumer group (see [`OverloadArgs::group`]).
    pub fn group(&self) -> String {
        self.group
            .clone()
            .or_else(|| std::env::var("PROCESSOR_GROUP_ID").ok())
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| "gps-processor".to_owned())
    }

    /// The poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}

/// A shed request: the tenant should retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// Seconds for `Retry-After`.
    pub retry_after_secs: u32,
}

/// The overload guard (cheap to clone).
#[derive(Clone)]
pub struct Overload {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overload")
            .field("bound", &self.inner.bound)
            .field("shedding", &self.inner.shedding.load(Ordering::Relaxed))
            .finish()
    }
}

struct Inner {
    bound: u64,
    floor: f64,
    /// Fast path: false while the lag is under the bound and the limit lifted.
    shedding: AtomicBool,
    /// Fixes offered since the last poll, every tenant.
    offered: AtomicU64,
    state: Mutex<State>,
    metrics: OverloadMetrics,
}

#[derive(Default)]
struct State {
    /// Fixes per second per tenant; `None` while nothing is shed.
    limit: Option<f64>,
    buckets: HashMap<Uuid, Bucket>,
    last_lag: Option<u64>,
    last_poll: Option<Instant>,
    /// Smoothed offered rate, fixes per second, every tenant.
    offered_rate: f64,
    labelled: HashSet<Uuid>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

#[derive(Clone)]
struct OverloadMetrics {
    lag: IntGauge,
    bound: IntGauge,
    limit: Gauge,
    shed: IntCounterVec,
}

impl OverloadMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            lag: register(
                registry,
                IntGauge::new(
                    "gps_ingest_store_lag_records",
                    "Records of the fixes topic the processor group has not committed (the store's backlog)",
                )
                .expect("valid metric"),
            ),
            bound: register(
                registry,
                IntGauge::new(
                    "gps_ingest_shed_bound_records",
                    "Lag over which ingest sheds load (INGEST_SHED_LAG_RECORDS; 0 = off)",
                )
                .expect("valid metric"),
            ),
            limit: register(
                registry,
                Gauge::new(
                    "gps_ingest_shed_tenant_limit_fixes_per_second",
                    "Fixes per second each tenant may send while shedding (0 = not shedding)",
                )
                .expect("valid metric"),
            ),
            shed: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "gps_ingest_shed_total",
                        "Requests (or UDP datagrams) shed for overload, by tenant (the first 20 tenants shed, then other)",
                    ),
                    &["tenant"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

impl Overload {
    /// A guard shedding over `args.lag_records`, its metrics in `registry`.
    pub fn new(args: &OverloadArgs, registry: &Registry) -> Self {
        let metrics = OverloadMetrics::new(registry);
        metrics
            .bound
            .set(i64::try_from(args.lag_records).unwrap_or(i64::MAX));
        Self {
            inner: Arc::new(Inner {
                bound: args.lag_records,
                floor: args.tenant_floor_per_sec,
                shedding: AtomicBool::new(false),
                offered: AtomicU64::new(0),
                state: Mutex::new(State::default()),
                metrics,
            }),
        }
    }

    /// Whether shedding is configured at all.
    pub fn enabled(&self) -> bool {
        self.inner.bound > 0
    }

    /// Let `fixes` of `tenant` through, or shed them (the caller answers 503 or drops).
    pub fn admit(&self, tenant: Uuid, fixes: usize) -> Result<(), Shed> {
        self.admit_at(tenant, fixes, Instant::now())
    }

    fn admit_at(&self, tenant: Uuid, fixes: usize, now: Instant) -> Result<(), Shed> {
        let cost = fixes.max(1) as f64;
        self.inner.offered.fetch_add(cost as u64, Ordering::Relaxed);
        if !self.inner.shedding.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut state = self.lock();
        let Some(limit) = state.limit else {
            return Ok(());
        };
        let burst = limit.max(1.0);
        let bucket = state.buckets.entry(tenant).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * limit).min(burst);
        bucket.refilled = now;
        if bucket.tokens > 0.0 {
            bucket.tokens -= cost;
            return Ok(());
        }
        // The wait until the bucket is positive again, at least one second.
        let wait = (-bucket.tokens / limit).ceil().max(1.0);
        let retry_after_secs = (wait as u32).min(MAX_RETRY_AFTER_SECS);
        let label = if state.labelled.contains(&tenant) || state.labelled.len() < LABELLED_TENANTS {
            state.labelled.insert(tenant);
            tenant.to_string()
        } else {
            "other".to_owned()
        };
        drop(state);
        self.inner.metrics.shed.with_label_values(&[&label]).inc();
        Err(Shed { retry_after_secs })
    }

    /// Take one lag reading (`None`: the poll failed, the limit is held) and move the limit.
    pub fn observe(&self, lag: Option<u64>) {
        self.observe_at(lag, Instant::now());
    }

    fn observe_at(&self, lag: Option<u64>, now: Instant) {
        let offered = self.inner.offered.swap(0, Ordering::Relaxed) as f64;
        let mut state = self.lock();
        if let Some(last) = state.last_poll {
            let seconds = now.duration_since(last).as_secs_f64().max(0.001);
            state.offered_rate =
                RATE_SMOOTHING * offered / seconds + (1.0 - RATE_SMOOTHING) * state.offered_rate;
        }
        state.last_poll = Some(now);
        let Some(lag) = lag else {
            return;
        };
        self.inner
            .metrics
            .lag
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
        let growing = state.last_lag.is_none_or(|last| lag >= last);
        state.last_lag = Some(lag);
        let floor = self.inner.floor;
        state.limit = if lag > self.inner.bound {
            Some(match state.limit {
                None => (state.offered_rate * DECREASE).max(floor),
                Some(limit) if growing => (limit * DECREASE).max(floor),
                Some(limit) => limit,
            })
        } else {
            match state.limit {
                Some(limit) if limit * INCREASE <= 2.0 * state.offered_rate => {
                    Some(limit * INCREASE)
                }
                _ => None,
            }
        };
        if state.limit.is_none() {
            state.buckets.clear();
        }
        self.inner
            .shedding
            .store(state.limit.is_some(), Ordering::Relaxed);
        self.inner.metrics.limit.set(state.limit.unwrap_or(0.0));
        if state.limit.is_some() {
            tracing::debug!(lag, limit = state.limit, "shedding load");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads the processor group's lag on the fixes topic from the broker.
pub struct LagMonitor {
    consumer: Arc<BaseConsumer>,
    topic: String,
    timeout: Duration,
}

impl LagMonitor {
    /// A monitor of `group` on the fixes topic (no broker round trip yet; it never joins the
    /// group, it only reads its committed offsets).
    pub fn new(kafka: &KafkaArgs, group: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let mut config = gps_runtime::kafka::client_config(kafka, "gps-ingest-lag");
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        Ok(Self {
            consumer: Arc::new(config.create()?),
            topic: kafka.fixes_topic.clone(),
            timeout,
        })
    }

    /// The lag now, in records (blocking: call from a blocking task).
    fn lag_blocking(
        consumer: &BaseConsumer,
        topic: &str,
        timeout: Duration,
    ) -> Result<u64, KafkaError> {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let mut partitions = TopicPartitionList::new();
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                partitions.add_partition(topic, p.id());
            }
        }
        let committed = consumer.committed_offsets(partitions, timeout)?;
        let mut lag = 0u64;
        for element in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(topic, element.partition(), timeout)?;
            let from = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            lag += u64::try_from(high - from).unwrap_or(0);
        }
        Ok(lag)
    }

    /// The lag now, in records.
    pub async fn lag(&self) -> Result<u64, KafkaError> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || Self::lag_blocking(&consumer, &topic, timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Feed `overload` a reading every `interval` until `stop`.
    pub async fn run(self, overload: Overload, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Warn once per outage, not once per poll.
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let lag = match self.lag().await {
                Ok(lag) => {
                    if failing {
                        tracing::info!(lag, "store lag poll works again");
                    }
                    failing = false;
                    Some(lag)
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "store lag poll failed; shedding state held");
                    }
                    failing = true;
                    None
                }
            };
            overload.observe(lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(bound: u64, floor: f64) -> Overload {
        let args = OverloadArgs {
            lag_records: bound,
            group: None,
            poll_ms: 1_000,
            tenant_floor_per_sec: floor,
        };
        Overload::new(&args, &Registry::new())
    }

    /// `n` seconds after `start`.
    fn at(start: Instant, n: u64) -> Instant {
        start + Duration::from_secs(n)
    }

    #[test]
    fn nothing_is_shed_while_the_lag_is_under_the_bound() {
        let overload = guard(100, 1.0);
        let (start, noisy) = (Instant::now(), Uuid::new_v4());
        overload.observe_at(Some(0), start);
        for _ in 0..1_000 {
            assert!(overload.admit_at(noisy, 100, at(start, 0)).is_ok());
        }
        overload.observe_at(Some(100), at(start, 1));
        assert!(overload.admit_at(noisy, 100, at(start, 1)).is_ok());
        assert!(!overload.inner.shedding.load(Ordering::Relaxed));
    }

    #[test]
    fn over_the_bound_the_heaviest_tenant_is_shed_and_a_quiet_one_passes() {
        let overload = guard(10, 1.0);
        let (start, noisy, quiet) = (Instant::now(), Uuid::new_v4(), Uuid::new_v4());
        overload.observe_at(Some(0), start);
        // The noisy tenant offers 10,000 fixes a second, the quiet one 1.
        for _ in 0..1_000 {
            overload.admit_at(noisy, 10, at(start, 0)).unwrap();
        }
        overload.admit_at(quiet, 1, at(start, 0)).unwrap();
        overload.observe_at(Some(11), at(start, 1));
        let shed = (0..1_000)
            .filter_map(|_| overload.admit_at(noisy, 10, at(start, 1)).err())
            .count();
        assert!(shed > 500, "the noisy tenant is shed ({shed} of 1000)");
        let retry = overload
            .admit_at(noisy, 10, at(start, 1))
            .unwrap_err()
            .retry_after_secs;
        assert!((1..=MAX_RETRY_AFTER_SECS).contains(&retry));
        assert!(
            overload.admit_at(quiet, 1, at(start, 1)).is_ok(),
            "the quiet tenant passes"
        );
    }

    #[test]
    fn the_limit_shrinks_to_the_floor_while_the_lag_grows_and_is_lifted_after() {
        let overload = guard(10, 5.0);
        let start = Instant::now();
        overload.observe_at(Some(0), start);
        overload.inner.offered.store(10_000, Ordering::Relaxed);
        for (second, lag) in (1..=20).zip((20..).step_by(10)) {
            overload.observe_at(Some(lag), at(start, second));
        }
        assert_eq!(overload.lock().limit, Some(5.0), "floored");
        let quiet = Uuid::new_v4();
        assert!(
            overload.admit_at(quiet, 5, at(start, 20)).is_ok(),
            "a tenant within the floor passes"
        );
        // Draining under the bound: the limit grows, then is lifted.
        for second in 21..60 {
            overload.observe_at(Some(0), at(start, second));
        }
        assert_eq!(overload.lock().limit, None);
        assert!(!overload.inner.shedding.load(Ordering::Relaxed));
    }

    #[test]
    fn the_limit_holds_while_the_backlog_shrinks_or_the_poll_fails() {
        let overload = guard(10, 1.0);
        let start = Instant::now();
        overload.observe_at(Some(0), start);
        overload.inner.offered.store(1_000, Ordering::Relaxed);
        overload.observe_at(Some(100), at(start, 1));
        let limit = overload.lock().limit.expect("shedding");
        overload.observe_at(Some(90), at(start, 2));
        assert_eq!(overload.lock().limit, Some(limit));
        overload.observe_at(None, at(start, 3));
        assert_eq!(overload.lock().limit, Some(limit), "a failed poll holds it");
    }
}
