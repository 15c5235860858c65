//! Ingest configuration: listeners, dependencies, limits, the auth cache and the Kafka producer's
//! tuning. Every value is a flag and an env var with a default that works on the local stack.

use clap::Parser;
use gps_runtime::config::{DatabaseArgs, InvalidConfig, KafkaArgs, LogArgs};
use std::net::SocketAddr;
use std::time::Duration;

/// Ingest configuration: flags and env vars.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ingest",
    about = "GPS ingest: devices in over HTTP, UDP and Teltonika TCP/UDP, into Kafka"
)]
pub struct Config {
    /// HTTP listen address (device endpoints, /metrics, /healthz, /readyz).
    #[arg(
        long = "http-addr",
        env = "INGEST_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,
    /// UDP listen address (binary datagrams).
    #[arg(
        long = "udp-addr",
        env = "INGEST_UDP_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub udp_addr: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub producer: ProducerArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub teltonika: TeltonikaArgs,
    /// Load shedding while the store is behind (`crate::overload`).
    #[command(flatten)]
    pub overload: crate::overload::OverloadArgs,
    /// `TRUSTED_PROXIES`: whose `X-Forwarded-For` names the source of the per-IP limits.
    #[command(flatten)]
    pub client_ip: gps_runtime::client_ip::ClientIpArgs,
}

/// The Teltonika listeners (Codec 8 / 8 Extended, `docs/teltonika.md`).
#[derive(Debug, Clone, clap::Args)]
pub struct TeltonikaArgs {
    /// Teltonika listen address: TCP and UDP on the same port (the device's "Domain"/"Port").
    #[arg(
        long = "teltonika-addr",
        env = "INGEST_TELTONIKA_ADDR",
        default_value = "127.0.0.1:8085"
    )]
    pub addr: SocketAddr,
    /// Do not listen for Teltonika devices at all.
    #[arg(long = "teltonika-disabled", env = "INGEST_TELTONIKA_DISABLED")]
    pub disabled: bool,
    /// A TCP session that sends nothing for this long is closed, seconds (the device reconnects
    /// when it has records to send).
    #[arg(long = "teltonika-idle-timeout-secs", env = "INGEST_TELTONIKA_IDLE_TIMEOUT_SECS",
          default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_secs: u64,
    /// Largest AVL data field accepted in one TCP frame, bytes; a larger one closes the session.
    /// Bounds each session's buffer (FMB units send at most a few kB per frame).
    #[arg(long = "teltonika-max-frame-bytes", env = "INGEST_TELTONIKA_MAX_FRAME_BYTES",
          default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(64..=65_535))]
    pub max_frame_bytes: u32,
    /// Most open Teltonika TCP sessions; further connections are closed at once.
    #[arg(long = "teltonika-max-connections", env = "INGEST_TELTONIKA_MAX_CONNECTIONS",
          default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,
    /// Most Teltonika UDP datagrams being looked up or produced at once; further ones are
    /// dropped unanswered (`busy`), and the device resends.
    #[arg(long = "teltonika-udp-max-inflight", env = "INGEST_TELTONIKA_UDP_MAX_INFLIGHT",
          default_value_t = 4_096, value_parser = clap::value_parser!(u32).range(1..))]
    pub udp_max_inflight: u32,
}

impl TeltonikaArgs {
    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// Request limits.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest request body accepted, bytes (larger → 413).
    #[arg(long = "max-body-bytes", env = "INGEST_MAX_BODY_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=64 * 1024 * 1024))]
    pub max_body_bytes: u32,
    /// Most fixes in one `POST /v1/fixes` (more → 413).
    #[arg(long = "max-batch", env = "INGEST_MAX_BATCH", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch: u32,
    /// Whole-request deadline, ms (a stuck request answers 408).
    #[arg(long = "request-timeout-ms", env = "INGEST_REQUEST_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub request_timeout_ms: u64,
}

