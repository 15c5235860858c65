//! The delivery worker's metrics, registered in the registry of the service that runs it:
//! attempts by outcome (`delivered`, `retried`, `failed` for good) and their duration. Labels
//! are bounded: the three outcomes only.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// Every metric of the delivery worker.
#[derive(Clone)]
pub struct Metrics {
    /// Attempts by outcome: `delivered`, `retried` (failed, will be retried), `failed` (failed
    /// for the last time).
    pub attempts: IntCounterVec,
    /// Seconds per attempt (request and capped response).
    pub attempt_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Create and register every metric in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let attempts = IntCounterVec::new(
            Opts::new(
                "gps_webhook_deliveries_total",
                "Webhook delivery attempts by outcome (delivered, retried, failed)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let attempt_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "gps_webhook_attempt_seconds",
                "Seconds per webhook delivery attempt",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(attempts.clone()))
            .expect("metric names are unique per registry");
        registry
            .register(Box::new(attempt_seconds.clone()))
            .expect("metric names are unique per registry");
        // Every outcome is exported from the start (a rate of an absent series is no rate).
        for outcome in ["delivered", "retried", "failed"] {
            attempts.with_label_values(&[outcome]);
        }
        Self {
            attempts,
            attempt_seconds,
        }
    }
}
