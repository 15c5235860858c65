//! The versioned Kafka record of topic `gps.fixes`: one record carries the fixes of one device
//! from one request, because the broker's cost is per record, not per byte.
//!
//! Wire format (documented in `docs/envelope.md`): UTF-8 JSON whose first key is `v`, the
//! envelope version. Decoders read `v` first and refuse versions they do not know with
//! [`EnvelopeError::UnsupportedVersion`], so a newer producer never gets silently misread.
//! The record key is the device id (UUID text), which keeps a device's fixes in order on one
//! partition.

use crate::fix::{EpochMillis, Fix, Protocol};
use crate::status::DeviceStatus;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The envelope version this build writes, and the newest it reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// The fixes of one device from one request, as stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixEnvelope {
    /// Envelope version; always [`ENVELOPE_VERSION`] when written by this build.
    pub v: u32,
    /// Tenant that owns the device (taken from the device credential, never from the body).
    pub tenant: Uuid,
    /// Device id (the database id; also the Kafka record key).
    pub device: Uuid,
    /// The device's own identifier as the device knows it (IMEI, Traccar id, OwnTracks user/device).
    pub uid: String,
    /// Protocol the fixes came in over.
    pub proto: Protocol,
    /// When ingest received the request (UTC ms).
    pub rx: EpochMillis,
    /// The fixes, in the order the device sent them. May be empty when `status` is set.
    pub fixes: Vec<Fix>,
    /// The device's newest status report of this request (a report without a position, or the
    /// battery/charging/alarm/motion a fix report carried). Optional, so old readers of version
    /// 1 and old records are unaffected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
}

/// Why a record could not be read as an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The record says it is a version this build does not understand.
    #[error("unsupported envelope version {found} (this build reads up to {ENVELOPE_VERSION})")]
    UnsupportedVersion {
        /// The version found in the record.
        found: u64,
    },
    /// The record is not an envelope at all, or a field has the wrong shape.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The envelope carries neither fixes nor a status report.
    #[error("envelope carries no fixes and no status")]
    Empty,
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

impl FixEnvelope {
    /// A version-1 envelope.
    pub fn new(
        tenant: Uuid,
        device: Uuid,
        uid: impl Into<String>,
        proto: Protocol,
        rx: EpochMillis,
        fixes: Vec<Fix>,
    ) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            tenant,
            device,
            uid: uid.into(),
            proto,
            rx,
            fixes,
            status: None,
        }
    }

    /// The same envelope carrying a status report too.
    pub fn with_status(mut self, status: DeviceStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// The Kafka record key: the device id as hyphenated UUID text.
    pub fn key(&self) -> String {
        self.device.hyphenated().to_string()
    }

    /// Serialize to the record payload.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a struct of plain data into a Vec cannot fail.
        serde_json::to_vec(self).expect("envelope serializes")
    }

    /// Parse a record payload, checking the version before the shape.
    pub fn decode(payload: &[u8]) -> Result<Self, EnvelopeError> {
        let version = match fast_version(payload) {
            Some(v) => v,
            None => serde_json::from_slice::<VersionProbe>(payload)?.v,
        };
        if version != u64::from(ENVELOPE_VERSION) {
            return Err(EnvelopeError::UnsupportedVersion { found: version });
        }
        let envelope: FixEnvelope = serde_json::from_slice(payload)?;
        if envelope.fixes.is_empty() && envelope.status.is_none() {
            return Err(EnvelopeError::Empty);
        }
        Ok(envelope)
    }
}

/// Reads the version from the `{"v":N,` prefix this build always writes, avoiding a second
/// parse of the whole record; `None` sends the caller to the general path.
fn fast_version(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(b"{\"v\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 9 || rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FixEnvelope {
        let mut fix = Fix::new(1_700_000_000_123, 52.520008, 13.404954);
        fix.speed_mps = Some(12.5);
        fix.heading_deg = Some(270.0);
        fix.accuracy_m = Some(4.0);
        fix.battery_pct = Some(88.0);
        fix.satellites = Some(9);
        fix.hdop = Some(0.9);
        fix.altitude_m = Some(34.5);
        fix.attributes.insert("tid".into(), serde_json::json!("ab"));
        FixEnvelope::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            "358240051111110",
            Protocol::Osmand,
            1_700_000_000_500,
            vec![fix, Fix::new(1_700_000_001_123, -33.86, 151.21)],
        )
    }

    #[test]
    fn round_trips_every_field() {
        let env = sample();
        let bytes = env.encode();
        assert!(
            bytes.starts_with(b"{\"v\":1,"),
            "version must lead the record"
        );
        assert_eq!(FixEnvelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn optional_fields_are_omitted_when_absent() {
        let mut env = sample();
        env.fixes.truncate(0);
        env.fixes.push(Fix::new(1, 1.0, 2.0));
        let text = String::from_utf8(env.encode()).unwrap();
        assert!(!text.contains("spd"), "{text}");
        assert!(!text.contains("\"x\""), "{text}");
    }

    #[test]
    fn newer_version_is_refused_not_misread() {
        let env = sample();
        let text = String::from_utf8(env.encode())
            .unwrap()
            .replacen("{\"v\":1,", "{\"v\":2,", 1);
        match FixEnvelope::decode(text.as_bytes()) {
            Err(EnvelopeError::UnsupportedVersion { found: 2 }) => {}
            other => panic!("expected unsupported version, got {other:?}"),
        }
    }

    #[test]
    fn version_is_found_when_not_first() {
        let env = sample();
        let mut value = serde_json::to_value(&env).unwrap();
        value["v"] = serde_json::json!(7);
        // serde_json's map keeps keys sorted, so `v` is no longer first.
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            FixEnvelope::decode(&bytes),
            Err(EnvelopeError::UnsupportedVersion { found: 7 })
        ));
    }

    #[test]
    fn garbage_and_empty_envelopes_are_errors() {
        assert!(matches!(
            FixEnvelope::decode(b"not json"),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            FixEnvelope::decode(b"{\"v\":1,\"tenant\":5}"),
            Err(EnvelopeError::Malformed(_))
        ));
        let mut env = sample();
        env.fixes.clear();
        assert!(matches!(
            FixEnvelope::decode(&env.encode()),
            Err(EnvelopeError::Empty)
        ));
    }

    #[test]
    fn key_is_the_device_id() {
        let env = sample();
        assert_eq!(env.key(), env.device.to_string());
    }
}
