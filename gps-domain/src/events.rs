//! Events derived from the fix log, pure: geofence enter/exit, overspeed, alarm, online/offline
//! and motion start/stop. [`DeviceEventState::apply`] folds one device's fixes, in fix-time
//! order, into events and the state the next fix resumes from; the processor persists the state
//! with the events in the batch's transaction, so that events are a projection of the log like
//! positions (see `docs/events.md`).
//!
//! The rules, each with its hysteresis so that noise does not flood:
//! - **Geofences** ([`fence`], indexed by [`FenceIndex`]): the device changes side of a fence
//!   only when a fix lies on the other side *and* farther than the fence's band
//!   ([`EventRules::boundary_margin_m`], at most a quarter of the fence's smaller extent) from
//!   its boundary. A fix inside the band keeps the current side, so jitter across the boundary
//!   raises nothing. A device never seen before starts outside every fence.
//! - **Overspeed**: the limit is the lowest of the device's limit and those of the active fences
//!   it is inside. One `overspeed` event when the speed goes above the limit; the episode ends
//!   (silently) when the speed drops below limit − [`EventRules::overspeed_margin_mps`], or when
//!   the limit in force changes source (a new episode may start against the new limit).
//! - **Alarm**: one event per status report that carries an alarm ([`DeviceStatus::alarm`]).
//! - **Motion**: `motion_start` at the first fix at or above [`EventRules::motion_start_mps`];
//!   `motion_stop` once the speed stayed at or below [`EventRules::motion_stop_mps`] for
//!   [`EventRules::motion_stop_after_ms`] of fix time. A fix without a speed uses the speed
//!   implied by the distance from the previous fix.
//! - **Online/offline**: a device is online from its first report; it is offline once it has
//!   not reported for `offline_after_ms`. The offline event is dated *last seen + timeout*, so
//!   the timer ([`DeviceEventState::check_offline`]) and the next fix after a gap (which raises
//!   the missed offline before its online) produce the same event, and a replay without the
//!   timer reproduces it.
//!
//! **Late fixes** (fix time at or before the last fix applied): stored as history by the
//! processor, but they raise no event and leave the state as it is. **Invalid fixes**
//! (`valid == false`) prove the device alive (online) but move nothing else.
//!
//! Event ids are UUIDv5 of (device, type, fix time, fence): the same fix from the same state
//! gives the same id, live or replayed, and the database's unique key absorbs redelivery.

pub mod fence;
mod index;

pub use fence::{FenceError, FenceShape, Schedule};
pub use index::FenceIndex;

use crate::fix::EpochMillis;
use crate::geo::haversine_m;
use crate::{DeviceStatus, Fix};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The device entered a fence.
    GeofenceEnter,
    /// The device left a fence.
    GeofenceExit,
    /// The device went faster than its limit.
    Overspeed,
    /// The device raised an alarm (SOS, panic, ...).
    Alarm,
    /// The device reported after being offline (or for the first time).
    DeviceOnline,
    /// The device stopped reporting for longer than the timeout.
    DeviceOffline,
    /// The device started moving.
    MotionStart,
    /// The device stopped.
    MotionStop,
}

impl EventType {
    /// Every type, in the documented order.
    pub const ALL: [EventType; 8] = [
        Self::GeofenceEnter,
        Self::GeofenceExit,
        Self::Overspeed,
        Self::Alarm,
        Self::DeviceOnline,
        Self::DeviceOffline,
        Self::MotionStart,
        Self::MotionStop,
    ];

    /// The stable name (API, database, topic).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GeofenceEnter => "geofence_enter",
            Self::GeofenceExit => "geofence_exit",
            Self::Overspeed => "overspeed",
            Self::Alarm => "alarm",
            Self::DeviceOnline => "device_online",
            Self::DeviceOffline => "device_offline",
            Self::MotionStart => "motion_start",
            Self::MotionStop => "motion_stop",
        }
    }

    /// One line on what raises it (for `GET /v1/event-types`).
    pub fn description(self) -> &'static str {
        match self {
            Self::GeofenceEnter => "the device entered a geofence (beyond the boundary band)",
            Self::GeofenceExit => "the device left a geofence (beyond the boundary band)",
            Self::Overspeed => "the speed went above the device's or the fence's limit",
            Self::Alarm => "the device raised an alarm (SOS, panic, ...)",
            Self::DeviceOnline => "the device reported after being offline, or for the first time",
            Self::DeviceOffline => "the device has not reported for longer than the timeout",
            Self::MotionStart => "the device started moving",
            Self::MotionStop => "the device has been still for the stop time",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown event type `{s}`"))
    }
}

