//! The processor's typed configuration: flags and env vars for the service, its batching and
//! caches, partition upkeep, and the `replay` subcommand.

use crate::batches::BatchLimits;
use clap::{Args, Parser, Subcommand, ValueEnum};
use gps_domain::events::EventRules;
use gps_runtime::config::{DatabaseArgs, KafkaArgs, LogArgs, RedisArgs};
use std::net::SocketAddr;
use std::time::Duration;

/// Service configuration: flags and env vars. With no subcommand the service runs.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "processor",
    about = "GPS processor: validate, dedupe, store, publish"
)]
pub struct Config {
    /// What to do; the service when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// HTTP listen address (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long = "addr",
        env = "PROCESSOR_ADDR",
        default_value = "127.0.0.1:8084",
        global = true
    )]
    pub addr: SocketAddr,
    /// Kafka consumer group shared by every processor instance.
    #[arg(
        long = "group-id",
        env = "PROCESSOR_GROUP_ID",
        default_value = "gps-processor",
        global = true
    )]
    pub group_id: String,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub member: MemberArgs,
    #[command(flatten)]
    pub upkeep: UpkeepArgs,
    #[command(flatten)]
    pub events: EventArgs,
    /// Webhook delivery (`WEBHOOK_*`, docs/processor.md).
    #[command(flatten)]
    pub webhooks: gps_webhooks::WebhookArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// The defaults, as if started with no flag or env var (tests adjust fields from here).
    pub fn local() -> Self {
        Self {
            command: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 8084)),
            group_id: "gps-processor".into(),
            batch: BatchArgs::default(),
            member: MemberArgs::default(),
            upkeep: UpkeepArgs::default(),
            events: EventArgs::default(),
            webhooks: gps_webhooks::WebhookArgs::default(),
            database: DatabaseArgs::local(),
            kafka: KafkaArgs::local(),
            redis: RedisArgs::local(),
            log: LogArgs {
                filter: "info".into(),
                format: gps_runtime::config::LogFormat::Text,
            },
        }
    }
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Rebuild `positions` and `last_positions` from the log, then stop.
    Replay(ReplayArgs),
}

/// What `replay` reads and rebuilds.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Where it starts.
    #[command(flatten)]
    pub start: ReplayStart,
    /// Rebuild events: each replayed device's events and event state are deleted in the
    /// transaction of the first batch that meets it, then folded again from its records. Only
    /// from the beginning of the log (the state before a later start is not known). Without
    /// it a replay keeps the stored states, so the replayed fixes (all at or before each
    /// device's last applied fix) raise nothing.
    #[arg(long = "rebuild-events", conflicts_with = "from_time")]
    pub rebuild_events: bool,
}

/// Where `replay` starts reading.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ReplayStart {
    /// Read every partition from its first retained record.
    #[arg(long = "from-beginning")]
    pub from_beginning: bool,
    /// Read from the first record appended at or after this instant (RFC 3339).
    #[arg(long = "from-time", value_parser = parse_time)]
    pub from_time: Option<chrono::DateTime<chrono::Utc>>,
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("expected RFC 3339 like 2026-11-01T00:00:00Z: {e}"))
}

/// How a batch is written to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WriteMode {
    /// Binary COPY into a temporary staging table, then INSERT .. SELECT .. ON CONFLICT.
    Copy,
    /// One INSERT .. SELECT FROM UNNEST(arrays) .. ON CONFLICT.
    Unnest,
}

