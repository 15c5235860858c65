//! The query API's metrics, registered in the service's own registry.

use gps_runtime::ops::register;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Counters and histograms of the API.
#[derive(Clone)]
pub struct Metrics {
    /// Requests by matched route, method and status.
    pub requests: IntCounterVec,
    /// Latency by matched route.
    pub latency: HistogramVec,
    /// Logins by outcome.
    pub logins: IntCounterVec,
    /// Requests refused by a rate limit, by limit.
    pub rate_limited: IntCounterVec,
}

impl Metrics {
    /// Create and register.
    pub fn new(registry: &Registry) -> Self {
        Self {
            requests: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "gps_query_requests_total",
                        "HTTP requests by route and status",
                    ),
                    &["route", "method", "status"],
                )
                .expect("valid metric"),
            ),
            latency: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new("gps_query_request_seconds", "HTTP request latency")
                        .buckets(vec![
                            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                        ]),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            logins: register(
                registry,
                IntCounterVec::new(
                    Opts::new("gps_query_logins_total", "Login attempts by outcome"),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            rate_limited: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "gps_query_rate_limited_total",
                        "Requests refused by a rate limit",
                    ),
                    &["limit"],
                )
                .expect("valid metric"),
            ),
        }
        .with_audit_failures(registry)
    }

    /// Expose the audit rows lost ([`gps_store::audit::failed`]) as
    /// `gps_query_audit_failures_total`.
    fn with_audit_failures(self, registry: &Registry) -> Self {
        registry
            .register(Box::new(gps_store::audit::FailureMetric::new(
                "gps_query_audit_failures_total",
            )))
            .expect("metric names are unique per registry");
        self
    }
}
