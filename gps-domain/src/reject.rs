//! The quarantine record of topic `gps.fixes.rejected`: the original fix with its reason code.
//!
//! The processor writes one [`RejectRecord`] per refused fix (with the envelope fields it came
//! in) and one per record it could not read at all (with the raw payload, base64). Each names
//! the source partition and offset, so an operator can find the original in `gps.fixes`.
//! Wire format: UTF-8 JSON whose first key is `v` ([`REJECT_VERSION`]); documented in
//! `docs/processor.md`.

use crate::fix::{EpochMillis, Fix, Protocol};
use crate::FixEnvelope;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// The reject record version this build writes.
pub const REJECT_VERSION: u32 = 1;

/// Why a fix (or a whole record) was quarantined. The `snake_case` name is the reason code on
/// the wire and the `reason` label of the processor's reject counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// A number is NaN or infinite.
    NonFinite,
    /// Latitude outside -90..=90.
    LatOutOfRange,
    /// Longitude outside -180..=180.
    LonOutOfRange,
    /// Exactly (0, 0): the classic "no fix" placeholder.
    NullIsland,
    /// Fix time too far after the ingest receive time.
    FutureTime,
    /// Fix time too far before the ingest receive time.
    TooOld,
    /// Fix time about a multiple of 1024 weeks before the receive time: a GPS week-number
    /// rollover bug in the device.
    WeekRollover,
    /// Reported horizontal accuracy worse than the tenant threshold.
    PoorAccuracy,
    /// The implied speed from the device's previous accepted fix is impossible.
    ImpossibleSpeed,
    /// The record is not a readable envelope (neither encoding, wrong shape).
    MalformedRecord,
    /// The record is an envelope of a version this build does not read.
    UnsupportedVersion,
    /// The envelope carries neither fixes nor a status report (a status report alone is kept
    /// as the device's status, not rejected).
    EmptyEnvelope,
}

impl RejectReason {
    /// Every reason, for metric label pre-registration.
    pub const ALL: [RejectReason; 12] = [
        Self::NonFinite,
        Self::LatOutOfRange,
        Self::LonOutOfRange,
        Self::NullIsland,
        Self::FutureTime,
        Self::TooOld,
        Self::WeekRollover,
        Self::PoorAccuracy,
        Self::ImpossibleSpeed,
        Self::MalformedRecord,
        Self::UnsupportedVersion,
        Self::EmptyEnvelope,
    ];

