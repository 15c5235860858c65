//! The live message: what the processor publishes to Redis after the database commit, and what
//! fanout routes to WebSocket subscribers.
//!
//! Channel per tenant: [`channel_for`] (`gps.live.<tenant uuid>`), so fanout can subscribe with
//! one pattern ([`CHANNEL_PATTERN`]) and a tenant's traffic never reaches another tenant's
//! routing table. One Redis message carries every accepted fix of one tenant from one database
//! batch ([`LiveBatch`]), because a PUBLISH per fix would cost more than the write itself, and
//! every device status the batch changed ([`LiveStatus`]). A fix the device called invalid is
//! never published live. Events (`crate::events::Event`) the batch raised ride in the same
//! message ([`LiveEvent`]), so a subscriber sees an event after the fix that raised it.
//! [`LiveBatch::decode`] reads only [`LIVE_VERSION`], as `FixEnvelope::decode` reads only its own.
//! Documented in `docs/live.md`.

use crate::events::Event;
use crate::fix::{EpochMillis, Fix, Protocol};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Version of the live message this build writes and reads.
pub const LIVE_VERSION: u32 = 1;

/// Redis channel prefix; the tenant id follows.
pub const CHANNEL_PREFIX: &str = "gps.live.";

/// Pattern matching every tenant's live channel.
pub const CHANNEL_PATTERN: &str = "gps.live.*";

/// The Redis channel carrying a tenant's accepted fixes.
pub fn channel_for(tenant: Uuid) -> String {
    format!("{CHANNEL_PREFIX}{tenant}")
}

/// The tenant a live channel belongs to, if the name is one.
pub fn tenant_of_channel(channel: &str) -> Option<Uuid> {
    channel.strip_prefix(CHANNEL_PREFIX)?.parse().ok()
}

/// Why a published message could not be read as a live batch.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The message says it is a version this build does not read.
    #[error("unsupported live message version {found} (this build reads {LIVE_VERSION})")]
    UnsupportedVersion {
        /// The version found in the message.
        found: u64,
    },
    /// The message is not a live batch at all, or a field has the wrong shape.
    #[error("malformed live message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Just the version of a message whose body this build cannot read.
#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

/// One accepted fix of one device, as published live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveFix {
    /// Device id.
    pub device: Uuid,
    /// The device's own identifier.
    pub uid: String,
    /// Protocol it arrived over.
    pub proto: Protocol,
    /// When ingest received it (UTC ms); lets consumers measure ingest-to-live latency.
    pub rx: EpochMillis,
    /// The fix itself, SI units.
    pub fix: Fix,
}

/// One device's status as a committed batch left it (the whole stored row, not a delta), as
/// published live. Published only when the batch moved the status or the alarm forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveStatus {
    /// Device id.
    pub device: Uuid,
    /// The device's own identifier.
    pub uid: String,
    /// When the device was last heard from: the newest of its status report and fix times
    /// (UTC ms).
    pub last_seen: EpochMillis,
    /// Time of the newest status report (UTC ms); the fields below but the alarm are its.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_time: Option<EpochMillis>,
    /// Battery level, percent 0..100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<f64>,
    /// Whether the device is charging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging: Option<bool>,
    /// Whether the device says it is moving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motion: Option<bool>,
    /// The newest alarm the device raised (a later report without one does not clear it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// Time of the report that raised [`LiveStatus::alarm`] (UTC ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_time: Option<EpochMillis>,
    /// Other things the newest report carried.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// The accepted fixes of one tenant from one committed database batch, and the device statuses
/// it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveBatch {
    /// Message version, [`LIVE_VERSION`].
    pub v: u32,
    /// The tenant (also in the channel name).
    pub tenant: Uuid,
    /// The fixes, in commit order; a device's fixes are in fix-time order.
    pub fixes: Vec<LiveFix>,
    /// The statuses the batch changed, at most one per device. Absent when empty, so a reader
    /// of version 1 that predates statuses reads the fixes as before (unknown keys are ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<LiveStatus>,
    /// Events the batch raised (after its commit), in fix-time order per device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<LiveEvent>,
}

/// One event as published live: the event and its device's uid (what a subscriber names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveEvent {
    /// The device's uid.
    pub uid: String,
    /// The event, as stored (`device_id` decides who may see it).
    pub event: Event,
}

