//! Events in the processor (issue 16): the pure engine `gps_domain::events` run over each
//! batch, written in the batch's transaction, and the offline timer.
//!
//! - [`EventEngine`] keeps what the fold needs between batches: the tenants' fences (a shared
//!   [`FenceCache`] that [`crate::fences::refresher`] keeps current off the batch path; a batch
//!   takes the indexes of its tenants as they stand), each device's profile (groups, own speed
//!   limit; looked at again every `PROCESSOR_FENCE_REFRESH_MS`) and each device's
//!   [`DeviceEventState`] as the last commit left it.
//!   [`EventEngine::prepare`] loads what a batch needs before its transaction;
//!   [`EventFold::run`] runs inside it (the writer calls it on every write path): take the
//!   cached state (or read the stored one), fold each device's reports in log order, write the
//!   states guarded by the stamp they were folded from (where a guard fails: lock, fold again
//!   from the stored state, upsert), then insert the events with their webhook deliveries. The cache learns the states only after the commit
//!   ([`EventEngine::learn`]) and forgets them when partitions move.
//! - **Fold order**: a device's records in log order, the fixes of one record by fix time and
//!   its status report among them by its time. The order never depends on where the log was
//!   cut into batches, so a replay folds exactly what the live run folded. A fix at or before
//!   the last one applied (a late fix, a redelivery, a duplicate) folds to nothing.
//! - [`check_offline_once`] is the offline timer's round ([`offline_timer`]): online devices not
//!   seen for longer than the rules' `offline_after_ms` (by the wall clock less how far the
//!   group is behind the log) get their `device_offline` event, in a transaction of their own,
//!   with their state rows locked `SKIP LOCKED`. Why it cannot fight the batch path's cache:
//!   the batch's guarded write takes the row lock and lands only on the row its fold started
//!   from (after the timer's commit it fails and the device folds again from the offline
//!   state), and the timer skips rows a batch holds (`docs/events.md`).

use crate::config::EventArgs;
use crate::fences::FenceCache;
use crate::metrics::Metrics;
use crate::plan::{BatchPlan, Report};
use crate::publisher::Publisher;
use gps_domain::events::{DeviceEventState, DeviceProfile, Event, EventRules, FenceIndex};
use gps_domain::fix::{now_millis, EpochMillis};
use gps_domain::live::LiveEvent;
use gps_domain::Fix;
use gps_runtime::service::CancellationToken;
use gps_store::events::{self as store, Deliveries, ProfileRow, StateStamp};
use gps_store::positions::StoredFix;
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// What a batch's fold wrote: the events that were new (in fix-time order per device), every
/// folded device's state as it now stands, and the devices reset on the way (replay rebuild).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventsWritten {
    /// Events newly inserted.
    pub new: Vec<Event>,
    /// The state of every device the batch folded.
    pub states: Vec<DeviceEventState>,
    /// Devices whose events and state were reset before the fold.
    pub reset: Vec<Uuid>,
}

/// The event evaluation's caches and settings (one per pipeline).
#[derive(Debug)]
pub struct EventEngine {
    pool: PgPool,
    rules: EventRules,
    refresh: Duration,
    deliveries: Deliveries,
    /// `Some` while a replay rebuilds events: the devices already reset.
    rebuild: Option<HashSet<Uuid>>,
    fence_cache: FenceCache,
    /// The fences of the batch in hand's tenants, taken from the cache in [`Self::prepare`].
    fences: HashMap<Uuid, Arc<FenceIndex>>,
    no_fences: FenceIndex,
    profiles: HashMap<Uuid, (ProfileRow, Instant)>,
    states: HashMap<Uuid, DeviceEventState>,
    capacity: usize,
}

