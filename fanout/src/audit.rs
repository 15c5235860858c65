//! Live viewing in the audit log: each session's start (`live.connect`), what it subscribed to
//! (`live.subscribe`, coalesced per session so that a busy dashboard writes at most one row per
//! [`COALESCE`]), and a close by revocation (`live.revoked`). Rows go through the one audit
//! insert ([`gps_store::audit`]).
//!
//! Sessions never wait on the database: they hand entries to the [`Auditor`], a bounded queue
//! drained by one writer task ([`run`]) that inserts them in batches. A row that cannot be
//! written (queue full, insert failed) is counted in `gps_fanout_audit_failures_total` and
//! logged at `error`, never dropped silently.

use crate::outbox::CloseReason;
use gps_domain::auth::Principal;
use gps_domain::geo::BBox;
use gps_store::audit::AuditEntry;
use serde_json::json;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Subscriptions of one session are written at most once per this window (the first at once).
pub const COALESCE: Duration = Duration::from_secs(10);
/// Entries waiting for the writer; beyond it, entries are counted as lost.
const QUEUE: usize = 8192;
/// Most entries per insert.
const BATCH: usize = 256;
/// Ids listed per kind in one `live.subscribe` row (the counts are always complete).
const MAX_IDS: usize = 100;
/// At shutdown, the writer keeps draining until the queue stayed empty this long (sessions
/// write their last rows while they close).
const DRAIN_IDLE: Duration = Duration::from_millis(500);

/// The sessions' handle on the audit writer.
#[derive(Debug, Clone)]
pub struct Auditor {
    tx: mpsc::Sender<AuditEntry<'static>>,
}

impl Auditor {
    /// An auditor and the queue its writer ([`run`]) drains.
    pub fn new() -> (Self, mpsc::Receiver<AuditEntry<'static>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, rx)
    }

    fn record(&self, entry: AuditEntry<'static>) {
        if let Err(e) = self.tx.try_send(entry) {
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "audit queue full",
                mpsc::error::TrySendError::Closed(_) => "audit writer stopped",
            };
            gps_store::audit::failed("live", 1, &reason);
        }
    }
}

/// Write queued entries in batches until cancelled, then drain what the closing sessions add.
pub async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<AuditEntry<'static>>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => break,
            n = rx.recv_many(&mut batch, BATCH) => n,
        };
        if received == 0 {
            return;
        }
        write(&pool, &mut batch).await;
    }
    while let Ok(n) = tokio::time::timeout(DRAIN_IDLE, rx.recv_many(&mut batch, BATCH)).await {
        if n == 0 {
            break;
        }
        write(&pool, &mut batch).await;
    }
}

async fn write(pool: &PgPool, batch: &mut Vec<AuditEntry<'static>>) {
    if let Err(e) = gps_store::audit::insert(pool, batch).await {
        gps_store::audit::failed("live", batch.len() as u64, &e);
    }
    batch.clear();
}

/// What a session subscribed to since its last `live.subscribe` row.
#[derive(Debug, Default)]
struct Pending {
    requests: u32,
    devices: BTreeSet<Uuid>,
    groups: BTreeSet<Uuid>,
    bboxes: Vec<[f64; 4]>,
    all: bool,
}

/// One session's audit trail.
#[derive(Debug)]
pub struct SessionAudit {
    auditor: Auditor,
    tenant: Uuid,
    actor_kind: &'static str,
    actor_id: Uuid,
    ip: Option<IpAddr>,
    connection: u64,
    pending: Option<Pending>,
    last_written: Option<Instant>,
}

impl SessionAudit {
    /// The trail of connection `connection` of `principal`; writes `live.connect` at once.
    pub fn start(
        auditor: Auditor,
        principal: &Principal,
        ip: Option<IpAddr>,
        connection: u64,
        via: &'static str,
        scope: &'static str,
    ) -> Self {
        let (actor_kind, actor_id) = principal.audit_actor();
        let trail = Self {
            auditor,
            tenant: principal.tenant_id,
            actor_kind,
            actor_id,
            ip,
            connection,
            pending: None,
            last_written: None,
        };
        trail.write("live.connect", json!({ "via": via, "scope": scope }));
        trail
    }

    fn write(&self, action: &'static str, mut detail: serde_json::Value) {
        detail["connection"] = json!(self.connection);
        self.auditor.record(AuditEntry {
            tenant: self.tenant,
            actor_kind: self.actor_kind,
            actor_id: Some(self.actor_id),
            action,
            object_kind: Some("live_session"),
            object_id: Some(self.connection.to_string()),
            ip: self.ip,
            detail,
        });
    }

