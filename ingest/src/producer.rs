//! The Kafka producer of `gps.fixes`: idempotent, `acks=all`, one record per device per request
//! (a [`FixEnvelope`], built here for every protocol), keyed by device id. A request is answered
//! only after its delivery future resolved; a full queue or a broker that does not acknowledge
//! within the delivery timeout is a [`ProduceError`] (HTTP answers 503 with `Retry-After`, UDP
//! drops and counts), never a silent drop. Fixes are counted accepted or refused here, for every
//! protocol alike, and every request passes the overload guard here ([`crate::overload`]): a
//! tenant shed while the store is behind gets the same 503 / counted drop, reason `overloaded`.
//!
//! **Two lanes, no linger tax at low load.** librdkafka's `linger.ms` is fixed per producer,
//! and `flush()` only ignores it for the duration of the (blocking) call, so a `flush(0)` after
//! a send does not reliably push it out. Ingest keeps two producers instead: the *immediate*
//! lane (`linger.ms=0`), used while few requests are in flight, answers a lone request in one
//! broker round trip; the *batching* lane (`--kafka-linger-ms`) takes over when more than
//! `--kafka-immediate-max-inflight` requests are in flight, and hands back once they are at
//! most half that (hysteresis, so the choice does not flap). Each request's records all go
//! through one lane. Order across lanes does not matter: a device's next request is sent after
//! the previous one was answered (acknowledged, so already in the log), and two requests of one
//! device in flight at the same time have no order to keep in the first place. UDP datagrams,
//! enqueued without waiting for their acknowledgement, always take the batching lane, so one
//! device's datagrams keep their arrival order.

use crate::auth::DeviceRecord;
use crate::config::ProducerArgs;
use crate::metrics::Metrics;
use crate::overload::{Overload, Shed};
use gps_domain::status::DeviceStatus;
use gps_domain::{EnvelopeFormat, Fix, FixEnvelope, Protocol};
use gps_runtime::config::KafkaArgs;
use gps_runtime::kafka::{DeliveryFailure, PendingDelivery, ReplaceableProducer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fixes that did not reach the log. Every failure is temporary: the device should retry after
/// `retry_after_secs` (`INGEST_RETRY_AFTER_SECS`).
#[derive(Debug, thiserror::Error)]
#[error("{failure}")]
pub struct ProduceError {
    /// What went wrong.
    pub failure: ProduceFailure,
    /// How long the device should wait before retrying.
    pub retry_after_secs: u32,
}

/// What went wrong on the way to the broker.
#[derive(Debug, thiserror::Error)]
pub enum ProduceFailure {
    /// The producer queue is full (the broker is slow or away).
    #[error("kafka producer queue full")]
    QueueFull,
    /// The record could not be enqueued.
    #[error("kafka enqueue failed: {0}")]
    Enqueue(KafkaError),
    /// The broker refused or never acknowledged the record.
    #[error("kafka delivery failed: {0}")]
    Delivery(KafkaError),
    /// No acknowledgement within the delivery timeout (the broker is away or too slow).
    #[error("kafka delivery timed out")]
    TimedOut,
    /// The producer was dropped with the record in flight.
    #[error("kafka producer shut down")]
    ShutDown,
    /// Shed: the store is behind and this tenant sends more than its share.
    #[error("shed: the store is behind")]
    Overloaded,
}

impl ProduceError {
    /// The metric `reason` label of the refused fixes.
    pub fn reason(&self) -> &'static str {
        match self.failure {
            ProduceFailure::Overloaded => "overloaded",
            _ => "unavailable",
        }
    }
}

/// One lane: a producer replaced instead of letting librdkafka time a record out and bump its
/// epoch ([`ReplaceableProducer`]).
type Lane = ReplaceableProducer;

/// Which lane the next request takes: requests in flight, with hysteresis.
struct LanePolicy {
    in_flight: AtomicUsize,
    batching: AtomicBool,
    /// More in flight than this: batch.
    high: usize,
    /// At most this many in flight: back to immediate.
    low: usize,
}

