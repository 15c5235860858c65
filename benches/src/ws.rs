//! `loadgen ws`: WebSocket load on a running fanout, measuring what `docs/fanout.md`
//! ("Measured") reports.
//!
//! - [`latency`]: N clients (default 1,000) each subscribe to a window of devices (default: every
//!   device has `--fanout 1` subscriber), then `LiveBatch` messages are PUBLISHed to Redis at
//!   `--rate` fixes/s (default 10,000) in batches of `--batch` fixes for `--duration` seconds. The
//!   tool records the `Instant` just before each PUBLISH per (device, fix time) and the `Instant`
//!   each client reads the `fix` frame, and prints published / expected / received / missing
//!   counts and the PUBLISH-to-client latency p50/p90/p95/p99/p99.9/max (target p99 < 100 ms).
//! - [`idle`]: N connections (default 10,000), authenticated and subscribed to one device each,
//!   held open (`--hold`, across server heartbeats); prints the fanout process's VmRSS (from
//!   `/proc/<pid>/status`, `--fanout-pid`) before and after (target < 1 GiB).
//!
//! Both seed their own tenant (`--tenant`, default `ws-load`), devices and analyst users with
//! [`crate::seed`] (upserts, so reruns reuse them) and mint access tokens with the fanout's JWT
//! secret. The fanout must be a separate process. Everything runs on one machine; the measured
//! latency includes the tool's own scheduling. The exact commands are in `benches/README.md`.

use crate::seed;
use crate::stats::Latency;
use crate::LoadgenError;
use futures::{SinkExt, StreamExt};
use gps_domain::fix::{now_millis, Fix, Protocol};
use gps_domain::live::{channel_for, LiveBatch, LiveFix};
use gps_runtime::config::RedisArgs;
use gps_runtime::ops::metric_sample;
use gps_store::principal::JwtKeys;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one connection attempt (upgrade, welcome, subscribe, snapshot) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Fix times are `BASE_FIX_TIME + sequence number`: the fix time names the published fix.
const BASE_FIX_TIME: i64 = 1_800_000_000_000;

/// The fanout under load and the fleet to seed for it (shared by both measurements).
#[derive(Debug, Clone)]
pub struct WsTarget {
    /// The fanout's live endpoint (its `/metrics` is on the same host and port).
    pub url: String,
    /// Redis the fanout subscribes to.
    pub redis: RedisArgs,
    /// The fanout's JWT secret, to mint the viewers' access tokens.
    pub jwt_secret: SecretString,
    /// Tenant name to seed (created or reused).
    pub tenant: String,
    /// Devices to seed.
    pub devices: usize,
    /// Analyst users to seed; clients use their tokens round robin.
    pub users: usize,
    /// Connection attempts in flight at once.
    pub connect_concurrency: usize,
    /// The fanout's process id, to read its VmRSS and CPU time from /proc.
    pub fanout_pid: Option<u32>,
}

/// `loadgen ws latency`.
#[derive(Debug, Clone)]
pub struct LatencyConfig {
    /// WebSocket clients.
    pub clients: usize,
    /// Subscribers per device (fan-out factor): each client subscribes to
    /// `devices * fanout / clients` consecutive devices.
    pub fanout: usize,
    /// Fixes per second published.
    pub rate: u64,
    /// Fixes per PUBLISH (one `LiveBatch`).
    pub batch: usize,
    /// Seconds of publishing.
    pub duration: u64,
    /// Seconds to wait for late deliveries after the last PUBLISH.
    pub drain: u64,
}

/// `loadgen ws idle`.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// Connections, each subscribed to one device.
    pub connections: usize,
    /// Seconds to hold them open once all are subscribed (spans server heartbeats).
    pub hold: u64,
}

fn invalid(message: &str) -> LoadgenError {
    LoadgenError::Setup(message.to_owned())
}

// --- seeding --------------------------------------------------------------------------------

/// The seeded tenant: devices (ids and uids, by index) and one access token per user.
struct Seeded {
    tenant: Uuid,
    devices: Vec<(Uuid, String)>,
    tokens: Vec<String>,
}

