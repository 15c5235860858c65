//! `loadgen events` (issue 16's load): N polygon fences in the run's tenant, a fleet driven
//! through them over HTTP batches (the [`crate::run`] machinery), and what the events cost and
//! how fast they arrive: fixes/s acknowledged and stored, events/s (the `events` table), and
//! fix-to-event latency on the WebSocket. With `compare_no_fences` the same run is made first
//! on a tenant without fences and then with N, back to back, and the stored rates are compared
//! (issue 16: at most 10 % lower with 10,000 fences).
//!
//! Latency method. Every fix a worker sends is remembered with its client send time, keyed by
//! (device, fix time). One WebSocket client subscribes to the tenant (`all`) with `events:
//! true`; an `event` frame names its device and the fix time of the fix that raised it, so the
//! latency is the frame's arrival minus that fix's send time (same host clock): ingest, the
//! broker, the processor's batch and commit, Redis and fanout. An event without such a fix
//! (`device_offline`, raised by the timer) has no sample.

use crate::run::{self, FleetOptions, Report, RunConfig, RunEnv};
use crate::sim::FixKind;
use crate::stats::{Latency, Percentiles};
use crate::LoadgenError;
use gps_domain::events::Fence;
use gps_domain::fix::{now_millis, EpochMillis};
use gps_domain::Fix;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// The centre of the simulated fleet ([`crate::run`] starts every vehicle within ±0.09° of
/// latitude and ±0.14° of longitude of it).
const FLEET_CENTRE: (f64, f64) = (52.52, 13.40);
/// Half the height and width of the area the fences cover, degrees: the fleet's square plus a
/// kilometre or so, so that vehicles leaving their start square still meet fences.
const FENCE_HALF_EXTENT: (f64, f64) = (0.10, 0.16);
/// Positions of each fence's ring, the closing one included (as in the criterion bench).
const RING: usize = 16;
/// Every fourth fence carries a speed limit (50 km/h), so overspeed against a fence's limit is
/// part of the load.
const FENCE_SPEED_LIMIT_MPS: f64 = 13.9;
/// Fences per INSERT statement.
const INSERT_CHUNK: usize = 1000;

/// What `loadgen events` runs.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// The run of each phase (HTTP batches; its `cleanup` applies to every phase's tenant).
    pub run: RunConfig,
    /// Fences in the measured phase's tenant.
    pub fences: usize,
    /// Run a phase without fences first, then the one with `fences`, and compare.
    pub compare_no_fences: bool,
    /// Compared runs: rounds of the two phases, every other round in the reverse order
    /// (2 = without, with, with, without), so that whatever drifts during the run (the tables
    /// growing, autovacuum, the machine) weighs on both sides alike.
    pub compare_rounds: usize,
    /// How long to keep listening for event frames after the run settled.
    pub event_drain: Duration,
    /// How long to wait after creating the fences before the fleet starts: the processor
    /// takes new fences in within its refresh period (`PROCESSOR_FENCE_REFRESH_MS`, 2 s).
    pub fence_settle: Duration,
    /// How far back the fleet's clocks start: well under the offline timeout (10 minutes by
    /// default), or the offline timer takes the whole fleet for offline (its last fix is that
    /// old) and the run measures a `device_offline`/`device_online` churn; and within the
    /// processor's future tolerance (10 minutes) of real time for as long as the run lasts.
    pub clock_behind: Duration,
}

/// The clocks' default start for `loadgen events`: two minutes back (a fleet sent as fast as
/// acknowledgements allow runs its clocks ~2.5 times faster than real time).
pub const EVENTS_CLOCK_BEHIND: Duration = Duration::from_secs(120);

