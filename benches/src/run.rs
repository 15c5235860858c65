//! One load-generator run: seed a fleet, drive it through ingest with N workers at a target rate
//! (or as fast as acknowledgements allow), watch the database and the WebSocket for latency,
//! then settle and check that nothing acknowledged was lost.
//!
//! Latency method. *Ingest-to-database*: a sample of "probe" devices is polled every
//! `poll_interval` for the probe fixes not seen yet, looked up by primary key (`unnest(pending
//! keys) JOIN positions`; the probe's connection plans with `enable_seqscan = off`, as a fresh
//! database has no statistics yet). A row seen by a poll was committed before that
//! poll's snapshot and after the previous one, so `poll start - received_at` over-states the
//! latency by at most one poll interval; `received_at` is ingest's receive time (same host
//! clock). The same rows also give send-to-visible latency from the client's send time.
//! *Ingest-to-WebSocket*: each subscriber takes `receipt time - LiveFix.rx`.

use crate::seed::{self, Fleet};
use crate::sim::{self, FaultRates, FixKind, MotionLimits, Traffic, Vehicle};
use crate::stats::{self, Expectations, FixKey, Latency, LossCheck, Percentiles, Second, Timeline};
use crate::wire::{self, Mode};
use crate::LoadgenError;
use gps_domain::fix::{now_millis, EpochMillis};
use gps_domain::reject::RejectRecord;
use gps_domain::Fix;
use gps_runtime::config::KafkaArgs;
use gps_store::principal::JwtKeys;
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// Protocol.
    pub mode: Mode,
    /// Ingest HTTP base URL, e.g. `http://127.0.0.1:8080`.
    pub ingest_url: String,
    /// Ingest UDP address.
    pub udp_addr: SocketAddr,
    /// Fanout WebSocket URL, e.g. `ws://127.0.0.1:8082/v1/live`.
    pub fanout_url: String,
    /// Simulated devices.
    pub devices: usize,
    /// Concurrent senders.
    pub workers: usize,
    /// Target fixes per second over all workers; `None` = as fast as acks allow.
    pub rate: Option<f64>,
    /// How long to send.
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Fixes per request (HTTP batch) or per datagram (UDP).
    pub batch: usize,
    /// RNG seed: the same seed gives the same routes and faults.
    pub seed: u64,
    /// Fault injection rates.
    #[serde(skip)]
    pub faults: FaultRates,
    /// WebSocket subscribers to hold on fanout (0 = none).
    pub subscribers: usize,
    /// Devices polled for ingest-to-database latency.
    pub probe_devices: usize,
    /// How often the latency poller looks.
    #[serde(serialize_with = "secs")]
    pub poll_interval: Duration,
    /// How long to wait, after sending, for the database to stop changing.
    #[serde(serialize_with = "secs")]
    pub settle_timeout: Duration,
    /// Read the quarantine topic for the bad fixes.
    pub check_quarantine: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Delete the run's tenant, devices and rows afterwards.
    pub cleanup: bool,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Where the run's dependencies are.
#[derive(Debug, Clone)]
pub struct RunEnv {
    /// Pool on the database ingest and the processor use.
    pub pool: PgPool,
    /// Kafka settings (the quarantine topic is read from here).
    pub kafka: KafkaArgs,
    /// JWT secret for the subscribers' token; without one an API key is minted.
    pub jwt_secret: Option<SecretString>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The configuration.
    pub config: RunConfig,
    /// Tenant the run used.
    pub tenant_id: Uuid,
    /// When sending started (UTC ms).
    pub started_at: EpochMillis,
    /// Seconds spent sending.
    pub send_secs: f64,
    /// Requests (or datagrams) sent.
    pub requests: u64,
    /// Fixes sent, duplicates and bad ones included.
    pub fixes_sent: u64,
    /// Fixes acknowledged.
    pub fixes_acked: u64,
    /// Fixes sent per second.
    pub offered_rate: f64,
    /// Fixes acknowledged per second.
    pub acked_rate: f64,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Ingest (`received_at`) to visible in `positions`, ms.
    pub ingest_to_db: Percentiles,
    /// Client send time to visible in `positions`, ms.
    pub send_to_db: Percentiles,
    /// Probe fixes never seen by the latency poller within a minute.
    pub db_latency_timeouts: u64,
    /// Ingest (`LiveFix.rx`) to receipt at a WebSocket subscriber, ms.
    pub ingest_to_ws: Percentiles,
    /// Live fixes received over all subscribers.
    pub ws_fixes: u64,
    /// WebSocket subscriber failures (connect or protocol), as text.
    pub ws_errors: Vec<String>,
    /// The loss check.
    pub loss: LossCheck,
    /// Seconds from the end of sending until the database settled.
    pub settle_secs: f64,
    /// Per-second rates and latency.
    pub timeline: Vec<Second>,
    /// How the latencies were measured.
    pub method: &'static str,
}

