//! The platform's own JSON fix format, body of `POST /v1/fixes` (documented in `docs/ingest.md`):
//! one fix object, or an array of them. SI units; `time` is epoch milliseconds or ISO 8601. A
//! numeric `time` below 10^11 (epoch seconds) or from 10^14 up (epoch microseconds) is refused
//! per item with code `wrong_unit` ([`MIN_EPOCH_MILLIS`], [`MAX_EPOCH_MILLIS`]).
//!
//! ```json
//! {"time": "2024-05-01T10:00:00.250Z", "lat": 52.52, "lon": 13.405, "altitude": 34.5,
//!  "speed": 12.5, "heading": 270, "accuracy": 4, "battery": 88, "satellites": 9, "hdop": 0.9,
//!  "attributes": {"ignition": true}, "device": "uid-for-gateways"}
//! ```
//! Each item is decoded on its own: a bad item is reported by index and field while the good
//! ones go through.

use super::{parse_time_text, MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE};
use crate::fix::{EpochMillis, Fix};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One decoded item.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonItem {
    /// The `device` field (a device uid), which gateways use to name the device per item.
    pub device: Option<String>,
    /// The fix.
    pub fix: Fix,
}

/// Why one item of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemError {
    /// Position in the batch (0 for a single object).
    pub index: usize,
    /// The field at fault (`""` when the item itself is not an object).
    pub field: String,
    /// Machine-readable code: `missing`, `wrong_type`, `wrong_unit` (a numeric `time` that
    /// looks like epoch seconds or microseconds), `out_of_range`, `not_an_object`,
    /// `unknown_device` (set by ingest), `too_large`.
    pub code: &'static str,
    /// Human-readable reason.
    pub message: String,
}

/// Why the body as a whole was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON (including numbers beyond the f64 range, which serde_json refuses).
    #[error("malformed json: {0}")]
    Malformed(String),
    /// Neither an object nor an array.
    #[error("the body must be a fix object or an array of fix objects")]
    WrongShape,
    /// An empty array.
    #[error("empty batch")]
    Empty,
    /// More items than allowed.
    #[error("batch of {count} fixes exceeds the limit of {max}")]
    TooMany {
        /// Items sent.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// The outcome of decoding a body: good items with their index, and per-item errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// Items that decoded, with their index in the batch.
    pub items: Vec<(usize, JsonItem)>,
    /// Items that did not.
    pub errors: Vec<ItemError>,
}

impl Decoded {
    /// Items in the body.
    pub fn total(&self) -> usize {
        self.items.len() + self.errors.len()
    }
}

/// Decode a body of one fix or an array of at most `max_items` fixes.
///
/// The body is read in one pass into the known fields of each item ([`ItemFields`]); unknown
/// keys are skipped and no JSON tree is built per item, which is most of the cost of a batch.
pub fn decode(body: &[u8], max_items: usize) -> Result<Decoded, JsonError> {
    let raw: RawBody =
        serde_json::from_slice(body).map_err(|e| JsonError::Malformed(e.to_string()))?;
    let items = match raw {
        RawBody::Many(items) => items,
        RawBody::One(item) => vec![item],
        RawBody::Other => return Err(JsonError::WrongShape),
    };
    if items.is_empty() {
        return Err(JsonError::Empty);
    }
    if items.len() > max_items {
        return Err(JsonError::TooMany {
            count: items.len(),
            max: max_items,
        });
    }
    let mut decoded = Decoded {
        items: Vec::with_capacity(items.len()),
        errors: Vec::new(),
    };
    for (index, item) in items.into_iter().enumerate() {
        let result = match item {
            RawItem::Object(fields) => decode_fields(*fields),
            RawItem::NotObject => Err(field_error(
                "",
                "not_an_object",
                "each fix must be a JSON object",
            )),
        };
        match result {
            Ok(item) => decoded.items.push((index, item)),
            Err((field, code, message)) => decoded.errors.push(ItemError {
                index,
                field,
                code,
                message,
            }),
        }
    }
    Ok(decoded)
}