/// One phase: a fresh tenant with `fences` fences, driven once.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Fences in the tenant.
    pub fences: usize,
    /// The tenant.
    pub tenant_id: Uuid,
    /// Seconds spent creating the fences.
    pub fence_setup_secs: f64,
    /// Fixes acknowledged per second.
    pub acked_rate: f64,
    /// Fixes stored once per second of sending and settling (`benches/e2e.sh`'s definition).
    pub stored_rate: f64,
    /// The run's loss check passed.
    pub loss_passed: bool,
    /// Events in the `events` table by type, after the run settled.
    pub events_by_type: BTreeMap<String, i64>,
    /// Events stored per second of sending and settling.
    pub events_rate: f64,
    /// `event` frames received on the WebSocket.
    pub event_frames: u64,
    /// Of those, frames whose fix this run never sent (no latency sample).
    pub event_frames_unmatched: u64,
    /// Client send time of the fix to the arrival of its event's frame, ms.
    pub fix_to_event: Percentiles,
    /// Ingest to visible in `positions` (the run's probe devices), ms.
    pub ingest_to_db: Percentiles,
    /// What went wrong on the event subscription, if anything.
    pub ws_error: Option<String>,
    /// The run's own report (loss check, errors, timeline).
    pub run: Report,
}

impl Phase {
    /// Events stored over all types.
    pub fn events(&self) -> i64 {
        self.events_by_type.values().sum()
    }
}

/// What `loadgen events` measured.
#[derive(Debug, Clone, Serialize)]
pub struct EventsReport {
    /// The phases in the order they ran.
    pub phases: Vec<Phase>,
    /// Mean stored rate with the fences over the mean stored rate without (compared runs).
    pub stored_ratio: Option<f64>,
    /// `/proc/loadavg` (1, 5 and 15 minutes) before the first phase.
    pub load_average_before: String,
    /// `/proc/loadavg` when the last phase ended.
    pub load_average: String,
    /// How the latency was measured.
    pub method: &'static str,
}

const METHOD: &str = "fix-to-event: arrival of the WebSocket `event` frame minus the client \
send time of the fix (device, fix time) that raised it; one subscriber with `all` and \
`events: true`; same host clock. stored/s: fixes stored once / (send + settle seconds).";

/// `fixes_stored_once / (send + settle)`, the stored rate `benches/e2e.sh` reports.
pub fn stored_rate(report: &Report) -> f64 {
    report.loss.stored_once as f64 / (report.send_secs + report.settle_secs).max(1e-9)
}

/// Run the phases and return what they measured.
pub async fn run(config: &EventsConfig, env: &RunEnv) -> Result<EventsReport, LoadgenError> {
    let load_average_before = load_average();
    let mut phases = Vec::new();
    let rounds = config.compare_no_fences.then_some(config.compare_rounds);
    for fences in phase_order(config.fences, rounds) {
        phases.push(phase(config, env, fences).await?);
    }
    let stored_ratio = config.compare_no_fences.then(|| {
        let mean = |with_fences: bool| {
            let rates: Vec<f64> = phases
                .iter()
                .filter(|p| (p.fences > 0) == with_fences)
                .map(|p| p.stored_rate)
                .collect();
            rates.iter().sum::<f64>() / rates.len().max(1) as f64
        };
        mean(true) / mean(false).max(1e-9)
    });
    Ok(EventsReport {
        phases,
        stored_ratio,
        load_average_before,
        load_average: load_average(),
        method: METHOD,
    })
}

/// The fences of each phase, in the order they run: `fences` alone, or with `compare_rounds`
/// rounds of without and with, every other round reversed.
pub fn phase_order(fences: usize, compare_rounds: Option<usize>) -> Vec<usize> {
    let Some(rounds) = compare_rounds else {
        return vec![fences];
    };
    (0..rounds.max(1))
        .flat_map(|round| {
            if round % 2 == 0 {
                [0, fences]
            } else {
                [fences, 0]
            }
        })
        .collect()
}

