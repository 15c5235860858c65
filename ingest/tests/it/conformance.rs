//! Conformance: the exact requests real clients send, taken from their public source code and
//! from the captures in Traccar's decoder tests, replayed through the real HTTP server; each
//! vector asserts the status the client needs (a non-2xx blocks or loses its queue) and what
//! reached the log: time, units, attributes, device status. The source of each vector is cited
//! beside it. `docs/devices.md` is the human-readable side of this file.

use crate::support::{read_envelopes, Ingest};
use gps_domain::fix::units;
use gps_domain::{FixEnvelope, Protocol};
use gps_runtime::testing::{seed_device, SeededDevice};
use reqwest::RequestBuilder;
use serde_json::{json, Value};

/// A device of the test's tenant, renamed to the uid a vector names and with the settings the
/// app needs (`speed_unit`, `uid_only`, `payload_secret`, as SQL assignments).
async fn device(ingest: &Ingest, uid: &str, settings: &str) -> SeededDevice {
    let mut dev = seed_device(&ingest.db.pool, "acme").await;
    let assignments = if settings.is_empty() {
        "uid = $2".to_owned()
    } else {
        format!("uid = $2, {settings}")
    };
    sqlx::query(&format!("UPDATE devices SET {assignments} WHERE id = $1"))
        .bind(dev.device_id)
        .bind(uid)
        .execute(&ingest.db.pool)
        .await
        .unwrap();
    dev.uid = uid.to_owned();
    dev
}

fn close(a: Option<f64>, b: f64) {
    let a = a.expect("value present");
    assert!((a - b).abs() < 1e-6, "{a} != {b}");
}

/// The envelopes of one device, in log order.
fn of(envelopes: &[FixEnvelope], dev: &SeededDevice) -> Vec<FixEnvelope> {
    envelopes
        .iter()
        .filter(|e| e.device == dev.device_id)
        .cloned()
        .collect()
}

fn get(ingest: &Ingest, path: &str) -> RequestBuilder {
    ingest.client.get(ingest.url(path))
}

fn post(ingest: &Ingest, path: &str) -> RequestBuilder {
    ingest.client.post(ingest.url(path))
}

/// Send `request`, check its status, return its body.
async fn expect(request: RequestBuilder, status: u16) -> String {
    let r = request.send().await.unwrap();
    let got = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(got, status, "{body}");
    body
}

#[tokio::test]
async fn traccar_client_android_classic_and_ios_classic() {
    let ingest = Ingest::start().await;
    // traccar/traccar-client-android app/src/main/java/org/traccar/client/ProtocolFormatter.kt:
    // `Uri.parse(url).buildUpon().appendQueryParameter(...)`, so a token configured in the
    // server URL (`http://host:5055/path?token=…`) stays in front; speed in knots
    // (Position.kt: `location.speed * 1.943844`), time in seconds, POST with an empty body.
    // ProtocolFormatterTest.java: `formatRequest("http://localhost:5055/path", position,
    // "alert message")` keeps the configured path.
    let android = device(&ingest, "123456789012345", "").await;
    let token = &android.token;
    let r = post(&ingest, &format!(
            "/path?token={token}&id=123456789012345&timestamp=1700000000&lat=48.8566&lon=2.3522&speed=19.4384&bearing=90.0&altitude=35.0&accuracy=4.0&batt=81.0&mock=true&alarm=sos"
        ));
    assert_eq!(expect(r, 200).await, "", "Traccar answers 200 with no body");
    // The classic Android heartbeat-free shape without alarm, on the default path.
    let r = post(&ingest, &format!(
            "/?token={token}&id=123456789012345&timestamp=1700000010&lat=48.8567&lon=2.3523&speed=0.0&bearing=0.0&altitude=35.0&accuracy=0.0&batt=80.0"
        ));
    expect(r, 200).await;

    // traccar/traccar-client-ios TraccarClient/ProtocolFormatter.swift: `components.query = …`
    // replaces any query of the configured URL, so no token can ride along: a uid-only device.
    // `lat=%.06f`, speed in knots (Position.swift: `location.speed * 1.94384`), POST, empty body
    // (RequestManager.swift).
    let ios = device(&ingest, "ios-4711", "uid_only = true").await;
    let r = post(&ingest, "/?id=ios-4711&timestamp=1700000020&lat=48.856600&lon=2.352200&speed=3.88768&bearing=180.5&altitude=36.2&accuracy=5.0&batt=55.0",);
    expect(r, 200).await;

    let envelopes = read_envelopes(&ingest.kafka, 3).await;
    let sent = of(&envelopes, &android);
    assert_eq!(sent.len(), 2);
    let alarm = &sent[0];
    assert_eq!(
        (alarm.proto, alarm.uid.as_str()),
        (Protocol::Osmand, "123456789012345")
    );
    let f = &alarm.fixes[0];
    assert_eq!(f.fix_time, 1_700_000_000_000, "seconds read as seconds");
    close(f.speed_mps, units::knots_to_mps(19.4384));
    close(f.heading_deg, 90.0);
    close(f.altitude_m, 35.0);
    close(f.accuracy_m, 4.0);
    close(f.battery_pct, 81.0);
    assert!(f.valid);
    assert_eq!(
        f.attributes["alarm"],
        json!("sos"),
        "kept as an attribute too"
    );
    assert_eq!(f.attributes["mock"], json!(true));
    assert!(
        !f.attributes.contains_key("token"),
        "a credential is never stored"
    );
    let status = alarm
        .status
        .as_ref()
        .expect("alarm and battery travel as status");
    assert_eq!(status.alarm.as_deref(), Some("sos"));
    assert_eq!(
        (status.time, status.battery_pct),
        (1_700_000_000_000, Some(81.0))
    );
    close(sent[1].fixes[0].speed_mps, 0.0);
    let ios_sent = of(&envelopes, &ios);
    let f = &ios_sent[0].fixes[0];
    assert_eq!(f.fix_time, 1_700_000_020_000);
    close(f.speed_mps, units::knots_to_mps(3.88768));
    close(f.heading_deg, 180.5);
    ingest.stop().await;
}

