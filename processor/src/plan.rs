//! The processor's pure core: what to do with one batch of records, decided without I/O.
//!
//! [`classify`] takes the decoded records, the in-memory caches (what is known to be stored,
//! each device's speed-check [`Track`]), each tenant's validation thresholds and the time, and
//! returns a [`BatchPlan`]: the rows to write, the reject records to quarantine, the
//! duplicates dropped on the way, and each device's track after the batch. Every fix of the
//! batch lands in exactly one of those three. The speed rule (one planted outlier cannot become
//! the reference that condemns the real track) is `gps_domain::validation::Track::judge`.
//! Loading the thresholds and the devices' stored newest fixes happens before (`pipeline`),
//! writing and quarantining after; only once the database has committed does
//! [`BatchPlan::settle`] teach the caches, so a failed batch can be classified again from the
//! same state.
//!
//! Two kinds of report are not positions to trust:
//! - a fix the device itself called invalid (`Fix::valid == false`) passes the per-fix rules and
//!   is stored as history, but never touches the speed check's track: it is never the latest or
//!   live position, so it must not become the reference either (the writer and the publisher
//!   leave it out of `last_positions` and the live stream);
//! - a device status report ([`gps_domain::DeviceStatus`], with or without fixes) is made fit for
//!   storage ([`sanitize_status`]) and folded per device into one [`StatusChange`]: the newest
//!   report, and separately the newest alarm. Both are max-registers (newer replaces, first wins
//!   on a tie), the same rule the writer applies against the stored row, so cutting the log
//!   into batches differently gives the same stored status.

use crate::dedupe::{DedupeCache, DeviceCache};
use crate::events::EventsWritten;
use gps_domain::fix::EpochMillis;
use gps_domain::live::{LiveEvent, LiveStatus};
use gps_domain::reject::{RejectReason, RejectRecord, SourcePosition};
use gps_domain::validation::{validate, Thresholds, Track, MIN_FIX_TIME};
use gps_domain::{DeviceStatus, FixEnvelope};
use gps_store::positions::{FixKey, StoredFix};
use gps_store::status::StatusRow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// A record of the fixes topic, decoded (or not) as it was consumed.
#[derive(Debug)]
pub struct InRecord {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The envelope, or why it could not be read (with the raw payload).
    pub body: Result<FixEnvelope, BadRecord>,
}

/// A record that is not a readable envelope.
#[derive(Debug)]
pub struct BadRecord {
    /// The reason code.
    pub reason: RejectReason,
    /// The decoder's message.
    pub detail: String,
    /// The raw payload.
    pub raw: Vec<u8>,
}

impl InRecord {
    /// Decode a consumed payload.
    pub fn decode(partition: i32, offset: i64, payload: Option<&[u8]>) -> Self {
        let body = match payload {
            None => Err(BadRecord {
                reason: RejectReason::MalformedRecord,
                detail: "record has no value".into(),
                raw: Vec::new(),
            }),
            Some(bytes) => FixEnvelope::decode(bytes).map_err(|e| BadRecord {
                reason: RejectReason::for_envelope_error(&e),
                detail: e.to_string(),
                raw: bytes.to_vec(),
            }),
        };
        Self {
            partition,
            offset,
            body,
        }
    }

    /// Fixes carried (1 for an unreadable record, which still costs a reject, and for a
    /// status report without fixes, which still costs a write).
    pub fn weight(&self) -> usize {
        match &self.body {
            Ok(envelope) => envelope.fixes.len().max(1),
            Err(_) => 1,
        }
    }
}

/// The in-memory state a batch is judged against; only [`BatchPlan::settle`] changes it.
#[derive(Debug)]
pub struct Caches {
    /// Keys known to be stored.
    pub dedupe: DedupeCache,
    /// Each device's speed-check state, as far as loaded.
    pub devices: DeviceCache,
}

impl Caches {
    /// Empty caches of these capacities.
    pub fn new(dedupe_capacity: usize, device_capacity: usize) -> Self {
        Self {
            dedupe: DedupeCache::new(dedupe_capacity),
            devices: DeviceCache::new(device_capacity),
        }
    }
}

/// Duplicates dropped, by where they were recognised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Duplicates {
    /// Known to be stored (the dedupe cache).
    pub memory: usize,
    /// Repeated inside the batch.
    pub batch: usize,
    /// Stored already, found by the database (`ON CONFLICT DO NOTHING`).
    pub database: usize,
}

impl Duplicates {
    /// All of them.
    pub fn total(&self) -> usize {
        self.memory + self.batch + self.database
    }
}

/// Longest alarm name kept, in characters (devices name alarms in a word: `sos`, `lowBattery`).
pub const MAX_ALARM_CHARS: usize = 64;

/// What one batch says about one device's status: its newest status report and its newest
/// alarm (which may come from an older report of the batch than the newest).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// Tenant of the device.
    pub tenant: Uuid,
    /// Device id.
    pub device: Uuid,
    /// The device's own identifier (for the live message).
    pub uid: Arc<str>,
    /// The newest report, made fit for storage ([`sanitize_status`]); its own `alarm` is not
    /// used (see `alarm`).
    pub report: DeviceStatus,
    /// The newest alarm of the batch and the time of the report that raised it.
    pub alarm: Option<(String, EpochMillis)>,
}

impl StatusChange {
    fn new(tenant: Uuid, device: Uuid, uid: Arc<str>, report: DeviceStatus) -> Self {
        let alarm = report.alarm.clone().map(|a| (a, report.time));
        Self {
            tenant,
            device,
            uid,
            report,
            alarm,
        }
    }