/// The 1, 5 and 15 minute load averages (empty where `/proc` is not there).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The report as a table: one row per phase, then the comparison and the load average.
pub fn table(report: &EventsReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7} {:>9} {:>9} {:>5} {:>8} {:>8} {:>8} {:>31} {:>10}",
        "fences",
        "acked/s",
        "stored/s",
        "loss",
        "events",
        "events/s",
        "frames",
        "fix->event p50/p95/p99/max ms",
        "db p99 ms"
    );
    for p in &report.phases {
        let l = p.fix_to_event;
        let _ = writeln!(
            out,
            "{:>7} {:>9.0} {:>9.0} {:>5} {:>8} {:>8.1} {:>8} {:>31} {:>10.1}",
            p.fences,
            p.acked_rate,
            p.stored_rate,
            if p.loss_passed { "PASS" } else { "FAIL" },
            p.events(),
            p.events_rate,
            p.event_frames,
            format!("{:.1} / {:.1} / {:.1} / {:.1}", l.p50, l.p95, l.p99, l.max),
            p.ingest_to_db.p99,
        );
        let types: Vec<String> = p
            .events_by_type
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        let _ = writeln!(out, "        events by type: {}", types.join(", "));
        if p.event_frames_unmatched > 0 {
            let _ = writeln!(
                out,
                "        {} event frames without a fix of this run (no latency sample)",
                p.event_frames_unmatched
            );
        }
        if let Some(e) = &p.ws_error {
            let _ = writeln!(out, "        event subscription: {e}");
        }
        if !p.run.errors.is_empty() {
            let _ = writeln!(out, "        request errors: {:?}", p.run.errors);
        }
    }
    let with = report.phases.iter().map(|p| p.fences).max().unwrap_or(0);
    if let Some(ratio) = report.stored_ratio {
        let _ = writeln!(
            out,
            "stored rate with {} fences (mean of its phases): {:.1} % of the rate without (a {:.1} % drop; target: at most 10 %)",
            with,
            ratio * 100.0,
            (1.0 - ratio) * 100.0
        );
    }
    let _ = writeln!(
        out,
        "load average: {} before, {} after",
        report.load_average_before, report.load_average
    );
    out
}

async fn phase(config: &EventsConfig, env: &RunEnv, fences: usize) -> Result<Phase, LoadgenError> {
    let fleet = run::seed_fleet(&config.run, &env.pool).await?;
    let setup = std::time::Instant::now();
    insert_fences(
        &env.pool,
        fleet.tenant_id,
        &fence_grid(fences, config.run.seed),
    )
    .await?;
    let fence_setup_secs = setup.elapsed().as_secs_f64();
    tracing::info!(fences, tenant = %fleet.tenant_id, secs = fence_setup_secs, "fences created");
    if fences > 0 {
        tokio::time::sleep(config.fence_settle).await;
    }

    let token = subscriber_token(env, fleet.tenant_id).await?;
    let watch = Arc::new(EventWatch::with_capacity(expected_fixes(&config.run)));
    let ws = open_event_subscription(&config.run.fanout_url, &token).await?;
    let listener = tokio::spawn(listen(ws, watch.clone()));
    let hook_watch = watch.clone();
    let options = FleetOptions {
        on_send: Some(Arc::new(move |device, fixes, sent_ms| {
            hook_watch.sent(device, fixes, sent_ms);
        })),
        clock_behind: config.clock_behind,
    };
    let outcome = run::run_fleet(&config.run, env, &fleet, options).await;
    tokio::time::sleep(config.event_drain).await;
    listener.abort();
    let ws_error = listener
        .await
        .ok()
        .and_then(|r| r.err())
        .or_else(|| watch.error());
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            cleanup(config, &env.pool, &fleet).await;
            return Err(e);
        }
    };
    let events_by_type = events_by_type(&env.pool, fleet.tenant_id).await?;
    cleanup(config, &env.pool, &fleet).await;
    let window = (report.send_secs + report.settle_secs).max(1e-9);
    let events: i64 = events_by_type.values().sum();
    Ok(Phase {
        fences,
        tenant_id: fleet.tenant_id,
        fence_setup_secs,
        acked_rate: report.acked_rate,
        stored_rate: stored_rate(&report),
        loss_passed: report.loss.passed(),
        events_rate: events as f64 / window,
        event_frames: watch.frames.load(Ordering::Relaxed),
        event_frames_unmatched: watch.unmatched.load(Ordering::Relaxed),
        fix_to_event: watch.latency(),
        ingest_to_db: report.ingest_to_db,
        ws_error,
        events_by_type,
        run: report,
    })
}

fn expected_fixes(config: &RunConfig) -> usize {
    let fixes = config.rate.unwrap_or(100_000.0) * config.duration.as_secs_f64();
    (fixes as usize).min(20_000_000)
}

async fn subscriber_token(env: &RunEnv, tenant_id: Uuid) -> Result<String, LoadgenError> {
    Ok(match &env.jwt_secret {
        Some(secret) => {
            let keys = gps_store::principal::JwtKeys::new(secret);
            let email = format!("loadgen-events-{}@loadgen.invalid", tenant_id.simple());
            crate::seed::live_viewer_token(&env.pool, &keys, tenant_id, &email, 3600).await?
        }
        None => crate::seed::live_api_key(&env.pool, tenant_id, 3600).await?,
    })
}