/// Upsert tenant, devices `<tenant>-<n>` and analyst users, and mint each user an access token.
async fn seed(
    pool: &PgPool,
    target: &WsTarget,
    token_ttl_secs: i64,
) -> Result<Seeded, LoadgenError> {
    let started = Instant::now();
    let fleet = seed::fleet(pool, &target.tenant, &target.tenant, target.devices).await?;
    let tenant = fleet.tenant_id;
    let devices: Vec<(Uuid, String)> = fleet.devices.into_iter().map(|d| (d.id, d.uid)).collect();
    let keys = JwtKeys::new(&target.jwt_secret);
    let mut tokens = Vec::with_capacity(target.users);
    for i in 0..target.users.max(1) {
        let email = format!("{}-{i}@ws-load.example", target.tenant);
        tokens.push(seed::live_viewer_token(pool, &keys, tenant, &email, token_ttl_secs).await?);
    }
    println!(
        "seeded tenant {} ({tenant}): {} devices, {} users in {:.1} s",
        target.tenant,
        devices.len(),
        tokens.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(Seeded {
        tenant,
        devices,
        tokens,
    })
}

// --- clients --------------------------------------------------------------------------------

/// Connect with a bearer token, read `welcome`, subscribe to `devices`, read up to the snapshot.
async fn open_client(url: &str, token: &str, devices: &[Uuid]) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    request.headers_mut().insert("authorization", bearer);
    // Small buffers: 10,000 clients with the 128 KiB defaults would cost the tool 2.5 GB.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| e.to_string())?;
    let welcome = next_json(&mut ws).await?;
    if welcome["type"] != "welcome" {
        return Err(format!("expected welcome, got {welcome}"));
    }
    let subscribe = json!({"type": "subscribe", "id": 1, "devices": devices});
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let message = next_json(&mut ws).await?;
        match message["type"].as_str() {
            Some("snapshot") => return Ok(ws),
            Some("subscribed") => {}
            _ => return Err(format!("subscribe refused: {message}")),
        }
    }
}

async fn next_json(ws: &mut Ws) -> Result<serde_json::Value, String> {
    loop {
        match ws.next().await {
            None => return Err("connection closed".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).map_err(|e| e.to_string())
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed by the server: {frame:?}"))
            }
            Some(Ok(_)) => {}
        }
    }
}

/// The server messages the receive loop looks at (borrowed from the frame, `fix` body skipped).
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    device: Option<Uuid>,
    fix_time: Option<i64>,
    coalesced: Option<u64>,
}

/// What the latency run shares between the publisher and the clients.
struct LatencyShared {
    t0: Instant,
    /// Per published fix (index = fix time - `BASE_FIX_TIME`): nanoseconds after `t0` just
    /// before its PUBLISH, plus one (0 = not published).
    published_at: Vec<AtomicU64>,
    /// Device index by id; the fix with sequence number `s` is of device `s % devices`.
    device_index: HashMap<Uuid, usize>,
    devices: usize,
    /// PUBLISH-to-client latency.
    latency: Mutex<Latency>,
}

impl LatencyShared {
    /// When the fix `fix_time` of `device` was published (ns after `t0`, plus one), if it was.
    fn published_at(&self, device: Uuid, fix_time: i64) -> Option<u64> {
        usize::try_from(fix_time - BASE_FIX_TIME)
            .ok()
            .filter(|&seq| self.device_index.get(&device) == Some(&(seq % self.devices)))
            .and_then(|seq| self.published_at.get(seq))
            .map(|p| p.load(Ordering::Acquire))
            .filter(|&at| at != 0)
    }

