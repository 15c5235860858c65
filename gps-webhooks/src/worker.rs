//! The delivery worker: claims due rows of `webhook_deliveries` (the outbox the processor fills
//! in the transaction of the events), POSTs each event signed to its webhook, and records the
//! outcome: `delivered` on a 2xx, else one more attempt with its status and a short error, and
//! the next attempt after an exponential backoff with jitter, or `failed` after the last one.
//!
//! A claim is a lease, not a held transaction: one statement takes the due rows
//! (`FOR UPDATE SKIP LOCKED`, so instances never take the same row), moves their
//! `next_attempt_at` past the delivery timeout and stamps `last_attempt_at`; the outcome is
//! written only if that stamp is still the row's (a redelivery or another instance's later
//! claim wins). A worker that dies mid-delivery leaves the row to be retried when its lease
//! ends: at-least-once, which the receiver absorbs by the event id (`X-GPS-Event-Id`).

use crate::client::{truncate, Attempt, Outgoing, Sender};
use crate::config::WebhookArgs;
use crate::error::WebhookError;
use crate::metrics::Metrics;
use chrono::{DateTime, Utc};
use gps_domain::events::{Event, EventType};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Longest error text stored per attempt (the column allows 1,000).
const MAX_ERROR_CHARS: usize = 500;

/// A claimed delivery with its webhook and event (the event's columns are absent when the
/// event row is gone).
#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: i64,
    webhook_id: Uuid,
    attempts: i32,
    claimed_at: DateTime<Utc>,
    url: String,
    secret: String,
    event_id: Uuid,
    tenant_id: Option<Uuid>,
    device_id: Option<Uuid>,
    event_type: Option<String>,
    fix_time: Option<DateTime<Utc>>,
    lat: Option<f64>,
    lon: Option<f64>,
    geofence_id: Option<Uuid>,
    details: Option<Json<Value>>,
}

impl Claimed {
    /// The event as the `gps.events` topic carries it, or why it cannot be sent.
    fn event(&self) -> Result<Event, &'static str> {
        let (Some(tenant_id), Some(device_id), Some(kind), Some(fix_time)) = (
            self.tenant_id,
            self.device_id,
            self.event_type.as_deref(),
            self.fix_time,
        ) else {
            return Err("the event no longer exists");
        };
        let event_type: EventType = kind.parse().map_err(|_| "unknown event type")?;
        Ok(Event {
            id: self.event_id,
            tenant_id,
            device_id,
            event_type,
            fix_time: fix_time.timestamp_millis(),
            lat: self.lat,
            lon: self.lon,
            geofence_id: self.geofence_id,
            details: self
                .details
                .as_ref()
                .map(|d| d.0.clone())
                .unwrap_or(Value::Null),
        })
    }
}

/// Take up to `limit` due deliveries of enabled webhooks, hidden from other workers for
/// `lease`.
async fn claim(pool: &PgPool, limit: usize, lease: Duration) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (
             SELECT d.id FROM webhook_deliveries d
             JOIN webhooks w ON w.id = d.webhook_id AND w.tenant_id = d.tenant_id AND NOT w.disabled
             WHERE d.status = 'pending' AND d.next_attempt_at <= now()
             ORDER BY d.next_attempt_at
             LIMIT $1
             FOR UPDATE OF d SKIP LOCKED
         ), claimed AS (
             UPDATE webhook_deliveries d
             SET next_attempt_at = clock_timestamp() + make_interval(secs => $2),
                 last_attempt_at = clock_timestamp()
             FROM due WHERE d.id = due.id
             RETURNING d.id, d.webhook_id, d.tenant_id, d.event_id, d.attempts,
                       d.last_attempt_at AS claimed_at
         )
         SELECT c.id, c.webhook_id, c.attempts, c.claimed_at, w.url, w.secret, c.event_id,
                e.tenant_id, e.device_id, e.type AS event_type, e.fix_time, e.lat, e.lon,
                e.geofence_id, e.details
         FROM claimed c
         JOIN webhooks w ON w.id = c.webhook_id
         LEFT JOIN events e ON e.id = c.event_id AND e.tenant_id = c.tenant_id",
    )
    .bind(limit as i64)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// How a finished attempt is recorded.
struct Outcome<'a> {
    status: Option<u16>,
    error: Option<&'a str>,
    /// Attempts after which a failure is final (1: this one).
    max_attempts: u32,
    retry_in: Duration,
}

