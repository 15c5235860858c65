//! The storage-mode detection of the positions migration without superuser rights (issue 18):
//! a role without `pg_read_all_settings` migrates a database on a server where TimescaleDB
//! looks installed, and a database that applied the earlier text of that migration is accepted.

use gps_runtime::config::DatabaseArgs;
use gps_runtime::db::{self, StorageMode};
use gps_runtime::testing::{database_args, unique_suffix, TestDb};
use secrecy::{ExposeSecret, SecretString};

/// The SHA-384 of the positions migration's text before the detection fix.
const EARLIER_POSITIONS_CHECKSUM: &str = "373318d8d4264196e65110de4fb6209200f7f0d5b67eda6ed7e6aa06a60c53a2a275f35bfa3b759a8807998367dc321c";
const POSITIONS_VERSION: i64 = 20261122000002;

/// Settings of a role that may not read `shared_preload_libraries`: the stack's own role when it
/// is such a role (as here), else a plain role created for the test (needs CREATEROLE).
async fn plain_role(admin: &sqlx::PgPool) -> DatabaseArgs {
    let privileged: bool = sqlx::query_scalar(
        "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_settings', 'USAGE')
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(admin)
    .await
    .unwrap();
    let mut args = database_args();
    if privileged {
        let role = format!("gps_test_plain_{}", unique_suffix());
        sqlx::query(&format!(
            "CREATE ROLE {role} LOGIN CREATEDB PASSWORD 'plain' NOSUPERUSER"
        ))
        .execute(admin)
        .await
        .expect("the stack's role is privileged, so it must be able to create a plain role");
        let url = args.database_url.expose_secret().to_owned();
        let (scheme, rest) = url.split_once("://").unwrap();
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        args.database_url = SecretString::from(format!("{scheme}://{role}:plain@{host}"));
    }
    args
}

#[tokio::test]
async fn a_role_without_pg_read_all_settings_migrates_where_timescaledb_looks_installed() {
    let admin = db::connect(&database_args()).await.unwrap();
    let role = plain_role(&admin).await;
    let role_pool = db::connect(&role).await.unwrap();
    let name = format!("gps_test_{}", unique_suffix());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&role_pool)
        .await
        .unwrap();
    let args = DatabaseArgs {
        database_url: SecretString::from(db::url_with_database(
            role.database_url.expose_secret(),
            &name,
        )),
        max_connections: 2,
    };

    // Make TimescaleDB look installed: a view in `public` shadows the catalog's list of
    // available extensions once `public` comes before `pg_catalog` in the search path.
    let setup = db::connect(&args).await.unwrap();
    let refused = sqlx::query("SELECT current_setting('shared_preload_libraries', true)")
        .execute(&setup)
        .await
        .expect_err("the role must not be able to read shared_preload_libraries");
    let code = refused.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some("42501"), "{refused}");
    sqlx::query(
        "CREATE VIEW public.pg_available_extensions AS
         SELECT 'timescaledb'::name AS name, '2.17.0'::text AS default_version,
                NULL::text AS installed_version, 'stand-in'::text AS comment",
    )
    .execute(&setup)
    .await
    .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {name} SET search_path = public, pg_catalog"
    ))
    .execute(&setup)
    .await
    .unwrap();
    setup.close().await;

    let pool = db::connect(&args).await.unwrap();
    let looks_installed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(looks_installed, "the stand-in view is not in effect");

    db::migrate(&pool)
        .await
        .expect("migrations apply for a role without pg_read_all_settings");
    assert_eq!(
        db::storage_mode(&pool).await.unwrap(),
        StorageMode::Partitioned,
        "the extension cannot be created here, so the fallback is taken"
    );
    let partitioned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'positions'::regclass)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(partitioned);
    pool.close().await;
}

#[tokio::test]
async fn a_database_migrated_with_the_earlier_positions_text_is_accepted() {
    let db = TestDb::new().await;
    let set_checksum = |hex: &'static str| {
        sqlx::query("UPDATE _sqlx_migrations SET checksum = decode($1, 'hex') WHERE version = $2")
            .bind(hex)
            .bind(POSITIONS_VERSION)
    };
    set_checksum(EARLIER_POSITIONS_CHECKSUM)
        .execute(&db.pool)
        .await
        .unwrap();

    db::migrate(&db.pool)
        .await
        .expect("the earlier text's checksum is accepted");
    let recorded: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = $1")
            .bind(POSITIONS_VERSION)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let current = db::MIGRATOR
        .iter()
        .find(|m| m.version == POSITIONS_VERSION)
        .unwrap();
    assert_eq!(
        recorded,
        current.checksum.to_vec(),
        "moved to the corrected text"
    );

    // Any other text is still refused.
    set_checksum("00").execute(&db.pool).await.unwrap();
    let err = db::migrate(&db.pool).await.unwrap_err();
    assert!(err.to_string().contains("migration"), "{err}");
    assert!(
        matches!(
            err,
            gps_runtime::RuntimeError::Migrate(sqlx::migrate::MigrateError::VersionMismatch(
                POSITIONS_VERSION
            ))
        ),
        "{err}"
    );
}