/// Batching and cache sizes.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Most fixes written in one database transaction. Large enough that a processor catching up
    /// writes few, big transactions (20,000 stored ~15 % more per second than 5,000 under load
    /// here); at a steady rate the batch wait closes batches long before this.
    #[arg(long = "batch-max-fixes", env = "PROCESSOR_BATCH_MAX_FIXES", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000), global = true)]
    pub max_fixes: u32,
    /// Longest wait for a batch to fill after its first record, milliseconds.
    #[arg(long = "batch-max-wait-ms", env = "PROCESSOR_BATCH_MAX_WAIT_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=60_000), global = true)]
    pub max_wait_ms: u64,
    /// A batch also closes when no record arrives for this long, milliseconds: a fetch's
    /// records arrive together, so at a steady rate a batch is one fetch and waits for no more,
    /// while a processor catching up still fills whole batches.
    #[arg(long = "batch-idle-ms", env = "PROCESSOR_BATCH_IDLE_MS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60_000), global = true)]
    pub idle_ms: u64,
    /// Longest time the broker may hold a fetch waiting for data, milliseconds
    /// (`fetch.wait.max.ms`). tansu 0.6 always waits this long, data or not, and each fetch
    /// costs it CPU whether it carries data or not (an idle processor at 20 ms took ~21 % of a
    /// core of the broker); 50 ms keeps that low while the idle close of a batch keeps the
    /// latency down. Kafka answers as soon as data is there.
    #[arg(long = "fetch-wait-ms", env = "PROCESSOR_FETCH_WAIT_MS", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000), global = true)]
    pub fetch_wait_ms: u32,
    /// Bulk write path.
    #[arg(long = "write-mode", env = "PROCESSOR_WRITE_MODE", value_enum, default_value_t = WriteMode::Copy, global = true)]
    pub write_mode: WriteMode,
    /// (device, fix time) pairs remembered for the in-memory duplicate check.
    #[arg(
        long = "dedupe-capacity",
        env = "PROCESSOR_DEDUPE_CAPACITY",
        default_value_t = 500_000,
        global = true
    )]
    pub dedupe_capacity: usize,
    /// Devices whose last accepted fix is kept in memory for the speed check.
    #[arg(
        long = "device-cache-capacity",
        env = "PROCESSOR_DEVICE_CACHE_CAPACITY",
        default_value_t = 200_000,
        global = true
    )]
    pub device_cache_capacity: usize,
    /// How long a tenant's validation settings are cached, seconds.
    #[arg(
        long = "tenant-settings-ttl-secs",
        env = "PROCESSOR_TENANT_SETTINGS_TTL_SECS",
        default_value_t = 60,
        global = true
    )]
    pub tenant_settings_ttl_secs: u64,
}

impl Default for BatchArgs {
    fn default() -> Self {
        Self {
            max_fixes: 20_000,
            max_wait_ms: 50,
            idle_ms: 5,
            fetch_wait_ms: 50,
            write_mode: WriteMode::Copy,
            dedupe_capacity: 500_000,
            device_cache_capacity: 200_000,
            tenant_settings_ttl_secs: 60,
        }
    }
}

impl BatchArgs {
    /// When a batch closes.
    pub fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_fixes: self.max_fixes as usize,
            max_wait: self.max_wait(),
            idle: self.idle(),
        }
    }

    /// Max batch wait as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    /// Idle gap that closes a batch, as a duration.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
}

/// Membership of the consumer group and its watchdog (`watchdog`): what a dead or stuck member
/// costs the others.
#[derive(Debug, Clone, Args)]
pub struct MemberArgs {
    /// Static group membership: this instance's `group.instance.id`, stable across its
    /// restarts and unique in the group (e.g. a StatefulSet pod name). A restart in place then
    /// takes its partitions back at once, but a member that stops for good keeps them until its
    /// session times out, and on tansu 0.6 two static members starting together did not
    /// settle (docs/processor.md). Unset: dynamic membership (the default).
    #[arg(long = "instance-id", env = "PROCESSOR_INSTANCE_ID", global = true)]
    pub instance_id: Option<String>,
    /// `session.timeout.ms`: how long the broker waits for a silent member before its
    /// partitions may move.
    #[arg(long = "session-timeout-ms", env = "PROCESSOR_SESSION_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1_000..=300_000), global = true)]
    pub session_timeout_ms: u32,
    /// A partition with lag whose committed offset has not moved for this long is stalled;
    /// stalled partitions this instance does not own make it rejoin the group. Longer than the
    /// session timeout, so a dead member has left the group by then.
    #[arg(long = "stall-secs", env = "PROCESSOR_STALL_SECS", default_value_t = 12, value_parser = clap::value_parser!(u64).range(2..=3_600), global = true)]
    pub stall_secs: u64,
    /// How often the watchdog reads the group's committed offsets and the high watermarks,
    /// milliseconds.
    #[arg(long = "watch-interval-ms", env = "PROCESSOR_WATCH_INTERVAL_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..=60_000), global = true)]
    pub watch_interval_ms: u64,
}

impl Default for MemberArgs {
    fn default() -> Self {
        Self {
            instance_id: None,
            session_timeout_ms: 10_000,
            stall_secs: 12,
            watch_interval_ms: 2_000,
        }
    }
}

impl MemberArgs {
    /// The stall threshold as a duration.
    pub fn stall(&self) -> Duration {
        Duration::from_secs(self.stall_secs)
    }

