//! Generators of well-formed values for the round trips: fixes as the wire formats carry them.

use gps_domain::fix::Fix;
use proptest::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// Any finite number, tiny, huge and negative ones included.
pub(crate) fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1.0e6f64..1.0e6,
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        Just(0.0),
        Just(-0.0),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
    ]
}

/// Attribute values a decoder keeps: short strings, numbers, booleans.
fn attribute() -> impl Strategy<Value = Value> {
    prop_oneof![
        "\\PC{0,40}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        finite().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ]
}

/// A fix with every field the JSON format carries: any finite numbers, any time, a small
/// attribute bag within the decoders' caps.
pub(crate) fn json_fix() -> impl Strategy<Value = Fix> {
    (
        // Inside the window the decoder reads numeric times in (epoch ms, not s or µs).
        (
            prop_oneof![
                100_000_000_000i64..100_000_000_000_000,
                -99_999_999_999_999i64..-100_000_000_000
            ],
            finite(),
            finite(),
        ),
        proptest::collection::vec(proptest::option::of(finite()), 6),
        proptest::option::of(any::<u16>()),
        proptest::collection::btree_map("[a-z_]{1,20}", attribute(), 0..4),
    )
        .prop_map(|((t, lat, lon), optional, satellites, attributes)| {
            let mut fix = Fix::new(t, lat, lon);
            fix.altitude_m = optional[0];
            fix.speed_mps = optional[1];
            fix.heading_deg = optional[2];
            fix.accuracy_m = optional[3];
            fix.battery_pct = optional[4];
            fix.hdop = optional[5];
            fix.satellites = satellites;
            fix.attributes = attributes.into_iter().collect::<BTreeMap<_, _>>();
            fix
        })
}

/// A fix a device would plausibly send: whole-second time, coordinates and readings in range
/// (the formats that convert units or times only round trip these within a tolerance).
pub(crate) fn device_fix() -> impl Strategy<Value = Fix> {
    (
        // Whole seconds below 2^31 - 1: Traccar's rule reads a larger `timestamp` as ms, so
        // OsmAnd's encoder cannot write later times in seconds.
        (
            -8_000_000_000i64..2_147_483_647,
            -90.0f64..=90.0,
            -180.0f64..=180.0,
        ),
        proptest::option::of(-500.0f64..9_000.0),
        proptest::option::of(0.0f64..300.0),
        proptest::option::of(0.0f64..360.0),
        proptest::option::of(0.0f64..5_000.0),
        proptest::option::of(0.0f64..100.0),
    )
        .prop_map(|((s, lat, lon), alt, speed, heading, accuracy, battery)| {
            let mut fix = Fix::new(s * 1000, lat, lon);
            fix.altitude_m = alt;
            fix.speed_mps = speed;
            fix.heading_deg = heading;
            fix.accuracy_m = accuracy;
            fix.battery_pct = battery;
            fix
        })
}

/// Whether `a` and `b` agree within the absolute `tolerance` (both absent counts as agreeing).
pub(crate) fn close(a: Option<f64>, b: Option<f64>, tolerance: f64) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= tolerance,
        _ => false,
    }
}
