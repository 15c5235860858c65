//! OwnTracks HTTP mode (<https://owntracks.org/booklet/tech/json/>): the app POSTs one JSON
//! message per request (to `/owntracks`, or to an OwnTracks Recorder's `/pub`).
//!
//! - `_type=location` carries `tst` (epoch s), `lat`, `lon`, `acc` (m), `alt` (m), `vel`
//!   (**km/h**), `cog` (deg), `batt` (%), `bs` (battery status: 0 unknown, 1 unplugged,
//!   2 charging, 3 full), `tid`, … A location with `batt` or a known `bs` also yields a
//!   [`DeviceStatus`].
//! - `_type=status` (the app's own state) and `_type=transition` (a region entered or left)
//!   are reports of the device without a fix: a [`DeviceStatus`] (their scalar fields as
//!   attributes).
//! - `_type=encrypted` (payload encryption on): `data` is base64 of nonce (24 bytes) followed by
//!   libsodium's `crypto_secretbox_easy` output (Poly1305 tag, then the XSalsa20 ciphertext);
//!   the key is the secret's UTF-8 bytes copied into a zeroed 32-byte buffer (longer secrets
//!   are cut), as the apps derive it (`EncryptionProvider` of OwnTracks Android). [`decrypt`]
//!   opens it; the plaintext is one of the other messages.
//! - Other types (waypoint, card, cmd, lwt, …) are acknowledged and carry nothing to keep.

use super::{parse_time_text, MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE};
use crate::fix::{units, EpochMillis, Fix};
use crate::status::DeviceStatus;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use serde_json::{Map, Value};

/// Bytes of the secretbox nonce that leads the encrypted payload.
pub const NONCE_BYTES: usize = 24;
/// Bytes of the secretbox key.
pub const KEY_BYTES: usize = 32;

/// A decoded OwnTracks message.
#[derive(Debug, Clone, PartialEq)]
pub enum OwntracksMessage {
    /// A location report, and the status it carried (battery, charging), if any.
    Location(Fix, Option<DeviceStatus>),
    /// A report of the device without a fix (`status`, `transition`).
    Status(DeviceStatus),
    /// An encrypted message: the base64 `data` to [`decrypt`].
    Encrypted(String),
    /// Any other message type (acknowledged, not produced).
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

/// Decode one message; `now` dates a status message that carries no `tst`.
pub fn decode(body: &[u8], now: EpochMillis) -> Result<OwntracksMessage, OwntracksError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| err("", &format!("malformed json: {e}")))?;
    let Value::Object(map) = &root else {
        return Err(err("", "must be a JSON object"));
    };
    match map.get("_type") {
        Some(Value::String(t)) if t == "location" => location(map),
        Some(Value::String(t)) if t == "encrypted" => match map.get("data") {
            Some(Value::String(data)) => Ok(OwntracksMessage::Encrypted(data.clone())),
            _ => Err(err("data", "required: the base64 encrypted payload")),
        },
        Some(Value::String(t)) if t == "status" || t == "transition" => {
            let time = match map.get("tst") {
                None | Some(Value::Null) => now,
                Some(value) => tst(value)?,
            };
            let mut status = DeviceStatus::new(time);
            status.attributes.insert("_type".into(), t.as_str().into());
            scalars_into(map, &mut status.attributes, &["_type", "tst"]);
            // The Android status message nests its state one level down.
            for nested in ["android", "iOS"] {
                if let Some(Value::Object(inner)) = map.get(nested) {
                    scalars_into(inner, &mut status.attributes, &[]);
                }
            }
            Ok(OwntracksMessage::Status(status))
        }
        Some(Value::String(t)) => {
            // At most 32 bytes, cut on a character boundary (a cut inside one panics).
            let end = (0..=t.len().min(32))
                .rev()
                .find(|&i| t.is_char_boundary(i))
                .unwrap_or(0);
            let t = t[..end].to_owned();
            Ok(OwntracksMessage::Other(t))
        }
        _ => Err(err("_type", "required")),
    }
}