impl EventEngine {
    /// An engine on `pool` with `args`' rules and refresh period, caching at most `capacity`
    /// device states (cleared when full: a miss costs one document read).
    pub fn new(pool: PgPool, args: &EventArgs, capacity: usize) -> Self {
        Self {
            pool,
            rules: args.rules.clone(),
            refresh: args.fence_refresh(),
            deliveries: Deliveries::Queue,
            rebuild: None,
            fence_cache: FenceCache::default(),
            fences: HashMap::new(),
            no_fences: FenceIndex::default(),
            profiles: HashMap::new(),
            states: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// For `processor replay`: queue no webhook deliveries, and with `rebuild` reset each
    /// device's events and state in the transaction of the first batch that meets it, so that
    /// a replay from the start of the log rebuilds them.
    pub fn replaying(&mut self, rebuild: bool) {
        self.deliveries = Deliveries::Skip;
        self.rebuild = rebuild.then(HashSet::new);
    }

    /// The fence cache, for its [`crate::fences::refresher`].
    pub fn fence_cache(&self) -> FenceCache {
        self.fence_cache.clone()
    }

    /// Load what the fold of `plan` needs and the caches do not hold fresh: the fences of its
    /// tenants as the cache holds them (loaded first after start), profiles of devices not
    /// loaded for a refresh period.
    pub async fn prepare(&mut self, plan: &BatchPlan) -> Result<(), sqlx::Error> {
        if plan.reports.is_empty() {
            return Ok(());
        }
        self.fence_cache.ensure_loaded(&self.pool).await?;
        self.fences.clear();
        for report in &plan.reports {
            if !self.fences.contains_key(&report.tenant) {
                if let Some(index) = self.fence_cache.get(report.tenant) {
                    self.fences.insert(report.tenant, index);
                }
            }
        }
        let now = Instant::now();
        let fresh = |at: Instant| now.duration_since(at) < self.refresh;
        let mut devices: Vec<Uuid> = plan
            .reports
            .iter()
            .map(|r| r.device)
            .filter(|d| !self.profiles.get(d).is_some_and(|p| fresh(p.1)))
            .collect();
        devices.sort_unstable();
        devices.dedup();
        if !devices.is_empty() {
            let mut found = store::device_profiles(&self.pool, &devices).await?;
            if self.profiles.len() + devices.len() > self.capacity {
                // Bounded like the states: what a batch needs is loaded again.
                self.profiles
                    .retain(|_, (_, at)| now.duration_since(*at) < self.refresh);
            }
            for device in devices {
                let profile = found.remove(&device).unwrap_or_default();
                self.profiles.insert(device, (profile, now));
            }
        }
        Ok(())
    }

    /// The fold of `plan`, to run inside the batch's transaction.
    pub fn fold<'a>(&'a self, plan: &'a BatchPlan) -> EventFold<'a> {
        EventFold {
            engine: self,
            rows: &plan.rows,
            reports: &plan.reports,
        }
    }

    /// The batch's transaction committed with `written`: cache the states it left.
    pub fn learn(&mut self, written: &EventsWritten) {
        if let Some(reset) = self.rebuild.as_mut() {
            reset.extend(written.reset.iter().copied());
        }
        if self.states.len() + written.states.len() > self.capacity {
            self.states.clear();
        }
        for state in &written.states {
            self.states.insert(state.device_id, state.clone());
        }
    }

    /// Forget cached states (partitions moved: another instance may have folded these devices
    /// since). The stamps would catch that too; this keeps the cache to the devices we own.
    pub fn forget_devices(&mut self) {
        self.states.clear();
    }

    fn fences_of(&self, tenant: Uuid) -> &FenceIndex {
        self.fences
            .get(&tenant)
            .map_or(&self.no_fences, |f| f.as_ref())
    }
}

/// The fold of one batch, borrowed from the engine and the plan; [`EventFold::run`] may run
/// more than once (a write path that rolls back and retries another way), and changes nothing
/// outside the transaction it is given.
#[derive(Debug)]
pub struct EventFold<'a> {
    engine: &'a EventEngine,
    rows: &'a [StoredFix],
    reports: &'a [Report],
}

impl EventFold<'_> {
    /// Lock, fold, insert the events (and their webhook deliveries), upsert the states, all on
    /// `conn` (the batch's transaction).
    pub async fn run(&self, conn: &mut PgConnection) -> Result<EventsWritten, sqlx::Error> {
        let engine = self.engine;
        let mut order: Vec<Uuid> = Vec::new();
        let mut by_device: HashMap<Uuid, Vec<&Report>> = HashMap::new();
        for report in self.reports {
            by_device
                .entry(report.device)
                .or_insert_with(|| {
                    order.push(report.device);
                    Vec::new()
                })
                .push(report);
        }
        if order.is_empty() {
            return Ok(EventsWritten::default());
        }
        let reset: Vec<Uuid> = match &engine.rebuild {
            Some(done) => order
                .iter()
                .filter(|d| !done.contains(d))
                .copied()
                .collect(),
            None => Vec::new(),
        };
        store::reset_devices(conn, &reset).await?;
        let reset_now: HashSet<Uuid> = reset.iter().copied().collect();
        // The cached state where there is one (not for a device reset just now); the stored
        // one, read without a lock, for the others. The guarded write checks both.
        let cached = |device: &Uuid| {
            engine
                .states
                .get(device)
                .filter(|_| !reset_now.contains(device))
        };
        let unknown: Vec<Uuid> = order
            .iter()
            .filter(|device| cached(device).is_none())
            .copied()
            .collect();
        let mut read = store::read_states(conn, &unknown).await?;
        let mut folded: Vec<(Option<StateStamp>, DeviceEventState, Vec<Event>, bool)> = order
            .iter()
            .map(|device| {
                let before = match cached(device) {
                    Some(state) => Some(state.clone()),
                    None => read.remove(device),
                };
                let expected = before.as_ref().map(StateStamp::of);
                let (state, events, changed) = self.fold_device(*device, &by_device, before);
                (expected, state, events, changed)
            })
            .collect();
        let guarded: Vec<store::GuardedState<'_>> = folded
            .iter()
            .map(|(expected, state, _, changed)| store::GuardedState {
                expected: *expected,
                state,
                changed: *changed,
            })
            .collect();
        let stale = store::write_states_guarded(conn, &guarded).await?;
        if !stale.is_empty() {
            // Rare: the offline timer (or another instance) wrote these rows since the state
            // was cached or read. Lock them, fold again from what is stored, write plainly.
            tracing::debug!(
                devices = stale.len(),
                "event state changed under the batch; folded again"
            );
            let mut locked = store::lock_states(conn, &stale).await?;
            let stale: HashSet<Uuid> = stale.into_iter().collect();
            let mut rewrite = Vec::new();
            for entry in folded.iter_mut().filter(|f| stale.contains(&f.1.device_id)) {
                let device = entry.1.device_id;
                let (state, events, _) =
                    self.fold_device(device, &by_device, locked.remove(&device));
                rewrite.push(state.clone());
                entry.1 = state;
                entry.2 = events;
            }
            store::upsert_states(conn, &rewrite).await?;
        }
        let mut events = Vec::new();
        let mut states = Vec::with_capacity(folded.len());
        for (_, state, device_events, _) in folded {
            events.extend(device_events);
            states.push(state);
        }
        let new = store::insert_events(conn, &events, engine.deliveries).await?;
        Ok(EventsWritten { new, states, reset })
    }
}

