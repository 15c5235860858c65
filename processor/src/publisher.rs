//! The live publish: after a batch commits, its newly stored valid fixes, the device statuses
//! it changed and the events it raised go to Redis as one [`LiveBatch`] per tenant on
//! [`channel_for`]`(tenant)` (`docs/live.md`). A fix the device called invalid is history only,
//! never live. The events also go to the events topic ([`EventTopic`], key = device id, value
//! = the event as JSON), best effort like the live publish: a failure is counted
//! (`gps_processor_event_publish_failures_total`) and logged; the `events` table is the record.
//!
//! Publishing runs in its own task (the service starts [`Publisher::new`]'s future) behind a
//! bounded queue, so a slow or absent Redis never
//! holds up storage: when the queue is full or Redis fails, the message is dropped, counted
//! (`gps_processor_publish_failures_total`) and logged, and the connection manager reconnects.
//! Live is a best-effort projection; the database (and the log) stay complete.

use crate::error::ProcessorError;
use crate::metrics::Metrics;
use crate::pipeline::{delivery_error, DELIVERY_DEADLINE};
use crate::plan::BatchOutcome;
use gps_domain::live::{channel_for, LiveBatch, LiveEvent, LiveFix, LiveStatus};
use gps_runtime::config::RedisArgs;
use gps_runtime::kafka::ReplaceableProducer;
use gps_store::positions::StoredFix;
use rdkafka::producer::FutureRecord;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

/// Messages waiting for Redis before new ones are dropped.
const QUEUE: usize = 1024;
/// Longest wait for one PUBLISH or connection attempt.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Produces events to the events topic (idempotent, `acks=all`), without waiting: a delivery
/// failure is counted when the broker answers or the deadline passes (which replaces the
/// producer, like the reject sink's; `pipeline::reliable_producer`).
#[derive(Clone)]
pub struct EventTopic {
    producer: Arc<ReplaceableProducer>,
    topic: String,
}

impl std::fmt::Debug for EventTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTopic")
            .field("topic", &self.topic)
            .finish()
    }
}

impl EventTopic {
    /// A producer to `kafka`'s events topic.
    pub fn new(kafka: &gps_runtime::config::KafkaArgs) -> Result<Self, ProcessorError> {
        let producer = crate::pipeline::reliable_producer(kafka, "gps-processor-events")?;
        Ok(Self {
            producer,
            topic: kafka.events_topic.clone(),
        })
    }

    /// Queue `events` to the topic; failures (a full queue now, a delivery error later) are
    /// counted on `metrics` and logged.
    fn send(&self, events: &[LiveEvent], metrics: &Metrics) {
        let mut deliveries = Vec::with_capacity(events.len());
        for live in events {
            let event = &live.event;
            let key = event.device_id.to_string();
            let payload = serde_json::to_vec(event).expect("events serialize");
            let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
            match self.producer.send(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err(error) => {
                    metrics.event_publish_failures.inc();
                    tracing::warn!(event = %event.id, %error, "event not produced to the events topic");
                }
            }
        }
        if deliveries.is_empty() {
            return;
        }
        let metrics = metrics.clone();
        let producer = self.producer.clone();
        tokio::spawn(async move {
            let acks = deliveries
                .into_iter()
                .map(|d| producer.acknowledged(d, DELIVERY_DEADLINE));
            for outcome in futures::future::join_all(acks).await {
                let Err(failure) = outcome else { continue };
                let error = delivery_error(failure);
                metrics.event_publish_failures.inc();
                tracing::warn!(%error, "event not delivered to the events topic");
            }
        });
    }
}

/// Handle to the publisher task. Dropping every handle lets the task drain and stop.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<(String, Vec<u8>)>,
    metrics: Metrics,
    events: Option<EventTopic>,
}

impl Publisher {
    /// A handle, and the publisher task for `args` to run: it publishes what the handles
    /// queue and ends once every handle is dropped and the queue is drained.
    pub fn new(args: RedisArgs, metrics: Metrics) -> (Self, impl Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = publish_loop(args, rx, metrics.clone());
        let publisher = Self {
            tx,
            metrics,
            events: None,
        };
        (publisher, task)
    }

    /// The same publisher, also producing events to `topic`.
    pub fn with_event_topic(mut self, topic: EventTopic) -> Self {
        self.events = Some(topic);
        self
    }