const METHOD: &str = "ingest-to-db: probe devices polled every poll_interval on the positions \
primary key; latency = poll start - received_at (upper bound, error <= one poll interval). \
ingest-to-ws: receipt time at the subscriber - LiveFix.rx. Same host clock for all.";

#[derive(Default)]
struct State {
    expect: Expectations,
    timeline: Timeline,
    errors: BTreeMap<String, u64>,
    /// Probe fixes sent and not yet seen in the database: key → client send time (ms).
    pending: HashMap<FixKey, EpochMillis>,
    ingest_to_db: Latency,
    send_to_db: Latency,
    db_timeouts: u64,
    ingest_to_ws: Latency,
    ws_errors: Vec<String>,
}

struct Shared {
    start: Instant,
    state: Mutex<State>,
    requests: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    ws_fixes: AtomicU64,
    stop_watchers: AtomicBool,
}

impl Shared {
    fn second(&self) -> u64 {
        self.start.elapsed().as_secs()
    }
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking worker must not hide the other workers' results.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One device in a worker's hands.
struct SimDevice {
    index: u32,
    device: seed::Device,
    traffic: Traffic,
    probe: bool,
    udp_counter: u64,
}

/// Told of every request a worker is about to send: the device, its fixes and the client send
/// time (UTC ms). `loadgen events` keeps the send times to measure fix-to-event latency.
pub type SendHook = Arc<dyn Fn(Uuid, &[(Fix, FixKind)], EpochMillis) + Send + Sync>;

/// How far back the fleet's clocks start by default: two hours, well inside the processor's
/// 30-day window, so a fleet running faster than real time stays in the past.
pub const CLOCK_BEHIND: Duration = Duration::from_secs(2 * 3600);

/// What a caller of [`run_fleet`] may add to a run.
#[derive(Clone)]
pub struct FleetOptions {
    /// Told of every request before it is sent.
    pub on_send: Option<SendHook>,
    /// How far back the fleet's clocks start ([`CLOCK_BEHIND`]).
    pub clock_behind: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            on_send: None,
            clock_behind: CLOCK_BEHIND,
        }
    }
}

/// Run the load and return the report.
pub async fn run(config: RunConfig, env: RunEnv) -> Result<Report, LoadgenError> {
    let fleet = seed_fleet(&config, &env.pool).await?;
    let report = run_fleet(&config, &env, &fleet, FleetOptions::default()).await;
    if config.cleanup {
        cleanup(&env.pool, &fleet).await?;
    }
    report
}

/// Seed the fresh tenant `loadgen-<id>` and the run's devices (as Teltonika units in that mode).
pub async fn seed_fleet(config: &RunConfig, pool: &PgPool) -> Result<Fleet, LoadgenError> {
    let run_id = &Uuid::new_v4().simple().to_string()[..8];
    let mut fleet = seed::fleet(
        pool,
        &format!("loadgen-{run_id}"),
        &format!("lg{run_id}"),
        config.devices,
    )
    .await?;
    if config.mode == Mode::Teltonika {
        seed::as_teltonika(pool, &mut fleet).await?;
    }
    Ok(fleet)
}

/// Drive an already seeded `fleet` (the caller may have added to its tenant, e.g. fences) with
/// `options`; no cleanup.
pub async fn run_fleet(
    config: &RunConfig,
    env: &RunEnv,
    fleet: &Fleet,
    options: FleetOptions,
) -> Result<Report, LoadgenError> {
    let index_of: Arc<HashMap<Uuid, u32>> = Arc::new(
        fleet
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id, i as u32))
            .collect(),
    );
    drive(config, env, fleet, index_of, options).await
}

