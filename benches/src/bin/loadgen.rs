//! `loadgen`: the load generator. `loadgen run` drives a simulated fleet through ingest and
//! reports rates, latency and a loss check (table, JSON, SVG); `loadgen demo` is the gentle
//! endless stream `dev/stack run` starts; `loadgen ceiling-copy` and `loadgen ceiling-produce`
//! measure the raw ceilings the end-to-end rate is compared with; `loadgen drain` measures the
//! processor alone against the COPY ceiling; `loadgen ws latency|idle` loads a running fanout
//! with WebSocket clients; `loadgen drill` runs the pipeline as processes and applies a scripted
//! sequence of faults under load; `loadgen history-scale` times history reads as `positions`
//! grows; `loadgen concurrency` times single-fix requests at fixed numbers in flight;
//! `loadgen overload` offers more than the store keeps up with and charts what is shed;
//! `loadgen events` measures events with many fences (rates, fix-to-event latency).

use anyhow::Context;
use benches::ceiling;
use benches::concurrency;
use benches::demo::{self, CancelFlag, DemoConfig};
use benches::drain;
use benches::drill::{self, DrillConfig, Fault};
use benches::events_load::{self, EventsConfig};
use benches::history_scale;
use benches::overload;
use benches::report;
use benches::run::{self, RunConfig, RunEnv};
use benches::sim::FaultRates;
use benches::wire::Mode;
use benches::ws::{self, IdleConfig, LatencyConfig, WsTarget};
use clap::{Args, Parser, Subcommand};
use gps_runtime::config::{DatabaseArgs, KafkaArgs, LogArgs, RedisArgs, DEV_JWT_SECRET};
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "GPS telemetry load generator, demo stream and raw ceilings"
)]
struct Cli {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive a simulated fleet through ingest and report rates, latency and losses.
    Run(RunArgs),
    /// An endless gentle stream from a few dozen demo devices (for `dev/stack run`).
    Demo(DemoArgs),
    /// Bulk COPY of simulated rows into `positions` of a throwaway database.
    CeilingCopy(CopyArgs),
    /// Produce envelope-sized records to a throwaway topic with ingest's producer settings.
    CeilingProduce(ProduceArgs),
    /// The processor alone: fill a throwaway topic, start the processor on it, time the drain
    /// into `positions`, and compare with the COPY ceiling of the same rows.
    Drain(DrainArgs),
    /// WebSocket load on a running fanout: delivery latency, or idle connections' memory.
    #[command(subcommand)]
    Ws(WsCommand),
    /// Start the services as processes (own broker, Redis, database and topics), drive load and
    /// apply a scripted sequence of faults; one row per fault, non-zero exit unless every row
    /// has zero missing, zero doubled and a recovery within the bound.
    Drill(DrillArgs),
    /// Grow `positions` of a scratch database by COPY (a year, many devices) and time the
    /// history reads through the query-api binary at each size.
    HistoryScale(HistoryScaleArgs),
    /// Single-fix requests at fixed numbers in flight: requests/s and p50/p99 per level.
    Concurrency(ConcurrencyArgs),
    /// Offer more than the store keeps up with (a noisy tenant in steps, quiet tenants steady)
    /// to running services: offered, acknowledged, shed, stored and the lag per second (CSV,
    /// SVG chart, summary).
    Overload(OverloadArgs),
    /// Issue 16's load: N polygon fences in the run's tenant, the fleet driven through them;
    /// fixes/s acknowledged and stored, events/s and fix-to-event latency on the WebSocket,
    /// optionally against the same run without fences.
    Events(EventsArgs),
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// The run of each phase (`loadgen run`'s flags; `--report` gets the events report).
    #[command(flatten)]
    run: RunArgs,
    /// Polygon fences in the tenant.
    #[arg(long, default_value_t = 10_000)]
    fences: usize,
    /// First the same run without fences, then with them, back to back; prints the ratio of
    /// the stored rates.
    #[arg(long)]
    compare_no_fences: bool,
    /// With `--compare-no-fences`: rounds of the two phases, every other one reversed
    /// (2 = without, with, with, without), so drift during the run weighs on both alike.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=10))]
    compare_rounds: u64,
    /// Seconds to keep listening for event frames after the run settled.
    #[arg(long, default_value_t = 1.0)]
    event_drain_secs: f64,
    /// Seconds to wait after creating the fences, before the fleet starts: the processor takes
    /// new fences in within its refresh period (`PROCESSOR_FENCE_REFRESH_MS`, 2 s by default).
    #[arg(long, default_value_t = 3.0)]
    fence_settle_secs: f64,
    /// Seconds back the fleet's clocks start (under the processor's offline timeout, or the
    /// offline timer takes the fleet for offline).
    #[arg(long, default_value_t = events_load::EVENTS_CLOCK_BEHIND.as_secs_f64())]
    clock_behind_secs: f64,
}