    /// Queue what one committed batch changed (its new valid fixes, its changed statuses, its
    /// new events), one message per tenant, and its events to the events topic.
    pub fn publish(&self, outcome: &BatchOutcome) {
        self.queue(live_batches(
            &outcome.stored,
            &outcome.statuses,
            &outcome.events,
        ));
        self.produce(&outcome.events);
    }

    /// Queue committed events that no batch carries (the offline timer's), one message per
    /// tenant, and to the events topic.
    pub fn publish_events(&self, events: &[LiveEvent]) {
        self.queue(live_batches(&[], &[], events));
        self.produce(events);
    }

    fn produce(&self, events: &[LiveEvent]) {
        if let Some(topic) = self.events.as_ref().filter(|_| !events.is_empty()) {
            topic.send(events, &self.metrics);
        }
    }

    fn queue(&self, batches: Vec<(Uuid, LiveBatch)>) {
        for (tenant, batch) in batches {
            if self
                .tx
                .try_send((channel_for(tenant), batch.encode()))
                .is_err()
            {
                self.metrics.publish_failures.inc();
                tracing::warn!(%tenant, fixes = batch.fixes.len(), statuses = batch.statuses.len(), events = batch.events.len(), reason = "queue_full", "live publish dropped");
            }
        }
    }
}

/// Group stored valid rows, changed statuses and new events per tenant (`statuses` pairs each
/// with its tenant; an event names its own); each tenant's fixes ordered by fix time (stable),
/// so every device's fixes are in fix-time order, and its events in the order given (fix-time
/// order per device). A tenant with none of them gets no message.
pub fn live_batches(
    rows: &[StoredFix],
    statuses: &[(Uuid, LiveStatus)],
    events: &[LiveEvent],
) -> Vec<(Uuid, LiveBatch)> {
    type Parts = (Vec<LiveFix>, Vec<LiveStatus>, Vec<LiveEvent>);
    let mut per_tenant: BTreeMap<Uuid, Parts> = BTreeMap::new();
    // Sort references, then copy each fix once into a Vec of the right size: sorting and
    // growing Vecs of ~230-byte `LiveFix`es moved every fix several times (perf: memmove).
    // A stable sort by (tenant, fix time) keeps each tenant's fixes in the same order.
    let mut valid: Vec<&StoredFix> = rows.iter().filter(|r| r.fix.valid).collect();
    valid.sort_by_key(|r| (r.tenant, r.fix.fix_time));
    for run in valid.chunk_by(|a, b| a.tenant == b.tenant) {
        let fixes = &mut per_tenant.entry(run[0].tenant).or_default().0;
        fixes.reserve_exact(run.len());
        fixes.extend(run.iter().map(|row| LiveFix {
            device: row.device,
            uid: row.uid.to_string(),
            proto: row.protocol,
            rx: row.received,
            fix: row.fix.clone(),
        }));
    }
    for (tenant, status) in statuses {
        per_tenant
            .entry(*tenant)
            .or_default()
            .1
            .push(status.clone());
    }
    for event in events {
        per_tenant
            .entry(event.event.tenant_id)
            .or_default()
            .2
            .push(event.clone());
    }
    per_tenant
        .into_iter()
        .map(|(tenant, (fixes, statuses, events))| {
            let batch = LiveBatch::new(tenant, fixes)
                .with_statuses(statuses)
                .with_events(events);
            (tenant, batch)
        })
        .collect()
}

async fn connect(args: &RedisArgs) -> Result<ConnectionManager, String> {
    let client = gps_runtime::redis_client::client(args).map_err(|e| e.to_string())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(REDIS_TIMEOUT)
        .set_response_timeout(REDIS_TIMEOUT)
        .set_number_of_retries(1);
    tokio::time::timeout(
        REDIS_TIMEOUT * 2,
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())
}