/// The namespace of event ids (UUIDv5).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a7e_4b0d_5e38_9a61_c3d5_e7f9_0b24);

/// The id of an event: UUIDv5 of what identifies it, so that replay gives the same id.
pub fn event_id(
    device: Uuid,
    event_type: EventType,
    fix_time: EpochMillis,
    geofence: Option<Uuid>,
) -> Uuid {
    let fence = geofence.map(|f| f.to_string()).unwrap_or_default();
    let name = format!("{device}/{}/{fix_time}/{fence}", event_type.as_str());
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
}

/// One event of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Deterministic id ([`event_id`]).
    pub id: Uuid,
    /// The device's tenant.
    pub tenant_id: Uuid,
    /// The device.
    pub device_id: Uuid,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The fix (or status report) time that raised it; for `device_offline` the instant the
    /// device became overdue.
    pub fix_time: EpochMillis,
    /// Where the device was (its last position for events without one of their own).
    pub lat: Option<f64>,
    /// Longitude, see `lat`.
    pub lon: Option<f64>,
    /// The fence, for fence events and an overspeed against a fence's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geofence_id: Option<Uuid>,
    /// Type-specific details (speed, limit, alarm, ...).
    pub details: Value,
}

/// A fence as the evaluator sees it.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Fence id.
    pub id: Uuid,
    /// Validated geometry.
    pub shape: FenceShape,
    /// The groups whose devices it applies to; empty: every device of the tenant.
    pub groups: Vec<Uuid>,
    /// Speed limit inside the fence, m/s.
    pub speed_limit_mps: Option<f64>,
    /// When it is active; `None`: always.
    pub schedule: Option<Schedule>,
}

/// Highest speed limit a fence or device may set, m/s (540 km/h: above it a limit is a typo).
pub const MAX_SPEED_LIMIT_MPS: f64 = 150.0;

impl Fence {
    /// A fence from its stored or requested parts, validated: the one path from a geofence
    /// body or row to what the evaluator runs (the API and the processor both use it). Every
    /// error names its field.
    pub fn new(
        id: Uuid,
        geometry: &Value,
        radius_m: Option<f64>,
        groups: Vec<Uuid>,
        speed_limit_mps: Option<f64>,
        schedule: Option<&Value>,
    ) -> Result<Self, FenceError> {
        let shape = FenceShape::from_geojson(geometry, radius_m)?;
        if let Some(limit) = speed_limit_mps {
            if !limit.is_finite() || limit <= 0.0 || limit > MAX_SPEED_LIMIT_MPS {
                return Err(FenceError {
                    field: "speed_limit_mps".into(),
                    reason: format!("must be above 0 and at most {MAX_SPEED_LIMIT_MPS} m/s"),
                });
            }
        }
        let schedule = schedule
            .filter(|s| !s.is_null())
            .map(Schedule::from_json)
            .transpose()?;
        Ok(Self {
            id,
            shape,
            groups,
            speed_limit_mps,
            schedule,
        })
    }

    /// Whether the fence applies to a device in `device_groups`.
    pub fn applies_to(&self, device_groups: &[Uuid]) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| device_groups.contains(g))
    }

    /// Whether the fence is evaluated at fix time `t`.
    pub fn active_at(&self, t: EpochMillis) -> bool {
        self.schedule.as_ref().is_none_or(|s| s.active_at(t))
    }
}

/// The tunables of the rules (one set per tenant; defaults documented in `docs/events.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventRules {
    /// Half-width of the band around a fence boundary inside which a fix never changes side, m.
    pub boundary_margin_m: f64,
    /// An overspeed episode ends below limit − this, m/s.
    pub overspeed_margin_mps: f64,
    /// Speed at or above which a still device starts moving, m/s.
    pub motion_start_mps: f64,
    /// Speed at or below which a moving device counts as still, m/s.
    pub motion_stop_mps: f64,
    /// How long (fix time) it must stay still before `motion_stop`, ms.
    pub motion_stop_after_ms: i64,
    /// No report for this long makes a device offline, ms. The timer passes the same value to
    /// [`DeviceEventState::check_offline`].
    pub offline_after_ms: i64,
}