async fn drive(
    config: &RunConfig,
    env: &RunEnv,
    fleet: &Fleet,
    index_of: Arc<HashMap<Uuid, u32>>,
    options: FleetOptions,
) -> Result<Report, LoadgenError> {
    let mut state = State::default();
    // Sized up front: growing a set of millions of keys mid-run rehashes it all at once, a
    // stall and a burst of CPU in the middle of the measurement.
    let expected_fixes = config.rate.unwrap_or(100_000.0) * config.duration.as_secs_f64();
    state
        .expect
        .acked
        .reserve((expected_fixes as usize).min(50_000_000));
    let shared = Arc::new(Shared {
        start: Instant::now(),
        state: Mutex::new(state),
        requests: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        ws_fixes: AtomicU64::new(0),
        stop_watchers: AtomicBool::new(false),
    });
    let started_at = now_millis();

    // Subscribers first, so they see the first fixes.
    let mut watchers = Vec::new();
    if config.subscribers > 0 {
        let token = match &env.jwt_secret {
            Some(secret) => {
                let keys = JwtKeys::new(secret);
                let email = format!("loadgen-{}@loadgen.invalid", fleet.tenant_id.simple());
                seed::live_viewer_token(&env.pool, &keys, fleet.tenant_id, &email, 3600).await?
            }
            None => seed::live_api_key(&env.pool, fleet.tenant_id, 3600).await?,
        };
        for _ in 0..config.subscribers {
            watchers.push(tokio::spawn(subscriber(
                shared.clone(),
                config.fanout_url.clone(),
                token.clone(),
            )));
        }
    }

    // Probe devices: an even spread of the fleet.
    let probe_every = (config.devices / config.probe_devices.max(1)).max(1);
    let probes: Vec<Uuid> = fleet
        .devices
        .iter()
        .enumerate()
        .filter(|(i, _)| i % probe_every == 0)
        .take(config.probe_devices)
        .map(|(_, d)| d.id)
        .collect();
    let poller = tokio::spawn(poll_database(
        shared.clone(),
        env.pool.clone(),
        probes.clone(),
        index_of.clone(),
        config.poll_interval,
    ));

    // The fleet, dealt out to the workers.
    let planned_rate = config.rate.unwrap_or(40_000.0);
    let mut step = sim::step_for_rate(config.devices, planned_rate);
    if config.mode.second_resolution() {
        step = step.max(1000).div_euclid(1000) * 1000;
    }
    // Clocks start `clock_behind` back ([`CLOCK_BEHIND`]), on a whole second.
    let behind = options.clock_behind.as_millis() as i64;
    let start_clock = (now_millis() - behind).div_euclid(1000) * 1000;
    let probe_set: HashSet<Uuid> = probes.into_iter().collect();
    let workers = config.workers.clamp(1, config.devices.max(1));
    let mut hands: Vec<Vec<SimDevice>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, device) in fleet.devices.iter().enumerate() {
        let vehicle = Vehicle::new(
            config.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
            52.52,
            13.40,
            start_clock,
            MotionLimits::default(),
        );
        hands[i % workers].push(SimDevice {
            index: i as u32,
            device: device.clone(),
            traffic: Traffic::new(vehicle, step, config.faults),
            probe: probe_set.contains(&device.id),
            udp_counter: 0,
        });
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(workers)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| LoadgenError::Setup(e.to_string()))?;
    let deadline = Instant::now() + config.duration;
    let per_worker_rate = config.rate.map(|r| r / workers as f64);
    let progress = config
        .progress
        .then(|| progress_bar(shared.clone(), config.duration));
    let mut tasks = Vec::new();
    let hands_count = hands.len().max(1);
    for (i, devices) in hands.into_iter().enumerate() {
        tasks.push(tokio::spawn(worker(
            shared.clone(),
            config.clone(),
            devices,
            client.clone(),
            deadline,
            Pace {
                rate: per_worker_rate,
                phase: i as f64 / hands_count as f64,
            },
            options.on_send.clone(),
        )));
    }
    for task in tasks {
        task.await.map_err(|e| LoadgenError::Setup(e.to_string()))?;
    }
    let send_secs = shared.start.elapsed().as_secs_f64();
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }

    // Settle: wait for the database to hold what was acknowledged.
    let settle_start = Instant::now();
    let all_ids: Vec<Uuid> = fleet.devices.iter().map(|d| d.id).collect();
    let acked_count = shared.state().expect.acked.len() as i64;
    settle(&env.pool, &all_ids, acked_count, config.settle_timeout).await?;
    let settle_secs = settle_start.elapsed().as_secs_f64();
    // Give the poller and the subscribers a moment to see the last rows and messages.
    tokio::time::sleep(config.poll_interval * 3 + Duration::from_millis(500)).await;
    shared.stop_watchers.store(true, Ordering::SeqCst);
    let _ = poller.await;
    for w in watchers {
        w.abort();
    }

    let stored = stored_keys(&env.pool, &all_ids, &index_of).await?;
    let bad_expected: HashSet<FixKey> = shared.state().expect.bad.clone();
    let quarantined = if config.check_quarantine && !bad_expected.is_empty() {
        Some(
            read_quarantine(
                &env.kafka,
                index_of.clone(),
                bad_expected,
                config.settle_timeout,
            )
            .await?,
        )
    } else if config.check_quarantine {
        Some(HashSet::new())
    } else {
        None
    };
    let state = shared.state();
    let loss = stats::loss_check(&state.expect, &stored, quarantined.as_ref());
    let fixes_sent = shared.sent.load(Ordering::Relaxed);
    let fixes_acked = shared.acked.load(Ordering::Relaxed);
    Ok(Report {
        config: config.clone(),
        tenant_id: fleet.tenant_id,
        started_at,
        send_secs,
        requests: shared.requests.load(Ordering::Relaxed),
        fixes_sent,
        fixes_acked,
        offered_rate: fixes_sent as f64 / send_secs.max(1e-9),
        acked_rate: fixes_acked as f64 / send_secs.max(1e-9),
        errors: state.errors.clone(),
        ingest_to_db: state.ingest_to_db.percentiles(),
        send_to_db: state.send_to_db.percentiles(),
        db_latency_timeouts: state.db_timeouts + state.pending.len() as u64,
        ingest_to_ws: state.ingest_to_ws.percentiles(),
        ws_fixes: shared.ws_fixes.load(Ordering::Relaxed),
        ws_errors: state.ws_errors.clone(),
        loss,
        settle_secs,
        timeline: state.timeline.seconds(),
        method: METHOD,
    })
}