#[tokio::test]
async fn traccar_client_9_geolocation_json_heartbeat_and_push_token() {
    let ingest = Ingest::start().await;
    let dev = device(&ingest, "48241179", "").await;
    let url = ingest.url(&format!("/?token={}", dev.token));
    // traccar/traccar-client lib/preferences.dart `_locationTemplate()` plus the `device_id`
    // param the geolocation library merges into the root; traccar/traccar
    // OsmAndProtocolDecoderTest.java testDecodeJson, first vector: speed in m/s, battery level
    // 0..1, heading -1 for unknown.
    let body = r#"{"location":{"timestamp":"2025-06-15T13:45:12.862Z","coords":{"latitude":37.4219983,"longitude":-122.084,"accuracy":5,"speed":0,"heading":-1,"altitude":5},"is_moving":false,"odometer":0,"event":"motionchange","battery":{"level":1,"is_charging":false},"activity":{"type":"still"},"extras":{},"_":"&id=48241179&lat=37.4219983&lon=-122.084&timestamp=2025-06-15T13:45:12.862Z&"},"device_id":"48241179"}"#;
    let r = ingest
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(body);
    expect(r, 200).await;
    // lib/geolocation_service.dart `onHeartbeat`: a fresh position with extras
    // {"heartbeat": true}; OsmAndProtocolDecoderTest.java testDecodeJson, fourth vector
    // (speed 18.67 m/s, level 0.79).
    let heartbeat = r#"{"location":{"event":"motionchange","is_moving":false,"uuid":"0e9a2473-a9a7-4c00-997b-fb97d2154e75","timestamp":"2021-07-21T08:06:34.444Z","odometer":0,"coords":{"latitude":-6.1148096,"longitude":106.6837015,"accuracy":3.8,"speed":18.67,"speed_accuracy":0.26,"heading":63,"heading_accuracy":0.28,"altitude":35.7,"altitude_accuracy":3.8},"activity":{"type":"still","confidence":100},"battery":{"is_charging":false,"level":0.79},"extras":{"heartbeat":true}},"device_id":"48241179"}"#;
    let r = ingest
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(heartbeat);
    expect(r, 200).await;
    // lib/push_service.dart `_uploadToken`: a form POST to the configured URL with
    // `id=…&notificationToken=…` and no position. Traccar answers 200.
    let r = ingest
        .client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("id=48241179&notificationToken=fcm%3AAPA91bH-example");
    expect(r, 200).await;

    let sent = of(&read_envelopes(&ingest.kafka, 3).await, &dev);
    assert_eq!(sent.len(), 3);
    let f = &sent[0].fixes[0];
    assert_eq!(f.fix_time, 1_749_995_112_862);
    assert_eq!((f.lat, f.lon), (37.4219983, -122.084));
    close(f.speed_mps, 0.0);
    assert_eq!(f.heading_deg, None, "-1 is unknown");
    close(f.battery_pct, 100.0);
    assert_eq!(f.attributes["event"], json!("motionchange"));
    let s = sent[0].status.as_ref().unwrap();
    assert_eq!((s.charging, s.motion), (Some(false), Some(false)));
    let f = &sent[1].fixes[0];
    close(f.speed_mps, 18.67);
    close(f.battery_pct, 79.0);
    assert_eq!(f.attributes["heartbeat"], json!(true));
    let push = &sent[2];
    assert!(push.fixes.is_empty(), "no fake position");
    let s = push.status.as_ref().unwrap();
    assert_eq!(
        s.attributes["notificationToken"],
        json!("fcm:APA91bH-example")
    );
    assert!(
        (gps_domain::fix::now_millis() - s.time).abs() < 60_000,
        "receive time"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn traccar_client_10_sdk_form_json_and_heartbeat() {
    let ingest = Ingest::start().await;
    let dev = device(&ingest, "80000001", "").await;
    // traccar/traccar-client-sdk core/src/commonMain/kotlin/org/traccar/client/HttpUploader.kt:
    // `submitForm` with id, lat, lon, timestamp (s), accuracy, altitude, speed (knots:
    // `round(it * 1.94384 * 100) / 100`), bearing, batt, charge, alarm, battery_health,
    // battery_voltage, battery_temp, and `config.headers` (here the token as a bearer).
    let r = post(&ingest, "/")
        .bearer_auth(&dev.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("id=80000001&lat=52.520008&lon=13.404954&timestamp=1700000100&accuracy=6.5&altitude=40.0&speed=27.0&bearing=270.0&batt=64&charge=true&alarm=sos&battery_health=good&battery_voltage=4012&battery_temp=28.5");
    expect(r, 200).await;
    // TrackerEngine.kt `applyHeartbeatTick`: `Position(time = now)` when no fix is at hand;
    // the battery processor adds batt and charge. No lat/lon: Traccar answers 200, and the
    // SDK retries any non-2xx at the head of its queue forever (`syncLoop`).
    let r = post(&ingest, "/")
        .bearer_auth(&dev.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("id=80000001&timestamp=1700000200&batt=63&charge=false&battery_health=good");
    expect(r, 200).await;
    // HttpUploader.kt with `uploadJson`: a JSON array of the same flat objects.
    let body = json!([
        {"id": "80000001", "lat": 52.5201, "lon": 13.405, "timestamp": 1_700_000_300,
         "accuracy": 5.0, "speed": 9.72, "bearing": 10.0, "batt": 62, "charge": false},
        {"id": "80000001", "timestamp": 1_700_000_400, "batt": 61, "charge": false}
    ]);
    let r = post(&ingest, "/").bearer_auth(&dev.token).json(&body);
    expect(r, 200).await;

    let sent = of(&read_envelopes(&ingest.kafka, 3).await, &dev);
    assert_eq!(sent.len(), 3);
    let f = &sent[0].fixes[0];
    assert_eq!(f.fix_time, 1_700_000_100_000);
    close(f.speed_mps, units::knots_to_mps(27.0));
    close(f.accuracy_m, 6.5);
    assert_eq!(f.attributes["battery_voltage"], json!(4012.0));
    assert_eq!(f.attributes["battery_health"], json!("good"));
    let s = sent[0].status.as_ref().unwrap();
    assert_eq!(
        (s.alarm.as_deref(), s.battery_pct, s.charging),
        (Some("sos"), Some(64.0), Some(true))
    );
    let heartbeat = &sent[1];
    assert!(
        heartbeat.fixes.is_empty(),
        "a heartbeat is never a position"
    );
    let s = heartbeat.status.as_ref().unwrap();
    assert_eq!(
        (s.time, s.battery_pct, s.charging),
        (1_700_000_200_000, Some(63.0), Some(false))
    );
    assert_eq!(s.attributes["battery_health"], json!("good"));
    let batch = &sent[2];
    assert_eq!(batch.fixes.len(), 1);
    close(batch.fixes[0].speed_mps, units::knots_to_mps(9.72));
    let s = batch.status.as_ref().unwrap();
    assert_eq!(
        (s.time, s.battery_pct),
        (1_700_000_400_000, Some(61.0)),
        "the newest"
    );
    assert_eq!(
        ingest
            .metric("gps_ingest_statuses_accepted_total{protocol=\"osmand\"}")
            .await,
        3.0
    );
    ingest.stop().await;
}

#[tokio::test]
async fn osmand_app_and_gpslogger_speak_metres_per_second() {
    let ingest = Ingest::start().await;
    // osmandapp/OsmAnd OsmAnd/src/net/osmand/plus/plugins/monitoring/LiveMonitoringHelper.java
    // `getLiveUrl`: {0} lat, {1} lon, {2} time (System.currentTimeMillis, ms), {3} the
    // location's accuracy (m) although Traccar's documented template calls it `hdop`,
    // {4} altitude, {5} speed (Location.getSpeed, m/s), {6} bearing; sent as a GET, any path.
    let osmand = device(&ingest, "osmand-phone", "speed_unit = 'mps'").await;
    let r = get(&ingest, &format!(
            "/live/track?id=osmand-phone&token={}&lat=52.52&lon=13.405&timestamp=1700000000123&hdop=7.5&altitude=34.0&speed=12.5&bearing=181.0",
            osmand.token
        ));
    expect(r, 200).await;
    // mendhak/gpslogger .../senders/customurl/CustomUrlManager.java `getFormattedTextblock`:
    // %LAT, %LON as String.valueOf(double), %SPD m/s, %ACC m, %TIMESTAMP seconds, %BATT a
    // float, %HDOP empty without NMEA data, %SAT the satellite count.
    let gpslogger = device(&ingest, "gpslogger-1", "speed_unit = 'mps'").await;
    let r = get(&ingest, &format!(
            "/gpslogger?id=gpslogger-1&token={}&lat=48.1374&lon=11.5755&timestamp=1700000050&altitude=519.0&speed=13.9&bearing=45.0&accuracy=3.2&batt=77.0&sat=9&hdop=&provider=gps",
            gpslogger.token
        ));
    expect(r, 200).await;

    let envelopes = read_envelopes(&ingest.kafka, 2).await;
    let f = &of(&envelopes, &osmand)[0].fixes[0];
    assert_eq!(
        f.fix_time, 1_700_000_000_123,
        "OsmAnd's {{2}} is milliseconds"
    );
    close(f.speed_mps, 12.5);
    close(f.accuracy_m, 7.5);
    assert_eq!(f.hdop, None, "OsmAnd's `hdop` is its accuracy");
    close(f.heading_deg, 181.0);
    let sent = of(&envelopes, &gpslogger);
    let f = &sent[0].fixes[0];
    assert_eq!(f.fix_time, 1_700_000_050_000);
    close(f.speed_mps, 13.9);
    close(f.accuracy_m, 3.2);
    assert_eq!((f.hdop, f.satellites), (None, Some(9)));
    assert_eq!(f.attributes["provider"], json!("gps"));
    close(sent[0].status.as_ref().unwrap().battery_pct, 77.0);
    ingest.stop().await;
}

#[tokio::test]
async fn traccar_decoder_test_vectors() {
    let ingest = Ingest::start().await;
    let token_of = |dev: &SeededDevice| dev.token.clone();
    let d123456 = device(&ingest, "123456", "").await;
    let d902064 = device(&ingest, "902064", "").await;
    let d353861 = device(&ingest, "353861053849681", "").await;
    let d861001 = device(&ingest, "861001000719969", "").await;
    let d1234567 = device(&ingest, "123456789012345", "").await;
    let d658765 = device(&ingest, "658765", "").await;
    // traccar/traccar src/test/java/org/traccar/protocol/OsmAndProtocolDecoderTest.java,
    // testDecodeQuery, in order (verifyNotNull/verifyPosition: 200; verifyNull: refused), each
    // with the device's token added.
    let vectors: Vec<(String, u16)> = vec![
        (format!("/?id=123456&timestamp=1377177267&cell=257,02,16,2224&cell=257,02,16,2223,-90&wifi=00-14-22-01-23-45,-80&wifi=00-1C-B3-09-85-15,-70&token={}", token_of(&d123456)), 200),
        ("/?timestamp=1377177267&lat=60.0&lon=30.0".to_owned(), 400),
        (format!("/?id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z&hdop=6.0&altitude=224.0&speed=0.0&token={}", token_of(&d902064)), 200),
        (format!("/?id=902064&lat=42.06288&lon=-88.23412&timestamp=1442068686579&hdop=6.0&altitude=224.0&speed=0.0&token={}", token_of(&d902064)), 200),
        (format!("/?lat=49.60688&lon=6.15788&timestamp=2014-06-04+09%3A10%3A11&altitude=384.7&speed=0.0&id=353861053849681&token={}", token_of(&d353861)), 200),
        (format!("/?id=123456&timestamp=1377177267&lat=60.0&lon=30.0&speed=0.0&bearing=0.0&altitude=0&hdop=0.0&token={}", token_of(&d123456)), 200),
        (format!("/?id=123456&timestamp=1377177267&lat=60.0&lon=30.0&token={}", token_of(&d123456)), 200),
        (format!("/?lat=60.0&lon=30.0&speed=0.0&heading=0.0&vacc=0&hacc=0&altitude=0&deviceid=123456&token={}", token_of(&d123456)), 200),
        (format!("/?id=861001000719969&lat=41.666667&lon=-0.883333&altitude=350.059479&speed=0.000000&batt=87&token={}", token_of(&d861001)), 200),
        (format!("/?id=123456&timestamp=1377177267&location=60.0,30.0&token={}", token_of(&d123456)), 200),
        (format!("/?id=123456789012345&timestamp=1504763810&lat=40.7232948571&lon=-74.0061408571&bearing=7.19889788244&speed=40&ignition=true&rpm=933&fuel=24&token={}", token_of(&d1234567)), 200),
    ];
    for (path, status) in &vectors {
        let r = get(&ingest, path);
        let body = expect(r, *status).await;
        if *status == 400 {
            let e: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(e["error"]["field"], "id", "{path}");
        }
    }
    // testDecodeJson, third vector (iOS, unknown speed and battery: -1).
    let ios = r#"{"location":{"extras":{},"mock":true,"coords":{"speed_accuracy":-1,"speed":-1,"longitude":-122.406417,"ellipsoidal_altitude":0,"floor":null,"heading_accuracy":-1,"latitude":37.785834000000001,"accuracy":5,"altitude_accuracy":-1,"altitude":0,"heading":-1},"is_moving":false,"age":188,"odometer":0,"uuid":"2FB04C65-99CF-42AB-8DD3-EBCB4B108BF8","event":"motionchange","battery":{"level":-1,"is_charging":false},"activity":{"type":"unknown","confidence":100},"timestamp":"2025-05-09T04:11:30.579Z"},"device_id":"658765"}"#;
    let r = post(&ingest, "/")
        .bearer_auth(&d658765.token)
        .header("content-type", "application/json")
        .body(ios);
    expect(r, 200).await;

    let envelopes = read_envelopes(&ingest.kafka, 11).await;
    assert_eq!(envelopes.len(), 11, "every accepted vector produced once");
    let network = &of(&envelopes, &d123456)[0];
    assert!(
        network.fixes.is_empty(),
        "cell/Wi-Fi only: a status, no position"
    );
    let s = network.status.as_ref().unwrap();
    assert_eq!(s.time, 1_377_177_267_000);
    assert_eq!(s.attributes["cell"].as_array().unwrap().len(), 2);
    let osmand = of(&envelopes, &d902064);
    let iso = &osmand[0].fixes[0];
    assert_eq!(iso.fix_time, 1_453_920_947_000);
    assert_eq!(
        (iso.hdop, iso.accuracy_m),
        (Some(6.0), None),
        "a seconds-era hdop"
    );
    let ms = &osmand[1].fixes[0];
    assert_eq!(ms.fix_time, 1_442_068_686_579);
    assert_eq!(
        (ms.hdop, ms.accuracy_m),
        (None, Some(6.0)),
        "OsmAnd's {{3}} is metres"
    );
    let f = &of(&envelopes, &d353861)[0].fixes[0];
    assert_eq!(
        f.fix_time, 1_401_873_011_000,
        "`yyyy-MM-dd HH:mm:ss` is UTC"
    );
    let f = &of(&envelopes, &d1234567)[0].fixes[0];
    close(f.speed_mps, units::knots_to_mps(40.0));
    assert_eq!(
        (&f.attributes["ignition"], &f.attributes["rpm"]),
        (&json!(true), &json!(933.0))
    );
    let f = &of(&envelopes, &d658765)[0].fixes[0];
    assert_eq!(
        (f.speed_mps, f.heading_deg, f.battery_pct),
        (None, None, None)
    );
    assert_eq!(f.attributes["mock"], json!(true));
    close(of(&envelopes, &d861001)[0].fixes[0].battery_pct, 87.0);
    ingest.stop().await;
}

#[tokio::test]
async fn invalid_fixes_and_unknown_paths() {
    let ingest = Ingest::start().await;
    let dev = device(&ingest, "tracker-9", "").await;
    // traccar/traccar OsmAndProtocolDecoder.java: `valid` is true for `true` or `1`, anything
    // else marks the fix invalid (kept, never the live position).
    let r = get(
        &ingest,
        &format!(
            "/?id=tracker-9&token={}&timestamp=1700000000&lat=1.5&lon=2.5&valid=false",
            dev.token
        ),
    );
    expect(r, 200).await;
    // Any path is OsmAnd when it carries parameters; one that carries nothing is told so.
    let r = get(&ingest, "/nothing/here");
    let e: Value = serde_json::from_str(&expect(r, 404).await).unwrap();
    assert_eq!(e["error"]["code"], "not_found");
    // A known route keeps its methods; the ops routes are untouched.
    expect(get(&ingest, "/v1/fixes"), 405).await;
    expect(get(&ingest, "/healthz"), 200).await;
    expect(get(&ingest, "/metrics"), 200).await;
    let sent = of(&read_envelopes(&ingest.kafka, 1).await, &dev);
    assert!(!sent[0].fixes[0].valid);
    ingest.stop().await;
}

/// The OwnTracks Android location of `MessageLocation.kt`, sealed with the secret
/// `owntracks-payload-key` by libsodium (PyNaCl `SecretBox(key).encrypt(plaintext, nonce)`,
/// nonce 0x00..0x17; key = the secret's bytes in a zeroed 32-byte buffer, as
/// `EncryptionProvider.kt` derives it). Plaintext:
/// `{"_type":"location","_id":"e3a8b2c1","acc":9,"alt":41,"batt":73,"bs":1,"conn":"m",
/// "created_at":1700000005,"lat":48.8566,"lon":2.3522,"m":1,"t":"p","tid":"ph",
/// "tst":1700000000,"vac":3,"vel":18}`.
const SEALED_LOCATION: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXpbAH03augHB9BtkMtX3N7yAm+nfiDWmhTPFLvc48LachDct+NIqc6Brki6nw2nVWguYhZD8c5kkygtpy1vXUbltT9LqutNyOb7f7lsJHsXN3dupp+7eGd8q11Qo32N+0LnBGoR+ZexVHIn45LSgDi0KTYP1aohkRK5cSgzv0AignLsnOsxrw/d38o3qgyR3yqCkDO/eZoR1LkPHQ0tGo/C6UKkOEhorM6eAODXrTpoFnIy+/wn7VBI14U94y3ZNtBDMA70Tw41qNbPZ4wyWIiw==";

#[tokio::test]
async fn owntracks_android_ios_recorder_and_encryption() {
    let ingest = Ingest::start().await;
    let android = device(&ingest, "alice-phone", "").await;
    let app = |path: &str, dev: &SeededDevice, body: Value| {
        // The app in HTTP mode: Basic auth (user, password) and X-Limit-U/X-Limit-D headers.
        post(&ingest, path)
            .basic_auth(&dev.uid, Some(&dev.token))
            .header("X-Limit-U", "alice")
            .header("X-Limit-D", "phone")
            .json(&body)
    };
    // owntracks/android .../model/messages/MessageLocation.kt: `vel` integer km/h
    // (`location.speed * 3.6`), `acc`/`alt` integers, `bs` the battery status enum
    // (1 unplugged), `tst` seconds, `created_at`, `_id`, `m`, `t`.
    let location = json!({"_type": "location", "_id": "a1b2c3d4", "acc": 12, "alt": 40,
        "batt": 85, "bs": 2, "conn": "w", "created_at": 1_700_000_001, "lat": 52.52,
        "lon": 13.405, "m": 1, "t": "u", "tid": "ph", "tst": 1_700_000_000, "vac": 3, "vel": 36,
        "BSSID": "aa:bb:cc:dd:ee:ff", "SSID": "home"});
    let r = app("/owntracks", &android, location);
    assert_eq!(expect(r, 200).await, "[]");
    // owntracks/booklet docs/tech/json.md: the iOS location also carries `cog` (deg) and `p`
    // (kPa), numbers; posted to an OwnTracks Recorder URL (`/pub`), user and device in the
    // query (owntracks/recorder's HTTP mode, `?u=&d=`).
    let ios = device(&ingest, "bob-iphone", "").await;
    let location = json!({"_type": "location", "acc": 5, "alt": 120, "batt": 40, "bs": 3,
        "cog": 271, "conn": "m", "lat": 51.5007, "lon": -0.1246, "m": 2, "p": 101.2, "t": "t",
        "tid": "bo", "tst": 1_700_000_100, "vac": 4, "vel": 18, "topic": "owntracks/bob/iphone"});
    let r = post(&ingest, "/pub?u=bob&d=iphone")
        .basic_auth(&ios.uid, Some(&ios.token))
        .json(&location);
    assert_eq!(expect(r, 200).await, "[]");
    // A uid-only device at the Recorder's `/pub?u=&d=` without any Authorization header.
    let legacy = device(&ingest, "carol", "uid_only = true").await;
    let r = post(&ingest, "/pub?u=carol&d=tablet")
        .json(&json!({"_type": "location", "lat": 1.5, "lon": 2.5, "tst": 1_700_000_200}));
    assert_eq!(expect(r, 200).await, "[]");

    // Payload encryption (owntracks/android .../model/EncryptionProvider.kt).
    let sealed = json!({"_type": "encrypted", "data": SEALED_LOCATION});
    let r = app("/owntracks", &android, sealed.clone());
    let e: Value = serde_json::from_str(&expect(r, 400).await).unwrap();
    assert_eq!(
        e["error"]["code"], "encryption_not_configured",
        "never 200 [] and lost"
    );
    // A device whose secret is not the app's key.
    let sealer = device(&ingest, "dave-phone", "payload_secret = 'not-the-key'").await;
    let r = app("/owntracks", &sealer, sealed.clone());
    let e: Value = serde_json::from_str(&expect(r, 400).await).unwrap();
    assert_eq!(e["error"]["code"], "decryption_failed");
    let opener = device(
        &ingest,
        "erin-phone",
        "payload_secret = 'owntracks-payload-key'",
    )
    .await;
    let r = app("/owntracks", &opener, sealed);
    assert_eq!(expect(r, 200).await, "[]");

    let envelopes = read_envelopes(&ingest.kafka, 4).await;
    assert_eq!(envelopes.len(), 4, "refused payloads produce nothing");
    let e = &of(&envelopes, &android)[0];
    assert_eq!(e.proto, Protocol::Owntracks);
    let f = &e.fixes[0];
    assert_eq!(f.fix_time, 1_700_000_000_000);
    close(f.speed_mps, 10.0);
    close(f.accuracy_m, 12.0);
    assert_eq!(f.attributes["SSID"], json!("home"));
    let s = e.status.as_ref().unwrap();
    assert_eq!((s.battery_pct, s.charging), (Some(85.0), Some(true)));
    let f = &of(&envelopes, &ios)[0].fixes[0];
    close(f.speed_mps, 5.0);
    close(f.heading_deg, 271.0);
    assert_eq!(f.attributes["topic"], json!("owntracks/bob/iphone"));
    assert_eq!(
        of(&envelopes, &legacy)[0].fixes[0].fix_time,
        1_700_000_200_000
    );
    let opened = &of(&envelopes, &opener)[0];
    let f = &opened.fixes[0];
    assert_eq!(
        (f.fix_time, f.lat, f.lon),
        (1_700_000_000_000, 48.8566, 2.3522)
    );
    close(f.speed_mps, 5.0);
    assert_eq!(
        opened.status.as_ref().unwrap().charging,
        Some(false),
        "bs 1: unplugged"
    );
    ingest.stop().await;
}
