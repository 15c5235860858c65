//! The device wire decoders of `gps_domain::wire`: JSON, OsmAnd (parameters and JSON body),
//! OwnTracks, UDP. Each refuses with its typed error and never panics; what it accepts is
//! within the documented caps (finite numbers, attribute bag limits), and what it accepts
//! encodes and decodes back to itself where an encoder exists.

use crate::gen::{close, device_fix, json_fix};
use gps_domain::fix::units::SpeedUnit;
use gps_domain::fix::Fix;
use gps_domain::wire::{
    json, osmand, owntracks, teltonika, udp, MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE,
};
use gps_fuzz::{fuzz, fuzz_with, replay};
use proptest::prelude::*;
use uuid::Uuid;

/// The batch limit ingest decodes with.
const MAX_ITEMS: usize = 1000;
/// Receive time filled into OsmAnd reports without a timestamp.
const NOW: i64 = 1_700_000_000_000;
/// The UDP key the corpus datagrams are signed with (`fuzz/corpus/udp/README`).
const UDP_KEY: [u8; 32] = [0x42; 32];

/// Floats equal up to the last bits serde_json's default (not `float_roundtrip`) parser may
/// lose.
pub(crate) fn same_float(a: f64, b: f64) -> bool {
    let difference = (a - b).abs();
    // Subnormals carry fewer bits: there the absolute difference is what is bounded.
    a == b
        || difference <= 4.0 * f64::EPSILON * a.abs().max(b.abs())
        || difference < f64::MIN_POSITIVE
}