async fn publish_loop(
    args: RedisArgs,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    metrics: Metrics,
) {
    let mut conn: Option<ConnectionManager> = None;
    let mut next_attempt = Instant::now();
    while let Some((channel, payload)) = rx.recv().await {
        if conn.is_none() && Instant::now() >= next_attempt {
            match connect(&args).await {
                Ok(c) => {
                    tracing::info!(redis = %args.redacted_url(), "live publisher connected");
                    conn = Some(c);
                }
                Err(error) => {
                    tracing::warn!(redis = %args.redacted_url(), %error, "redis unreachable, live publish paused");
                    next_attempt = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            metrics.publish_failures.inc();
            continue;
        };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&channel).arg(payload);
        let publish = cmd.query_async::<i64>(c);
        match tokio::time::timeout(REDIS_TIMEOUT, publish).await {
            Ok(Ok(_receivers)) => metrics.published.inc(),
            Ok(Err(error)) => {
                metrics.publish_failures.inc();
                tracing::warn!(%channel, %error, "live publish failed");
            }
            Err(_) => {
                metrics.publish_failures.inc();
                tracing::warn!(%channel, reason = "timeout", "live publish failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gps_domain::fix::{Fix, Protocol};

    #[test]
    fn one_batch_per_tenant_in_fix_time_order() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let row = |tenant, t| StoredFix {
            tenant,
            device: Uuid::from_u128(u128::from(tenant == a)),
            uid: "u".into(),
            protocol: Protocol::Json,
            received: 9,
            fix: Fix::new(t, 1.0, 1.0),
        };
        let rows = [row(a, 3), row(b, 1), row(a, 2)];
        let batches = live_batches(&rows, &[], &[]);
        assert_eq!(batches.len(), 2);
        let of_a = &batches.iter().find(|(t, _)| *t == a).unwrap().1;
        let times: Vec<i64> = of_a.fixes.iter().map(|f| f.fix.fix_time).collect();
        assert_eq!(times, vec![2, 3]);
        assert_eq!(of_a.tenant, a);
        let fix = &of_a.fixes[0];
        assert_eq!(
            (fix.device, fix.uid.as_str(), fix.proto, fix.rx),
            (Uuid::from_u128(1), "u", Protocol::Json, 9)
        );
    }

    #[test]
    fn events_ride_with_their_tenants_fixes_in_the_order_given() {
        use gps_domain::events::{event_id, Event, EventType};
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let device = Uuid::from_u128(1);
        let event = |tenant, event_type, t| LiveEvent {
            uid: "u".into(),
            event: Event {
                id: event_id(device, event_type, t, None),
                tenant_id: tenant,
                device_id: device,
                event_type,
                fix_time: t,
                lat: Some(1.0),
                lon: Some(1.0),
                geofence_id: None,
                details: serde_json::json!({}),
            },
        };
        let rows = [StoredFix {
            tenant: a,
            device,
            uid: "u".into(),
            protocol: Protocol::Json,
            received: 9,
            fix: Fix::new(5, 1.0, 1.0),
        }];
        let events = [
            event(a, EventType::DeviceOnline, 5),
            event(b, EventType::DeviceOffline, 3),
            event(a, EventType::MotionStart, 5),
        ];
        let batches = live_batches(&rows, &[], &events);
        assert_eq!(batches.len(), 2, "a tenant with only events gets a message");
        let of_a = &batches.iter().find(|(t, _)| *t == a).unwrap().1;
        assert_eq!(of_a.fixes.len(), 1);
        assert_eq!(of_a.events, [events[0].clone(), events[2].clone()]);
        let of_b = &batches.iter().find(|(t, _)| *t == b).unwrap().1;
        assert!(of_b.fixes.is_empty());
        assert_eq!(of_b.events, [events[1].clone()]);
    }

    #[test]
    fn invalid_fixes_stay_out_and_statuses_go_to_their_tenant() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut invalid = Fix::new(5, 1.0, 1.0);
        invalid.valid = false;
        let rows = [StoredFix {
            tenant: a,
            device: Uuid::from_u128(1),
            uid: "u".into(),
            protocol: Protocol::Json,
            received: 9,
            fix: invalid,
        }];
        let status = LiveStatus {
            device: Uuid::from_u128(2),
            uid: "s".into(),
            last_seen: 8,
            status_time: Some(8),
            battery_pct: Some(50.0),
            charging: None,
            motion: None,
            alarm: None,
            alarm_time: None,
            attributes: Default::default(),
        };
        let batches = live_batches(&rows, &[(b, status.clone())], &[]);
        assert_eq!(
            batches.len(),
            1,
            "a tenant with only an invalid fix gets nothing"
        );
        let (tenant, batch) = &batches[0];
        assert_eq!(*tenant, b);
        assert!(batch.fixes.is_empty());
        assert_eq!(batch.statuses, vec![status]);
    }
}