    /// Fold a later-arriving report in: the newer report replaces the older (the first wins a
    /// tie), and the newer alarm replaces the older, each on its own.
    fn fold(&mut self, report: DeviceStatus) {
        if let Some(alarm) = &report.alarm {
            if self.alarm.as_ref().is_none_or(|(_, at)| report.time > *at) {
                self.alarm = Some((alarm.clone(), report.time));
            }
        }
        if report.time > self.report.time {
            self.report = report;
        }
    }
}

/// When a device was last heard from through the fixes of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Tenant of the device.
    pub tenant: Uuid,
    /// Device id.
    pub device: Uuid,
    /// The newest stored fix's time, but never after its receive time (a report cannot be made
    /// after it arrived; fix times may run ahead by the clock-skew tolerance).
    pub at: EpochMillis,
}

/// A status report made fit for storage, received at `rx`: a time after `rx` (a clock ahead) or
/// before 2000 (no clock) becomes `rx`; a battery level that is not a number in 0..=100 is
/// dropped; the alarm loses NUL characters and surrounding space and is cut to
/// [`MAX_ALARM_CHARS`] (an empty one is none); attributes holding NUL characters (which
/// PostgreSQL text and jsonb refuse) are dropped. Never panics; the result always fits the
/// `device_status` row.
pub fn sanitize_status(status: &DeviceStatus, rx: EpochMillis) -> DeviceStatus {
    let time = if status.time > rx || status.time < MIN_FIX_TIME {
        rx
    } else {
        status.time
    };
    let battery_pct = status
        .battery_pct
        .filter(|b| b.is_finite() && (0.0..=100.0).contains(b));
    let alarm = status
        .alarm
        .as_deref()
        .map(|a| {
            a.chars()
                .filter(|c| *c != '\0')
                .collect::<String>()
                .trim()
                .chars()
                .take(MAX_ALARM_CHARS)
                .collect::<String>()
        })
        .filter(|a| !a.is_empty());
    let attributes: BTreeMap<String, serde_json::Value> = status
        .attributes
        .iter()
        .filter(|(key, value)| !key.contains('\0') && !holds_nul(value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    DeviceStatus {
        time,
        battery_pct,
        charging: status.charging,
        alarm,
        motion: status.motion,
        attributes,
    }
}

fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// What to do with one batch.
#[derive(Debug, Default)]
pub struct BatchPlan {
    /// Fixes to write, distinct keys, in arrival order (valid and invalid ones: only the valid
    /// ones may become `last_positions` or go live).
    pub rows: Vec<StoredFix>,
    /// One reject record per refused fix and per unreadable record, in arrival order.
    pub rejects: Vec<RejectRecord>,
    /// Duplicates dropped before the database (`database` is still 0).
    pub duplicates: Duplicates,
    /// Each device's speed-check state after this batch (devices with a valid fix judged in it).
    pub tracks: HashMap<Uuid, Track>,
    /// One status change per device with a status report in the batch, in order of first
    /// appearance.
    pub statuses: Vec<StatusChange>,
    /// When each device with a row in [`BatchPlan::rows`] was last heard from through them.
    pub seen: Vec<Seen>,
    /// What each record contributed, in log order: the input of the event fold
    /// (`crate::events`), which must not depend on where the log was cut into batches.
    pub reports: Vec<Report>,
}

/// One record's contribution to the event fold: the rows it added to [`BatchPlan::rows`] (a
/// contiguous range, in the record's order) and its status report, made fit for storage.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Tenant of the device.
    pub tenant: Uuid,
    /// Device id.
    pub device: Uuid,
    /// The device's own identifier (for the live message).
    pub uid: Arc<str>,
    /// Its accepted fixes: indices into [`BatchPlan::rows`].
    pub rows: std::ops::Range<usize>,
    /// Its status report ([`sanitize_status`]d).
    pub status: Option<DeviceStatus>,
    /// When ingest received the record (the envelope's `rx`): liveness follows it.
    pub received: EpochMillis,
}

/// What the database committed for a batch: the fix keys that were new, and the status rows it
/// moved forward (as they are now).
#[derive(Debug, Default)]
pub struct Written {
    /// Keys of the rows newly stored.
    pub inserted: HashSet<FixKey>,
    /// Status rows the batch changed (status or alarm moved forward).
    pub statuses: Vec<StatusRow>,
    /// The events the batch raised that were new, and the event states it left.
    pub events: EventsWritten,
}

/// What one batch did, once committed.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Newly stored fixes (not duplicates), for the live publish (which skips invalid ones).
    pub stored: Vec<StoredFix>,
    /// Device statuses the batch changed, with their tenants, for the live publish.
    pub statuses: Vec<(Uuid, LiveStatus)>,
    /// Fixes (and unreadable records) quarantined, by reason.
    pub rejected: HashMap<RejectReason, usize>,
    /// Duplicates dropped.
    pub duplicates: Duplicates,
    /// Events newly stored, in fix-time order per device, for the live publish and the events
    /// topic.
    pub events: Vec<LiveEvent>,
}