/// Copy the small scalar fields of `from` (but `skip`) into `into`, within the bounds.
fn scalars_into(from: &Map<String, Value>, into: &mut Map2, skip: &[&str]) {
    for (key, value) in from {
        let small = match value {
            Value::Bool(_) | Value::Number(_) => true,
            Value::String(s) => s.len() <= MAX_ATTRIBUTE_VALUE,
            _ => false,
        };
        if small
            && !skip.contains(&key.as_str())
            && key.len() <= MAX_ATTRIBUTE_KEY
            && into.len() < MAX_ATTRIBUTES
        {
            into.insert(key.clone(), value.clone());
        }
    }
}

type Map2 = std::collections::BTreeMap<String, Value>;

fn tst(value: &Value) -> Result<EpochMillis, OwntracksError> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| err("tst", "must be integer epoch seconds")),
        Value::String(s) => s
            .parse::<i64>()
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .or_else(|| parse_time_text(s))
            .ok_or_else(|| err("tst", "must be integer epoch seconds")),
        _ => Err(err("tst", "must be integer epoch seconds")),
    }
}

fn location(map: &Map<String, Value>) -> Result<OwntracksMessage, OwntracksError> {
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
    let time = match map.get("tst") {
        None | Some(Value::Null) => return Err(err("tst", "required")),
        Some(value) => tst(value)?,
    };
    let lat = num("lat")?.ok_or_else(|| err("lat", "required"))?;
    let lon = num("lon")?.ok_or_else(|| err("lon", "required"))?;
    let mut fix = Fix::new(time, lat, lon);
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
    let mut status = DeviceStatus::new(time);
    status.battery_pct = fix.battery_pct;
    status.charging = match map.get("bs").and_then(Value::as_i64) {
        Some(1) => Some(false),
        Some(2 | 3) => Some(true),
        _ => None,
    };
    let status = (status.battery_pct.is_some() || status.charging.is_some()).then_some(status);
    Ok(OwntracksMessage::Location(fix, status))
}

/// Why an encrypted payload could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// `data` is not base64, or too short to hold a nonce and a tag.
    #[error("`data` is not base64 of a 24-byte nonce and a secretbox")]
    Malformed,
    /// The tag does not verify: another secret, or a corrupted payload.
    #[error("the payload does not decrypt with this device's secret")]
    WrongKey,
}

/// The secretbox key OwnTracks derives from a secret string: its bytes in a zeroed 32-byte
/// buffer, cut at 32.
fn key(secret: &str) -> Key {
    let mut key = [0u8; KEY_BYTES];
    let bytes = secret.as_bytes();
    let n = bytes.len().min(KEY_BYTES);
    key[..n].copy_from_slice(&bytes[..n]);
    key.into()
}

/// Open an `_type=encrypted` payload with the device's `secret`: the plaintext message.
pub fn decrypt(data: &str, secret: &str) -> Result<Vec<u8>, DecryptError> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| DecryptError::Malformed)?;
    if raw.len() < NONCE_BYTES + 16 {
        return Err(DecryptError::Malformed);
    }
    let (nonce, sealed) = raw.split_at(NONCE_BYTES);
    XSalsa20Poly1305::new(&key(secret))
        .decrypt(Nonce::from_slice(nonce), sealed)
        .map_err(|_| DecryptError::WrongKey)
}