impl Default for EventRules {
    fn default() -> Self {
        Self {
            boundary_margin_m: 10.0,
            overspeed_margin_mps: 1.0,
            motion_start_mps: 2.0,
            motion_stop_mps: 0.5,
            motion_stop_after_ms: 120_000,
            offline_after_ms: 600_000,
        }
    }
}

/// What the evaluator needs to know about the device besides its state.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceProfile<'a> {
    /// The groups the device is in (fences restricted to groups apply only to their devices).
    pub groups: &'a [Uuid],
    /// The device's own speed limit, m/s.
    pub speed_limit_mps: Option<f64>,
}

/// The last applied fix's time and position. The position is kept in whole 1e-7 degrees
/// (~1 cm), integers, so that the state survives a JSON round trip bit for bit: a float read
/// back may differ in its last bit, and the speed implied from it would differ with it, so a
/// resumed state would not raise exactly the events of an uninterrupted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastFix {
    /// Fix time, ms.
    pub t: EpochMillis,
    /// Latitude, 1e-7 degrees.
    pub lat_e7: i32,
    /// Longitude, 1e-7 degrees.
    pub lon_e7: i32,
}

impl LastFix {
    fn of(fix: &Fix) -> Self {
        let e7 = |deg: f64| (deg * 1e7).round() as i32;
        Self {
            t: fix.fix_time,
            lat_e7: e7(fix.lat),
            lon_e7: e7(fix.lon),
        }
    }

    /// Latitude, degrees.
    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e7) / 1e7
    }

    /// Longitude, degrees.
    pub fn lon(&self) -> f64 {
        f64::from(self.lon_e7) / 1e7
    }
}

/// An overspeed episode in progress (the limit itself is read from the device and the fences
/// at each fix, never from the state: no float in the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overspeeding {
    /// The fence whose limit it is (`None`: the device's).
    pub geofence_id: Option<Uuid>,
    /// Fix time the episode began.
    pub since: EpochMillis,
}

/// The per-device state events are computed from; persisted (as JSON) with the events it
/// produced, and the state the next batch, or a replay, resumes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEventState {
    /// The device's tenant.
    pub tenant_id: Uuid,
    /// The device.
    pub device_id: Uuid,
    /// The last valid fix applied (the late-fix rule compares against its time).
    #[serde(default)]
    pub last_fix: Option<LastFix>,
    /// The newest report of any kind (fix, invalid fix, status), ms.
    #[serde(default)]
    pub last_seen: Option<EpochMillis>,
    /// The newest status report applied, ms.
    #[serde(default)]
    pub last_status_time: Option<EpochMillis>,
    /// Whether the device is online.
    #[serde(default)]
    pub online: bool,
    /// The fences the device is inside.
    #[serde(default)]
    pub inside: BTreeSet<Uuid>,
    /// The overspeed episode in progress.
    #[serde(default)]
    pub overspeed: Option<Overspeeding>,
    /// Whether the device is moving.
    #[serde(default)]
    pub moving: bool,
    /// Since when a moving device has been at or below the stop speed.
    #[serde(default)]
    pub slow_since: Option<EpochMillis>,
}

impl DeviceEventState {
    /// The state of a device never seen: offline, outside every fence, still.
    pub fn new(tenant_id: Uuid, device_id: Uuid) -> Self {
        Self {
            tenant_id,
            device_id,
            last_fix: None,
            last_seen: None,
            last_status_time: None,
            online: false,
            inside: BTreeSet::new(),
            overspeed: None,
            moving: false,
            slow_since: None,
        }
    }

    fn event(
        &self,
        event_type: EventType,
        fix_time: EpochMillis,
        position: Option<(f64, f64)>,
        geofence_id: Option<Uuid>,
        details: Value,
    ) -> Event {
        Event {
            id: event_id(self.device_id, event_type, fix_time, geofence_id),
            tenant_id: self.tenant_id,
            device_id: self.device_id,
            event_type,
            fix_time,
            lat: position.map(|p| p.0),
            lon: position.map(|p| p.1),
            geofence_id,
            details,
        }
    }

    fn last_position(&self) -> Option<(f64, f64)> {
        self.last_fix.map(|f| (f.lat(), f.lon()))
    }