impl LiveBatch {
    /// A batch of fixes for one tenant.
    pub fn new(tenant: Uuid, fixes: Vec<LiveFix>) -> Self {
        Self {
            v: LIVE_VERSION,
            tenant,
            fixes,
            statuses: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The batch with the events it raised.
    pub fn with_events(mut self, events: Vec<LiveEvent>) -> Self {
        self.events = events;
        self
    }

    /// The same batch carrying `statuses` too.
    pub fn with_statuses(mut self, statuses: Vec<LiveStatus>) -> Self {
        self.statuses = statuses;
        self
    }

    /// Serialize for PUBLISH.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("live batch serializes")
    }

    /// Parse a published message of version [`LIVE_VERSION`]; any other version is refused,
    /// whether or not its body happens to parse. One parse on the normal path: the version is
    /// probed separately only when the body does not parse.
    pub fn decode(payload: &[u8]) -> Result<Self, LiveError> {
        match serde_json::from_slice::<Self>(payload) {
            Ok(batch) if batch.v == LIVE_VERSION => Ok(batch),
            Ok(batch) => Err(LiveError::UnsupportedVersion {
                found: batch.v.into(),
            }),
            Err(e) => match serde_json::from_slice::<VersionProbe>(payload) {
                Ok(probe) if probe.v != u64::from(LIVE_VERSION) => {
                    Err(LiveError::UnsupportedVersion { found: probe.v })
                }
                _ => Err(LiveError::Malformed(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_carry_the_tenant() {
        let tenant = Uuid::new_v4();
        let channel = channel_for(tenant);
        assert!(channel.starts_with("gps.live."));
        assert_eq!(tenant_of_channel(&channel), Some(tenant));
        assert_eq!(tenant_of_channel("gps.live.nope"), None);
        assert_eq!(tenant_of_channel("other"), None);
    }

    #[test]
    fn batch_round_trips() {
        let batch = LiveBatch::new(
            Uuid::new_v4(),
            vec![LiveFix {
                device: Uuid::new_v4(),
                uid: "dev-1".into(),
                proto: Protocol::Udp,
                rx: 5,
                fix: Fix::new(4, 1.5, 2.5),
            }],
        );
        assert_eq!(LiveBatch::decode(&batch.encode()).unwrap(), batch);
        assert!(
            !String::from_utf8(batch.encode())
                .unwrap()
                .contains("statuses"),
            "no statuses, no key"
        );
    }

    #[test]
    fn statuses_round_trip_and_a_batch_may_carry_only_statuses() {
        let mut status = LiveStatus {
            device: Uuid::new_v4(),
            uid: "359".into(),
            last_seen: 9,
            status_time: Some(8),
            battery_pct: Some(71.0),
            charging: Some(true),
            motion: None,
            alarm: Some("sos".into()),
            alarm_time: Some(7),
            attributes: BTreeMap::new(),
        };
        status
            .attributes
            .insert("rssi".into(), serde_json::json!(-70));
        let batch = LiveBatch::new(Uuid::new_v4(), Vec::new()).with_statuses(vec![status]);
        assert_eq!(LiveBatch::decode(&batch.encode()).unwrap(), batch);
        // A reader that knows nothing of statuses (no such field) still reads the message.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OldBatch {
            v: u32,
            tenant: Uuid,
            fixes: Vec<LiveFix>,
        }
        let old: OldBatch = serde_json::from_slice(&batch.encode()).unwrap();
        assert!(old.fixes.is_empty());
    }

    #[test]
    fn only_this_version_is_read() {
        let mut batch = LiveBatch::new(Uuid::new_v4(), Vec::new());
        batch.v = LIVE_VERSION + 1;
        // Same shape, next version: refused all the same.
        assert!(matches!(
            LiveBatch::decode(&batch.encode()),
            Err(LiveError::UnsupportedVersion { found }) if found == u64::from(LIVE_VERSION) + 1
        ));
        // A future shape this build cannot parse is named by its version, not as malformed.
        let future = br#"{"v":2,"tenant":"not-a-uuid","entries":[]}"#;
        assert!(matches!(
            LiveBatch::decode(future),
            Err(LiveError::UnsupportedVersion { found: 2 })
        ));
        // Beyond u32: still a version.
        assert!(matches!(
            LiveBatch::decode(br#"{"v":4294967296}"#),
            Err(LiveError::UnsupportedVersion {
                found: 4_294_967_296
            })
        ));
        // This version with a broken body, and no version at all, are malformed.
        let broken = format!(r#"{{"v":{LIVE_VERSION},"tenant":"x","fixes":[]}}"#);
        assert!(matches!(
            LiveBatch::decode(broken.as_bytes()),
            Err(LiveError::Malformed(_))
        ));
        assert!(matches!(
            LiveBatch::decode(b"[]"),
            Err(LiveError::Malformed(_))
        ));
    }
}