/// Seal `plaintext` as the app does (nonce, tag, ciphertext; base64), for tests and the load
/// generator. The caller picks the nonce: it must never repeat under one secret.
pub fn encrypt(plaintext: &[u8], secret: &str, nonce: [u8; NONCE_BYTES]) -> String {
    use base64::Engine as _;
    // Encrypting a byte slice with a valid key and nonce cannot fail.
    let sealed = XSalsa20Poly1305::new(&key(secret))
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    base64::engine::general_purpose::STANDARD.encode(out)
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
        let body = br#"{"_type":"location","tid":"ab","tst":1700000000,"lat":52.52,"lon":13.405,"acc":12,"alt":40,"vel":36,"cog":270,"batt":85,"bs":2,"vac":3,"t":"u","conn":"w","topic":"owntracks/user/phone","created_at":1700000001}"#;
        let OwntracksMessage::Location(f, status) = decode(body, 0).unwrap() else {
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
        assert_eq!(f.attributes["bs"], Value::from(2));
        let s = status.unwrap();
        assert_eq!(
            (s.time, s.battery_pct, s.charging),
            (1_700_000_000_000, Some(85.0), Some(true))
        );
    }

    #[test]
    fn status_transition_other_types_and_refusals() {
        let OwntracksMessage::Status(s) =
            decode(br#"{"_type":"transition","event":"enter","desc":"Home","tst":1700000000,"wtst":1600000000,"lat":1,"lon":2}"#, 9).unwrap()
        else {
            panic!("status expected")
        };
        assert_eq!(s.time, 1_700_000_000_000);
        assert_eq!(s.attributes["event"], Value::from("enter"));
        assert_eq!(s.attributes["_type"], Value::from("transition"));
        let OwntracksMessage::Status(s) = decode(
            br#"{"_type":"status","android":{"hib":1,"bo":1,"loc":0}}"#,
            9,
        )
        .unwrap() else {
            panic!("status expected")
        };
        assert_eq!((s.time, &s.attributes["bo"]), (9, &Value::from(1)));
        assert_eq!(
            decode(br#"{"_type":"waypoint","desc":"x"}"#, 0).unwrap(),
            OwntracksMessage::Other("waypoint".into())
        );
        assert_eq!(decode(br#"{"lat":1}"#, 0).unwrap_err().field, "_type");
        assert_eq!(
            decode(br#"{"_type":"location","lat":1,"lon":2}"#, 0)
                .unwrap_err()
                .field,
            "tst"
        );
        assert_eq!(
            decode(br#"{"_type":"location","tst":1,"lat":"x","lon":2}"#, 0)
                .unwrap_err()
                .field,
            "lat"
        );
        assert_eq!(
            decode(br#"{"_type":"encrypted"}"#, 0).unwrap_err().field,
            "data"
        );
        assert_eq!(decode(b"[]", 0).unwrap_err().field, "");
        assert_eq!(decode(b"{", 0).unwrap_err().field, "");
        let OwntracksMessage::Location(f, status) = decode(
            br#"{"_type":"location","tst":1,"lat":1,"lon":2,"vel":-1,"cog":-1}"#,
            0,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((f.speed_mps, f.heading_deg, status), (None, None, None));
    }

    #[test]
    fn encrypted_payloads_open_with_the_devices_secret_only() {
        let inner = br#"{"_type":"location","tst":1700000000,"lat":1.5,"lon":2.5}"#;
        let data = encrypt(inner, "s3cret", [7; NONCE_BYTES]);
        let body = serde_json::json!({"_type": "encrypted", "data": data}).to_string();
        let OwntracksMessage::Encrypted(data) = decode(body.as_bytes(), 0).unwrap() else {
            panic!("encrypted expected")
        };
        assert_eq!(decrypt(&data, "s3cret").unwrap(), inner);
        assert_eq!(decrypt(&data, "other"), Err(DecryptError::WrongKey));
        assert_eq!(
            decrypt("not base64!", "s3cret"),
            Err(DecryptError::Malformed)
        );
        assert_eq!(decrypt("AAAA", "s3cret"), Err(DecryptError::Malformed));
        // The key is the secret's bytes in a zeroed 32-byte buffer: a 40-byte secret and its
        // first 32 bytes are the same key.
        let long = "0123456789abcdef0123456789abcdefXXXXXXXX";
        let sealed = encrypt(inner, long, [1; NONCE_BYTES]);
        assert_eq!(decrypt(&sealed, &long[..32]).unwrap(), inner);
    }

    #[test]
    fn libsodium_vector() {
        // crypto_secretbox_easy("hello", nonce = 24 x 0x01, key = "key" + 29 zero bytes),
        // the OwnTracks key derivation of the secret "key"; computed with libsodium (PyNaCl).
        let data = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBR7ldTo+p1RtLDnzfiRNlqDAEOl89";
        let opened = decrypt(data, "key");
        assert_eq!(opened, Ok(b"hello".to_vec()));
    }

    #[test]
    fn encode_round_trips() {
        let mut fix = Fix::new(1_700_000_000_000, 1.5, 2.5);
        fix.speed_mps = Some(10.0);
        let OwntracksMessage::Location(f, _) = decode(&encode(&fix, "xy"), 0).unwrap() else {
            panic!()
        };
        assert!((f.speed_mps.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(f.attributes["tid"], Value::from("xy"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, 0);
            let _ = decrypt(&String::from_utf8_lossy(&bytes), "k");
        }
    }
}
