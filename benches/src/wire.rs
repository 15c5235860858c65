//! How the load generator puts simulated fixes on the wire, one function per ingest protocol:
//! thin wrappers over the device-side encoders in `gps_domain::wire`, which speak each
//! protocol's own units (knots for OsmAnd, km/h and whole seconds for OwnTracks), so the load
//! exercises ingest's decoders as real devices do.

use gps_domain::Fix;

/// The ingest protocols the load generator drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `POST /v1/fixes` with one JSON fix per request.
    HttpSingle,
    /// `POST /v1/fixes` with a JSON array of `--batch` fixes of one device.
    HttpBatch,
    /// Traccar Client / OsmAnd: `POST /?id=..&lat=..` (query string, no body).
    Osmand,
    /// OwnTracks HTTP: `POST /owntracks` with a `_type=location` body.
    Owntracks,
    /// Binary UDP datagrams (several fixes per datagram).
    Udp,
    /// Teltonika Codec 8 over UDP (`--udp-addr` = ingest's Teltonika port, 8085), `--batch`
    /// records per datagram, each answered by the device acknowledgement after Kafka took it.
    /// Null Island faults become status-only records (no fix to quarantine): run with
    /// `--bad-rate 0`.
    Teltonika,
}

impl Mode {
    /// Whether the protocol carries fix times in whole seconds (so the simulation must step by
    /// whole seconds, or distinct fixes would collapse into one).
    pub fn second_resolution(self) -> bool {
        matches!(self, Self::Osmand | Self::Owntracks)
    }

    /// Stable name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpSingle => "http-single",
            Self::HttpBatch => "http-batch",
            Self::Osmand => "osmand",
            Self::Owntracks => "owntracks",
            Self::Udp => "udp",
            Self::Teltonika => "teltonika",
        }
    }
}

/// The body of `POST /v1/fixes`: one object for one fix, an array otherwise (ingest's own
/// device-side encoder, so the load generator speaks exactly what ingest reads).
pub fn json_body(fixes: &[Fix]) -> Vec<u8> {
    gps_domain::wire::json::encode(fixes, None)
}

/// The OsmAnd / Traccar Client query string for one fix (speed in knots, time in seconds).
pub fn osmand_query(uid: &str, fix: &Fix) -> String {
    gps_domain::wire::osmand::encode_query(uid, fix)
}

/// The OwnTracks `_type=location` body for one fix (km/h, whole seconds).
pub fn owntracks_body(fix: &Fix, tid: &str) -> Vec<u8> {
    gps_domain::wire::owntracks::encode(fix, tid)
}

/// Most fixes one UDP datagram carries.
pub const UDP_MAX_FIXES: usize = gps_domain::wire::udp::MAX_FIXES;

/// A signed UDP datagram of `fixes` for `device` with replay counter `counter`.
pub fn udp_datagram(
    device: uuid::Uuid,
    counter: u64,
    fixes: &[Fix],
    key: &[u8; 32],
) -> Result<Vec<u8>, gps_domain::wire::udp::UdpError> {
    gps_domain::wire::udp::encode(device, counter, fixes, key)
}

/// Most records one Teltonika datagram carries here (an FMB unit sends up to about 50).
pub const TELTONIKA_MAX_RECORDS: usize = 50;

/// A Teltonika Codec 8 UDP datagram of `fixes` from `imei`, channel packet id `packet_id`, as an
/// FMB unit sends it (speed in km/h, position in 1e-7 degrees, its permanent IO elements).
pub fn teltonika_datagram(
    imei: &str,
    packet_id: u16,
    fixes: &[Fix],
) -> Result<Vec<u8>, gps_domain::wire::teltonika::TeltonikaError> {
    use gps_domain::wire::teltonika::{encode_udp, AvlRecord, Codec};
    let records: Vec<_> = fixes.iter().map(AvlRecord::from_fix).collect();
    encode_udp(packet_id, packet_id as u8, imei, Codec::Codec8, &records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_resolution_protocols_are_the_ones_with_second_timestamps() {
        let fix = Fix::new(1_700_000_000_123, 52.5, 13.4);
        assert!(osmand_query("d", &fix).contains("timestamp=1700000000"));
        assert!(Mode::Osmand.second_resolution() && Mode::Owntracks.second_resolution());
        assert!(!Mode::HttpBatch.second_resolution() && !Mode::Udp.second_resolution());
    }

    #[test]
    fn teltonika_datagrams_carry_the_imei_and_every_record() {
        let fixes: Vec<Fix> = (0..TELTONIKA_MAX_RECORDS as i64)
            .map(|i| Fix::new(1_700_000_000_000 + i, 52.5, 13.4))
            .collect();
        let d = teltonika_datagram("352093086403655", 7, &fixes).unwrap();
        let packet = gps_domain::wire::teltonika::decode_udp(&d).unwrap();
        assert_eq!((packet.imei, packet.packet_id), ("352093086403655", 7));
        assert_eq!(packet.avl.records.len(), TELTONIKA_MAX_RECORDS);
    }

    #[test]
    fn udp_datagrams_fit_the_batch_cap() {
        let fixes: Vec<Fix> = (0..UDP_MAX_FIXES as i64)
            .map(|i| Fix::new(1_700_000_000_000 + i, 52.5, 13.4))
            .collect();
        let d = udp_datagram(uuid::Uuid::new_v4(), 1, &fixes, &[7; 32]).unwrap();
        assert!(d.len() <= gps_domain::wire::udp::MAX_DATAGRAM);
        assert!(udp_datagram(uuid::Uuid::new_v4(), 1, &[], &[7; 32]).is_err());
    }
}
