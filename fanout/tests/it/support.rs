//! Shared test plumbing: start a fanout on port 0 against a fresh database, seed users, groups and
//! last positions with SQL, publish live batches to Redis, and a small WebSocket client.

use futures::{SinkExt, StreamExt};
use gps_domain::auth::Role;
use gps_domain::fix::{Fix, Protocol};
use gps_domain::live::{channel_for, LiveBatch, LiveFix};
use gps_runtime::config::RedisArgs;
use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::TestDb;
use gps_store::principal::JwtKeys;
use gps_store::tickets::TicketKey;
use secrecy::SecretString;
use serde_json::Value;
use sqlx::PgPool;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// The JWT secret every test fanout uses.
pub(crate) const SECRET: &str = "fanout-integration-test-secret-0123456789";

/// A client socket.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A fanout under test.
pub(crate) struct Running {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub server: tokio::task::JoinHandle<Result<(), fanout::ServiceError>>,
    pub db: TestDb,
    pub keys: JwtKeys,
    pub redis: redis::aio::ConnectionManager,
}

/// The default test configuration (shared Redis, the given database).
pub(crate) fn config(db: &TestDb) -> fanout::Config {
    let mut config =
        <fanout::Config as clap::Parser>::parse_from(["fanout", "--jwt-secret", SECRET]);
    config.database = db.args.clone();
    config.redis = gps_runtime::testing::redis_args();
    config
}

/// Point `config` at another Redis.
pub(crate) fn with_redis(mut config: fanout::Config, url: &str) -> fanout::Config {
    config.redis = RedisArgs {
        redis_url: SecretString::from(url.to_owned()),
    };
    config
}

/// Start a fanout and wait until it is ready (including its Redis subscription).
pub(crate) async fn start(db: TestDb, config: fanout::Config) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let redis = gps_runtime::redis_client::connect(&config.redis)
        .await
        .unwrap();
    let shutdown = Shutdown::new();
    let mut server = tokio::spawn(fanout::run(config, listener, shutdown.clone()));
    let client = reqwest::Client::new();
    gps_runtime::testing::wait_until_ok(
        &client,
        &format!("http://{addr}/readyz"),
        &mut server,
        Duration::from_secs(20),
    )
    .await;
    Running {
        addr,
        shutdown,
        server,
        db,
        keys: JwtKeys::new(&SecretString::from(SECRET)),
        redis,
    }
}

impl Running {
    /// A user of `role` in `tenant` and an access token for it.
    pub(crate) async fn user(&self, tenant: Uuid, role: Role) -> (Uuid, String) {
        let id = create_user(&self.db.pool, tenant, role).await;
        (id, self.keys.issue(id, tenant, role, 600))
    }

    /// Connect with a bearer token and read the welcome message.
    pub(crate) async fn connect(&self, token: &str) -> Ws {
        let mut ws = connect_with(self.addr, Some(token), None, None)
            .await
            .expect("upgrade succeeds");
        let welcome = recv(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        ws
    }

    /// Publish one live batch.
    pub(crate) async fn publish(&mut self, tenant: Uuid, fixes: Vec<LiveFix>) {
        publish(&mut self.redis, tenant, fixes).await;
    }

    /// A metric from `/metrics`: one sample, or a bare name summed over its label sets.
    pub(crate) async fn metric(&self, selector: &str) -> f64 {
        let base = format!("http://{}", self.addr);
        gps_runtime::testing::scrape_metric(&reqwest::Client::new(), &base, selector).await
    }

    /// Trigger shutdown and wait for `run` to return.
    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(15), self.server)
            .await
            .expect("fanout stops")
            .unwrap()
            .unwrap();
    }
}

/// Publish one live batch of fixes to `redis`.
pub(crate) async fn publish(
    redis: &mut impl redis::aio::ConnectionLike,
    tenant: Uuid,
    fixes: Vec<LiveFix>,
) {
    publish_batch(redis, &LiveBatch::new(tenant, fixes)).await;
}