    fn lock_latency(&self) -> std::sync::MutexGuard<'_, Latency> {
        self.latency.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One client's tally.
#[derive(Debug, Default)]
struct ClientStats {
    fixes: u64,
    unexpected: u64,
    out_of_order: u64,
    coalesced: u64,
    gaps: u64,
    /// Why the connection ended before the tool stopped it.
    ended: Option<String>,
}

/// Read until `stop`: answer pings (tungstenite does, while reading), time `fix` messages.
async fn receive(
    mut ws: Ws,
    shared: Option<Arc<LatencyShared>>,
    stop: CancellationToken,
) -> ClientStats {
    let mut stats = ClientStats::default();
    let mut last_fix_time: HashMap<Uuid, i64> = HashMap::new();
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            frame = ws.next() => frame,
        };
        let at = Instant::now();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                stats.ended = Some(format!("closed by the server: {frame:?}"));
                return stats;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                stats.ended = Some(e.to_string());
                return stats;
            }
            None => {
                stats.ended = Some("connection closed".into());
                return stats;
            }
        };
        let Ok(message) = serde_json::from_str::<Incoming<'_>>(text.as_str()) else {
            stats.unexpected += 1;
            continue;
        };
        match (message.kind, message.device, message.fix_time) {
            ("fix", Some(device), Some(fix_time)) => {
                stats.fixes += 1;
                let last = last_fix_time.entry(device).or_insert(i64::MIN);
                if fix_time <= *last {
                    stats.out_of_order += 1;
                }
                *last = fix_time;
                let Some(shared) = &shared else {
                    continue;
                };
                let Some(published) = shared.published_at(device, fix_time) else {
                    stats.unexpected += 1;
                    continue;
                };
                let received = at.duration_since(shared.t0).as_nanos() as u64;
                let micros = received.saturating_sub(published - 1) / 1_000;
                shared.lock_latency().record_ms(micros as f64 / 1000.0);
            }
            ("lagged", _, _) => stats.coalesced += message.coalesced.unwrap_or(0),
            ("gap", _, _) => stats.gaps += 1,
            ("pong", _, _) => {}
            _ => stats.unexpected += 1,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    stats
}

