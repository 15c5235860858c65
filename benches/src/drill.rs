//! The fault drill (`loadgen drill`): the pipeline as real processes (ingest, processor, fanout and
//! query-api binaries, a tansu broker and a Redis of its own, a throwaway database and topics), a
//! steady load through ingest ([`crate::run`]), and a scripted sequence of faults: SIGKILL and
//! restart of each service and each dependency, a frozen broker (SIGSTOP/SIGCONT), a PostgreSQL
//! restart, a processor killed between its database commit and its offset commit, and, with two
//! instances of each service, one instance killed for good. One row per fault: fixes sent,
//! acknowledged, stored, duplicated, missing, quarantined, seconds until caught up, live gaps.
//!
//! "Caught up" is measured end to end, independent of how the processor keeps its offsets: a
//! heartbeat fleet (its own tenant) sends one fix per device every `heartbeat_interval` through
//! ingest, and the pipeline is caught up at time T when, for every heartbeat device, the newest
//! fix acknowledged before T - 0.5 s was acknowledged after the fault was lifted and is in
//! `positions` (per-device order within a partition means everything before it was consumed
//! too), every running service answers `/readyz` 200, and a WebSocket watcher on every running
//! fanout has received a heartbeat fix since the fault was lifted and in the last 2 s.
//! Recovery is timed from the moment the fault was lifted (the process restarted or resumed; for
//! an instance killed for good, from the kill). The loss columns come from the database: each
//! fault's load is a fresh fleet, and [`crate::stats::loss_check`] compares its `positions` rows
//! per (device, fix time) with what ingest acknowledged.

use crate::run::{self, RunConfig, RunEnv};
use crate::seed::{self, Fleet};
use crate::sim::FaultRates;
use crate::stats::LossCheck;
use crate::wire::{self, Mode};
use crate::LoadgenError;
use gps_domain::fix::now_millis;
use gps_domain::Fix;
use gps_runtime::config::{DatabaseArgs, KafkaArgs};
use gps_runtime::ops::metric_sample;
use gps_runtime::shutdown::Shutdown;
use gps_store::principal::JwtKeys;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The long sequence (`loadgen drill` without `--faults`), in order.
pub const FULL_SEQUENCE: &[&str] = &[
    "baseline",
    "kill-processor",
    "kill-ingest",
    "kill-fanout",
    "kill-query-api",
    "kill-broker",
    "pause-broker",
    "kill-redis",
    "restart-postgres",
    "kill-processor-mid-commit",
    "kill-processor",
];

/// With two instances of each service, the failovers added to the long sequence.
pub const FAILOVER_SEQUENCE: &[&str] =
    &["kill-one-ingest", "kill-one-processor", "kill-one-fanout"];

/// A service of the pipeline, started from its binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Devices in.
    Ingest,
    /// The log into projections.
    Processor,
    /// Live WebSocket.
    Fanout,
    /// The read API.
    QueryApi,
}

impl Role {
    /// Every role, in start order (the processor first, so it joins before load arrives).
    pub const ALL: [Role; 4] = [Role::Processor, Role::Ingest, Role::Fanout, Role::QueryApi];

    /// The binary's (and the fault names') name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Processor => "processor",
            Role::Fanout => "fanout",
            Role::QueryApi => "query-api",
        }
    }

    /// The env var of its HTTP listen address.
    fn addr_env(self) -> &'static str {
        match self {
            Role::Ingest => "INGEST_HTTP_ADDR",
            Role::Processor => "PROCESSOR_ADDR",
            Role::Fanout => "FANOUT_ADDR",
            Role::QueryApi => "QUERY_API_ADDR",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown service {s:?} (ingest, processor, fanout, query-api)"))
    }
}

/// One scripted fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault: the reference row.
    Baseline,
    /// SIGKILL the first instance of a service, restart it after the down time.
    Kill(Role),
    /// SIGKILL the last instance of a service (needs two) and leave it down for the phase: the
    /// others must take over.
    KillOne(Role),
    /// SIGKILL the first processor right after its stored-fix counter moved, i.e. between the
    /// database commit of a batch and the commit of its offsets; restart after the down time.
    ProcessorMidCommit,
    /// SIGKILL the broker, restart it on the same storage after the down time.
    KillBroker,
    /// SIGSTOP the broker for the down time, then SIGCONT.
    PauseBroker,
    /// SIGKILL Redis, restart it after the down time.
    KillRedis,
    /// Run the PostgreSQL restart command.
    RestartPostgres,
}

