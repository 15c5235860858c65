//! Fanout configuration: listener, dependencies, the JWT secret, the browser origin allow-list,
//! the per-connection limits (queue bounds, heartbeat, message size, subscription size, subscribe
//! rate), the connect rate limits and the session re-check interval. Every value is a flag and an
//! env var; [`Config::settings`] checks them all at start and lists every problem at once.

use clap::Parser;
use gps_runtime::config::{
    ConfigProblems, DatabaseArgs, InvalidConfig, JwtArgs, LogArgs, RedisArgs,
};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::time::Duration;

/// Service configuration: flags and env vars.
#[derive(Debug, Clone, Parser)]
#[command(name = "fanout", about = "GPS fanout: live fixes over WebSocket")]
pub struct Config {
    /// HTTP and WebSocket listen address.
    #[arg(long = "addr", env = "FANOUT_ADDR", default_value = "127.0.0.1:8082")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// `TRUSTED_PROXIES`: whose `X-Forwarded-For` names the client of the per-IP connect limit.
    #[command(flatten)]
    pub client_ip: gps_runtime::client_ip::ClientIpArgs,
    /// Browser origins allowed to open `/v1/live` (comma separated, exact `scheme://host[:port]`,
    /// or `*`). Requests without an `Origin` header (non-browser clients) are always allowed.
    #[arg(
        long = "allowed-origins",
        env = "FANOUT_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub allowed_origins: Vec<String>,
    /// Messages queued per connection before per-device coalescing starts.
    #[arg(
        long = "queue-capacity",
        env = "FANOUT_QUEUE_CAPACITY",
        default_value_t = 256
    )]
    pub queue_capacity: usize,
    /// Messages queued per connection (after coalescing) at which the client is closed as too slow.
    #[arg(
        long = "queue-hard-limit",
        env = "FANOUT_QUEUE_HARD_LIMIT",
        default_value_t = 2048
    )]
    pub queue_hard_limit: usize,
    /// How long a client may stay behind (queue over capacity) before it is closed as too slow.
    #[arg(
        long = "slow-client-grace-ms",
        env = "FANOUT_SLOW_CLIENT_GRACE_MS",
        default_value_t = 10_000
    )]
    pub slow_client_grace_ms: u64,
    /// Interval between server WebSocket pings.
    #[arg(
        long = "heartbeat-interval-ms",
        env = "FANOUT_HEARTBEAT_INTERVAL_MS",
        default_value_t = 15_000
    )]
    pub heartbeat_interval_ms: u64,
    /// A client from which nothing (not even a pong) arrived for this long is closed.
    #[arg(
        long = "idle-timeout-ms",
        env = "FANOUT_IDLE_TIMEOUT_MS",
        default_value_t = 45_000
    )]
    pub idle_timeout_ms: u64,
    /// Largest client message (frame and message), bytes; larger ones close with 1009.
    #[arg(
        long = "max-message-bytes",
        env = "FANOUT_MAX_MESSAGE_BYTES",
        default_value_t = 64 * 1024
    )]
    pub max_message_bytes: usize,
    /// Most devices one connection may subscribe to (explicitly and through groups).
    #[arg(
        long = "max-devices-per-connection",
        env = "FANOUT_MAX_DEVICES_PER_CONNECTION",
        default_value_t = 10_000
    )]
    pub max_devices_per_connection: usize,
    /// Most bounding boxes one connection may subscribe to.
    #[arg(
        long = "max-bboxes-per-connection",
        env = "FANOUT_MAX_BBOXES_PER_CONNECTION",
        default_value_t = 16
    )]
    pub max_bboxes_per_connection: usize,
    /// Most positions in one snapshot message.
    #[arg(
        long = "snapshot-limit",
        env = "FANOUT_SNAPSHOT_LIMIT",
        default_value_t = 10_000
    )]
    pub snapshot_limit: usize,
    /// Longest wait between two Redis reconnection attempts.
    #[arg(
        long = "redis-backoff-max-ms",
        env = "FANOUT_REDIS_BACKOFF_MAX_MS",
        default_value_t = 5_000
    )]
    pub redis_backoff_max_ms: u64,
    /// Seconds between two re-checks of every live session's credential and visibility: a
    /// disabled, deleted or revoked credential is closed, a visibility change applied, within it.
    #[arg(
        long = "recheck-secs",
        env = "FANOUT_RECHECK_SECS",
        default_value_t = 5
    )]
    pub recheck_secs: u64,
    /// WebSocket connects per client IP per minute, over every fanout instance (0: no limit).
    #[arg(
        long = "connect-limit-per-ip",
        env = "FANOUT_CONNECT_LIMIT_PER_IP",
        default_value_t = 240
    )]
    pub connect_limit_per_ip: u64,
    /// WebSocket connects per user or API key per minute, over every instance (0: no limit).
    #[arg(
        long = "connect-limit-per-principal",
        env = "FANOUT_CONNECT_LIMIT_PER_PRINCIPAL",
        default_value_t = 120
    )]
    pub connect_limit_per_principal: u64,
    /// `subscribe` messages one connection may send in a burst (token bucket size).
    #[arg(
        long = "subscribe-burst",
        env = "FANOUT_SUBSCRIBE_BURST",
        default_value_t = 20
    )]
    pub subscribe_burst: u32,
    /// `subscribe` messages one connection may send per minute, sustained (bucket refill).
    #[arg(
        long = "subscribes-per-minute",
        env = "FANOUT_SUBSCRIBES_PER_MINUTE",
        default_value_t = 60
    )]
    pub subscribes_per_minute: u32,
}