fn progress_bar(
    shared: Arc<Shared>,
    duration: Duration,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new(duration.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:24.cyan/blue} {pos}/{len}s {msg}",
        )
        .expect("valid progress template"),
    );
    let b = bar.clone();
    let ticker = tokio::spawn(async move {
        let mut last = (0u64, 0u64, Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let sent = shared.sent.load(Ordering::Relaxed);
            let acked = shared.acked.load(Ordering::Relaxed);
            let dt = last.2.elapsed().as_secs_f64().max(1e-3);
            let (db, ws) = {
                let s = shared.state();
                (
                    s.ingest_to_db.percentiles().p99,
                    s.ingest_to_ws.percentiles().p99,
                )
            };
            b.set_position(shared.start.elapsed().as_secs());
            b.set_message(format!(
                "sent {:>7.0}/s  acked {:>7.0}/s  errors {}  db p99 {:.0} ms  ws p99 {:.0} ms ({} live)",
                (sent - last.0) as f64 / dt,
                (acked - last.1) as f64 / dt,
                shared.failed.load(Ordering::Relaxed),
                db,
                ws,
                shared.ws_fixes.load(Ordering::Relaxed),
            ));
            last = (sent, acked, Instant::now());
        }
    });
    (bar, ticker)
}

/// Why one request failed, as a short bounded label.
fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

/// A worker's requests per second (`None`: as fast as acknowledgements allow) and where in its
/// interval it starts (0..1): workers spread over the interval, so that a fixed rate arrives
/// as a steady stream, as a fleet's devices do, and not as every worker's request at once.
#[derive(Debug, Clone, Copy)]
struct Pace {
    rate: Option<f64>,
    phase: f64,
}