impl Fault {
    /// The name used on the command line and in the table.
    pub fn name(self) -> String {
        match self {
            Fault::Baseline => "baseline".into(),
            Fault::Kill(role) => format!("kill-{}", role.as_str()),
            Fault::KillOne(role) => format!("kill-one-{}", role.as_str()),
            Fault::ProcessorMidCommit => "kill-processor-mid-commit".into(),
            Fault::KillBroker => "kill-broker".into(),
            Fault::PauseBroker => "pause-broker".into(),
            Fault::KillRedis => "kill-redis".into(),
            Fault::RestartPostgres => "restart-postgres".into(),
        }
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "baseline" => Fault::Baseline,
            "kill-processor-mid-commit" => Fault::ProcessorMidCommit,
            "kill-broker" => Fault::KillBroker,
            "pause-broker" => Fault::PauseBroker,
            "kill-redis" => Fault::KillRedis,
            "restart-postgres" => Fault::RestartPostgres,
            _ => {
                if let Some(role) = s.strip_prefix("kill-one-") {
                    Fault::KillOne(role.parse()?)
                } else if let Some(role) = s.strip_prefix("kill-") {
                    Fault::Kill(role.parse()?)
                } else {
                    return Err(format!(
                        "unknown fault {s:?}; known: {}, {}",
                        FULL_SEQUENCE.join(", "),
                        FAILOVER_SEQUENCE.join(", ")
                    ));
                }
            }
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    /// Directory holding the `ingest`, `processor`, `fanout` and `query-api` binaries.
    pub bin_dir: PathBuf,
    /// The tansu broker binary (started on a free port with its own sqlite file).
    pub tansu_bin: PathBuf,
    /// `redis-server` (started on a free port, nothing persisted).
    pub redis_bin: PathBuf,
    /// The PostgreSQL server (any database on it): a throwaway `gps_drill_*` database is created.
    pub database: DatabaseArgs,
    /// Logs and the broker's storage go here.
    pub work_dir: PathBuf,
    /// Instances of each service.
    pub instances: usize,
    /// Load in fixes per second (split over the ingest instances).
    pub rate: f64,
    /// Simulated devices of each fault's load (per ingest instance).
    pub devices: usize,
    /// Fixes per request.
    pub batch: usize,
    /// How long each fault's load runs.
    pub phase: Duration,
    /// When in the phase the fault hits.
    pub fault_at: Duration,
    /// How long a killed dependency or service stays down (or the broker frozen).
    pub down_for: Duration,
    /// The longest recovery that passes.
    pub recovery_bound: Duration,
    /// How long the loss check waits for the database to stop changing after the load.
    pub settle: Duration,
    /// The faults, in order.
    pub faults: Vec<Fault>,
    /// Shell command that restarts the PostgreSQL server (`restart-postgres` is skipped without
    /// one), e.g. `pg_ctlcluster 15 main restart`.
    pub postgres_restart: Option<String>,
    /// Heartbeat devices (the caught-up probe).
    pub heartbeat_devices: usize,
    /// Seconds between two heartbeat fixes of one device.
    pub heartbeat_interval: Duration,
    /// Extra environment for every service (e.g. `PROCESSOR_BATCH_MAX_FIXES=2000`).
    pub service_env: Vec<(String, String)>,
    /// Keep the throwaway database afterwards.
    pub keep: bool,
}

impl DrillConfig {
    /// The defaults of the long drill, with binaries in `bin_dir`.
    pub fn long(bin_dir: PathBuf, database: DatabaseArgs) -> Self {
        Self {
            tansu_bin: default_tansu_bin(),
            redis_bin: PathBuf::from("redis-server"),
            work_dir: std::env::temp_dir().join(format!("gps-drill-{}", short_id())),
            instances: 1,
            rate: 2000.0,
            devices: 200,
            batch: 10,
            phase: Duration::from_secs(30),
            fault_at: Duration::from_secs(8),
            down_for: Duration::from_secs(5),
            recovery_bound: Duration::from_secs(30),
            settle: Duration::from_secs(20),
            faults: FULL_SEQUENCE
                .iter()
                .map(|f| f.parse().expect("known fault"))
                .collect(),
            postgres_restart: None,
            heartbeat_devices: 32,
            heartbeat_interval: Duration::from_millis(250),
            service_env: Vec::new(),
            keep: false,
            bin_dir,
            database,
        }
    }
}

/// Where `dev/stack` builds tansu (`$TANSU_BIN`, else the cache directory).
pub fn default_tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return bin.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/gps-telemetry/tansu-0.6.0/bin/tansu")
}

/// One fault's row.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultRow {
    /// The fault's name.
    pub fault: String,
    /// Fixes sent by the load (all ingest instances).
    pub sent: u64,
    /// Distinct good fixes acknowledged.
    pub acked: u64,
    /// Of those, acknowledged by each ingest instance.
    pub acked_per_ingest: Vec<u64>,
    /// Of those, stored exactly once.
    pub stored: u64,
    /// Keys stored more than once.
    pub duplicated: u64,
    /// Acknowledged and not stored.
    pub missing: u64,
    /// Rows nobody sent or bad fixes stored.
    pub unexpected: u64,
    /// Bad fixes ingest accepted.
    pub bad_sent: u64,
    /// Of those, found in the quarantine topic.
    pub quarantined: u64,
    /// Requests that failed, by kind (their fixes are not counted as acknowledged).
    pub errors: BTreeMap<String, u64>,
    /// Seconds the component was down or frozen.
    pub down_secs: f64,
    /// Seconds from lifting the fault until caught up; `None` when not within the bound.
    pub recovery_secs: Option<f64>,
    /// `gap` frames (`status: lost`) the WebSocket watchers received during the phase.
    pub live_gaps: u64,
    /// WebSocket watcher reconnects during the phase (a fanout went away).
    pub live_reconnects: u64,
    /// Zero missing, zero doubled, nothing unexpected, bad fixes quarantined, recovered in bound.
    pub passed: bool,
    /// Why a row was skipped or failed, when it was.
    pub note: String,
}

/// The whole drill.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// One row per fault.
    pub rows: Vec<FaultRow>,
    /// Instances of each service.
    pub instances: usize,
    /// Partitions each processor held at the end of the first phase (metrics).
    pub processor_partitions: Vec<usize>,
    /// Heartbeat fixes stored after each WebSocket watcher subscribed that it never received
    /// (meaningful when the watcher never reconnected).
    pub live_missed: Vec<u64>,
    /// Heartbeat fixes each WebSocket watcher received.
    pub live_received: Vec<u64>,
    /// Where the logs are.
    pub work_dir: PathBuf,
}

impl DrillReport {
    /// Every row passed.
    pub fn passed(&self) -> bool {
        self.rows
            .iter()
            .all(|r| r.passed || r.note.starts_with("skipped"))
    }
}