/// Which browser origins may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Every origin (`*`).
    Any,
    /// Exactly these origins, normalized (lowercase, no trailing slash).
    Only(Vec<String>),
}

impl OriginPolicy {
    /// Whether a browser presenting `origin` may connect.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(list) => {
                let origin = normalize_origin(origin);
                list.contains(&origin)
            }
        }
    }
}

fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Per-connection limits, checked and converted from [`Config`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// Queue length at which coalescing starts.
    pub queue_capacity: usize,
    /// Queue length at which the client is closed.
    pub queue_hard_limit: usize,
    /// How long a client may stay behind.
    pub slow_client_grace: Duration,
    /// Server ping interval.
    pub heartbeat_interval: Duration,
    /// Silence after which the client is closed.
    pub idle_timeout: Duration,
    /// Largest client message.
    pub max_message_bytes: usize,
    /// Most devices per connection.
    pub max_devices: usize,
    /// Most bounding boxes per connection.
    pub max_bboxes: usize,
    /// Most positions per snapshot.
    pub snapshot_limit: usize,
    /// `subscribe` burst per connection.
    pub subscribe_burst: u32,
    /// `subscribe` messages per minute per connection, sustained.
    pub subscribes_per_minute: u32,
}

/// Connect rate limits, per minute, shared by every instance through Redis (0: no limit).
#[derive(Debug, Clone, Copy)]
pub struct ConnectLimits {
    /// Connects per client IP.
    pub per_ip: u64,
    /// Connects per user or API key.
    pub per_principal: u64,
}

/// Everything `run` needs beyond the connections: checked values.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The JWT secret.
    pub jwt_secret: SecretString,
    /// Browser origin policy.
    pub origins: OriginPolicy,
    /// Per-connection limits.
    pub limits: Limits,
    /// Longest Redis reconnection backoff.
    pub redis_backoff_max: Duration,
    /// Interval of the session re-check.
    pub recheck_interval: Duration,
    /// Connect rate limits.
    pub connect_limits: ConnectLimits,
    /// The reverse proxies whose `X-Forwarded-For` names the client (`TRUSTED_PROXIES`).
    pub trusted_proxies: gps_runtime::client_ip::TrustedProxies,
}