/// A request in flight; leaving the scope counts it out.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LanePolicy {
    fn new(high: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            batching: AtomicBool::new(false),
            high,
            low: high / 2,
        }
    }

    /// Count a request in and say whether it should batch.
    fn enter(&self) -> (InFlight<'_>, bool) {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let batching = if n > self.high {
            self.batching.store(true, Ordering::Relaxed);
            true
        } else if n <= self.low {
            self.batching.store(false, Ordering::Relaxed);
            false
        } else {
            self.batching.load(Ordering::Relaxed)
        };
        (InFlight(&self.in_flight), batching)
    }
}

/// The fixes producer (cheap to clone).
///
/// Each lane is a [`ReplaceableProducer`]: a record not acknowledged within the delivery
/// timeout, or an error the idempotent producer cannot recover from, replaces the lane's
/// producer with a fresh one (the old one's queue is purged first, so it sends nothing more),
/// so devices get 503 while it happens and ingest recovers without a restart.
#[derive(Clone)]
pub struct FixProducer {
    /// `linger.ms=0`, while few requests are in flight; `None` when the batching lane does not
    /// linger anyway or the immediate lane is turned off.
    immediate: Option<Arc<Lane>>,
    /// `linger.ms=--kafka-linger-ms`.
    batching: Arc<Lane>,
    policy: Arc<LanePolicy>,
    overload: Option<Overload>,
    topic: String,
    envelope_format: EnvelopeFormat,
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
struct Pending {
    delivery: PendingDelivery,
    started: Instant,
    lane: Arc<Lane>,
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
            .set(
                "message.timeout.ms",
                Lane::message_timeout(args.delivery_timeout()),
            )
            .set("batch.size", args.batch_bytes.to_string())
            .set("compression.type", &args.compression)
            .set(
                "queue.buffering.max.messages",
                args.queue_max_messages.to_string(),
            )
            // Notice a dead broker quickly instead of waiting for TCP to give up.
            .set("socket.connection.setup.timeout.ms", "3000")
            .set("reconnect.backoff.max.ms", "1000");
        let mut batching = config.clone();
        batching.set("linger.ms", args.linger_ms.to_string());
        let immediate = if args.linger_ms > 0 && args.immediate_max_inflight > 0 {
            let mut immediate = config;
            // One produce request in flight per broker: what arrives during a round trip goes
            // out together in the next one, so a crowd batches by itself at the broker's pace
            // instead of as many tiny requests (the broker's cost is per request).
            immediate
                .set("linger.ms", "0")
                .set("max.in.flight.requests.per.connection", "1");
            Some(Arc::new(Lane::new(immediate)?))
        } else {
            None
        };
        Ok(Self {
            immediate,
            batching: Arc::new(Lane::new(batching)?),
            policy: Arc::new(LanePolicy::new(args.immediate_max_inflight as usize)),
            overload: None,
            topic: kafka.fixes_topic.clone(),
            envelope_format: args.envelope_format,
            delivery_timeout: args.delivery_timeout(),
            retry_after_secs: args.retry_after_secs,
            metrics,
        })
    }

    /// Shed by `overload` while the store is behind.
    pub fn with_overload(mut self, overload: Overload) -> Self {
        self.overload = Some(overload);
        self
    }

    /// The lane of a request, counted in flight until the returned guard is dropped.
    fn lane(&self) -> (Option<InFlight<'_>>, Arc<Lane>) {
        let Some(immediate) = &self.immediate else {
            return (None, self.batching.clone());
        };
        let (in_flight, batching) = self.policy.enter();
        let path = if batching { "batching" } else { "immediate" };
        self.metrics.produce_path.with_label_values(&[path]).inc();
        let lane = if batching { &self.batching } else { immediate };
        (Some(in_flight), lane.clone())
    }

    /// Pass `fixes` of `tenant` through the overload guard, or count them refused.
    fn admit(
        &self,
        protocol: Protocol,
        tenant: uuid::Uuid,
        fixes: usize,
    ) -> Result<(), ProduceError> {
        let Some(overload) = &self.overload else {
            return Ok(());
        };
        overload
            .admit(tenant, fixes)
            .map_err(|shed| self.shed(protocol, shed))
    }