/// The table the drill prints.
pub fn table(report: &DrillReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<26} {:>8} {:>8} {:>8} {:>5} {:>7} {:>7} {:>6} {:>9} {:>5} {:>6}  verdict",
        "fault",
        "sent",
        "acked",
        "stored",
        "dup",
        "missing",
        "quarant",
        "down s",
        "recover s",
        "gaps",
        "reconn"
    );
    for r in &report.rows {
        let recovery = match r.recovery_secs {
            Some(s) => format!("{s:.1}"),
            None if r.note.starts_with("skipped") => "-".into(),
            None => "> bound".into(),
        };
        let verdict = if r.note.starts_with("skipped") {
            r.note.clone()
        } else if r.passed {
            "PASS".into()
        } else {
            format!("FAIL {}", r.note)
        };
        let _ = writeln!(
            out,
            "{:<26} {:>8} {:>8} {:>8} {:>5} {:>7} {:>3}/{:<3} {:>6.1} {:>9} {:>5} {:>6}  {}",
            r.fault,
            r.sent,
            r.acked,
            r.stored,
            r.duplicated,
            r.missing,
            r.quarantined,
            r.bad_sent,
            r.down_secs,
            recovery,
            r.live_gaps,
            r.live_reconnects,
            verdict
        );
    }
    let _ = writeln!(
        out,
        "instances of each service: {}; partitions per processor: {:?}; live fixes received per fanout watcher: {:?} (missed {:?})",
        report.instances, report.processor_partitions, report.live_received, report.live_missed
    );
    let _ = writeln!(out, "logs: {}", report.work_dir.display());
    out
}

fn short_id() -> String {
    Uuid::new_v4().simple().to_string()[..10].to_owned()
}

fn setup(what: impl std::fmt::Display) -> LoadgenError {
    LoadgenError::Setup(what.to_string())
}

// --- Processes ------------------------------------------------------------------------------

/// A process the drill starts, kills, freezes and restarts; its output is appended to a log.
#[derive(Debug)]
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Proc {
    fn start(&mut self) -> Result<(), LoadgenError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| setup(format!("cannot open {}: {e}", self.log.display())))?;
        let err = log
            .try_clone()
            .map_err(|e| setup(format!("cannot open {}: {e}", self.log.display())))?;
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let child = command.spawn().map_err(|e| {
            setup(format!(
                "cannot start {} ({}): {e}",
                self.name,
                self.program.display()
            ))
        })?;
        tracing::info!(process = %self.name, pid = child.id(), "started");
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL and reap.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            tracing::info!(process = %self.name, pid = child.id(), "sigkill");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    async fn stop(&mut self) {
        if self.signal("TERM").is_ok() {
            if let Some(child) = self.child.as_mut() {
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            }
        }
        self.kill().await;
    }

    /// Send a signal by name (`STOP`, `CONT`, `TERM`) with `kill(1)`.
    fn signal(&self, name: &str) -> Result<(), LoadgenError> {
        let pid = self
            .pid()
            .ok_or_else(|| setup(format!("{} is not running", self.name)))?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| setup(format!("kill -{name} {pid}: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(setup(format!("kill -{name} {pid} failed")))
        }
    }
}

/// A free loopback port for a child process (see `gps_runtime::ports` for why not port 0).
fn free_port(udp_too: bool) -> Result<SocketAddr, LoadgenError> {
    gps_runtime::ports::free_loopback_port(udp_too).map_err(|e| setup(format!("no free port: {e}")))
}

async fn wait_tcp(addr: SocketAddr, within: Duration, what: &str) -> Result<(), LoadgenError> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(setup(format!(
        "{what} did not open {addr} within {within:?}"
    )))
}

/// One instance of a service with its fixed addresses (kept across restarts).
#[derive(Debug)]
struct Instance {
    role: Role,
    http: SocketAddr,
    udp: Option<SocketAddr>,
    proc: Proc,
    /// Down on purpose (killed for good in this phase).
    down: bool,
}