impl Config {
    /// Check every value; the error lists every problem.
    pub fn settings(&self) -> Result<Settings, InvalidConfig> {
        let mut problems = ConfigProblems::default();
        let jwt_secret = problems.check(self.jwt.resolve());
        let mut origins = Vec::new();
        let mut any = false;
        for origin in self.allowed_origins.iter().map(|o| o.trim()) {
            if origin.is_empty() {
                continue;
            }
            if origin == "*" {
                any = true;
            } else if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.trim_end_matches('/').matches('/').count() != 2
            {
                problems.push(
                    "FANOUT_ALLOWED_ORIGINS",
                    format!("`{origin}` is not an origin (scheme://host[:port]) or `*`"),
                );
            } else {
                origins.push(normalize_origin(origin));
            }
        }
        if self.queue_capacity == 0 {
            problems.push("FANOUT_QUEUE_CAPACITY", "must be at least 1");
        }
        if self.queue_hard_limit < self.queue_capacity {
            problems.push(
                "FANOUT_QUEUE_HARD_LIMIT",
                "must be at least FANOUT_QUEUE_CAPACITY",
            );
        }
        if self.heartbeat_interval_ms < 10 {
            problems.push("FANOUT_HEARTBEAT_INTERVAL_MS", "must be at least 10");
        }
        if self.idle_timeout_ms <= self.heartbeat_interval_ms {
            problems.push(
                "FANOUT_IDLE_TIMEOUT_MS",
                "must be longer than FANOUT_HEARTBEAT_INTERVAL_MS",
            );
        }
        if self.max_message_bytes < 256 {
            problems.push("FANOUT_MAX_MESSAGE_BYTES", "must be at least 256");
        }
        if self.max_devices_per_connection == 0 {
            problems.push("FANOUT_MAX_DEVICES_PER_CONNECTION", "must be at least 1");
        }
        if self.snapshot_limit == 0 {
            problems.push("FANOUT_SNAPSHOT_LIMIT", "must be at least 1");
        }
        if self.redis_backoff_max_ms < 10 {
            problems.push("FANOUT_REDIS_BACKOFF_MAX_MS", "must be at least 10");
        }
        if !(1..=3600).contains(&self.recheck_secs) {
            problems.push("FANOUT_RECHECK_SECS", "must be between 1 and 3600");
        }
        if self.subscribe_burst == 0 {
            problems.push("FANOUT_SUBSCRIBE_BURST", "must be at least 1");
        }
        if self.subscribes_per_minute == 0 {
            problems.push("FANOUT_SUBSCRIBES_PER_MINUTE", "must be at least 1");
        }
        problems.finish()?;
        Ok(Settings {
            jwt_secret: jwt_secret.expect("checked above"),
            origins: if any {
                OriginPolicy::Any
            } else {
                OriginPolicy::Only(origins)
            },
            limits: Limits {
                queue_capacity: self.queue_capacity,
                queue_hard_limit: self.queue_hard_limit,
                slow_client_grace: Duration::from_millis(self.slow_client_grace_ms),
                heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
                idle_timeout: Duration::from_millis(self.idle_timeout_ms),
                max_message_bytes: self.max_message_bytes,
                max_devices: self.max_devices_per_connection,
                max_bboxes: self.max_bboxes_per_connection,
                snapshot_limit: self.snapshot_limit,
                subscribe_burst: self.subscribe_burst,
                subscribes_per_minute: self.subscribes_per_minute,
            },
            redis_backoff_max: Duration::from_millis(self.redis_backoff_max_ms),
            recheck_interval: Duration::from_secs(self.recheck_secs),
            connect_limits: ConnectLimits {
                per_ip: self.connect_limit_per_ip,
                per_principal: self.connect_limit_per_principal,
            },
            trusted_proxies: self.client_ip.trusted_proxies.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::parse_from(
            ["fanout", "--jwt-secret", "0123456789abcdef0123456789abcdef"]
                .iter()
                .chain(args),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let settings = parse(&[]).settings().unwrap();
        assert_eq!(settings.origins, OriginPolicy::Only(vec![]));
        assert!(settings.limits.queue_hard_limit >= settings.limits.queue_capacity);
    }

    #[test]
    fn origins_are_normalized_and_matched_exactly() {
        let settings = parse(&[
            "--allowed-origins",
            "https://Maps.example.com/,http://localhost:3000",
        ])
        .settings()
        .unwrap();
        assert!(settings.origins.allows("https://maps.example.com"));
        assert!(settings.origins.allows("http://localhost:3000"));
        assert!(!settings.origins.allows("https://evil.example.com"));
        assert!(!settings.origins.allows("http://localhost:3001"));
        let any = parse(&["--allowed-origins", "*"]).settings().unwrap();
        assert!(any.origins.allows("https://anything.example"));
    }

    #[test]
    fn every_problem_is_listed() {
        let err = parse(&[
            "--allowed-origins",
            "not-an-origin",
            "--queue-capacity",
            "10",
            "--queue-hard-limit",
            "5",
            "--idle-timeout-ms",
            "100",
            "--heartbeat-interval-ms",
            "200",
            "--recheck-secs",
            "0",
            "--subscribe-burst",
            "0",
        ])
        .settings()
        .unwrap_err()
        .to_string();
        assert!(err.contains("FANOUT_ALLOWED_ORIGINS"), "{err}");
        assert!(err.contains("FANOUT_QUEUE_HARD_LIMIT"), "{err}");
        assert!(err.contains("FANOUT_IDLE_TIMEOUT_MS"), "{err}");
        assert!(err.contains("FANOUT_RECHECK_SECS"), "{err}");
        assert!(err.contains("FANOUT_SUBSCRIBE_BURST"), "{err}");
    }
}