async fn cleanup(config: &EventsConfig, pool: &PgPool, fleet: &crate::seed::Fleet) {
    if !config.run.cleanup {
        return;
    }
    let ids: Vec<Uuid> = fleet.devices.iter().map(|d| d.id).collect();
    let deleted = async {
        sqlx::query("DELETE FROM events WHERE tenant_id = $1")
            .bind(fleet.tenant_id)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM device_event_state WHERE device_id = ANY($1)")
            .bind(&ids)
            .execute(pool)
            .await?;
        run::cleanup(pool, fleet).await
    }
    .await;
    if let Err(e) = deleted {
        tracing::warn!(error = %e, tenant = %fleet.tenant_id, "cleanup failed");
    }
}

// --- fences ---------------------------------------------------------------------------------

/// One fence as inserted: its GeoJSON and its speed limit.
#[derive(Debug, Clone)]
pub struct FenceSpec {
    /// Name (unique in the run).
    pub name: String,
    /// A GeoJSON `Polygon`.
    pub geometry: Value,
    /// Speed limit inside, m/s.
    pub speed_limit_mps: Option<f64>,
}

/// `n` polygon fences on a grid over the fleet's area, one per cell: irregular 15-gons (star
/// shaped around the cell's centre, so never self-intersecting) filling about 70 % of their
/// cell's width, so a vehicle crossing a few cells enters and leaves some. With 10,000 fences a
/// cell is ~220 m and a fence ~150 m across. Deterministic for a `seed`.
pub fn fence_grid(n: usize, seed: u64) -> Vec<FenceSpec> {
    if n == 0 {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00fe_9ce5);
    let rows = (n as f64).sqrt().ceil() as usize;
    let cols = n.div_ceil(rows);
    let (half_lat, half_lon) = FENCE_HALF_EXTENT;
    let (cell_lat, cell_lon) = (2.0 * half_lat / rows as f64, 2.0 * half_lon / cols as f64);
    (0..n)
        .map(|i| {
            let (row, col) = (i / cols, i % cols);
            let lat0 = FLEET_CENTRE.0 - half_lat + (row as f64 + 0.5) * cell_lat;
            let lon0 = FLEET_CENTRE.1 - half_lon + (col as f64 + 0.5) * cell_lon;
            let mut ring: Vec<[f64; 2]> = (0..RING - 1)
                .map(|k| {
                    let a = k as f64 / (RING - 1) as f64 * std::f64::consts::TAU;
                    let r = 0.35 * (0.75 + 0.25 * rng.gen::<f64>());
                    [
                        round7(lon0 + r * cell_lon * a.cos()),
                        round7(lat0 + r * cell_lat * a.sin()),
                    ]
                })
                .collect();
            ring.push(ring[0]);
            FenceSpec {
                name: format!("loadgen fence {i:05}"),
                geometry: json!({ "type": "Polygon", "coordinates": [ring] }),
                speed_limit_mps: (i % 4 == 0).then_some(FENCE_SPEED_LIMIT_MPS),
            }
        })
        .collect()
}

/// Whole 1e-7 degrees (~1 cm), like stored positions: short JSON, exact round trips.
fn round7(x: f64) -> f64 {
    (x * 1e7).round() / 1e7
}

