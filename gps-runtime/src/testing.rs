//! Integration-test helpers (feature `testing`): each test gets its own throwaway database and
//! its own Kafka topics on the local stack (`dev/stack up`), so tests run in parallel and never
//! see each other's data. Databases are named `gps_test_*`; `dev/stack test` drops stale ones.

use crate::config::{DatabaseArgs, KafkaArgs, RedisArgs};
use crate::ops::metric_sample;
use crate::{db, kafka};
use gps_domain::auth;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
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
        let url = db::url_with_database(base.database_url.expose_secret(), &name);
        let args = DatabaseArgs {
            database_url: SecretString::from(url),
            max_connections: 8,
        };
        let pool = db::connect(&args).await.expect("connect to test database");
        db::migrate(&pool).await.expect("migrations apply");
        Self { pool, args, name }
    }
}

/// Kafka settings with fresh, unique topics (fixes with 8 partitions, rejected with 1, events
/// with 8).
pub async fn kafka_topics() -> KafkaArgs {
    let mut args = KafkaArgs::local();
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        args.brokers = brokers;
    }
    let suffix = unique_suffix();
    args.fixes_topic = format!("test.fixes.{suffix}");
    args.rejected_topic = format!("test.rejected.{suffix}");
    args.events_topic = format!("test.events.{suffix}");
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

/// How often the waits below poll.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Poll `check` every 50 ms until it returns true; panics naming `what` after `within`. Runs on
/// tokio's clock, so it also works under `tokio::time::pause`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Poll `url` until it answers 200; panics after `within`, or at once when `task` (the service
/// under test) has already ended, with what the task returned (its start-up error, say).
pub async fn wait_until_ok<T: std::fmt::Debug>(
    client: &reqwest::Client,
    url: &str,
    task: &mut JoinHandle<T>,
    within: Duration,
) {
    let mut ended = false;
    wait_until(within, &format!("{url} to answer 200"), || {
        ended = task.is_finished();
        async move {
            ended
                || client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    if ended {
        let outcome = task.await;
        panic!("the service ended before {url} answered: {outcome:?}");
    }
}

/// The value of `selector` in Prometheus text: an exact sample (`name{labels}` exactly as
/// exposed, see [`metric_sample`]), or a bare metric name, summed over all its label sets.
/// 0 when absent.
pub fn metric_value(text: &str, selector: &str) -> f64 {
    if selector.contains('{') {
        return metric_sample(text, selector).unwrap_or(0.0);
    }
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split_once('{').map_or(series, |(name, _)| name);
            (name == selector).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Scrape `{base}/metrics` and read `selector` (see [`metric_value`]); 0 while the endpoint does
/// not answer (a service still starting), so it can be polled.
pub async fn scrape_metric(client: &reqwest::Client, base: &str, selector: &str) -> f64 {
    let text = match client.get(format!("{base}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    metric_value(&text, selector)
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
    server: JoinHandle<Result<(), E>>,
    shutdown: crate::shutdown::Shutdown,
    checks: &[&str],
) {
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let within = Duration::from_secs(10);
    let mut server = server;
    wait_until_ok(&client, &format!("{base}/healthz"), &mut server, within).await;
    assert_ops_endpoints(&client, &base, checks).await;
    shutdown.trigger();
    tokio::time::timeout(within, server)
        .await
        .expect("the service stops on shutdown")
        .expect("the service task does not panic")
        .expect("the service stops without an error");
}

/// A private broker (tansu, the binary `dev/stack` caches) on a free port, with its sqlite data
/// in a temp dir: for tests that stop, freeze or restart the broker, never the shared one.
pub struct PrivateBroker {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its working directory (sqlite data, `tansu.log`), removed on drop.
    pub dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

/// Where `dev/stack` caches the broker (`TANSU_BIN` overrides).
pub fn default_tansu() -> String {
    let cache = std::env::var("GPS_CACHE_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/gps-telemetry",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into())
        )
    });
    format!("{cache}/tansu-0.6.0/bin/tansu")
}

impl PrivateBroker {
    /// The tansu binary, if it is there.
    pub fn tansu_path() -> Option<std::path::PathBuf> {
        let path = std::env::var("TANSU_BIN").unwrap_or_else(|_| default_tansu());
        let path = std::path::PathBuf::from(path);
        path.exists().then_some(path)
    }

    /// Start one on a free port; `None` without the binary.
    pub async fn start() -> Option<Self> {
        Self::tansu_path()?;
        let port = crate::ports::free_loopback_port(false).unwrap().port();
        let dir = std::env::temp_dir().join(format!("tansu-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Self {
            port,
            dir,
            child: None,
        };
        broker.spawn().await;
        Some(broker)
    }

    /// Its address, for `KAFKA_BROKERS`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start the broker process (again, after [`PrivateBroker::kill`]: on the same data) and
    /// wait until it listens.
    pub async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("tansu.log")).unwrap();
        let child = std::process::Command::new(Self::tansu_path().unwrap())
            .current_dir(&self.dir)
            .args([
                "broker",
                "--storage-engine",
                "sqlite://tansu.db",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_until(
            Duration::from_secs(15),
            "the private tansu to listen",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// The last `lines` lines of the broker's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Freeze the broker (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaw a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = std::process::Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// SIGKILL the broker and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP gps_x_total fixes\n\
                           # TYPE gps_x_total counter\n\
                           gps_x_total{reason=\"a\"} 2\n\
                           gps_x_total{reason=\"b\"} 3\n\
                           gps_x_total_extra 100\n\
                           gps_connections 7\n";

    #[test]
    fn a_bare_name_sums_its_label_sets_only() {
        assert_eq!(metric_value(METRICS, "gps_x_total"), 5.0);
        assert_eq!(metric_value(METRICS, "gps_connections"), 7.0);
        assert_eq!(metric_value(METRICS, "gps_missing_total"), 0.0);
    }

    #[test]
    fn a_labelled_selector_reads_one_sample() {
        assert_eq!(metric_value(METRICS, "gps_x_total{reason=\"b\"}"), 3.0);
        assert_eq!(metric_value(METRICS, "gps_x_total{reason=\"c\"}"), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_until_returns_once_the_check_holds() {
        let started = tokio::time::Instant::now();
        let mut polls = 0;
        wait_until(Duration::from_secs(5), "the third poll", || {
            polls += 1;
            let done = polls == 3;
            async move { done }
        })
        .await;
        assert_eq!(polls, 3);
        assert_eq!(started.elapsed(), 2 * POLL_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 1s waiting for never")]
    async fn wait_until_panics_at_its_deadline() {
        wait_until(Duration::from_secs(1), "never", || async { false }).await;
    }

    #[tokio::test]
    #[should_panic(expected = "answered: Ok(Err(\"bind failed\"))")]
    async fn wait_until_ok_names_a_service_that_ended() {
        let mut task = tokio::spawn(async { Err::<(), _>("bind failed") });
        tokio::task::yield_now().await;
        let client = reqwest::Client::new();
        // Port 9 (discard) on loopback: nothing answers HTTP there.
        wait_until_ok(
            &client,
            "http://127.0.0.1:9/healthz",
            &mut task,
            Duration::from_secs(5),
        )
        .await;
    }
}