/// Open one client per entry of `subscriptions` (at most `concurrency` attempts at once), each
/// then reading until `stop`. Returns one join handle per client (`None`: it never connected)
/// and the failures by client index.
async fn connect_all(
    target: &WsTarget,
    tokens: &[String],
    subscriptions: Vec<Vec<Uuid>>,
    shared: Option<Arc<LatencyShared>>,
    stop: &CancellationToken,
) -> (Vec<JoinHandle<Option<ClientStats>>>, Vec<(usize, String)>) {
    let started = Instant::now();
    let total = subscriptions.len();
    let permits = Arc::new(Semaphore::new(target.connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
    let mut handles = Vec::with_capacity(total);
    for (i, devices) in subscriptions.into_iter().enumerate() {
        let (url, token) = (target.url.clone(), tokens[i % tokens.len()].clone());
        let (permits, ready, shared, stop) = (
            permits.clone(),
            ready_tx.clone(),
            shared.clone(),
            stop.clone(),
        );
        handles.push(tokio::spawn(async move {
            let opened = {
                let _permit = permits.acquire_owned().await;
                tokio::time::timeout(CONNECT_TIMEOUT, open_client(&url, &token, &devices)).await
            };
            match opened {
                Ok(Ok(ws)) => {
                    let _ = ready.send((i, Ok(())));
                    Some(receive(ws, shared, stop).await)
                }
                Ok(Err(e)) => {
                    let _ = ready.send((i, Err(e)));
                    None
                }
                Err(_) => {
                    let _ = ready.send((i, Err("connect timed out".into())));
                    None
                }
            }
        }));
    }
    drop(ready_tx);
    let mut failures = Vec::new();
    let mut done = 0;
    while let Some((i, result)) = ready_rx.recv().await {
        done += 1;
        if let Err(e) = result {
            failures.push((i, e));
        }
        if done % 1000 == 0 || done == total {
            println!(
                "  {done}/{total} connection attempts done ({} failed), {:.1} s",
                failures.len(),
                started.elapsed().as_secs_f64()
            );
        }
        if done == total {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = total - failures.len();
    println!(
        "connected {ok} of {total} clients in {secs:.1} s ({:.0} connections/s, subscribe included)",
        ok as f64 / secs
    );
    for (i, failure) in failures.iter().take(5) {
        println!("  client {i} failed: {failure}");
    }
    (handles, failures)
}

// --- latency --------------------------------------------------------------------------------

/// What the publisher did.
struct Published {
    fixes: usize,
    publishes: u64,
    secs: f64,
    max_behind: Duration,
}

/// Publish `total` fixes at `rate`, `batch` per PUBLISH: batch k carries fixes k*batch.. of
/// devices (seq % devices), at its scheduled time, noting each fix's publish instant.
async fn publish_at_rate(
    redis: &RedisArgs,
    seeded: &Seeded,
    shared: &LatencyShared,
    config: &LatencyConfig,
    total: usize,
) -> Result<Published, LoadgenError> {
    let mut publisher = gps_runtime::redis_client::connect(redis).await?;
    let devices = seeded.devices.len();
    let period = Duration::from_secs_f64(config.batch as f64 / config.rate as f64);
    let channel = channel_for(seeded.tenant);
    let started = Instant::now();
    let (mut published, mut publishes) = (0usize, 0u64);
    let mut max_behind = Duration::ZERO;
    let rx = now_millis();
    while published < total {
        let due = started + period * publishes as u32;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            max_behind = max_behind.max(now - due);
        }
        let n = config.batch.min(total - published);
        let fixes = (published..published + n)
            .map(|seq| {
                let (device, uid) = &seeded.devices[seq % devices];
                let step = (seq / devices) as f64 * 1e-4;
                let mut fix = Fix::new(BASE_FIX_TIME + seq as i64, 48.0 + step, 11.0 + step);
                fix.speed_mps = Some(12.5);
                LiveFix {
                    device: *device,
                    uid: uid.clone(),
                    proto: Protocol::Json,
                    rx,
                    fix,
                }
            })
            .collect();
        let payload = LiveBatch::new(seeded.tenant, fixes).encode();
        let at = shared.t0.elapsed().as_nanos() as u64 + 1;
        for slot in &shared.published_at[published..published + n] {
            slot.store(at, Ordering::Release);
        }
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async::<i64>(&mut publisher)
            .await?;
        published += n;
        publishes += 1;
    }
    Ok(Published {
        fixes: published,
        publishes,
        secs: started.elapsed().as_secs_f64(),
        max_behind,
    })
}

/// The clients' tallies, summed.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    unexpected: u64,
    out_of_order: u64,
    coalesced: u64,
    gaps: u64,
    ended: Vec<String>,
}

impl Tally {
    fn of(stats: Vec<ClientStats>) -> Self {
        let mut tally = Self::default();
        for s in stats {
            tally.received += s.fixes;
            tally.unexpected += s.unexpected;
            tally.out_of_order += s.out_of_order;
            tally.coalesced += s.coalesced;
            tally.gaps += s.gaps;
            tally.ended.extend(s.ended);
        }
        tally
    }
}

/// Clients subscribed to devices while fixes are published at a fixed rate: delivery latency.
pub async fn latency(
    pool: &PgPool,
    target: &WsTarget,
    config: &LatencyConfig,
) -> Result<(), LoadgenError> {
    if config.clients == 0 || config.batch == 0 || config.rate == 0 || target.devices == 0 {
        return Err(invalid(
            "--clients, --batch, --rate and --devices must be at least 1",
        ));
    }
    let seeded = seed(pool, target, (config.duration + 3600) as i64).await?;
    let devices = seeded.devices.len();
    // Client c watches `per_client` consecutive devices from c * per_client (wrapping).
    let per_client = (devices * config.fanout)
        .div_ceil(config.clients)
        .clamp(1, devices);
    let subscriptions: Vec<Vec<usize>> = (0..config.clients)
        .map(|c| {
            (0..per_client)
                .map(|j| (c * per_client + j) % devices)
                .collect()
        })
        .collect();
    let total_fixes = (config.rate * config.duration) as usize;
    let shared = Arc::new(LatencyShared {
        t0: Instant::now(),
        published_at: (0..total_fixes).map(|_| AtomicU64::new(0)).collect(),
        device_index: seeded
            .devices
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, i))
            .collect(),
        devices,
        latency: Mutex::new(Latency::default()),
    });

    println!(
        "latency: {} clients x {per_client} devices ({} subscribers per device), {} fixes/s in \
         batches of {} for {} s, fanout {}",
        config.clients, config.fanout, config.rate, config.batch, config.duration, target.url
    );
    let before = ProcSample::read(target.fanout_pid);
    let metrics_before = FanoutCounters::scrape(&target.url).await;
    let stop = CancellationToken::new();
    let ids = |list: &Vec<usize>| list.iter().map(|&d| seeded.devices[d].0).collect();
    let (handles, failures) = connect_all(
        target,
        &seeded.tokens,
        subscriptions.iter().map(ids).collect(),
        Some(shared.clone()),
        &stop,
    )
    .await;
    if failures.len() == config.clients {
        return Err(LoadgenError::Setup("no client connected".into()));
    }
    let connected = ProcSample::read(target.fanout_pid);
    // Subscribers per device, over the clients that connected: the expected deliveries.
    let mut subscribers = vec![0u64; devices];
    for (c, list) in subscriptions.iter().enumerate() {
        if failures.iter().any(|(f, _)| *f == c) {
            continue;
        }
        for &d in list {
            subscribers[d] += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let cpu_start = ProcSample::read(target.fanout_pid);
    let published = publish_at_rate(&target.redis, &seeded, &shared, config, total_fixes).await?;
    let cpu_end = ProcSample::read(target.fanout_pid);
    tokio::time::sleep(Duration::from_secs(config.drain)).await;
    stop.cancel();
    let mut stats = Vec::with_capacity(handles.len());
    for handle in handles {
        stats.push(handle.await.ok().flatten().unwrap_or_default());
    }
    let after = ProcSample::read(target.fanout_pid);
    let metrics_after = FanoutCounters::scrape(&target.url).await;

    let expected: u64 = (0..published.fixes)
        .map(|seq| subscribers[seq % devices])
        .sum();
    let tally = Tally::of(stats);
    let latency = shared.lock_latency().clone();

    println!();
    println!("| counts | |");
    println!("|---|---:|");
    println!(
        "| clients connected | {} / {} |",
        config.clients - failures.len(),
        config.clients
    );
    println!(
        "| PUBLISH messages | {} ({} fixes each) |",
        published.publishes, config.batch
    );
    println!(
        "| published fixes | {} in {:.1} s = {:.0} fixes/s (max {:.1} ms behind schedule) |",
        published.fixes,
        published.secs,
        published.fixes as f64 / published.secs,
        published.max_behind.as_secs_f64() * 1000.0
    );
    println!("| expected deliveries | {expected} |");
    println!("| received | {} |", tally.received);
    println!("| missing | {} |", expected.saturating_sub(tally.received));
    println!(
        "| unexpected / out of order | {} / {} |",
        tally.unexpected, tally.out_of_order
    );
    println!(
        "| coalesced (lagged) / gaps | {} / {} |",
        tally.coalesced, tally.gaps
    );
    println!("| clients closed by the server | {} |", tally.ended.len());
    for reason in tally.ended.iter().take(3) {
        println!("|   e.g. | {reason} |");
    }
    println!();
    println!("| PUBLISH → client `fix` latency | ms |");
    println!("|---|---:|");
    for (name, q) in [
        ("p50", 0.50),
        ("p90", 0.90),
        ("p95", 0.95),
        ("p99", 0.99),
        ("p99.9", 0.999),
    ] {
        println!("| {name} | {:.2} |", latency.quantile_ms(q));
    }
    println!("| max | {:.2} |", latency.percentiles().max);
    println!("| mean | {:.2} |", latency.mean_ms());
    println!("| samples | {} |", latency.count());
    print_proc(&[
        ("before", &before),
        ("connected", &connected),
        ("end", &after),
    ]);
    if let (Some(a), Some(b)) = (&cpu_start, &cpu_end) {
        println!(
            "fanout CPU while publishing: {:.0} % of one core",
            (b.cpu_secs - a.cpu_secs) / published.secs * 100.0
        );
    }
    if let Some(after) = &metrics_after {
        after.print_deltas(&metrics_before.unwrap_or_default());
    }
    let p99 = latency.quantile_ms(0.99);
    println!(
        "\nverdict: p99 {p99:.1} ms {} 100 ms target; missing {}",
        if p99 < 100.0 { "<" } else { ">=" },
        expected.saturating_sub(tally.received)
    );
    Ok(())
}

// --- idle -----------------------------------------------------------------------------------

/// Many idle subscribed connections: the fanout's resident memory.
pub async fn idle(
    pool: &PgPool,
    target: &WsTarget,
    config: &IdleConfig,
) -> Result<(), LoadgenError> {
    if target.devices == 0 {
        return Err(invalid("--devices must be at least 1"));
    }
    let seeded = seed(pool, target, (config.hold + 3600) as i64).await?;
    println!(
        "idle: {} connections, one device each, held {} s, fanout {}",
        config.connections, config.hold, target.url
    );
    let before = ProcSample::read(target.fanout_pid);
    let subscriptions = (0..config.connections)
        .map(|i| vec![seeded.devices[i % seeded.devices.len()].0])
        .collect();
    let stop = CancellationToken::new();
    let (handles, failures) = connect_all(target, &seeded.tokens, subscriptions, None, &stop).await;
    let connected = ProcSample::read(target.fanout_pid);
    let open = FanoutCounters::scrape(&target.url)
        .await
        .map_or(f64::NAN, |m| m.connections);
    println!(
        "fanout reports {open} open connections; holding {} s",
        config.hold
    );
    tokio::time::sleep(Duration::from_secs(config.hold)).await;
    let held = ProcSample::read(target.fanout_pid);
    stop.cancel();
    let mut ended = 0;
    for handle in handles {
        if matches!(handle.await, Ok(Some(ClientStats { ended: Some(_), .. }))) {
            ended += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = ProcSample::read(target.fanout_pid);
    let ok = config.connections - failures.len();
    println!();
    println!("| connections | |");
    println!("|---|---:|");
    println!("| opened and subscribed | {ok} / {} |", config.connections);
    println!("| closed by the server during the hold | {ended} |");
    print_proc(&[
        ("before", &before),
        ("all connected", &connected),
        ("after hold", &held),
        ("after close", &closed),
    ]);
    if let (Some(b), Some(h)) = (&before, &held) {
        let grown = h.rss_kib.saturating_sub(b.rss_kib);
        println!(
            "per connection: {:.1} KiB; verdict: RSS {:.0} MiB {} 1 GiB target",
            grown as f64 / ok.max(1) as f64,
            h.rss_kib as f64 / 1024.0,
            if h.rss_kib < 1024 * 1024 { "<" } else { ">=" }
        );
    }
    Ok(())
}

// --- the fanout process ---------------------------------------------------------------------

/// The fanout's memory and CPU time, from /proc.
#[derive(Debug, Clone)]
struct ProcSample {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_secs: f64,
}

impl ProcSample {
    fn read(pid: Option<u32>) -> Option<Self> {
        let pid = pid?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Self::parse(&status, &stat)
    }

    /// From the text of `/proc/<pid>/status` and `/proc/<pid>/stat`.
    fn parse(status: &str, stat: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        // Fields after the parenthesized command: state is field 3; utime/stime are 14 and 15,
        // in clock ticks (100 per second on Linux).
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
            cpu_secs: ticks as f64 / 100.0,
        })
    }
}

fn print_proc(samples: &[(&str, &Option<ProcSample>)]) {
    if samples.iter().all(|(_, s)| s.is_none()) {
        println!("(no --fanout-pid: fanout memory not sampled)");
        return;
    }
    println!();
    println!("| fanout process | VmRSS MiB | VmHWM MiB | CPU s |");
    println!("|---|---:|---:|---:|");
    for (name, sample) in samples {
        if let Some(s) = sample {
            println!(
                "| {name} | {:.1} | {:.1} | {:.1} |",
                s.rss_kib as f64 / 1024.0,
                s.hwm_kib as f64 / 1024.0,
                s.cpu_secs
            );
        }
    }
}

/// The reasons of `gps_fanout_fixes_dropped_total` (fanout pre-creates each, so all are exposed).
const DROP_REASONS: [&str; 3] = ["undecodable", "tenant_mismatch", "closing"];

/// The fanout counters the report reads from its `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct FanoutCounters {
    connections: f64,
    live_messages: f64,
    live_fixes: f64,
    coalesced: f64,
    dropped: f64,
    closed_too_slow: f64,
    deliveries: f64,
    delivery_seconds: f64,
}

impl FanoutCounters {
    /// Scrape the fanout's `/metrics` (same host and port as the live URL); `None` when it does
    /// not answer.
    async fn scrape(live_url: &str) -> Option<Self> {
        let base = live_url
            .replacen("ws://", "http://", 1)
            .replacen("wss://", "https://", 1);
        let base = base.split("/v1/").next().unwrap_or(&base).to_owned();
        let response = reqwest::get(format!("{base}/metrics")).await.ok()?;
        Some(Self::parse(&response.text().await.unwrap_or_default()))
    }

    /// Read the counters from Prometheus text; an absent sample reads as 0.
    fn parse(text: &str) -> Self {
        let sample = |name: &str| metric_sample(text, name).unwrap_or(0.0);
        Self {
            connections: sample("gps_fanout_connections"),
            live_messages: sample("gps_fanout_live_messages_total"),
            live_fixes: sample("gps_fanout_live_fixes_total"),
            coalesced: sample("gps_fanout_fixes_coalesced_total"),
            dropped: DROP_REASONS
                .iter()
                .map(|reason| {
                    sample(&format!(
                        "gps_fanout_fixes_dropped_total{{reason=\"{reason}\"}}"
                    ))
                })
                .sum(),
            closed_too_slow: sample("gps_fanout_closes_total{reason=\"too_slow\"}"),
            deliveries: sample("gps_fanout_delivery_seconds_count"),
            delivery_seconds: sample("gps_fanout_delivery_seconds_sum"),
        }
    }

    /// Print what changed since `before`.
    fn print_deltas(&self, before: &Self) {
        println!();
        println!(
            "fanout metrics over the run: live batches {}, fixes {}, coalesced {}, dropped {}, \
             closed too_slow {}",
            self.live_messages - before.live_messages,
            self.live_fixes - before.live_fixes,
            self.coalesced - before.coalesced,
            self.dropped - before.dropped,
            self.closed_too_slow - before.closed_too_slow,
        );
        let count = self.deliveries - before.deliveries;
        if count > 0.0 {
            println!(
                "fanout's own view (Redis receipt → socket write): mean {:.2} ms over {count} deliveries",
                (self.delivery_seconds - before.delivery_seconds) / count * 1000.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_counters_sum_the_drop_reasons_and_read_exact_samples() {
        let text = "# TYPE gps_fanout_connections gauge\n\
                    gps_fanout_connections 3\n\
                    gps_fanout_connections_opened_total 9\n\
                    gps_fanout_fixes_dropped_total{reason=\"undecodable\"} 1\n\
                    gps_fanout_fixes_dropped_total{reason=\"closing\"} 4\n\
                    gps_fanout_closes_total{reason=\"client\"} 7\n\
                    gps_fanout_closes_total{reason=\"too_slow\"} 2\n\
                    gps_fanout_delivery_seconds_sum 0.5\n\
                    gps_fanout_delivery_seconds_count 250\n";
        let counters = FanoutCounters::parse(text);
        assert_eq!(
            counters,
            FanoutCounters {
                connections: 3.0,
                dropped: 5.0,
                closed_too_slow: 2.0,
                deliveries: 250.0,
                delivery_seconds: 0.5,
                ..FanoutCounters::default()
            }
        );
    }

    #[test]
    fn proc_sample_reads_memory_and_cpu_ticks() {
        let status = "Name:\tfanout\nVmHWM:\t  204800 kB\nVmRSS:\t  175104 kB\n";
        // A command with spaces and parentheses; utime 250 and stime 50 ticks.
        let stat = "4242 (fan (out) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0";
        let sample = ProcSample::parse(status, stat).unwrap();
        assert_eq!((sample.rss_kib, sample.hwm_kib), (175_104, 204_800));
        assert!((sample.cpu_secs - 3.0).abs() < 1e-9, "{sample:?}");
        assert!(ProcSample::parse("VmRSS: 1 kB\n", stat).is_none());
    }

    #[test]
    fn only_a_published_fix_of_the_right_device_has_a_publish_time() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let shared = LatencyShared {
            t0: Instant::now(),
            published_at: (0..4).map(|_| AtomicU64::new(0)).collect(),
            device_index: [(a, 0), (b, 1)].into(),
            devices: 2,
            latency: Mutex::new(Latency::default()),
        };
        shared.published_at[2].store(77, Ordering::Release);
        // Sequence 2 is device a's (2 % 2 == 0).
        assert_eq!(shared.published_at(a, BASE_FIX_TIME + 2), Some(77));
        assert_eq!(shared.published_at(b, BASE_FIX_TIME + 2), None);
        // Published slot not yet written, before the first fix, beyond the last one.
        assert_eq!(shared.published_at(a, BASE_FIX_TIME), None);
        assert_eq!(shared.published_at(a, BASE_FIX_TIME - 2), None);
        assert_eq!(shared.published_at(a, BASE_FIX_TIME + 4), None);
    }
}
