//! The audit log: the one `INSERT INTO audit_log` of the code base, used by the query API (one
//! row per audited request) and fanout (live sessions and their subscriptions, in batches).
//!
//! An audit write never fails the action it records, but it is never skipped silently either:
//! every lost row is counted ([`failed`], exposed by each service as
//! `gps_<service>_audit_failures_total` through [`FailureMetric`]) and logged at `error`, so
//! that an alert can fire. The count is process-wide (one service per process): the write paths
//! need no handle to a metrics registry, and every registry that exposes it reads the same value.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntCounter;
use sqlx::PgPool;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

/// Audit rows lost since the process started.
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// One audit-log entry.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// Tenant.
    pub tenant: Uuid,
    /// `user`, `api_key`, `device` or `system`.
    pub actor_kind: &'static str,
    /// Actor id.
    pub actor_id: Option<Uuid>,
    /// e.g. `auth.login`, `devices.create`, `positions.read`, `live.subscribe`.
    pub action: &'a str,
    /// Kind of object acted on.
    pub object_kind: Option<&'a str>,
    /// Object id.
    pub object_id: Option<String>,
    /// Peer address.
    pub ip: Option<IpAddr>,
    /// Extra detail.
    pub detail: serde_json::Value,
}

/// Insert `entries` in one statement (nothing for an empty slice).
pub async fn insert(pool: &PgPool, entries: &[AuditEntry<'_>]) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut tenants = Vec::with_capacity(entries.len());
    let mut actor_kinds = Vec::with_capacity(entries.len());
    let mut actor_ids = Vec::with_capacity(entries.len());
    let mut actions = Vec::with_capacity(entries.len());
    let mut object_kinds = Vec::with_capacity(entries.len());
    let mut object_ids = Vec::with_capacity(entries.len());
    let mut ips = Vec::with_capacity(entries.len());
    let mut details = Vec::with_capacity(entries.len());
    for e in entries {
        tenants.push(e.tenant);
        actor_kinds.push(e.actor_kind);
        actor_ids.push(e.actor_id);
        actions.push(e.action);
        object_kinds.push(e.object_kind);
        object_ids.push(e.object_id.as_deref());
        ips.push(e.ip.map(|ip| ip.to_string()));
        details.push(e.detail.to_string());
    }
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, actor_kind, actor_id, action, object_kind, object_id, ip, detail)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                              $6::text[], $7::text[]::inet[], $8::text[]::jsonb[])",
    )
    .bind(tenants)
    .bind(actor_kinds)
    .bind(actor_ids)
    .bind(actions)
    .bind(object_kinds)
    .bind(object_ids)
    .bind(ips)
    .bind(details)
    .execute(pool)
    .await?;
    Ok(())
}

/// Write one entry; a failure is counted and logged ([`failed`]), never returned: the action it
/// records has happened either way.
pub async fn record(pool: &PgPool, entry: AuditEntry<'_>) {
    if let Err(e) = insert(pool, std::slice::from_ref(&entry)).await {
        failed(entry.action, 1, &e);
    }
}

/// Count `rows` lost audit rows of `action` (`"batch"` for mixed batches) and log why.
pub fn failed(action: &str, rows: u64, error: &dyn std::fmt::Display) {
    FAILURES.fetch_add(rows, Ordering::Relaxed);
    tracing::error!(action, rows, error = %error, "audit write failed, rows lost");
}

/// Audit rows lost since the process started.
pub fn failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

/// The lost-row count as a Prometheus counter named per service
/// (`gps_query_audit_failures_total`, `gps_fanout_audit_failures_total`): register one in the
/// service's registry.
#[derive(Debug)]
pub struct FailureMetric {
    name: String,
    desc: Desc,
}

const FAILURE_HELP: &str = "Audit-log rows that could not be written (each also logged at error)";

impl FailureMetric {
    /// The metric `name` (must be a valid Prometheus metric name).
    pub fn new(name: &str) -> Self {
        let desc = Desc::new(
            name.to_owned(),
            FAILURE_HELP.to_owned(),
            Vec::new(),
            Default::default(),
        )
        .expect("valid metric name");
        Self {
            name: name.to_owned(),
            desc,
        }
    }
}

impl Collector for FailureMetric {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let counter = IntCounter::new(self.name.clone(), FAILURE_HELP).expect("valid metric name");
        counter.inc_by(failures());
        counter.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_reads_the_process_wide_count() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(FailureMetric::new(
                "gps_test_audit_failures_total",
            )))
            .unwrap();
        let before = failures();
        failed("test.action", 2, &"boom");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let value: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("gps_test_audit_failures_total "))
            .expect("sample exposed")
            .parse()
            .unwrap();
        assert!(value >= before + 2, "{value} < {before} + 2");
    }
}
