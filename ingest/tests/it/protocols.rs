//! Each protocol end to end: the request shapes devices really send, read back from the fixes
//! topic, every field and unit conversion checked.

use crate::support::{api_key, read_envelopes, read_fixes, read_records, Ingest};
use gps_domain::fix::units;
use gps_domain::wire::udp;
use gps_domain::{EnvelopeFormat, Fix, Protocol};
use gps_runtime::testing::{seed_device, wait_until};
use serde_json::{json, Value};
use std::time::Duration;

fn close(a: Option<f64>, b: f64) {
    let a = a.expect("value present");
    assert!((a - b).abs() < 1e-9, "{a} != {b}");
}

#[tokio::test]
async fn json_single_and_batch_with_a_bad_item() {
    let ingest = Ingest::start().await;
    let dev = &ingest.device;
    let single = json!({"time": "2024-05-01T10:00:00.250Z", "lat": 52.52, "lon": 13.405,
        "altitude": 34.5, "speed": 12.5, "heading": 270, "accuracy": 4, "battery": 88,
        "satellites": 9, "hdop": 0.9, "attributes": {"ignition": true}});
    let r = ingest
        .client
        .post(ingest.url("/v1/fixes"))
        .bearer_auth(&dev.token)
        .json(&single)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"], json!([]));

    let batch = json!([
        {"time": 1_714_557_601_000_i64, "lat": 1.0, "lon": 2.0},
        {"time": 1_714_557_602_000_i64, "lat": "NaN", "lon": 2.0},
        {"time": 1_714_557_603_000_i64, "lat": 3.0, "lon": 4.0, "device": dev.uid},
    ]);
    let r = ingest
        .client
        .post(ingest.url("/v1/fixes"))
        .bearer_auth(&dev.token)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["index"], 1);
    assert_eq!(body["rejected"][0]["field"], "lat");
    assert_eq!(body["rejected"][0]["code"], "wrong_type");

    let envelopes = read_fixes(&ingest.kafka, 3).await;
    assert_eq!(envelopes.len(), 2, "one record per device per request");
    let first = envelopes.iter().find(|e| e.fixes.len() == 1).unwrap();
    assert_eq!(first.device, dev.device_id);
    assert_eq!(first.tenant, dev.tenant_id);
    assert_eq!(first.uid, dev.uid);
    assert_eq!(first.proto, Protocol::Json);
    assert!((gps_domain::fix::now_millis() - first.rx).abs() < 60_000);
    let f = &first.fixes[0];
    assert_eq!(f.fix_time, 1_714_557_600_250);
    assert_eq!((f.lat, f.lon), (52.52, 13.405));
    close(f.altitude_m, 34.5);
    close(f.speed_mps, 12.5);
    close(f.heading_deg, 270.0);
    close(f.accuracy_m, 4.0);
    close(f.battery_pct, 88.0);
    close(f.hdop, 0.9);
    assert_eq!(f.satellites, Some(9));
    assert_eq!(f.attributes["ignition"], Value::Bool(true));
    let second = envelopes.iter().find(|e| e.fixes.len() == 2).unwrap();
    assert_eq!(second.fixes[0].fix_time, 1_714_557_601_000);
    assert_eq!((second.fixes[1].lat, second.fixes[1].lon), (3.0, 4.0));

    assert_eq!(
        ingest
            .metric("gps_ingest_fixes_accepted_total{protocol=\"json\"}")
            .await,
        3.0
    );
    assert_eq!(
        ingest
            .metric("gps_ingest_fixes_received_total{protocol=\"json\"}")
            .await,
        4.0
    );
    assert_eq!(
        ingest
            .metric("gps_ingest_fixes_refused_total{protocol=\"json\",reason=\"wrong_type\"}")
            .await,
        1.0
    );
    ingest.stop().await;
}