async fn worker(
    shared: Arc<Shared>,
    config: RunConfig,
    mut devices: Vec<SimDevice>,
    client: reqwest::Client,
    deadline: Instant,
    pace: Pace,
    on_send: Option<SendHook>,
) {
    let rate = pace.rate;
    if devices.is_empty() {
        return;
    }
    let per_request = match config.mode {
        Mode::HttpBatch => config.batch.max(1),
        Mode::Udp => config.batch.clamp(1, wire::UDP_MAX_FIXES),
        Mode::Teltonika => config.batch.clamp(1, wire::TELTONIKA_MAX_RECORDS),
        _ => 1,
    };
    // UDP has no acknowledgement: a datagram the kernel took counts as acknowledged, and the
    // loss check shows what the network or ingest dropped.
    let udp = if matches!(config.mode, Mode::Udp | Mode::Teltonika) {
        match tokio::net::UdpSocket::bind("127.0.0.1:0").await {
            Ok(socket) if socket.connect(config.udp_addr).await.is_ok() => Some(socket),
            _ => {
                *shared
                    .state()
                    .errors
                    .entry("udp_socket".into())
                    .or_insert(0) += 1;
                return;
            }
        }
    } else {
        None
    };
    let mut next_at = tokio::time::Instant::now();
    if let Some(rate) = rate {
        next_at += Duration::from_secs_f64(per_request as f64 / rate * pace.phase);
    }
    let mut turn = 0usize;
    while Instant::now() < deadline {
        if let Some(rate) = rate {
            tokio::time::sleep_until(next_at).await;
            next_at += Duration::from_secs_f64(per_request as f64 / rate);
            // After a stall, do not burst to catch up more than a second's worth.
            let now = tokio::time::Instant::now();
            if now.duration_since(next_at) > Duration::from_secs(1) {
                next_at = now;
            }
        }
        let count = devices.len();
        let dev = &mut devices[turn % count];
        turn += 1;
        let fixes: Vec<(Fix, FixKind)> = (0..per_request).map(|_| dev.traffic.next_fix()).collect();
        let sent_ms = now_millis();
        if let Some(hook) = &on_send {
            hook(dev.device.id, &fixes, sent_ms);
        }
        {
            let mut s = shared.state();
            s.timeline.offered(shared.second(), fixes.len() as u64);
            if dev.probe {
                for (fix, kind) in &fixes {
                    if matches!(kind, FixKind::Good | FixKind::Late) {
                        s.pending.insert((dev.index, fix.fix_time), sent_ms);
                    }
                }
            }
        }
        shared.requests.fetch_add(1, Ordering::Relaxed);
        shared.sent.fetch_add(fixes.len() as u64, Ordering::Relaxed);
        dev.udp_counter += 1;
        let outcome = send(&client, udp.as_ref(), &config, dev, &fixes).await;
        let second = shared.second();
        let wait = {
            let mut s = shared.state();
            match outcome {
                Ok(()) => {
                    shared
                        .acked
                        .fetch_add(fixes.len() as u64, Ordering::Relaxed);
                    s.timeline.acked(second, fixes.len() as u64);
                    for (fix, kind) in &fixes {
                        let key = (dev.index, fix.fix_time);
                        if *kind == FixKind::Bad {
                            s.expect.bad.insert(key);
                        } else {
                            s.expect.unacked.remove(&key);
                            s.expect.acked.insert(key);
                        }
                    }
                    None
                }
                Err((kind, retry_after)) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    *s.errors.entry(kind).or_insert(0) += 1;
                    for (fix, kind) in &fixes {
                        let key = (dev.index, fix.fix_time);
                        s.pending.remove(&key);
                        if *kind != FixKind::Bad && !s.expect.acked.contains(&key) {
                            s.expect.unacked.insert(key);
                        }
                    }
                    retry_after
                }
            }
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

type SendError = (String, Option<Duration>);

async fn send(
    client: &reqwest::Client,
    udp: Option<&tokio::net::UdpSocket>,
    config: &RunConfig,
    dev: &SimDevice,
    fixes: &[(Fix, FixKind)],
) -> Result<(), SendError> {
    let only: Vec<Fix> = fixes.iter().map(|(f, _)| f.clone()).collect();
    let base = config.ingest_url.trim_end_matches('/');
    let request = match config.mode {
        Mode::HttpSingle | Mode::HttpBatch => client
            .post(format!("{base}/v1/fixes"))
            .bearer_auth(&dev.device.token)
            .header("content-type", "application/json")
            .body(wire::json_body(&only)),
        Mode::Osmand => client
            .post(format!(
                "{base}/?{}",
                wire::osmand_query(&dev.device.uid, &only[0])
            ))
            .bearer_auth(&dev.device.token),
        Mode::Owntracks => client
            .post(format!("{base}/owntracks"))
            .basic_auth(&dev.device.uid, Some(&dev.device.token))
            .header("x-limit-u", &dev.device.uid)
            .header("x-limit-d", &dev.device.uid)
            .header("content-type", "application/json")
            .body(wire::owntracks_body(&only[0], "lg")),
        Mode::Udp => {
            let datagram =
                wire::udp_datagram(dev.device.id, dev.udp_counter, &only, &dev.device.udp_key)
                    .map_err(|_| ("udp_unencodable".to_string(), None))?;
            let socket = udp.ok_or_else(|| ("udp_socket".to_string(), None))?;
            return match socket.send(&datagram).await {
                Ok(_) => Ok(()),
                Err(_) => Err(("udp_send".into(), None)),
            };
        }
        Mode::Teltonika => {
            let packet_id = dev.udp_counter as u16;
            let datagram = wire::teltonika_datagram(&dev.device.uid, packet_id, &only)
                .map_err(|_| ("teltonika_unencodable".to_string(), None))?;
            let socket = udp.ok_or_else(|| ("udp_socket".to_string(), None))?;
            socket
                .send(&datagram)
                .await
                .map_err(|_| ("udp_send".to_string(), None))?;
            return teltonika_acknowledged(socket, packet_id, only.len()).await;
        }
    };
    let response = request.send().await.map_err(|e| (error_kind(&e), None))?;
    let status = response.status();
    if status.is_success() {
        // A batch answer may say how many were accepted; anything short of all is a failure
        // of the whole request as far as the loss check is concerned.
        if config.mode == Mode::HttpBatch {
            if let Ok(body) = response.json::<serde_json::Value>().await {
                if let Some(n) = body.get("accepted").and_then(|v| v.as_u64()) {
                    if n != fixes.len() as u64 {
                        return Err(("partial".into(), None));
                    }
                }
            }
        }
        return Ok(());
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 1.0)));
    Err((format!("http_{}", status.as_u16()), retry_after))
}