    /// A subscription was accepted (with what it was granted, not what was asked); written at
    /// once when no row was written within [`COALESCE`], else merged into the next one.
    pub fn subscribed(&mut self, devices: &[Uuid], groups: &[Uuid], bbox: Option<BBox>, all: bool) {
        let pending = self.pending.get_or_insert_with(Pending::default);
        pending.requests += 1;
        pending.devices.extend(devices.iter().copied());
        pending.groups.extend(groups.iter().copied());
        if let Some(bbox) = bbox {
            let edges = bbox.to_array();
            if !pending.bboxes.contains(&edges) {
                pending.bboxes.push(edges);
            }
        }
        pending.all |= all;
        self.tick(Instant::now());
    }

    /// Write the pending subscriptions if the window since the last row has passed.
    pub fn tick(&mut self, now: Instant) {
        if self
            .last_written
            .is_none_or(|at| now.duration_since(at) >= COALESCE)
        {
            self.flush(now);
        }
    }

    fn flush(&mut self, now: Instant) {
        let Some(p) = self.pending.take() else {
            return;
        };
        self.last_written = Some(now);
        self.write(
            "live.subscribe",
            json!({
                "requests": p.requests,
                "device_count": p.devices.len(),
                "devices": p.devices.iter().take(MAX_IDS).collect::<Vec<_>>(),
                "group_count": p.groups.len(),
                "groups": p.groups.iter().take(MAX_IDS).collect::<Vec<_>>(),
                "bboxes": p.bboxes,
                "all": p.all,
            }),
        );
    }

    /// The session ended: write what is pending, and the revocation if it was one.
    pub fn closed(&mut self, reason: CloseReason) {
        self.flush(Instant::now());
        if matches!(
            reason,
            CloseReason::AccountDisabled
                | CloseReason::KeyRevoked
                | CloseReason::CredentialInvalid
                | CloseReason::CredentialsChanged
                | CloseReason::PermissionRevoked
        ) {
            self.write(
                "live.revoked",
                json!({ "reason": reason.label(), "close_code": reason.code() }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gps_domain::auth::{Actor, Role};

    fn principal() -> Principal {
        Principal {
            tenant_id: Uuid::new_v4(),
            actor: Actor::User {
                user_id: Uuid::new_v4(),
                role: Role::Viewer,
            },
        }
    }

    fn drain(rx: &mut mpsc::Receiver<AuditEntry<'static>>) -> Vec<AuditEntry<'static>> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn subscriptions_are_coalesced_per_window() {
        let (auditor, mut rx) = Auditor::new();
        let principal = principal();
        let mut trail = SessionAudit::start(auditor, &principal, None, 7, "bearer", "groups");
        let connect = drain(&mut rx);
        assert_eq!(connect.len(), 1);
        assert_eq!(connect[0].action, "live.connect");
        assert_eq!(connect[0].tenant, principal.tenant_id);
        let (d1, d2, g) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        // The first subscription is written at once.
        trail.subscribed(&[d1], &[], None, false);
        let first = drain(&mut rx);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].action, "live.subscribe");
        assert_eq!(first[0].detail["devices"], json!([d1]));
        // A burst within the window becomes one row, written when the window has passed.
        for _ in 0..50 {
            trail.subscribed(&[d2], &[g], None, true);
        }
        assert!(drain(&mut rx).is_empty());
        tokio::time::advance(COALESCE).await;
        trail.tick(Instant::now());
        let merged = drain(&mut rx);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].detail["requests"], 50);
        assert_eq!(merged[0].detail["groups"], json!([g]));
        assert_eq!(merged[0].detail["all"], true);
        // What is pending at the close is written, and a revocation is recorded.
        trail.subscribed(&[d1], &[], None, false);
        trail.closed(CloseReason::AccountDisabled);
        let last: Vec<&str> = drain(&mut rx).iter().map(|e| e.action).collect();
        assert_eq!(last, ["live.subscribe", "live.revoked"]);
    }

    #[tokio::test]
    async fn a_full_queue_counts_lost_rows() {
        let (auditor, _rx) = Auditor::new();
        let principal = principal();
        let before = gps_store::audit::failures();
        for _ in 0..QUEUE + 3 {
            SessionAudit::start(auditor.clone(), &principal, None, 1, "bearer", "tenant");
        }
        assert!(gps_store::audit::failures() >= before + 3);
    }
}
