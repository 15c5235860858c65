//! The fix: one GPS position event, in SI units, and the unit conversions used at the edges.
//!
//! Inside the system every speed is m/s, every distance metres, every angle degrees and every
//! time a UTC instant in milliseconds since the Unix epoch. Protocol decoders convert on entry.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Milliseconds since the Unix epoch, UTC.
pub type EpochMillis = i64;

/// One position report of one device.
///
/// Serialized field names are short because a fix is the unit of the Kafka log; the envelope
/// documentation (`docs/envelope.md`) names each field with its unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    /// Fix time as reported by the device (UTC, ms since epoch).
    #[serde(rename = "t")]
    pub fix_time: EpochMillis,
    /// Latitude, WGS84 degrees.
    pub lat: f64,
    /// Longitude, WGS84 degrees.
    pub lon: f64,
    /// Altitude above the ellipsoid or sea level as the device reports it, metres.
    #[serde(rename = "alt", default, skip_serializing_if = "Option::is_none")]
    pub altitude_m: Option<f64>,
    /// Ground speed, m/s.
    #[serde(rename = "spd", default, skip_serializing_if = "Option::is_none")]
    pub speed_mps: Option<f64>,
    /// Course over ground, degrees clockwise from true north, 0..360.
    #[serde(rename = "hdg", default, skip_serializing_if = "Option::is_none")]
    pub heading_deg: Option<f64>,
    /// Horizontal accuracy (radius), metres.
    #[serde(rename = "acc", default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
    /// Battery level, percent 0..100.
    #[serde(rename = "bat", default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<f64>,
    /// Satellites used in the fix.
    #[serde(rename = "sat", default, skip_serializing_if = "Option::is_none")]
    pub satellites: Option<u16>,
    /// Horizontal dilution of precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdop: Option<f64>,
    /// A small bag of extra attributes the protocol carried (e.g. OwnTracks `tid`).
    #[serde(rename = "x", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Whether the device itself called the fix valid (Traccar's `valid=false`, a Teltonika
    /// record without satellites). An invalid fix is kept in history but never becomes the
    /// device's live or latest position. Written only when `false` (`"valid":false`).
    #[serde(default = "valid_default", skip_serializing_if = "is_valid")]
    pub valid: bool,
}

fn valid_default() -> bool {
    true
}

fn is_valid(valid: &bool) -> bool {
    *valid
}

impl Fix {
    /// A fix with only the mandatory fields set.
    pub fn new(fix_time: EpochMillis, lat: f64, lon: f64) -> Self {
        Self {
            fix_time,
            lat,
            lon,
            altitude_m: None,
            speed_mps: None,
            heading_deg: None,
            accuracy_m: None,
            battery_pct: None,
            satellites: None,
            hdop: None,
            attributes: BTreeMap::new(),
            valid: true,
        }
    }
}

/// The wire protocol a fix arrived over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// `POST /v1/fixes` JSON.
    Json,
    /// Traccar Client / OsmAnd HTTP.
    Osmand,
    /// OwnTracks HTTP.
    Owntracks,
    /// The compact binary UDP datagram.
    Udp,
    /// Teltonika Codec 8 / 8 Extended (UDP or TCP), the vehicle trackers' protocol.
    Teltonika,
}

impl Protocol {
    /// Every protocol, for metric label pre-registration.
    pub const ALL: [Protocol; 5] = [
        Self::Json,
        Self::Osmand,
        Self::Owntracks,
        Self::Udp,
        Self::Teltonika,
    ];

    /// Stable lowercase name, used in metrics labels and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Osmand => "osmand",
            Self::Owntracks => "owntracks",
            Self::Udp => "udp",
            Self::Teltonika => "teltonika",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown protocol `{s}`"))
    }
}

/// Unit conversions applied by the protocol decoders at the edge.
pub mod units {
    /// One international knot in m/s (1852 m per hour).
    pub const MPS_PER_KNOT: f64 = 1852.0 / 3600.0;
    /// One km/h in m/s.
    pub const MPS_PER_KMH: f64 = 1000.0 / 3600.0;

    /// Knots (Traccar/OsmAnd `speed`) to m/s.
    pub fn knots_to_mps(knots: f64) -> f64 {
        knots * MPS_PER_KNOT
    }

    /// km/h (OwnTracks `vel`) to m/s.
    pub fn kmh_to_mps(kmh: f64) -> f64 {
        kmh * MPS_PER_KMH
    }

    /// m/s to knots, for encoders that speak Traccar's unit (load generator).
    pub fn mps_to_knots(mps: f64) -> f64 {
        mps / MPS_PER_KNOT
    }

    /// m/s to km/h, for encoders that speak OwnTracks' unit (load generator).
    pub fn mps_to_kmh(mps: f64) -> f64 {
        mps / MPS_PER_KMH
    }

    /// The unit a device reports its speed in on an endpoint whose protocol does not say
    /// (the OsmAnd endpoint: Traccar Client sends knots, the OsmAnd app and GPSLogger m/s).
    /// Configured per device, with a per-tenant default; stored as [`SpeedUnit::as_str`].
    #[derive(
        Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
    )]
    pub enum SpeedUnit {
        /// Knots, Traccar's unit and the default.
        #[default]
        #[serde(rename = "kn")]
        Knots,
        /// Metres per second.
        #[serde(rename = "mps")]
        MetresPerSecond,
        /// Kilometres per hour.
        #[serde(rename = "kmh")]
        KilometresPerHour,
        /// Miles per hour.
        #[serde(rename = "mph")]
        MilesPerHour,
    }

    impl SpeedUnit {
        /// Every unit, in the order documented.
        pub const ALL: [SpeedUnit; 4] = [
            Self::Knots,
            Self::MetresPerSecond,
            Self::KilometresPerHour,
            Self::MilesPerHour,
        ];

        /// The stored and configured name: `kn`, `mps`, `kmh`, `mph`.
        pub fn as_str(self) -> &'static str {
            match self {
                Self::Knots => "kn",
                Self::MetresPerSecond => "mps",
                Self::KilometresPerHour => "kmh",
                Self::MilesPerHour => "mph",
            }
        }

        /// A speed in this unit, in m/s.
        pub fn to_mps(self, value: f64) -> f64 {
            match self {
                Self::Knots => knots_to_mps(value),
                Self::MetresPerSecond => value,
                Self::KilometresPerHour => kmh_to_mps(value),
                Self::MilesPerHour => value * 0.447_04,
            }
        }
    }

    impl std::str::FromStr for SpeedUnit {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, Self::Err> {
            Self::ALL
                .into_iter()
                .find(|u| u.as_str() == s)
                .ok_or_else(|| format!("unknown speed unit `{s}` (expected kn, mps, kmh or mph)"))
        }
    }
}

/// Current time in ms since the epoch.
pub fn now_millis() -> EpochMillis {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knots_convert_to_metres_per_second() {
        assert!((units::knots_to_mps(1.0) - 0.514_444).abs() < 1e-6);
        assert!((units::kmh_to_mps(36.0) - 10.0).abs() < 1e-12);
        assert!((units::mps_to_knots(units::knots_to_mps(12.5)) - 12.5).abs() < 1e-9);
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(p.as_str().parse::<Protocol>().unwrap(), p);
        }
        assert!("smoke-signals".parse::<Protocol>().is_err());
    }
}
