//! The Kafka producer of `gps.fixes`: idempotent, `acks=all`, one record per device per request
//! (a [`FixEnvelope`]), keyed by device id. A request is answered only after its delivery future
//! resolved; a full queue or a broker that does not acknowledge within the delivery timeout is a
//! 503 with `Retry-After`, never a silent drop.

use crate::config::ProducerArgs;
use crate::error::ApiError;
use crate::metrics::Metrics;
use gps_domain::FixEnvelope;
use gps_runtime::config::KafkaArgs;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Least time between two producer rebuilds.
const REBUILD_INTERVAL: Duration = Duration::from_secs(2);

/// The fixes producer (cheap to clone).
///
/// The idempotent producer keeps a producer id and per-partition sequence numbers. When records
/// time out while the broker is away, a restarted broker can refuse the producer's next
/// sequence for good (tansu answers `UNKNOWN_SERVER_ERROR`; Kafka `OUT_OF_ORDER_SEQUENCE_NUMBER`
/// or `UNKNOWN_PRODUCER_ID`). Such errors make the producer replace itself with a fresh one (a new
/// producer id), so devices get 503 while it happens and ingest recovers without a restart.
#[derive(Clone)]
pub struct FixProducer {
    producer: Arc<RwLock<FutureProducer>>,
    config: ClientConfig,
    last_rebuild: Arc<Mutex<Instant>>,
    topic: String,
    delivery_timeout: Duration,
    retry_after_secs: u32,
    metrics: Metrics,
}

impl std::fmt::Debug for FixProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixProducer")
            .field("topic", &self.topic)
            .finish()
    }
}

/// An enqueued record whose acknowledgement is still pending.
pub struct Pending {
    delivery: DeliveryFuture,
    started: Instant,
}

impl FixProducer {
    /// Create the producer (no broker round trip yet).
    pub fn new(
        kafka: &KafkaArgs,
        args: &ProducerArgs,
        metrics: Metrics,
    ) -> Result<Self, KafkaError> {
        let mut config = gps_runtime::kafka::client_config(kafka, "gps-ingest");
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", args.delivery_timeout_ms.to_string())
            .set("linger.ms", args.linger_ms.to_string())
            .set("batch.size", args.batch_bytes.to_string())
            .set("compression.type", &args.compression)
            .set(
                "queue.buffering.max.messages",
                args.queue_max_messages.to_string(),
            )
            // Notice a dead broker quickly instead of waiting for TCP to give up.
            .set("socket.connection.setup.timeout.ms", "3000")
            .set("reconnect.backoff.max.ms", "1000");
        Ok(Self {
            producer: Arc::new(RwLock::new(config.create()?)),
            config,
            last_rebuild: Arc::new(Mutex::new(Instant::now())),
            topic: kafka.fixes_topic.clone(),
            delivery_timeout: args.delivery_timeout(),
            retry_after_secs: args.retry_after_secs,
            metrics,
        })
    }

    fn current(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replace the producer after an error it cannot recover from by itself (at most once per
    /// [`REBUILD_INTERVAL`]).
    fn rebuild(&self, cause: &KafkaError) {
        let mut last = self
            .last_rebuild
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() < REBUILD_INTERVAL {
            return;
        }
        *last = Instant::now();
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                *self
                    .producer
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                tracing::warn!(error = %cause, "kafka producer replaced after an unrecoverable error");
            }
            Err(e) => tracing::error!(error = %e, "kafka producer could not be recreated"),
        }
    }

    /// Errors after which the idempotent producer's state is unusable, or would have to be
    /// repaired by an epoch bump: after a record timed out, librdkafka re-initialises the same
    /// producer id with a bumped epoch once the broker is back, which tansu 0.6 cannot handle
    /// (its storage panics and it stops serving). A fresh producer (new id) avoids that dance on
    /// every broker and costs nothing the retrying device would notice.
    fn needs_rebuild(&self, error: &KafkaError) -> bool {
        matches!(
            error,
            KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut
                    | RDKafkaErrorCode::Unknown
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fatal
            )
        ) || self.current().client().fatal_error().is_some()
    }

    fn unavailable(&self, detail: impl Into<String>) -> ApiError {
        ApiError::Unavailable {
            retry_after_secs: self.retry_after_secs,
            detail: detail.into(),
        }
    }

    /// Enqueue an envelope without waiting: fails at once when the producer queue is full.
    pub fn enqueue(&self, envelope: &FixEnvelope) -> Result<Pending, ApiError> {
        let key = envelope.key();
        let payload = envelope.encode();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        match self.current().send_result(record) {
            Ok(delivery) => Ok(Pending {
                delivery,
                started: Instant::now(),
            }),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(self.unavailable("kafka producer queue full"))
            }
            Err((e, _)) => Err(self.unavailable(format!("kafka enqueue failed: {e}"))),
        }
    }

    /// Wait for the broker's acknowledgement of an enqueued record.
    pub async fn acknowledged(&self, pending: Pending) -> Result<(), ApiError> {
        // librdkafka fails the record itself after `message.timeout.ms`; the outer timeout only
        // guards against a lost callback.
        let outcome = tokio::time::timeout(
            self.delivery_timeout + Duration::from_secs(1),
            pending.delivery,
        )
        .await;
        match outcome {
            Ok(Ok(Ok(_delivery))) => {
                self.metrics
                    .produce_seconds
                    .observe(pending.started.elapsed().as_secs_f64());
                Ok(())
            }
            Ok(Ok(Err((e, _)))) => {
                if self.needs_rebuild(&e) {
                    self.rebuild(&e);
                }
                Err(self.unavailable(format!("kafka delivery failed: {e}")))
            }
            Ok(Err(_canceled)) => Err(self.unavailable("kafka producer shut down")),
            Err(_elapsed) => {
                self.rebuild(&KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut,
                ));
                Err(self.unavailable("kafka delivery timed out"))
            }
        }
    }

    /// Enqueue and wait for the acknowledgement.
    pub async fn send(&self, envelope: &FixEnvelope) -> Result<(), ApiError> {
        let pending = self.enqueue(envelope)?;
        self.acknowledged(pending).await
    }

    /// Records queued or in flight.
    pub fn queue_depth(&self) -> i32 {
        self.current().in_flight_count()
    }

    /// Flush everything queued, waiting at most `timeout` (blocking: call from a blocking task).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().flush(timeout)
    }
}