impl EventFold<'_> {
    /// Fold `device`'s reports of the batch into `before` (a new state when `None`): the state
    /// it leaves, the events raised, and whether the state changed.
    fn fold_device(
        &self,
        device: Uuid,
        by_device: &HashMap<Uuid, Vec<&Report>>,
        before: Option<DeviceEventState>,
    ) -> (DeviceEventState, Vec<Event>, bool) {
        let engine = self.engine;
        let reports = &by_device[&device];
        let tenant = reports[0].tenant;
        let before = before.unwrap_or_else(|| DeviceEventState::new(tenant, device));
        let mut state = before.clone();
        let (groups, speed_limit_mps) = match engine.profiles.get(&device) {
            Some((profile, _)) => (profile.groups.as_slice(), profile.speed_limit_mps),
            None => (&[][..], None),
        };
        let profile = DeviceProfile {
            groups,
            speed_limit_mps,
        };
        let fences = engine.fences_of(tenant);
        let mut events = Vec::new();
        for report in reports {
            events.extend(fold_report(
                &mut state,
                report,
                self.rows,
                fences,
                &profile,
                &engine.rules,
            ));
        }
        let changed = state != before;
        (state, events, changed)
    }
}

/// Fold one record's fixes (by fix time; a record's fixes may come in any order) and its
/// status report (placed among them by its time, after fixes of the same time) into `state`.
pub fn fold_report(
    state: &mut DeviceEventState,
    report: &Report,
    rows: &[StoredFix],
    fences: &FenceIndex,
    profile: &DeviceProfile<'_>,
    rules: &EventRules,
) -> Vec<Event> {
    let mut fixes: Vec<(&Fix, EpochMillis)> = rows[report.rows.clone()]
        .iter()
        .map(|r| (&r.fix, r.received))
        .collect();
    fixes.sort_by_key(|(f, _)| f.fix_time);
    let status_at = report
        .status
        .as_ref()
        .map(|s| fixes.partition_point(|(f, _)| f.fix_time <= s.time));
    let mut events = Vec::new();
    for (i, (fix, received)) in fixes.iter().enumerate() {
        if status_at == Some(i) {
            if let Some(status) = &report.status {
                events.extend(state.apply_status_received(status, report.received, rules));
            }
        }
        events.extend(state.apply_received(fix, *received, fences, profile, rules));
    }
    if status_at == Some(fixes.len()) {
        if let Some(status) = &report.status {
            events.extend(state.apply_status_received(status, report.received, rules));
        }
    }
    events
}

