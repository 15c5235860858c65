//! Query API configuration: the listener, token lifetimes, rate limits, the resource caps (time
//! ranges, exports, the database statement timeout) and the dependencies.
//! Every value is a flag and an env var with a default that works on the local stack;
//! [`Config::settings`] checks them and resolves the JWT secret, listing every problem at once.

use clap::{Parser, Subcommand};
use gps_runtime::config::{
    ConfigProblems, DatabaseArgs, InvalidConfig, JwtArgs, LogArgs, RedisArgs,
};
use secrecy::SecretString;
use std::net::SocketAddr;

/// Service configuration: flags and env vars.
#[derive(Debug, Clone, Parser)]
#[command(name = "query-api", about = "GPS query API: history, management, auth")]
pub struct Config {
    /// What to do; without a subcommand, serve.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// HTTP listen address.
    #[arg(
        long = "addr",
        env = "QUERY_API_ADDR",
        default_value = "127.0.0.1:8083"
    )]
    pub addr: SocketAddr,
    /// Access token lifetime, seconds.
    #[arg(long = "access-token-ttl", env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900, value_parser = clap::value_parser!(i64).range(30..=86_400))]
    pub access_ttl_secs: i64,
    /// Refresh token lifetime, seconds.
    #[arg(long = "refresh-token-ttl", env = "REFRESH_TOKEN_TTL_SECS", default_value_t = 30 * 86_400, value_parser = clap::value_parser!(i64).range(60..=365 * 86_400))]
    pub refresh_ttl_secs: i64,
    /// Live ticket lifetime, seconds.
    #[arg(long = "live-ticket-ttl", env = "LIVE_TICKET_TTL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub ticket_ttl_secs: u64,
    /// Login attempts per minute per IP and per email.
    #[arg(long = "login-rate-limit", env = "LOGIN_RATE_LIMIT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub login_limit_per_minute: u64,
    /// Refresh-token exchanges per minute per client IP and per user.
    #[arg(long = "refresh-rate-limit", env = "REFRESH_RATE_LIMIT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub refresh_limit_per_minute: u64,
    /// Longest lifetime of a new API key, days (every key must expire).
    #[arg(long = "api-key-max-ttl-days", env = "API_KEY_MAX_TTL_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub api_key_max_ttl_days: u32,
    /// Authenticated requests per minute per user or API key.
    #[arg(long = "api-rate-limit", env = "API_RATE_LIMIT", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_limit_per_minute: u64,
    /// Longest time range (`to - from`) of one history request, days.
    #[arg(long = "history-max-range-days", env = "HISTORY_MAX_RANGE_DAYS", default_value_t = 366, value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub history_max_range_days: u32,
    /// Longest time range of one area query (`GET /v1/positions`), days.
    #[arg(long = "area-max-range-days", env = "AREA_MAX_RANGE_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub area_max_range_days: u32,
    /// Longest time range of one summary, days.
    #[arg(long = "summary-max-range-days", env = "SUMMARY_MAX_RANGE_DAYS", default_value_t = 31, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub summary_max_range_days: u32,
    /// History reads (exports) one tenant may run at once on this instance; more answer 429.
    #[arg(long = "exports-per-tenant", env = "EXPORTS_PER_TENANT", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub exports_per_tenant: u32,
    /// Seconds a streamed export waits for a client that reads nothing before it is aborted.
    #[arg(long = "export-idle-timeout", env = "EXPORT_IDLE_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub export_idle_timeout_secs: u64,
    /// Longest a database statement of this service may run, milliseconds (PostgreSQL
    /// `statement_timeout`, set per session; lock waits included).
    #[arg(long = "statement-timeout-ms", env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub statement_timeout_ms: u64,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// `TRUSTED_PROXIES`: whose `X-Forwarded-For` names the client of the per-IP limits.
    #[command(flatten)]
    pub client_ip: gps_runtime::client_ip::ClientIpArgs,
    /// The dashboard (`WEB_DIR`, `WEB_TILE_URL`, `WEB_LIVE_URL`).
    #[command(flatten)]
    pub web: crate::web::WebArgs,
    /// `WEBHOOK_ALLOW_PRIVATE_CIDRS`: the special addresses a webhook URL may name.
    #[command(flatten)]
    pub webhook_urls: gps_webhooks::UrlPolicyArgs,
}

/// Administrative subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Administration from the command line (bootstrap).
    Admin {
        #[command(subcommand)]
        action: AdminCommand,
    },
}

/// `query-api admin ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Create a tenant and its first admin, and print how to log in.
    CreateTenant {
        /// Tenant name.
        #[arg(long)]
        name: String,
        /// The first admin's email.
        #[arg(long)]
        admin_email: String,
        /// The admin's password (generated and printed when omitted).
        #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Create a tenant's user, or set its password and role when it exists (the tenant is
    /// created when missing): the demo login of `dev/stack run`.
    EnsureUser {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// The user's email.
        #[arg(long)]
        email: String,
        /// The user's role.
        #[arg(long, default_value = "admin")]
        role: String,
        /// The password.
        #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
    },
}

