//! The record decoders between services: the Kafka `FixEnvelope` (processor's input, in both
//! its encodings: target `envelope` seeds JSON records, `envelope-binary` binary ones, written
//! from the byte layout in `docs/envelope.md`) and the Redis `LiveBatch` (fanout's input). A
//! record that is not one is a typed error, never a panic; what decodes re-encodes to itself;
//! every encoded envelope and batch decodes back.

use crate::gen::json_fix;
use crate::wire::{check_fix, same_fix, same_float};
use gps_domain::envelope::{EnvelopeError, EnvelopeFormat, FixEnvelope, ENVELOPE_VERSION};
use gps_domain::fix::Protocol;
use gps_domain::live::{LiveBatch, LiveFix};
use gps_domain::status::DeviceStatus;
use gps_fuzz::{corpus_dir, fuzz, fuzz_with, replay};
use proptest::prelude::*;
use uuid::Uuid;

fn same_envelope(a: &FixEnvelope, b: &FixEnvelope) -> bool {
    a.v == b.v
        && (a.tenant, a.device, &a.uid, a.proto, a.rx)
            == (b.tenant, b.device, &b.uid, b.proto, b.rx)
        && a.fixes.len() == b.fixes.len()
        && a.fixes.iter().zip(&b.fixes).all(|(x, y)| same_fix(x, y))
        && match (&a.status, &b.status) {
            (Some(x), Some(y)) => {
                let battery = match (x.battery_pct, y.battery_pct) {
                    (Some(a), Some(b)) => same_float(a, b),
                    (a, b) => a.is_none() && b.is_none(),
                };
                // Floats as in `same_fix`: serde_json's default parser may lose the last bit.
                (x.time, &x.alarm, x.charging, x.motion, x.attributes.len())
                    == (y.time, &y.alarm, y.charging, y.motion, y.attributes.len())
                    && battery
            }
            (x, y) => x.is_none() && y.is_none(),
        }
}

fn envelope_property(data: &[u8]) {
    match FixEnvelope::decode(data) {
        Ok(envelope) => {
            assert_eq!(envelope.v, ENVELOPE_VERSION);
            assert!(!envelope.fixes.is_empty() || envelope.status.is_some());
            if data.first() == Some(&0xB5) {
                // Binary: re-encoding is stable byte for byte (floats bit-exact, NaN included;
                // the attributes' JSON text is normalised by the first pass).
                let bytes = envelope.encode_as(EnvelopeFormat::Binary);
                let again = FixEnvelope::decode(&bytes).expect("a re-encoded envelope");
                assert_eq!(
                    again.encode_as(EnvelopeFormat::Binary),
                    bytes,
                    "{envelope:?}"
                );
            } else {
                // JSON cannot carry the NaN a binary record may hold: re-encode as it came.
                let again = FixEnvelope::decode(&envelope.encode_as(EnvelopeFormat::Json))
                    .expect("a re-encoded envelope");
                assert!(
                    same_envelope(&again, &envelope),
                    "{again:?} != {envelope:?}"
                );
            }
        }
        Err(EnvelopeError::UnsupportedVersion { found }) => {
            assert_ne!(found, u64::from(ENVELOPE_VERSION))
        }
        Err(EnvelopeError::Malformed(_) | EnvelopeError::Binary { .. } | EnvelopeError::Empty) => {}
    }
}

#[test]
fn envelope_corpus() {
    replay("envelope", envelope_property);
}

#[test]
fn envelope_fuzz() {
    fuzz("envelope", envelope_property);
}

#[test]
fn envelope_binary_corpus() {
    replay("envelope-binary", envelope_property);
}

#[test]
fn envelope_binary_fuzz() {
    fuzz("envelope-binary", envelope_property);
}

/// The binary seeds were written by hand from the byte layout of `docs/envelope.md`: the
/// richest one reads back as documented, and each broken one fails the documented way.
#[test]
fn binary_seeds_follow_the_documented_layout() {
    let seed = |name: &str| std::fs::read(corpus_dir("envelope-binary").join(name)).unwrap();
    let envelope = FixEnvelope::decode(&seed("every-field.bin")).unwrap();
    assert_eq!(envelope.proto, Protocol::Owntracks);
    assert_eq!(
        (envelope.uid.as_str(), envelope.rx),
        ("358240051111110", 1_700_000_000_500)
    );
    let [first, second] = &envelope.fixes[..] else {
        panic!("two fixes expected: {envelope:?}")
    };
    assert_eq!(
        (first.fix_time, first.lat, first.lon),
        (1_700_000_000_123, 52.520008, 13.404954)
    );
    assert_eq!(
        (
            first.altitude_m,
            first.speed_mps,
            first.heading_deg,
            first.accuracy_m
        ),
        (Some(34.5), Some(12.5), Some(270.0), Some(4.0))
    );
    assert_eq!(
        (first.battery_pct, first.satellites, first.hdop),
        (Some(88.0), Some(9), Some(0.9))
    );
    assert_eq!(first.attributes["tid"], "ab");
    assert!(first.valid && !second.valid);
    let status = envelope.status.expect("a status");
    assert_eq!(
        (
            status.time,
            status.battery_pct,
            status.charging,
            status.motion
        ),
        (1_700_000_000_000, Some(41.5), Some(true), Some(false))
    );
    assert_eq!(status.alarm.as_deref(), Some("sos"));
    assert!(status.attributes.contains_key("cell"));
    let lat = FixEnvelope::decode(&seed("float-last-bit.bin"))
        .unwrap()
        .fixes[0]
        .lat;
    assert_eq!(lat.to_bits(), (0.1f64 + 0.2).to_bits());
    assert!(matches!(
        FixEnvelope::decode(&seed("version-2.bin")),
        Err(EnvelopeError::UnsupportedVersion { found: 2 })
    ));
    assert!(matches!(
        FixEnvelope::decode(&seed("empty.bin")),
        Err(EnvelopeError::Empty)
    ));
    for broken in [
        "cut-in-fix.bin",
        "huge-count.bin",
        "magic-only.bin",
        "trailing-byte.bin",
        "uid-not-utf8.bin",
        "unknown-fix-flag.bin",
        "unknown-protocol.bin",
    ] {
        assert!(
            matches!(
                FixEnvelope::decode(&seed(broken)),
                Err(EnvelopeError::Binary { .. })
            ),
            "{broken}"
        );
    }
}