/// Devices one offline round handles per transaction.
const OFFLINE_CHUNK: i64 = 500;

/// One round of the offline timer at `now`: every online device whose last report is older
/// than `timeout_ms` gets its `device_offline` event (dated last seen + timeout) and its state
/// written offline, in transactions of `OFFLINE_CHUNK` (500) devices (with their webhook
/// deliveries); `on_commit` receives each transaction's new events once it committed. Returns
/// how many events were new.
pub async fn check_offline_once(
    pool: &PgPool,
    timeout_ms: i64,
    now: EpochMillis,
    mut on_commit: impl FnMut(Vec<LiveEvent>),
) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let overdue =
            store::lock_overdue(&mut tx, now.saturating_sub(timeout_ms), OFFLINE_CHUNK).await?;
        let more = overdue.len() as i64 == OFFLINE_CHUNK;
        let mut events = Vec::new();
        let mut states = Vec::new();
        let mut uids = HashMap::new();
        for (mut state, uid) in overdue {
            if let Some(event) = state.check_offline(now, timeout_ms) {
                events.push(event);
            }
            uids.insert(state.device_id, uid.unwrap_or_default());
            states.push(state);
        }
        let new = store::insert_events(&mut tx, &events, Deliveries::Queue).await?;
        store::upsert_states(&mut tx, &states).await?;
        tx.commit().await?;
        total += new.len();
        let live: Vec<LiveEvent> = new
            .into_iter()
            .map(|event| LiveEvent {
                uid: uids.get(&event.device_id).cloned().unwrap_or_default(),
                event,
            })
            .collect();
        if !live.is_empty() {
            on_commit(live);
        }
        if !more {
            return Ok(total);
        }
    }
}

/// The offline timer: a round ([`check_offline_once`]) every `interval` (the first one
/// interval after the start, once the watchdog measured the group) until `stop`; its new
/// events go live and to the events topic through `publisher` after each commit. A failed
/// round is logged and tried again at the next tick.
///
/// The round's "now" is the wall clock minus `behind()`, how far the group is behind the log
/// (the watchdog's age of the oldest record not yet stored): a device's next report may still
/// wait in the log, and every record produced before that point is stored. So a processor
/// catching up after an outage does not declare offline the devices whose fixes it has not
/// read yet; caught up, it is the wall clock.
pub async fn offline_timer(
    pool: PgPool,
    timeout_ms: i64,
    interval: Duration,
    behind: impl Fn() -> Duration + Send + 'static,
    publisher: Publisher,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let lag_ms = i64::try_from(behind().as_millis()).unwrap_or(i64::MAX);
        let now = now_millis().saturating_sub(lag_ms);
        let round = check_offline_once(&pool, timeout_ms, now, |events| {
            metrics.count_events(events.iter().map(|e| &e.event));
            publisher.publish_events(&events);
        });
        match round.await {
            Ok(0) => {}
            Ok(count) => tracing::info!(devices = count, "devices went offline"),
            Err(error) => tracing::warn!(%error, "offline check failed; next tick retries"),
        }
    }
}

