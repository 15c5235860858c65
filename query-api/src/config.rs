//! Query API configuration: the listener, token lifetimes, rate limits and the dependencies.
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
    /// Authenticated requests per minute per user or API key.
    #[arg(long = "api-rate-limit", env = "API_RATE_LIMIT", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_limit_per_minute: u64,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub log: LogArgs,
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
    /// Authenticated requests per minute per user or API key.
    pub api_limit_per_minute: u64,
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
            api_limit_per_minute: self.api_limit_per_minute,
        })
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
}