#[derive(Debug, Args)]
struct OverloadArgs {
    /// Ingest HTTP base URL (its `/metrics` too).
    #[arg(
        long,
        env = "LOADGEN_INGEST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    ingest_url: String,
    /// The processor's ops base URL (its `/metrics`).
    #[arg(long, default_value = "http://127.0.0.1:8084")]
    processor_url: String,
    /// Offered fixes/s of all tenants together, one step after the other, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "20000,50000,80000,110000,140000,170000,200000"
    )]
    steps: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 15.0)]
    step_secs: f64,
    /// Longest sampling after the load, seconds (ends once the lag is 0).
    #[arg(long, default_value_t = 60.0)]
    tail_secs: f64,
    /// Devices of the noisy tenant.
    #[arg(long, default_value_t = 2_000)]
    noisy_devices: usize,
    /// Fixes per request of the noisy tenant.
    #[arg(long, default_value_t = 100)]
    noisy_batch: usize,
    /// Quiet tenants.
    #[arg(long, default_value_t = 3)]
    quiet_tenants: usize,
    /// Devices of each quiet tenant.
    #[arg(long, default_value_t = 200)]
    quiet_devices: usize,
    /// Fixes/s of each quiet tenant.
    #[arg(long, default_value_t = 1_000.0)]
    quiet_rate: f64,
    /// Fixes per request of the quiet tenants.
    #[arg(long, default_value_t = 10)]
    quiet_batch: usize,
    /// Requests in flight per tenant at most (more counts as not sent).
    #[arg(long, default_value_t = 1_024)]
    max_in_flight: usize,
    /// A device answered 503 + Retry-After waits that long (its fixes counted as held back);
    /// without it every device keeps sending on schedule.
    #[arg(long)]
    honour_retry_after: bool,
    /// CSV of the seconds.
    #[arg(long, default_value = "overload.csv")]
    csv: PathBuf,
    /// SVG chart.
    #[arg(long, default_value = "overload.svg")]
    chart: PathBuf,
    /// The chart's title.
    #[arg(long, default_value = "loadgen overload")]
    title: String,
    /// Print JSON (the summary and every second) instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ConcurrencyArgs {
    /// Ingest HTTP base URL.
    #[arg(
        long,
        env = "LOADGEN_INGEST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    ingest_url: String,
    /// Requests in flight, comma separated, one level after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,32,256,1024")]
    levels: Vec<usize>,
    /// Measured seconds per level (after one second of warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct HistoryScaleArgs {
    /// Table sizes to measure at, rows, comma separated, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    sizes: Vec<u64>,
    /// Devices of the tenant (one probe device, the rest fill the year).
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Timed runs per read and size (after one warm-up).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Rows per COPY statement.
    #[arg(long, default_value_t = 100_000)]
    chunk: usize,
    /// Directory with the query-api binary.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[command(flatten)]
    redis: RedisArgs,
    /// Keep the scratch database (its name is printed) for `EXPLAIN ANALYZE` by hand.
    #[arg(long)]
    keep: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum WsCommand {
    /// Clients subscribed to devices while fixes are published at a fixed rate: latency.
    Latency(WsLatencyArgs),
    /// Many idle subscribed connections: the fanout's resident memory.
    Idle(WsIdleArgs),
}

