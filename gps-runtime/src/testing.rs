//! Integration-test helpers (feature `testing`): each test gets its own throwaway database and
//! its own Kafka topics on the local stack (`dev/stack up`), so tests run in parallel and never
//! see each other's data. Databases are named `gps_test_*`; `dev/stack test` drops stale ones.

use crate::config::{DatabaseArgs, KafkaArgs, RedisArgs};
use crate::{db, kafka};
use gps_domain::auth;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

/// A short random lowercase suffix for names.
pub fn unique_suffix() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// The stack's database settings from the environment (or the local defaults).
pub fn database_args() -> DatabaseArgs {
    let mut args = DatabaseArgs::local();
    if let Ok(url) = std::env::var("DATABASE_URL") {
        args.database_url = SecretString::from(url);
    }
    args.max_connections = 8;
    args
}

/// The stack's Redis settings from the environment (or the local defaults).
pub fn redis_args() -> RedisArgs {
    let mut args = RedisArgs::local();
    if let Ok(url) = std::env::var("REDIS_URL") {
        args.redis_url = SecretString::from(url);
    }
    args
}

/// A migrated database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// Pool on the test database.
    pub pool: PgPool,
    /// Settings pointing at the test database (for services under test).
    pub args: DatabaseArgs,
    /// The database name.
    pub name: String,
}

impl TestDb {
    /// Create and migrate a fresh database.
    pub async fn new() -> Self {
        let base = database_args();
        let admin = db::connect(&base)
            .await
            .expect("the stack's PostgreSQL answers (run `dev/stack up`)");
        let name = format!("gps_test_{}", unique_suffix());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = replace_database(base.database_url.expose_secret(), &name);
        let args = DatabaseArgs {
            database_url: SecretString::from(url),
            max_connections: 8,
        };
        let pool = db::connect(&args).await.expect("connect to test database");
        db::migrate(&pool).await.expect("migrations apply");
        Self { pool, args, name }
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let prefix = match base.rfind('/') {
        Some(i) if base[..i].contains("://") && i > base.find("://").unwrap() + 2 => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

/// Kafka settings with fresh, unique topics (fixes with 8 partitions, rejected with 1).
pub async fn kafka_topics() -> KafkaArgs {
    let mut args = KafkaArgs::local();
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        args.brokers = brokers;
    }
    let suffix = unique_suffix();
    args.fixes_topic = format!("test.fixes.{suffix}");
    args.rejected_topic = format!("test.rejected.{suffix}");
    kafka::ensure_standard_topics(&args)
        .await
        .expect("the stack's Kafka broker answers (run `dev/stack up`)");
    args
}

/// A tenant and one device with fresh credentials, as the tests need them.
#[derive(Debug, Clone)]
pub struct SeededDevice {
    /// Tenant id.
    pub tenant_id: Uuid,
    /// Device id.
    pub device_id: Uuid,
    /// The device's own uid.
    pub uid: String,
    /// Its ingest bearer token (clear text; the database holds the digest).
    pub token: String,
    /// Its UDP HMAC key.
    pub udp_key: [u8; 32],
}

/// Insert a tenant named `tenant_name` (created if missing) with one new device.
pub async fn seed_device(pool: &PgPool, tenant_name: &str) -> SeededDevice {
    let tenant_id: Uuid = sqlx::query_scalar(
        "INSERT INTO tenants (name) VALUES ($1)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
    )
    .bind(tenant_name)
    .fetch_one(pool)
    .await
    .expect("insert tenant");
    let uid = format!("dev-{}", unique_suffix());
    let token = auth::new_device_token();
    let udp_key = auth::new_udp_key();
    let device_id: Uuid = sqlx::query_scalar(
        "INSERT INTO devices (tenant_id, uid, name, token_hash, udp_key)
         VALUES ($1, $2, $2, $3, $4) RETURNING id",
    )
    .bind(tenant_id)
    .bind(&uid)
    .bind(auth::secret_digest(&token))
    .bind(udp_key.as_slice())
    .fetch_one(pool)
    .await
    .expect("insert device");
    SeededDevice {
        tenant_id,
        device_id,
        uid,
        token,
        udp_key,
    }
}

/// Poll `url` every 50 ms until it answers 200; panics after `within`, or at once when `task`
/// (the service under test) has already ended.
pub async fn wait_until_ok<T>(
    client: &reqwest::Client,
    url: &str,
    task: &tokio::task::JoinHandle<T>,
    within: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok(response) = client.get(url).send().await {
            if response.status() == 200 {
                return;
            }
        }
        assert!(
            !task.is_finished(),
            "the service ended before {url} answered"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{url} did not answer 200 within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Check a service's operational endpoints at `base`: `/healthz` 200, `/readyz` 200 with each of
/// `checks` reported "ok", `/metrics` in Prometheus text. Returns the metrics text.
pub async fn assert_ops_endpoints(client: &reqwest::Client, base: &str, checks: &[&str]) -> String {
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    let status = ready.status();
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    for check in checks {
        assert_eq!(
            body["checks"][check], "ok",
            "readiness check {check}: {body}"
        );
    }
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("# TYPE"), "not Prometheus text: {text}");
    text
}

/// The smoke check of a service running in-process at `addr`: wait for `/healthz`, check the
/// operational endpoints (see [`assert_ops_endpoints`]), then trigger `shutdown` and require
/// the service to stop cleanly within 10 s.
pub async fn assert_serves_ops_then_stops<E: std::fmt::Debug>(
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<Result<(), E>>,
    shutdown: crate::shutdown::Shutdown,
    checks: &[&str],
) {
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let within = std::time::Duration::from_secs(10);
    wait_until_ok(&client, &format!("{base}/healthz"), &server, within).await;
    assert_ops_endpoints(&client, &base, checks).await;
    shutdown.trigger();
    tokio::time::timeout(within, server)
        .await
        .expect("the service stops on shutdown")
        .expect("the service task does not panic")
        .expect("the service stops without an error");
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            replace_database("postgres://gps:gps@127.0.0.1:5432/gps", "x"),
            "postgres://gps:gps@127.0.0.1:5432/x"
        );
        assert_eq!(
            replace_database("postgres://h/gps?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h", "x"), "postgres://h/x");
    }
}