/// Wait for the acknowledgement of Teltonika datagram `packet_id` (ingest answers only after
/// Kafka took it); an answer to an earlier, timed-out datagram is skipped.
async fn teltonika_acknowledged(
    socket: &tokio::net::UdpSocket,
    packet_id: u16,
    records: usize,
) -> Result<(), SendError> {
    let expected = gps_domain::wire::teltonika::udp_ack(packet_id, packet_id as u8, records as u8);
    let mut ack = [0u8; 16];
    let wait = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(wait);
    loop {
        tokio::select! {
            _ = &mut wait => return Err(("teltonika_no_ack".into(), None)),
            received = socket.recv(&mut ack) => match received {
                Ok(n) if ack[..n] == expected => return Ok(()),
                Ok(_) => continue,
                Err(_) => return Err(("udp_recv".into(), None)),
            },
        }
    }
}

async fn poll_database(
    shared: Arc<Shared>,
    pool: PgPool,
    probes: Vec<Uuid>,
    index_of: Arc<HashMap<Uuid, u32>>,
    interval: Duration,
) {
    // Each poll looks up exactly the pending probe fixes by primary key, on a connection that
    // plans without sequential scans. Polling every probe row since the oldest pending fix
    // (as before) read thousands of rows every 25 ms, by a sequential scan of the day's
    // partition in a fresh database without statistics: ~45 % of the run database's CPU,
    // competing with the writes being measured. Only pending rows were ever used, so the
    // latencies recorded are the same.
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("enable_seqscan", "off")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    let device_of: HashMap<u32, Uuid> = probes
        .iter()
        .filter_map(|d| Some((*index_of.get(d)?, *d)))
        .collect();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shared.stop_watchers.load(Ordering::SeqCst) {
        tick.tick().await;
        let now = now_millis();
        let (devices, times): (Vec<Uuid>, Vec<chrono::DateTime<chrono::Utc>>) = {
            let mut s = shared.state();
            // Give up on a probe fix after a minute, so one lost fix cannot pin the window.
            let before = s.pending.len();
            s.pending.retain(|_, sent| now - *sent < 60_000);
            s.db_timeouts += (before - s.pending.len()) as u64;
            s.pending
                .keys()
                .filter_map(|&(index, t)| {
                    Some((
                        *device_of.get(&index)?,
                        chrono::DateTime::from_timestamp_millis(t)?,
                    ))
                })
                .unzip()
        };
        if devices.is_empty() {
            continue;
        }
        let poll_start = now_millis();
        let rows: Result<Vec<(Uuid, i64, i64)>, _> = sqlx::query_as(
            "SELECT p.device_id,
                    round(extract(epoch FROM p.fix_time) * 1000)::int8,
                    round(extract(epoch FROM p.received_at) * 1000)::int8
             FROM unnest($1::uuid[], $2::timestamptz[]) AS k(device_id, fix_time)
             JOIN positions p ON p.device_id = k.device_id AND p.fix_time = k.fix_time",
        )
        .bind(&devices)
        .bind(&times)
        .fetch_all(&pool)
        .await;
        let Ok(rows) = rows else { continue };
        let second = shared.second();
        let mut s = shared.state();
        for (device, fix_time, received_at) in rows {
            let Some(&index) = index_of.get(&device) else {
                continue;
            };
            if let Some(sent) = s.pending.remove(&(index, fix_time)) {
                let ingest = (poll_start - received_at) as f64;
                s.ingest_to_db.record_ms(ingest);
                s.send_to_db.record_ms((poll_start - sent) as f64);
                s.timeline.db_latency(second, ingest);
            }
        }
    }
}