#[derive(Debug, Args)]
struct WsTargetArgs {
    /// The fanout's live endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8082/v1/live")]
    url: String,
    #[command(flatten)]
    redis: RedisArgs,
    /// The fanout's JWT secret (default: the development secret, `GPS_ALLOW_DEV_SECRETS=true`).
    #[arg(long, env = "JWT_SECRET", default_value = DEV_JWT_SECRET, hide_default_value = true, hide_env_values = true)]
    jwt_secret: SecretString,
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

#[derive(Debug, Args)]
struct WsLatencyArgs {
    #[command(flatten)]
    target: WsTargetArgs,
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

#[derive(Debug, Args)]
struct WsIdleArgs {
    #[command(flatten)]
    target: WsTargetArgs,
    /// Connections, each subscribed to one device.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Seconds to hold them open once all are subscribed (spans server heartbeats).
    #[arg(long, default_value_t = 30)]
    hold: u64,
}

impl From<WsTargetArgs> for WsTarget {
    fn from(args: WsTargetArgs) -> Self {
        Self {
            url: args.url,
            redis: args.redis,
            jwt_secret: args.jwt_secret,
            tenant: args.tenant,
            devices: args.devices,
            users: args.users,
            connect_concurrency: args.connect_concurrency,
            fanout_pid: args.fanout_pid,
        }
    }
}

#[derive(Debug, Args)]
struct DrillArgs {
    /// Directory with the ingest, processor, fanout and query-api binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The tansu broker binary (default: `$TANSU_BIN` or where `dev/stack` builds it).
    #[arg(long)]
    tansu_bin: Option<PathBuf>,
    /// The Redis server binary.
    #[arg(long, default_value = "redis-server")]
    redis_bin: PathBuf,
    /// Faults in order, comma separated (default: the long sequence, plus the kill-one-*
    /// failovers with two or more instances).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<Fault>,
    /// Instances of each service.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Load in fixes per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Simulated devices per ingest instance and fault.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Seconds of load per fault.
    #[arg(long, default_value_t = 30.0)]
    phase_secs: f64,
    /// Seconds into the load when the fault hits.
    #[arg(long, default_value_t = 8.0)]
    fault_at_secs: f64,
    /// Seconds a killed process stays down (or the broker frozen).
    #[arg(long, default_value_t = 5.0)]
    down_secs: f64,
    /// Longest recovery that passes, seconds.
    #[arg(long, default_value_t = 30.0)]
    recovery_bound_secs: f64,
    /// Shell command restarting PostgreSQL, e.g. "pg_ctlcluster 15 main restart" (the
    /// restart-postgres fault is skipped without one: it restarts a server others may use).
    #[arg(long)]
    postgres_restart_cmd: Option<String>,
    /// Extra environment for every service, KEY=VALUE (repeatable).
    #[arg(long = "service-env", value_parser = parse_key_value)]
    service_env: Vec<(String, String)>,
    /// Logs and broker storage (default: a fresh directory under the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the throwaway database.
    #[arg(long)]
    keep: bool,
    /// JSON report path.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[derive(Debug, Args)]
struct DrainArgs {
    /// Fixes in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    fixes: u64,
    /// Fixes per Kafka record (100 = one HTTP batch's envelope).
    #[arg(long, default_value_t = 100)]
    fixes_per_record: usize,
    /// Distinct devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// The processor binary to start.
    #[arg(long, default_value = "target/release/processor")]
    processor_bin: PathBuf,
    /// Extra processor flag (repeatable), e.g. `--processor-arg=--write-mode=unnest`.
    #[arg(long = "processor-arg", allow_hyphen_values = true)]
    processor_args: Vec<String>,
    /// Where the started processor serves its metrics.
    #[arg(long, default_value = "127.0.0.1:18084")]
    metrics_addr: SocketAddr,
    /// Seconds without progress before giving up.
    #[arg(long, default_value_t = 60.0)]
    stall_secs: f64,
    /// Skip the COPY ceiling.
    #[arg(long)]
    no_copy_ceiling: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Protocol to drive.
    #[arg(long, value_enum, default_value_t = Mode::HttpBatch)]
    mode: Mode,
    /// Ingest HTTP base URL.
    #[arg(
        long,
        env = "LOADGEN_INGEST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    ingest_url: String,
    /// Ingest UDP address.
    #[arg(long, env = "LOADGEN_UDP_ADDR", default_value = "127.0.0.1:8081")]
    udp_addr: SocketAddr,
    /// Fanout WebSocket URL.
    #[arg(
        long,
        env = "LOADGEN_FANOUT_URL",
        default_value = "ws://127.0.0.1:8082/v1/live"
    )]
    fanout_url: String,
    /// Simulated devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Target fixes per second; omit to send as fast as acknowledgements allow.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds to send.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Fixes per request (http-batch) or per datagram (udp).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// RNG seed (same seed, same routes and faults).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability per fix of a duplicate resend.
    #[arg(long, default_value_t = 0.005)]
    duplicate_rate: f64,
    /// Probability per fix of a late (out-of-order) fix.
    #[arg(long, default_value_t = 0.005)]
    late_rate: f64,
    /// Probability per fix of a bad fix (Null Island or far future) the processor must refuse.
    #[arg(long, default_value_t = 0.001)]
    bad_rate: f64,
    /// WebSocket subscribers to hold on fanout.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Devices polled for ingest-to-database latency.
    #[arg(long, default_value_t = 32)]
    probe_devices: usize,
    /// Milliseconds between latency polls.
    #[arg(long, default_value_t = 25)]
    poll_ms: u64,
    /// Seconds without database progress before the loss check gives up waiting.
    #[arg(long, default_value_t = 20.0)]
    settle_secs: f64,
    /// Skip reading the quarantine topic.
    #[arg(long)]
    no_quarantine: bool,
    /// Delete the run's tenant, devices and rows afterwards.
    #[arg(long)]
    cleanup: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// JWT secret for the subscribers' token (else a `live:read` API key is minted).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<SecretString>,
    /// JSON report path.
    #[arg(long, default_value = "loadgen-report.json")]
    report: PathBuf,
    /// SVG chart path.
    #[arg(long, default_value = "loadgen-report.svg")]
    chart: PathBuf,
    /// Exit non-zero when the loss check fails.
    #[arg(long)]
    fail_on_loss: bool,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Ingest HTTP base URL.
    #[arg(
        long,
        env = "LOADGEN_INGEST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    ingest_url: String,
    /// Tenant name.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Devices.
    #[arg(long, default_value_t = 36)]
    devices: usize,
    /// Seconds between two fixes of one device.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Latitude of the fleet's centre.
    #[arg(long, default_value_t = 52.52, allow_negative_numbers = true)]
    lat: f64,
    /// Longitude of the fleet's centre.
    #[arg(long, default_value_t = 13.40, allow_negative_numbers = true)]
    lon: f64,
}

#[derive(Debug, Args)]
struct CopyArgs {
    /// Rows to copy.
    #[arg(long, default_value_t = 500_000)]
    rows: u64,
    /// Distinct devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Rows per COPY statement.
    #[arg(long, default_value_t = 50_000)]
    chunk: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    /// Records to produce.
    #[arg(long, default_value_t = 20_000)]
    records: u64,
    /// Fixes per record (100 = one HTTP batch's envelope).
    #[arg(long, default_value_t = 100)]
    fixes_per_record: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Deliveries awaited concurrently.
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gps_runtime::telemetry::init(&cli.log);
    match cli.command {
        Command::Run(args) => run_command(args, cli.database, cli.kafka).await,
        Command::Demo(args) => {
            let pool = connect_with_retry(&cli.database).await?;
            let stop = CancelFlag::default();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            let config = DemoConfig {
                ingest_url: args.ingest_url,
                tenant: args.tenant,
                devices: args.devices.clamp(1, 10_000),
                interval: Duration::from_secs_f64(args.interval.max(0.05)),
                lat: args.lat,
                lon: args.lon,
            };
            let acked = demo::run(config, pool, stop).await?;
            tracing::info!(fixes = acked, "demo stopped");
            Ok(())
        }
        Command::CeilingCopy(args) => {
            let c = ceiling::copy(&cli.database, args.rows, args.devices, args.chunk).await?;
            print_ceiling(&c, args.json);
            Ok(())
        }
        Command::CeilingProduce(args) => {
            let c = ceiling::produce(
                &cli.kafka,
                args.records,
                args.fixes_per_record,
                args.devices,
                args.in_flight,
            )
            .await?;
            print_ceiling(&c, args.json);
            Ok(())
        }
        Command::Drain(args) => {
            let config = drain::DrainConfig {
                fixes: args.fixes.max(1),
                fixes_per_record: args.fixes_per_record.max(1),
                devices: args.devices.max(1),
                processor_bin: args.processor_bin,
                processor_args: args.processor_args,
                metrics_addr: args.metrics_addr,
                stall_timeout: Duration::from_secs_f64(args.stall_secs.max(1.0)),
                with_copy_ceiling: !args.no_copy_ceiling,
            };
            let result = drain::run(config, &cli.database, &cli.kafka).await?;
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                print!("{}", drain::table(&result));
            }
            if result.stored_rows != result.fixes as i64 {
                anyhow::bail!("stored rows differ from the fixes produced");
            }
            Ok(())
        }
        Command::Ws(command) => ws_command(command, &cli.database).await,
        Command::Drill(args) => drill_command(args, cli.database).await,
        Command::Concurrency(args) => {
            let pool = connect_with_retry(&cli.database).await?;
            let config = concurrency::ConcurrencyConfig {
                ingest_url: args.ingest_url,
                levels: args.levels,
                duration: Duration::from_secs_f64(args.duration.max(0.1)),
            };
            let levels = concurrency::run(&pool, &config).await?;
            if args.json {
                println!("{}", serde_json::to_string(&levels)?);
            } else {
                print!("{}", concurrency::table(&levels));
            }
            Ok(())
        }
        Command::Overload(args) => overload_command(args, &cli.database).await,
        Command::Events(args) => events_command(args, cli.database, cli.kafka).await,
        Command::HistoryScale(args) => {
            let mut sizes = args.sizes;
            sizes.sort_unstable();
            let config = history_scale::HistoryScaleConfig {
                database: cli.database,
                redis: args.redis,
                bin_dir: args.bin_dir,
                sizes,
                devices: args.devices.max(2),
                runs: args.runs.max(1),
                chunk: args.chunk.max(1),
                keep: args.keep,
            };
            let result = history_scale::run(&config).await?;
            if args.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                print!("{}", result.table());
                if args.keep {
                    println!("kept database: {}", result.database);
                }
            }
            Ok(())
        }
    }
}