/// The known fields of one fix object, each as the JSON value it held (`None` when absent;
/// a repeated key keeps its last value, as a JSON object would).
#[derive(Debug, Default)]
struct ItemFields {
    time: Option<Value>,
    lat: Option<Value>,
    lon: Option<Value>,
    altitude: Option<Value>,
    speed: Option<Value>,
    heading: Option<Value>,
    accuracy: Option<Value>,
    battery: Option<Value>,
    hdop: Option<Value>,
    satellites: Option<Value>,
    attributes: Option<Value>,
    device: Option<Value>,
}

impl ItemFields {
    /// Where a field's value goes; `None` for a key the format does not have.
    fn slot(&mut self, field: Field) -> Option<&mut Option<Value>> {
        Some(match field {
            Field::Time => &mut self.time,
            Field::Lat => &mut self.lat,
            Field::Lon => &mut self.lon,
            Field::Altitude => &mut self.altitude,
            Field::Speed => &mut self.speed,
            Field::Heading => &mut self.heading,
            Field::Accuracy => &mut self.accuracy,
            Field::Battery => &mut self.battery,
            Field::Hdop => &mut self.hdop,
            Field::Satellites => &mut self.satellites,
            Field::Attributes => &mut self.attributes,
            Field::Device => &mut self.device,
            Field::Other => return None,
        })
    }
}

/// The body: one object, an array of items, or anything else (refused as a whole).
enum RawBody {
    One(RawItem),
    Many(Vec<RawItem>),
    Other,
}

/// One array item: a fix object's known fields, or something that is not an object.
enum RawItem {
    Object(Box<ItemFields>),
    NotObject,
}

impl<'de> serde::Deserialize<'de> for RawBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BodyVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for RawItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

/// A key of a fix object: one of the format's fields, or any other (skipped). Escaped keys
/// (`"l\u0061t"`) match like plain ones.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Time,
    Lat,
    Lon,
    Altitude,
    Speed,
    Heading,
    Accuracy,
    Battery,
    Hdop,
    Satellites,
    Attributes,
    Device,
    #[serde(other)]
    Other,
}

struct ItemVisitor;

/// The visitor methods for every JSON value that is neither an object nor an array: each
/// answers `$value` (the value itself is not needed).
macro_rules! scalars_answer {
    ($out:ty, $value:expr) => {
        fn visit_unit<E: serde::de::Error>(self) -> Result<$out, E> {
            Ok($value)
        }
        scalars_answer!(@each $out, $value; visit_bool: bool, visit_i64: i64, visit_u64: u64,
            visit_f64: f64, visit_str: &str);
    };
    (@each $out:ty, $value:expr; $($method:ident: $ty:ty),*) => {
        $(fn $method<E: serde::de::Error>(self, _: $ty) -> Result<$out, E> {
            Ok($value)
        })*
    };
}