/// Everything `run` needs beyond the connections: checked values.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The JWT signing secret.
    pub jwt_secret: SecretString,
    /// Access token lifetime.
    pub access_ttl_secs: i64,
    /// Refresh token lifetime.
    pub refresh_ttl_secs: i64,
    /// Live ticket lifetime.
    pub ticket_ttl_secs: u64,
    /// Login attempts per minute per IP and per email.
    pub login_limit_per_minute: u64,
    /// Refresh-token exchanges per minute per client IP and per user.
    pub refresh_limit_per_minute: u64,
    /// Longest lifetime of a new API key, days.
    pub api_key_max_ttl_days: u32,
    /// Authenticated requests per minute per user or API key.
    pub api_limit_per_minute: u64,
    /// The time-range caps and export limits.
    pub limits: Limits,
    /// The reverse proxies whose `X-Forwarded-For` is believed (login and refresh limits).
    pub trusted_proxies: gps_runtime::client_ip::TrustedProxies,
    /// Which webhook URLs may be created (SSRF).
    pub webhook_urls: gps_webhooks::UrlPolicy,
}

/// The caps that bound what one request may cost (see `docs/query-api.md`, "Errors and limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest `to - from` of a history request.
    pub history_max_range: chrono::Duration,
    /// Longest `to - from` of an area query.
    pub area_max_range: chrono::Duration,
    /// Longest `to - from` of a summary.
    pub summary_max_range: chrono::Duration,
    /// Concurrent history reads per tenant on this instance.
    pub exports_per_tenant: usize,
    /// How long a streamed export waits on a client that does not read.
    pub export_idle_timeout: std::time::Duration,
}

impl Default for Limits {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            history_max_range: chrono::Duration::days(366),
            area_max_range: chrono::Duration::days(7),
            summary_max_range: chrono::Duration::days(31),
            exports_per_tenant: 8,
            export_idle_timeout: std::time::Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Check every value and resolve the secret; the error lists every problem. (Ranges are
    /// checked by clap while parsing.)
    pub fn settings(&self) -> Result<Settings, InvalidConfig> {
        let mut problems = ConfigProblems::default();
        let jwt_secret = problems.check(self.jwt.resolve());
        problems.finish()?;
        Ok(Settings {
            jwt_secret: jwt_secret.expect("checked above"),
            access_ttl_secs: self.access_ttl_secs,
            refresh_ttl_secs: self.refresh_ttl_secs,
            ticket_ttl_secs: self.ticket_ttl_secs,
            login_limit_per_minute: self.login_limit_per_minute,
            refresh_limit_per_minute: self.refresh_limit_per_minute,
            api_key_max_ttl_days: self.api_key_max_ttl_days,
            api_limit_per_minute: self.api_limit_per_minute,
            limits: Limits {
                history_max_range: chrono::Duration::days(self.history_max_range_days.into()),
                area_max_range: chrono::Duration::days(self.area_max_range_days.into()),
                summary_max_range: chrono::Duration::days(self.summary_max_range_days.into()),
                exports_per_tenant: self.exports_per_tenant as usize,
                export_idle_timeout: std::time::Duration::from_secs(self.export_idle_timeout_secs),
            },
            trusted_proxies: self.client_ip.trusted_proxies.clone(),
            webhook_urls: self.webhook_urls.policy(),
        })
    }

    /// The per-session settings of this service's database connections.
    pub fn db_session(&self) -> gps_runtime::db::Session {
        gps_runtime::db::Session {
            statement_timeout: Some(std::time::Duration::from_millis(self.statement_timeout_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_secret_is_a_listed_problem() {
        // Set explicitly: the environment may carry JWT_SECRET or GPS_ALLOW_DEV_SECRETS.
        let mut config = Config::parse_from(["query-api", "--access-token-ttl", "600"]);
        config.jwt.jwt_secret = None;
        config.jwt.jwt_secret_file = None;
        config.jwt.allow_dev_secrets = false;
        let err = config.settings().unwrap_err().to_string();
        assert!(err.starts_with("invalid configuration:"), "{err}");
        assert!(err.contains("JWT_SECRET"), "{err}");
        config.jwt.allow_dev_secrets = true;
        assert_eq!(config.settings().unwrap().access_ttl_secs, 600);
    }

    #[test]
    fn the_caps_default_to_the_documented_values_and_refuse_zero() {
        let mut config = Config::parse_from(["query-api", "--statement-timeout-ms", "2500"]);
        config.jwt.allow_dev_secrets = true;
        config.jwt.jwt_secret = None;
        config.jwt.jwt_secret_file = None;
        assert_eq!(
            config.db_session().statement_timeout,
            Some(std::time::Duration::from_millis(2500))
        );
        // Env vars of the shell could change the rest; only the flags' defaults are compared.
        if std::env::var_os("HISTORY_MAX_RANGE_DAYS").is_none()
            && std::env::var_os("AREA_MAX_RANGE_DAYS").is_none()
            && std::env::var_os("SUMMARY_MAX_RANGE_DAYS").is_none()
            && std::env::var_os("EXPORTS_PER_TENANT").is_none()
            && std::env::var_os("EXPORT_IDLE_TIMEOUT_SECS").is_none()
        {
            assert_eq!(config.settings().unwrap().limits, Limits::default());
        }
        for flag in [
            "--history-max-range-days",
            "--area-max-range-days",
            "--summary-max-range-days",
            "--exports-per-tenant",
            "--export-idle-timeout",
        ] {
            let err = Config::try_parse_from(["query-api", flag, "0"]).unwrap_err();
            assert!(err.to_string().contains(flag), "{err}");
        }
    }
}