async fn overload_command(args: OverloadArgs, database: &DatabaseArgs) -> anyhow::Result<()> {
    let pool = connect_with_retry(database).await?;
    let config = overload::OverloadConfig {
        ingest_url: args.ingest_url,
        processor_url: args.processor_url,
        steps: args.steps,
        step_duration: Duration::from_secs_f64(args.step_secs.max(1.0)),
        tail: Duration::from_secs_f64(args.tail_secs.max(0.0)),
        noisy_devices: args.noisy_devices.max(1),
        noisy_batch: args.noisy_batch.max(1),
        quiet_tenants: args.quiet_tenants,
        quiet_devices: args.quiet_devices.max(1),
        quiet_rate: args.quiet_rate.max(0.0),
        quiet_batch: args.quiet_batch.max(1),
        max_in_flight: args.max_in_flight.max(1),
        honour_retry_after: args.honour_retry_after,
    };
    let report = overload::run(&pool, &config).await?;
    overload::write_csv(&report.seconds, &args.csv)?;
    overload::write_svg(&report.seconds, &args.title, &args.chart)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", overload::table(&report));
        println!(
            "csv: {}  chart: {}",
            args.csv.display(),
            args.chart.display()
        );
    }
    Ok(())
}

async fn drill_command(args: DrillArgs, database: DatabaseArgs) -> anyhow::Result<()> {
    let mut config = DrillConfig::long(args.bin_dir, database);
    if let Some(bin) = args.tansu_bin {
        config.tansu_bin = bin;
    }
    if let Some(dir) = args.work_dir {
        config.work_dir = dir;
    }
    config.redis_bin = args.redis_bin;
    config.instances = args.instances.max(1);
    if !args.faults.is_empty() {
        config.faults = args.faults;
    } else if config.instances > 1 {
        config.faults.extend(
            drill::FAILOVER_SEQUENCE
                .iter()
                .map(|f| f.parse::<Fault>().expect("known fault")),
        );
    }
    config.rate = args.rate.max(1.0);
    config.devices = args.devices.max(1);
    config.phase = Duration::from_secs_f64(args.phase_secs.max(1.0));
    config.fault_at = Duration::from_secs_f64(args.fault_at_secs.max(0.0));
    config.down_for = Duration::from_secs_f64(args.down_secs.max(0.0));
    config.recovery_bound = Duration::from_secs_f64(args.recovery_bound_secs.max(1.0));
    config.postgres_restart = args.postgres_restart_cmd;
    config.service_env = args.service_env;
    config.keep = args.keep;
    let stop = gps_runtime::shutdown::Shutdown::new();
    stop.listen_for_signals();
    let report = drill::run(config, stop).await?;
    print!("{}", drill::table(&report));
    if let Some(path) = args.report {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !report.passed() {
        anyhow::bail!("the drill failed: see the rows marked FAIL");
    }
    Ok(())
}

async fn ws_command(command: WsCommand, database: &DatabaseArgs) -> anyhow::Result<()> {
    let pool = gps_runtime::db::connect(database)
        .await
        .context("connecting to PostgreSQL (is `dev/stack up` done?)")?;
    let outcome = match command {
        WsCommand::Latency(args) => {
            let config = LatencyConfig {
                clients: args.clients,
                fanout: args.fanout,
                rate: args.rate,
                batch: args.batch,
                duration: args.duration,
                drain: args.drain,
            };
            ws::latency(&pool, &args.target.into(), &config).await
        }
        WsCommand::Idle(args) => {
            let config = IdleConfig {
                connections: args.connections,
                hold: args.hold,
            };
            ws::idle(&pool, &args.target.into(), &config).await
        }
    };
    pool.close().await;
    Ok(outcome?)
}

fn print_ceiling(c: &ceiling::Ceiling, json: bool) {
    if json {
        println!("{}", serde_json::to_string(c).expect("ceiling serializes"));
    } else {
        println!(
            "{}: {} fixes in {:.2} s = {:.0} fixes/s ({} bytes per record)",
            c.what, c.fixes, c.secs, c.fixes_per_sec, c.bytes_per_record
        );
    }
}

/// The database may still be starting (demo under `dev/stack run`): retry politely.
async fn connect_with_retry(db: &DatabaseArgs) -> anyhow::Result<sqlx::PgPool> {
    let mut wait = Duration::from_secs(1);
    for attempt in 0.. {
        match gps_runtime::db::connect(db).await {
            Ok(pool) => return Ok(pool),
            Err(e) if attempt < 10 => {
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "database not reachable yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(15));
            }
            Err(e) => return Err(e).context("connecting to PostgreSQL"),
        }
    }
    unreachable!("the loop returns")
}

async fn events_command(
    args: EventsArgs,
    database: DatabaseArgs,
    kafka: KafkaArgs,
) -> anyhow::Result<()> {
    let pool = gps_runtime::db::connect(&database)
        .await
        .context("connecting to PostgreSQL")?;
    let config = EventsConfig {
        run: run_config(&args.run),
        fences: args.fences,
        compare_no_fences: args.compare_no_fences,
        compare_rounds: usize::try_from(args.compare_rounds).unwrap_or(1),
        event_drain: Duration::from_secs_f64(args.event_drain_secs.clamp(0.0, 60.0)),
        fence_settle: Duration::from_secs_f64(args.fence_settle_secs.clamp(0.0, 3600.0)),
        clock_behind: Duration::from_secs_f64(args.clock_behind_secs.clamp(0.0, 30.0 * 86_400.0)),
    };
    let env = RunEnv {
        pool,
        kafka,
        jwt_secret: args.run.jwt_secret,
    };
    let result = events_load::run(&config, &env).await?;
    print!("{}", events_load::table(&result));
    let path = &args.run.report;
    std::fs::write(path, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(last) = result.phases.last() {
        let title = format!(
            "loadgen events - {} fences, acked {:.0} fixes/s",
            last.fences, last.acked_rate
        );
        report::write_svg(&last.run.timeline, &title, &args.run.chart)?;
    }
    println!(
        "report: {}  chart: {}",
        path.display(),
        args.run.chart.display()
    );
    if args.run.fail_on_loss && result.phases.iter().any(|p| !p.loss_passed) {
        anyhow::bail!("loss check failed");
    }
    Ok(())
}

async fn run_command(
    args: RunArgs,
    database: DatabaseArgs,
    kafka: KafkaArgs,
) -> anyhow::Result<()> {
    let pool = gps_runtime::db::connect(&database)
        .await
        .context("connecting to PostgreSQL")?;
    let config = run_config(&args);
    let env = RunEnv {
        pool,
        kafka,
        jwt_secret: args.jwt_secret,
    };
    let result = run::run(config, env).await?;
    print!("{}", report::table(&result));
    report::write_json(&result, &args.report)?;
    let title = format!(
        "loadgen {} - {} devices, acked {:.0} fixes/s",
        result.config.mode.as_str(),
        result.config.devices,
        result.acked_rate
    );
    report::write_svg(&result.timeline, &title, &args.chart)?;
    println!(
        "report: {}  chart: {}",
        args.report.display(),
        args.chart.display()
    );
    if args.fail_on_loss && !result.loss.passed() {
        anyhow::bail!("loss check failed");
    }
    Ok(())
}

/// The run `args` describe (the one reading of `loadgen run`'s flags, shared with `events`).
fn run_config(args: &RunArgs) -> RunConfig {
    RunConfig {
        mode: args.mode,
        ingest_url: args.ingest_url.clone(),
        udp_addr: args.udp_addr,
        fanout_url: args.fanout_url.clone(),
        devices: args.devices.max(1),
        workers: args.workers.max(1),
        rate: args.rate.filter(|r| *r > 0.0),
        duration: Duration::from_secs_f64(args.duration.max(0.1)),
        batch: args.batch.max(1),
        seed: args.seed,
        faults: FaultRates {
            duplicate: args.duplicate_rate.clamp(0.0, 0.3),
            late: args.late_rate.clamp(0.0, 0.3),
            bad: args.bad_rate.clamp(0.0, 0.3),
        },
        subscribers: args.subscribers,
        probe_devices: args.probe_devices.max(1),
        poll_interval: Duration::from_millis(args.poll_ms.max(5)),
        settle_timeout: Duration::from_secs_f64(args.settle_secs.max(1.0)),
        check_quarantine: !args.no_quarantine,
        progress: !args.quiet,
        cleanup: args.cleanup,
    }
}