/// Publish one live batch (fixes, statuses, events) on its tenant's channel.
pub(crate) async fn publish_batch(redis: &mut impl redis::aio::ConnectionLike, batch: &LiveBatch) {
    redis::cmd("PUBLISH")
        .arg(channel_for(batch.tenant))
        .arg(batch.encode())
        .query_async::<i64>(redis)
        .await
        .unwrap();
}

/// A live fix of `device` at `t` (ms) and position; `rx` carries the publish time (epoch ms).
pub(crate) fn live(device: Uuid, t: i64, lat: f64, lon: f64) -> LiveFix {
    LiveFix {
        device,
        uid: format!("uid-{device}"),
        proto: Protocol::Json,
        rx: gps_domain::fix::now_millis(),
        fix: Fix::new(t, lat, lon),
    }
}

/// Open `/v1/live` with optional bearer, ticket and Origin.
pub(crate) async fn connect_with(
    addr: SocketAddr,
    bearer: Option<&str>,
    ticket: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = match ticket {
        Some(t) => format!("ws://{addr}/v1/live?ticket={t}"),
        None => format!("ws://{addr}/v1/live"),
    };
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// The ticket key of every test fanout (derived from [`SECRET`], as fanout does).
pub(crate) fn ticket_key() -> TicketKey {
    TicketKey::derive(&SecretString::from(SECRET))
}

/// A loopback source address of its own (127.x.y.z), so that a per-IP limit under test counts
/// only this test's connects.
pub(crate) fn own_loopback_ip() -> Ipv4Addr {
    let n = Uuid::new_v4().as_u128();
    Ipv4Addr::new(127, (n >> 16) as u8 | 1, (n >> 8) as u8, (n as u8).max(2))
}

/// Open `/v1/live` with a bearer credential from source address `from`.
pub(crate) async fn connect_from(
    addr: SocketAddr,
    from: Ipv4Addr,
    bearer: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    connect_on(socket, addr, bearer).await
}

/// Open `/v1/live` with a bearer credential over `socket` (bound or tuned by the caller).
pub(crate) async fn connect_on(
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
    bearer: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let stream = socket.connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}/v1/live")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {bearer}")).unwrap(),
    );
    tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
        .await
        .map(|(ws, _)| ws)
}

/// Wait, if needed, until a one-minute rate-limit window has at least `secs` seconds left, so
/// that a burst of connects is counted in one window.
pub(crate) async fn fresh_window(secs: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = 60 - now % 60;
    if left < secs {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

/// The Close frame's code and reason, skipping text messages; panics if none comes `within`.
pub(crate) async fn close_of(ws: &mut Ws, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            Some(Message::Close(Some(frame))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned())
            }
            Some(Message::Close(None)) => panic!("closed without a code"),
            Some(_) => continue,
            None => panic!("not closed within {within:?}"),
        }
    }
}

/// The next message of type `kind` (others skipped), within `within`.
pub(crate) async fn recv_type(ws: &mut Ws, kind: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_frame(ws, left).await {
            Some(Message::Text(text)) => {
                let message: Value = serde_json::from_str(text.as_str()).unwrap();
                if message["type"] == kind {
                    return message;
                }
            }
            other => panic!("expected a {kind} message within {within:?}, got {other:?}"),
        }
    }
}

/// The HTTP status of a refused upgrade.
pub(crate) fn refused_status(result: Result<Ws, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade unexpectedly accepted"),
    }
}

/// The next message of any kind (frames other than text and close are skipped).
pub(crate) async fn next_frame(ws: &mut Ws, within: Duration) -> Option<Message> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return None,
            Ok(None) => return None,
            Ok(Some(Err(e))) => panic!("websocket error: {e}"),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(message))) => return Some(message),
        }
    }
}

