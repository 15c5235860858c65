//! Shared helpers: a processor config for a test's database and topics, producing envelopes,
//! reading rejects back, subscribing to a tenant's live messages, running the service
//! in-process, and waiting for conditions.

use futures::StreamExt;
use gps_domain::live::{channel_for, LiveBatch};
use gps_domain::reject::RejectRecord;
use gps_domain::FixEnvelope;
use gps_runtime::config::KafkaArgs;
use gps_runtime::shutdown::Shutdown;
pub(crate) use gps_runtime::testing::wait_until;
use gps_runtime::testing::{scrape_metric, unique_suffix, TestDb};
use processor::Config;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A processor config on `db` and `kafka` with its own consumer group.
pub(crate) fn config(db: &TestDb, kafka: &KafkaArgs, group: &str) -> Config {
    let mut config = Config::local();
    config.database = db.args.clone();
    config.kafka = kafka.clone();
    config.redis = gps_runtime::testing::redis_args();
    config.group_id = group.to_owned();
    config.batch.max_wait_ms = 50;
    config
}

/// A unique consumer group id.
pub(crate) fn group() -> String {
    format!("test-processor-{}", unique_suffix())
}

/// An idempotent producer on the test broker.
pub(crate) fn producer(kafka: &KafkaArgs) -> FutureProducer {
    gps_runtime::kafka::client_config(kafka, "test-producer")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produce envelopes in order (each acknowledged before the next is sent).
pub(crate) async fn produce(producer: &FutureProducer, topic: &str, envelopes: &[FixEnvelope]) {
    for envelope in envelopes {
        produce_raw(producer, topic, &envelope.key(), &envelope.encode()).await;
    }
}

/// Produce many envelopes concurrently (order per key not guaranteed across the batch).
pub(crate) async fn produce_many(
    producer: &FutureProducer,
    topic: &str,
    envelopes: &[FixEnvelope],
) {
    let encoded: Vec<(String, Vec<u8>)> = envelopes.iter().map(|e| (e.key(), e.encode())).collect();
    let mut sends = Vec::new();
    for (key, payload) in &encoded {
        sends.push(producer.send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        ));
    }
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e).expect("broker acknowledges");
    }
}

/// Produce one raw record.
pub(crate) async fn produce_raw(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("broker acknowledges");
}

/// A consumer of the rejected topic, from its beginning.
pub(crate) fn rejects_consumer(kafka: &KafkaArgs) -> StreamConsumer {
    let consumer: StreamConsumer = gps_runtime::kafka::client_config(kafka, "test-rejects")
        .set("group.id", group())
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&kafka.rejected_topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Read `expected` reject records from the rejected topic (or panic after 60 s).
pub(crate) async fn read_rejects(kafka: &KafkaArgs, expected: usize) -> Vec<RejectRecord> {
    let consumer = rejects_consumer(kafka);
    let mut records = Vec::new();
    while records.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} rejects arrived", records.len()))
            .unwrap();
        records.push(RejectRecord::decode(message.payload().unwrap()).unwrap());
    }
    records
}

/// A processor running in-process.
pub(crate) struct Running {
    pub shutdown: Shutdown,
    pub task: JoinHandle<Result<(), processor::ProcessorError>>,
    pub addr: SocketAddr,
}

impl Running {
    /// Start `run` on a free port.
    pub(crate) async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(processor::run(config, listener, shutdown.clone()));
        Self {
            shutdown,
            task,
            addr,
        }
    }

    /// A metric from `/metrics`: one sample, or a bare name summed over its label sets.
    pub(crate) async fn metric(&self, selector: &str) -> f64 {
        let base = format!("http://{}", self.addr);
        scrape_metric(&reqwest::Client::new(), &base, selector).await
    }

    /// Shut down and wait for `run` to return Ok.
    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("processor stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

/// A processor binary running as its own process (for SIGKILL tests), serving its ops
/// endpoints on `base`.
pub(crate) struct Process {
    pub child: std::process::Child,
    pub base: String,
}

impl Process {
    /// Start the processor binary on `db` and `kafka` in `group`, with small batches, on a
    /// free port; `env` adds or overrides variables.
    pub(crate) fn spawn(db: &TestDb, kafka: &KafkaArgs, group: &str, env: &[(&str, &str)]) -> Self {
        let (mut command, base) = Self::command(db, kafka, group, env);
        let child = command.spawn().expect("processor binary starts");
        Self { child, base }
    }

    /// The command [`Process::spawn`] runs, and the base URL it will serve.
    pub(crate) fn command(
        db: &TestDb,
        kafka: &KafkaArgs,
        group: &str,
        env: &[(&str, &str)],
    ) -> (std::process::Command, String) {
        use secrecy::ExposeSecret;
        // Not port 0's pick: see `gps_runtime::ports`.
        let port = gps_runtime::ports::free_loopback_port(false)
            .unwrap()
            .port();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_processor"));
        command
            .env("DATABASE_URL", db.args.database_url.expose_secret())
            .env("KAFKA_BROKERS", &kafka.brokers)
            .env("KAFKA_FIXES_TOPIC", &kafka.fixes_topic)
            .env("KAFKA_REJECTED_TOPIC", &kafka.rejected_topic)
            .env("KAFKA_EVENTS_TOPIC", &kafka.events_topic)
            .env("PROCESSOR_GROUP_ID", group)
            .env("PROCESSOR_ADDR", format!("127.0.0.1:{port}"))
            .env("PROCESSOR_BATCH_MAX_FIXES", "400")
            .env("PROCESSOR_BATCH_MAX_WAIT_MS", "20")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        (command, format!("http://127.0.0.1:{port}"))
    }

    /// A metric from its `/metrics` (0 while it does not answer).
    pub(crate) async fn metric(&self, selector: &str) -> f64 {
        scrape_metric(&reqwest::Client::new(), &self.base, selector).await
    }

    /// SIGKILL (std's `kill` on Unix) and reap.
    pub(crate) fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replay the whole fixes topic of `config` (no progress bar).
pub(crate) async fn replay_all(config: &Config) -> processor::replay::ReplaySummary {
    let everything = processor::ReplayArgs {
        start: processor::ReplayStart {
            from_beginning: true,
            from_time: None,
        },
        rebuild_events: false,
    };
    processor::replay::replay(config, &everything, false)
        .await
        .unwrap()
}

/// Rows in `positions`.
pub(crate) async fn count_positions(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM positions")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every stored key, sorted.
pub(crate) async fn stored_keys(pool: &PgPool) -> Vec<(Uuid, i64)> {
    let rows: Vec<(Uuid, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT device_id, fix_time FROM positions ORDER BY device_id, fix_time")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(d, t)| (d, t.timestamp_millis()))
        .collect()
}

/// A Redis subscription to a tenant's live channel.
pub(crate) async fn live_messages(tenant: Uuid) -> redis::aio::PubSub {
    let client = redis::Client::open(
        secrecy::ExposeSecret::expose_secret(&gps_runtime::testing::redis_args().redis_url)
            .to_owned(),
    )
    .unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(channel_for(tenant)).await.unwrap();
    pubsub
}

/// Live batches until `done` says the last one is enough (or panic after 30 s).
pub(crate) async fn live_until(
    pubsub: &mut redis::aio::PubSub,
    mut done: impl FnMut(&LiveBatch) -> bool,
) -> Vec<LiveBatch> {
    let mut messages = pubsub.on_message();
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("live messages arrive")
            .unwrap();
        let batch = LiveBatch::decode(message.get_payload_bytes()).unwrap();
        let enough = done(&batch);
        seen.push(batch);
        if enough {
            return seen;
        }
    }
}