fn protocol() -> impl Strategy<Value = Protocol> {
    proptest::sample::select(Protocol::ALL.to_vec())
}

fn status() -> impl Strategy<Value = DeviceStatus> {
    (
        any::<i64>(),
        proptest::option::of(0.0f64..=100.0),
        proptest::option::of(any::<bool>()),
        proptest::option::of("\\PC{0,20}"),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(time, battery, charging, alarm, motion)| {
            let mut status = DeviceStatus::new(time);
            status.battery_pct = battery;
            status.charging = charging;
            status.alarm = alarm;
            status.motion = motion;
            status
        })
}

fn envelope() -> impl Strategy<Value = FixEnvelope> {
    (
        (
            any::<u128>(),
            any::<u128>(),
            "\\PC{0,40}",
            protocol(),
            any::<i64>(),
        ),
        proptest::collection::vec((json_fix(), any::<bool>()), 0..4),
        proptest::option::of(status()),
    )
        .prop_filter_map(
            "an envelope carries a fix or a status",
            |(head, fixes, status)| {
                let (tenant, device, uid, proto, rx) = head;
                let fixes = fixes
                    .into_iter()
                    .map(|(mut fix, valid)| {
                        fix.valid = valid;
                        fix
                    })
                    .collect::<Vec<_>>();
                if fixes.is_empty() && status.is_none() {
                    return None;
                }
                let envelope = FixEnvelope::new(
                    Uuid::from_u128(tenant),
                    Uuid::from_u128(device),
                    uid,
                    proto,
                    rx,
                    fixes,
                );
                Some(match status {
                    Some(status) => envelope.with_status(status),
                    None => envelope,
                })
            },
        )
}

#[test]
fn envelope_round_trip() {
    for (target, format) in [
        ("envelope", EnvelopeFormat::Json),
        ("envelope-binary", EnvelopeFormat::Binary),
    ] {
        fuzz_with(
            target,
            envelope(),
            |envelope| {
                let back =
                    FixEnvelope::decode(&envelope.encode_as(format)).expect("an encoded envelope");
                assert!(same_envelope(&back, envelope), "{back:?} != {envelope:?}");
            },
            |envelope| envelope.encode_as(format),
        );
    }
}

fn live_property(data: &[u8]) {
    if let Ok(batch) = LiveBatch::decode(data) {
        batch.fixes.iter().for_each(|f| check_fix(&f.fix));
        let again = LiveBatch::decode(&batch.encode()).expect("a re-encoded batch decodes");
        assert_eq!(again.fixes.len(), batch.fixes.len());
        assert!(again.fixes.iter().zip(&batch.fixes).all(|(a, b)| (
            a.device, &a.uid, a.proto, a.rx
        ) == (
            b.device, &b.uid, b.proto, b.rx
        ) && same_fix(&a.fix, &b.fix)));
    }
}

#[test]
fn live_batch_corpus() {
    replay("live-batch", live_property);
}

#[test]
fn live_batch_fuzz() {
    fuzz("live-batch", live_property);
}

#[test]
fn live_batch_round_trip() {
    let strategy = (
        any::<u128>(),
        proptest::collection::vec(
            (
                any::<u128>(),
                "\\PC{0,20}",
                protocol(),
                any::<i64>(),
                json_fix(),
            ),
            0..4,
        ),
    )
        .prop_map(|(tenant, fixes)| {
            LiveBatch::new(
                Uuid::from_u128(tenant),
                fixes
                    .into_iter()
                    .map(|(device, uid, proto, rx, fix)| LiveFix {
                        device: Uuid::from_u128(device),
                        uid,
                        proto,
                        rx,
                        fix,
                    })
                    .collect(),
            )
        });
    fuzz_with(
        "live-batch",
        strategy,
        |batch| live_property(&batch.encode()),
        LiveBatch::encode,
    );
}
