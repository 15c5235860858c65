//! Typed configuration pieces that every service flattens into its own clap config: where the
//! dependencies are, the shared secrets, and logging. Every value comes from a flag or an env var
//! with a default that works against the local stack (`dev/stack up`); secrets are
//! [`SecretString`]s and never printed.

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

/// Default local PostgreSQL URL (the `dev/stack` role and database).
pub const DEFAULT_DATABASE_URL: &str = "postgres://gps:gps@127.0.0.1:5432/gps";
/// Default Kafka bootstrap servers.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Topic of accepted-and-parsed fixes (the log of record).
pub const DEFAULT_FIXES_TOPIC: &str = "gps.fixes";
/// Topic of quarantined fixes.
pub const DEFAULT_REJECTED_TOPIC: &str = "gps.fixes.rejected";
/// Topic of events (geofence, overspeed, ...), written by the processor after their commit.
pub const DEFAULT_EVENTS_TOPIC: &str = "gps.events";
/// Development-only JWT secret; services refuse it unless `--allow-dev-secrets` is set.
pub const DEV_JWT_SECRET: &str = "dev-only-insecure-jwt-secret-change-me";

/// PostgreSQL connection settings.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (secret: may carry a password).
    #[arg(long = "database-url", env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_default_value = true, hide_env_values = true)]
    pub database_url: SecretString,
    /// Maximum connections in the pool.
    #[arg(long = "database-max-connections", env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_connections: u32,
}

impl DatabaseArgs {
    /// Defaults, as if no flag or env var were given.
    pub fn local() -> Self {
        Self {
            database_url: SecretString::from(DEFAULT_DATABASE_URL),
            max_connections: 16,
        }
    }

    /// The URL with any password replaced, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(self.database_url.expose_secret())
    }
}

/// Kafka connection settings and topic names.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma separated.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS", default_value = DEFAULT_KAFKA_BROKERS)]
    pub brokers: String,
    /// Topic carrying every parsed fix.
    #[arg(long = "fixes-topic", env = "KAFKA_FIXES_TOPIC", default_value = DEFAULT_FIXES_TOPIC)]
    pub fixes_topic: String,
    /// Quarantine topic for rejected fixes.
    #[arg(long = "rejected-topic", env = "KAFKA_REJECTED_TOPIC", default_value = DEFAULT_REJECTED_TOPIC)]
    pub rejected_topic: String,
    /// Topic the processor publishes events to after their commit (key = device id, value =
    /// the event as JSON).
    #[arg(long = "events-topic", env = "KAFKA_EVENTS_TOPIC", default_value = DEFAULT_EVENTS_TOPIC)]
    pub events_topic: String,
    /// Any librdkafka property, from `KAFKA_PROPERTY_<name>=value` environment variables (see
    /// [`crate::kafka::KafkaProperties`]); secret values are redacted in `Debug`.
    #[arg(skip = crate::kafka::KafkaProperties::from_env())]
    pub properties: crate::kafka::KafkaProperties,
}

impl KafkaArgs {
    /// Defaults, as if no flag or env var were given.
    pub fn local() -> Self {
        Self {
            brokers: DEFAULT_KAFKA_BROKERS.into(),
            fixes_topic: DEFAULT_FIXES_TOPIC.into(),
            rejected_topic: DEFAULT_REJECTED_TOPIC.into(),
            events_topic: DEFAULT_EVENTS_TOPIC.into(),
            properties: crate::kafka::KafkaProperties::default(),
        }
    }
}

/// Redis connection settings.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL (secret: may carry a password).
    #[arg(long = "redis-url", env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_default_value = true, hide_env_values = true)]
    pub redis_url: SecretString,
}

impl RedisArgs {
    /// Defaults, as if no flag or env var were given.
    pub fn local() -> Self {
        Self {
            redis_url: SecretString::from(DEFAULT_REDIS_URL),
        }
    }

    /// The URL with any password replaced, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(self.redis_url.expose_secret())
    }
}

/// The shared JWT signing secret (HS256) used by the query API and fanout.
#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// HS256 secret for access tokens; at least 32 bytes.
    #[arg(long = "jwt-secret", env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,
    /// Read the JWT secret from this file instead (e.g. a mounted secret).
    #[arg(
        long = "jwt-secret-file",
        env = "JWT_SECRET_FILE",
        conflicts_with = "jwt_secret"
    )]
    pub jwt_secret_file: Option<std::path::PathBuf>,
    /// Accept the built-in development secret when none is configured (local stack only).
    #[arg(
        long = "allow-dev-secrets",
        env = "GPS_ALLOW_DEV_SECRETS",
        default_value_t = false
    )]
    pub allow_dev_secrets: bool,
}

