//! The per-connection outbound queue and what it shares with the router: bounded, with
//! latest-per-device coalescing when full, per-device sequence numbers, and the close decision
//! for a client that stays behind.
//!
//! Invariants: the router never waits on a client (a push takes one short mutex and never
//! blocks); a connection's memory is bounded by `queue_hard_limit` messages; sequence numbers are
//! assigned when a message leaves the queue, and a coalesced (skipped) fix still consumes its
//! number, so a client sees a jump in `seq` exactly where fixes of that device were skipped.
//! A device status follows the same admission rules as a fix (capacity, grace, hard limit), and
//! coalesces the same way: a newer status of a device replaces its queued one. It has no `seq`
//! and is not counted as lagged: each status is the device's whole state, so the newest one
//! loses nothing.
//! An event is never coalesced and never dropped while the connection lives: past the capacity it
//! is still queued, up to the hard limit, and a client that stays behind past the hard limit or
//! the grace is closed as too slow (as for fixes). Each event happened once and no later frame
//! repeats it, so a client either receives every event routed to it, in order, or sees its
//! connection close (and reads what it missed from `GET /v1/events`).
//!
//! The grace clock is tokio's ([`tokio::time::Instant`]), so tests drive it with
//! `tokio::time::pause`/`advance` instead of sleeping.

use crate::metrics::Metrics;
use crate::protocol::{EncodedEvent, EncodedFix, EncodedStatus, EventKinds};
use gps_domain::events::EventType;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why a connection ended; each maps to a close code and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed or went away.
    Client,
    /// The client could not keep up: queue over its hard limit, or behind for too long.
    TooSlow,
    /// Nothing (not even a pong) arrived within the idle timeout.
    Idle,
    /// The server is shutting down.
    Shutdown,
    /// A client message exceeded the size limit.
    MessageTooBig,
    /// The client broke the WebSocket protocol.
    ProtocolError,
    /// The client sent too many bad messages.
    TooManyErrors,
    /// Writing to the socket failed.
    WriteFailed,
    /// The re-check found the user disabled or deleted.
    AccountDisabled,
    /// The re-check found the API key revoked or expired, or its creator disabled or deleted.
    KeyRevoked,
    /// The re-check refused the credential for another reason.
    CredentialInvalid,
    /// The re-check found the user's password changed or reset after the session's credential
    /// was issued (`users.tokens_not_before`).
    CredentialsChanged,
    /// The re-check found the principal without `live:read` (role or key scopes changed).
    PermissionRevoked,
    /// The client kept sending `subscribe` messages over its rate limit.
    RateLimited,
}

impl CloseReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::TooSlow => "too_slow",
            Self::Idle => "idle",
            Self::Shutdown => "shutdown",
            Self::MessageTooBig => "message_too_big",
            Self::ProtocolError => "protocol_error",
            Self::TooManyErrors => "too_many_errors",
            Self::WriteFailed => "write_failed",
            Self::AccountDisabled => "account_disabled",
            Self::KeyRevoked => "key_revoked",
            Self::CredentialInvalid => "credential_invalid",
            Self::CredentialsChanged => "credentials_changed",
            Self::PermissionRevoked => "permission_revoked",
            Self::RateLimited => "rate_limited",
        }
    }

    /// WebSocket close code (RFC 6455 section 7.4, 4xxx private use).
    pub fn code(self) -> u16 {
        match self {
            Self::Client => 1000,
            Self::Shutdown => 1001,
            Self::ProtocolError => 1002,
            Self::TooManyErrors => 1008,
            Self::MessageTooBig => 1009,
            Self::WriteFailed => 1011,
            Self::TooSlow => 4008,
            Self::Idle => 4009,
            // 4401 and 4403 mirror HTTP 401 and 403: the credential, or its permission, is gone.
            Self::AccountDisabled
            | Self::KeyRevoked
            | Self::CredentialInvalid
            | Self::CredentialsChanged => 4401,
            Self::PermissionRevoked => 4403,
            Self::RateLimited => 4429,
        }
    }

    /// Close frame reason text.
    pub fn text(self) -> &'static str {
        match self {
            Self::Client => "bye",
            Self::Shutdown => "server going away",
            Self::ProtocolError => "protocol error",
            Self::TooManyErrors => "too many bad messages",
            Self::MessageTooBig => "message too big",
            Self::WriteFailed => "write failed",
            Self::TooSlow => "too slow",
            Self::Idle => "idle timeout",
            Self::AccountDisabled => "account disabled or deleted",
            Self::KeyRevoked => "api key revoked or expired",
            Self::CredentialInvalid => "credential no longer valid",
            Self::CredentialsChanged => "credentials changed",
            Self::PermissionRevoked => "live:read permission revoked",
            Self::RateLimited => "too many subscribe requests",
        }
    }
}

