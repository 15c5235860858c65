//! WebSocket load tool for the fanout: measures what `docs/fanout.md` ("Measured") reports.
//!
//! - `ws_load latency`: N clients (default 1,000) each subscribe to a window of devices (default:
//!   every device has `--fanout 1` subscriber), then `LiveBatch` messages are PUBLISHed to Redis
//!   at `--rate` fixes/s (default 10,000) in batches of `--batch` fixes for `--duration` seconds.
//!   The tool records the `Instant` just before each PUBLISH per (device, fix time) and the
//!   `Instant` each client reads the `fix` frame, and prints published / expected / received /
//!   missing counts and the PUBLISH-to-client latency p50/p95/p99/max (target p99 < 100 ms).
//! - `ws_load idle`: N connections (default 10,000), authenticated and subscribed to one device
//!   each, held open (`--hold`, across server heartbeats); prints the fanout process's VmRSS
//!   (from `/proc/<pid>/status`, `--fanout-pid`) before and after (target < 1 GiB).
//!
//! The tool seeds its own tenant (`--tenant`, default `ws-load`), devices and analyst users into
//! `DATABASE_URL` (upserts, so reruns reuse them) and mints access tokens with the fanout's JWT
//! secret (`JWT_SECRET`, default: the development secret the stack runs with). The fanout must
//! be a separate process. Everything runs on one machine; the measured latency includes the
//! tool's own scheduling.
//!
//! ```sh
//! dev/stack up                                   # PostgreSQL + Redis (+ migrations)
//! cargo build --release -p fanout --bin fanout --example ws_load
//!
//! # terminal 1: the fanout, default config, development JWT secret
//! ulimit -n 65536   # or the hard limit (`ulimit -Hn`), at least 10,500 for `idle`
//! GPS_ALLOW_DEV_SECRETS=true ${CARGO_TARGET_DIR:-target}/release/fanout
//!
//! # terminal 2: the load tool
//! ulimit -n 65536
//! FANOUT_PID=$(pgrep -x fanout)
//! ${CARGO_TARGET_DIR:-target}/release/examples/ws_load latency --clients 1000 --rate 10000 --batch 50 \
//!     --duration 30 --fanout-pid $FANOUT_PID
//! ${CARGO_TARGET_DIR:-target}/release/examples/ws_load idle --connections 10000 --hold 30 \
//!     --fanout-pid $FANOUT_PID
//! ```

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use gps_domain::fix::{now_millis, Fix, Protocol};
use gps_domain::live::{channel_for, LiveBatch, LiveFix};
use gps_runtime::access::JwtKeys;
use gps_runtime::config::{DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, DEV_JWT_SECRET};
use hdrhistogram::Histogram;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
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

#[derive(Debug, Parser)]
#[command(
    name = "ws_load",
    about = "Fanout WebSocket load: delivery latency and idle memory"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Clients subscribed to devices while fixes are published at a fixed rate: latency.
    Latency(LatencyArgs),
    /// Many idle subscribed connections: the fanout's resident memory.
    Idle(IdleArgs),
}

#[derive(Debug, Clone, Args)]
struct Common {
    /// The fanout's live endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8082/v1/live")]
    url: String,
    /// PostgreSQL the fanout uses (for seeding).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    database_url: String,
    /// Redis the fanout subscribes to.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    redis_url: String,
    /// The fanout's JWT secret (default: the development secret, `GPS_ALLOW_DEV_SECRETS=true`).
    #[arg(long, env = "JWT_SECRET", default_value = DEV_JWT_SECRET, hide_default_value = true)]
    jwt_secret: String,
    /// Tenant name to seed (created or reused).
    #[arg(long, default_value = "ws-load")]
    tenant: String,
    /// Devices to seed.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Analyst users to seed; clients use their tokens round robin.
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// The fanout's process id, to read its VmRSS and CPU time from /proc.
    #[arg(long)]
    fanout_pid: Option<u32>,
}

#[derive(Debug, Clone, Args)]
struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// WebSocket clients.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Subscribers per device (fan-out factor): each client subscribes to
    /// `devices * fanout / clients` consecutive devices.
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    /// Fixes per second published.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Fixes per PUBLISH (one `LiveBatch`).
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Seconds to wait for late deliveries after the last PUBLISH.
    #[arg(long, default_value_t = 3)]
    drain: u64,
}

