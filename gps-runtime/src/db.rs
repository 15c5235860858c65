//! PostgreSQL: the pool (with optional per-session settings such as a statement timeout), the
//! embedded migrator (`migrations/` at the workspace root) and the storage-mode probe
//! (TimescaleDB hypertables, or the native partitioning fallback).

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

/// Settings every connection of a pool starts its session with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Session {
    /// PostgreSQL `statement_timeout`: a statement running (or waiting for a lock) longer is
    /// cancelled by the server (SQLSTATE 57014), so work stops even when nobody waits for it
    /// any more. `None` keeps the server's default. Sent as a startup option of the session,
    /// which any role may set: no superuser, no `ALTER ROLE`.
    pub statement_timeout: Option<Duration>,
}

/// Open a pool, failing fast with a message that names the database and how to start it.
pub async fn connect(args: &DatabaseArgs) -> Result<PgPool, RuntimeError> {
    connect_with(args, Session::default()).await
}

/// [`connect`] with `session` applied to every connection of the pool.
pub async fn connect_with(args: &DatabaseArgs, session: Session) -> Result<PgPool, RuntimeError> {
    let unreachable = |reason: String| RuntimeError::Unreachable {
        dependency: "PostgreSQL",
        address: args.redacted_url(),
        env_var: "DATABASE_URL",
        reason,
    };
    let options = PgConnectOptions::from_str(args.database_url.expose_secret())
        .map_err(|e| unreachable(format!("bad URL: {e}")))?
        .application_name("gps-telemetry");
    let options = match session.statement_timeout {
        // At least 1 ms: 0 would mean "no timeout" to PostgreSQL.
        Some(timeout) => options.options([(
            "statement_timeout",
            format!("{}ms", timeout.as_millis().max(1)),
        )]),
        None => options,
    };
    PgPoolOptions::new()
        .max_connections(args.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|e| unreachable(e.to_string()))
}

/// Migrations whose text was corrected after release, with the SHA-384 (hex) of the text a
/// database may have applied before. Migrations are append-only; an entry here is the one
/// exception, for a migration that failed on some servers and so could not be fixed by a later
/// one. The correction must leave the schema of every database that applied the earlier text
/// as it is: only servers where the earlier text failed take another path.
///
/// - `20261122000002` (positions): the TimescaleDB detection read `shared_preload_libraries`,
///   which a role without `pg_read_all_settings` may not read on a server with TimescaleDB
///   installed, so the migration failed there (issue 18). Where it succeeded, the corrected
///   detection picks the same storage path.
const CORRECTED_MIGRATIONS: &[(i64, &str)] = &[(
    20261122000002,
    "373318d8d4264196e65110de4fb6209200f7f0d5b67eda6ed7e6aa06a60c53a2a275f35bfa3b759a8807998367dc321c",
)];

/// Apply every pending migration (idempotent). Migrations may run longer than a pool's
/// statement timeout (an index over a large table): they run on one connection with the
/// timeout lifted, restored (`RESET` returns to the session's start value) before the
/// connection goes back to the pool, or the connection is closed. A database that applied the
/// earlier text of a corrected migration ([`CORRECTED_MIGRATIONS`]) has its recorded checksum
/// moved to the corrected text first; any other checksum mismatch still stops the migrator.
pub async fn migrate(pool: &PgPool) -> Result<(), RuntimeError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    accept_corrected_migrations(&mut conn).await?;
    // `run_direct` (what `run` calls): `run(&mut *conn)` is not `Send` in a spawned future.
    let outcome = MIGRATOR.run_direct(&mut *conn).await;
    if sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        drop(conn.detach());
    }
    outcome?;
    Ok(())
}

/// Record the corrected text's checksum for every migration of [`CORRECTED_MIGRATIONS`] that
/// this database applied in its earlier text (idempotent; a no-op on a new database).
async fn accept_corrected_migrations(conn: &mut sqlx::PgConnection) -> Result<(), RuntimeError> {
    let tracked: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !tracked {
        return Ok(());
    }
    for (version, earlier) in CORRECTED_MIGRATIONS {
        let Some(migration) = MIGRATOR.iter().find(|m| m.version == *version) else {
            continue;
        };
        let updated = sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $1
             WHERE version = $2 AND encode(checksum, 'hex') = $3",
        )
        .bind(&*migration.checksum)
        .bind(version)
        .bind(earlier)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if updated > 0 {
            tracing::info!(
                version,
                "migration applied in its earlier text; checksum moved to the corrected text"
            );
        }
    }
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
