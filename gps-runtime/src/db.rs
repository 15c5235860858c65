//! PostgreSQL: the pool, the embedded migrator (`migrations/` at the workspace root) and the
//! storage-mode probe (TimescaleDB hypertables, or the native partitioning fallback).

use crate::config::DatabaseArgs;
use crate::RuntimeError;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// The workspace's migrations, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How `positions` is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// TimescaleDB hypertable with compression, retention and a continuous aggregate.
    Timescale,
    /// Native declarative range partitioning by day, upkept by the processor.
    Partitioned,
}

/// Open a pool, failing fast with a message that names the database and how to start it.
pub async fn connect(args: &DatabaseArgs) -> Result<PgPool, RuntimeError> {
    let unreachable = |reason: String| RuntimeError::Unreachable {
        dependency: "PostgreSQL",
        address: args.redacted_url(),
        env_var: "DATABASE_URL",
        reason,
    };
    let options = PgConnectOptions::from_str(args.database_url.expose_secret())
        .map_err(|e| unreachable(format!("bad URL: {e}")))?
        .application_name("gps-telemetry");
    PgPoolOptions::new()
        .max_connections(args.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|e| unreachable(e.to_string()))
}

/// Apply every pending migration (idempotent).
pub async fn migrate(pool: &PgPool) -> Result<(), RuntimeError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Which storage path the migrations took on this database.
pub async fn storage_mode(pool: &PgPool) -> Result<StorageMode, RuntimeError> {
    let mode: String = sqlx::query_scalar("SELECT gps_storage_mode()")
        .fetch_one(pool)
        .await?;
    Ok(if mode == "timescaledb" {
        StorageMode::Timescale
    } else {
        StorageMode::Partitioned
    })
}

/// A readiness check: `SELECT 1` answers.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("postgres: {e}"))
}

/// `url` with its database name replaced by `name`, query parameters kept: the same server and
/// credentials, another database. For throwaway databases (tests, benchmark ceilings).
pub fn url_with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    // The last `/` after the scheme's `://` starts the database name, if there is one.
    let prefix = match base.rfind('/') {
        Some(i) if i > base.find("://").map_or(0, |j| j + 2) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn the_database_name_is_replaced_and_the_query_kept() {
        assert_eq!(
            url_with_database("postgres://gps:gps@127.0.0.1:5432/gps", "x"),
            "postgres://gps:gps@127.0.0.1:5432/x"
        );
        assert_eq!(
            url_with_database("postgres://h/gps?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
        assert_eq!(url_with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            url_with_database("postgres://h?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