/// How far the group is behind the log, from the watchdog's gauge in `registry`
/// (`gps_processor_oldest_unstored_age_seconds`; zero before its first measurement).
pub fn unstored_age(registry: &prometheus::Registry) -> Duration {
    registry
        .gather()
        .iter()
        .find(|family| family.name() == "gps_processor_oldest_unstored_age_seconds")
        .and_then(|family| family.get_metric().first().map(|m| m.get_gauge().value()))
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
        .map_or(Duration::ZERO, Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gps_domain::events::EventType;
    use gps_domain::fix::Protocol;
    use gps_domain::DeviceStatus;

    const T0: EpochMillis = 1_790_000_000_000;

    fn row(device: Uuid, t: EpochMillis, lat: f64, speed: Option<f64>) -> StoredFix {
        let mut fix = Fix::new(t, lat, 13.4);
        fix.speed_mps = speed;
        StoredFix {
            tenant: Uuid::nil(),
            device,
            uid: "d".into(),
            protocol: Protocol::Json,
            received: t,
            fix,
        }
    }

    fn report(device: Uuid, rows: std::ops::Range<usize>, status: Option<DeviceStatus>) -> Report {
        Report {
            tenant: Uuid::nil(),
            device,
            uid: "d".into(),
            received: status.as_ref().map_or(0, |s| s.time),
            rows,
            status,
        }
    }

    fn fold_all(reports: &[Report], rows: &[StoredFix]) -> (DeviceEventState, Vec<Event>) {
        let device = reports[0].device;
        let mut state = DeviceEventState::new(Uuid::nil(), device);
        let profile = DeviceProfile {
            groups: &[],
            speed_limit_mps: Some(20.0),
        };
        let mut events = Vec::new();
        for r in reports {
            events.extend(fold_report(
                &mut state,
                r,
                rows,
                &FenceIndex::default(),
                &profile,
                &EventRules::default(),
            ));
        }
        (state, events)
    }

    fn types(events: &[Event]) -> Vec<EventType> {
        events.iter().map(|e| e.event_type).collect()
    }

    #[test]
    fn a_record_is_folded_in_fix_time_order_with_its_status_in_place() {
        let device = Uuid::from_u128(9);
        // One record, fixes out of order: the fold sorts them, so the fast fix comes last.
        let rows = vec![
            row(device, T0 + 2_000, 52.0, Some(30.0)),
            row(device, T0, 52.0, Some(0.0)),
            row(device, T0 + 1_000, 52.0, Some(0.0)),
        ];
        let mut status = DeviceStatus::new(T0 + 1_500);
        status.alarm = Some("sos".into());
        let (state, events) = fold_all(&[report(device, 0..3, Some(status))], &rows);
        assert_eq!(
            types(&events),
            [
                EventType::DeviceOnline,
                EventType::Alarm,
                EventType::Overspeed,
                EventType::MotionStart
            ]
        );
        let alarm = &events[1];
        assert_eq!(alarm.fix_time, T0 + 1_500);
        assert_eq!(state.last_fix.map(|f| f.t), Some(T0 + 2_000));
    }

    #[test]
    fn a_late_record_after_a_newer_one_raises_nothing_however_the_log_is_cut() {
        let device = Uuid::from_u128(9);
        let rows = vec![
            row(device, T0 + 10_000, 52.0, Some(0.0)),
            // Arrives later in the log but is older, and fast: late, so nothing.
            row(device, T0 + 5_000, 52.0, Some(40.0)),
        ];
        let together = fold_all(
            &[report(device, 0..1, None), report(device, 1..2, None)],
            &rows,
        );
        assert_eq!(types(&together.1), [EventType::DeviceOnline]);
        // The same two records in two batches give the same events and state.
        let (mut state, mut events) = fold_all(&[report(device, 0..1, None)], &rows);
        events.extend(fold_report(
            &mut state,
            &report(device, 1..2, None),
            &rows,
            &FenceIndex::default(),
            &DeviceProfile {
                groups: &[],
                speed_limit_mps: Some(20.0),
            },
            &EventRules::default(),
        ));
        assert_eq!((state, events), together);
    }

    #[test]
    fn the_timer_reads_how_far_the_group_is_behind_from_the_watchdogs_gauge() {
        let registry = prometheus::Registry::new();
        assert_eq!(unstored_age(&registry), Duration::ZERO, "not measured yet");
        let gauge =
            prometheus::Gauge::new("gps_processor_oldest_unstored_age_seconds", "age").unwrap();
        registry.register(Box::new(gauge.clone())).unwrap();
        gauge.set(2.5);
        assert_eq!(unstored_age(&registry), Duration::from_millis(2_500));
        gauge.set(0.0);
        assert_eq!(unstored_age(&registry), Duration::ZERO);
    }

    #[test]
    fn a_redelivered_record_folds_to_nothing() {
        let device = Uuid::from_u128(9);
        let rows = vec![
            row(device, T0, 52.0, Some(30.0)),
            row(device, T0, 52.0, Some(30.0)),
        ];
        let (_, events) = fold_all(
            &[report(device, 0..1, None), report(device, 1..2, None)],
            &rows,
        );
        assert_eq!(
            types(&events),
            [
                EventType::DeviceOnline,
                EventType::Overspeed,
                EventType::MotionStart
            ]
        );
    }
}