impl<'de> serde::de::Visitor<'de> for ItemVisitor {
    type Value = RawItem;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a fix object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawItem, A::Error> {
        let mut fields = Box::<ItemFields>::default();
        while let Some(field) = map.next_key::<Field>()? {
            match fields.slot(field) {
                Some(slot) => *slot = Some(map.next_value()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(RawItem::Object(fields))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawItem, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(RawItem::NotObject)
    }

    scalars_answer!(RawItem, RawItem::NotObject);
}

struct BodyVisitor;

impl<'de> serde::de::Visitor<'de> for BodyVisitor {
    type Value = RawBody;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a fix object or an array of fix objects")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawBody, A::Error> {
        ItemVisitor.visit_map(map).map(RawBody::One)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawBody, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawBody::Many(items))
    }

    scalars_answer!(RawBody, RawBody::Other);
}

type FieldError = (String, &'static str, String);

fn field_error(field: &str, code: &'static str, message: impl Into<String>) -> FieldError {
    (field.to_owned(), code, message.into())
}

/// Decode the known fields of one fix object.
fn decode_fields(f: ItemFields) -> Result<JsonItem, FieldError> {
    let fix_time = time_field(f.time.as_ref())?;
    let lat = required_number(f.lat.as_ref(), "lat")?;
    let lon = required_number(f.lon.as_ref(), "lon")?;
    let mut fix = Fix::new(fix_time, lat, lon);
    fix.altitude_m = optional_number(f.altitude.as_ref(), "altitude")?;
    fix.speed_mps = optional_number(f.speed.as_ref(), "speed")?;
    fix.heading_deg = optional_number(f.heading.as_ref(), "heading")?;
    fix.accuracy_m = optional_number(f.accuracy.as_ref(), "accuracy")?;
    fix.battery_pct = optional_number(f.battery.as_ref(), "battery")?;
    fix.hdop = optional_number(f.hdop.as_ref(), "hdop")?;
    fix.satellites = match f.satellites {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_u64().and_then(|n| u16::try_from(n).ok()).ok_or_else(
            || field_error("satellites", "out_of_range", "must be an integer 0..=65535"),
        )?),
        Some(_) => {
            return Err(field_error(
                "satellites",
                "wrong_type",
                "must be an integer",
            ))
        }
    };
    fix.attributes = match f.attributes {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(attrs)) => attributes(attrs)?,
        Some(_) => return Err(field_error("attributes", "wrong_type", "must be an object")),
    };
    let device = match f.device {
        None | Some(Value::Null) => None,
        Some(Value::String(uid)) if !uid.is_empty() && uid.len() <= 128 => Some(uid),
        Some(_) => {
            return Err(field_error(
                "device",
                "wrong_type",
                "must be a device uid string of 1..=128 bytes",
            ))
        }
    };
    Ok(JsonItem { device, fix })
}

/// Smallest numeric `time` read as epoch milliseconds: 10^11 ms is 1973-03-03, while 10^11
/// *seconds* is the year 5138, so every plausible time in seconds is below it (today's are
/// about 1.7 x 10^9) and every plausible time in ms is above it (about 1.7 x 10^12).
pub const MIN_EPOCH_MILLIS: f64 = 1e11;
/// Largest numeric `time` read as epoch milliseconds (exclusive): 10^14 ms is the year 5138,
/// while today's times in microseconds are about 1.7 x 10^15.
pub const MAX_EPOCH_MILLIS: f64 = 1e14;

fn time_field(value: Option<&Value>) -> Result<EpochMillis, FieldError> {
    match value {
        None | Some(Value::Null) => Err(field_error("time", "missing", "required")),
        Some(Value::Number(n)) => {
            // A unit mistake is refused here, naming it, rather than accepted and quarantined
            // later as "too old" where the sender never learns of it.
            let magnitude = n.as_f64().map(f64::abs).unwrap_or(f64::INFINITY);
            if magnitude < MIN_EPOCH_MILLIS {
                return Err(field_error(
                    "time",
                    "wrong_unit",
                    "looks like epoch seconds: `time` is epoch milliseconds (or an ISO 8601 string)",
                ));
            }
            if magnitude >= MAX_EPOCH_MILLIS {
                return Err(field_error(
                    "time",
                    "wrong_unit",
                    "looks like epoch microseconds or nanoseconds: `time` is epoch milliseconds (or an ISO 8601 string)",
                ));
            }
            n.as_i64()
                .or_else(|| n.as_f64().filter(|v| v.fract() == 0.0).map(|v| v as i64))
                .ok_or_else(|| {
                    field_error(
                        "time",
                        "out_of_range",
                        "must be integer epoch milliseconds or an ISO 8601 string",
                    )
                })
        }
        Some(Value::String(s)) => parse_time_text(s)
            .ok_or_else(|| field_error("time", "wrong_type", "not an ISO 8601 timestamp")),
        Some(_) => Err(field_error(
            "time",
            "wrong_type",
            "must be epoch milliseconds or an ISO 8601 string",
        )),
    }
}