#[tokio::test]
async fn gateway_api_key_posts_for_its_tenant_only() {
    let ingest = Ingest::start().await;
    let own = seed_device(&ingest.db.pool, "acme").await;
    let foreign = seed_device(&ingest.db.pool, "other-tenant").await;
    let key = api_key(&ingest.db, own.tenant_id, &["fixes:write"], false).await;
    let batch = json!([
        {"time": 1_714_557_601_000_i64, "lat": 1.0, "lon": 2.0, "device": own.uid},
        {"time": 1_714_557_602_000_i64, "lat": 1.0, "lon": 2.0, "device": foreign.uid},
        {"time": 1_714_557_603_000_i64, "lat": 1.0, "lon": 2.0},
        {"time": 1_714_557_604_000_i64, "lat": 1.5, "lon": 2.5, "device": ingest.device.uid},
    ]);
    let r = ingest
        .client
        .post(ingest.url("/v1/fixes"))
        .bearer_auth(&key)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 2, "{body}");
    let rejected: Vec<(i64, String)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_i64().unwrap(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![(1, "unknown_device".to_owned()), (2, "missing".to_owned())]
    );
    let envelopes = read_fixes(&ingest.kafka, 2).await;
    let mut devices: Vec<_> = envelopes.iter().map(|e| e.device).collect();
    devices.sort();
    let mut want = vec![own.device_id, ingest.device.device_id];
    want.sort();
    assert_eq!(devices, want, "one envelope per device");

    let read_only = api_key(&ingest.db, own.tenant_id, &["positions:read"], false).await;
    let revoked = api_key(&ingest.db, own.tenant_id, &["fixes:write"], true).await;
    for (key, status) in [
        (read_only.as_str(), 403),
        (revoked.as_str(), 401),
        ("gpsk_unknownkey12_aaaaaaaaaaaaaaaaaaaa", 401),
    ] {
        let r = ingest
            .client
            .post(ingest.url("/v1/fixes"))
            .bearer_auth(key)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{key}");
    }
    ingest.stop().await;
}