/// Insert `fences` into `tenant_id` directly (the API's row shape: bounding box from the
/// validated shape, no groups so each applies to every device), in chunks.
pub async fn insert_fences(
    pool: &PgPool,
    tenant_id: Uuid,
    fences: &[FenceSpec],
) -> Result<(), LoadgenError> {
    for chunk in fences.chunks(INSERT_CHUNK) {
        let mut names = Vec::with_capacity(chunk.len());
        let mut geometries = Vec::with_capacity(chunk.len());
        let mut boxes: [Vec<f64>; 4] = Default::default();
        let mut limits = Vec::with_capacity(chunk.len());
        for spec in chunk {
            let fence = Fence::new(
                Uuid::nil(),
                &spec.geometry,
                None,
                Vec::new(),
                spec.speed_limit_mps,
                None,
            )
            .map_err(|e| LoadgenError::Setup(format!("fence {}: {e:?}", spec.name)))?;
            let bbox = fence.shape.bbox();
            for (column, value) in boxes.iter_mut().zip([
                bbox.min_lon(),
                bbox.min_lat(),
                bbox.max_lon(),
                bbox.max_lat(),
            ]) {
                column.push(value);
            }
            names.push(spec.name.clone());
            geometries.push(spec.geometry.to_string());
            limits.push(spec.speed_limit_mps);
        }
        sqlx::query(
            "INSERT INTO geofences (tenant_id, name, geometry, bbox_min_lon, bbox_min_lat,
                                    bbox_max_lon, bbox_max_lat, speed_limit_mps)
             SELECT $1, n, g::jsonb, a, b, c, d, l
             FROM UNNEST($2::text[], $3::text[], $4::float8[], $5::float8[], $6::float8[],
                         $7::float8[], $8::float8[]) AS t(n, g, a, b, c, d, l)",
        )
        .bind(tenant_id)
        .bind(&names)
        .bind(&geometries)
        .bind(&boxes[0])
        .bind(&boxes[1])
        .bind(&boxes[2])
        .bind(&boxes[3])
        .bind(&limits)
        .execute(pool)
        .await?;
    }
    Ok(())
}

async fn events_by_type(
    pool: &PgPool,
    tenant_id: Uuid,
) -> Result<BTreeMap<String, i64>, LoadgenError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT type, count(*) FROM events WHERE tenant_id = $1 GROUP BY type")
            .bind(tenant_id)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

// --- the event subscription ----------------------------------------------------------------

/// Send times of the fixes sent and what the event subscriber measured.
#[derive(Debug, Default)]
pub struct EventWatch {
    sent: Mutex<HashMap<(Uuid, EpochMillis), EpochMillis>>,
    latency: Mutex<Latency>,
    /// `event` frames received.
    pub frames: AtomicU64,
    /// Event frames whose fix was never sent by this run (e.g. `device_offline`).
    pub unmatched: AtomicU64,
    error: Mutex<Option<String>>,
}

impl EventWatch {
    /// Room for `fixes` send times up front (growing a map of millions mid-run stalls a worker).
    pub fn with_capacity(fixes: usize) -> Self {
        Self {
            sent: Mutex::new(HashMap::with_capacity(fixes)),
            ..Self::default()
        }
    }

    /// Remember the send time of every fix of one request; a resend keeps the first time (the
    /// event is raised by the first copy to be stored).
    pub fn sent(&self, device: Uuid, fixes: &[(Fix, FixKind)], sent_ms: EpochMillis) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        for (fix, kind) in fixes {
            if *kind != FixKind::Bad {
                sent.entry((device, fix.fix_time)).or_insert(sent_ms);
            }
        }
    }

    /// An `event` frame of `device`'s fix at `fix_time` arrived at `arrived_ms`.
    pub fn arrived(&self, device: Uuid, fix_time: EpochMillis, arrived_ms: EpochMillis) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(device, fix_time))
            .copied();
        match sent {
            Some(sent) => self
                .latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record_ms((arrived_ms - sent) as f64),
            None => {
                self.unmatched.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Fix-to-event percentiles so far.
    pub fn latency(&self) -> Percentiles {
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .percentiles()
    }

    fn fail(&self, reason: String) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The device and fix time of an `event` frame, `None` for any other message.
///
/// The frame (`docs/live.md`): `{"type":"event","device_id":..,"uid":..,"event":{"id":..,
/// "device_id":..,"type":..,"fix_time":..,...}}`. Fields are looked for in the nested event
/// first and on the frame itself second, so a flat frame reads too.
pub fn event_frame_key(text: &str) -> Option<(Uuid, EpochMillis)> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    #[derive(Deserialize)]
    struct Keys {
        #[serde(alias = "device")]
        device_id: Option<Uuid>,
        fix_time: Option<EpochMillis>,
    }
    #[derive(Deserialize)]
    struct Frame {
        #[serde(flatten)]
        outer: Keys,
        event: Option<Keys>,
    }
    // Nearly every frame is a fix: read its type alone and skip the rest.
    if serde_json::from_str::<Head<'_>>(text).ok()?.kind != "event" {
        return None;
    }
    let frame: Frame = serde_json::from_str(text).ok()?;
    let inner = frame.event.unwrap_or(Keys {
        device_id: None,
        fix_time: None,
    });
    Some((
        inner.device_id.or(frame.outer.device_id)?,
        inner.fix_time.or(frame.outer.fix_time)?,
    ))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The subscribe message: every device of the tenant, fixes and every event type.
pub fn subscribe_message() -> Value {
    json!({"type": "subscribe", "id": "loadgen-events", "all": true, "events": true})
}

/// Connect with a bearer token and subscribe with events; returns once fanout confirmed the
/// subscription (`subscribed`), so the run's first events (each device's `device_online`)
/// cannot be missed.
async fn open_event_subscription(url: &str, token: &str) -> Result<Ws, LoadgenError> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let failed = |what: String| LoadgenError::Setup(format!("event subscription: {what}"));
    let mut request = url
        .into_client_request()
        .map_err(|e| failed(e.to_string()))?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| failed("token is not a header value".into()))?,
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| failed(format!("connect {url}: {e}")))?;
    ws.send(Message::text(subscribe_message().to_string()))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            let Message::Text(text) = message.map_err(|e| failed(e.to_string()))? else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            match value["type"].as_str() {
                Some("subscribed") => return Ok(()),
                Some("error") => {
                    return Err(failed(format!(
                        "fanout refused it (does it serve events?): {value}"
                    )))
                }
                _ => {}
            }
        }
        Err(failed("closed before `subscribed`".into()))
    })
    .await
    .map_err(|_| failed("no `subscribed` within 10 s".into()))?;
    answered.map(|()| ws)
}

