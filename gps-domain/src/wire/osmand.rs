//! Traccar Client / OsmAnd HTTP protocol, as Traccar's `OsmAndProtocolDecoder` reads it.
//!
//! - Query string or form body: `id`/`deviceid` (device uid), `lat`, `lon` (or
//!   `location=lat,lon`), `timestamp` (epoch seconds, epoch ms, ISO 8601 or
//!   `yyyy-MM-dd HH:mm:ss` UTC; receive time when absent), `speed` in **knots**,
//!   `bearing`/`heading` (deg), `altitude` (m), `accuracy` (m), `hdop`, `batt` (%); any other
//!   parameter becomes an attribute (number, boolean or string).
//! - The Traccar Client JSON body (its background-geolocation library's shape):
//!   `{"location":{"timestamp":ISO,"coords":{"latitude","longitude","accuracy","speed" (m/s),
//!   "heading","altitude"},"battery":{"level" (0..1),"is_charging"},"is_moving","odometer",
//!   "event","activity":{"type"},"mock"},"device_id":uid}`; `location` may also be an array.

use super::{
    parse_finite, parse_time_text, MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE,
};
use crate::fix::{units, EpochMillis, Fix};
use serde_json::Value;

/// A decoded report: the device uid as the device named it, and its fixes.
#[derive(Debug, Clone, PartialEq)]
pub struct OsmandReport {
    /// The device uid (`id`, `deviceid` or `device_id`).
    pub uid: String,
    /// One fix (query/form) or the fixes of the JSON body.
    pub fixes: Vec<Fix>,
}

/// Why a report was refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct OsmandError {
    /// The parameter at fault.
    pub field: String,
    /// Why.
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> OsmandError {
    OsmandError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Whether a query string carries parameters (Traccar falls back to the body when it does not).
pub fn has_params(query: &str) -> bool {
    query.split('&').any(|p| !p.is_empty())
}

/// Parse a Traccar `timestamp` value: digits are epoch seconds when below 2^31 - 1, else epoch
/// ms (Traccar's rule); otherwise ISO 8601 or `yyyy-MM-dd HH:mm:ss`.
pub fn parse_timestamp(value: &str) -> Option<EpochMillis> {
    let value = value.trim();
    if let Ok(n) = value.parse::<i64>() {
        return if n < i64::from(i32::MAX) {
            n.checked_mul(1000)
        } else {
            Some(n)
        };
    }
    parse_time_text(value)
}

/// Decode a query string or an `application/x-www-form-urlencoded` body. `now` fills a missing
/// timestamp, as Traccar does.
pub fn decode_params(encoded: &[u8], now: EpochMillis) -> Result<OsmandReport, OsmandError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(encoded)
        .map_err(|e| err("", format!("malformed parameters: {e}")))?;
    let mut uid = None;
    let mut fix_time = None;
    let mut lat = None;
    let mut lon = None;
    let mut fix = Fix::new(0, 0.0, 0.0);
    let number = |key: &str, value: &str| {
        parse_finite(value).ok_or_else(|| err(key, "must be a finite number"))
    };
    for (key, value) in &pairs {
        match key.as_str() {
            "id" | "deviceid" => {
                if value.is_empty() || value.len() > 128 {
                    return Err(err(key, "must be a device uid of 1..=128 bytes"));
                }
                uid = Some(value.clone());
            }
            "timestamp" => {
                fix_time = Some(
                    parse_timestamp(value)
                        .ok_or_else(|| err(key, "not epoch seconds/ms or a date"))?,
                )
            }
            "lat" => lat = Some(number(key, value)?),
            "lon" => lon = Some(number(key, value)?),
            "location" => {
                let (a, b) = value
                    .split_once(',')
                    .ok_or_else(|| err(key, "must be `lat,lon`"))?;
                lat = Some(number(key, a)?);
                lon = Some(number(key, b)?);
            }
            "speed" => fix.speed_mps = Some(units::knots_to_mps(number(key, value)?)),
            "bearing" | "heading" => fix.heading_deg = Some(number(key, value)?),
            "altitude" => fix.altitude_m = Some(number(key, value)?),
            "accuracy" => fix.accuracy_m = Some(number(key, value)?),
            "hdop" => fix.hdop = Some(number(key, value)?),
            "batt" => fix.battery_pct = Some(number(key, value)?),
            _ => {
                if fix.attributes.len() < MAX_ATTRIBUTES
                    && !key.is_empty()
                    && key.len() <= MAX_ATTRIBUTE_KEY
                {
                    fix.attributes.insert(key.clone(), attribute_value(value));
                }
            }
        }
    }
    let uid = uid.ok_or_else(|| err("id", "required"))?;
    fix.lat = lat.ok_or_else(|| err("lat", "required"))?;
    fix.lon = lon.ok_or_else(|| err("lon", "required"))?;
    fix.fix_time = fix_time.unwrap_or(now);
    Ok(OsmandReport {
        uid,
        fixes: vec![fix],
    })
}