impl Instance {
    fn base(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// The processes of one drill and their shared settings.
struct Cluster {
    broker: Proc,
    redis: Proc,
    redis_addr: SocketAddr,
    broker_addr: SocketAddr,
    instances: Vec<Instance>,
    kafka: KafkaArgs,
    pool: PgPool,
    admin: PgPool,
    db_name: String,
    jwt_secret: SecretString,
    client: reqwest::Client,
}

impl Cluster {
    async fn start(config: &DrillConfig) -> Result<Self, LoadgenError> {
        std::fs::create_dir_all(config.work_dir.join("kafka"))
            .and_then(|_| std::fs::create_dir_all(config.work_dir.join("redis")))
            .map_err(|e| setup(format!("cannot create {}: {e}", config.work_dir.display())))?;
        let id = short_id();
        let log = |name: &str| config.work_dir.join(format!("{name}.log"));

        // Broker and Redis of the drill's own, so faulting them touches nobody else.
        let broker_addr = free_port(false)?;
        let listener = format!("tcp://{broker_addr}");
        let mut broker = Proc {
            name: "broker".into(),
            program: config.tansu_bin.clone(),
            args: vec![
                "broker".into(),
                "--storage-engine".into(),
                "sqlite://tansu.db".into(),
                "--listener-url".into(),
                listener.clone(),
                "--advertised-listener-url".into(),
                listener,
            ],
            env: vec![("RUST_LOG".into(), "warn".into())],
            cwd: Some(config.work_dir.join("kafka")),
            log: log("broker"),
            child: None,
        };
        broker.start()?;
        let redis_addr = free_port(false)?;
        let mut redis = Proc {
            name: "redis".into(),
            program: config.redis_bin.clone(),
            args: [
                "--port",
                &redis_addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .to_vec(),
            env: Vec::new(),
            cwd: Some(config.work_dir.join("redis")),
            log: log("redis"),
            child: None,
        };
        redis.start()?;
        wait_tcp(broker_addr, Duration::from_secs(30), "the broker").await?;
        wait_tcp(redis_addr, Duration::from_secs(15), "redis").await?;

        let mut kafka = KafkaArgs::local();
        kafka.brokers = broker_addr.to_string();
        kafka.fixes_topic = format!("drill.fixes.{id}");
        kafka.rejected_topic = format!("drill.rejected.{id}");
        let mut created = Err(setup("not tried"));
        for _ in 0..20 {
            created = gps_runtime::kafka::ensure_standard_topics(&kafka)
                .await
                .map_err(LoadgenError::from);
            if created.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        created?;

        let admin = gps_runtime::db::connect(&config.database).await?;
        let db_name = format!("gps_drill_{id}");
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&admin)
            .await?;
        let url = gps_runtime::db::url_with_database(
            config.database.database_url.expose_secret(),
            &db_name,
        );
        let mut db_args = config.database.clone();
        db_args.database_url = SecretString::from(url.clone());
        let migrated = async {
            let pool = gps_runtime::db::connect(&db_args).await?;
            gps_runtime::db::migrate(&pool).await?;
            Ok::<_, LoadgenError>(pool)
        };
        let pool = match migrated.await {
            Ok(pool) => pool,
            Err(e) => {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                    .execute(&admin)
                    .await;
                return Err(e);
            }
        };

        let jwt_secret = SecretString::from(format!("{}{}", short_id(), Uuid::new_v4().simple()));
        let common: Vec<(String, String)> = [
            ("DATABASE_URL", url.as_str()),
            ("KAFKA_BROKERS", &kafka.brokers),
            ("KAFKA_FIXES_TOPIC", &kafka.fixes_topic),
            ("KAFKA_REJECTED_TOPIC", &kafka.rejected_topic),
            ("REDIS_URL", &format!("redis://{redis_addr}")),
            ("JWT_SECRET", jwt_secret.expose_secret()),
            ("PROCESSOR_GROUP_ID", &format!("drill-processor-{id}")),
            (
                "RUST_LOG",
                &std::env::var("DRILL_SERVICE_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain(config.service_env.iter().cloned())
        .collect();
        let mut instances = Vec::new();
        for role in Role::ALL {
            for index in 0..config.instances.max(1) {
                let http = free_port(false)?;
                let udp = (role == Role::Ingest)
                    .then(|| free_port(true))
                    .transpose()?;
                let mut env = common.clone();
                env.push((role.addr_env().into(), http.to_string()));
                if let Some(udp) = udp {
                    env.push(("INGEST_UDP_ADDR".into(), udp.to_string()));
                    // The Teltonika listener (TCP and UDP on one port) needs a port free in both.
                    env.push(("INGEST_TELTONIKA_ADDR".into(), free_port(true)?.to_string()));
                }
                let name = format!("{}-{index}", role.as_str());
                instances.push(Instance {
                    role,
                    http,
                    udp,
                    proc: Proc {
                        name: name.clone(),
                        program: config.bin_dir.join(role.as_str()),
                        args: Vec::new(),
                        env,
                        cwd: None,
                        log: log(&name),
                        child: None,
                    },
                    down: false,
                });
            }
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(setup)?;
        let cluster = Self {
            broker,
            redis,
            redis_addr,
            broker_addr,
            instances,
            kafka,
            pool,
            admin,
            db_name,
            jwt_secret,
            client,
        };
        Ok(cluster)
    }

    /// Start every service instance and wait until each is ready.
    async fn start_services(&mut self) -> Result<(), LoadgenError> {
        for i in 0..self.instances.len() {
            self.instances[i].proc.start()?;
        }
        for i in 0..self.instances.len() {
            self.wait_ready(i, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    fn of(&self, role: Role) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(move |i| i.role == role)
    }

    fn position(&self, role: Role, last: bool) -> usize {
        let found = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.role == role);
        let mut found: Vec<usize> = found.map(|(n, _)| n).collect();
        if last {
            found.pop().expect("every role has an instance")
        } else {
            found.remove(0)
        }
    }

    async fn ready(&self, instance: &Instance) -> bool {
        matches!(
            self.client.get(format!("{}/readyz", instance.base())).send().await,
            Ok(r) if r.status() == 200
        )
    }

    async fn wait_ready(&mut self, i: usize, within: Duration) -> Result<(), LoadgenError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.exited_at_start(i)?;
            if self.ready(&self.instances[i]).await {
                // The answer must be our child's: one that could not bind its ports exits at
                // once, while whatever holds them may answer `/readyz` too.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return self.exited_at_start(i);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let instance = &self.instances[i];
        Err(setup(format!(
            "{} was not ready within {within:?} (log: {})",
            instance.proc.name,
            instance.proc.log.display()
        )))
    }

    /// An error when instance `i` has already exited.
    fn exited_at_start(&mut self, i: usize) -> Result<(), LoadgenError> {
        let instance = &mut self.instances[i];
        match instance.proc.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Err(setup(format!(
                "{} exited at start ({status}); log: {}",
                instance.proc.name,
                instance.proc.log.display()
            ))),
            _ => Ok(()),
        }
    }

    /// Every instance not down on purpose answers `/readyz` 200.
    async fn all_ready(&self) -> bool {
        for instance in self.instances.iter().filter(|i| !i.down) {
            if !self.ready(instance).await {
                return false;
            }
        }
        true
    }

    async fn restart(&mut self, i: usize) -> Result<(), LoadgenError> {
        self.instances[i].proc.kill().await;
        self.instances[i].proc.start()?;
        self.instances[i].down = false;
        Ok(())
    }

    async fn restart_broker(&mut self) -> Result<(), LoadgenError> {
        self.broker.start()?;
        wait_tcp(self.broker_addr, Duration::from_secs(30), "the broker").await
    }

    async fn restart_redis(&mut self) -> Result<(), LoadgenError> {
        self.redis.start()?;
        wait_tcp(self.redis_addr, Duration::from_secs(15), "redis").await
    }

    /// Partitions each processor holds, from its metrics: the assigned-partitions gauge, or
    /// the number of partitions it reports lag for.
    async fn processor_partitions(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for p in self.of(Role::Processor) {
            let text = match self
                .client
                .get(format!("{}/metrics", p.base()))
                .send()
                .await
            {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            out.push(assigned_partitions(&text));
        }
        out
    }

    async fn shutdown(mut self, keep: bool) {
        for i in (0..self.instances.len()).rev() {
            self.instances[i].proc.stop().await;
        }
        self.broker.kill().await;
        self.redis.kill().await;
        self.pool.close().await;
        if !keep {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .execute(&self.admin)
            .await;
        }
        self.admin.close().await;
    }
}

/// Partitions a processor holds according to its metrics text.
pub fn assigned_partitions(metrics: &str) -> usize {
    for name in [
        "gps_processor_consumer_assigned_partitions",
        "gps_processor_assigned_partitions",
    ] {
        if let Some(value) = metric_sample(metrics, name) {
            return value as usize;
        }
    }
    metrics
        .lines()
        .filter(|l| l.starts_with("gps_processor_consumer_lag{"))
        .count()
}

// --- The caught-up probe: heartbeat fleet and live watchers ---------------------------------

/// How long an acknowledged heartbeat fix may take to be stored and still count as caught up
/// (end-to-end p99 is ~150 ms in release builds; debug builds and a loaded machine need more).
/// It is also the floor of every recovery time the drill prints.
const ACK_TO_STORED_ALLOWANCE: Duration = Duration::from_millis(500);

/// Acknowledged heartbeat fixes per device: (ack time, fix time), newest last.
type AckLog = Vec<VecDeque<(Instant, i64)>>;

struct Probe {
    fleet: Fleet,
    acks: Mutex<AckLog>,
    watchers: Vec<Mutex<Watcher>>,
    /// Stops the heartbeat senders.
    stop_beats: AtomicBool,
    /// Stops the watchers (after the senders, so they see the last fixes).
    stop: AtomicBool,
}

#[derive(Default)]
struct Watcher {
    connected: bool,
    subscribed_at_ms: Option<i64>,
    last_fix: Option<Instant>,
    gaps: u64,
    reconnects: u64,
    seen: HashSet<(Uuid, i64)>,
}

impl Probe {
    fn acks(&self) -> std::sync::MutexGuard<'_, AckLog> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn watcher(&self, i: usize) -> std::sync::MutexGuard<'_, Watcher> {
        self.watchers[i].lock().unwrap_or_else(|e| e.into_inner())
    }
    fn live_counts(&self) -> (u64, u64) {
        (0..self.watchers.len()).fold((0, 0), |(g, r), i| {
            let w = self.watcher(i);
            (g + w.gaps, r + w.reconnects)
        })
    }

    /// Whether, for every heartbeat device, its newest fix acknowledged more than
    /// [`ACK_TO_STORED_ALLOWANCE`] ago is stored, and that fix was acknowledged after `since`:
    /// a fix sent after the fault went all the way through (checking only older fixes would
    /// call a pipeline caught up the moment a fault hit, before anything fell behind).
    async fn stored_up_to_date(&self, pool: &PgPool, since: Instant) -> bool {
        let ids: Vec<Uuid> = self.fleet.devices.iter().map(|d| d.id).collect();
        let query = sqlx::query_as::<_, (Uuid, i64)>(
            "SELECT device_id, round(extract(epoch FROM max(fix_time)) * 1000)::int8
             FROM positions WHERE device_id = ANY($1) GROUP BY device_id",
        )
        .bind(&ids)
        .fetch_all(pool);
        let Ok(Ok(rows)) = tokio::time::timeout(Duration::from_secs(2), query).await else {
            return false;
        };
        let stored: HashMap<Uuid, i64> = rows.into_iter().collect();
        let Some(cutoff) = Instant::now().checked_sub(ACK_TO_STORED_ALLOWANCE) else {
            return false;
        };
        let acks = self.acks();
        self.fleet
            .devices
            .iter()
            .zip(acks.iter())
            .all(
                |(device, log)| match log.iter().rev().find(|(at, _)| *at <= cutoff) {
                    Some((at, fix_time)) if *at >= since => {
                        stored.get(&device.id).is_some_and(|s| s >= fix_time)
                    }
                    _ => false,
                },
            )
    }

    /// Whether every watcher of a running fanout received a heartbeat fix after `since` and
    /// within the last 2 s.
    fn live_flowing(&self, cluster: &Cluster, since: Instant) -> bool {
        let fanouts: Vec<&Instance> = cluster.of(Role::Fanout).collect();
        fanouts
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.down)
            .all(|(i, _)| {
                let w = self.watcher(i);
                w.last_fix
                    .is_some_and(|t| t >= since && t.elapsed() < Duration::from_secs(2))
            })
    }
}

async fn heartbeat(probe: Arc<Probe>, device: usize, ingests: Vec<String>, interval: Duration) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(_) => return,
    };
    let token = probe.fleet.devices[device].token.clone();
    // Spread the devices over the interval; each stands still with a little GPS noise.
    tokio::time::sleep(interval.mul_f64(device as f64 / probe.fleet.devices.len() as f64)).await;
    let mut last_time = 0i64;
    let mut turn = device;
    while !probe.stop_beats.load(Ordering::SeqCst) {
        let fix_time = now_millis().max(last_time + 1);
        last_time = fix_time;
        let jitter = (fix_time % 7) as f64 * 1e-6;
        let fix = Fix::new(fix_time, 48.137 + device as f64 * 1e-3 + jitter, 11.575);
        turn += 1;
        let url = &ingests[turn % ingests.len()];
        let ok = matches!(
            client
                .post(format!("{url}/v1/fixes"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(wire::json_body(std::slice::from_ref(&fix)))
                .send()
                .await,
            Ok(r) if r.status().is_success()
        );
        if ok {
            let mut acks = probe.acks();
            let log = &mut acks[device];
            log.push_back((Instant::now(), fix_time));
            while log.len() > 1000 {
                log.pop_front();
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// A WebSocket client on one fanout, subscribed to the heartbeat tenant, reconnecting when the
/// fanout goes away; counts `gap` frames and remembers every fix it saw.
async fn watch(probe: Arc<Probe>, index: usize, url: String, token: String) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut first = true;
    while !probe.stop.load(Ordering::SeqCst) {
        let connect = async {
            let mut request = url.as_str().into_client_request().ok()?;
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().ok()?);
            tokio_tungstenite::connect_async(request)
                .await
                .ok()
                .map(|(ws, _)| ws)
        };
        let Some(mut ws) = tokio::time::timeout(Duration::from_secs(3), connect)
            .await
            .ok()
            .flatten()
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let subscribe = serde_json::json!({"type": "subscribe", "id": "drill", "all": true});
        if ws.send(Message::text(subscribe.to_string())).await.is_err() {
            continue;
        }
        {
            let mut w = probe.watcher(index);
            w.connected = true;
            if !first {
                w.reconnects += 1;
            }
            w.subscribed_at_ms.get_or_insert_with(now_millis);
        }
        first = false;
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
            if probe.stop.load(Ordering::SeqCst) {
                return;
            }
            let message = match next {
                Err(_) => continue,
                Ok(Some(Ok(message))) => message,
                Ok(_) => break,
            };
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                continue;
            };
            let mut w = probe.watcher(index);
            match value["type"].as_str() {
                Some("fix") => {
                    w.last_fix = Some(Instant::now());
                    let device = value["device"].as_str().and_then(|d| d.parse().ok());
                    if let (Some(device), Some(t)) = (device, value["fix_time"].as_i64()) {
                        w.seen.insert((device, t));
                    }
                }
                Some("gap") if value["status"] == "lost" => w.gaps += 1,
                _ => {}
            }
        }
        probe.watcher(index).connected = false;
    }
}

// --- The drill ------------------------------------------------------------------------------

/// Start everything, run every fault, stop everything; the report says what happened. `stop`
/// ends the drill early (the processes are stopped and the database dropped all the same).
pub async fn run(config: DrillConfig, stop: Shutdown) -> Result<DrillReport, LoadgenError> {
    if config.faults.iter().any(|f| matches!(f, Fault::KillOne(_))) && config.instances < 2 {
        return Err(setup("kill-one-* faults need --instances 2 or more"));
    }
    for role in Role::ALL {
        let bin = config.bin_dir.join(role.as_str());
        if !bin.is_file() {
            return Err(setup(format!(
                "{} not found: build the services first (cargo build -p ingest -p processor -p fanout -p query-api --bins)",
                bin.display()
            )));
        }
    }
    let mut cluster = Cluster::start(&config).await?;
    // Interrupted (Ctrl-C): stop where it is, but still stop every process and drop the database.
    let outcome = tokio::select! {
        outcome = async {
            cluster.start_services().await?;
            drill(&config, &mut cluster).await
        } => outcome,
        () = stop.cancelled() => Err(setup("interrupted")),
    };
    cluster.shutdown(config.keep).await;
    outcome
}

async fn drill(config: &DrillConfig, cluster: &mut Cluster) -> Result<DrillReport, LoadgenError> {
    let id = short_id();
    let fleet = seed::fleet(
        &cluster.pool,
        &format!("drill-heartbeat-{id}"),
        &format!("hb{id}"),
        config.heartbeat_devices.max(1),
    )
    .await?;
    let keys = JwtKeys::new(&cluster.jwt_secret);
    let token = seed::live_viewer_token(
        &cluster.pool,
        &keys,
        fleet.tenant_id,
        &format!("drill-{id}@drill.invalid"),
        24 * 3600,
    )
    .await?;
    let fanouts: Vec<String> = cluster
        .of(Role::Fanout)
        .map(|f| format!("ws://{}/v1/live", f.http))
        .collect();
    let probe = Arc::new(Probe {
        acks: Mutex::new(vec![VecDeque::new(); fleet.devices.len()]),
        watchers: fanouts
            .iter()
            .map(|_| Mutex::new(Watcher::default()))
            .collect(),
        stop_beats: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        fleet,
    });
    let mut tasks = Vec::new();
    for (i, url) in fanouts.into_iter().enumerate() {
        tasks.push(tokio::spawn(watch(probe.clone(), i, url, token.clone())));
    }
    // The watchers subscribe before the first heartbeat, so they may see every one.
    let deadline = Instant::now() + Duration::from_secs(15);
    while (0..probe.watchers.len()).any(|i| probe.watcher(i).subscribed_at_ms.is_none())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ingests: Vec<String> = cluster.of(Role::Ingest).map(Instance::base).collect();
    for device in 0..probe.fleet.devices.len() {
        tasks.push(tokio::spawn(heartbeat(
            probe.clone(),
            device,
            ingests.clone(),
            config.heartbeat_interval,
        )));
    }
    // Everything caught up before the first fault.
    let warm = wait_caught_up(cluster, &probe, Instant::now(), Duration::from_secs(60)).await;
    if warm.is_none() {
        tracing::warn!("the pipeline did not catch up before the first fault");
    }

    let mut rows = Vec::new();
    let mut processor_partitions = Vec::new();
    for (n, fault) in config.faults.iter().enumerate() {
        tracing::info!(fault = %fault.name(), "drill phase");
        let row = phase(config, cluster, &probe, *fault).await?;
        tracing::info!(fault = %row.fault, passed = row.passed, recovery_s = ?row.recovery_secs, missing = row.missing, "drill phase done");
        rows.push(row);
        if n == 0 {
            processor_partitions = cluster.processor_partitions().await;
        }
        // Bring back anything still down, and let it catch up, before the next fault.
        for i in 0..cluster.instances.len() {
            if cluster.instances[i].down {
                cluster.restart(i).await?;
            }
        }
        wait_caught_up(cluster, &probe, Instant::now(), config.recovery_bound * 2).await;
    }

    // Live completeness: every stored heartbeat fix since a watcher subscribed reached it.
    probe.stop_beats.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    probe.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.abort();
    }
    let ids: Vec<Uuid> = probe.fleet.devices.iter().map(|d| d.id).collect();
    let stored = gps_store::positions::stored_keys(&cluster.pool, &ids).await?;
    let mut live_missed = Vec::new();
    let mut live_received = Vec::new();
    for i in 0..probe.watchers.len() {
        let w = probe.watcher(i);
        let since = w.subscribed_at_ms.unwrap_or(i64::MAX) + 1000;
        live_missed.push(
            stored
                .iter()
                .filter(|(_, t)| *t >= since)
                .filter(|k| !w.seen.contains(k))
                .count() as u64,
        );
        live_received.push(w.seen.len() as u64);
    }
    Ok(DrillReport {
        rows,
        instances: config.instances.max(1),
        processor_partitions,
        live_missed,
        live_received,
        work_dir: config.work_dir.clone(),
    })
}

/// Poll until caught up (see the module docs); the time from `since`, or `None` after `within`.
async fn wait_caught_up(
    cluster: &Cluster,
    probe: &Probe,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let deadline = since + within;
    while Instant::now() < deadline {
        if probe.live_flowing(cluster, since)
            && probe.stored_up_to_date(&cluster.pool, since).await
            && cluster.all_ready().await
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// One fault under load: start the load, apply the fault, time the recovery, check the loss.
async fn phase(
    config: &DrillConfig,
    cluster: &mut Cluster,
    probe: &Arc<Probe>,
    fault: Fault,
) -> Result<FaultRow, LoadgenError> {
    let mut row = FaultRow {
        fault: fault.name(),
        ..FaultRow::default()
    };
    if fault == Fault::RestartPostgres && config.postgres_restart.is_none() {
        row.note = "skipped (no --postgres-restart-cmd)".into();
        return Ok(row);
    }
    let (gaps_before, reconnects_before) = probe.live_counts();

    // The load: one run per ingest instance, each with its own fleet.
    let ingests: Vec<(String, SocketAddr)> = cluster
        .of(Role::Ingest)
        .map(|i| (i.base(), i.udp.unwrap_or(i.http)))
        .collect();
    let mut runs = Vec::new();
    for (n, (url, udp)) in ingests.iter().enumerate() {
        let run_config = RunConfig {
            mode: Mode::HttpBatch,
            ingest_url: url.clone(),
            udp_addr: *udp,
            fanout_url: String::new(),
            devices: config.devices.max(1),
            workers: 8,
            rate: Some(config.rate / ingests.len() as f64),
            duration: config.phase,
            batch: config.batch.max(1),
            seed: n as u64 + 1,
            faults: FaultRates {
                duplicate: 0.01,
                late: 0.01,
                bad: 0.002,
            },
            subscribers: 0,
            probe_devices: 4,
            poll_interval: Duration::from_millis(100),
            settle_timeout: config.settle,
            check_quarantine: true,
            progress: false,
            cleanup: false,
        };
        let env = RunEnv {
            pool: cluster.pool.clone(),
            kafka: cluster.kafka.clone(),
            jwt_secret: None,
        };
        runs.push(tokio::spawn(run::run(run_config, env)));
    }

    tokio::time::sleep(config.fault_at).await;
    let hit = Instant::now();
    let lifted = apply(config, cluster, fault).await?;
    row.down_secs = lifted.duration_since(hit).as_secs_f64();
    let recovery = wait_caught_up(cluster, probe, lifted, config.recovery_bound).await;
    row.recovery_secs = recovery.map(|d| d.as_secs_f64());

    let mut loss = LossCheck::default();
    let mut problems = Vec::new();
    for handle in runs {
        // A load run that could not finish (its loss check reads the quarantine topic from a
        // broker that may not have come back) fails this row, not the whole drill.
        let report = match handle.await.map_err(setup).and_then(|r| r) {
            Ok(report) => report,
            Err(e) => {
                problems.push(format!("load run failed: {e}"));
                continue;
            }
        };
        row.sent += report.fixes_sent;
        for (kind, n) in report.errors {
            *row.errors.entry(kind).or_insert(0) += n;
        }
        row.acked_per_ingest.push(report.loss.acked);
        add_loss(&mut loss, &report.loss);
    }
    let (gaps, reconnects) = probe.live_counts();
    row.live_gaps = gaps - gaps_before;
    row.live_reconnects = reconnects - reconnects_before;
    row.acked = loss.acked;
    row.stored = loss.stored_once;
    row.duplicated = loss.duplicated;
    row.missing = loss.missing;
    row.unexpected = loss.unexpected + loss.bad_stored;
    row.bad_sent = loss.bad_sent;
    row.quarantined = loss.bad_quarantined;
    if !loss.passed() {
        problems.push(format!(
            "loss check (missing {}, doubled {}, unexpected {}, quarantined {}/{}; e.g. {:?})",
            loss.missing,
            loss.duplicated,
            row.unexpected,
            loss.bad_quarantined,
            loss.bad_sent,
            loss.missing_examples
        ));
    }
    if recovery.is_none() {
        problems.push(format!("not caught up within {:?}", config.recovery_bound));
    }
    if loss.acked == 0 {
        problems.push("nothing acknowledged".into());
    }
    row.passed = problems.is_empty();
    row.note = problems.join("; ");
    Ok(row)
}

/// Apply a fault; returns when it was lifted.
async fn apply(
    config: &DrillConfig,
    cluster: &mut Cluster,
    fault: Fault,
) -> Result<Instant, LoadgenError> {
    match fault {
        Fault::Baseline => {}
        Fault::Kill(role) => {
            let i = cluster.position(role, false);
            cluster.instances[i].proc.kill().await;
            tokio::time::sleep(config.down_for).await;
            cluster.restart(i).await?;
        }
        Fault::KillOne(role) => {
            let i = cluster.position(role, true);
            cluster.instances[i].proc.kill().await;
            cluster.instances[i].down = true;
        }
        Fault::ProcessorMidCommit => {
            let i = cluster.position(Role::Processor, false);
            kill_after_store(cluster, i).await;
            tokio::time::sleep(config.down_for).await;
            cluster.restart(i).await?;
        }
        Fault::KillBroker => {
            cluster.broker.kill().await;
            tokio::time::sleep(config.down_for).await;
            cluster.restart_broker().await?;
        }
        Fault::PauseBroker => {
            cluster.broker.signal("STOP")?;
            tokio::time::sleep(config.down_for).await;
            cluster.broker.signal("CONT")?;
        }
        Fault::KillRedis => {
            cluster.redis.kill().await;
            tokio::time::sleep(config.down_for).await;
            cluster.restart_redis().await?;
        }
        Fault::RestartPostgres => {
            let command = config.postgres_restart.as_deref().unwrap_or("true");
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .status()
                .await
                .map_err(|e| setup(format!("{command}: {e}")))?;
            if !status.success() {
                return Err(setup(format!("{command} failed: {status}")));
            }
        }
    }
    Ok(Instant::now())
}

/// SIGKILL processor `i` the moment its stored-fix counter moves: the batch's transaction has
/// just committed and its offsets are being (or about to be) committed. Falls back to a plain
/// kill when nothing is stored within 10 s.
async fn kill_after_store(cluster: &mut Cluster, i: usize) {
    let url = format!("{}/metrics", cluster.instances[i].base());
    let read = |text: String| metric_sample(&text, "gps_processor_fixes_accepted_total");
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Ok(response) = cluster.client.get(&url).send().await else {
            continue;
        };
        let now = read(response.text().await.unwrap_or_default());
        match last {
            Some(before) if now > before => break,
            _ => last = Some(now),
        }
    }
    cluster.instances[i].proc.kill().await;
}

fn add_loss(total: &mut LossCheck, one: &LossCheck) {
    total.acked += one.acked;
    total.stored_once += one.stored_once;
    total.missing += one.missing;
    total.duplicated += one.duplicated;
    total.bad_stored += one.bad_stored;
    total.unexpected += one.unexpected;
    total.unacked_stored += one.unacked_stored;
    total.bad_sent += one.bad_sent;
    total.bad_quarantined += one.bad_quarantined;
    total.quarantine_checked |= one.quarantine_checked;
    total.missing_examples.extend(
        one.missing_examples
            .iter()
            .take(5 - total.missing_examples.len().min(5)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_round_trip() {
        for name in FULL_SEQUENCE.iter().chain(FAILOVER_SEQUENCE) {
            let fault: Fault = name.parse().unwrap();
            assert_eq!(fault.name(), *name);
        }
        assert!("kill-database".parse::<Fault>().is_err());
        assert!("freeze-broker".parse::<Fault>().is_err());
    }

    #[test]
    fn partitions_from_the_gauge_or_the_lag_series() {
        let lag = "# TYPE gps_processor_consumer_lag gauge\ngps_processor_consumer_lag{partition=\"0\"} 3\ngps_processor_consumer_lag{partition=\"5\"} 0\n";
        assert_eq!(assigned_partitions(lag), 2);
        let gauge = format!("{lag}gps_processor_consumer_assigned_partitions 4\n");
        assert_eq!(assigned_partitions(&gauge), 4);
        assert_eq!(assigned_partitions(""), 0);
    }

    #[test]
    fn a_failed_or_slow_row_fails_the_drill_and_a_skipped_one_does_not() {
        let mut report = DrillReport {
            rows: vec![FaultRow {
                fault: "baseline".into(),
                passed: true,
                recovery_secs: Some(0.4),
                ..FaultRow::default()
            }],
            instances: 1,
            processor_partitions: vec![8],
            live_missed: vec![0],
            live_received: vec![10],
            work_dir: PathBuf::from("/tmp/x"),
        };
        report.rows.push(FaultRow {
            fault: "restart-postgres".into(),
            note: "skipped (no --postgres-restart-cmd)".into(),
            ..FaultRow::default()
        });
        assert!(report.passed());
        assert!(table(&report).contains("PASS"));
        report.rows.push(FaultRow {
            fault: "kill-processor".into(),
            missing: 3,
            note: "loss check".into(),
            ..FaultRow::default()
        });
        assert!(!report.passed());
        assert!(table(&report).contains("> bound"));
    }
}