async fn listen(mut ws: Ws, watch: Arc<EventWatch>) -> Result<(), String> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    while let Some(message) = ws.next().await {
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(frame)) => {
                let reason = format!("closed by fanout: {frame:?}");
                watch.fail(reason.clone());
                return Err(reason);
            }
            Ok(_) => continue,
            Err(e) => {
                watch.fail(e.to_string());
                return Err(e.to_string());
            }
        };
        if let Some((device, fix_time)) = event_frame_key(text.as_str()) {
            watch.arrived(device, fix_time, now_millis());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{MotionLimits, Vehicle};
    use gps_domain::events::{DeviceEventState, DeviceProfile, EventRules, EventType, FenceIndex};

    fn fences(n: usize) -> Vec<Fence> {
        fence_grid(n, 1)
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                Fence::new(
                    Uuid::from_u128(i as u128 + 1),
                    &spec.geometry,
                    None,
                    Vec::new(),
                    spec.speed_limit_mps,
                    None,
                )
                .unwrap_or_else(|e| panic!("{} is refused: {e:?}", spec.name))
            })
            .collect()
    }

    #[test]
    fn compared_rounds_alternate_their_order() {
        assert_eq!(phase_order(500, None), vec![500]);
        assert_eq!(phase_order(500, Some(1)), vec![0, 500]);
        assert_eq!(phase_order(500, Some(2)), vec![0, 500, 500, 0]);
        assert_eq!(phase_order(500, Some(3)), vec![0, 500, 500, 0, 0, 500]);
    }

    #[test]
    fn the_grid_has_n_valid_fences_over_the_fleet_area() {
        for n in [1, 7, 100, 10_000] {
            let specs = fence_grid(n, 1);
            assert_eq!(specs.len(), n);
            let names: std::collections::HashSet<_> = specs.iter().map(|s| &s.name).collect();
            assert_eq!(names.len(), n, "names are unique");
            for fence in fences(n) {
                let bbox = fence.shape.bbox();
                assert!((bbox.min_lat() - FLEET_CENTRE.0).abs() <= FENCE_HALF_EXTENT.0);
                assert!((bbox.max_lat() - FLEET_CENTRE.0).abs() <= FENCE_HALF_EXTENT.0);
                assert!((bbox.min_lon() - FLEET_CENTRE.1).abs() <= FENCE_HALF_EXTENT.1);
                assert!((bbox.max_lon() - FLEET_CENTRE.1).abs() <= FENCE_HALF_EXTENT.1);
            }
        }
        assert!(fence_grid(0, 1).is_empty());
        assert_eq!(
            fence_grid(50, 3)[7].geometry,
            fence_grid(50, 3)[7].geometry,
            "deterministic for a seed"
        );
    }

    #[test]
    fn the_fleets_tracks_enter_and_leave_fences() {
        // The run's fleet at 10,000 fixes/s over 1,000 devices: a fix every 100 ms of
        // simulated time, 30 s of it (as `run` seeds its vehicles).
        let index = FenceIndex::new(fences(10_000));
        let rules = EventRules::default();
        let profile = DeviceProfile {
            groups: &[],
            speed_limit_mps: None,
        };
        let (mut entered, mut enters, mut exits) = (0, 0, 0);
        let vehicles = 200;
        for i in 0..vehicles {
            let seed = 1u64.wrapping_mul(1_000_003).wrapping_add(i as u64);
            let mut vehicle = Vehicle::new(
                seed,
                FLEET_CENTRE.0,
                FLEET_CENTRE.1,
                1_700_000_000_000,
                MotionLimits::default(),
            );
            let mut state = DeviceEventState::new(Uuid::nil(), Uuid::from_u128(i + 1));
            let mut any = false;
            for _ in 0..300 {
                for event in state.apply(&vehicle.step(100), &index, &profile, &rules) {
                    match event.event_type {
                        EventType::GeofenceEnter => {
                            enters += 1;
                            any = true;
                        }
                        EventType::GeofenceExit => exits += 1,
                        _ => {}
                    }
                }
            }
            entered += usize::from(any);
        }
        assert!(
            entered * 2 >= vehicles as usize,
            "only {entered} of {vehicles} vehicles entered a fence ({enters} enters, {exits} exits)"
        );
        assert!(exits > 0, "vehicles leave fences too");
    }

    #[test]
    fn event_frames_give_their_device_and_fix_time_and_other_frames_none() {
        let device = Uuid::from_u128(7);
        // fanout's frame (docs/live.md): the event nested, its own `type` inside.
        let nested = json!({"type": "event", "device_id": device, "uid": "lg-00001",
            "event": {"id": Uuid::from_u128(9), "device_id": device, "type": "geofence_enter",
                      "fix_time": 1_700_000_000_100i64, "lat": 52.5, "lon": 13.4,
                      "geofence_id": Uuid::from_u128(3), "details": {}}});
        assert_eq!(
            event_frame_key(&nested.to_string()),
            Some((device, 1_700_000_000_100))
        );
        let flat =
            json!({"type": "event", "device": device, "fix_time": 5, "event_type": "overspeed"});
        assert_eq!(event_frame_key(&flat.to_string()), Some((device, 5)));
        let fix = json!({"type": "fix", "seq": 1, "device": device, "fix_time": 5, "rx": 4});
        assert_eq!(event_frame_key(&fix.to_string()), None);
        assert_eq!(event_frame_key(r#"{"type":"event","event":{}}"#), None);
        assert_eq!(event_frame_key("not json"), None);
    }

    #[test]
    fn latency_is_from_the_first_send_of_the_fix_that_raised_the_event() {
        let watch = EventWatch::with_capacity(4);
        let device = Uuid::from_u128(1);
        let fix = |t| Fix::new(t, 52.5, 13.4);
        watch.sent(
            device,
            &[(fix(1000), FixKind::Good), (fix(2000), FixKind::Bad)],
            10_000,
        );
        // A resend later: the first send time stays.
        watch.sent(device, &[(fix(1000), FixKind::Duplicate)], 10_500);
        watch.arrived(device, 1000, 10_120);
        // The bad fix is never expected to raise anything; another device's fix is not ours.
        watch.arrived(device, 2000, 10_130);
        watch.arrived(Uuid::from_u128(2), 1000, 10_130);
        let latency = watch.latency();
        assert_eq!(latency.count, 1);
        assert!((latency.p50 - 120.0).abs() < 0.5, "{latency:?}");
        assert_eq!(watch.frames.load(Ordering::Relaxed), 3);
        assert_eq!(watch.unmatched.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn fanout_accepts_the_subscription_with_events() {
        let parsed = fanout::protocol::parse_client(&subscribe_message().to_string());
        assert!(
            matches!(
                parsed,
                Ok(fanout::protocol::ClientMessage::Subscribe { .. })
            ),
            "{parsed:?}"
        );
    }
}
