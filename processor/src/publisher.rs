//! The live publish: after a batch commits, its newly stored valid fixes and the device statuses
//! it changed go to Redis as one [`LiveBatch`] per tenant on [`channel_for`]`(tenant)`
//! (`docs/live.md`). A fix the device called invalid is history only, never live.
//!
//! Publishing runs in its own task (the service starts [`Publisher::new`]'s future) behind a
//! bounded queue, so a slow or absent Redis never
//! holds up storage: when the queue is full or Redis fails, the message is dropped, counted
//! (`gps_processor_publish_failures_total`) and logged, and the connection manager reconnects.
//! Live is a best-effort projection; the database (and the log) stay complete.

use crate::metrics::Metrics;
use crate::plan::BatchOutcome;
use gps_domain::live::{channel_for, LiveBatch, LiveFix, LiveStatus};
use gps_runtime::config::RedisArgs;
use gps_store::positions::StoredFix;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

/// Messages waiting for Redis before new ones are dropped.
const QUEUE: usize = 1024;
/// Longest wait for one PUBLISH or connection attempt.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Handle to the publisher task. Dropping every handle lets the task drain and stop.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<(String, Vec<u8>)>,
    metrics: Metrics,
}

impl Publisher {
    /// A handle, and the publisher task for `args` to run: it publishes what the handles
    /// queue and ends once every handle is dropped and the queue is drained.
    pub fn new(args: RedisArgs, metrics: Metrics) -> (Self, impl Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = publish_loop(args, rx, metrics.clone());
        (Self { tx, metrics }, task)
    }

    /// Queue what one committed batch changed (its new valid fixes, its changed statuses), one
    /// message per tenant.
    pub fn publish(&self, outcome: &BatchOutcome) {
        for (tenant, batch) in live_batches(&outcome.stored, &outcome.statuses) {
            if self
                .tx
                .try_send((channel_for(tenant), batch.encode()))
                .is_err()
            {
                self.metrics.publish_failures.inc();
                tracing::warn!(%tenant, fixes = batch.fixes.len(), statuses = batch.statuses.len(), reason = "queue_full", "live publish dropped");
            }
        }
    }
}

/// Group stored valid rows and changed statuses per tenant (`statuses` pairs each with its
/// tenant); each tenant's fixes ordered by fix time (stable), so every device's fixes are in
/// fix-time order. A tenant with neither gets no message.
pub fn live_batches(rows: &[StoredFix], statuses: &[(Uuid, LiveStatus)]) -> Vec<(Uuid, LiveBatch)> {
    let mut per_tenant: BTreeMap<Uuid, (Vec<LiveFix>, Vec<LiveStatus>)> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.fix.valid) {
        per_tenant.entry(row.tenant).or_default().0.push(LiveFix {
            device: row.device,
            uid: row.uid.to_string(),
            proto: row.protocol,
            rx: row.received,
            fix: row.fix.clone(),
        });
    }
    for (tenant, status) in statuses {
        per_tenant
            .entry(*tenant)
            .or_default()
            .1
            .push(status.clone());
    }
    per_tenant
        .into_iter()
        .map(|(tenant, (mut fixes, statuses))| {
            fixes.sort_by_key(|f| f.fix.fix_time);
            (
                tenant,
                LiveBatch::new(tenant, fixes).with_statuses(statuses),
            )
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
        let batches = live_batches(&rows, &[]);
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
        let batches = live_batches(&rows, &[(b, status.clone())]);
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