    /// Refuse `tenant` early, before its request is read, when the overload guard already
    /// sheds it (the request still passes [`FixProducer::produce`]'s guard once decoded).
    pub fn check_overload(
        &self,
        protocol: Protocol,
        tenant: uuid::Uuid,
    ) -> Result<(), ProduceError> {
        let Some(overload) = &self.overload else {
            return Ok(());
        };
        overload
            .check(tenant)
            .map_err(|shed| self.shed(protocol, shed))
    }

    /// The error of a shed request, its fixes counted refused.
    fn shed(&self, protocol: Protocol, shed: Shed) -> ProduceError {
        let error = ProduceError {
            failure: ProduceFailure::Overloaded,
            retry_after_secs: shed.retry_after_secs,
        };
        self.count(protocol, shed.fixes, Err(&error));
        error
    }

    fn error(&self, failure: ProduceFailure) -> ProduceError {
        ProduceError {
            failure,
            retry_after_secs: self.retry_after_secs,
        }
    }

    /// Count `fixes` of `protocol` as accepted, or refused with the error's reason.
    fn count(&self, protocol: Protocol, fixes: u64, outcome: Result<(), &ProduceError>) {
        match outcome {
            Ok(()) => self
                .metrics
                .fixes_accepted
                .with_label_values(&[protocol.as_str()])
                .inc_by(fixes),
            Err(e) => self.metrics.refused(protocol, e.reason(), fixes),
        }
    }