fn same_option(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same_float(a, b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// Two fixes equal field by field, floats as [`same_float`].
pub(crate) fn same_fix(a: &Fix, b: &Fix) -> bool {
    a.fix_time == b.fix_time
        && same_float(a.lat, b.lat)
        && same_float(a.lon, b.lon)
        && same_option(a.altitude_m, b.altitude_m)
        && same_option(a.speed_mps, b.speed_mps)
        && same_option(a.heading_deg, b.heading_deg)
        && same_option(a.accuracy_m, b.accuracy_m)
        && same_option(a.battery_pct, b.battery_pct)
        && same_option(a.hdop, b.hdop)
        && a.satellites == b.satellites
        && a.valid == b.valid
        && a.attributes.len() == b.attributes.len()
        && a.attributes
            .iter()
            .zip(&b.attributes)
            .all(|((ka, va), (kb, vb))| {
                ka == kb
                    && match (va.as_f64(), vb.as_f64()) {
                        (Some(x), Some(y)) if va.is_f64() => same_float(x, y),
                        _ => va == vb,
                    }
            })
}

/// What every decoder promises about a fix it accepts.
pub(crate) fn check_fix(fix: &Fix) {
    assert!(fix.lat.is_finite() && fix.lon.is_finite(), "{fix:?}");
    for v in [
        fix.altitude_m,
        fix.speed_mps,
        fix.heading_deg,
        fix.accuracy_m,
        fix.battery_pct,
        fix.hdop,
    ]
    .into_iter()
    .flatten()
    {
        assert!(v.is_finite(), "a non-finite reading in {fix:?}");
    }
    assert!(fix.attributes.len() <= MAX_ATTRIBUTES, "{fix:?}");
    for (key, value) in &fix.attributes {
        assert!(key.len() <= MAX_ATTRIBUTE_KEY, "attribute key {key:?}");
        if let Some(s) = value.as_str() {
            assert!(
                s.len() <= MAX_ATTRIBUTE_VALUE,
                "attribute {key} of {} bytes",
                s.len()
            );
        }
    }
}

// --- JSON (`POST /v1/fixes`) -------------------------------------------------------------------

const JSON_CODES: [&str; 7] = [
    "missing",
    "wrong_type",
    "wrong_unit",
    "out_of_range",
    "not_an_object",
    "unknown_device",
    "too_large",
];

fn json_property(data: &[u8]) {
    let Ok(decoded) = json::decode(data, MAX_ITEMS) else {
        return; // a `JsonError`: the typed refusal of the whole body
    };
    assert!((1..=MAX_ITEMS).contains(&decoded.total()));
    for error in &decoded.errors {
        assert!(JSON_CODES.contains(&error.code), "{error:?}");
        assert!(error.index < decoded.total());
    }
    for (_, item) in &decoded.items {
        check_fix(&item.fix);
        // The encoder writes `time` as a number, which the decoder reads only inside the
        // epoch-milliseconds window (an ISO `time` may decode outside it).
        let magnitude = item.fix.fix_time.unsigned_abs() as f64;
        if !(json::MIN_EPOCH_MILLIS..json::MAX_EPOCH_MILLIS).contains(&magnitude) {
            continue;
        }
        // What was accepted encodes and decodes back to itself.
        let body = json::encode(std::slice::from_ref(&item.fix), item.device.as_deref());
        let again = json::decode(&body, 1).expect("a re-encoded item decodes");
        assert!(again.errors.is_empty(), "{:?}", again.errors);
        let (_, back) = &again.items[0];
        assert_eq!(back.device, item.device);
        assert!(
            same_fix(&back.fix, &item.fix),
            "{:?} != {:?}",
            back.fix,
            item.fix
        );
    }
}

#[test]
fn json_corpus() {
    replay("json", json_property);
}

#[test]
fn json_fuzz() {
    fuzz("json", json_property);
}

#[test]
fn json_round_trip() {
    let strategy = (
        proptest::collection::vec(json_fix(), 1..4),
        proptest::option::of("\\PC{1,40}"),
    );
    fuzz_with(
        "json",
        strategy,
        |(fixes, device)| {
            let decoded = json::decode(&json::encode(fixes, device.as_deref()), MAX_ITEMS)
                .expect("an encoded batch decodes");
            assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
            assert_eq!(decoded.items.len(), fixes.len());
            for ((_, item), fix) in decoded.items.iter().zip(fixes) {
                assert_eq!(&item.device, device);
                assert!(same_fix(&item.fix, fix), "{:?} != {fix:?}", item.fix);
            }
        },
        |(fixes, device)| json::encode(fixes, device.as_deref()),
    );
}

// --- OsmAnd / Traccar Client -------------------------------------------------------------------

fn osmand_report(report: &osmand::OsmandReport) {
    assert!(!report.uid.is_empty(), "{report:?}");
    assert!(
        !report.fixes.is_empty() || report.status.is_some(),
        "a report carries a fix or a status: {report:?}"
    );
    for item in &report.fixes {
        check_fix(&item.fix);
        assert!(item.speed.is_none_or(f64::is_finite), "{item:?}");
    }
}

fn osmand_params_property(data: &[u8]) {
    if let Ok(report) = osmand::decode_params(data, NOW) {
        osmand_report(&report);
        assert!(report.fixes.len() <= 1);
    }
}

fn osmand_json_property(data: &[u8]) {
    if let Ok(report) = osmand::decode_json(data, NOW) {
        osmand_report(&report);
        assert!(report.fixes.len() <= osmand::MAX_JSON_ITEMS);
    }
}

#[test]
fn osmand_params_corpus() {
    replay("osmand-params", osmand_params_property);
}

#[test]
fn osmand_params_fuzz() {
    fuzz("osmand-params", osmand_params_property);
}

#[test]
fn osmand_json_corpus() {
    replay("osmand-json", osmand_json_property);
}

#[test]
fn osmand_json_fuzz() {
    fuzz("osmand-json", osmand_json_property);
}

#[test]
fn osmand_params_round_trip() {
    fuzz_with(
        "osmand-params",
        ("[A-Za-z0-9_.-]{1,32}", device_fix()),
        |(uid, fix)| {
            let report = osmand::decode_params(osmand::encode_query(uid, fix).as_bytes(), NOW)
                .expect("an encoded report decodes");
            assert_eq!(&report.uid, uid);
            let (fixes, _) = report.into_parts(SpeedUnit::Knots);
            let back = &fixes[0];
            assert_eq!(back.fix_time, fix.fix_time);
            assert_eq!((back.lat, back.lon), (fix.lat, fix.lon));
            assert!(
                close(back.speed_mps, fix.speed_mps, 1e-9),
                "{back:?} {fix:?}"
            );
            assert_eq!(back.heading_deg, fix.heading_deg);
            assert_eq!(back.altitude_m, fix.altitude_m);
            assert_eq!(back.accuracy_m, fix.accuracy_m);
            assert_eq!(back.battery_pct, fix.battery_pct);
        },
        |(uid, fix)| osmand::encode_query(uid, fix).into_bytes(),
    );
}

// --- OwnTracks ---------------------------------------------------------------------------------

fn owntracks_property(data: &[u8]) {
    match owntracks::decode(data, NOW) {
        Ok(owntracks::OwntracksMessage::Location(fix, _)) => check_fix(&fix),
        Ok(owntracks::OwntracksMessage::Other(kind)) => assert!(kind.len() <= 32, "{kind:?}"),
        Ok(owntracks::OwntracksMessage::Status(_) | owntracks::OwntracksMessage::Encrypted(_))
        | Err(_) => {}
    }
}

#[test]
fn owntracks_corpus() {
    replay("owntracks", owntracks_property);
}

#[test]
fn owntracks_fuzz() {
    fuzz("owntracks", owntracks_property);
}

#[test]
fn owntracks_round_trip() {
    fuzz_with(
        "owntracks",
        ("[A-Za-z0-9]{1,2}", device_fix()),
        |(tid, fix)| {
            let Ok(owntracks::OwntracksMessage::Location(back, _)) =
                owntracks::decode(&owntracks::encode(fix, tid), NOW)
            else {
                panic!("an encoded location does not decode as one");
            };
            assert_eq!(back.fix_time, fix.fix_time);
            let mut expected = fix.clone();
            expected.speed_mps = back.speed_mps;
            expected.attributes = back.attributes.clone();
            assert!(same_fix(&back, &expected), "{back:?} != {fix:?}");
            assert!(
                close(back.speed_mps, fix.speed_mps, 1e-9),
                "{back:?} {fix:?}"
            );
            assert_eq!(
                back.attributes.get("tid").and_then(|v| v.as_str()),
                Some(tid.as_str())
            );
        },
        |(tid, fix)| owntracks::encode(fix, tid),
    );
}

// --- UDP ---------------------------------------------------------------------------------------

fn udp_property(data: &[u8]) {
    let header = udp::parse_header(data);
    match udp::open(data, &UDP_KEY) {
        Ok(datagram) => {
            let header = header.expect("an opened datagram has a header");
            assert_eq!(datagram.device, header.device);
            assert_eq!(datagram.counter, header.counter);
            assert_eq!(datagram.fixes.len(), header.fix_count);
            datagram.fixes.iter().for_each(check_fix);
        }
        Err(error) => {
            // Every refusal has its metric label; a parsed header fails only on the tag.
            assert!(!error.reason().is_empty());
            if header.is_ok() {
                assert_eq!(error, udp::UdpError::BadMac);
            }
        }
    }
}

#[test]
fn udp_corpus() {
    replay("udp", udp_property);
}

#[test]
fn udp_fuzz() {
    fuzz("udp", udp_property);
}

#[test]
fn udp_round_trip() {
    let strategy = (
        any::<u128>(),
        any::<u64>(),
        proptest::collection::vec(device_fix(), 1..=udp::MAX_FIXES),
    );
    fuzz_with(
        "udp",
        strategy,
        |(device, counter, fixes)| {
            let device = Uuid::from_u128(*device);
            let bytes = udp::encode(device, *counter, fixes, &UDP_KEY).expect("encodable");
            let datagram = udp::open(&bytes, &UDP_KEY).expect("a signed datagram opens");
            assert_eq!((datagram.device, datagram.counter), (device, *counter));
            assert_eq!(datagram.fixes.len(), fixes.len());
            for (back, fix) in datagram.fixes.iter().zip(fixes) {
                assert_eq!(back.fix_time, fix.fix_time);
                assert!((back.lat - fix.lat).abs() <= 0.51e-7, "{back:?} {fix:?}");
                assert!((back.lon - fix.lon).abs() <= 0.51e-7, "{back:?} {fix:?}");
                // Fixed point: 0.01 m, 0.01 m/s, 0.01°, 0.1 m, whole percent.
                assert!(close(back.altitude_m, fix.altitude_m, 0.006));
                assert!(close(back.speed_mps, fix.speed_mps, 0.006));
                assert!(close(back.heading_deg, fix.heading_deg, 0.006));
                assert!(close(back.accuracy_m, fix.accuracy_m, 0.06));
                assert!(close(back.battery_pct, fix.battery_pct, 0.51));
            }
        },
        |(device, counter, fixes)| {
            udp::encode(Uuid::from_u128(*device), *counter, fixes, &UDP_KEY).unwrap_or_default()
        },
    );
}

// --- Teltonika (Codec 8 / 8 Extended, TCP and UDP framing) -----------------------------------

fn teltonika_packet(packet: &teltonika::AvlPacket<'_>) {
    let report = teltonika::report(packet);
    report.fixes.iter().for_each(check_fix);
    assert!(report.fixes.len() <= packet.records.len());
    // What decoded encodes and decodes back to itself.
    let data = teltonika::encode_avl(packet.codec, &packet.records).expect("re-encodable");
    let again = teltonika::decode_avl(&data).expect("a re-encoded data field decodes");
    assert_eq!(&again, packet);
}

fn teltonika_property(data: &[u8]) {
    if let Ok(Some((imei, used))) = teltonika::parse_imei(data) {
        assert!(used <= data.len() && !imei.is_empty());
        assert!(imei.len() <= teltonika::MAX_IMEI_LEN && imei.bytes().all(|b| b.is_ascii_digit()));
    }
    if let Ok(teltonika::TcpChunk::Frame(len)) = teltonika::tcp_chunk(data, teltonika::MAX_DATA_LEN)
    {
        let most = teltonika::TCP_HEADER_LEN + teltonika::MAX_DATA_LEN + teltonika::TCP_TRAILER_LEN;
        assert!(len <= most, "a frame of {len} bytes");
        if let Some(Ok(packet)) = data.get(..len).map(teltonika::decode_tcp_frame) {
            teltonika_packet(&packet);
        }
    }
    for result in [
        teltonika::decode_tcp_frame(data),
        teltonika::decode_avl(data),
        teltonika::decode_udp(data).map(|udp| udp.avl),
    ] {
        match result {
            Ok(packet) => teltonika_packet(&packet),
            Err(error) => assert!(!error.reason().is_empty()),
        }
    }
}

#[test]
fn teltonika_corpus() {
    replay("teltonika", teltonika_property);
}

#[test]
fn teltonika_fuzz() {
    fuzz("teltonika", teltonika_property);
}

// The Teltonika encoders' round trips (TCP and UDP, both codecs) are property tests beside the
// codec: `gps_domain::wire::teltonika::tests::{tcp_round_trip, udp_round_trip}`; here, what the
// decoders accept from the corpus and its mutations re-encodes to itself (`teltonika_packet`).