/// Kafka producer tuning.
#[derive(Debug, Clone, clap::Args)]
pub struct ProducerArgs {
    /// Delivery timeout: how long a record may wait for the broker before the device gets 503
    /// (librdkafka's own `message.timeout.ms` is set 5 s later, see `producer.rs`). Keep it
    /// below device HTTP timeouts.
    #[arg(long = "delivery-timeout-ms", env = "INGEST_DELIVERY_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub delivery_timeout_ms: u64,
    /// How long the producer waits to fill a batch (`linger.ms`). Measured on the local stack:
    /// 20 ms lifts single-fix requests from ~8,600 to ~10,900 per second (fewer, larger produce
    /// requests) for at most 20 ms more before the device's answer.
    #[arg(
        long = "kafka-linger-ms",
        env = "INGEST_KAFKA_LINGER_MS",
        default_value_t = 20
    )]
    pub linger_ms: u32,
    /// Requests in flight above which the lingering producer is used; at most half as many and
    /// requests take the immediate one (`linger.ms=0`) again, answered in one broker round trip.
    /// 0 keeps every request on the lingering producer.
    #[arg(
        long = "kafka-immediate-max-inflight",
        env = "INGEST_KAFKA_IMMEDIATE_MAX_INFLIGHT",
        default_value_t = 64
    )]
    pub immediate_max_inflight: u32,
    /// Largest batch per partition, bytes (`batch.size`).
    #[arg(
        long = "kafka-batch-bytes",
        env = "INGEST_KAFKA_BATCH_BYTES",
        default_value_t = 1_000_000
    )]
    pub batch_bytes: u32,
    /// Compression codec (`compression.type`: none, gzip, snappy, lz4, zstd). `none` by default:
    /// the development broker (tansu) decompresses every batch it stores, which cost it ~40 % more
    /// CPU per record here; set `lz4` for an Apache Kafka cluster across a network
    /// (docker-compose does).
    #[arg(
        long = "kafka-compression",
        env = "INGEST_KAFKA_COMPRESSION",
        default_value = "none"
    )]
    pub compression: String,
    /// How envelopes are written to `gps.fixes` (`docs/envelope.md`): `binary` (the default;
    /// ~40 % fewer bytes, and 15–20× cheaper to encode and decode) or `json`, the only
    /// encoding processors built before the binary one read. Upgrade the processors first, then
    /// ingest; keep `json` while old processors may still consume the topic.
    #[arg(
        long = "envelope-format",
        env = "INGEST_ENVELOPE_FORMAT",
        default_value = "binary"
    )]
    pub envelope_format: gps_domain::EnvelopeFormat,
    /// Most records queued in the producer before requests get 503 (`queue.buffering.max.messages`).
    #[arg(
        long = "kafka-queue-max",
        env = "INGEST_KAFKA_QUEUE_MAX",
        default_value_t = 100_000
    )]
    pub queue_max_messages: u32,
    /// Seconds a 503 tells the device to wait (`Retry-After`).
    #[arg(
        long = "retry-after-secs",
        env = "INGEST_RETRY_AFTER_SECS",
        default_value_t = 5
    )]
    pub retry_after_secs: u32,
    /// How long shutdown waits for the producer to flush, ms.
    #[arg(
        long = "flush-timeout-ms",
        env = "INGEST_FLUSH_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub flush_timeout_ms: u64,
}

impl ProducerArgs {
    /// The delivery timeout.
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }
}

