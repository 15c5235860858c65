//! The processor's metrics, registered in its own registry: what was consumed, accepted,
//! rejected (by reason), deduplicated, written and published, the events raised, and how far
//! behind it is. Labels are bounded: reason codes, dedupe stages, event types and partition
//! numbers only.

use gps_domain::events::{Event, EventType};
use gps_domain::reject::RejectReason;
use gps_runtime::ops::register;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Every metric of the processor.
#[derive(Clone)]
pub struct Metrics {
    /// Records consumed from the fixes topic.
    pub records: IntCounter,
    /// Fixes newly stored.
    pub accepted: IntCounter,
    /// Fixes (or records) quarantined, by reason code.
    pub rejected: IntCounterVec,
    /// Duplicates dropped, by stage (`memory`, `batch`, `database`).
    pub duplicates: IntCounterVec,
    /// Fixes per written batch.
    pub batch_fixes: Histogram,
    /// Seconds per database write (partition check + transaction), by write path
    /// (`copy`, `copy_staged`, `unnest`).
    pub write_seconds: HistogramVec,
    /// Direct COPYs that met an already stored row and went through the staging path.
    pub direct_copy_conflicts: IntCounter,
    /// Batches retried after a transient failure.
    pub batch_retries: IntCounter,
    /// Live messages that could not be published to Redis.
    pub publish_failures: IntCounter,
    /// Live messages published.
    pub published: IntCounter,
    /// Consumer lag in records, per partition of the fixes topic.
    pub consumer_lag: IntGaugeVec,
    /// Daily partitions created and dropped by upkeep and the writer, by action.
    pub partitions: IntCounterVec,
    /// Events newly stored, by type.
    pub events: IntCounterVec,
    /// Events that could not be produced to the events topic.
    pub event_publish_failures: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Create and register every metric in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            register(registry, IntCounter::new(name, help).expect("valid metric"))
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let metrics = Self {
            records: counter(
                "gps_processor_records_total",
                "records consumed from the fixes topic",
            ),
            accepted: counter("gps_processor_fixes_accepted_total", "fixes newly stored"),
            rejected: counter_vec(
                "gps_processor_fixes_rejected_total",
                "fixes or records quarantined, by reason",
                &["reason"],
            ),
            duplicates: counter_vec(
                "gps_processor_fixes_duplicate_total",
                "duplicate fixes dropped, by stage",
                &["stage"],
            ),
            batch_fixes: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("gps_processor_batch_fixes", "fixes per written batch")
                        .buckets(prometheus::exponential_buckets(1.0, 4.0, 10).expect("buckets")),
                )
                .expect("valid metric"),
            ),
            write_seconds: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gps_processor_write_seconds",
                        "seconds per batch write transaction",
                    )
                    .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("buckets")),
                    &["mode"],
                )
                .expect("valid metric"),
            ),
            direct_copy_conflicts: counter(
                "gps_processor_direct_copy_conflicts_total",
                "batches whose direct copy met a stored row and were written through staging",
            ),
            batch_retries: counter(
                "gps_processor_batch_retries_total",
                "batches retried after a transient failure",
            ),
            publish_failures: counter(
                "gps_processor_publish_failures_total",
                "live messages not published to redis",
            ),
            published: counter(
                "gps_processor_published_total",
                "live messages published to redis",
            ),
            consumer_lag: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "gps_processor_consumer_lag",
                        "records behind the high watermark, per partition",
                    ),
                    &["partition"],
                )
                .expect("valid metric"),
            ),
            partitions: counter_vec(
                "gps_processor_partitions_total",
                "daily position partitions created or dropped",
                &["action"],
            ),
            events: counter_vec(
                "gps_processor_events_total",
                "events newly stored, by type",
                &["type"],
            ),
            event_publish_failures: counter(
                "gps_processor_event_publish_failures_total",
                "events not produced to the events topic",
            ),
        };
        for event_type in EventType::ALL {
            metrics.events.with_label_values(&[event_type.as_str()]);
        }
        for reason in RejectReason::ALL {
            metrics.rejected.with_label_values(&[reason.as_str()]);
        }
        for stage in ["memory", "batch", "database"] {
            metrics.duplicates.with_label_values(&[stage]);
        }
        metrics
    }

    /// Count newly stored events.
    pub fn count_events<'a>(&self, events: impl IntoIterator<Item = &'a Event>) {
        for event in events {
            self.events
                .with_label_values(&[event.event_type.as_str()])
                .inc();
        }
    }
}