async fn subscriber(shared: Arc<Shared>, url: String, token: String) {
    if let Err(e) = subscribe_and_listen(&shared, &url, &token).await {
        let mut s = shared.state();
        if s.ws_errors.len() < 20 {
            s.ws_errors.push(e);
        }
    }
}

async fn subscribe_and_listen(shared: &Shared, url: &str, token: &str) -> Result<(), String> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "token is not a header value".to_string())?,
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    // `all`: every device the principal sees, i.e. the run's fresh tenant; a device list would
    // hit fanout's per-connection cap with large fleets.
    let subscribe = serde_json::json!({ "type": "subscribe", "id": "loadgen", "all": true });
    ws.send(Message::text(subscribe.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(message) = ws.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let Message::Text(text) = message else {
            continue;
        };
        let received = now_millis();
        let mut rxs = Vec::new();
        live_message_rx_times(text.as_str(), &mut rxs);
        if rxs.is_empty() {
            continue;
        }
        shared
            .ws_fixes
            .fetch_add(rxs.len() as u64, Ordering::Relaxed);
        let second = shared.second();
        let mut s = shared.state();
        for rx in rxs {
            let ms = (received - rx) as f64;
            s.ingest_to_ws.record_ms(ms);
            s.timeline.ws_latency(second, ms);
        }
    }
    Ok(())
}

/// The two fields of a fanout message the latency probe needs.
#[derive(serde::Deserialize)]
struct LiveHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    rx: Option<EpochMillis>,
}

/// The `rx` of every live fix in one fanout message's text; none for a snapshot (those fixes
/// are old). Nearly every message is one `fix`: just its `type` and `rx` are read (serde skips
/// the rest), so the subscribers do not eat the cores the pipeline is measured on.
pub fn live_message_rx_times(text: &str, out: &mut Vec<EpochMillis>) {
    match serde_json::from_str::<LiveHead<'_>>(text) {
        Ok(LiveHead {
            kind: "fix",
            rx: Some(rx),
        }) => out.push(rx),
        Ok(LiveHead {
            kind: "snapshot", ..
        }) => {}
        _ => {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
                live_rx_times(&value, out);
            }
        }
    }
}

/// The `rx` of every live fix inside a fanout message (a fix object carries `rx` next to a
/// `fix` or `device`), wherever the message nests it.
pub fn live_rx_times(value: &serde_json::Value, out: &mut Vec<EpochMillis>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(rx) = map.get("rx").and_then(|v| v.as_i64()) {
                if map.contains_key("fix") || map.contains_key("device") {
                    out.push(rx);
                    return;
                }
            }
            for v in map.values() {
                live_rx_times(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| live_rx_times(v, out)),
        _ => {}
    }
}