/// Credential cache settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// How long a found credential is trusted without asking PostgreSQL, ms. A disabled device
    /// or revoked key is refused at the latest this long after the change.
    #[arg(
        long = "auth-cache-ttl-ms",
        env = "INGEST_AUTH_CACHE_TTL_MS",
        default_value_t = 10_000
    )]
    pub ttl_ms: u64,
    /// How long an unknown credential is remembered as unknown, ms.
    #[arg(
        long = "auth-negative-ttl-ms",
        env = "INGEST_AUTH_NEGATIVE_TTL_MS",
        default_value_t = 2_000
    )]
    pub negative_ttl_ms: u64,
    /// Most cached entries per kind (tokens, uids, ids, keys; found and unknown apart), and
    /// most sources tracked by each rate limiter.
    #[arg(
        long = "auth-cache-capacity",
        env = "INGEST_AUTH_CACHE_CAPACITY",
        default_value_t = 100_000
    )]
    pub capacity: usize,
    /// How long a credential found valid stays known after its cache entry expired, ms: known
    /// credentials pass the per-source limits, and UDP serves a known device from the cache
    /// while a background lookup refreshes it.
    #[arg(
        long = "auth-known-grace-ms",
        env = "INGEST_AUTH_KNOWN_GRACE_MS",
        default_value_t = 3_600_000
    )]
    pub known_grace_ms: u64,
    /// Unknown or wrong HTTP credentials (OsmAnd uids, tokens, API keys) a source IP may try per
    /// second, sustained; past the burst it gets 429 until its bucket refills.
    #[arg(
        long = "unknown-credential-per-sec",
        env = "INGEST_UNKNOWN_CREDENTIAL_PER_SEC",
        default_value_t = 1.0
    )]
    pub unknown_per_sec: f64,
    /// Unknown or wrong HTTP credentials a source IP may try at once.
    #[arg(long = "unknown-credential-burst", env = "INGEST_UNKNOWN_CREDENTIAL_BURST",
          default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub unknown_burst: u32,
    /// UDP datagrams of unknown device ids (or with a wrong MAC) a source IP may send per
    /// second, sustained; the rest are dropped (`rate_limited`).
    #[arg(
        long = "udp-unknown-per-sec",
        env = "INGEST_UDP_UNKNOWN_PER_SEC",
        default_value_t = 10.0
    )]
    pub udp_unknown_per_sec: f64,
    /// UDP datagrams of unknown device ids a source IP may send at once.
    #[arg(long = "udp-unknown-burst", env = "INGEST_UDP_UNKNOWN_BURST", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub udp_unknown_burst: u32,
    /// Most device-id lookups the UDP listener runs at once, off its receive loop; datagrams of
    /// further unknown ids are dropped (`lookup_busy`). Keep it below the database pool size.
    #[arg(long = "udp-max-lookups", env = "INGEST_UDP_MAX_LOOKUPS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub udp_max_lookups: u32,
}

impl Config {
    /// Defaults, as if no flag or env var were given (tests start from this).
    pub fn local() -> Self {
        let mut config = Self::parse_from(["ingest"]);
        config.kafka = KafkaArgs::local();
        config.database = DatabaseArgs::local();
        config
    }

    /// Cross-field checks, every problem listed at once.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut problems = gps_runtime::config::ConfigProblems::default();
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.producer.compression.as_str())
        {
            problems.push(
                "INGEST_KAFKA_COMPRESSION",
                "must be one of none, gzip, snappy, lz4, zstd",
            );
        }
        if self.producer.delivery_timeout_ms + 1_000 > self.limits.request_timeout_ms {
            problems.push(
                "INGEST_DELIVERY_TIMEOUT_MS",
                "must be at least 1 s below INGEST_REQUEST_TIMEOUT_MS so the 503 reaches the device",
            );
        }
        for (name, rate) in [
            (
                "INGEST_UNKNOWN_CREDENTIAL_PER_SEC",
                self.auth.unknown_per_sec,
            ),
            ("INGEST_UDP_UNKNOWN_PER_SEC", self.auth.udp_unknown_per_sec),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                problems.push(name, "must be a positive number");
            }
        }
        if self.auth.udp_max_lookups >= self.database.max_connections {
            problems.push(
                "INGEST_UDP_MAX_LOOKUPS",
                "must be below DATABASE_MAX_CONNECTIONS, so UDP lookups never take the whole pool",
            );
        }
        if !(self.overload.tenant_floor_per_sec.is_finite()
            && self.overload.tenant_floor_per_sec > 0.0)
        {
            problems.push(
                "INGEST_SHED_TENANT_FLOOR_PER_SEC",
                "must be a positive number",
            );
        }
        if self.kafka.fixes_topic.is_empty() {
            problems.push("KAFKA_FIXES_TOPIC", "must not be empty");
        }
        problems.finish()
    }
}
