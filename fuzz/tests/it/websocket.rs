//! fanout's WebSocket client message parser (`fanout::protocol::parse_client`): any text is a
//! message or an `error` with a known code naming what is wrong (never a panic, never an echo
//! of unbounded client text); well-formed subscriptions parse back to what was written.

use fanout::protocol::{parse_client, ClientMessage, Selectors, MAX_ID_LEN};
use gps_domain::geo::BBox;
use gps_fuzz::{fuzz, fuzz_with, replay};
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

const CODES: [&str; 4] = [
    "invalid_json",
    "invalid_message",
    "invalid_field",
    "unknown_type",
];

fn property(data: &[u8]) {
    // A WebSocket text message is UTF-8 by the protocol (tungstenite refuses other frames).
    let text = String::from_utf8_lossy(data);
    match parse_client(&text) {
        Ok(ClientMessage::Subscribe { selectors, .. }) => {
            assert!(!selectors.is_empty());
            check_selectors(&selectors);
        }
        Ok(ClientMessage::Unsubscribe { selectors, .. }) => check_selectors(&selectors),
        Ok(ClientMessage::Ping { .. }) => {}
        Err(error) => {
            assert!(CODES.contains(&error.code), "{error:?}");
            if let Some(Value::String(id)) = &error.id {
                assert!(id.chars().count() <= MAX_ID_LEN);
            }
            if let Some(field) = &error.field {
                assert!(field.chars().count() <= 64, "{field:?}");
            }
            // The answer is one JSON `error` message of bounded size.
            let answer: Value =
                serde_json::from_str(&error.to_message()).expect("the error message is JSON");
            assert_eq!(answer["type"], "error");
            assert!(error.to_message().len() <= 2048, "{}", error.to_message());
        }
    }
}

fn check_selectors(selectors: &Selectors) {
    let mut ids = selectors.devices.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        selectors.devices.len(),
        "device ids are deduplicated"
    );
    if let Some(bbox) = &selectors.bbox {
        assert!(bbox.to_array().iter().all(|v| v.is_finite()));
    }
}

#[test]
fn client_message_corpus() {
    replay("ws-client", property);
}

#[test]
fn client_message_fuzz() {
    fuzz("ws-client", property);
}

#[test]
fn subscriptions_round_trip() {
    let strategy = (
        proptest::collection::vec(any::<u128>(), 0..4),
        proptest::collection::vec(any::<u128>(), 0..4),
        proptest::option::of((
            -180.0f64..=180.0,
            -90.0f64..=0.0,
            -180.0f64..=180.0,
            0.0f64..=90.0,
        )),
        any::<bool>(),
        proptest::option::of("\\PC{0,64}"),
    )
        .prop_map(|(devices, groups, bbox, all, id)| {
            let ids = |v: Vec<u128>| v.into_iter().map(Uuid::from_u128).collect::<Vec<_>>();
            let (devices, groups) = (ids(devices), ids(groups));
            let message = json!({
                "type": "subscribe", "id": id, "devices": devices, "groups": groups,
                "bbox": bbox.map(|(a, b, c, d)| vec![a, b, c, d]), "all": all,
            });
            (message.to_string(), devices, groups, bbox, all)
        });
    fuzz_with(
        "ws-client",
        strategy,
        |(text, devices, groups, bbox, all)| {
            let empty = devices.is_empty() && groups.is_empty() && bbox.is_none() && !all;
            match parse_client(text) {
                Ok(ClientMessage::Subscribe { selectors, .. }) => {
                    let dedup = |v: &Vec<Uuid>| {
                        let mut out: Vec<Uuid> = Vec::new();
                        for id in v {
                            if !out.contains(id) {
                                out.push(*id);
                            }
                        }
                        out
                    };
                    assert_eq!(selectors.devices, dedup(devices));
                    assert_eq!(selectors.groups, dedup(groups));
                    assert_eq!(selectors.all, *all);
                    let expected = bbox.map(|(a, b, c, d)| BBox::from_array([a, b, c, d]).unwrap());
                    let got = selectors.bbox.map(|b| b.to_array());
                    let want = expected.map(|b| b.to_array());
                    assert_eq!(got.is_some(), want.is_some());
                    // serde_json's default float parser may lose the last bit.
                    for (g, w) in got.unwrap_or_default().iter().zip(want.unwrap_or_default()) {
                        assert!((g - w).abs() <= 4.0 * f64::EPSILON * w.abs(), "{g} != {w}");
                    }
                }
                Err(error) if empty => assert_eq!(error.code, "invalid_message"),
                other => panic!("{text}: {other:?}"),
            }
        },
        |(text, ..)| text.clone().into_bytes(),
    );
}