fn number(field: &str, value: &Value) -> Result<f64, FieldError> {
    match value {
        // serde_json has no NaN or infinite numbers; `"NaN"` strings land in the next arm.
        Value::Number(n) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| field_error(field, "out_of_range", "must be a finite number")),
        _ => Err(field_error(field, "wrong_type", "must be a number")),
    }
}

fn required_number(value: Option<&Value>, field: &str) -> Result<f64, FieldError> {
    match value {
        None | Some(Value::Null) => Err(field_error(field, "missing", "required")),
        Some(value) => number(field, value),
    }
}

fn optional_number(value: Option<&Value>, field: &str) -> Result<Option<f64>, FieldError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => number(field, value).map(Some),
    }
}

fn attributes(attrs: Map<String, Value>) -> Result<BTreeMap<String, Value>, FieldError> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(field_error(
            "attributes",
            "too_large",
            format!("at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    let mut out = BTreeMap::new();
    for (key, value) in attrs {
        let small = match &value {
            Value::Null | Value::Bool(_) | Value::Number(_) => true,
            Value::String(s) => s.len() <= MAX_ATTRIBUTE_VALUE,
            Value::Array(_) | Value::Object(_) => false,
        };
        if key.len() > MAX_ATTRIBUTE_KEY || !small {
            return Err(field_error(
                &format!("attributes.{}", truncate(&key, MAX_ATTRIBUTE_KEY)),
                "too_large",
                format!(
                    "keys up to {MAX_ATTRIBUTE_KEY} bytes; values are scalars, strings up to {MAX_ATTRIBUTE_VALUE} bytes"
                ),
            ));
        }
        out.insert(key, value);
    }
    Ok(out)
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Encode fixes as a body (one object for one fix, an array otherwise), as a device would.
pub fn encode(fixes: &[Fix], device: Option<&str>) -> Vec<u8> {
    let item = |fix| EncodedItem { fix, device };
    let written = match fixes {
        [one] => serde_json::to_vec(&item(one)),
        many => serde_json::to_vec(&many.iter().map(item).collect::<Vec<_>>()),
    };
    written.unwrap_or_default()
}

/// One fix as a device writes it, serialized field by field (no JSON tree per fix).
struct EncodedItem<'a> {
    fix: &'a Fix,
    device: Option<&'a str>,
}

impl Serialize for EncodedItem<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let fix = self.fix;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("time", &fix.fix_time)?;
        m.serialize_entry("lat", &fix.lat)?;
        m.serialize_entry("lon", &fix.lon)?;
        for (k, v) in [
            ("altitude", fix.altitude_m),
            ("speed", fix.speed_mps),
            ("heading", fix.heading_deg),
            ("accuracy", fix.accuracy_m),
            ("battery", fix.battery_pct),
            ("hdop", fix.hdop),
        ] {
            if let Some(v) = v {
                m.serialize_entry(k, &v)?;
            }
        }
        if let Some(n) = fix.satellites {
            m.serialize_entry("satellites", &n)?;
        }
        if !fix.attributes.is_empty() {
            m.serialize_entry("attributes", &fix.attributes)?;
        }
        if let Some(d) = self.device {
            m.serialize_entry("device", d)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn single_object_with_every_field() {
        let body = br#"{"time":"2024-05-01T10:00:00.250Z","lat":52.52,"lon":13.405,"altitude":34.5,
            "speed":12.5,"heading":270,"accuracy":4,"battery":88,"satellites":9,"hdop":0.9,
            "attributes":{"ignition":true},"device":"gw-1","unknown":"ignored"}"#;
        let d = decode(body, 10).unwrap();
        assert!(d.errors.is_empty());
        let (index, item) = &d.items[0];
        assert_eq!(*index, 0);
        assert_eq!(item.device.as_deref(), Some("gw-1"));
        let f = &item.fix;
        assert_eq!(f.fix_time, 1_714_557_600_250);
        assert_eq!((f.lat, f.lon), (52.52, 13.405));
        assert_eq!(f.altitude_m, Some(34.5));
        assert_eq!(f.speed_mps, Some(12.5));
        assert_eq!(f.heading_deg, Some(270.0));
        assert_eq!(f.accuracy_m, Some(4.0));
        assert_eq!(f.battery_pct, Some(88.0));
        assert_eq!(f.satellites, Some(9));
        assert_eq!(f.hdop, Some(0.9));
        assert_eq!(f.attributes["ignition"], Value::Bool(true));
    }

    /// Each refused item as (index, field, code).
    fn refusals(d: &Decoded) -> Vec<(usize, &str, &str)> {
        d.errors
            .iter()
            .map(|e| (e.index, e.field.as_str(), e.code))
            .collect()
    }

    #[test]
    fn batch_reports_bad_items_by_index_and_field() {
        let body = br#"[{"time":1700000000000,"lat":1,"lon":2},
            {"time":1700000000000,"lat":"NaN","lon":2},
            {"time":1700000000000,"lon":2},
            {"time":1700000000000.5,"lat":1,"lon":2},
            {"time":1700000000000,"lat":1,"lon":2,"satellites":70000},
            {"time":"soon","lat":1,"lon":2},
            7,
            {"time":1e300,"lat":1,"lon":2},
            {"time":1700000000001,"lat":1e300,"lon":2,"speed":null}]"#;
        let d = decode(body, 100).unwrap();
        assert_eq!(
            refusals(&d),
            vec![
                (1, "lat", "wrong_type"),
                (2, "lat", "missing"),
                (3, "time", "out_of_range"),
                (4, "satellites", "out_of_range"),
                (5, "time", "wrong_type"),
                (6, "", "not_an_object"),
                (7, "time", "wrong_unit"),
            ]
        );
        assert_eq!(d.items.len(), 2);
        assert_eq!(
            d.items[1].0, 8,
            "finite but implausible values are the processor's call"
        );
        assert_eq!(d.total(), 9);
    }

    #[test]
    fn keys_are_read_as_a_json_object_would_be() {
        // Escaped keys, a repeated key (the last wins), unknown keys of any shape skipped, and
        // items that are not objects, nested or not.
        let body =
            br#"[{"l\u0061t":1,"lon":2,"time":1700000000000,"lon":3,"extra":{"lat":[9,{"x":null}]},"more":[1]},
            [{"time":1,"lat":1,"lon":2}], null, true, "s", 1.5]"#;
        let d = decode(body, 10).unwrap();
        assert_eq!(d.items.len(), 1);
        let fix = &d.items[0].1.fix;
        assert_eq!(
            (fix.lat, fix.lon, fix.fix_time),
            (1.0, 3.0, 1_700_000_000_000)
        );
        let not_objects: Vec<usize> = d.errors.iter().map(|e| e.index).collect();
        assert_eq!(not_objects, vec![1, 2, 3, 4, 5]);
        assert!(d.errors.iter().all(|e| e.code == "not_an_object"));
        assert_eq!(decode(b"null", 10), Err(JsonError::WrongShape));
        assert_eq!(decode(b"12", 10), Err(JsonError::WrongShape));
        assert!(matches!(
            decode(br#"[{"time":1700000000000,"lat":1,"lon":2}] trailing"#, 10),
            Err(JsonError::Malformed(_))
        ));
    }

    #[test]
    fn whole_body_errors() {
        assert!(matches!(decode(b"{", 10), Err(JsonError::Malformed(_))));
        assert!(matches!(decode(b"", 10), Err(JsonError::Malformed(_))));
        assert!(matches!(
            decode(br#"{"time":1,"lat":1e999,"lon":2}"#, 10),
            Err(JsonError::Malformed(_))
        ));
        assert!(matches!(
            decode(br#"{"time":1,"lat":NaN,"lon":2}"#, 10),
            Err(JsonError::Malformed(_))
        ));
        assert_eq!(decode(b"[]", 10), Err(JsonError::Empty));
        assert_eq!(decode(b"\"x\"", 10), Err(JsonError::WrongShape));
        assert_eq!(
            decode(br#"[{},{},{}]"#, 2),
            Err(JsonError::TooMany { count: 3, max: 2 })
        );
    }

    #[test]
    fn attributes_are_bounded() {
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), Value::from(i))).collect();
        let body =
            serde_json::json!({"time":1_700_000_000_000_i64,"lat":1,"lon":2,"attributes":many});
        let d = decode(body.to_string().as_bytes(), 1).unwrap();
        assert_eq!(d.errors[0].field, "attributes");
        let body = serde_json::json!({"time":1_700_000_000_000_i64,"lat":1,"lon":2,"attributes":{"nested":{"a":1}}});
        let d = decode(body.to_string().as_bytes(), 1).unwrap();
        assert_eq!(d.errors[0].field, "attributes.nested");
    }

    #[test]
    fn times_in_the_wrong_unit_name_the_unit() {
        let body = br#"[{"time":1700000000,"lat":1,"lon":2},
            {"time":1700000000.25,"lat":1,"lon":2},
            {"time":1700000000000000,"lat":1,"lon":2},
            {"time":-5,"lat":1,"lon":2},
            {"time":100000000000,"lat":1,"lon":2},
            {"time":99999999999999,"lat":1,"lon":2}]"#;
        let d = decode(body, 10).unwrap();
        assert_eq!(
            refusals(&d),
            vec![
                (0, "time", "wrong_unit"),
                (1, "time", "wrong_unit"),
                (2, "time", "wrong_unit"),
                (3, "time", "wrong_unit"),
            ]
        );
        assert!(d.errors[0].message.contains("looks like epoch seconds"));
        assert!(d.errors[2].message.contains("microseconds"));
        let kept: Vec<i64> = d.items.iter().map(|(_, i)| i.fix.fix_time).collect();
        assert_eq!(
            kept,
            vec![100_000_000_000, 99_999_999_999_999],
            "the edges are ms"
        );
    }

    #[test]
    fn encode_round_trips() {
        let mut fix = Fix::new(1_700_000_000_123, 1.5, -2.25);
        fix.speed_mps = Some(3.0);
        fix.satellites = Some(7);
        fix.attributes.insert("tid".into(), "ab".into());
        let d = decode(&encode(&[fix.clone(), fix.clone()], Some("gw")), 10).unwrap();
        assert_eq!(d.items.len(), 2);
        assert_eq!(d.items[0].1.fix, fix);
        assert_eq!(d.items[0].1.device.as_deref(), Some("gw"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 10);
        }

        #[test]
        fn arbitrary_json_items_never_panic(
            time in prop_oneof![any::<i64>().prop_map(Value::from), any::<f64>().prop_map(|f| serde_json::json!(f)), ".*".prop_map(Value::from)],
            lat in any::<f64>(), sat in any::<i64>()
        ) {
            let body = serde_json::json!([{"time": time, "lat": lat, "lon": 0, "satellites": sat}]);
            let _ = decode(body.to_string().as_bytes(), 10);
        }

        #[test]
        fn finite_fixes_round_trip(t in 100_000_000_000i64..100_000_000_000_000, lat in -1e6f64..1e6, lon in -1e6f64..1e6) {
            let fix = Fix::new(t, lat, lon);
            let d = decode(&encode(std::slice::from_ref(&fix), None), 1).unwrap();
            let got = &d.items[0].1.fix;
            // serde_json's default float parser may be one ulp off; that is far below GPS noise.
            prop_assert_eq!(got.fix_time, t);
            prop_assert!((got.lat - lat).abs() <= lat.abs() * 1e-15);
            prop_assert!((got.lon - lon).abs() <= lon.abs() * 1e-15);
        }
    }
}