    /// The stable reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NonFinite => "non_finite",
            Self::LatOutOfRange => "lat_out_of_range",
            Self::LonOutOfRange => "lon_out_of_range",
            Self::NullIsland => "null_island",
            Self::FutureTime => "future_time",
            Self::TooOld => "too_old",
            Self::WeekRollover => "week_rollover",
            Self::PoorAccuracy => "poor_accuracy",
            Self::ImpossibleSpeed => "impossible_speed",
            Self::MalformedRecord => "malformed_record",
            Self::UnsupportedVersion => "unsupported_version",
            Self::EmptyEnvelope => "empty_envelope",
        }
    }

    /// The reason for an envelope that failed to decode.
    pub fn for_envelope_error(error: &crate::EnvelopeError) -> Self {
        match error {
            crate::EnvelopeError::UnsupportedVersion { .. } => Self::UnsupportedVersion,
            crate::EnvelopeError::Malformed(_) | crate::EnvelopeError::Binary { .. } => {
                Self::MalformedRecord
            }
            crate::EnvelopeError::Empty => Self::EmptyEnvelope,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the rejected data sits in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset of the record in that partition.
    pub offset: i64,
}

/// One quarantined fix, or one unreadable record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectRecord {
    /// Record version, [`REJECT_VERSION`].
    pub v: u32,
    /// The reason code.
    pub reason: RejectReason,
    /// Human-readable detail (the offending value and the threshold).
    pub detail: String,
    /// Where the original record is.
    pub source: SourcePosition,
    /// When the processor rejected it (UTC ms). Not part of the identity of the reject.
    pub rejected_at: EpochMillis,
    /// Envelope tenant (absent for unreadable records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Uuid>,
    /// Envelope device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Uuid>,
    /// Envelope device uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Envelope protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Protocol>,
    /// Envelope receive time (UTC ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx: Option<EpochMillis>,
    /// Index of the fix inside the envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// The rejected fix, as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<Fix>,
    /// The raw record payload, standard base64, for records that could not be decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

impl RejectRecord {
    /// The reject of fix `index` of `envelope`.
    pub fn for_fix(
        envelope: &FixEnvelope,
        index: usize,
        fix: &Fix,
        reason: RejectReason,
        detail: String,
        source: SourcePosition,
        rejected_at: EpochMillis,
    ) -> Self {
        Self {
            v: REJECT_VERSION,
            reason,
            detail,
            source,
            rejected_at,
            tenant: Some(envelope.tenant),
            device: Some(envelope.device),
            uid: Some(envelope.uid.clone()),
            proto: Some(envelope.proto),
            rx: Some(envelope.rx),
            index: u32::try_from(index).ok(),
            fix: Some(fix.clone()),
            raw: None,
        }
    }

    /// The reject of a record that is not a readable envelope; the payload travels as base64.
    pub fn for_record(
        payload: &[u8],
        reason: RejectReason,
        detail: String,
        source: SourcePosition,
        rejected_at: EpochMillis,
    ) -> Self {
        Self {
            v: REJECT_VERSION,
            reason,
            detail,
            source,
            rejected_at,
            tenant: None,
            device: None,
            uid: None,
            proto: None,
            rx: None,
            index: None,
            fix: None,
            raw: Some(STANDARD.encode(payload)),
        }
    }

    /// The Kafka key: the device id when known, else `partition:offset` of the source.
    pub fn key(&self) -> String {
        match self.device {
            Some(device) => device.hyphenated().to_string(),
            None => format!("{}:{}", self.source.partition, self.source.offset),
        }
    }

    /// The raw payload of an unreadable record, decoded from base64.
    pub fn raw_payload(&self) -> Option<Vec<u8>> {
        self.raw.as_deref().and_then(|r| STANDARD.decode(r).ok())
    }

    /// Serialize to the record payload (`v` first).
    pub fn encode(&self) -> Vec<u8> {
        // Plain data into a Vec: cannot fail (non-finite floats serialize as null).
        serde_json::to_vec(self).expect("reject record serializes")
    }

    /// Parse a record payload.
    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> SourcePosition {
        SourcePosition {
            topic: "gps.fixes".into(),
            partition: 3,
            offset: 42,
        }
    }

    #[test]
    fn fix_rejects_round_trip_with_the_envelope_fields() {
        let fix = Fix::new(1_700_000_000_000, 0.0, 0.0);
        let env = FixEnvelope::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            "dev-1",
            Protocol::Json,
            1_700_000_000_500,
            vec![fix.clone()],
        );
        let record = RejectRecord::for_fix(
            &env,
            0,
            &fix,
            RejectReason::NullIsland,
            "lat=0 lon=0".into(),
            source(),
            5,
        );
        let bytes = record.encode();
        assert!(bytes.starts_with(b"{\"v\":1,"));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"reason\":\"null_island\""), "{text}");
        assert_eq!(RejectRecord::decode(&bytes).unwrap(), record);
        assert_eq!(record.key(), env.device.to_string());
    }

    #[test]
    fn unreadable_records_keep_their_bytes() {
        let payload = b"\xff\x00not json";
        let record = RejectRecord::for_record(
            payload,
            RejectReason::MalformedRecord,
            "expected value".into(),
            source(),
            5,
        );
        let back = RejectRecord::decode(&record.encode()).unwrap();
        assert_eq!(back.raw_payload().unwrap(), payload);
        assert_eq!(back.key(), "3:42");
    }

    #[test]
    fn reason_codes_match_serde_names() {
        for reason in RejectReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }
}
