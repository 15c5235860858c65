//! Fanout metrics, in the service's own registry: connections, subscriptions, messages sent,
//! fixes coalesced and dropped, closes by reason, Redis reconnects, delivery latency, session
//! re-checks and lost audit rows. Labels are bounded enums (message type, close reason, re-check
//! outcome), never a device or tenant id.

use gps_runtime::ops::register;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every fanout metric.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Connections accepted since start.
    pub connections_opened: IntCounter,
    /// Upgrade refusals by reason (`unauthorized`, `forbidden`, `origin`, `unavailable`).
    pub upgrades_refused: IntCounterVec,
    /// Active subscriptions by kind (`device` routes, `bbox`, `all`).
    pub subscriptions: IntGaugeVec,
    /// Messages written to clients by type.
    pub messages_sent: IntCounterVec,
    /// Fixes replaced by a newer fix of the same device in a full queue.
    pub coalesced: IntCounter,
    /// Fixes not delivered, by reason.
    pub dropped: IntCounterVec,
    /// Connection closes by reason.
    pub closes: IntCounterVec,
    /// Live messages received from Redis.
    pub live_messages: IntCounter,
    /// Fixes received from Redis.
    pub live_fixes: IntCounter,
    /// Events received from the Redis subscription.
    pub live_events: IntCounter,
    /// Events not delivered to a connection that wanted them, by reason (`closing`, `revoked`).
    pub events_dropped: IntCounterVec,
    /// Redis (re)subscriptions after a loss.
    pub redis_reconnects: IntCounter,
    /// Whether the Redis subscription is up (1) or lost (0).
    pub redis_subscribed: IntGauge,
    /// Client messages refused with an `error`.
    pub client_errors: IntCounterVec,
    /// Seconds from receipt on the Redis subscription to the WebSocket write of a fix.
    pub delivery_seconds: Histogram,
    /// Principal re-checks by outcome (`unchanged`, `changed`, `revoked`, `unavailable`).
    pub rechecks: IntCounterVec,
    /// Seconds one re-check sweep over every session took.
    pub recheck_sweep_seconds: Histogram,
}

/// Re-check outcomes, the bounded label set of `gps_fanout_rechecks_total`.
pub const RECHECK_OUTCOMES: [&str; 4] = ["unchanged", "changed", "revoked", "unavailable"];

/// Close reasons, the bounded label set of `gps_fanout_closes_total`.
pub const CLOSE_REASONS: [&str; 14] = [
    "client",
    "too_slow",
    "idle",
    "shutdown",
    "message_too_big",
    "protocol_error",
    "too_many_errors",
    "write_failed",
    "account_disabled",
    "key_revoked",
    "credential_invalid",
    "credentials_changed",
    "permission_revoked",
    "rate_limited",
];

impl Metrics {
    /// Register every metric in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let counter_vec = |name: &str, help: &str, label: &str| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str| {
            register(registry, IntCounter::new(name, help).expect("valid metric"))
        };
        let gauge = |name: &str, help: &str| {
            register(registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let metrics = Self {
            connections: gauge("gps_fanout_connections", "Open WebSocket connections"),
            connections_opened: counter(
                "gps_fanout_connections_opened_total",
                "WebSocket connections accepted",
            ),
            upgrades_refused: counter_vec(
                "gps_fanout_upgrades_refused_total",
                "WebSocket upgrades refused before the handshake, by reason",
                "reason",
            ),
            subscriptions: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "gps_fanout_subscriptions",
                        "Active subscriptions: device routes, bounding boxes and all-device subscriptions",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            messages_sent: counter_vec(
                "gps_fanout_messages_sent_total",
                "Messages written to WebSocket clients, by type",
                "type",
            ),
            coalesced: counter(
                "gps_fanout_fixes_coalesced_total",
                "Queued fixes replaced by a newer fix of the same device for a slow client",
            ),
            dropped: counter_vec(
                "gps_fanout_fixes_dropped_total",
                "Fixes not delivered, by reason",
                "reason",
            ),
            closes: counter_vec(
                "gps_fanout_closes_total",
                "WebSocket connections closed, by reason",
                "reason",
            ),
            live_messages: counter(
                "gps_fanout_live_messages_total",
                "Live batches received from the Redis subscription",
            ),
            live_fixes: counter(
                "gps_fanout_live_fixes_total",
                "Fixes received from the Redis subscription",
            ),
            live_events: counter(
                "gps_fanout_live_events_total",
                "Events received from the Redis subscription",
            ),
            events_dropped: counter_vec(
                "gps_fanout_events_dropped_total",
                "Events not delivered to a connection that asked for them, by reason",
                "reason",
            ),
            redis_reconnects: counter(
                "gps_fanout_redis_reconnects_total",
                "Redis subscriptions re-established after a loss",
            ),
            redis_subscribed: gauge(
                "gps_fanout_redis_subscribed",
                "1 while the Redis live subscription is up",
            ),
            client_errors: counter_vec(
                "gps_fanout_client_errors_total",
                "Client messages answered with an error, by code",
                "code",
            ),
            delivery_seconds: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gps_fanout_delivery_seconds",
                        "Seconds from receipt on the Redis subscription to the WebSocket write",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ]),
                )
                .expect("valid metric"),
            ),
            rechecks: counter_vec(
                "gps_fanout_rechecks_total",
                "Re-checks of a live session principal (one per distinct principal per sweep), by outcome",
                "outcome",
            ),
            recheck_sweep_seconds: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gps_fanout_recheck_sweep_seconds",
                        "Seconds one re-check sweep over every live session took",
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0]),
                )
                .expect("valid metric"),
            ),
        };
        registry
            .register(Box::new(gps_store::audit::FailureMetric::new(
                "gps_fanout_audit_failures_total",
            )))
            .expect("metric names are unique per registry");
        // Pre-create the bounded label values so that dashboards see zeros, not absences.
        for reason in CLOSE_REASONS {
            metrics.closes.with_label_values(&[reason]);
        }
        for kind in ["device", "bbox", "all"] {
            metrics.subscriptions.with_label_values(&[kind]);
        }
        for kind in ["fix", "status", "event", "snapshot", "control"] {
            metrics.messages_sent.with_label_values(&[kind]);
        }
        for outcome in RECHECK_OUTCOMES {
            metrics.rechecks.with_label_values(&[outcome]);
        }
        for reason in ["undecodable", "tenant_mismatch", "closing", "revoked"] {
            metrics.dropped.with_label_values(&[reason]);
        }
        for reason in ["closing", "revoked"] {
            metrics.events_dropped.with_label_values(&[reason]);
        }
        metrics
    }
}