    /// Apply one fix (the device's fixes must come in fix-time order, as the log keeps them per
    /// device once a batch is sorted). Returns its events in a fixed order: online, fence
    /// events by fence id, overspeed, motion.
    ///
    /// Liveness follows the fix's own time here; the processor uses [`Self::apply_received`],
    /// which follows when the server received the report.
    pub fn apply(
        &mut self,
        fix: &Fix,
        fences: &FenceIndex,
        profile: &DeviceProfile<'_>,
        rules: &EventRules,
    ) -> Vec<Event> {
        self.apply_received(fix, fix.fix_time, fences, profile, rules)
    }

    /// [`Self::apply`] for a fix the server received at `received` (UTC ms, the envelope's
    /// `rx`, which the log keeps, so a replay computes the same). Online/offline follow
    /// reception, not the device's clock: "no report for 10 minutes" is about reports, and a
    /// device whose clock is behind (or that uploads a buffer of old fixes) is alive when it
    /// sends. `device_online` and `device_offline` are therefore dated in server time; the
    /// other events in fix time. A late fix (at or before the last applied one) still changes
    /// nothing at all.
    pub fn apply_received(
        &mut self,
        fix: &Fix,
        received: EpochMillis,
        fences: &FenceIndex,
        profile: &DeviceProfile<'_>,
        rules: &EventRules,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        if !fix.lat.is_finite() || !fix.lon.is_finite() {
            return events;
        }
        if self.last_fix.is_some_and(|last| fix.fix_time <= last.t) {
            // Late or duplicate: history only.
            return events;
        }
        let position = (fix.lat, fix.lon);
        self.seen(received, Some(position), rules, &mut events);
        if !fix.valid {
            return events;
        }
        self.fences(fix, fences, profile, rules, &mut events);
        let speed = fix
            .speed_mps
            .filter(|s| s.is_finite() && *s >= 0.0)
            .or_else(|| self.implied_speed(fix));
        if let Some(speed) = speed {
            self.overspeed(fix, speed, fences, profile, rules, &mut events);
            self.motion(fix, speed, rules, &mut events);
        }
        self.last_fix = Some(LastFix::of(fix));
        events
    }

    /// Apply a status report: liveness, and an `alarm` event when it carries one. A report at or
    /// before the last one applied raises nothing.
    pub fn apply_status(&mut self, status: &DeviceStatus, rules: &EventRules) -> Vec<Event> {
        self.apply_status_received(status, status.time, rules)
    }

    /// [`Self::apply_status`] for a report the server received at `received` (liveness follows
    /// reception, as in [`Self::apply_received`]).
    pub fn apply_status_received(
        &mut self,
        status: &DeviceStatus,
        received: EpochMillis,
        rules: &EventRules,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        if self.last_status_time.is_some_and(|t| status.time <= t) {
            return events;
        }
        self.last_status_time = Some(status.time);
        let position = self.last_position();
        self.seen(received, position, rules, &mut events);
        if let Some(alarm) = status.alarm.as_deref() {
            events.push(self.event(
                EventType::Alarm,
                status.time,
                position,
                None,
                json!({ "alarm": alarm }),
            ));
        }
        events
    }

    /// The timer's check: `device_offline` when the device is online and has not reported for
    /// more than `timeout_ms` at `now`, dated last seen + timeout (so the next fix after the
    /// gap, or a replay, would raise the same event).
    pub fn check_offline(&mut self, now: EpochMillis, timeout_ms: i64) -> Option<Event> {
        let seen = self.last_seen?;
        if !self.online || now.saturating_sub(seen) <= timeout_ms {
            return None;
        }
        self.online = false;
        let at = seen.saturating_add(timeout_ms);
        Some(self.event(
            EventType::DeviceOffline,
            at,
            self.last_position(),
            None,
            json!({ "last_seen": seen, "timeout_ms": timeout_ms }),
        ))
    }

    /// A report at `t`: the missed offline of a gap, then online.
    fn seen(
        &mut self,
        t: EpochMillis,
        position: Option<(f64, f64)>,
        rules: &EventRules,
        events: &mut Vec<Event>,
    ) {
        if let Some(seen) = self.last_seen {
            if t <= seen {
                return;
            }
            if let Some(offline) = self.check_offline(t, rules.offline_after_ms) {
                events.push(offline);
            }
        }
        self.last_seen = Some(t);
        if !self.online {
            self.online = true;
            events.push(self.event(EventType::DeviceOnline, t, position, None, json!({})));
        }
    }