/// A message waiting in the queue.
#[derive(Debug)]
pub enum Item {
    /// A live fix; `skipped` older fixes of the device were coalesced into it.
    Fix {
        /// The fix.
        fix: Arc<EncodedFix>,
        /// How many sequence numbers were consumed by coalesced fixes before it.
        skipped: u64,
    },
    /// A device status (the newest queued one of its device).
    Status(Arc<EncodedStatus>),
    /// An event (never coalesced).
    Event(Arc<EncodedEvent>),
    /// A ready JSON control message (ack, error, pong, gap).
    Text(String),
    /// A snapshot; sequence numbers are assigned when it leaves the queue.
    Snapshot {
        /// Request id to echo.
        id: Option<Value>,
        /// Whether the snapshot limit cut it short.
        truncated: bool,
        /// The positions.
        fixes: Vec<Arc<EncodedFix>>,
    },
    /// A WebSocket ping frame (heartbeat).
    Ping,
}

/// A message leaving the queue, with its sequence numbers assigned.
#[derive(Debug)]
pub enum Outgoing {
    /// A live fix.
    Fix {
        /// Per-device sequence number.
        seq: u64,
        /// The fix.
        fix: Arc<EncodedFix>,
    },
    /// A device status.
    Status(Arc<EncodedStatus>),
    /// An event.
    Event(Arc<EncodedEvent>),
    /// A control message.
    Text(String),
    /// A snapshot with a sequence number per position.
    Snapshot {
        /// Request id.
        id: Option<Value>,
        /// Whether cut short.
        truncated: bool,
        /// Positions and their sequence numbers.
        entries: Vec<(u64, Arc<EncodedFix>)>,
    },
    /// How many fixes were coalesced since the last notice.
    Lagged(u64),
    /// A heartbeat ping.
    Ping,
}

/// Which kind of live item a push is (fixes are counted and sequenced, statuses are not,
/// events are neither coalesced nor dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    Fix,
    Status,
    Event,
}

#[derive(Debug, Default)]
struct Outbox {
    items: VecDeque<Item>,
    /// Last sequence number used per device.
    seqs: HashMap<Uuid, u64>,
    /// While > 0 the writer does not drain (a subscribe is taking its snapshot).
    held: u32,
    /// Since when the queue has been over capacity.
    behind_since: Option<Instant>,
    coalesced_pending: u64,
    closing: Option<CloseReason>,
}

/// Queue bounds.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Length at which coalescing starts.
    pub capacity: usize,
    /// Length at which the client is closed.
    pub hard_limit: usize,
    /// How long the queue may stay over capacity.
    pub grace: Duration,
}

/// The part of a connection the router and the connection's tasks share.
#[derive(Debug)]
pub struct ConnShared {
    /// Connection id (process-unique).
    pub id: u64,
    /// The principal's tenant.
    pub tenant: Uuid,
    outbox: Mutex<Outbox>,
    /// The event types the client asked for ([`EventKinds`] bits); read by the router per event.
    events: AtomicU16,
    notify: Notify,
    /// Cancelled when the connection must end (close decided, or shutdown).
    pub cancel: CancellationToken,
    limits: QueueLimits,
    metrics: Metrics,
}

