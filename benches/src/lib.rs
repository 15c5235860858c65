//! The benches' shared pieces and the load generator (`loadgen`): device simulation ([`sim`]),
//! wire encoders ([`wire`]), fleet seeding ([`seed`]), a measured run ([`run`]), the report's
//! arithmetic and output ([`stats`], [`report`]), the raw ceilings ([`ceiling`]), the
//! processor-alone drain ([`drain`]), the endless demo stream ([`demo`]), the fanout's
//! WebSocket load ([`ws`]), the fault drill ([`drill`]), history reads as the table grows
//! ([`history_scale`]), acknowledgement latency at fixed numbers in flight ([`concurrency`])
//! and the events' cost and latency with many fences ([`events_load`]), and what the overload
//! policy does when more is offered than the store keeps up with ([`overload`]).

pub mod ceiling;
pub mod concurrency;
pub mod demo;
pub mod drain;
pub mod drill;
pub mod events_load;
pub mod history_scale;
pub mod overload;
pub mod report;
pub mod run;
pub mod seed;
pub mod sim;
pub mod stats;
pub mod wire;
pub mod ws;

use gps_domain::{Fix, FixEnvelope, Protocol};
use uuid::Uuid;

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// A database statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A Kafka call failed.
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A Redis command failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// Connecting to a dependency failed.
    #[error(transparent)]
    Runtime(#[from] gps_runtime::RuntimeError),
    /// Writing the report or chart failed.
    #[error("cannot write {path}: {reason}")]
    Output {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Anything else while setting up.
    #[error("setup failed: {0}")]
    Setup(String),
}

/// An envelope of `n` plausible fixes of one device, one second apart.
pub fn sample_envelope(n: usize) -> FixEnvelope {
    let fixes = (0..n)
        .map(|i| {
            let mut fix = Fix::new(
                1_700_000_000_000 + i as i64 * 1000,
                52.52 + i as f64 * 1e-4,
                13.40,
            );
            fix.speed_mps = Some(13.9);
            fix.heading_deg = Some(90.0);
            fix.accuracy_m = Some(5.0);
            fix.battery_pct = Some(80.0);
            fix
        })
        .collect();
    FixEnvelope::new(
        Uuid::new_v4(),
        Uuid::new_v4(),
        "358240051111110",
        Protocol::Json,
        1_700_000_100_000,
        fixes,
    )
}

/// A realistic track of `n` fixes of one simulated vehicle at 1 Hz (driving with curves, stops
/// and wandering GPS error), deterministic: the same `n` always gives the same track.
pub fn sample_track(n: usize) -> Vec<Fix> {
    let mut vehicle = sim::Vehicle::new(
        7,
        52.52,
        13.40,
        1_700_000_000_000,
        sim::MotionLimits::default(),
    );
    (0..n).map(|_| vehicle.step(1000)).collect()
}