fn attribute_value(value: &str) -> Value {
    if let Some(n) = parse_finite(value) {
        return Value::from(n);
    }
    match value {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => {
            let mut end = value.len().min(MAX_ATTRIBUTE_VALUE);
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            Value::from(&value[..end])
        }
    }
}

/// Decode the Traccar Client JSON body.
pub fn decode_json(body: &[u8]) -> Result<OsmandReport, OsmandError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| err("", format!("malformed json: {e}")))?;
    let uid = match root.get("device_id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => return Err(err("device_id", "required")),
        Some(_) => return Err(err("device_id", "must be a device uid string")),
    };
    let fixes = match root.get("location") {
        Some(location @ Value::Object(_)) => vec![json_location(location, "location")?],
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= 1000 => list
            .iter()
            .enumerate()
            .map(|(i, l)| json_location(l, &format!("location.{i}")))
            .collect::<Result<_, _>>()?,
        None | Some(Value::Null) => return Err(err("location", "required")),
        Some(_) => return Err(err("location", "must be an object or 1..=1000 objects")),
    };
    Ok(OsmandReport { uid, fixes })
}

fn json_location(location: &Value, path: &str) -> Result<Fix, OsmandError> {
    let field = |name: &str| format!("{path}.{name}");
    let timestamp = match location.get("timestamp") {
        Some(Value::String(s)) => {
            parse_time_text(s).ok_or_else(|| err(&field("timestamp"), "not an ISO 8601 date"))?
        }
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| parse_timestamp(&n.to_string()))
            .ok_or_else(|| err(&field("timestamp"), "not epoch seconds/ms"))?,
        _ => return Err(err(&field("timestamp"), "required")),
    };
    let coords = location
        .get("coords")
        .filter(|c| c.is_object())
        .ok_or_else(|| err(&field("coords"), "required"))?;
    let num = |name: &str| -> Result<Option<f64>, OsmandError> {
        match coords.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64().filter(|v| v.is_finite())),
            Some(_) => Err(err(&field(&format!("coords.{name}")), "must be a number")),
        }
    };
    let lat = num("latitude")?.ok_or_else(|| err(&field("coords.latitude"), "required"))?;
    let lon = num("longitude")?.ok_or_else(|| err(&field("coords.longitude"), "required"))?;
    let mut fix = Fix::new(timestamp, lat, lon);
    // The geolocation library reports -1 for an unknown speed or heading.
    fix.speed_mps = num("speed")?.filter(|v| *v >= 0.0);
    fix.heading_deg = num("heading")?.filter(|v| *v >= 0.0);
    fix.accuracy_m = num("accuracy")?.filter(|v| *v >= 0.0);
    fix.altitude_m = num("altitude")?;
    if let Some(battery) = location.get("battery") {
        if let Some(level) = battery.get("level").and_then(Value::as_f64) {
            if (0.0..=1.0).contains(&level) {
                fix.battery_pct = Some((level * 100.0 * 1000.0).round() / 1000.0);
            }
        }
        if let Some(charging) = battery.get("is_charging").and_then(Value::as_bool) {
            fix.attributes.insert("charge".into(), charging.into());
        }
    }
    if let Some(moving) = location.get("is_moving").and_then(Value::as_bool) {
        fix.attributes.insert("motion".into(), moving.into());
    }
    if let Some(odometer) = location.get("odometer").and_then(Value::as_f64) {
        fix.attributes.insert("odometer".into(), odometer.into());
    }
    if let Some(event) = location.get("event").and_then(Value::as_str) {
        fix.attributes
            .insert("event".into(), attribute_value(event));
    }
    if let Some(activity) = location
        .get("activity")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str)
    {
        fix.attributes
            .insert("activity".into(), attribute_value(activity));
    }
    if let Some(mock) = location.get("mock").and_then(Value::as_bool) {
        fix.attributes.insert("mock".into(), mock.into());
    }
    Ok(fix)
}

