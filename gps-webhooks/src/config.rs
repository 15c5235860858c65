//! The typed settings of webhooks (clap + env): the URL policy's allow list, shared by the
//! query API (checked at creation) and the processor (checked at delivery), and the delivery
//! worker's batch, concurrency, timeouts, response cap and retry schedule.

use crate::policy::{CidrList, UrlPolicy};
use clap::Args;
use std::time::Duration;

/// The URL policy's settings (`WEBHOOK_ALLOW_PRIVATE_CIDRS`), flattened into the query API's
/// and the processor's configuration so that both read one list.
#[derive(Debug, Clone, Default, Args)]
pub struct UrlPolicyArgs {
    /// CIDR blocks a webhook may reach although they are private, loopback, link-local or
    /// otherwise special (comma list, e.g. `10.20.0.0/16,fd00::/8`); empty: none. Each block
    /// opens exactly its range, the cloud metadata address included if it is in it.
    #[arg(
        long = "webhook-allow-private-cidrs",
        env = "WEBHOOK_ALLOW_PRIVATE_CIDRS",
        default_value = "",
        global = true
    )]
    pub allow_private_cidrs: CidrList,
}

impl UrlPolicyArgs {
    /// The policy these settings describe.
    pub fn policy(&self) -> UrlPolicy {
        UrlPolicy::new(self.allow_private_cidrs.0.clone())
    }
}

/// The delivery worker's settings (`WEBHOOK_*`).
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub urls: UrlPolicyArgs,
    /// Deliveries claimed per round (`FOR UPDATE SKIP LOCKED`, so instances share the work).
    #[arg(long = "webhook-batch", env = "WEBHOOK_BATCH", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000), global = true)]
    pub batch: u32,
    /// Deliveries in flight at once per instance.
    #[arg(long = "webhook-concurrency", env = "WEBHOOK_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1_000), global = true)]
    pub concurrency: u32,
    /// Longest wait for a receiver's TCP (and TLS) connection, milliseconds.
    #[arg(long = "webhook-connect-timeout-ms", env = "WEBHOOK_CONNECT_TIMEOUT_MS", default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(10..=60_000), global = true)]
    pub connect_timeout_ms: u64,
    /// Longest a whole delivery may take (connect, send, response), milliseconds; longer is a
    /// failed attempt.
    #[arg(long = "webhook-timeout-ms", env = "WEBHOOK_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=300_000), global = true)]
    pub timeout_ms: u64,
    /// Most bytes of a receiver's response read; the rest is dropped with the connection.
    #[arg(long = "webhook-max-response-bytes", env = "WEBHOOK_MAX_RESPONSE_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(0..=16 * 1024 * 1024), global = true)]
    pub max_response_bytes: u64,
    /// Attempts before a delivery is marked `failed`.
    #[arg(long = "webhook-max-attempts", env = "WEBHOOK_MAX_ATTEMPTS", default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=100), global = true)]
    pub max_attempts: u32,
    /// Delay before the first retry, milliseconds; doubled per attempt, with jitter.
    #[arg(long = "webhook-backoff-base-ms", env = "WEBHOOK_BACKOFF_BASE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000), global = true)]
    pub backoff_base_ms: u64,
    /// Longest delay between two attempts, milliseconds.
    #[arg(long = "webhook-backoff-max-ms", env = "WEBHOOK_BACKOFF_MAX_MS", default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000), global = true)]
    pub backoff_max_ms: u64,
    /// How often an idle worker looks for due deliveries, milliseconds.
    #[arg(long = "webhook-poll-ms", env = "WEBHOOK_POLL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=60_000), global = true)]
    pub poll_ms: u64,
}

impl Default for WebhookArgs {
    fn default() -> Self {
        Self {
            urls: UrlPolicyArgs::default(),
            batch: 100,
            concurrency: 16,
            connect_timeout_ms: 3_000,
            timeout_ms: 10_000,
            max_response_bytes: 16 * 1024,
            max_attempts: 12,
            backoff_base_ms: 5_000,
            backoff_max_ms: 3_600_000,
            poll_ms: 1_000,
        }
    }
}

impl WebhookArgs {
    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Whole-delivery timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Idle poll interval.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }

    /// How long a claimed delivery is hidden from other workers: past the whole-delivery
    /// timeout, so that only a worker that died mid-delivery lets another retry it.
    pub fn lease(&self) -> Duration {
        self.timeout() * 2 + Duration::from_secs(5)
    }

    /// The delay before the attempt after `attempts` failed ones: `base * 2^(attempts-1)`,
    /// capped at the maximum, then "equal jitter" (a uniform draw in its upper half, from
    /// `unit` in [0, 1)) so that receivers that failed together are not retried together.
    pub fn backoff(&self, attempts: u32, unit: f64) -> Duration {
        let exponent = attempts.saturating_sub(1).min(40);
        let delay = self
            .backoff_base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.backoff_max_ms);
        let half = delay as f64 / 2.0;
        Duration::from_millis((half + half * unit.clamp(0.0, 1.0)) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        webhooks: WebhookArgs,
    }

    #[test]
    fn the_backoff_doubles_with_jitter_and_stays_under_the_cap() {
        let args = WebhookArgs {
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            ..WebhookArgs::default()
        };
        assert_eq!(args.backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(args.backoff(1, 0.999_999), Duration::from_millis(999));
        assert_eq!(args.backoff(3, 0.0), Duration::from_millis(2_000));
        assert_eq!(args.backoff(30, 0.0), Duration::from_millis(30_000));
        assert!(args.backoff(100, 1.0) <= Duration::from_millis(60_000));
        assert_eq!(args.backoff(0, 0.0), Duration::from_millis(500));
    }

    #[test]
    fn the_allow_list_is_a_comma_list_of_cidrs() {
        let cli = Cli::try_parse_from([
            "x",
            "--webhook-allow-private-cidrs",
            "127.0.0.0/8,fd00::/8",
            "--webhook-max-attempts",
            "3",
        ])
        .unwrap();
        assert_eq!(cli.webhooks.urls.allow_private_cidrs.0.len(), 2);
        assert_eq!(cli.webhooks.max_attempts, 3);
        assert!(cli
            .webhooks
            .urls
            .policy()
            .check_url("http://127.0.0.1/")
            .is_ok());
        let err = Cli::try_parse_from(["x", "--webhook-allow-private-cidrs", "10.0.0.0/99"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("CIDR"), "{err}");
        assert!(Cli::try_parse_from(["x", "--webhook-max-attempts", "0"]).is_err());
        // Set but empty (a deployment template's blank): no block allowed.
        let cli = Cli::try_parse_from(["x", "--webhook-allow-private-cidrs", ""]).unwrap();
        assert!(cli.webhooks.urls.allow_private_cidrs.0.is_empty());
        assert!(cli
            .webhooks
            .urls
            .policy()
            .check_url("http://127.0.0.1/")
            .is_err());
    }
}