    fn fences(
        &mut self,
        fix: &Fix,
        fences: &FenceIndex,
        profile: &DeviceProfile<'_>,
        rules: &EventRules,
        events: &mut Vec<Event>,
    ) {
        // The fences it may enter (box holds the fix) and those it may leave (inside now).
        let mut ids: BTreeSet<Uuid> = fences
            .candidates(fix.lat, fix.lon)
            .into_iter()
            .map(|f| f.id)
            .collect();
        ids.extend(self.inside.iter().copied());
        for id in ids {
            let was_inside = self.inside.contains(&id);
            let Some(fence) = fences.get(id).filter(|f| f.applies_to(profile.groups)) else {
                // Deleted, or no longer for this device's groups: forgotten without an event.
                self.inside.remove(&id);
                continue;
            };
            if !fence.active_at(fix.fix_time) {
                continue;
            }
            let is_inside = fence.shape.contains(fix.lat, fix.lon);
            if is_inside == was_inside {
                continue;
            }
            let band = fence.shape.band_m(rules.boundary_margin_m);
            if band > 0.0 && fence.shape.near_boundary(fix.lat, fix.lon, band) {
                continue;
            }
            let event_type = if is_inside {
                self.inside.insert(id);
                EventType::GeofenceEnter
            } else {
                self.inside.remove(&id);
                EventType::GeofenceExit
            };
            events.push(self.event(
                event_type,
                fix.fix_time,
                Some((fix.lat, fix.lon)),
                Some(id),
                json!({ "geofence_id": id }),
            ));
        }
    }

    fn implied_speed(&self, fix: &Fix) -> Option<f64> {
        let last = self.last_fix?;
        let dt_s = (fix.fix_time - last.t) as f64 / 1000.0;
        (dt_s > 0.0).then(|| haversine_m(last.lat(), last.lon(), fix.lat, fix.lon) / dt_s)
    }

    /// The limit in force: the lowest of the device's and the active fences' it is inside.
    fn limit(
        &self,
        t: EpochMillis,
        fences: &FenceIndex,
        profile: &DeviceProfile<'_>,
    ) -> Option<(f64, Option<Uuid>)> {
        let device = profile.speed_limit_mps.map(|l| (l, None));
        self.inside
            .iter()
            .filter_map(|id| fences.get(*id))
            .filter(|f| f.active_at(t))
            .filter_map(|f| f.speed_limit_mps.map(|l| (l, Some(f.id))))
            .chain(device)
            .filter(|(l, _)| l.is_finite() && *l > 0.0)
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
    }

    fn overspeed(
        &mut self,
        fix: &Fix,
        speed: f64,
        fences: &FenceIndex,
        profile: &DeviceProfile<'_>,
        rules: &EventRules,
        events: &mut Vec<Event>,
    ) {
        let limit = self.limit(fix.fix_time, fences, profile);
        if let Some(episode) = self.overspeed {
            let continues = limit.is_some_and(|(limit_mps, fence)| {
                fence == episode.geofence_id && speed >= limit_mps - rules.overspeed_margin_mps
            });
            if !continues {
                self.overspeed = None;
            }
        }
        let Some((limit_mps, geofence_id)) = limit else {
            return;
        };
        if self.overspeed.is_none() && speed > limit_mps {
            self.overspeed = Some(Overspeeding {
                geofence_id,
                since: fix.fix_time,
            });
            events.push(self.event(
                EventType::Overspeed,
                fix.fix_time,
                Some((fix.lat, fix.lon)),
                geofence_id,
                json!({ "speed_mps": speed, "limit_mps": limit_mps }),
            ));
        }
    }

    fn motion(&mut self, fix: &Fix, speed: f64, rules: &EventRules, events: &mut Vec<Event>) {
        let position = Some((fix.lat, fix.lon));
        if !self.moving {
            if speed >= rules.motion_start_mps {
                self.moving = true;
                self.slow_since = None;
                events.push(self.event(
                    EventType::MotionStart,
                    fix.fix_time,
                    position,
                    None,
                    json!({ "speed_mps": speed }),
                ));
            }
            return;
        }
        if speed > rules.motion_stop_mps {
            self.slow_since = None;
            return;
        }
        let since = *self.slow_since.get_or_insert(fix.fix_time);
        if fix.fix_time - since >= rules.motion_stop_after_ms {
            self.moving = false;
            self.slow_since = None;
            events.push(self.event(
                EventType::MotionStop,
                fix.fix_time,
                position,
                None,
                json!({ "still_since": since }),
            ));
        }
    }
}

#[cfg(test)]
mod tests;
