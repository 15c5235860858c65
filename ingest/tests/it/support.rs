//! Shared helpers: start ingest on port 0 against a fresh database and fresh topics, read the
//! fixes topic back from the beginning, read one metric, start a private broker.

use gps_domain::FixEnvelope;
use gps_runtime::config::KafkaArgs;
use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::{
    kafka_topics, scrape_metric, seed_device, wait_until, wait_until_ok, SeededDevice, TestDb,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// A running ingest with its database, topics and one seeded device.
pub(crate) struct Ingest {
    pub db: TestDb,
    pub kafka: KafkaArgs,
    pub device: SeededDevice,
    pub base: String,
    pub udp: SocketAddr,
    /// Teltonika TCP and UDP (same port).
    pub teltonika: SocketAddr,
    pub client: reqwest::Client,
    pub shutdown: Shutdown,
    pub task: JoinHandle<Result<(), ingest::IngestError>>,
}

impl Ingest {
    /// Start with default settings.
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start with settings changed by `tweak` (database and topics are filled in first).
    pub(crate) async fn start_with(tweak: impl FnOnce(&mut ingest::Config)) -> Self {
        let kafka = kafka_topics().await;
        Self::start_on(kafka, tweak).await
    }

    /// Start against the given Kafka settings.
    pub(crate) async fn start_on(
        kafka: KafkaArgs,
        tweak: impl FnOnce(&mut ingest::Config),
    ) -> Self {
        let db = TestDb::new().await;
        let device = seed_device(&db.pool, "acme").await;
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", http.local_addr().unwrap());
        let udp_addr = udp.local_addr().unwrap();
        let teltonika = ingest::teltonika::TeltonikaListeners::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let teltonika_addr = teltonika.tcp.local_addr().unwrap();
        let mut config = ingest::Config::local();
        config.database = db.args.clone();
        config.kafka = kafka.clone();
        tweak(&mut config);
        let shutdown = Shutdown::new();
        let mut task = tokio::spawn(ingest::run_with(
            config,
            http,
            udp,
            Some(teltonika),
            shutdown.clone(),
        ));
        let client = reqwest::Client::new();
        wait_until_ok(
            &client,
            &format!("{base}/healthz"),
            &mut task,
            Duration::from_secs(20),
        )
        .await;
        Self {
            db,
            kafka,
            device,
            base,
            udp: udp_addr,
            teltonika: teltonika_addr,
            client,
            shutdown,
            task,
        }
    }

    /// Start against a private broker of its own (tansu), with its standard topics.
    pub(crate) async fn start_on_private_broker(
        tweak: impl FnOnce(&mut ingest::Config),
    ) -> (Self, PrivateBroker) {
        let Some(broker) = PrivateBroker::start().await else {
            panic!("tansu binary not found: run `dev/stack up` (it builds and caches the broker) or set TANSU_BIN");
        };
        let mut kafka = KafkaArgs::local();
        kafka.brokers = broker.brokers();
        gps_runtime::kafka::ensure_standard_topics(&kafka)
            .await
            .unwrap();
        (Self::start_on(kafka, tweak).await, broker)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A metric from `/metrics`: one sample (`name{labels}` exactly as exposed), or a bare name
    /// summed over its label sets; 0 when absent.
    pub(crate) async fn metric(&self, selector: &str) -> f64 {
        scrape_metric(&self.client, &self.base, selector).await
    }

    /// Wait until a metric reaches `at_least`; returns its value then.
    pub(crate) async fn wait_metric(&self, selector: &str, at_least: f64) -> f64 {
        let what = format!("{selector} to reach {at_least}");
        wait_until(Duration::from_secs(15), &what, || async {
            self.metric(selector).await >= at_least
        })
        .await;
        self.metric(selector).await
    }

    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("ingest stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

/// Read every envelope of the fixes topic from the beginning until `count` fixes were seen or
/// `idle` passed without a new record after the deadline.
pub(crate) async fn read_fixes(kafka: &KafkaArgs, count: usize) -> Vec<FixEnvelope> {
    read_until(kafka, move |read| {
        read.iter().map(|e| e.fixes.len()).sum::<usize>() >= count
    })
    .await
}

/// Read every envelope of the fixes topic from the beginning until `count` envelopes (with
/// fixes or only a device status) were seen, or the deadline passed.
pub(crate) async fn read_envelopes(kafka: &KafkaArgs, count: usize) -> Vec<FixEnvelope> {
    read_until(kafka, move |read| read.len() >= count).await
}

/// Read the fixes topic from the beginning until `done` says so or 20 s passed.
async fn read_until(
    kafka: &KafkaArgs,
    done: impl Fn(&[FixEnvelope]) -> bool + Send + 'static,
) -> Vec<FixEnvelope> {
    read_records_until(kafka, done)
        .await
        .into_iter()
        .map(|(_, envelope)| envelope)
        .collect()
}

/// The first `count` records of the fixes topic as written (payload) and decoded.
pub(crate) async fn read_records(kafka: &KafkaArgs, count: usize) -> Vec<(Vec<u8>, FixEnvelope)> {
    read_records_until(kafka, move |read| read.len() >= count).await
}

/// Read the fixes topic from the beginning, keeping each payload beside its envelope, until
/// `done` says so or 20 s passed.
async fn read_records_until(
    kafka: &KafkaArgs,
    done: impl Fn(&[FixEnvelope]) -> bool + Send + 'static,
) -> Vec<(Vec<u8>, FixEnvelope)> {
    let mut config = gps_runtime::kafka::client_config(kafka, "ingest-test-reader");
    config
        .set("group.id", format!("ingest-test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false");
    let topic = kafka.fixes_topic.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..gps_runtime::kafka::FIXES_PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let mut envelopes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&envelopes) && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                let payload = message.payload().unwrap();
                let envelope = FixEnvelope::decode(payload).unwrap();
                assert_eq!(
                    message.key().unwrap(),
                    envelope.key().as_bytes(),
                    "record key is the device id"
                );
                envelopes.push(envelope.clone());
                out.push((payload.to_vec(), envelope));
            }
        }
        out
    })
    .await
    .unwrap()
}

/// Insert an API key for `tenant` with `scopes`; returns the clear key.
pub(crate) async fn api_key(
    db: &TestDb,
    tenant: uuid::Uuid,
    scopes: &[&str],
    revoked: bool,
) -> String {
    let minted = gps_domain::auth::new_api_key();
    sqlx::query(
        "INSERT INTO api_keys (tenant_id, name, prefix, key_hash, scopes, revoked_at)
         VALUES ($1, 'gw', $2, $3, $4, CASE WHEN $5 THEN now() END)",
    )
    .bind(tenant)
    .bind(&minted.id)
    .bind(gps_domain::auth::secret_digest(&minted.key))
    .bind(scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    .bind(revoked)
    .execute(&db.pool)
    .await
    .unwrap();
    minted.key
}

pub(crate) use gps_runtime::testing::PrivateBroker;
