//! OwnTracks HTTP mode (<https://owntracks.org/booklet/tech/json/>): the app POSTs one JSON
//! message per request. `_type=location` carries `tst` (epoch s), `lat`, `lon`, `acc` (m), `alt`
//! (m), `vel` (**km/h**), `cog` (deg), `batt` (%), `tid`; other types (transition, waypoint,
//! card, lwt, encrypted, …) are acknowledged but carry no fix.

use super::{parse_time_text, MAX_ATTRIBUTE_VALUE};
use crate::fix::{units, Fix};
use serde_json::Value;

/// A decoded OwnTracks message.
#[derive(Debug, Clone, PartialEq)]
pub enum OwntracksMessage {
    /// A location report.
    Location(Fix),
    /// Any other message type (kept for metrics, not produced).
    Other(String),
}

/// Why a message was refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct OwntracksError {
    /// The field at fault.
    pub field: String,
    /// Why.
    pub message: String,
}

fn err(field: &str, message: &str) -> OwntracksError {
    OwntracksError {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// Decode one message.
pub fn decode(body: &[u8]) -> Result<OwntracksMessage, OwntracksError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| err("", &format!("malformed json: {e}")))?;
    let Value::Object(map) = &root else {
        return Err(err("", "must be a JSON object"));
    };
    match map.get("_type") {
        Some(Value::String(t)) if t == "location" => {}
        Some(Value::String(t)) => {
            let mut t = t.clone();
            t.truncate(32);
            return Ok(OwntracksMessage::Other(t));
        }
        _ => return Err(err("_type", "required")),
    }
    let num = |name: &str| -> Result<Option<f64>, OwntracksError> {
        match map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|v| v.is_finite())
                .map(Some)
                .ok_or_else(|| err(name, "must be a finite number")),
            Some(_) => Err(err(name, "must be a number")),
        }
    };
    let tst = match map.get("tst") {
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| err("tst", "must be integer epoch seconds"))?,
        Some(Value::String(s)) => s
            .parse::<i64>()
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .or_else(|| parse_time_text(s))
            .ok_or_else(|| err("tst", "must be integer epoch seconds"))?,
        None | Some(Value::Null) => return Err(err("tst", "required")),
        Some(_) => return Err(err("tst", "must be integer epoch seconds")),
    };
    let lat = num("lat")?.ok_or_else(|| err("lat", "required"))?;
    let lon = num("lon")?.ok_or_else(|| err("lon", "required"))?;
    let mut fix = Fix::new(tst, lat, lon);
    fix.accuracy_m = num("acc")?;
    fix.altitude_m = num("alt")?;
    // OwnTracks writes -1 or omits vel/cog when unknown.
    fix.speed_mps = num("vel")?.filter(|v| *v >= 0.0).map(units::kmh_to_mps);
    fix.heading_deg = num("cog")?.filter(|v| *v >= 0.0);
    fix.battery_pct = num("batt")?.filter(|v| *v >= 0.0);
    for key in ["tid", "t", "conn", "topic", "SSID"] {
        if let Some(Value::String(s)) = map.get(key) {
            if s.len() <= MAX_ATTRIBUTE_VALUE {
                fix.attributes
                    .insert(key.to_owned(), Value::from(s.as_str()));
            }
        }
    }
    for key in ["vac", "bs", "m"] {
        if let Some(Value::Number(n)) = map.get(key) {
            fix.attributes
                .insert(key.to_owned(), Value::Number(n.clone()));
        }
    }
    Ok(OwntracksMessage::Location(fix))
}

/// Encode a fix as an OwnTracks location message (km/h, whole seconds).
pub fn encode(fix: &Fix, tid: &str) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("_type".into(), "location".into());
    m.insert("tst".into(), fix.fix_time.div_euclid(1000).into());
    m.insert("lat".into(), fix.lat.into());
    m.insert("lon".into(), fix.lon.into());
    m.insert("tid".into(), tid.into());
    for (k, v) in [
        ("acc", fix.accuracy_m),
        ("alt", fix.altitude_m),
        ("vel", fix.speed_mps.map(units::mps_to_kmh)),
        ("cog", fix.heading_deg),
        ("batt", fix.battery_pct),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.into());
        }
    }
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn location_with_every_field() {
        let body = br#"{"_type":"location","tid":"ab","tst":1700000000,"lat":52.52,"lon":13.405,"acc":12,"alt":40,"vel":36,"cog":270,"batt":85,"bs":1,"vac":3,"t":"u","conn":"w","topic":"owntracks/user/phone","created_at":1700000001}"#;
        let OwntracksMessage::Location(f) = decode(body).unwrap() else {
            panic!("location expected")
        };
        assert_eq!(f.fix_time, 1_700_000_000_000);
        assert_eq!((f.lat, f.lon), (52.52, 13.405));
        assert_eq!(f.accuracy_m, Some(12.0));
        assert_eq!(f.altitude_m, Some(40.0));
        assert!((f.speed_mps.unwrap() - 10.0).abs() < 1e-12, "36 km/h");
        assert_eq!(f.heading_deg, Some(270.0));
        assert_eq!(f.battery_pct, Some(85.0));
        assert_eq!(f.attributes["tid"], Value::from("ab"));
        assert_eq!(f.attributes["t"], Value::from("u"));
        assert_eq!(f.attributes["bs"], Value::from(1));
    }

    #[test]
    fn other_types_and_refusals() {
        assert_eq!(
            decode(br#"{"_type":"transition","event":"enter"}"#).unwrap(),
            OwntracksMessage::Other("transition".into())
        );
        assert_eq!(decode(br#"{"lat":1}"#).unwrap_err().field, "_type");
        assert_eq!(
            decode(br#"{"_type":"location","lat":1,"lon":2}"#)
                .unwrap_err()
                .field,
            "tst"
        );
        assert_eq!(
            decode(br#"{"_type":"location","tst":1,"lat":"x","lon":2}"#)
                .unwrap_err()
                .field,
            "lat"
        );
        assert_eq!(decode(b"[]").unwrap_err().field, "");
        assert_eq!(decode(b"{").unwrap_err().field, "");
        let OwntracksMessage::Location(f) =
            decode(br#"{"_type":"location","tst":1,"lat":1,"lon":2,"vel":-1,"cog":-1}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((f.speed_mps, f.heading_deg), (None, None));
    }

    #[test]
    fn encode_round_trips() {
        let mut fix = Fix::new(1_700_000_000_000, 1.5, 2.5);
        fix.speed_mps = Some(10.0);
        let OwntracksMessage::Location(f) = decode(&encode(&fix, "xy")).unwrap() else {
            panic!()
        };
        assert!((f.speed_mps.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(f.attributes["tid"], Value::from("xy"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