    /// The watch interval as a duration.
    pub fn watch_interval(&self) -> Duration {
        Duration::from_millis(self.watch_interval_ms)
    }

    /// Settings that parse but do not fit together.
    pub fn check(&self) -> Result<(), gps_runtime::config::ConfigError> {
        if self.stall().as_millis() <= u128::from(self.session_timeout_ms) {
            return Err(gps_runtime::config::ConfigError::Invalid {
                field: "PROCESSOR_STALL_SECS",
                reason: format!(
                    "{} s must be longer than PROCESSOR_SESSION_TIMEOUT_MS ({} ms): a rejoin \
                     before a dead member's session ends cannot take its partitions",
                    self.stall_secs, self.session_timeout_ms
                ),
            });
        }
        if self
            .instance_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err(gps_runtime::config::ConfigError::Invalid {
                field: "PROCESSOR_INSTANCE_ID",
                reason: "empty: unset it for dynamic membership".into(),
            });
        }
        Ok(())
    }
}

/// Event evaluation (`crate::events`, `docs/events.md`).
#[derive(Debug, Clone, Args)]
pub struct EventArgs {
    /// How often a tenant's geofences (and each device's groups and speed limit) are looked at
    /// again, milliseconds: a new or changed fence takes effect within this. Fences: one
    /// grouped query over all tenants' fences by a background task, which reloads only the
    /// tenants whose fences changed (batches never wait for it); profiles: one small query per
    /// batch for its devices not looked at for this long.
    #[arg(long = "fence-refresh-ms", env = "PROCESSOR_FENCE_REFRESH_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000), global = true)]
    pub fence_refresh_ms: u64,
    /// How often the offline timer looks for online devices that stopped reporting,
    /// milliseconds.
    #[arg(long = "offline-check-ms", env = "PROCESSOR_OFFLINE_CHECK_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000), global = true)]
    pub offline_check_ms: u64,
    /// The rules' tunables as JSON, over the defaults (`EventRules`: `boundary_margin_m`,
    /// `overspeed_margin_mps`, `motion_start_mps`, `motion_stop_mps`, `motion_stop_after_ms`,
    /// `offline_after_ms`), e.g. `{"offline_after_ms": 300000}`. For every tenant.
    #[arg(long = "event-rules", env = "PROCESSOR_EVENT_RULES", value_parser = parse_rules, default_value = "{}", global = true)]
    pub rules: EventRules,
}

impl Default for EventArgs {
    fn default() -> Self {
        Self {
            fence_refresh_ms: 2_000,
            offline_check_ms: 30_000,
            rules: EventRules::default(),
        }
    }
}

impl EventArgs {
    /// The fence refresh period.
    pub fn fence_refresh(&self) -> Duration {
        Duration::from_millis(self.fence_refresh_ms)
    }

    /// The offline timer's period.
    pub fn offline_check(&self) -> Duration {
        Duration::from_millis(self.offline_check_ms)
    }
}

fn parse_rules(s: &str) -> Result<EventRules, String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(s).map_err(|e| format!("expected a JSON object of rules: {e}"))?;
    let rules: EventRules = serde_json::from_value(object.into())
        .map_err(|e| format!("expected a JSON object of rules: {e}"))?;
    let positive = [
        ("boundary_margin_m", rules.boundary_margin_m >= 0.0),
        ("overspeed_margin_mps", rules.overspeed_margin_mps >= 0.0),
        ("motion_start_mps", rules.motion_start_mps > 0.0),
        ("motion_stop_mps", rules.motion_stop_mps >= 0.0),
        ("motion_stop_after_ms", rules.motion_stop_after_ms >= 0),
        ("offline_after_ms", rules.offline_after_ms > 0),
    ];
    match positive.iter().find(|(_, ok)| !ok) {
        Some((field, _)) => Err(format!("{field} is out of range")),
        None if rules.motion_stop_mps > rules.motion_start_mps => {
            Err("motion_stop_mps must not be above motion_start_mps".into())
        }
        None => Ok(rules),
    }
}

/// Partition upkeep (native partitioning only; TimescaleDB manages its chunks).
#[derive(Debug, Clone, Args)]
pub struct UpkeepArgs {
    /// Days of partitions kept ready ahead of today.
    #[arg(long = "partitions-ahead-days", env = "PROCESSOR_PARTITIONS_AHEAD_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=366), global = true)]
    pub ahead_days: u32,
    /// Days of positions kept; older daily partitions are dropped.
    #[arg(long = "retention-days", env = "PROCESSOR_RETENTION_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500), global = true)]
    pub retention_days: u32,
    /// Seconds between upkeep runs.
    #[arg(long = "upkeep-interval-secs", env = "PROCESSOR_UPKEEP_INTERVAL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub interval_secs: u64,
}

