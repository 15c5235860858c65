//! The one Redis subscription of the process: `PSUBSCRIBE gps.live.*`, each message decoded once
//! and handed to the [`Router`]. When the subscription is lost (connection dropped, or a PING
//! unanswered) every client gets a `gap` (`lost`), the subscriber reconnects with exponential
//! backoff, and once subscribed again every client gets a `gap` (`resumed`) naming the window in
//! which fixes may have been missed, so it can resync from the query API.

use crate::metrics::Metrics;
use crate::protocol::gap_message;
use crate::router::Router;
use futures::StreamExt;
use gps_domain::fix::now_millis;
use gps_domain::live::{self, LiveBatch, CHANNEL_PATTERN};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the subscription is probed with a PING.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a PING or a connection attempt may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// First reconnection delay.
const BACKOFF_START: Duration = Duration::from_millis(50);

/// Whether the live subscription is up; read by `/readyz` and the `welcome` message.
#[derive(Debug, Default)]
pub struct Upstream {
    subscribed: AtomicBool,
}

impl Upstream {
    /// Whether subscribed now.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }
}

/// Run the subscription until `cancel`.
pub async fn run(
    client: redis::Client,
    router: Arc<Router>,
    upstream: Arc<Upstream>,
    metrics: Metrics,
    backoff_max: Duration,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    // Set while the subscription is lost: since when (epoch ms).
    let mut lost_since: Option<i64> = None;
    let mut ever_subscribed = false;
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            attempt = tokio::time::timeout(PROBE_TIMEOUT, subscribe(&client)) => attempt,
        };
        match attempt {
            Ok(Ok(pubsub)) => {
                backoff = BACKOFF_START;
                upstream.subscribed.store(true, Ordering::Release);
                metrics.redis_subscribed.set(1);
                if let Some(since) = lost_since.take() {
                    metrics.redis_reconnects.inc();
                    let until = now_millis();
                    tracing::info!(since, until, "redis live subscription resumed");
                    router.broadcast(&gap_message("resumed", since, Some(until)));
                } else if !ever_subscribed {
                    tracing::info!(pattern = CHANNEL_PATTERN, "redis live subscription up");
                }
                ever_subscribed = true;
                let reason = pump(pubsub, &router, &metrics, &cancel).await;
                upstream.subscribed.store(false, Ordering::Release);
                metrics.redis_subscribed.set(0);
                let Some(reason) = reason else {
                    return; // cancelled
                };
                let since = now_millis();
                tracing::warn!(reason, "redis live subscription lost, reconnecting");
                router.broadcast(&gap_message("lost", since, None));
                lost_since = Some(since);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis subscribe failed");
                if ever_subscribed && lost_since.is_none() {
                    lost_since = Some(now_millis());
                }
            }
            Err(_) => {
                tracing::warn!(
                    retry_in_ms = backoff.as_millis() as u64,
                    "redis subscribe timed out"
                );
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(backoff_max);
    }
}

async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe(CHANNEL_PATTERN).await?;
    Ok(pubsub)
}

/// Deliver messages until the subscription fails (`Some(reason)`) or `cancel` (`None`).
async fn pump(
    pubsub: redis::aio::PubSub,
    router: &Router,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Option<&'static str> {
    let (mut sink, mut stream) = pubsub.split();
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    probe.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            message = stream.next() => match message {
                Some(message) => handle(&message, router, metrics),
                None => return Some("connection closed"),
            },
            _ = probe.tick() => {
                match tokio::time::timeout(PROBE_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return Some("ping failed"),
                    Err(_) => return Some("ping timed out"),
                }
            }
        }
    }
}

fn handle(message: &redis::Msg, router: &Router, metrics: &Metrics) {
    let received = Instant::now();
    metrics.live_messages.inc();
    let Some(tenant) = live::tenant_of_channel(message.get_channel_name()) else {
        metrics.dropped.with_label_values(&["undecodable"]).inc();
        return;
    };
    // Most tenants have nobody watching on this instance: skip the decoding.
    if !router.has_tenant(tenant) {
        return;
    }
    // `decode` refuses other versions too: those are counted as undecodable, the error says which.
    let batch = match LiveBatch::decode(message.get_payload_bytes()) {
        Ok(batch) => batch,
        Err(e) => {
            tracing::warn!(tenant = %tenant, error = %e, "undecodable live batch dropped");
            metrics.dropped.with_label_values(&["undecodable"]).inc();
            return;
        }
    };
    metrics.live_fixes.inc_by(batch.fixes.len() as u64);
    metrics.live_events.inc_by(batch.events.len() as u64);
    if batch.tenant != tenant {
        tracing::warn!(channel_tenant = %tenant, batch_tenant = %batch.tenant, "live batch on another tenant's channel dropped");
        metrics
            .dropped
            .with_label_values(&["tenant_mismatch"])
            .inc_by(batch.fixes.len() as u64);
        return;
    }
    // A batch's frames in this order: an event follows the fix that raised it.
    router.dispatch(tenant, &batch.fixes, received);
    router.dispatch_statuses(tenant, &batch.statuses);
    router.dispatch_events(tenant, &batch.events);
}

/// Up to 25% random extra delay, so that many fanouts do not reconnect in lockstep.
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}