/// Record an attempt of `claimed`; the delivery's status after it, or `None` when the claim
/// was lost (redelivered, or re-claimed after the lease ended).
async fn finish(
    pool: &PgPool,
    claimed: &Claimed,
    outcome: Outcome<'_>,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE webhook_deliveries SET
             attempts = attempts + 1,
             response_status = $3,
             error = $4,
             status = CASE WHEN $4::text IS NULL THEN 'delivered'
                           WHEN attempts + 1 >= $5 THEN 'failed'
                           ELSE 'pending' END,
             delivered_at = CASE WHEN $4::text IS NULL THEN now() END,
             next_attempt_at = CASE WHEN $4::text IS NULL THEN next_attempt_at
                                    ELSE clock_timestamp() + make_interval(secs => $6) END
         WHERE id = $1 AND last_attempt_at = $2 AND status = 'pending'
         RETURNING status",
    )
    .bind(claimed.id)
    .bind(claimed.claimed_at)
    .bind(outcome.status.map(i32::from))
    .bind(outcome.error)
    .bind(outcome.max_attempts as i32)
    .bind(outcome.retry_in.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// Deliver one claimed row and record the outcome.
async fn deliver(
    pool: &PgPool,
    sender: &Sender,
    args: &WebhookArgs,
    metrics: &Metrics,
    c: Claimed,
) {
    let started = Instant::now();
    let (attempt, max_attempts) = match c.event() {
        Ok(event) => {
            let body = serde_json::to_vec(&event).expect("an event serializes");
            let out = Outgoing {
                url: &c.url,
                secret: &c.secret,
                event_id: c.event_id,
                event_type: event.event_type.as_str(),
                delivery_id: c.id,
                body,
            };
            (
                sender.send(out, Utc::now().timestamp()).await,
                args.max_attempts,
            )
        }
        // Nothing to send, ever: the failure is final.
        Err(reason) => (
            Attempt {
                status: None,
                error: Some(reason.to_owned()),
            },
            1,
        ),
    };
    metrics
        .attempt_seconds
        .observe(started.elapsed().as_secs_f64());
    let error = attempt
        .error
        .as_deref()
        .map(|e| truncate(e, MAX_ERROR_CHARS));
    let attempts = c.attempts.max(0) as u32 + 1;
    let outcome = Outcome {
        status: attempt.status,
        error: error.as_deref(),
        max_attempts,
        retry_in: args.backoff(attempts, rand::random::<f64>()),
    };
    match finish(pool, &c, outcome).await {
        Ok(Some(status)) => {
            let label = match status.as_str() {
                "delivered" => "delivered",
                "failed" => "failed",
                _ => "retried",
            };
            metrics.attempts.with_label_values(&[label]).inc();
            if let Some(error) = &error {
                tracing::info!(delivery = c.id, webhook = %c.webhook_id, event = %c.event_id, attempts, status = ?attempt.status, outcome = label, error = %error, "webhook attempt failed");
            } else {
                tracing::debug!(delivery = c.id, webhook = %c.webhook_id, event = %c.event_id, attempts, "webhook delivered");
            }
        }
        Ok(None) => {
            tracing::debug!(
                delivery = c.id,
                "webhook attempt outcome dropped: the claim was taken over"
            );
        }
        Err(e) => {
            // The lease ends and the delivery is retried: at least once, never lost.
            tracing::warn!(delivery = c.id, error = %e, "webhook attempt outcome not recorded");
        }
    }
}

/// Run the delivery worker until `stop` fires: claim due deliveries as slots free up (at most
/// `args.concurrency` in flight, `args.batch` per claim), poll every `args.poll_ms` when idle.
/// On stop no new delivery starts and those in flight finish (each bounded by the delivery
/// timeout). Database errors are logged and retried after the poll interval; only a client
/// that cannot be built is an error.
pub async fn run(
    pool: PgPool,
    args: WebhookArgs,
    metrics: Metrics,
    stop: CancellationToken,
) -> Result<(), WebhookError> {
    let sender = Arc::new(Sender::new(&args)?);
    let args = Arc::new(args);
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let mut in_flight = JoinSet::new();
    tracing::info!(
        concurrency = args.concurrency,
        batch = args.batch,
        max_attempts = args.max_attempts,
        allowed = ?args.urls.allow_private_cidrs,
        "webhook delivery started"
    );
    loop {
        while in_flight.try_join_next().is_some() {}
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let free = (1 + slots.available_permits()).min(args.batch as usize);
        let idle = match claim(&pool, free, args.lease()).await {
            Ok(rows) => {
                let idle = rows.len() < free;
                let mut permit = Some(first);
                for row in rows {
                    let held = match permit.take() {
                        Some(p) => p,
                        None => slots
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed"),
                    };
                    let (pool, sender, args, metrics) =
                        (pool.clone(), sender.clone(), args.clone(), metrics.clone());
                    in_flight.spawn(async move {
                        deliver(&pool, &sender, &args, &metrics, row).await;
                        drop(held);
                    });
                }
                idle
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook claim failed; retrying");
                true
            }
        };
        if idle {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(args.poll()) => {}
            }
        }
    }
    while in_flight.join_next().await.is_some() {}
    tracing::info!("webhook delivery stopped");
    Ok(())
}

/// Put a delivery of `tenant`'s `webhook` back in the queue, due now, with a fresh attempt
/// budget (`POST .../redeliver`): delivered or failed, it is sent again with the same event id.
/// The last attempt's status and error stay until the next attempt replaces them. False when no
/// such delivery is the tenant's.
pub async fn redeliver(
    pool: &PgPool,
    tenant: Uuid,
    webhook: Uuid,
    delivery: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook_deliveries d
         SET status = 'pending', next_attempt_at = now(), attempts = 0, delivered_at = NULL
         FROM webhooks w
         WHERE d.id = $1 AND d.webhook_id = $2 AND w.id = d.webhook_id AND w.tenant_id = $3",
    )
    .bind(delivery)
    .bind(webhook)
    .bind(tenant)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