#[tokio::test]
async fn traccar_client_query_form_and_json_body() {
    let ingest = Ingest::start().await;
    let uid = ingest.device.uid.clone();
    let token = ingest.device.token.clone();
    // Traccar Client (classic Android): POST with everything in the query string, the token
    // kept from the configured server URL `http://host/?token=…`.
    let query = format!(
        "/?token={token}&id={uid}&timestamp=1700000000&lat=52.52&lon=13.405&speed=10&bearing=90.5&altitude=34&accuracy=5&batt=77.5&charge=true"
    );
    let r = ingest.client.post(ingest.url(&query)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "");
    // OsmAnd: GET with milliseconds.
    let r = ingest
        .client
        .get(ingest.url(&format!(
            "/?deviceid={uid}&timestamp=1700000001000&lat=1&lon=2"
        )))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Form body with the `yyyy-MM-dd HH:mm:ss` time.
    let r = ingest
        .client
        .post(ingest.url("/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "id={uid}&timestamp=2023-11-14+22%3A13%3A22&lat=3&lon=4&speed=1&token={token}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Traccar Client (current, background-geolocation) JSON body: speed in m/s, level 0..1.
    let body = json!({"location": {"timestamp": "2023-11-14T22:13:23.500Z", "coords": {
        "latitude": 5.5, "longitude": 6.5, "accuracy": 3.5, "speed": 7.5, "heading": 45,
        "altitude": 100}, "is_moving": true, "odometer": 42, "event": "motionchange",
        "battery": {"level": 0.65, "is_charging": true}, "activity": {"type": "walking"}},
        "device_id": uid});
    let r = ingest
        .client
        .post(ingest.url(&format!("/?token={token}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Unknown device: 400, as Traccar answers.
    let r = ingest
        .client
        .post(ingest.url("/?id=nobody&lat=1&lon=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unknown_device");

    let mut envelopes = read_fixes(&ingest.kafka, 4).await;
    assert_eq!(envelopes.len(), 4);
    envelopes.sort_by_key(|e| e.fixes[0].fix_time);
    assert!(envelopes
        .iter()
        .all(|e| e.proto == Protocol::Osmand && e.uid == uid));
    let f = &envelopes[0].fixes[0];
    assert_eq!(f.fix_time, 1_700_000_000_000);
    assert_eq!((f.lat, f.lon), (52.52, 13.405));
    close(f.speed_mps, units::knots_to_mps(10.0));
    close(f.heading_deg, 90.5);
    close(f.altitude_m, 34.0);
    close(f.accuracy_m, 5.0);
    close(f.battery_pct, 77.5);
    assert_eq!(f.attributes["charge"], Value::Bool(true));
    assert!(
        envelopes
            .iter()
            .all(|e| !e.fixes[0].attributes.contains_key("token")),
        "the token is a credential, never an attribute"
    );
    assert_eq!(envelopes[1].fixes[0].fix_time, 1_700_000_001_000);
    let f = &envelopes[2].fixes[0];
    assert_eq!(f.fix_time, 1_700_000_002_000);
    close(f.speed_mps, units::knots_to_mps(1.0));
    let f = &envelopes[3].fixes[0];
    assert_eq!(f.fix_time, 1_700_000_003_500);
    assert_eq!((f.lat, f.lon), (5.5, 6.5));
    close(f.speed_mps, 7.5);
    close(f.heading_deg, 45.0);
    close(f.accuracy_m, 3.5);
    close(f.altitude_m, 100.0);
    close(f.battery_pct, 65.0);
    assert_eq!(f.attributes["motion"], Value::Bool(true));
    assert_eq!(f.attributes["activity"], json!("walking"));
    ingest.stop().await;
}

#[tokio::test]
async fn owntracks_location_and_other_types() {
    let ingest = Ingest::start().await;
    let dev = &ingest.device;
    let post = |body: Value, user: &str, password: &str| {
        ingest
            .client
            .post(ingest.url("/owntracks"))
            .basic_auth(user, Some(password))
            .header("X-Limit-U", "alice")
            .header("X-Limit-D", "phone")
            .json(&body)
            .send()
    };
    let location = json!({"_type": "location", "tid": "ph", "tst": 1_700_000_000, "lat": 52.52,
        "lon": 13.405, "acc": 12, "alt": 40, "vel": 36, "cog": 270, "batt": 85, "bs": 1,
        "conn": "w", "t": "u", "topic": "owntracks/alice/phone"});
    let r = post(location.clone(), &dev.uid, &dev.token).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "[]");
    let r = post(
        json!({"_type": "transition", "event": "enter"}),
        &dev.uid,
        &dev.token,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "[]");
    let r = post(location.clone(), &dev.uid, "gpsd_wrong")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = post(location.clone(), "someone-else", &dev.token)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let envelopes = read_envelopes(&ingest.kafka, 2).await;
    assert_eq!(
        envelopes.len(),
        2,
        "the location and the transition's status"
    );
    let transition = &envelopes[1];
    assert!(transition.fixes.is_empty(), "a transition is no fix");
    let status = transition.status.as_ref().unwrap();
    assert_eq!(status.attributes["event"], json!("enter"));
    let e = &envelopes[0];
    assert_eq!((e.proto, e.device), (Protocol::Owntracks, dev.device_id));
    let status = e.status.as_ref().expect("batt and bs travel as status");
    assert_eq!(
        (status.battery_pct, status.charging),
        (Some(85.0), Some(false))
    );
    let f = &e.fixes[0];
    assert_eq!(f.fix_time, 1_700_000_000_000);
    assert_eq!((f.lat, f.lon), (52.52, 13.405));
    close(f.accuracy_m, 12.0);
    close(f.altitude_m, 40.0);
    close(f.speed_mps, 10.0);
    close(f.heading_deg, 270.0);
    close(f.battery_pct, 85.0);
    assert_eq!(f.attributes["tid"], json!("ph"));
    ingest.stop().await;
}

#[tokio::test]
async fn udp_datagrams_verified_replay_checked_and_produced() {
    let ingest = Ingest::start().await;
    let dev = &ingest.device;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut a = Fix::new(1_700_000_000_123, 52.520_008_1, 13.404_954_4);
    a.altitude_m = Some(34.56);
    a.speed_mps = Some(12.34);
    a.heading_deg = Some(180.25);
    a.accuracy_m = Some(4.5);
    a.battery_pct = Some(88.0);
    a.satellites = Some(9);
    a.hdop = Some(0.92);
    let b = Fix::new(1_700_000_001_123, -33.86, 151.21);
    let datagram = udp::encode(dev.device_id, 1, &[a.clone(), b.clone()], &dev.udp_key).unwrap();
    socket.send_to(&datagram, ingest.udp).await.unwrap();
    let envelopes = read_fixes(&ingest.kafka, 2).await;
    assert_eq!(envelopes.len(), 1);
    let e = &envelopes[0];
    assert_eq!(
        (e.proto, e.device, e.tenant),
        (Protocol::Udp, dev.device_id, dev.tenant_id)
    );
    let f = &e.fixes[0];
    assert_eq!(f.fix_time, a.fix_time);
    assert!((f.lat - a.lat).abs() < 1e-7 && (f.lon - a.lon).abs() < 1e-7);
    assert!((f.altitude_m.unwrap() - 34.56).abs() < 0.006);
    assert!((f.speed_mps.unwrap() - 12.34).abs() < 0.006);
    assert!((f.heading_deg.unwrap() - 180.25).abs() < 0.006);
    assert!((f.accuracy_m.unwrap() - 4.5).abs() < 0.06);
    assert_eq!((f.battery_pct, f.satellites), (Some(88.0), Some(9)));
    assert!((f.hdop.unwrap() - 0.92).abs() < 0.006);
    assert_eq!(e.fixes[1].fix_time, b.fix_time);
    ingest
        .wait_metric("gps_ingest_fixes_accepted_total{protocol=\"udp\"}", 2.0)
        .await;

    // Replayed, forged, truncated, unknown device, foreign version: dropped and counted.
    socket.send_to(&datagram, ingest.udp).await.unwrap();
    let mut forged = udp::encode(dev.device_id, 2, std::slice::from_ref(&b), &dev.udp_key).unwrap();
    forged[35] ^= 0x40;
    socket.send_to(&forged, ingest.udp).await.unwrap();
    socket.send_to(&datagram[..40], ingest.udp).await.unwrap();
    let stranger =
        udp::encode(uuid::Uuid::new_v4(), 1, std::slice::from_ref(&b), &[1; 32]).unwrap();
    socket.send_to(&stranger, ingest.udp).await.unwrap();
    let mut future = datagram.clone();
    future[2] = 2;
    socket.send_to(&future, ingest.udp).await.unwrap();
    socket.send_to(&[0x47; 1500], ingest.udp).await.unwrap();
    for reason in [
        "replayed",
        "bad_mac",
        "truncated",
        "unknown_device",
        "unsupported_version",
        "oversized",
    ] {
        ingest
            .wait_metric(
                &format!("gps_ingest_udp_dropped_total{{reason=\"{reason}\"}}"),
                1.0,
            )
            .await;
    }
    // A fresh counter from the same device still goes through, out of order within the window.
    let later = udp::encode(dev.device_id, 5, std::slice::from_ref(&b), &dev.udp_key).unwrap();
    let earlier = udp::encode(dev.device_id, 3, std::slice::from_ref(&b), &dev.udp_key).unwrap();
    socket.send_to(&later, ingest.udp).await.unwrap();
    socket.send_to(&earlier, ingest.udp).await.unwrap();
    ingest
        .wait_metric("gps_ingest_fixes_accepted_total{protocol=\"udp\"}", 4.0)
        .await;
    assert_eq!(ingest.metric("gps_ingest_udp_datagrams_total").await, 9.0);
    ingest.stop().await;
}

#[tokio::test]
async fn disabled_device_is_refused_within_the_cache_ttl() {
    let ingest = Ingest::start_with(|c| c.auth.ttl_ms = 300).await;
    let dev = &ingest.device;
    let post = || {
        ingest
            .client
            .post(ingest.url("/v1/fixes"))
            .bearer_auth(&dev.token)
            .json(&json!({"time": 1_714_557_601_000_i64, "lat": 1, "lon": 2}))
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 202);
    sqlx::query("UPDATE devices SET disabled = true WHERE id = $1")
        .bind(dev.device_id)
        .execute(&ingest.db.pool)
        .await
        .unwrap();
    // A deadline far beyond the 300 ms TTL, for a loaded machine, yet below the default TTL
    // (10 s): a refusal in time proves the configured TTL is what expired the entry.
    wait_until(
        Duration::from_secs(8),
        "the disabled device to be refused",
        || async {
            let status = post().await.unwrap().status();
            assert!(status == 202 || status == 401, "{status}");
            status == 401
        },
    )
    .await;
    ingest.stop().await;
}

#[tokio::test]
async fn json_time_in_seconds_is_refused_per_item_naming_the_field() {
    let ingest = Ingest::start().await;
    let dev = &ingest.device;
    let post = |body: Value| {
        ingest
            .client
            .post(ingest.url("/v1/fixes"))
            .bearer_auth(&dev.token)
            .json(&body)
            .send()
    };
    // Epoch seconds where milliseconds are expected: refused at once, not quarantined later
    // as "too old" where the sender never hears of it.
    let r = post(json!([
        {"time": 1_714_557_601_i64, "lat": 1.0, "lon": 2.0},
        {"time": 1_714_557_602_000_i64, "lat": 1.0, "lon": 2.0},
        {"time": 1_714_557_603_000_000_i64, "lat": 1.0, "lon": 2.0},
    ]))
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 1);
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        (
            &rejected[0]["index"],
            &rejected[0]["field"],
            &rejected[0]["code"]
        ),
        (&json!(0), &json!("time"), &json!("wrong_unit"))
    );
    assert!(rejected[0]["message"]
        .as_str()
        .unwrap()
        .contains("looks like epoch seconds"));
    assert_eq!(rejected[1]["index"], 2);
    assert!(rejected[1]["message"]
        .as_str()
        .unwrap()
        .contains("microseconds"));
    // A lone fix in seconds: a 400 naming the item and the field.
    let r = post(json!({"time": 1_714_557_601_i64, "lat": 1.0, "lon": 2.0}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "0.time");
    let envelopes = read_fixes(&ingest.kafka, 1).await;
    let times: Vec<i64> = envelopes
        .iter()
        .flat_map(|e| e.fixes.iter().map(|f| f.fix_time))
        .collect();
    assert_eq!(times, vec![1_714_557_602_000]);
    ingest.stop().await;
}

/// Ingest writes the binary envelope by default, and JSON with `INGEST_ENVELOPE_FORMAT=json` (a
/// rolling upgrade while old processors still run); both carry the same fix.
#[tokio::test]
async fn envelopes_are_binary_by_default_and_json_when_configured() {
    for (format, first_byte) in [
        (EnvelopeFormat::default(), 0xB5),
        (EnvelopeFormat::Json, b'{'),
    ] {
        let ingest = Ingest::start_with(|c| c.producer.envelope_format = format).await;
        let r = ingest
            .client
            .post(ingest.url("/v1/fixes"))
            .bearer_auth(&ingest.device.token)
            .json(&json!({"time": 1_714_557_601_000_i64, "lat": 52.5, "lon": 13.4, "speed": 1.5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let records = read_records(&ingest.kafka, 1).await;
        let [(payload, envelope)] = &records[..] else {
            panic!("one record expected, got {}", records.len())
        };
        assert_eq!(payload[0], first_byte, "{format}");
        assert_eq!(envelope.device, ingest.device.device_id);
        close(envelope.fixes[0].speed_mps, 1.5);
        ingest.stop().await;
    }
}
