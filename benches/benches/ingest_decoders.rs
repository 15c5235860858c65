//! Ingest's device decoders (`gps_domain::wire`), bytes to fixes, per fix: the platform's JSON
//! body of `POST /v1/fixes` (one fix, a batch of 100), the OsmAnd / Traccar Client parameters
//! (query string; a form body goes through the same decoder) and its JSON body, an OwnTracks
//! location message, and the signed UDP datagram (framing, HMAC-SHA256 verification and fix
//! decoding; one fix and a full datagram), and Teltonika Codec 8 / 8 Extended frames (CRC,
//! records with an FMB unit's permanent IO elements, mapping to fixes and the status; one record
//! and a 30-record frame as a unit sends after a gap in coverage). Bodies are built with the
//! device-side encoders from fixes of a simulated vehicle.

use benches::sample_track;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gps_domain::wire::{json, osmand, owntracks, teltonika, udp};
use gps_domain::Fix;
use serde_json::json;
use uuid::Uuid;

/// The device uid the bodies name.
const UID: &str = "358240051111110";

/// `n` simulated fixes, each with one small attribute as devices send.
fn fixes(n: usize) -> Vec<Fix> {
    sample_track(n)
        .into_iter()
        .map(|mut fix| {
            fix.attributes.insert("ignition".into(), true.into());
            fix
        })
        .collect()
}

fn json_body(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest/json");
    for n in [1usize, 100] {
        let body = json::encode(&fixes(n), None);
        assert_eq!(json::decode(&body, 1000).unwrap().items.len(), n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("decode", n), &body, |b, body| {
            b.iter(|| json::decode(black_box(body), 1000).unwrap())
        });
    }
    group.finish();
}

/// The Traccar Client JSON body (its background-geolocation library's shape) for one fix.
fn traccar_json_body(fix: &Fix) -> Vec<u8> {
    let time = chrono::DateTime::from_timestamp_millis(fix.fix_time)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::to_vec(&json!({
        "location": {
            "timestamp": time,
            "coords": {
                "latitude": fix.lat, "longitude": fix.lon, "accuracy": fix.accuracy_m,
                "speed": fix.speed_mps, "heading": fix.heading_deg, "altitude": fix.altitude_m,
                "altitude_accuracy": 3, "heading_accuracy": -1, "speed_accuracy": -1,
                "ellipsoidal_altitude": fix.altitude_m,
            },
            "is_moving": true, "odometer": 1234.5, "event": "motionchange",
            "battery": {"level": fix.battery_pct.map(|b| b / 100.0), "is_charging": false},
            "activity": {"type": "in_vehicle"}, "extras": {}, "uuid": "u", "age": 12,
        },
        "device_id": UID,
    }))
    .unwrap()
}

fn osmand_bodies(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest/osmand");
    group.throughput(Throughput::Elements(1));
    let fix = &fixes(1)[0];
    // What Traccar Client sends: the encoder's fields plus its charge flag.
    let query = format!("{}&charge=false", osmand::encode_query(UID, fix));
    assert_eq!(osmand::decode_params(query.as_bytes(), 0).unwrap().uid, UID);
    group.bench_with_input(BenchmarkId::new("params", 1), &query, |b, q| {
        b.iter(|| osmand::decode_params(black_box(q.as_bytes()), 1_700_000_000_000).unwrap())
    });
    let body = traccar_json_body(fix);
    assert_eq!(osmand::decode_json(&body, 0).unwrap().fixes.len(), 1);
    group.bench_with_input(BenchmarkId::new("traccar_json", 1), &body, |b, body| {
        b.iter(|| osmand::decode_json(black_box(body), 1_700_000_000_000).unwrap())
    });
    group.finish();
}

fn owntracks_body(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest/owntracks");
    group.throughput(Throughput::Elements(1));
    let fix = &fixes(1)[0];
    // The encoder's fields plus the extras the app sends with every location.
    let mut message: serde_json::Value =
        serde_json::from_slice(&owntracks::encode(fix, "ab")).unwrap();
    let extras = json!({"bs": 1, "vac": 3, "t": "u", "conn": "m", "m": 1,
        "topic": "owntracks/user/phone", "created_at": fix.fix_time / 1000 + 1});
    for (k, v) in extras.as_object().unwrap() {
        message[k] = v.clone();
    }
    let body = serde_json::to_vec(&message).unwrap();
    assert!(matches!(
        owntracks::decode(&body, 0).unwrap(),
        owntracks::OwntracksMessage::Location(..)
    ));
    group.bench_with_input(BenchmarkId::new("decode", 1), &body, |b, body| {
        b.iter(|| owntracks::decode(black_box(body), 1_700_000_000_000).unwrap())
    });
    group.finish();
}

fn udp_datagram(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest/udp");
    let key = [7u8; 32];
    let device = Uuid::new_v4();
    for n in [1usize, udp::MAX_FIXES] {
        let datagram = udp::encode(device, 42, &fixes(n), &key).unwrap();
        assert_eq!(udp::open(&datagram, &key).unwrap().fixes.len(), n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("open", n), &datagram, |b, d| {
            b.iter(|| udp::open(black_box(d), &key).unwrap())
        });
    }
    group.finish();
}

fn teltonika_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest/teltonika");
    for n in [1usize, 30] {
        let records: Vec<_> = fixes(n)
            .iter()
            .map(teltonika::AvlRecord::from_fix)
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        for (name, codec) in [
            ("codec8_tcp", teltonika::Codec::Codec8),
            ("codec8e_tcp", teltonika::Codec::Codec8Extended),
        ] {
            let frame = teltonika::encode_tcp(codec, &records).unwrap();
            let decoded = teltonika::decode_tcp_frame(&frame).unwrap();
            assert_eq!(teltonika::report(&decoded).fixes.len(), n);
            group.bench_with_input(BenchmarkId::new(name, n), &frame, |b, frame| {
                b.iter(|| {
                    teltonika::report(&teltonika::decode_tcp_frame(black_box(frame)).unwrap())
                })
            });
        }
        let datagram =
            teltonika::encode_udp(0xCAFE, 5, UID, teltonika::Codec::Codec8, &records).unwrap();
        group.bench_with_input(BenchmarkId::new("codec8_udp", n), &datagram, |b, d| {
            b.iter(|| teltonika::report(&teltonika::decode_udp(black_box(d)).unwrap().avl))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    json_body,
    osmand_bodies,
    owntracks_body,
    udp_datagram,
    teltonika_frames
);
criterion_main!(benches);