    /// Build the envelope of one device's fixes (and status report, if any), received at
    /// `received_at_ms`, and enqueue it without waiting: fails at once when the producer queue
    /// is full.
    fn enqueue(
        &self,
        lane: &Arc<Lane>,
        device: &DeviceRecord,
        protocol: Protocol,
        received_at_ms: i64,
        fixes: Vec<Fix>,
        status: Option<DeviceStatus>,
    ) -> Result<Pending, ProduceError> {
        let mut envelope = FixEnvelope::new(
            device.tenant_id,
            device.id,
            device.uid.clone(),
            protocol,
            received_at_ms,
            fixes,
        );
        envelope.status = status;
        let key = envelope.key();
        let payload = envelope.encode_as(self.envelope_format);
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        match lane.send(record) {
            Ok(delivery) => Ok(Pending {
                delivery,
                started: Instant::now(),
                lane: lane.clone(),
            }),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                Err(self.error(ProduceFailure::QueueFull))
            }
            Err(e) => Err(self.error(ProduceFailure::Enqueue(e))),
        }
    }

    /// Enqueue one device's fixes now and return the wait for their acknowledgement, which
    /// counts them accepted or refused; for UDP, where nobody waits for an answer and the
    /// receive loop must not wait on the broker. Enqueueing now keeps the records in the order
    /// the datagrams arrived.
    pub fn produce_detached(
        &self,
        device: &DeviceRecord,
        protocol: Protocol,
        fixes: Vec<Fix>,
    ) -> Result<impl Future<Output = ()> + Send + 'static, ProduceError> {
        let count = fixes.len() as u64;
        self.admit(protocol, device.tenant_id, fixes.len())?;
        let pending = self
            .enqueue(
                &self.batching,
                device,
                protocol,
                gps_domain::fix::now_millis(),
                fixes,
                None,
            )
            .inspect_err(|e| self.count(protocol, count, Err(e)))?;
        let producer = self.clone();
        Ok(async move {
            let outcome = producer.acknowledged(pending).await;
            if let Err(e) = &outcome {
                tracing::warn!(protocol = protocol.as_str(), error = %e, "fixes not acknowledged by kafka");
            }
            producer.count(protocol, count, outcome.as_ref().map(|_| ()));
        })
    }

    /// Produce one envelope per device, all received now, and wait until Kafka acknowledged
    /// every one; returns the number of fixes acknowledged. When any record fails, every fix of
    /// the request counts as refused and the request fails: records already acknowledged stay
    /// in the log, and the device's retry duplicates them, which the processor dedupes by device
    /// and fix time (at-least-once).
    pub async fn produce(
        &self,
        protocol: Protocol,
        batches: Vec<(Arc<DeviceRecord>, Vec<Fix>)>,
    ) -> Result<usize, ProduceError> {
        let received_at_ms = gps_domain::fix::now_millis();
        let total: usize = batches.iter().map(|(_, fixes)| fixes.len()).sum();
        // One request is one tenant's (its device's, or its gateway key's).
        if let Some((device, _)) = batches.first() {
            self.admit(protocol, device.tenant_id, total)?;
        }
        let (_in_flight, lane) = self.lane();
        let outcome = async {
            let pending = batches
                .into_iter()
                .map(|(device, fixes)| {
                    self.enqueue(&lane, &device, protocol, received_at_ms, fixes, None)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let acks = futures::future::join_all(pending.into_iter().map(|p| self.acknowledged(p)));
            acks.await.into_iter().collect::<Result<(), _>>()
        }
        .await;
        self.count(protocol, total as u64, outcome.as_ref().map(|_| ()));
        outcome.map(|()| total)
    }

    /// Produce one device's report received now: its fixes and its status report (a report
    /// without a position has no fix and a status; an envelope carrying neither is not
    /// produced), and wait until Kafka acknowledged it; returns the number of fixes.
    pub async fn produce_report(
        &self,
        protocol: Protocol,
        device: &DeviceRecord,
        fixes: Vec<Fix>,
        status: Option<DeviceStatus>,
    ) -> Result<usize, ProduceError> {
        if fixes.is_empty() && status.is_none() {
            return Ok(0);
        }
        let total = fixes.len();
        let has_status = status.is_some();
        self.admit(protocol, device.tenant_id, total)?;
        let (_in_flight, lane) = self.lane();
        let outcome = async {
            let pending = self.enqueue(
                &lane,
                device,
                protocol,
                gps_domain::fix::now_millis(),
                fixes,
                status,
            )?;
            self.acknowledged(pending).await
        }
        .await;
        self.count(protocol, total as u64, outcome.as_ref().map(|_| ()));
        if outcome.is_ok() && has_status {
            self.metrics
                .statuses_accepted
                .with_label_values(&[protocol.as_str()])
                .inc();
        }
        outcome.map(|()| total)
    }

    /// Wait for the broker's acknowledgement of an enqueued record.
    async fn acknowledged(&self, pending: Pending) -> Result<(), ProduceError> {
        // Ingest's deadline, before librdkafka's own: a record late by it replaces its producer
        // before librdkafka could time it out and bump the producer's epoch.
        let outcome = pending
            .lane
            .acknowledged(pending.delivery, self.delivery_timeout)
            .await;
        match outcome {
            Ok(()) => {
                self.metrics
                    .produce_seconds
                    .observe(pending.started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(DeliveryFailure::Broker(e)) => Err(self.error(ProduceFailure::Delivery(e))),
            Err(DeliveryFailure::ShutDown) => Err(self.error(ProduceFailure::ShutDown)),
            Err(DeliveryFailure::TimedOut) => Err(self.error(ProduceFailure::TimedOut)),
        }
    }

    /// Records queued or in flight.
    pub fn queue_depth(&self) -> i32 {
        self.lanes().map(|lane| lane.in_flight_count()).sum()
    }

    /// Flush everything queued, waiting at most `timeout` per lane (blocking: call from a
    /// blocking task).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        // Every lane is flushed, even after one failed.
        let mut outcome = Ok(());
        for lane in self.lanes() {
            if let Err(e) = lane.flush(timeout) {
                outcome = Err(e);
            }
        }
        outcome
    }

    fn lanes(&self) -> impl Iterator<Item = &Arc<Lane>> {
        self.immediate.iter().chain(std::iter::once(&self.batching))
    }
}
