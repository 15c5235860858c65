//! Ingest metrics, all in the service's own registry: fixes received / accepted / refused by
//! protocol and reason (`rate_limited` among them), request and produce latency, producer queue
//! depth, UDP drops by reason, UDP device lookups by outcome, Teltonika packets by transport and
//! outcome and open Teltonika sessions.
//! Labels are bounded (protocol, reason, status class); never a device id.

use gps_domain::Protocol;
use gps_runtime::ops::register;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry,
};

/// The ingest metric handles (cheap to clone).
#[derive(Clone)]
pub struct Metrics {
    /// Fixes that arrived (decoded or not), by protocol.
    pub fixes_received: IntCounterVec,
    /// Fixes acknowledged by Kafka, by protocol.
    pub fixes_accepted: IntCounterVec,
    /// Device status reports (battery, charging, alarm, motion, last seen) acknowledged by
    /// Kafka, by protocol.
    pub statuses_accepted: IntCounterVec,
    /// Fixes or requests refused, by protocol and reason.
    pub fixes_refused: IntCounterVec,
    /// HTTP requests by protocol and status code.
    pub requests: IntCounterVec,
    /// HTTP request latency by protocol.
    pub request_seconds: HistogramVec,
    /// Time from enqueue to Kafka acknowledgement.
    pub produce_seconds: Histogram,
    /// Records waiting in the producer (queued or in flight).
    pub producer_queue_depth: IntGauge,
    /// Requests by producer lane (`immediate`: no linger, few in flight; `batching`: lingering).
    pub produce_path: IntCounterVec,
    /// UDP datagrams received.
    pub udp_datagrams: prometheus::IntCounter,
    /// UDP datagrams dropped, by reason.
    pub udp_dropped: IntCounterVec,
    /// UDP device-id lookups run off the receive loop, by outcome (found, unknown, failed).
    pub udp_lookups: IntCounterVec,
    /// Teltonika packets by transport (tcp, udp) and outcome (`acked` or the refusal reason).
    pub teltonika_packets: IntCounterVec,
    /// Open Teltonika TCP sessions.
    pub teltonika_connections: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let latency = exponential_buckets(0.000_25, 2.0, 16).expect("valid buckets");
        let metrics = Self {
            fixes_received: counter(
                "gps_ingest_fixes_received_total",
                "Fixes that arrived, decoded or not",
                &["protocol"],
            ),
            fixes_accepted: counter(
                "gps_ingest_fixes_accepted_total",
                "Fixes acknowledged by Kafka",
                &["protocol"],
            ),
            statuses_accepted: counter(
                "gps_ingest_statuses_accepted_total",
                "Device status reports acknowledged by Kafka",
                &["protocol"],
            ),
            fixes_refused: counter(
                "gps_ingest_fixes_refused_total",
                "Fixes (or whole requests) refused, by reason",
                &["protocol", "reason"],
            ),
            requests: counter(
                "gps_ingest_requests_total",
                "HTTP requests by protocol and status",
                &["protocol", "status"],
            ),
            request_seconds: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gps_ingest_request_duration_seconds",
                        "HTTP request latency, including the Kafka acknowledgement",
                    )
                    .buckets(latency.clone()),
                    &["protocol"],
                )
                .expect("valid metric"),
            ),
            produce_seconds: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gps_ingest_produce_duration_seconds",
                        "Time from enqueue to Kafka acknowledgement",
                    )
                    .buckets(latency),
                )
                .expect("valid metric"),
            ),
            producer_queue_depth: register(
                registry,
                IntGauge::new(
                    "gps_ingest_producer_queue_depth",
                    "Records queued or in flight in the Kafka producer",
                )
                .expect("valid metric"),
            ),
            produce_path: counter(
                "gps_ingest_produce_path_total",
                "Requests by Kafka producer lane (immediate: no linger; batching: lingering)",
                &["path"],
            ),
            udp_datagrams: register(
                registry,
                prometheus::IntCounter::new(
                    "gps_ingest_udp_datagrams_total",
                    "UDP datagrams received",
                )
                .expect("valid metric"),
            ),
            udp_dropped: counter(
                "gps_ingest_udp_dropped_total",
                "UDP datagrams dropped, by reason",
                &["reason"],
            ),
            udp_lookups: counter(
                "gps_ingest_udp_lookups_total",
                "UDP device-id lookups run off the receive loop, by outcome",
                &["outcome"],
            ),
            teltonika_packets: counter(
                "gps_ingest_teltonika_packets_total",
                "Teltonika packets by transport and outcome (acked or the refusal reason)",
                &["transport", "outcome"],
            ),
            teltonika_connections: register(
                registry,
                IntGauge::new(
                    "gps_ingest_teltonika_connections",
                    "Open Teltonika TCP sessions",
                )
                .expect("valid metric"),
            ),
        };
        for path in ["immediate", "batching"] {
            metrics.produce_path.with_label_values(&[path]);
        }
        for p in Protocol::ALL {
            metrics.fixes_received.with_label_values(&[p.as_str()]);
            metrics.fixes_accepted.with_label_values(&[p.as_str()]);
            metrics.statuses_accepted.with_label_values(&[p.as_str()]);
        }
        metrics
    }

    /// Count `n` refused fixes (or requests) of `protocol` for `reason`.
    pub fn refused(&self, protocol: Protocol, reason: &str, n: u64) {
        self.fixes_refused
            .with_label_values(&[protocol.as_str(), reason])
            .inc_by(n);
    }
}
