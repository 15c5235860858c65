//! Device wire formats: decoders for every ingest protocol (and the encoders the load generator
//! and tests use), pure functions from bytes to [`crate::Fix`]es in SI units.
//!
//! - [`json`]: the platform's own `POST /v1/fixes` body (one fix or an array).
//! - [`osmand`]: Traccar Client (every generation), the OsmAnd app, GPSLogger (query string,
//!   form body, Traccar Client JSON bodies), with reports without a position as device status.
//! - [`owntracks`]: OwnTracks HTTP mode (`location`, `status`, `transition`, and `encrypted`
//!   payloads opened with the device's secret).
//! - [`udp`]: the compact binary datagram, HMAC-authenticated, with its replay window.
//! - [`teltonika`]: Teltonika Codec 8 / 8 Extended (TCP and UDP framing, acknowledgements).
//!
//! Decoders never panic on any input; each error names the field at fault. They check that
//! values parse to the envelope's types (finite numbers, integers in range) but not plausibility:
//! that is the processor's job, which quarantines with a reason code.

pub mod json;
pub mod osmand;
pub mod owntracks;
pub mod teltonika;
pub mod udp;

use crate::fix::EpochMillis;
use chrono::{DateTime, NaiveDateTime};

/// Most extra attributes one fix may carry; further ones are dropped (the bag is for small
/// protocol extras, not for payloads).
pub const MAX_ATTRIBUTES: usize = 16;
/// Longest attribute key kept, in bytes.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// Longest attribute string value kept, in bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 256;

/// Parse a textual timestamp: RFC 3339 / ISO 8601 (`2024-05-01T10:00:00Z`, with offset or
/// fraction; without a zone it is read as UTC) or Traccar's `yyyy-MM-dd HH:mm:ss` (UTC).
pub fn parse_time_text(text: &str) -> Option<EpochMillis> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.timestamp_millis());
        }
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

/// Reads a decimal number the way a lenient device protocol writes it, refusing NaN, infinities
/// and anything that is not a plain number (`"NaN"`, `"inf"`, `"1e999"` all fail).
pub fn parse_finite(text: &str) -> Option<f64> {
    let text = text.trim();
    // Rust's float parser accepts "inf", "NaN" and "infinity"; device protocols never mean them.
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_text_forms() {
        assert_eq!(parse_time_text("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time_text("1970-01-01T00:00:01.250Z"), Some(1250));
        assert_eq!(parse_time_text("1970-01-01T01:00:01+01:00"), Some(1000));
        assert_eq!(parse_time_text("1970-01-01T00:00:01"), Some(1000));
        assert_eq!(parse_time_text("1970-01-01 00:00:01"), Some(1000));
        assert_eq!(
            parse_time_text("2024-05-01T10:00:00.000+0000"),
            Some(1_714_557_600_000)
        );
        assert_eq!(parse_time_text("yesterday"), None);
        assert_eq!(parse_time_text(""), None);
    }

    #[test]
    fn finite_numbers_only() {
        assert_eq!(parse_finite("1.5"), Some(1.5));
        assert_eq!(parse_finite("-1e3"), Some(-1000.0));
        assert_eq!(parse_finite("NaN"), None);
        assert_eq!(parse_finite("inf"), None);
        assert_eq!(parse_finite("Infinity"), None);
        assert_eq!(parse_finite("1e999"), None);
        assert_eq!(parse_finite(""), None);
        assert_eq!(parse_finite("12abc"), None);
    }
}