impl Default for UpkeepArgs {
    fn default() -> Self {
        Self {
            ahead_days: 7,
            retention_days: 365,
            interval_secs: 3600,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_subcommand_runs_the_service_with_defaults() {
        let config = Config::try_parse_from(["processor", "--group-id", "g"]).unwrap();
        assert!(config.command.is_none());
        assert_eq!(config.group_id, "g");
        assert_eq!(config.batch.write_mode, WriteMode::Copy);
    }

    #[test]
    fn replay_needs_exactly_one_start() {
        let config = Config::try_parse_from(["processor", "replay", "--from-beginning"]).unwrap();
        assert!(matches!(
            config.command,
            Some(Command::Replay(ReplayArgs {
                start: ReplayStart {
                    from_beginning: true,
                    ..
                },
                rebuild_events: false,
            }))
        ));
        let config =
            Config::try_parse_from(["processor", "replay", "--from-time", "2026-11-01T00:00:00Z"])
                .unwrap();
        assert!(matches!(
            config.command,
            Some(Command::Replay(ReplayArgs {
                start: ReplayStart {
                    from_time: Some(_),
                    ..
                },
                ..
            }))
        ));
        let config = Config::try_parse_from([
            "processor",
            "replay",
            "--from-beginning",
            "--rebuild-events",
        ])
        .unwrap();
        assert!(matches!(
            config.command,
            Some(Command::Replay(ReplayArgs {
                rebuild_events: true,
                ..
            }))
        ));
        assert!(Config::try_parse_from([
            "processor",
            "replay",
            "--from-time",
            "2026-11-01T00:00:00Z",
            "--rebuild-events"
        ])
        .is_err());
        assert!(Config::try_parse_from(["processor", "replay"]).is_err());
        assert!(Config::try_parse_from([
            "processor",
            "replay",
            "--from-beginning",
            "--from-time",
            "2026-11-01T00:00:00Z"
        ])
        .is_err());
        let err = Config::try_parse_from(["processor", "replay", "--from-time", "yesterday"])
            .unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }

    #[test]
    fn the_stall_threshold_must_outlast_the_session() {
        let config = Config::try_parse_from(["processor"]).unwrap();
        assert!(config.member.check().is_ok());
        assert_eq!(config.member.instance_id, None);
        let config = Config::try_parse_from([
            "processor",
            "--stall-secs",
            "10",
            "--session-timeout-ms",
            "10000",
        ])
        .unwrap();
        let err = config.member.check().unwrap_err().to_string();
        assert!(err.contains("PROCESSOR_STALL_SECS"), "{err}");
        let config = Config::try_parse_from(["processor", "--instance-id", " "]).unwrap();
        let err = config.member.check().unwrap_err().to_string();
        assert!(err.contains("PROCESSOR_INSTANCE_ID"), "{err}");
    }

    #[test]
    fn event_rules_come_over_the_defaults_and_are_checked() {
        let config = Config::try_parse_from(["processor"]).unwrap();
        assert_eq!(config.events.rules, EventRules::default());
        let config = Config::try_parse_from([
            "processor",
            "--event-rules",
            r#"{"offline_after_ms": 1000}"#,
        ])
        .unwrap();
        assert_eq!(config.events.rules.offline_after_ms, 1000);
        assert_eq!(config.events.rules.boundary_margin_m, 10.0);
        for bad in [
            r#"{"offline_after_ms": 0}"#,
            r#"{"nope": 1}"#,
            r#"{"motion_stop_mps": 5}"#,
            "[]",
        ] {
            assert!(
                Config::try_parse_from(["processor", "--event-rules", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn batch_limits_are_checked() {
        assert!(Config::try_parse_from(["processor", "--batch-max-fixes", "0"]).is_err());
        let config = Config::try_parse_from([
            "processor",
            "--write-mode",
            "unnest",
            "--batch-max-wait-ms",
            "5",
            "--batch-idle-ms",
            "2",
        ])
        .unwrap();
        assert_eq!(config.batch.idle(), Duration::from_millis(2));
        assert_eq!(config.batch.write_mode, WriteMode::Unnest);
        assert_eq!(config.batch.max_wait(), Duration::from_millis(5));
    }
}