impl JwtArgs {
    /// Resolve the secret from the flag, the file or the dev default, checking its strength.
    pub fn resolve(&self) -> Result<SecretString, ConfigError> {
        let secret = if let Some(secret) = &self.jwt_secret {
            secret.clone()
        } else if let Some(path) = &self.jwt_secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                field: "JWT_SECRET_FILE",
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            SecretString::from(text.trim().to_owned())
        } else if self.allow_dev_secrets {
            SecretString::from(DEV_JWT_SECRET)
        } else {
            return Err(ConfigError::Invalid {
                field: "JWT_SECRET",
                reason: "not set: set JWT_SECRET or JWT_SECRET_FILE (or GPS_ALLOW_DEV_SECRETS=true on a development stack)".into(),
            });
        };
        if secret.expose_secret().len() < 32 {
            return Err(ConfigError::Invalid {
                field: "JWT_SECRET",
                reason: "must be at least 32 bytes".into(),
            });
        }
        Ok(secret)
    }
}

/// Logging settings.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub filter: String,
    /// Log line format.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration value that parsed but makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One field is wrong.
    #[error("invalid configuration {field}: {reason}")]
    Invalid {
        /// The env var or flag at fault.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Every problem of a configuration, reported together at start: the one configuration error
/// every service stops with.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", list(.0))]
pub struct InvalidConfig(Vec<ConfigError>);

impl InvalidConfig {
    /// The problems, one per field.
    pub fn problems(&self) -> &[ConfigError] {
        &self.0
    }
}

impl From<ConfigError> for InvalidConfig {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

fn list(problems: &[ConfigError]) -> String {
    problems
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects every configuration problem so that start-up reports them all at once.
#[derive(Debug, Default)]
pub struct ConfigProblems(Vec<ConfigError>);

impl ConfigProblems {
    /// Record a problem.
    pub fn push(&mut self, field: &'static str, reason: impl Into<String>) {
        self.0.push(ConfigError::Invalid {
            field,
            reason: reason.into(),
        });
    }

    /// Record the error of a fallible check.
    pub fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    /// `Ok` when no problem was recorded, else every problem.
    pub fn finish(self) -> Result<(), InvalidConfig> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(InvalidConfig(self.0))
        }
    }
}

/// Replace the password of a URL (`scheme://user:pass@host`) with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestConfig {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        jwt: JwtArgs,
        #[command(flatten)]
        log: LogArgs,
    }

    fn parse(args: &[&str]) -> Result<TestConfig, clap::Error> {
        TestConfig::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_point_at_the_local_stack() {
        // Env vars of the developer's shell could leak in; only flags are asserted when set.
        let config = parse(&["--kafka-brokers", "127.0.0.1:9092"]).unwrap();
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.kafka.fixes_topic, DEFAULT_FIXES_TOPIC);
        assert!(config.db.max_connections >= 1);
    }

    #[test]
    fn flags_override_defaults() {
        let config = parse(&[
            "--database-url",
            "postgres://a:b@db:5432/x",
            "--database-max-connections",
            "4",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(config.db.max_connections, 4);
        assert_eq!(config.db.redacted_url(), "postgres://a:***@db:5432/x");
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let err = parse(&["--database-max-connections", "0"]).unwrap_err();
        assert!(
            err.to_string().contains("--database-max-connections"),
            "{err}"
        );
        let err = parse(&["--database-max-connections", "many"]).unwrap_err();
        assert!(err.to_string().contains("invalid digit"), "{err}");
        let err = parse(&["--log-format", "xml"]).unwrap_err();
        assert!(err.to_string().contains("xml"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = parse(&[
            "--database-url",
            "postgres://u:hunter2@h/db",
            "--jwt-secret",
            "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t",
        ])
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }

    #[test]
    fn jwt_secret_must_be_set_and_strong() {
        let mut jwt = JwtArgs {
            jwt_secret: None,
            jwt_secret_file: None,
            allow_dev_secrets: false,
        };
        let err = jwt.resolve().unwrap_err().to_string();
        assert!(err.contains("JWT_SECRET"), "{err}");
        jwt.jwt_secret = Some(SecretString::from("short"));
        assert!(jwt.resolve().unwrap_err().to_string().contains("32 bytes"));
        jwt.jwt_secret = None;
        jwt.allow_dev_secrets = true;
        assert_eq!(jwt.resolve().unwrap().expose_secret(), DEV_JWT_SECRET);
    }

    #[test]
    fn problems_are_reported_together() {
        let mut problems = ConfigProblems::default();
        problems.push("A_ADDR", "port taken");
        problems.push("B_ADDR", "not an address");
        let err = problems.finish().unwrap_err();
        assert_eq!(err.problems().len(), 2);
        let text = err.to_string();
        assert!(text.starts_with("invalid configuration:\n  - "), "{text}");
        assert!(text.contains("A_ADDR") && text.contains("B_ADDR"), "{text}");
        assert!(ConfigProblems::default().finish().is_ok());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