impl ConnShared {
    /// A fresh connection.
    pub fn new(
        id: u64,
        tenant: Uuid,
        limits: QueueLimits,
        cancel: CancellationToken,
        metrics: Metrics,
    ) -> Self {
        Self {
            id,
            tenant,
            outbox: Mutex::new(Outbox::default()),
            events: AtomicU16::new(EventKinds::NONE.bits()),
            notify: Notify::new(),
            cancel,
            limits,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding this lock cannot leave the queue inconsistent in a way that
        // matters more than losing the connection, so a poisoned lock is used as is.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set the event types the client receives from now on.
    pub fn set_events(&self, kinds: EventKinds) {
        self.events.store(kinds.bits(), Ordering::Relaxed);
    }

    /// The event types the client receives.
    pub fn events(&self) -> EventKinds {
        EventKinds::from_bits(self.events.load(Ordering::Relaxed))
    }

    /// Whether the client asked for events of this type.
    pub fn wants_event(&self, event_type: EventType) -> bool {
        self.events().contains(event_type)
    }

    /// Queue an event: never coalesced; past the hard limit or the grace the client is closed
    /// instead. Never blocks.
    pub fn push_event(&self, event: &Arc<EncodedEvent>) {
        self.push_live(Live::Event, || Item::Event(event.clone()), |_| false);
    }

    /// Queue a live fix, coalescing or closing when the client is behind. Never blocks.
    pub fn push_fix(&self, fix: &Arc<EncodedFix>) {
        let new = || Item::Fix {
            fix: fix.clone(),
            skipped: 0,
        };
        // Keep only the newest fix of the device: fold the new one into its latest queued fix.
        let fold = |item: &mut Item| match item {
            Item::Fix { fix: f, skipped } if f.device == fix.device => {
                *skipped += 1;
                if fix.fix_time >= f.fix_time {
                    *f = fix.clone();
                }
                true
            }
            _ => false,
        };
        self.push_live(Live::Fix, new, fold);
    }

    /// Queue a device status by the same rules as a fix; a newer status of the device replaces
    /// its queued one. Never blocks.
    pub fn push_status(&self, status: &Arc<EncodedStatus>) {
        let fold = |item: &mut Item| match item {
            Item::Status(queued) if queued.device == status.device => {
                if status.rank >= queued.rank {
                    *queued = status.clone();
                }
                true
            }
            _ => false,
        };
        self.push_live(Live::Status, || Item::Status(status.clone()), fold);
    }

    /// The one admission rule of live items: queued while under capacity; once behind, folded
    /// into a queued item of the same device (`fold` says whether it found one) or queued up to
    /// the hard limit, and the client closed past the limit or the grace.
    fn push_live(
        &self,
        kind: Live,
        new: impl FnOnce() -> Item,
        mut fold: impl FnMut(&mut Item) -> bool,
    ) {
        let mut ob = self.lock();
        if ob.closing.is_some() {
            match kind {
                Live::Fix => self.metrics.dropped.with_label_values(&["closing"]).inc(),
                Live::Event => self
                    .metrics
                    .events_dropped
                    .with_label_values(&["closing"])
                    .inc(),
                Live::Status => {}
            }
            return;
        }
        if ob.items.len() < self.limits.capacity {
            ob.items.push_back(new());
            drop(ob);
            self.notify.notify_one();
            return;
        }
        let now = Instant::now();
        let since = *ob.behind_since.get_or_insert(now);
        if now.duration_since(since) > self.limits.grace {
            self.close_locked(&mut ob, CloseReason::TooSlow);
            return;
        }
        // An event folds into nothing: skip the scan.
        if kind != Live::Event && ob.items.iter_mut().rev().any(&mut fold) {
            if kind == Live::Fix {
                ob.coalesced_pending += 1;
                self.metrics.coalesced.inc();
            }
        } else if ob.items.len() < self.limits.hard_limit {
            ob.items.push_back(new());
        } else {
            self.close_locked(&mut ob, CloseReason::TooSlow);
            return;
        }
        drop(ob);
        self.notify.notify_one();
    }

    /// Queue a control message (not coalesced; counts against the hard limit).
    pub fn push_item(&self, item: Item) {
        let mut ob = self.lock();
        if ob.closing.is_some() {
            return;
        }
        if ob.items.len() >= self.limits.hard_limit {
            self.close_locked(&mut ob, CloseReason::TooSlow);
            return;
        }
        ob.items.push_back(item);
        drop(ob);
        self.notify.notify_one();
    }

    /// Stop the writer from draining (while a snapshot is read, so it goes out before the
    /// live fixes of the devices it covers).
    pub fn hold(&self) {
        self.lock().held += 1;
    }

    /// Undo one [`hold`](Self::hold), putting `front` ahead of everything queued meanwhile.
    pub fn release(&self, front: Vec<Item>) {
        let mut ob = self.lock();
        ob.held = ob.held.saturating_sub(1);
        if ob.closing.is_none() {
            for item in front.into_iter().rev() {
                ob.items.push_front(item);
            }
        }
        drop(ob);
        self.notify.notify_one();
    }

    /// Drop queued live fixes, statuses and events of devices for which `keep` is false (the
    /// client may no longer see them); returns how many fixes were dropped.
    pub fn purge_fixes(&self, keep: impl Fn(Uuid) -> bool) -> usize {
        let mut ob = self.lock();
        let (mut purged, mut events) = (0, 0);
        ob.items.retain(|item| match item {
            Item::Fix { fix, .. } if !keep(fix.device) => {
                purged += 1;
                false
            }
            Item::Status(status) => keep(status.device),
            Item::Event(event) if !keep(event.device) => {
                events += 1;
                false
            }
            _ => true,
        });
        self.metrics
            .dropped
            .with_label_values(&["revoked"])
            .inc_by(purged as u64);
        self.metrics
            .events_dropped
            .with_label_values(&["revoked"])
            .inc_by(events);
        purged
    }

    /// Decide to close the connection (the first reason wins) and drop what is queued.
    pub fn close(&self, reason: CloseReason) {
        let mut ob = self.lock();
        self.close_locked(&mut ob, reason);
    }

    fn close_locked(&self, ob: &mut Outbox, reason: CloseReason) {
        if ob.closing.is_none() {
            ob.closing = Some(reason);
            let count = |wanted: fn(&Item) -> bool| ob.items.iter().filter(|i| wanted(i)).count();
            let dropped = count(|i| matches!(i, Item::Fix { .. }));
            let events = count(|i| matches!(i, Item::Event(_)));
            self.metrics
                .dropped
                .with_label_values(&["closing"])
                .inc_by(dropped as u64);
            self.metrics
                .events_dropped
                .with_label_values(&["closing"])
                .inc_by(events as u64);
            ob.items = VecDeque::new();
        }
        self.cancel.cancel();
    }

    /// The close decision, if one was made.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().closing
    }

    /// Queue length now.
    pub fn queued(&self) -> usize {
        self.lock().items.len()
    }

    /// Move up to `max` messages into `out`, assigning sequence numbers. `false` once closing.
    pub fn pop_batch(&self, max: usize, out: &mut Vec<Outgoing>) -> bool {
        let mut ob = self.lock();
        if ob.closing.is_some() {
            return false;
        }
        if ob.held > 0 || ob.items.is_empty() {
            return true;
        }
        if ob.coalesced_pending > 0 {
            out.push(Outgoing::Lagged(ob.coalesced_pending));
            ob.coalesced_pending = 0;
        }
        while out.len() < max {
            let Some(item) = ob.items.pop_front() else {
                break;
            };
            out.push(match item {
                Item::Fix { fix, skipped } => {
                    let seq = ob.seqs.entry(fix.device).or_insert(0);
                    *seq += 1 + skipped;
                    Outgoing::Fix { seq: *seq, fix }
                }
                Item::Status(status) => Outgoing::Status(status),
                Item::Event(event) => Outgoing::Event(event),
                Item::Text(text) => Outgoing::Text(text),
                Item::Snapshot {
                    id,
                    truncated,
                    fixes,
                } => {
                    let entries = fixes
                        .into_iter()
                        .map(|fix| {
                            let seq = ob.seqs.entry(fix.device).or_insert(0);
                            *seq += 1;
                            (*seq, fix)
                        })
                        .collect();
                    Outgoing::Snapshot {
                        id,
                        truncated,
                        entries,
                    }
                }
                Item::Ping => Outgoing::Ping,
            });
        }
        if ob.items.len() < self.limits.capacity {
            ob.behind_since = None;
        }
        true
    }

    /// Wait until something may be ready to pop.
    pub async fn wait(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gps_domain::fix::Fix;
    use prometheus::Registry;

    fn conn(capacity: usize, hard_limit: usize, grace: Duration) -> ConnShared {
        ConnShared::new(
            1,
            Uuid::nil(),
            QueueLimits {
                capacity,
                hard_limit,
                grace,
            },
            CancellationToken::new(),
            Metrics::new(&Registry::new()),
        )
    }

    fn fix(device: Uuid, t: i64) -> Arc<EncodedFix> {
        Arc::new(EncodedFix::new(
            device,
            "d",
            "json",
            0,
            &Fix::new(t, 1.0, 2.0),
            std::time::Instant::now(),
        ))
    }

    fn status(device: Uuid, t: i64) -> Arc<EncodedStatus> {
        Arc::new(EncodedStatus::from_live(&gps_domain::live::LiveStatus {
            device,
            uid: "d".into(),
            last_seen: t,
            status_time: Some(t),
            battery_pct: Some(t as f64),
            charging: None,
            motion: None,
            alarm: None,
            alarm_time: None,
            attributes: Default::default(),
        }))
    }

    fn event(device: Uuid, t: i64) -> Arc<EncodedEvent> {
        Arc::new(EncodedEvent::from_live(&gps_domain::live::LiveEvent {
            uid: "d".into(),
            event: gps_domain::events::Event {
                id: Uuid::new_v4(),
                tenant_id: Uuid::nil(),
                device_id: device,
                event_type: EventType::Overspeed,
                fix_time: t,
                lat: None,
                lon: None,
                geofence_id: None,
                details: serde_json::json!({}),
            },
        }))
    }

    fn drain(c: &ConnShared) -> Vec<Outgoing> {
        let mut out = Vec::new();
        assert!(c.pop_batch(usize::MAX, &mut out));
        out
    }

    #[test]
    fn sequences_count_per_device() {
        let c = conn(10, 20, Duration::from_secs(60));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for (d, t) in [(a, 1), (b, 1), (a, 2)] {
            c.push_fix(&fix(d, t));
        }
        let seqs: Vec<(Uuid, u64)> = drain(&c)
            .into_iter()
            .map(|o| match o {
                Outgoing::Fix { seq, fix } => (fix.device, seq),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, vec![(a, 1), (b, 1), (a, 2)]);
    }

    #[test]
    fn a_full_queue_keeps_the_newest_fix_per_device_and_shows_the_gap() {
        let c = conn(2, 4, Duration::from_secs(60));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        c.push_fix(&fix(a, 1));
        c.push_fix(&fix(b, 1));
        c.push_fix(&fix(a, 2)); // coalesced into a@1's slot
        c.push_fix(&fix(a, 3)); // again
        assert_eq!(c.queued(), 2);
        let out = drain(&c);
        assert!(matches!(out[0], Outgoing::Lagged(2)), "{out:?}");
        match &out[1] {
            Outgoing::Fix { seq, fix } => {
                assert_eq!((fix.device, fix.fix_time, *seq), (a, 3, 3));
            }
            other => panic!("{other:?}"),
        }
        c.push_fix(&fix(a, 4));
        match &drain(&c)[0] {
            Outgoing::Fix { seq, .. } => assert_eq!(*seq, 4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn statuses_coalesce_per_device_without_touching_fix_sequences_or_lagged() {
        let c = conn(2, 4, Duration::from_secs(60));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        c.push_fix(&fix(a, 1));
        c.push_status(&status(a, 5));
        c.push_status(&status(a, 7)); // behind: replaces a@5
        c.push_status(&status(a, 6)); // older than the queued one: folded, not kept
        c.push_status(&status(b, 1)); // another device: queued up to the hard limit
        assert_eq!(c.queued(), 3);
        let out = drain(&c);
        assert!(
            !out.iter().any(|o| matches!(o, Outgoing::Lagged(_))),
            "{out:?}"
        );
        let kept: Vec<(Uuid, i64)> = out
            .iter()
            .filter_map(|o| match o {
                Outgoing::Status(s) => Some((s.device, s.rank.0)),
                _ => None,
            })
            .collect();
        assert_eq!(kept, [(a, 7), (b, 1)]);
        assert!(matches!(&out[0], Outgoing::Fix { seq: 1, .. }), "{out:?}");
        c.push_fix(&fix(a, 2));
        assert!(
            matches!(&drain(&c)[0], Outgoing::Fix { seq: 2, .. }),
            "statuses take no seq"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn statuses_obey_the_hard_limit_and_the_grace_like_fixes() {
        let c = conn(1, 2, GRACE);
        c.push_status(&status(Uuid::new_v4(), 1));
        c.push_status(&status(Uuid::new_v4(), 1));
        assert_eq!(c.close_reason(), None);
        c.push_status(&status(Uuid::new_v4(), 1));
        assert_eq!(
            c.close_reason(),
            Some(CloseReason::TooSlow),
            "past the hard limit"
        );

        let c = conn(1, 100, GRACE);
        let d = Uuid::new_v4();
        c.push_status(&status(d, 1));
        c.push_status(&status(d, 2)); // over capacity: starts the clock
        tokio::time::advance(GRACE + Duration::from_millis(1)).await;
        c.push_status(&status(d, 3));
        assert_eq!(
            c.close_reason(),
            Some(CloseReason::TooSlow),
            "behind past the grace"
        );
    }

    #[test]
    fn events_past_the_capacity_are_queued_never_coalesced() {
        let c = conn(2, 10, Duration::from_secs(60));
        let d = Uuid::new_v4();
        c.push_fix(&fix(d, 1));
        c.push_fix(&fix(d, 2)); // at capacity
        for t in 3..8 {
            c.push_event(&event(d, t));
        }
        c.push_fix(&fix(d, 8)); // behind: coalesced into the fix at 2
        assert_eq!(c.queued(), 7);
        assert_eq!(c.close_reason(), None);
        let times: Vec<i64> = drain(&c)
            .iter()
            .filter_map(|o| match o {
                Outgoing::Event(e) => Some(e.message().to_owned()),
                _ => None,
            })
            .map(|m| {
                serde_json::from_str::<Value>(&m).unwrap()["event"]["fix_time"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(times, [3, 4, 5, 6, 7], "every event, in order");
    }

    #[tokio::test(start_paused = true)]
    async fn events_past_the_hard_limit_or_the_grace_close_the_client() {
        let c = conn(1, 3, GRACE);
        let d = Uuid::new_v4();
        for t in 0..3 {
            c.push_event(&event(d, t));
        }
        assert_eq!(c.close_reason(), None);
        c.push_event(&event(d, 3));
        assert_eq!(
            c.close_reason(),
            Some(CloseReason::TooSlow),
            "no silent drop"
        );

        let c = conn(1, 100, GRACE);
        c.push_event(&event(d, 1));
        c.push_event(&event(d, 2)); // over capacity: starts the clock
        tokio::time::advance(GRACE + Duration::from_millis(1)).await;
        c.push_event(&event(d, 3));
        assert_eq!(c.close_reason(), Some(CloseReason::TooSlow));
    }

    #[test]
    fn event_choice_round_trips_through_the_connection() {
        let c = conn(1, 2, Duration::from_secs(60));
        assert!(!c.wants_event(EventType::Alarm), "none by default");
        c.set_events([EventType::Alarm].into_iter().collect());
        assert!(c.wants_event(EventType::Alarm));
        assert!(!c.wants_event(EventType::Overspeed));
        c.set_events(EventKinds::NONE);
        assert!(c.events().is_empty());
    }

    #[test]
    fn purging_a_device_drops_its_queued_statuses_and_events_too() {
        let c = conn(10, 20, Duration::from_secs(60));
        let (keep, drop) = (Uuid::new_v4(), Uuid::new_v4());
        c.push_status(&status(keep, 1));
        c.push_status(&status(drop, 1));
        c.push_fix(&fix(drop, 1));
        c.push_event(&event(drop, 1));
        c.push_event(&event(keep, 1));
        assert_eq!(c.purge_fixes(|d| d == keep), 1);
        let out = drain(&c);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Outgoing::Status(s) if s.device == keep));
        assert!(matches!(&out[1], Outgoing::Event(e) if e.device == keep));
    }

    #[test]
    fn a_client_past_the_hard_limit_is_closed_and_its_queue_freed() {
        let c = conn(1, 2, Duration::from_secs(60));
        for _ in 0..3 {
            c.push_fix(&fix(Uuid::new_v4(), 1));
        }
        assert_eq!(c.close_reason(), Some(CloseReason::TooSlow));
        assert!(c.cancel.is_cancelled());
        assert_eq!(c.queued(), 0);
        let mut out = Vec::new();
        assert!(!c.pop_batch(10, &mut out));
    }

    const GRACE: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_client_behind_for_longer_than_the_grace_is_closed() {
        let c = conn(1, 100, GRACE);
        let d = Uuid::new_v4();
        c.push_fix(&fix(d, 1));
        c.push_fix(&fix(d, 2)); // over capacity: starts the clock
        tokio::time::advance(GRACE).await;
        c.push_fix(&fix(d, 3)); // behind for exactly the grace: still only coalesced
        assert_eq!(c.close_reason(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        c.push_fix(&fix(d, 4));
        assert_eq!(c.close_reason(), Some(CloseReason::TooSlow));
        assert!(c.cancel.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn catching_up_restarts_the_grace() {
        let c = conn(1, 100, GRACE);
        let d = Uuid::new_v4();
        c.push_fix(&fix(d, 1));
        c.push_fix(&fix(d, 2)); // over capacity: starts the clock
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        drain(&c); // back under capacity: the clock stops
        c.push_fix(&fix(d, 3));
        c.push_fix(&fix(d, 4)); // over capacity again: a new clock
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        c.push_fix(&fix(d, 5));
        assert_eq!(c.close_reason(), None, "behind twice, never for the grace");
        tokio::time::advance(Duration::from_secs(2)).await;
        c.push_fix(&fix(d, 6));
        assert_eq!(c.close_reason(), Some(CloseReason::TooSlow));
    }

    #[test]
    fn held_queues_release_their_snapshot_first() {
        let c = conn(10, 20, Duration::from_secs(60));
        let d = Uuid::new_v4();
        c.hold();
        c.push_fix(&fix(d, 5));
        assert!(drain(&c).is_empty(), "held");
        c.release(vec![Item::Snapshot {
            id: None,
            truncated: false,
            fixes: vec![fix(d, 4)],
        }]);
        let out = drain(&c);
        assert!(
            matches!(&out[0], Outgoing::Snapshot { entries, .. } if entries[0].0 == 1),
            "{out:?}"
        );
        assert!(matches!(&out[1], Outgoing::Fix { seq: 2, .. }), "{out:?}");
    }
}