async fn settle(
    pool: &PgPool,
    ids: &[Uuid],
    expected: i64,
    quiet_limit: Duration,
) -> Result<(), LoadgenError> {
    let mut last = -1i64;
    let mut last_change = Instant::now();
    let hard_deadline = Instant::now() + quiet_limit * 6;
    loop {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM positions WHERE device_id = ANY($1)")
                .bind(ids)
                .fetch_one(pool)
                .await?;
        if count != last {
            last = count;
            last_change = Instant::now();
        } else if count >= expected && last_change.elapsed() > Duration::from_millis(500) {
            return Ok(());
        }
        if last_change.elapsed() > quiet_limit || Instant::now() > hard_deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stored_keys(
    pool: &PgPool,
    ids: &[Uuid],
    index_of: &HashMap<Uuid, u32>,
) -> Result<HashMap<FixKey, u64>, LoadgenError> {
    let mut stored = HashMap::new();
    for (device, fix_time) in gps_store::positions::stored_keys(pool, ids).await? {
        if let Some(&index) = index_of.get(&device) {
            *stored.entry((index, fix_time)).or_insert(0) += 1;
        }
    }
    Ok(stored)
}

/// Read the quarantine topic from the beginning until every expected bad fix is found or
/// `timeout` passes; returns the keys of the run's devices found there.
async fn read_quarantine(
    kafka: &KafkaArgs,
    index_of: Arc<HashMap<Uuid, u32>>,
    expected: HashSet<FixKey>,
    timeout: Duration,
) -> Result<HashSet<FixKey>, LoadgenError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let mut config = gps_runtime::kafka::client_config(kafka, "loadgen-quarantine");
    config
        .set("group.id", format!("loadgen-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    let topic = kafka.rejected_topic.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut assignment = TopicPartitionList::new();
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                assignment.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&assignment)?;
        let mut found = HashSet::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !expected.is_subset(&found) {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message?;
            let Some(record) = message.payload().and_then(|p| RejectRecord::decode(p).ok()) else {
                continue;
            };
            if let (Some(device), Some(fix)) = (record.device, record.fix) {
                if let Some(&index) = index_of.get(&device) {
                    found.insert((index, fix.fix_time));
                }
            }
        }
        Ok::<_, LoadgenError>(found)
    })
    .await
    .map_err(|e| LoadgenError::Setup(e.to_string()))?
}

/// Delete the run's positions, latest positions and tenant (devices, users, keys and fences
/// go with it).
pub async fn cleanup(pool: &PgPool, fleet: &Fleet) -> Result<(), LoadgenError> {
    let ids: Vec<Uuid> = fleet.devices.iter().map(|d| d.id).collect();
    sqlx::query("DELETE FROM positions WHERE device_id = ANY($1)")
        .bind(&ids)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM last_positions WHERE device_id = ANY($1)")
        .bind(&ids)
        .execute(pool)
        .await?;
    // Devices, users and API keys go with the tenant (ON DELETE CASCADE).
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(fleet.tenant_id)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_rx_is_found_wherever_fanout_nests_it() {
        let fix = serde_json::json!({"device": Uuid::nil(), "uid": "a", "proto": "json", "rx": 5, "fix": {"t": 1, "lat": 1.0, "lon": 2.0}});
        let mut out = Vec::new();
        live_rx_times(
            &serde_json::json!({"type": "fix", "fix": fix.clone()}),
            &mut out,
        );
        live_rx_times(
            &serde_json::json!({"type": "fix", "fixes": [fix.clone(), fix.clone()]}),
            &mut out,
        );
        live_rx_times(&fix, &mut out);
        live_rx_times(&serde_json::json!({"type": "lagged", "rx": 9}), &mut out);
        assert_eq!(out, vec![5, 5, 5, 5]);
    }

    #[test]
    fn live_messages_yield_their_rx_and_snapshots_none() {
        let mut out = Vec::new();
        // Fanout's own shape: `rx` beside the fix.
        live_message_rx_times(
            r#"{"type":"fix","seq":1,"device":"0b7e","uid":"a","fix_time":1,"proto":"json","rx":7,"fix":{"t":1,"lat":1.0,"lon":2.0,"x":{"rx":3}}}"#,
            &mut out,
        );
        // Nested elsewhere: found by the general walk.
        live_message_rx_times(
            r#"{"type":"fix","fix":{"device":"0b7e","rx":8,"fix":{"t":1}}}"#,
            &mut out,
        );
        live_message_rx_times(
            r#"{"type":"snapshot","positions":[{"device":"0b7e","rx":1,"fix":{}}]}"#,
            &mut out,
        );
        live_message_rx_times(r#"{"type":"pong","id":4}"#, &mut out);
        live_message_rx_times("not json", &mut out);
        assert_eq!(out, vec![7, 8]);
    }
}
