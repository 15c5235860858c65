//! Shared test plumbing: ingest, the processor and, when asked, fanout started in-process on
//! port 0 against a fresh database and fresh topics, as a load run needs them.

use gps_runtime::config::KafkaArgs;
use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::{kafka_topics, wait_until_ok, TestDb};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The JWT secret of a test fanout (and of the load generator's subscribers).
pub(crate) const JWT_SECRET: &str = "benches-integration-test-secret-0123456789";

/// The services of one test, ready.
pub(crate) struct Pipeline {
    pub db: TestDb,
    pub kafka: KafkaArgs,
    pub ingest_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    /// Where fanout listens, when started.
    pub fanout_addr: Option<SocketAddr>,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<String>>,
}

/// Spawn a service and keep only how it ended, so that different services share one list.
fn spawn<E: std::fmt::Debug>(
    service: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) -> JoinHandle<String> {
    tokio::spawn(async move { format!("{:?}", service.await) })
}

impl Pipeline {
    /// Start ingest and the processor (and fanout with `with_fanout`) and wait until the HTTP
    /// services answer `/readyz`.
    pub(crate) async fn start(with_fanout: bool) -> Self {
        let db = TestDb::new().await;
        let kafka = kafka_topics().await;
        let shutdown = Shutdown::new();
        let client = reqwest::Client::new();

        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ingest_addr = http.local_addr().unwrap();
        let udp_addr = udp.local_addr().unwrap();
        let mut ingest_config = <ingest::Config as clap::Parser>::parse_from(["ingest"]);
        ingest_config.database = db.args.clone();
        ingest_config.kafka = kafka.clone();
        let mut ingest = spawn(ingest::run(ingest_config, http, udp, shutdown.clone()));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut processor_config = <processor::Config as clap::Parser>::parse_from(["processor"]);
        processor_config.database = db.args.clone();
        processor_config.kafka = kafka.clone();
        processor_config.group_id =
            format!("test-loadgen-{}", gps_runtime::testing::unique_suffix());
        let processor = spawn(processor::run(processor_config, listener, shutdown.clone()));

        wait_until_ok(
            &client,
            &format!("http://{ingest_addr}/readyz"),
            &mut ingest,
            Duration::from_secs(30),
        )
        .await;
        let mut tasks = vec![ingest, processor];
        let mut fanout_addr = None;
        if with_fanout {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut config = <fanout::Config as clap::Parser>::parse_from([
                "fanout",
                "--jwt-secret",
                JWT_SECRET,
            ]);
            config.database = db.args.clone();
            config.redis = gps_runtime::testing::redis_args();
            let mut fanout = spawn(fanout::run(config, listener, shutdown.clone()));
            wait_until_ok(
                &client,
                &format!("http://{addr}/readyz"),
                &mut fanout,
                Duration::from_secs(30),
            )
            .await;
            tasks.push(fanout);
            fanout_addr = Some(addr);
        }
        Self {
            db,
            kafka,
            ingest_addr,
            udp_addr,
            fanout_addr,
            shutdown,
            tasks,
        }
    }

    /// Stop the services (each gets 15 s to finish).
    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}