/// Judge every fix of `records`, in order: validate it against its tenant's thresholds (the
/// default for a tenant missing from `thresholds`) and, when the device called it valid, the
/// device's track (as this batch left it, else the cache's), and drop what is known to be stored
/// or repeated in the batch. Fold each device's status reports into one [`StatusChange`] and
/// note when each device with a stored fix was last heard from. `topic` and `now` go into the
/// reject records.
pub fn classify(
    records: &[InRecord],
    caches: &Caches,
    thresholds: &HashMap<Uuid, Thresholds>,
    topic: &str,
    now: EpochMillis,
) -> BatchPlan {
    // Sized up front: a `StoredFix` is ~230 bytes, so every reallocation of the rows moves
    // them all again, and every growth of the key set rehashes it (perf showed both).
    let fixes: usize = records.iter().map(InRecord::weight).sum();
    let mut plan = BatchPlan {
        rows: Vec::with_capacity(fixes),
        ..BatchPlan::default()
    };
    let mut batch_keys: HashSet<FixKey> = HashSet::with_capacity(fixes);
    let mut status_of: HashMap<Uuid, usize> = HashMap::new();
    let mut seen_of: HashMap<Uuid, usize> = HashMap::new();
    for record in records {
        let source = || SourcePosition {
            topic: topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
        };
        let envelope = match &record.body {
            Ok(envelope) => envelope,
            Err(bad) => {
                plan.rejects.push(RejectRecord::for_record(
                    &bad.raw,
                    bad.reason,
                    bad.detail.clone(),
                    source(),
                    now,
                ));
                continue;
            }
        };
        let uid: Arc<str> = Arc::from(envelope.uid.as_str());
        let first_row = plan.rows.len();
        let limits = thresholds
            .get(&envelope.tenant)
            .copied()
            .unwrap_or_default();
        for (index, fix) in envelope.fixes.iter().enumerate() {
            let key = (envelope.device, fix.fix_time);
            if caches.dedupe.contains(&key) {
                plan.duplicates.memory += 1;
                continue;
            }
            if batch_keys.contains(&key) {
                plan.duplicates.batch += 1;
                continue;
            }
            let verdict = if fix.valid {
                plan.tracks
                    .entry(envelope.device)
                    .or_insert_with(|| caches.devices.track(&envelope.device).unwrap_or_default())
                    .judge(fix, envelope.rx, &limits)
            } else {
                // Never the reference, so the speed check has nothing to judge it against.
                validate(fix, envelope.rx, None, &limits)
            };
            if let Err(rejection) = verdict {
                plan.rejects.push(RejectRecord::for_fix(
                    envelope,
                    index,
                    fix,
                    rejection.reason,
                    rejection.detail,
                    source(),
                    now,
                ));
                continue;
            }
            batch_keys.insert(key);
            let at = fix.fix_time.min(envelope.rx);
            match seen_of.get(&envelope.device) {
                Some(&i) => plan.seen[i].at = plan.seen[i].at.max(at),
                None => {
                    seen_of.insert(envelope.device, plan.seen.len());
                    plan.seen.push(Seen {
                        tenant: envelope.tenant,
                        device: envelope.device,
                        at,
                    });
                }
            }
            plan.rows.push(StoredFix {
                tenant: envelope.tenant,
                device: envelope.device,
                uid: uid.clone(),
                protocol: envelope.proto,
                received: envelope.rx,
                fix: fix.clone(),
            });
        }
        let mut reported = None;
        if let Some(status) = &envelope.status {
            let report = sanitize_status(status, envelope.rx);
            reported = Some(report.clone());
            match status_of.get(&envelope.device) {
                Some(&i) => plan.statuses[i].fold(report),
                None => {
                    status_of.insert(envelope.device, plan.statuses.len());
                    plan.statuses.push(StatusChange::new(
                        envelope.tenant,
                        envelope.device,
                        uid.clone(),
                        report,
                    ));
                }
            }
        }
        if plan.rows.len() > first_row || reported.is_some() {
            plan.reports.push(Report {
                tenant: envelope.tenant,
                device: envelope.device,
                uid,
                rows: first_row..plan.rows.len(),
                status: reported,
                received: envelope.rx,
            });
        }
    }
    plan
}

impl BatchPlan {
    /// Rejects by reason code.
    pub fn rejected(&self) -> HashMap<RejectReason, usize> {
        let mut counts = HashMap::new();
        for reject in &self.rejects {
            *counts.entry(reject.reason).or_default() += 1;
        }
        counts
    }