/// The next JSON message (10 s at most).
pub(crate) async fn recv(ws: &mut Ws) -> Value {
    match next_frame(ws, Duration::from_secs(10)).await {
        Some(Message::Text(text)) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Send a JSON message.
pub(crate) async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// Subscribe and return (messages before the snapshot, the snapshot).
pub(crate) async fn subscribe(ws: &mut Ws, request: Value) -> (Vec<Value>, Value) {
    send(ws, request).await;
    let mut before = Vec::new();
    loop {
        let message = recv(ws).await;
        if message["type"] == "snapshot" {
            return (before, message);
        }
        assert!(
            ["error", "subscribed"].contains(&message["type"].as_str().unwrap_or("")),
            "unexpected before snapshot: {message}"
        );
        before.push(message);
    }
}

/// Fixes received until the marker device's fix arrives (the marker not included).
pub(crate) async fn fixes_until(ws: &mut Ws, marker: Uuid) -> Vec<Value> {
    let mut fixes = Vec::new();
    loop {
        let message = recv(ws).await;
        if message["type"] != "fix" {
            continue;
        }
        if message["device"] == marker.to_string() {
            return fixes;
        }
        fixes.push(message);
    }
}

/// The device ids of `fixes`, sorted.
pub(crate) fn devices(fixes: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = fixes
        .iter()
        .map(|f| f["device"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Sorted string forms of ids.
pub(crate) fn ids(ids: &[Uuid]) -> Vec<String> {
    let mut out: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    out.sort();
    out
}

/// Insert a user.
pub(crate) async fn create_user(pool: &PgPool, tenant: Uuid, role: Role) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO users (tenant_id, email, password_hash, role)
         VALUES ($1, $2, 'not-a-hash', $3) RETURNING id",
    )
    .bind(tenant)
    .bind(format!("{}@example.test", Uuid::new_v4().simple()))
    .bind(role.as_str())
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Insert a group with its devices and members.
pub(crate) async fn create_group(
    pool: &PgPool,
    tenant: Uuid,
    devices: &[Uuid],
    members: &[Uuid],
) -> Uuid {
    let group: Uuid =
        sqlx::query_scalar("INSERT INTO groups (tenant_id, name) VALUES ($1, $2) RETURNING id")
            .bind(tenant)
            .bind(format!("group-{}", Uuid::new_v4().simple()))
            .fetch_one(pool)
            .await
            .unwrap();
    for device in devices {
        sqlx::query("INSERT INTO group_devices (group_id, device_id) VALUES ($1, $2)")
            .bind(group)
            .bind(device)
            .execute(pool)
            .await
            .unwrap();
    }
    for user in members {
        sqlx::query("INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)")
            .bind(group)
            .bind(user)
            .execute(pool)
            .await
            .unwrap();
    }
    group
}

/// Insert an API key with `scopes`; returns the clear key.
pub(crate) async fn create_api_key(pool: &PgPool, tenant: Uuid, scopes: &[&str]) -> String {
    let key = gps_domain::auth::new_api_key();
    sqlx::query(
        "INSERT INTO api_keys (tenant_id, name, prefix, key_hash, scopes)
         VALUES ($1, 'test', $2, $3, $4)",
    )
    .bind(tenant)
    .bind(&key.id)
    .bind(gps_domain::auth::secret_digest(&key.key))
    .bind(scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .execute(pool)
    .await
    .unwrap();
    key.key
}

/// Set a device's last known position.
pub(crate) async fn set_last_position(
    pool: &PgPool,
    tenant: Uuid,
    device: Uuid,
    t: i64,
    lat: f64,
    lon: f64,
) {
    sqlx::query(
        "INSERT INTO last_positions (tenant_id, device_id, fix_time, received_at, lat, lon,
                                     speed_mps, protocol, attributes)
         VALUES ($1, $2, to_timestamp($3 / 1000.0), now(), $4, $5, 1.5, 'osmand', '{\"tid\":\"ab\"}')
         ON CONFLICT (device_id) DO UPDATE SET fix_time = EXCLUDED.fix_time,
             lat = EXCLUDED.lat, lon = EXCLUDED.lon",
    )
    .bind(tenant)
    .bind(device)
    .bind(t as f64)
    .bind(lat)
    .bind(lon)
    .execute(pool)
    .await
    .unwrap();
}