#[derive(Debug, Clone, Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections, each subscribed to one device.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Seconds to hold them open once all are subscribed (spans server heartbeats).
    #[arg(long, default_value_t = 30)]
    hold: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.mode {
            Mode::Latency(args) => latency(args).await,
            Mode::Idle(args) => idle(args).await,
        }
    })
}

// --- seeding --------------------------------------------------------------------------------

/// The seeded tenant: devices (ids and uids, by index) and one access token per user.
struct Seeded {
    tenant: Uuid,
    devices: Vec<(Uuid, String)>,
    tokens: Vec<String>,
}

/// Upsert tenant, devices `<tenant>-<n>` and analyst users with the load generator's seeding
/// (`benches::seed`), and mint each user an access token.
async fn seed(common: &Common, token_ttl_secs: i64) -> anyhow::Result<Seeded> {
    let started = Instant::now();
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&common.database_url)
        .await
        .context("connect to DATABASE_URL (is `dev/stack up` done?)")?;
    let fleet = benches::seed::fleet(&pool, &common.tenant, &common.tenant, common.devices)
        .await
        .context("seeding devices")?;
    let tenant = fleet.tenant_id;
    let devices: Vec<(Uuid, String)> = fleet.devices.into_iter().map(|d| (d.id, d.uid)).collect();
    let keys = JwtKeys::new(&SecretString::from(common.jwt_secret.clone()));
    let mut tokens = Vec::with_capacity(common.users);
    for i in 0..common.users.max(1) {
        let email = format!("{}-{i}@ws-load.example", common.tenant);
        tokens.push(
            benches::seed::live_viewer_token(&pool, &keys, tenant, &email, token_ttl_secs)
                .await
                .context("seeding users")?,
        );
    }
    pool.close().await;
    println!(
        "seeded tenant {} ({tenant}): {} devices, {} users in {:.1} s",
        common.tenant,
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
async fn open_client(url: &str, token: &str, devices: &[Uuid]) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    // Small buffers: 10,000 clients with the 128 KiB defaults would cost the tool 2.5 GB.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    let welcome = next_json(&mut ws).await?;
    if welcome["type"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    let subscribe = json!({"type": "subscribe", "id": 1, "devices": devices});
    ws.send(Message::Text(subscribe.to_string().into())).await?;
    loop {
        let message = next_json(&mut ws).await?;
        match message["type"].as_str() {
            Some("snapshot") => return Ok(ws),
            Some("subscribed") => {}
            _ => bail!("subscribe refused: {message}"),
        }
    }
}

async fn next_json(ws: &mut Ws) -> anyhow::Result<serde_json::Value> {
    loop {
        match ws.next().await {
            None => bail!("connection closed"),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(text.as_str())?),
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
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
    /// PUBLISH-to-client latency, microseconds.
    histogram: Mutex<Histogram<u64>>,
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
        let Ok(message) = serde_json::from_str::<Incoming>(text.as_str()) else {
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
                let published = usize::try_from(fix_time - BASE_FIX_TIME)
                    .ok()
                    .filter(|&seq| {
                        shared.device_index.get(&device) == Some(&(seq % shared.devices))
                    })
                    .and_then(|seq| shared.published_at.get(seq))
                    .map(|p| p.load(Ordering::Acquire))
                    .unwrap_or(0);
                if published == 0 {
                    stats.unexpected += 1;
                    continue;
                }
                let received = at.duration_since(shared.t0).as_nanos() as u64;
                let micros = received.saturating_sub(published - 1) / 1_000;
                shared
                    .histogram
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .saturating_record(micros.max(1));
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
    common: &Common,
    tokens: &[String],
    subscriptions: Vec<Vec<Uuid>>,
    shared: Option<Arc<LatencyShared>>,
    stop: &CancellationToken,
) -> (Vec<JoinHandle<Option<ClientStats>>>, Vec<(usize, String)>) {
    let started = Instant::now();
    let total = subscriptions.len();
    let permits = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<(usize, Result<(), String>)>();
    let mut handles = Vec::with_capacity(total);
    for (i, devices) in subscriptions.into_iter().enumerate() {
        let (url, token) = (common.url.clone(), tokens[i % tokens.len()].clone());
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
                    let _ = ready.send((i, Err(format!("{e:#}"))));
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

async fn latency(args: LatencyArgs) -> anyhow::Result<()> {
    let common = &args.common;
    if args.clients == 0 || args.batch == 0 || args.rate == 0 || common.devices == 0 {
        bail!("--clients, --batch, --rate and --devices must be at least 1");
    }
    let seeded = seed(common, (args.duration + 3600) as i64).await?;
    let devices = seeded.devices.len();
    // Client c watches `per_client` consecutive devices from c * per_client (wrapping).
    let per_client = (devices * args.fanout)
        .div_ceil(args.clients)
        .clamp(1, devices);
    let subscriptions: Vec<Vec<usize>> = (0..args.clients)
        .map(|c| {
            (0..per_client)
                .map(|j| (c * per_client + j) % devices)
                .collect()
        })
        .collect();
    let total_fixes = (args.rate * args.duration) as usize;
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
        histogram: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
    });
    let redis = redis::Client::open(common.redis_url.as_str())?;
    let mut publisher = redis.get_multiplexed_async_connection().await?;

    println!(
        "latency: {} clients x {per_client} devices ({} subscribers per device), {} fixes/s in \
         batches of {} for {} s, fanout {}",
        args.clients, args.fanout, args.rate, args.batch, args.duration, common.url
    );
    let before = ProcSample::read(common.fanout_pid);
    let metrics_before = scrape_metrics(&common.url).await;
    let stop = CancellationToken::new();
    let ids = |list: &Vec<usize>| list.iter().map(|&d| seeded.devices[d].0).collect();
    let (handles, failures) = connect_all(
        common,
        &seeded.tokens,
        subscriptions.iter().map(ids).collect(),
        Some(shared.clone()),
        &stop,
    )
    .await;
    if failures.len() == args.clients {
        bail!("no client connected");
    }
    let connected = ProcSample::read(common.fanout_pid);
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

    // Publish: batch k carries fixes k*batch.. of devices (seq % devices), at its scheduled time.
    let period = Duration::from_secs_f64(args.batch as f64 / args.rate as f64);
    let channel = channel_for(seeded.tenant);
    let started = Instant::now();
    let cpu_start = ProcSample::read(common.fanout_pid);
    let mut published = 0usize;
    let mut publishes = 0u64;
    let mut max_behind = Duration::ZERO;
    let rx = now_millis();
    while published < total_fixes {
        let due = started + period * publishes as u32;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            max_behind = max_behind.max(now - due);
        }
        let n = args.batch.min(total_fixes - published);
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
            .await
            .context("PUBLISH")?;
        published += n;
        publishes += 1;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let cpu_end = ProcSample::read(common.fanout_pid);
    tokio::time::sleep(Duration::from_secs(args.drain)).await;
    stop.cancel();
    let mut stats = Vec::with_capacity(handles.len());
    for handle in handles {
        stats.push(handle.await.ok().flatten().unwrap_or_default());
    }
    let after = ProcSample::read(common.fanout_pid);
    let metrics_after = scrape_metrics(&common.url).await;

    let expected: u64 = (0..published).map(|seq| subscribers[seq % devices]).sum();
    let received: u64 = stats.iter().map(|s| s.fixes).sum();
    let unexpected: u64 = stats.iter().map(|s| s.unexpected).sum();
    let out_of_order: u64 = stats.iter().map(|s| s.out_of_order).sum();
    let coalesced: u64 = stats.iter().map(|s| s.coalesced).sum();
    let gaps: u64 = stats.iter().map(|s| s.gaps).sum();
    let ended: Vec<&String> = stats.iter().filter_map(|s| s.ended.as_ref()).collect();
    let histogram = shared
        .histogram
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();

    println!();
    println!("| counts | |");
    println!("|---|---:|");
    println!(
        "| clients connected | {} / {} |",
        args.clients - failures.len(),
        args.clients
    );
    println!(
        "| PUBLISH messages | {publishes} ({} fixes each) |",
        args.batch
    );
    println!(
        "| published fixes | {published} in {publish_secs:.1} s = {:.0} fixes/s (max {:.1} ms behind schedule) |",
        published as f64 / publish_secs,
        ms(max_behind.as_micros() as u64)
    );
    println!("| expected deliveries | {expected} |");
    println!("| received | {received} |");
    println!("| missing | {} |", expected.saturating_sub(received));
    println!("| unexpected / out of order | {unexpected} / {out_of_order} |");
    println!("| coalesced (lagged) / gaps | {coalesced} / {gaps} |");
    println!("| clients closed by the server | {} |", ended.len());
    for reason in ended.iter().take(3) {
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
        println!("| {name} | {:.2} |", ms(histogram.value_at_quantile(q)));
    }
    println!("| max | {:.2} |", ms(histogram.max()));
    println!("| mean | {:.2} |", histogram.mean() / 1000.0);
    println!("| samples | {} |", histogram.len());
    print_proc(&[
        ("before", &before),
        ("connected", &connected),
        ("end", &after),
    ]);
    if let (Some(a), Some(b)) = (&cpu_start, &cpu_end) {
        println!(
            "fanout CPU while publishing: {:.0} % of one core",
            (b.cpu_secs - a.cpu_secs) / publish_secs * 100.0
        );
    }
    print_metric_deltas(&metrics_before, &metrics_after);
    let p99 = ms(histogram.value_at_quantile(0.99));
    println!(
        "\nverdict: p99 {p99:.1} ms {} 100 ms target; missing {}",
        if p99 < 100.0 { "<" } else { ">=" },
        expected.saturating_sub(received)
    );
    Ok(())
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

// --- idle -----------------------------------------------------------------------------------

async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let common = &args.common;
    if common.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let seeded = seed(common, (args.hold + 3600) as i64).await?;
    println!(
        "idle: {} connections, one device each, held {} s, fanout {}",
        args.connections, args.hold, common.url
    );
    let before = ProcSample::read(common.fanout_pid);
    let subscriptions = (0..args.connections)
        .map(|i| vec![seeded.devices[i % seeded.devices.len()].0])
        .collect();
    let stop = CancellationToken::new();
    let (handles, failures) = connect_all(common, &seeded.tokens, subscriptions, None, &stop).await;
    let connected = ProcSample::read(common.fanout_pid);
    let metrics = scrape_metrics(&common.url).await;
    let open = metrics
        .get("gps_fanout_connections")
        .copied()
        .unwrap_or(f64::NAN);
    println!(
        "fanout reports {open} open connections; holding {} s",
        args.hold
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let held = ProcSample::read(common.fanout_pid);
    stop.cancel();
    let mut ended = 0;
    for handle in handles {
        if matches!(handle.await, Ok(Some(ClientStats { ended: Some(_), .. }))) {
            ended += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = ProcSample::read(common.fanout_pid);
    let ok = args.connections - failures.len();
    println!();
    println!("| connections | |");
    println!("|---|---:|");
    println!("| opened and subscribed | {ok} / {} |", args.connections);
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
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
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

/// The fanout's `/metrics` (same host and port as the live URL): sums per metric name.
async fn scrape_metrics(live_url: &str) -> HashMap<String, f64> {
    let base = live_url
        .replacen("ws://", "http://", 1)
        .replacen("wss://", "https://", 1);
    let base = base.split("/v1/").next().unwrap_or(&base).to_owned();
    let Ok(response) = reqwest::get(format!("{base}/metrics")).await else {
        return HashMap::new();
    };
    let text = response.text().await.unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = key.split('{').next().unwrap_or(key);
        *out.entry(name.to_owned()).or_insert(0.0) += value;
        if key.contains("reason=\"too_slow\"") {
            *out.entry(format!("{name}{{too_slow}}")).or_insert(0.0) += value;
        }
    }
    out
}

fn print_metric_deltas(before: &HashMap<String, f64>, after: &HashMap<String, f64>) {
    if after.is_empty() {
        return;
    }
    let delta = |name: &str| after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0);
    println!();
    println!(
        "fanout metrics over the run: live batches {}, fixes {}, coalesced {}, dropped {}, \
         closed too_slow {}",
        delta("gps_fanout_live_messages_total"),
        delta("gps_fanout_live_fixes_total"),
        delta("gps_fanout_fixes_coalesced_total"),
        delta("gps_fanout_fixes_dropped_total"),
        delta("gps_fanout_closes_total{too_slow}"),
    );
    let count = delta("gps_fanout_delivery_seconds_count");
    if count > 0.0 {
        println!(
            "fanout's own view (Redis receipt → socket write): mean {:.2} ms over {count} deliveries",
            delta("gps_fanout_delivery_seconds_sum") / count * 1000.0
        );
    }
}