    /// The database committed [`BatchPlan::rows`] and statuses as `written` says: remember
    /// every row as stored, keep each device's track as the batch left it, and say what the
    /// batch did.
    pub fn settle(self, caches: &mut Caches, written: &Written) -> BatchOutcome {
        let inserted = &written.inserted;
        let rejected = self.rejected();
        for row in &self.rows {
            caches.dedupe.insert(row.key());
        }
        for (device, track) in self.tracks {
            caches.devices.put(device, track);
        }
        let reporters: HashMap<Uuid, &str> =
            self.reports.iter().map(|r| (r.device, &*r.uid)).collect();
        let events = written
            .events
            .new
            .iter()
            .filter_map(|event| {
                Some(LiveEvent {
                    uid: (*reporters.get(&event.device_id)?).to_owned(),
                    event: event.clone(),
                })
            })
            .collect();
        let uids: HashMap<Uuid, &str> = self.statuses.iter().map(|s| (s.device, &*s.uid)).collect();
        let statuses = written
            .statuses
            .iter()
            .filter_map(|row| Some((row.tenant_id, row.live(uids.get(&row.device_id)?))))
            .collect();
        let offered = self.rows.len();
        // In place: `retain` moves no row while every row is kept (the usual case: a direct
        // COPY stores them all), where collecting into a new Vec moved each ~230-byte row.
        let mut stored = self.rows;
        stored.retain(|r| inserted.contains(&r.key()));
        BatchOutcome {
            duplicates: Duplicates {
                database: offered - stored.len(),
                ..self.duplicates
            },
            stored,
            statuses,
            rejected,
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gps_domain::fix::{Fix, Protocol};
    use gps_domain::validation::{PreviousFix, RELOCATION_FIXES};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const RX: EpochMillis = 1_790_000_000_000;
    const TOPIC: &str = "gps.fixes";

    fn record(offset: i64, device: Uuid, fixes: Vec<Fix>) -> InRecord {
        InRecord {
            partition: 0,
            offset,
            body: Ok(FixEnvelope::new(
                Uuid::from_u128(1),
                device,
                "d",
                Protocol::Json,
                RX,
                fixes,
            )),
        }
    }

    /// A fix `i` seconds into a slow walk (well under any speed limit).
    fn walk(i: i64) -> Fix {
        Fix::new(RX - 600_000 + i * 1000, 52.5 + i as f64 * 1e-5, 13.4)
    }

    fn caches() -> Caches {
        Caches::new(10_000, 10_000)
    }

    fn plan(records: &[InRecord], caches: &Caches) -> BatchPlan {
        classify(records, caches, &HashMap::new(), TOPIC, RX)
    }

    /// What the database would answer: every row new, except those in `stored`.
    fn commit(plan: BatchPlan, caches: &mut Caches, stored: &mut HashSet<FixKey>) -> BatchOutcome {
        let inserted: HashSet<FixKey> = plan
            .rows
            .iter()
            .map(StoredFix::key)
            .filter(|k| stored.insert(*k))
            .collect();
        let written = Written {
            inserted,
            ..Written::default()
        };
        plan.settle(caches, &written)
    }

    #[test]
    fn rows_carry_the_envelope_and_rejects_their_source() {
        let device = Uuid::from_u128(9);
        let records = vec![
            record(4, device, vec![walk(1), Fix::new(RX, 0.0, 0.0), walk(1)]),
            InRecord::decode(0, 5, Some(b"\x00garbage")),
            InRecord::decode(0, 6, None),
        ];
        let plan = plan(&records, &caches());
        assert_eq!(plan.rows.len(), 1);
        let row = &plan.rows[0];
        assert_eq!(
            (
                row.tenant,
                row.device,
                &*row.uid,
                row.protocol,
                row.received
            ),
            (Uuid::from_u128(1), device, "d", Protocol::Json, RX)
        );
        assert_eq!(plan.duplicates.batch, 1);
        let reasons: Vec<RejectReason> = plan.rejects.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [
                RejectReason::NullIsland,
                RejectReason::MalformedRecord,
                RejectReason::MalformedRecord
            ]
        );
        let offsets: Vec<i64> = plan.rejects.iter().map(|r| r.source.offset).collect();
        assert_eq!(offsets, [4, 5, 6]);
        assert_eq!(plan.rejects[0].index, Some(1));
        assert!(plan.rejects.iter().all(|r| r.source.topic == TOPIC));
        assert_eq!(plan.rejected()[&RejectReason::MalformedRecord], 2);
    }

    #[test]
    fn tenant_thresholds_apply_and_a_missing_tenant_gets_the_default() {
        let device = Uuid::from_u128(9);
        let mut poor = walk(1);
        poor.accuracy_m = Some(500.0);
        let records = vec![record(0, device, vec![poor])];
        let strict = Thresholds {
            max_accuracy_m: 100.0,
            ..Thresholds::default()
        };
        let by_tenant = HashMap::from([(Uuid::from_u128(1), strict)]);
        let refused = classify(&records, &caches(), &by_tenant, TOPIC, RX);
        assert_eq!(refused.rejects[0].reason, RejectReason::PoorAccuracy);
        assert!(plan(&records, &caches()).rejects.is_empty());
    }

    #[test]
    fn the_speed_check_uses_the_batch_track_then_the_cache() {
        let device = Uuid::from_u128(9);
        let far = Fix::new(RX - 590_000, 10.0, 13.4);
        // Within one batch: two agreeing fixes anchor the track, the far one is refused.
        let plan1 = plan(
            &[record(0, device, vec![walk(0), walk(1), far.clone()])],
            &caches(),
        );
        assert_eq!(plan1.rejects[0].reason, RejectReason::ImpossibleSpeed);
        // Across batches: the cache holds the committed track.
        let mut c = caches();
        let mut stored = HashSet::new();
        commit(
            plan(&[record(0, device, vec![walk(0), walk(1)])], &c),
            &mut c,
            &mut stored,
        );
        let plan2 = plan(&[record(1, device, vec![far.clone()])], &c);
        assert_eq!(plan2.rejects[0].reason, RejectReason::ImpossibleSpeed);
        // A device loaded from the database: its stored newest fix is the anchor.
        let mut c = caches();
        c.devices
            .set(device, Some(PreviousFix::received(&walk(0), RX - 599_000)));
        let plan3 = plan(&[record(1, device, vec![far])], &c);
        assert_eq!(plan3.rejects[0].reason, RejectReason::ImpossibleSpeed);
    }

    /// A real drive of `count` fixes, one envelope each (received 500 ms after its fix), and
    /// where the planted fix goes.
    fn drive(device: Uuid, count: i64) -> Vec<InRecord> {
        (0..count)
            .map(|i| {
                let mut fix = Fix::new(RX - 600_000 + i * 5_000, 52.5 + i as f64 * 1e-3, 13.4);
                fix.accuracy_m = Some(5.0);
                let mut r = record(i, device, vec![fix]);
                if let Ok(envelope) = &mut r.body {
                    envelope.rx = envelope.fixes[0].fix_time + 500;
                }
                r
            })
            .collect()
    }

    /// Classify `records` in batches cut at `cuts`, committing each; the rows and rejects.
    fn run_batches(records: Vec<InRecord>, cuts: &[usize]) -> (Vec<StoredFix>, Vec<RejectRecord>) {
        let mut c = caches();
        let mut stored = HashSet::new();
        let (mut rows, mut rejects) = (Vec::new(), Vec::new());
        let mut records = records.into_iter().peekable();
        let mut taken = 0;
        let mut cuts: Vec<usize> = cuts.to_vec();
        cuts.sort_unstable();
        cuts.push(usize::MAX);
        for cut in cuts {
            let mut batch = Vec::new();
            while taken < cut && records.peek().is_some() {
                batch.push(records.next().unwrap());
                taken += 1;
            }
            let plan = plan(&batch, &c);
            rows.extend(plan.rows.iter().cloned());
            rejects.extend(plan.rejects.iter().cloned());
            commit(plan, &mut c, &mut stored);
        }
        (rows, rejects)
    }

    #[test]
    fn a_fix_planted_ahead_and_far_is_refused_and_the_track_goes_on() {
        let device = Uuid::from_u128(9);
        let mut records = drive(device, 40);
        // Received with fix 20, dated 9 minutes ahead, 185 km north: the old rule believed
        // its date, accepted it and then refused every real fix near it in time.
        let rx = RX - 600_000 + 20 * 5_000 - 1_000;
        let planted = Fix::new(rx + 540_000, 52.5 + 0.02 + 185.0 / 111.195, 13.4);
        let mut attack = record(100, device, vec![planted]);
        if let Ok(envelope) = &mut attack.body {
            envelope.rx = rx;
        }
        records.insert(20, attack);
        let (rows, rejects) = run_batches(records, &[7, 21, 30]);
        assert_eq!(rows.len(), 40, "every real fix stored");
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].reason, RejectReason::ImpossibleSpeed);
        assert_eq!(rejects[0].source.offset, 100);
    }

    #[test]
    fn settle_counts_what_the_database_already_had() {
        let device = Uuid::from_u128(9);
        let mut c = caches();
        let mut stored: HashSet<FixKey> = HashSet::from([(device, walk(1).fix_time)]);
        let outcome = commit(
            plan(&[record(0, device, vec![walk(1), walk(2)])], &c),
            &mut c,
            &mut stored,
        );
        assert_eq!(outcome.stored.len(), 1);
        assert_eq!(outcome.stored[0].fix, walk(2));
        assert_eq!(outcome.duplicates.database, 1);
        assert!(c.dedupe.contains(&(device, walk(1).fix_time)));
    }

    /// A fix of one of four devices: mostly plausible (near one spot, recent), sometimes
    /// refused for a reason that does not depend on history, sometimes a repeat, sometimes one
    /// the device called invalid (far away: a stale or made-up position).
    fn any_fix() -> impl Strategy<Value = (u128, Fix)> {
        let time = 0i64..40;
        let kind = prop_oneof![
            6 => Just(0u8),
            1 => Just(1u8),
            1 => Just(2u8),
            1 => Just(3u8),
            1 => Just(4u8)
        ];
        (0u128..4, time, kind).prop_map(|(device, t, kind)| {
            let mut fix = walk(t);
            match kind {
                1 => fix.lat = 95.0,
                2 => fix.fix_time = RX + 3_600_000,
                3 => fix.accuracy_m = Some(5_000.0),
                4 => {
                    // Off the walk's whole seconds: its key never takes a valid fix's.
                    fix.valid = false;
                    fix.lat = -33.0;
                    fix.fix_time += 500;
                }
                _ => {}
            }
            (device + 1, fix)
        })
    }

    /// A status report of some time around `RX`, sometimes with an alarm.
    fn any_status() -> impl Strategy<Value = DeviceStatus> {
        (
            -100i64..100,
            prop::option::of(prop_oneof![Just("sos"), Just("lowBattery")]),
            prop::option::of(0.0..100.0f64),
        )
            .prop_map(|(t, alarm, battery)| {
                let mut status = DeviceStatus::new(RX - 50_000 + t * 1000);
                status.alarm = alarm.map(str::to_owned);
                status.battery_pct = battery;
                status
            })
    }

    fn any_batch() -> impl Strategy<Value = Vec<InRecord>> {
        prop::collection::vec(
            prop_oneof![
                8 => (prop::collection::vec(any_fix(), 1..6), prop::option::of(any_status()))
                    .prop_map(|(fixes, status)| Some((fixes[0].0, fixes, status))),
                1 => (1u128..5, any_status())
                    .prop_map(|(device, status)| Some((device, Vec::new(), Some(status)))),
                1 => Just(None),
            ],
            0..12,
        )
        .prop_map(|records| {
            records
                .into_iter()
                .enumerate()
                .map(|(offset, content)| match content {
                    // One envelope per record, of the first fix's device (or a status report
                    // without fixes).
                    Some((device, fixes, status)) => {
                        let device = Uuid::from_u128(device);
                        let fixes = fixes.into_iter().map(|(_, f)| f).collect();
                        let mut r = record(offset as i64, device, fixes);
                        if let (Ok(envelope), Some(status)) = (&mut r.body, status) {
                            envelope.status = Some(status);
                        }
                        r
                    }
                    None => InRecord::decode(0, offset as i64, Some(b"not json")),
                })
                .collect()
        })
    }

    /// The same records again (a redelivery after a crash before the offset commit).
    fn redeliver(records: &[InRecord]) -> Vec<InRecord> {
        records
            .iter()
            .map(|r| match &r.body {
                Ok(envelope) => InRecord {
                    partition: r.partition,
                    offset: r.offset,
                    body: Ok(envelope.clone()),
                },
                Err(bad) => InRecord::decode(r.partition, r.offset, Some(&bad.raw)),
            })
            .collect()
    }

    /// Fixes carried, counting an unreadable record as one.
    fn fixes_in(records: &[InRecord]) -> usize {
        records
            .iter()
            .map(|r| r.body.as_ref().map_or(1, |e| e.fixes.len()))
            .sum()
    }

    fn with_status(mut r: InRecord, status: DeviceStatus) -> InRecord {
        if let Ok(envelope) = &mut r.body {
            envelope.status = Some(status);
        }
        r
    }

    #[test]
    fn each_record_reports_its_accepted_rows_and_status_in_log_order_for_the_event_fold() {
        let (a, b) = (Uuid::from_u128(9), Uuid::from_u128(10));
        let mut alarm = DeviceStatus::new(RX + 60_000);
        alarm.alarm = Some(" sos ".into());
        let records = vec![
            record(1, a, vec![walk(2), walk(1)]),
            // Rejected fix (null island) and a repeat of a stored key: no rows, no report.
            record(2, b, vec![Fix::new(RX, 0.0, 0.0)]),
            with_status(record(3, a, vec![walk(1), walk(3)]), alarm),
            with_status(record(4, b, Vec::new()), DeviceStatus::new(RX - 1)),
        ];
        let plan = plan(&records, &caches());
        let reports: Vec<(Uuid, std::ops::Range<usize>, Option<EpochMillis>)> = plan
            .reports
            .iter()
            .map(|r| (r.device, r.rows.clone(), r.status.as_ref().map(|s| s.time)))
            .collect();
        // Record 3's repeat of walk(1) is dropped, its walk(3) is row 2; its status, from the
        // future, is sanitized to the receive time.
        assert_eq!(
            reports,
            vec![
                (a, 0..2, None),
                (a, 2..3, Some(RX)),
                (b, 3..3, Some(RX - 1))
            ]
        );
        assert_eq!(plan.rows[2].fix.fix_time, walk(3).fix_time);
        assert_eq!(
            plan.reports[1].status.as_ref().unwrap().alarm.as_deref(),
            Some("sos")
        );
    }

    #[test]
    fn a_status_without_fixes_is_a_status_change_not_a_reject() {
        let device = Uuid::from_u128(9);
        let mut status = DeviceStatus::new(RX - 5_000);
        status.battery_pct = Some(42.0);
        status.charging = Some(true);
        let records = vec![with_status(record(3, device, Vec::new()), status.clone())];
        assert_eq!(records[0].weight(), 1, "a status costs a write");
        let plan = plan(&records, &caches());
        assert!(plan.rows.is_empty() && plan.rejects.is_empty());
        assert!(plan.seen.is_empty(), "a status alone moves no fix time");
        assert_eq!(
            plan.statuses,
            vec![StatusChange {
                tenant: Uuid::from_u128(1),
                device,
                uid: "d".into(),
                report: status,
                alarm: None,
            }]
        );
    }

    #[test]
    fn an_invalid_fix_is_stored_but_never_the_reference() {
        let device = Uuid::from_u128(9);
        // 4000 km away a second later: impossible if judged by speed.
        let mut stale = Fix::new(walk(2).fix_time, 12.0, 13.4);
        stale.valid = false;
        let with = plan(
            &[record(
                0,
                device,
                vec![walk(0), walk(1), stale.clone(), walk(3)],
            )],
            &caches(),
        );
        let without = plan(
            &[record(0, device, vec![walk(0), walk(1), walk(3)])],
            &caches(),
        );
        assert!(with.rejects.is_empty(), "{:?}", with.rejects);
        assert_eq!(with.rows.len(), 4);
        assert!(!with.rows[2].fix.valid);
        assert_eq!(
            with.tracks, without.tracks,
            "the invalid fix left the track alone"
        );
        assert_eq!(
            with.seen,
            vec![Seen {
                tenant: Uuid::from_u128(1),
                device,
                at: walk(3).fix_time
            }]
        );
        // The per-fix rules still apply to it.
        let mut nowhere = Fix::new(RX - 1_000, 0.0, 0.0);
        nowhere.valid = false;
        let refused = plan(&[record(1, device, vec![nowhere])], &caches());
        assert_eq!(refused.rejects[0].reason, RejectReason::NullIsland);
    }

    #[test]
    fn last_seen_is_never_after_the_receive_time() {
        let device = Uuid::from_u128(9);
        let ahead = Fix::new(RX + 60_000, 52.5, 13.4);
        let plan = plan(&[record(0, device, vec![ahead])], &caches());
        assert_eq!(plan.rows.len(), 1, "within the clock-skew tolerance");
        assert_eq!(plan.seen[0].at, RX);
    }

    #[test]
    fn statuses_are_made_fit_for_storage() {
        let mut status = DeviceStatus::new(RX + 5_000);
        status.battery_pct = Some(140.0);
        status.alarm = Some(format!("  s\0os{}  ", "x".repeat(100)));
        status
            .attributes
            .insert("bad".into(), serde_json::json!({ "k": ["a\0b"] }));
        status
            .attributes
            .insert("rssi".into(), serde_json::json!(-70));
        let clean = sanitize_status(&status, RX);
        assert_eq!(clean.time, RX, "a report cannot be made after it arrived");
        assert_eq!(clean.battery_pct, None);
        let alarm = clean.alarm.unwrap();
        assert!(alarm.starts_with("sosx") && alarm.chars().count() == MAX_ALARM_CHARS);
        assert_eq!(clean.attributes.keys().collect::<Vec<_>>(), ["rssi"]);
        assert_eq!(
            sanitize_status(&DeviceStatus::new(0), RX).time,
            RX,
            "no clock"
        );
        let mut blank = DeviceStatus::new(RX - 1);
        blank.alarm = Some(" \0 ".into());
        blank.battery_pct = Some(f64::NAN);
        let blank = sanitize_status(&blank, RX);
        assert_eq!(
            (blank.time, blank.alarm, blank.battery_pct),
            (RX - 1, None, None)
        );
    }

    /// The stored status as the writer's upsert leaves it: the newer report replaces the
    /// older, the newer alarm the older, each on its own (strictly newer: the first wins a tie).
    fn apply(
        stored: &mut Option<(DeviceStatus, Option<(String, EpochMillis)>)>,
        change: &StatusChange,
    ) {
        match stored {
            None => *stored = Some((change.report.clone(), change.alarm.clone())),
            Some((report, alarm)) => {
                if change.report.time > report.time {
                    *report = change.report.clone();
                }
                if let Some((a, at)) = &change.alarm {
                    if alarm.as_ref().is_none_or(|(_, t)| at > t) {
                        *alarm = Some((a.clone(), *at));
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn the_stored_status_does_not_depend_on_how_the_log_is_cut_into_batches(
            reports in prop::collection::vec(any_status(), 1..12),
            cuts in prop::collection::vec(0usize..12, 0..4),
        ) {
            let device = Uuid::from_u128(9);
            let records: Vec<InRecord> = reports
                .iter()
                .enumerate()
                .map(|(i, s)| with_status(record(i as i64, device, Vec::new()), s.clone()))
                .collect();
            let stored_after = |cuts: &[usize]| {
                let mut stored = None;
                let mut cuts = cuts.to_vec();
                cuts.sort_unstable();
                cuts.push(records.len());
                let mut from = 0;
                for cut in cuts {
                    let cut = cut.min(records.len()).max(from);
                    for change in plan(&redeliver(&records[from..cut]), &caches()).statuses {
                        apply(&mut stored, &change);
                    }
                    from = cut;
                }
                stored
            };
            let one_batch = stored_after(&[]);
            prop_assert_eq!(&stored_after(&cuts), &one_batch);
            let each_alone: Vec<usize> = (0..records.len()).collect();
            prop_assert_eq!(&stored_after(&each_alone), &one_batch);
            // The newest report wins, and the newest alarm.
            let (report, alarm) = one_batch.unwrap();
            let clean: Vec<DeviceStatus> = reports.iter().map(|s| sanitize_status(s, RX)).collect();
            let newest = clean.iter().map(|s| s.time).max().unwrap();
            prop_assert_eq!(report.time, newest);
            let newest_alarm = clean.iter().filter(|s| s.alarm.is_some()).map(|s| s.time).max();
            prop_assert_eq!(alarm.map(|(_, t)| t), newest_alarm);
        }

        #[test]
        fn a_sanitized_status_always_fits_the_row(
            time in any::<i64>(),
            battery in prop::option::of(any::<f64>()),
            alarm in prop::option::of(".{0,80}"),
            key in ".{0,8}",
            text in ".{0,8}",
        ) {
            let mut status = DeviceStatus::new(time);
            status.battery_pct = battery;
            status.alarm = alarm;
            status.attributes.insert(key, serde_json::json!([text]));
            let clean = sanitize_status(&status, RX);
            prop_assert!(clean.time <= RX && clean.time >= MIN_FIX_TIME);
            prop_assert!(clean.battery_pct.is_none_or(|b| (0.0..=100.0).contains(&b)));
            let alarm_fits = |a: &String| {
                !a.is_empty() && !a.contains('\0') && a.chars().count() <= MAX_ALARM_CHARS
            };
            prop_assert!(clean.alarm.as_ref().is_none_or(alarm_fits));
            let json = serde_json::to_string(&clean.attributes).unwrap();
            prop_assert!(!json.contains("\\u0000"));
        }

        #[test]
        fn invalid_fixes_never_move_the_track(batch in any_batch(), warm in any_batch()) {
            let mut c = caches();
            let mut stored = HashSet::new();
            commit(plan(&warm, &c), &mut c, &mut stored);
            // The same batch without its invalid fixes judges its valid fixes the same way.
            let valid_only: Vec<InRecord> = redeliver(&batch)
                .into_iter()
                .map(|mut r| {
                    if let Ok(envelope) = &mut r.body {
                        envelope.fixes.retain(|f| f.valid);
                    }
                    r
                })
                .collect();
            let with = plan(&batch, &c);
            let without = plan(&valid_only, &c);
            prop_assert_eq!(&with.tracks, &without.tracks);
            let valid_rows: Vec<&StoredFix> = with.rows.iter().filter(|r| r.fix.valid).collect();
            let rows_without: Vec<&StoredFix> = without.rows.iter().collect();
            prop_assert_eq!(valid_rows, rows_without);
        }

        #[test]
        fn every_fix_lands_in_exactly_one_place(batch in any_batch(), warm in any_batch()) {
            // Some history first, so the memory dedupe and the speed check take part.
            let mut c = caches();
            let mut stored = HashSet::new();
            commit(plan(&warm, &c), &mut c, &mut stored);

            let plan = plan(&batch, &c);
            let fix_rejects = plan.rejects.iter().filter(|r| r.fix.is_some()).count();
            let record_rejects = plan.rejects.len() - fix_rejects;
            prop_assert_eq!(
                plan.rows.len() + fix_rejects + plan.duplicates.memory + plan.duplicates.batch,
                fixes_in(&batch) - record_rejects
            );
            // No fix both stored and refused: identify each by (offset, index in envelope).
            let mut placed: BTreeSet<(i64, usize)> = BTreeSet::new();
            for r in plan.rejects.iter().filter(|r| r.fix.is_some()) {
                prop_assert!(placed.insert((r.source.offset, r.index.unwrap() as usize)));
            }
            for row in &plan.rows {
                let (offset, index) = batch
                    .iter()
                    .find_map(|r| {
                        let e = r.body.as_ref().ok()?;
                        let i = e.fixes.iter().position(|f| e.device == row.device && *f == row.fix)?;
                        Some((r.offset, i))
                    })
                    .unwrap();
                prop_assert!(!placed.contains(&(offset, index)), "stored and refused");
            }
            // Rows have distinct keys, none of them known to be stored.
            let keys: HashSet<FixKey> = plan.rows.iter().map(StoredFix::key).collect();
            prop_assert_eq!(keys.len(), plan.rows.len());
            prop_assert!(keys.iter().all(|k| !c.dedupe.contains(k)));
        }

        #[test]
        fn a_redelivered_batch_yields_only_duplicates(batch in any_batch()) {
            let mut c = caches();
            let mut stored = HashSet::new();
            let first = plan(&batch, &c);
            let refused = |p: &BatchPlan| -> BTreeSet<(i64, Option<u32>, RejectReason)> {
                p.rejects.iter().map(|r| (r.source.offset, r.index, r.reason)).collect()
            };
            let first_refused = refused(&first);
            commit(first, &mut c, &mut stored);

            let again = plan(&redeliver(&batch), &c);
            prop_assert!(again.rows.is_empty(), "stored twice");
            prop_assert_eq!(again.duplicates.batch, 0);
            // Each fix is now a known duplicate or refused as before (a refused fix whose key a
            // later fix of the batch stored is now a duplicate).
            prop_assert!(refused(&again).is_subset(&first_refused));
            prop_assert_eq!(again.duplicates.memory + again.rejects.len(), fixes_in(&batch));
        }

        #[test]
        fn the_anchor_only_moves_forward_and_is_an_accepted_fix(batches in prop::collection::vec(any_batch(), 1..6)) {
            let mut c = caches();
            let mut stored = HashSet::new();
            let mut last: HashMap<Uuid, EpochMillis> = HashMap::new();
            let mut accepted: HashSet<FixKey> = HashSet::new();
            for batch in &batches {
                let plan = plan(batch, &c);
                accepted.extend(plan.rows.iter().filter(|r| r.fix.valid).map(StoredFix::key));
                commit(plan, &mut c, &mut stored);
                for device in (1..=4).map(Uuid::from_u128) {
                    match c.devices.get(&device).flatten() {
                        Some(p) => {
                            prop_assert!(accepted.contains(&(device, p.fix_time)), "anchor never accepted as valid");
                            let before = last.insert(device, p.taken());
                            prop_assert!(before.is_none_or(|t| p.taken() >= t), "rewound");
                        }
                        None => prop_assert!(!last.contains_key(&device), "forgotten"),
                    }
                }
            }
        }

        #[test]
        fn one_planted_outlier_in_any_batch_condemns_no_real_fix(
            count in 3i64..30,
            at in any::<prop::sample::Index>(),
            cuts in prop::collection::vec(0usize..32, 0..4),
            distance_km in 100.0..5_000.0f64,
            ahead_s in -60i64..599,
        ) {
            let device = Uuid::from_u128(9);
            let mut records = drive(device, count);
            let at = at.index(records.len() + 1);
            let rx = RX - 600_000 + at as i64 * 5_000 - 1_000;
            // Dated off the real fixes' whole seconds, so no key collides.
            let planted = Fix::new(rx + ahead_s * 1000 + 333, 52.5 + distance_km / 111.195 * 0.01, 13.4 + distance_km / 75.0);
            let mut attack = record(100, device, vec![planted]);
            if let Ok(envelope) = &mut attack.body {
                envelope.rx = rx;
            }
            records.insert(at, attack);
            let (rows, rejects) = run_batches(records, &cuts);
            let real = rows.iter().filter(|r| r.fix.fix_time % 1000 == 0).count();
            prop_assert_eq!(real as i64, count, "every real fix stored");
            if at >= 2 {
                prop_assert_eq!(rejects.len(), 1);
                prop_assert_eq!(rejects[0].reason, RejectReason::ImpossibleSpeed);
            }
        }

        #[test]
        fn a_relocation_is_stored_from_its_third_fix(
            count in 2i64..20,
            cuts in prop::collection::vec(0usize..30, 0..4),
            distance_km in 100.0..5_000.0f64,
        ) {
            let device = Uuid::from_u128(9);
            let mut records = drive(device, count + 8);
            let lift = distance_km / 111.195;
            for r in &mut records[count as usize..] {
                if let Ok(envelope) = &mut r.body {
                    envelope.fixes[0].lat = (envelope.fixes[0].lat + lift).min(89.9);
                }
            }
            let (rows, rejects) = run_batches(records, &cuts);
            prop_assert_eq!(rows.len() as i64, count + 8 - (RELOCATION_FIXES as i64 - 1));
            prop_assert_eq!(rejects.len() as u32, RELOCATION_FIXES - 1);
            prop_assert!(rejects.iter().all(|r| r.reason == RejectReason::ImpossibleSpeed));
            let offsets: Vec<i64> = rejects.iter().map(|r| r.source.offset).collect();
            prop_assert_eq!(offsets, vec![count, count + 1]);
        }
    }
}