/// Encode a fix as the query string Traccar Client sends (speed in knots, time in seconds).
pub fn encode_query(uid: &str, fix: &Fix) -> String {
    let mut pairs: Vec<(&str, String)> = vec![
        ("id", uid.to_owned()),
        ("timestamp", fix.fix_time.div_euclid(1000).to_string()),
        ("lat", fix.lat.to_string()),
        ("lon", fix.lon.to_string()),
    ];
    let mut opt = |k, v: Option<f64>| {
        if let Some(v) = v {
            pairs.push((k, v.to_string()));
        }
    };
    opt("speed", fix.speed_mps.map(units::mps_to_knots));
    opt("bearing", fix.heading_deg);
    opt("altitude", fix.altitude_m);
    opt("accuracy", fix.accuracy_m);
    opt("batt", fix.battery_pct);
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn traccar_client_query() {
        let q = b"id=123456&timestamp=1700000000&lat=52.52&lon=13.405&speed=10&bearing=90.5&altitude=34&accuracy=5&batt=77.5&charge=true&hdop=0.8&valid=1&driverUniqueId=abc";
        let r = decode_params(q, 0).unwrap();
        assert_eq!(r.uid, "123456");
        let f = &r.fixes[0];
        assert_eq!(f.fix_time, 1_700_000_000_000);
        assert_eq!((f.lat, f.lon), (52.52, 13.405));
        assert!((f.speed_mps.unwrap() - 5.144_444).abs() < 1e-6, "10 kn");
        assert_eq!(f.heading_deg, Some(90.5));
        assert_eq!(f.altitude_m, Some(34.0));
        assert_eq!(f.accuracy_m, Some(5.0));
        assert_eq!(f.battery_pct, Some(77.5));
        assert_eq!(f.hdop, Some(0.8));
        assert_eq!(f.attributes["charge"], Value::Bool(true));
        assert_eq!(f.attributes["valid"], Value::from(1.0));
        assert_eq!(f.attributes["driverUniqueId"], Value::from("abc"));
    }

    #[test]
    fn timestamp_forms() {
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(
            parse_timestamp("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_timestamp("2023-11-14 22:13:20"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_timestamp("2023-11-14T22:13:20.5+00:00"),
            Some(1_700_000_000_500)
        );
        assert_eq!(parse_timestamp("soon"), None);
        let r = decode_params(b"deviceid=x&location=1.5,2.5", 42).unwrap();
        assert_eq!(r.fixes[0].fix_time, 42, "missing timestamp means now");
        assert_eq!((r.fixes[0].lat, r.fixes[0].lon), (1.5, 2.5));
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(decode_params(b"lat=1&lon=2", 0).unwrap_err().field, "id");
        assert_eq!(decode_params(b"id=a&lon=2", 0).unwrap_err().field, "lat");
        assert_eq!(
            decode_params(b"id=a&lat=NaN&lon=2", 0).unwrap_err().field,
            "lat"
        );
        assert_eq!(
            decode_params(b"id=a&lat=1&lon=inf", 0).unwrap_err().field,
            "lon"
        );
        assert_eq!(
            decode_params(b"id=a&lat=1&lon=2&speed=fast", 0)
                .unwrap_err()
                .field,
            "speed"
        );
        assert_eq!(
            decode_params(b"id=a&lat=1&lon=2&timestamp=x", 0)
                .unwrap_err()
                .field,
            "timestamp"
        );
        assert_eq!(
            decode_params(b"id=&lat=1&lon=2", 0).unwrap_err().field,
            "id"
        );
    }

    #[test]
    fn attributes_are_bounded() {
        let mut q = String::from("id=a&lat=1&lon=2");
        for i in 0..40 {
            q.push_str(&format!("&k{i}={}", "v".repeat(400)));
        }
        let r = decode_params(q.as_bytes(), 0).unwrap();
        assert_eq!(r.fixes[0].attributes.len(), MAX_ATTRIBUTES);
        assert!(r.fixes[0]
            .attributes
            .values()
            .all(|v| v.as_str().unwrap().len() == 256));
    }

    #[test]
    fn traccar_client_json_body() {
        let body = br#"{"location":{"timestamp":"2023-11-14T22:13:20.250Z","coords":{"latitude":52.52,"longitude":13.405,"accuracy":4.5,"speed":10.5,"heading":180,"altitude":40.2,"altitude_accuracy":3,"heading_accuracy":-1,"speed_accuracy":-1,"ellipsoidal_altitude":40.2},"is_moving":true,"odometer":1234.5,"event":"motionchange","battery":{"level":0.42,"is_charging":false},"activity":{"type":"in_vehicle"},"extras":{},"uuid":"u","age":12},"device_id":"123456"}"#;
        let r = decode_json(body).unwrap();
        assert_eq!(r.uid, "123456");
        let f = &r.fixes[0];
        assert_eq!(f.fix_time, 1_700_000_000_250);
        assert_eq!(f.speed_mps, Some(10.5), "m/s in the JSON body");
        assert_eq!(f.heading_deg, Some(180.0));
        assert_eq!(f.accuracy_m, Some(4.5));
        assert_eq!(f.altitude_m, Some(40.2));
        assert_eq!(f.battery_pct, Some(42.0));
        assert_eq!(f.attributes["motion"], Value::Bool(true));
        assert_eq!(f.attributes["charge"], Value::Bool(false));
        assert_eq!(f.attributes["event"], Value::from("motionchange"));
        assert_eq!(f.attributes["activity"], Value::from("in_vehicle"));
        assert_eq!(f.attributes["odometer"], Value::from(1234.5));
    }

    #[test]
    fn json_unknown_speed_and_refusals() {
        let body = br#"{"location":{"timestamp":"2023-11-14T22:13:20Z","coords":{"latitude":1,"longitude":2,"speed":-1,"heading":-1},"battery":{"level":-1}},"device_id":"d"}"#;
        let f = &decode_json(body).unwrap().fixes[0];
        assert_eq!(
            (f.speed_mps, f.heading_deg, f.battery_pct),
            (None, None, None)
        );
        assert_eq!(decode_json(b"{}").unwrap_err().field, "device_id");
        assert_eq!(
            decode_json(br#"{"device_id":"d"}"#).unwrap_err().field,
            "location"
        );
        assert_eq!(
            decode_json(br#"{"device_id":"d","location":{"timestamp":"x","coords":{}}}"#)
                .unwrap_err()
                .field,
            "location.timestamp"
        );
        assert_eq!(
            decode_json(br#"{"device_id":"d","location":[{"timestamp":"2023-11-14T22:13:20Z","coords":{"latitude":"1","longitude":2}}]}"#)
                .unwrap_err()
                .field,
            "location.0.coords.latitude"
        );
    }

    #[test]
    fn encode_round_trips() {
        let mut fix = Fix::new(1_700_000_000_000, 1.25, -3.5);
        fix.speed_mps = Some(10.0);
        fix.battery_pct = Some(50.0);
        let r = decode_params(encode_query("dev 1", &fix).as_bytes(), 0).unwrap();
        assert_eq!(r.uid, "dev 1");
        assert!((r.fixes[0].speed_mps.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(r.fixes[0].battery_pct, Some(50.0));
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_params(&bytes, 0);
            let _ = decode_json(&bytes);
        }

        #[test]
        fn arbitrary_text_params_never_panic(k in ".{0,8}", v in ".{0,16}") {
            let q = serde_urlencoded::to_string([("id", "a"), ("lat", "1"), ("lon", "2"), (k.as_str(), v.as_str())]).unwrap();
            let _ = decode_params(q.as_bytes(), 0);
        }
    }
}
