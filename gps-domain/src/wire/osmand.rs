//! The OsmAnd protocol as Traccar's `OsmAndProtocolDecoder` reads it: what Traccar Client (every
//! generation), the OsmAnd app, GPSLogger and many small trackers send. `docs/devices.md` has
//! the per-app table.
//!
//! - Query string or form body: `id`/`deviceid` (device uid), `lat`, `lon` (or
//!   `location=lat,lon`), `timestamp`
//!   (epoch seconds below 2^31 - 1, else epoch ms, ISO 8601 or `yyyy-MM-dd HH:mm:ss` UTC;
//!   receive time when absent), `speed` **in the device's configured unit** (Traccar Client:
//!   knots, the default; the OsmAnd app and GPSLogger: m/s; applied by
//!   [`OsmandReport::into_parts`] once the device is known), `bearing`/`heading` (deg),
//!   `altitude` (m), `accuracy` (m), `hdop`, `sat` (satellites), `batt` (%), `charge`, `alarm`,
//!   `motion`, `valid` (`true`/`1`, anything else is an invalid fix, as in Traccar), `cell` and
//!   `wifi` (repeatable, kept as status attributes); any other parameter becomes an attribute
//!   (number, boolean or string). An empty value is an absent one (GPSLogger's `%HDOP` without
//!   NMEA).
//! - The OsmAnd app's `hdop={3}`: its `{3}` is the location's accuracy in metres, not an HDOP
//!   (OsmAnd `LiveMonitoringHelper`), and its `{2}` is always epoch milliseconds, which neither
//!   Traccar Client nor GPSLogger send. So `hdop` is read as `accuracy` (m) when the report has
//!   no `accuracy` and its `timestamp` is epoch milliseconds; otherwise it is an HDOP.
//! - Reports without a position (no `lat`/`lon`, or exactly `0,0`, which Traccar also reads as
//!   "no position"): Traccar Client 10's heartbeats (`id, timestamp, batt, charge`), cell/Wi-Fi
//!   only reports and the push-token post (`id, notificationToken`) carry no fix, only a
//!   [`DeviceStatus`]. A report with a position that also carries `batt`, `charge`, `alarm` or
//!   `motion` yields the fix and a status.
//! - JSON bodies: the background-geolocation shape of Traccar Client 9
//!   (`{"location":{"timestamp":ISO,"coords":{"latitude","longitude","accuracy","speed" (m/s),
//!   "heading","altitude"},"battery":{"level" (0..1),"is_charging"},"is_moving","odometer",
//!   "event","activity":{"type"},"mock","extras"},"device_id":uid}`; `location` may be an
//!   array), and Traccar Client 10's JSON upload (an array, or one object, of flat objects
//!   with the same keys as the query string: `id`, `lat`, `lon`, `timestamp`, `speed` (knots),
//!   `batt`, `charge`, `alarm`, …).

use super::{
    parse_finite, parse_time_text, MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE,
};
use crate::fix::units::SpeedUnit;
use crate::fix::{units, EpochMillis, Fix};
use crate::status::DeviceStatus;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Most `cell` or `wifi` entries kept from one report.
pub const MAX_NETWORK_ENTRIES: usize = 16;
/// Most items of one Traccar Client JSON body.
pub const MAX_JSON_ITEMS: usize = 1000;

/// A decoded report: the device as the report named it, its fixes and its status.
#[derive(Debug, Clone, PartialEq)]
pub struct OsmandReport {
    /// The device uid (`id`, `deviceid` or `device_id`).
    pub uid: String,
    /// The fixes, in the order sent (none for a report without a position).
    pub fixes: Vec<OsmandFix>,
    /// The newest status the report carried (always set when there is no fix).
    pub status: Option<DeviceStatus>,
}

/// A fix as decoded, its `speed` still in the unit the sender used.
#[derive(Debug, Clone, PartialEq)]
pub struct OsmandFix {
    /// The fix; `speed_mps` is set only where the format itself says m/s (the geolocation
    /// JSON body).
    pub fix: Fix,
    /// `speed` as sent, in the device's unit (query, form and Traccar Client 10 JSON).
    pub speed: Option<f64>,
}

impl OsmandReport {
    /// The fixes with their speed in m/s, reading a sent `speed` in `unit` (the device's
    /// effective unit), and the status.
    pub fn into_parts(self, unit: SpeedUnit) -> (Vec<Fix>, Option<DeviceStatus>) {
        let fixes = self
            .fixes
            .into_iter()
            .map(|OsmandFix { mut fix, speed }| {
                if let Some(speed) = speed {
                    fix.speed_mps = Some(unit.to_mps(speed));
                }
                fix
            })
            .collect();
        (fixes, self.status)
    }
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
    parse_timestamp_form(value).map(|(t, _)| t)
}

/// [`parse_timestamp`], and whether the value was epoch milliseconds.
fn parse_timestamp_form(value: &str) -> Option<(EpochMillis, bool)> {
    let value = value.trim();
    if let Ok(n) = value.parse::<i64>() {
        return if n < i64::from(i32::MAX) {
            n.checked_mul(1000).map(|t| (t, false))
        } else {
            Some((n, true))
        };
    }
    parse_time_text(value).map(|t| (t, false))
}

/// One report item (a query string, a form body or one flat JSON object) as decoded.
#[derive(Debug, Default)]
struct Item {
    uid: Option<String>,
    fix: Option<OsmandFix>,
    status: Option<DeviceStatus>,
}

/// Whether a parameter value means "yes" (Traccar: `true` or `1`).
fn truthy(value: &str) -> bool {
    value.eq_ignore_ascii_case("true") || value == "1"
}

/// Decode one item's parameters (repeated keys allowed: `cell`, `wifi`).
fn decode_item<'a>(
    pairs: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
    now: EpochMillis,
) -> Result<Item, OsmandError> {
    let mut item = Item::default();
    let mut fix_time = None;
    let mut millis = false;
    let (mut lat, mut lon) = (None, None);
    let mut speed = None;
    let mut fix = Fix::new(0, 0.0, 0.0);
    let mut status = DeviceStatus::new(0);
    // A status travels when the report has no position, or says something about the device.
    let mut status_worthy = false;
    let mut network: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    let number = |key: &str, value: &str| -> Result<Option<f64>, OsmandError> {
        if value.trim().is_empty() {
            return Ok(None);
        }
        parse_finite(value)
            .map(Some)
            .ok_or_else(|| err(key, "must be a finite number"))
    };
    for (key, value) in pairs {
        let (key, value) = (key.as_ref(), value.as_ref());
        match key {
            "id" | "deviceid" | "device_id" => {
                if value.is_empty() || value.len() > 128 {
                    return Err(err(key, "must be a device uid of 1..=128 bytes"));
                }
                item.uid = Some(value.to_owned());
            }
            // The device's ingest token: a credential, read by ingest, never an attribute.
            "token" => {}
            "timestamp" => {
                if !value.trim().is_empty() {
                    let (t, ms) = parse_timestamp_form(value)
                        .ok_or_else(|| err(key, "not epoch seconds/ms or a date"))?;
                    fix_time = Some(t);
                    millis = ms;
                }
            }
            "lat" => lat = number(key, value)?,
            "lon" => lon = number(key, value)?,
            "location" => {
                let (a, b) = value
                    .split_once(',')
                    .ok_or_else(|| err(key, "must be `lat,lon`"))?;
                lat = number(key, a)?;
                lon = number(key, b)?;
            }
            "speed" => speed = number(key, value)?,
            "bearing" | "heading" => fix.heading_deg = number(key, value)?,
            "altitude" => fix.altitude_m = number(key, value)?,
            "accuracy" => fix.accuracy_m = number(key, value)?,
            "hdop" => fix.hdop = number(key, value)?,
            "batt" => {
                fix.battery_pct = number(key, value)?;
                status.battery_pct = fix.battery_pct;
                status_worthy |= fix.battery_pct.is_some();
            }
            "valid" => fix.valid = truthy(value),
            "sat" => match value.trim().parse::<u16>() {
                Ok(n) => fix.satellites = Some(n),
                Err(_) => attribute(&mut fix.attributes, key, value),
            },
            "cell" | "wifi" => {
                let list = network
                    .entry(if key == "cell" { "cell" } else { "wifi" })
                    .or_default();
                if list.len() < MAX_NETWORK_ENTRIES {
                    list.push(Value::from(truncated(value)));
                }
                status_worthy = true;
            }
            "notificationToken" => {
                status
                    .attributes
                    .insert(key.into(), truncated(value).into());
                status_worthy = true;
            }
            _ => {
                match key {
                    "charge" => status.charging = Some(truthy(value)),
                    "motion" => status.motion = Some(truthy(value)),
                    "alarm" if !value.is_empty() => status.alarm = Some(truncated(value).into()),
                    _ => {}
                }
                status_worthy |= matches!(key, "charge" | "motion" | "alarm");
                attribute(&mut fix.attributes, key, value);
            }
        }
    }
    let fix_time = fix_time.unwrap_or(now);
    status.time = fix_time;
    // The OsmAnd app's `hdop={3}` is its accuracy in metres (see the module docs).
    if millis && fix.accuracy_m.is_none() {
        fix.accuracy_m = fix.hdop.take();
    }
    let position = match (lat, lon) {
        (Some(lat), Some(lon)) if lat != 0.0 || lon != 0.0 => Some((lat, lon)),
        (Some(_), Some(_)) | (None, None) => None,
        (Some(_), None) => return Err(err("lon", "required with lat")),
        (None, Some(_)) => return Err(err("lat", "required with lon")),
    };
    match position {
        Some((lat, lon)) => {
            fix.fix_time = fix_time;
            fix.lat = lat;
            fix.lon = lon;
            item.fix = Some(OsmandFix { fix, speed });
        }
        None => {
            // No position: what the report said about the device is its status.
            status_worthy = true;
            for (key, value) in fix.attributes {
                if status.attributes.len() < MAX_ATTRIBUTES {
                    status.attributes.entry(key).or_insert(value);
                }
            }
        }
    }
    for (key, list) in network {
        status.attributes.insert(key.into(), Value::Array(list));
    }
    item.status = status_worthy.then_some(status);
    Ok(item)
}

fn truncated(value: &str) -> &str {
    let mut end = value.len().min(MAX_ATTRIBUTE_VALUE);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// Keep `key=value` as an attribute, within the bounds.
fn attribute(attributes: &mut BTreeMap<String, Value>, key: &str, value: &str) {
    if attributes.len() < MAX_ATTRIBUTES && !key.is_empty() && key.len() <= MAX_ATTRIBUTE_KEY {
        attributes.insert(key.to_owned(), attribute_value(value));
    }
}

fn attribute_value(value: &str) -> Value {
    if let Some(n) = parse_finite(value) {
        return Value::from(n);
    }
    match value {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::from(truncated(value)),
    }
}

/// Gather items into one report: one device, the fixes in order, the newest status.
fn report(items: Vec<Item>, uid_field: &str) -> Result<OsmandReport, OsmandError> {
    let mut uid: Option<String> = None;
    let mut fixes = Vec::new();
    let mut status: Option<DeviceStatus> = None;
    for (index, item) in items.into_iter().enumerate() {
        match (&uid, item.uid) {
            (_, None) => {}
            (None, Some(found)) => uid = Some(found),
            (Some(first), Some(found)) if *first != found => {
                return Err(err(
                    &format!("{index}.id"),
                    "every item must name the same device",
                ))
            }
            (Some(_), Some(_)) => {}
        }
        fixes.extend(item.fix);
        if let Some(s) = item.status {
            if status.as_ref().is_none_or(|newest| s.time >= newest.time) {
                status = Some(s);
            }
        }
    }
    Ok(OsmandReport {
        uid: uid.ok_or_else(|| err(uid_field, "required"))?,
        fixes,
        status,
    })
}

/// Decode a query string or an `application/x-www-form-urlencoded` body. `now` fills a missing
/// timestamp, as Traccar does.
pub fn decode_params(encoded: &[u8], now: EpochMillis) -> Result<OsmandReport, OsmandError> {
    let pairs = form_urlencoded_pairs(encoded)?;
    let item = decode_item(
        pairs
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))),
        now,
    )?;
    report(vec![item], "id")
}

fn form_urlencoded_pairs(encoded: &[u8]) -> Result<Vec<(String, String)>, OsmandError> {
    serde_urlencoded::from_bytes(encoded).map_err(|e| err("", format!("malformed parameters: {e}")))
}

/// Decode a JSON body: the background-geolocation shape (a root object with `location`) or
/// Traccar Client 10's flat items (an array of objects, or one object without `location`).
pub fn decode_json(body: &[u8], now: EpochMillis) -> Result<OsmandReport, OsmandError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| err("", format!("malformed json: {e}")))?;
    match &root {
        Value::Object(map) if map.contains_key("location") => decode_geolocation(&root),
        Value::Object(map) => report(vec![flat_item(map, "", now)?], "id"),
        Value::Array(list) if !list.is_empty() && list.len() <= MAX_JSON_ITEMS => {
            let items = list
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(map) => flat_item(map, &format!("{i}."), now),
                    _ => Err(err(&i.to_string(), "must be an object")),
                })
                .collect::<Result<_, _>>()?;
            report(items, "0.id")
        }
        Value::Array(_) => Err(err("", format!("must hold 1..={MAX_JSON_ITEMS} items"))),
        _ => Err(err("", "must be an object or an array of objects")),
    }
}

/// One flat JSON object read as the query-string parameters it mirrors.
fn flat_item(
    map: &serde_json::Map<String, Value>,
    prefix: &str,
    now: EpochMillis,
) -> Result<Item, OsmandError> {
    let pairs = map
        .iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null | Value::Array(_) | Value::Object(_) => return None,
            };
            Some((Cow::Borrowed(k.as_str()), Cow::Owned(text)))
        })
        .collect::<Vec<_>>();
    decode_item(pairs, now).map_err(|mut e| {
        e.field.insert_str(0, prefix);
        e
    })
}

/// The background-geolocation body of Traccar Client 9.
fn decode_geolocation(root: &Value) -> Result<OsmandReport, OsmandError> {
    let uid = match root.get("device_id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => return Err(err("device_id", "required")),
        Some(_) => return Err(err("device_id", "must be a device uid string")),
    };
    let mut items: Vec<Item> = match root.get("location") {
        Some(location @ Value::Object(_)) => vec![json_location(location, "location")?],
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= MAX_JSON_ITEMS => list
            .iter()
            .enumerate()
            .map(|(i, l)| json_location(l, &format!("location.{i}")))
            .collect::<Result<_, _>>()?,
        None | Some(Value::Null) => return Err(err("location", "required")),
        Some(_) => return Err(err("location", "must be an object or 1..=1000 objects")),
    };
    // The items name no device: the body does, once.
    if let Some(first) = items.first_mut() {
        first.uid = Some(uid);
    }
    report(items, "device_id")
}

fn json_location(location: &Value, path: &str) -> Result<Item, OsmandError> {
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
    let mut status = DeviceStatus::new(timestamp);
    // The geolocation library reports -1 for an unknown speed, heading or battery level.
    fix.speed_mps = num("speed")?.filter(|v| *v >= 0.0);
    fix.heading_deg = num("heading")?.filter(|v| *v >= 0.0);
    fix.accuracy_m = num("accuracy")?.filter(|v| *v >= 0.0);
    fix.altitude_m = num("altitude")?;
    if let Some(battery) = location.get("battery") {
        if let Some(level) = battery.get("level").and_then(Value::as_f64) {
            if (0.0..=1.0).contains(&level) {
                fix.battery_pct = Some((level * 100.0 * 1000.0).round() / 1000.0);
                status.battery_pct = fix.battery_pct;
            }
        }
        if let Some(charging) = battery.get("is_charging").and_then(Value::as_bool) {
            fix.attributes.insert("charge".into(), charging.into());
            status.charging = Some(charging);
        }
    }
    if let Some(moving) = location.get("is_moving").and_then(Value::as_bool) {
        fix.attributes.insert("motion".into(), moving.into());
        status.motion = Some(moving);
    }
    if let Some(odometer) = location.get("odometer").and_then(Value::as_f64) {
        fix.attributes.insert("odometer".into(), odometer.into());
    }
    for key in ["event", "alarm"] {
        if let Some(value) = location.get(key).and_then(Value::as_str) {
            fix.attributes.insert(key.into(), attribute_value(value));
        }
    }
    if let Some(alarm) = location.get("alarm").and_then(Value::as_str) {
        status.alarm = Some(truncated(alarm).into());
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
    // `extras` carries what the app added (`heartbeat`, `remote`): small scalars only.
    if let Some(Value::Object(extras)) = location.get("extras") {
        for (key, value) in extras {
            let small = match value {
                Value::Bool(_) | Value::Number(_) => true,
                Value::String(s) => s.len() <= MAX_ATTRIBUTE_VALUE,
                _ => false,
            };
            if small && fix.attributes.len() < MAX_ATTRIBUTES && key.len() <= MAX_ATTRIBUTE_KEY {
                fix.attributes.entry(key.clone()).or_insert(value.clone());
            }
        }
    }
    let status_worthy = status.battery_pct.is_some()
        || status.charging.is_some()
        || status.motion.is_some()
        || status.alarm.is_some();
    Ok(Item {
        uid: None,
        fix: Some(OsmandFix { fix, speed: None }),
        status: status_worthy.then_some(status),
    })
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

    fn knots(report: OsmandReport) -> (Vec<Fix>, Option<DeviceStatus>) {
        report.into_parts(SpeedUnit::Knots)
    }

    #[test]
    fn traccar_client_query() {
        let q = b"id=123456&timestamp=1700000000&lat=52.52&lon=13.405&speed=10&bearing=90.5&altitude=34&accuracy=5&batt=77.5&charge=true&hdop=0.8&valid=1&driverUniqueId=abc";
        let r = decode_params(q, 0).unwrap();
        assert_eq!(r.uid, "123456");
        let (fixes, status) = knots(r);
        let f = &fixes[0];
        assert_eq!(f.fix_time, 1_700_000_000_000);
        assert_eq!((f.lat, f.lon), (52.52, 13.405));
        assert!((f.speed_mps.unwrap() - 5.144_444).abs() < 1e-6, "10 kn");
        assert_eq!(f.heading_deg, Some(90.5));
        assert_eq!(f.altitude_m, Some(34.0));
        assert_eq!(f.accuracy_m, Some(5.0));
        assert_eq!(f.battery_pct, Some(77.5));
        assert_eq!(f.hdop, Some(0.8), "a real hdop beside a seconds timestamp");
        assert!(f.valid);
        assert_eq!(f.attributes["charge"], Value::Bool(true));
        assert!(!f.attributes.contains_key("valid"));
        assert_eq!(f.attributes["driverUniqueId"], Value::from("abc"));
        let status = status.expect("battery and charging travel as status");
        assert_eq!(status.time, 1_700_000_000_000);
        assert_eq!(
            (status.battery_pct, status.charging),
            (Some(77.5), Some(true))
        );
    }

    #[test]
    fn speed_is_read_in_the_devices_unit() {
        let r = decode_params(b"id=a&lat=1&lon=2&speed=10", 0).unwrap();
        let (mps, _) = r.clone().into_parts(SpeedUnit::MetresPerSecond);
        assert_eq!(mps[0].speed_mps, Some(10.0));
        let (kmh, _) = r.into_parts(SpeedUnit::KilometresPerHour);
        assert!((kmh[0].speed_mps.unwrap() - 10.0 / 3.6).abs() < 1e-12);
    }

    #[test]
    fn osmand_app_hdop_is_its_accuracy() {
        // OsmAnd's template: timestamp={2} (ms), hdop={3} (accuracy in metres), speed={5} (m/s).
        let q = b"id=a&lat=42.06288&lon=-88.23412&timestamp=1442068686579&hdop=6.0&altitude=224.0&speed=1.5";
        let (fixes, status) = decode_params(q, 0)
            .unwrap()
            .into_parts(SpeedUnit::MetresPerSecond);
        let f = &fixes[0];
        assert_eq!(f.fix_time, 1_442_068_686_579);
        assert_eq!((f.accuracy_m, f.hdop), (Some(6.0), None));
        assert_eq!(f.speed_mps, Some(1.5));
        assert_eq!(status, None, "nothing about the device: no status");
        // With an explicit accuracy, hdop stays an hdop.
        let q = b"id=a&lat=1&lon=2&timestamp=1442068686579&hdop=1.2&accuracy=4";
        let f = &decode_params(q, 0).unwrap().fixes[0].fix;
        assert_eq!((f.accuracy_m, f.hdop), (Some(4.0), Some(1.2)));
    }

    #[test]
    fn reports_without_a_position_are_status() {
        // Traccar Client 10 heartbeat (form body of the SDK's HttpUploader).
        let r = decode_params(b"id=48241179&timestamp=1700000000&batt=64&charge=false", 7).unwrap();
        assert!(r.fixes.is_empty());
        let s = r.status.unwrap();
        assert_eq!(s.time, 1_700_000_000_000);
        assert_eq!((s.battery_pct, s.charging), (Some(64.0), Some(false)));
        // The push-token post: no timestamp, so the receive time.
        let r = decode_params(b"id=48241179&notificationToken=abc%3Adef", 7).unwrap();
        let s = r.status.unwrap();
        assert_eq!(s.time, 7);
        assert_eq!(s.attributes["notificationToken"], Value::from("abc:def"));
        // Cell and Wi-Fi only (Traccar's decoder test).
        let r = decode_params(b"id=123456&timestamp=1377177267&cell=257,02,16,2224&cell=257,02,16,2223,-90&wifi=00-14-22-01-23-45,-80&wifi=00-1C-B3-09-85-15,-70", 0).unwrap();
        assert!(r.fixes.is_empty());
        let s = r.status.unwrap();
        assert_eq!(s.attributes["cell"].as_array().unwrap().len(), 2);
        assert_eq!(
            s.attributes["wifi"][1],
            Value::from("00-1C-B3-09-85-15,-70")
        );
        // 0,0 is no position, never a fix at Null Island.
        let r = decode_params(b"id=a&lat=0&lon=0&alarm=sos", 0).unwrap();
        assert!(r.fixes.is_empty());
        assert_eq!(r.status.unwrap().alarm.as_deref(), Some("sos"));
    }

    #[test]
    fn alarm_valid_token_and_empty_values() {
        let q = b"id=a&token=secret1&lat=1&lon=2&alarm=sos&valid=false&hdop=&sat=7&motion=true";
        let (fixes, status) = knots(decode_params(q, 0).unwrap());
        let f = &fixes[0];
        assert!(!f.valid);
        assert_eq!(f.hdop, None, "an empty value is absent");
        assert_eq!(f.satellites, Some(7));
        assert_eq!(f.attributes["alarm"], Value::from("sos"));
        assert!(
            !f.attributes.contains_key("token"),
            "never keep a credential"
        );
        let s = status.unwrap();
        assert_eq!((s.alarm.as_deref(), s.motion), (Some("sos"), Some(true)));
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
        assert_eq!(r.fixes[0].fix.fix_time, 42, "missing timestamp means now");
        assert_eq!((r.fixes[0].fix.lat, r.fixes[0].fix.lon), (1.5, 2.5));
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
        let f = &r.fixes[0].fix;
        assert_eq!(f.attributes.len(), MAX_ATTRIBUTES);
        assert!(f
            .attributes
            .values()
            .all(|v| v.as_str().unwrap().len() == 256));
    }

    #[test]
    fn traccar_client_json_body() {
        let body = br#"{"location":{"timestamp":"2023-11-14T22:13:20.250Z","coords":{"latitude":52.52,"longitude":13.405,"accuracy":4.5,"speed":10.5,"heading":180,"altitude":40.2,"altitude_accuracy":3,"heading_accuracy":-1,"speed_accuracy":-1,"ellipsoidal_altitude":40.2},"is_moving":true,"odometer":1234.5,"event":"motionchange","battery":{"level":0.42,"is_charging":false},"activity":{"type":"in_vehicle"},"extras":{"heartbeat":true},"uuid":"u","age":12},"device_id":"123456"}"#;
        let r = decode_json(body, 0).unwrap();
        assert_eq!(r.uid, "123456");
        let (fixes, status) = knots(r);
        let f = &fixes[0];
        assert_eq!(f.fix_time, 1_700_000_000_250);
        assert_eq!(
            f.speed_mps,
            Some(10.5),
            "m/s in the JSON body, whatever the unit"
        );
        assert_eq!(f.heading_deg, Some(180.0));
        assert_eq!(f.accuracy_m, Some(4.5));
        assert_eq!(f.altitude_m, Some(40.2));
        assert_eq!(f.battery_pct, Some(42.0));
        assert_eq!(f.attributes["motion"], Value::Bool(true));
        assert_eq!(f.attributes["charge"], Value::Bool(false));
        assert_eq!(f.attributes["event"], Value::from("motionchange"));
        assert_eq!(f.attributes["activity"], Value::from("in_vehicle"));
        assert_eq!(f.attributes["odometer"], Value::from(1234.5));
        assert_eq!(f.attributes["heartbeat"], Value::Bool(true));
        let s = status.unwrap();
        assert_eq!(
            (s.time, s.battery_pct, s.charging, s.motion),
            (1_700_000_000_250, Some(42.0), Some(false), Some(true))
        );
    }

    #[test]
    fn traccar_client_10_json_items() {
        // The SDK's `uploadJson`: flat items, speed in knots, a heartbeat without a position.
        let body = br#"[{"id":"48241179","lat":52.5,"lon":13.4,"timestamp":1700000000,"accuracy":5.0,"speed":19.44,"bearing":90.0,"batt":80,"charge":true,"alarm":"sos"},
            {"id":"48241179","timestamp":1700000060,"batt":79,"charge":false}]"#;
        let r = decode_json(body, 0).unwrap();
        assert_eq!(r.uid, "48241179");
        let (fixes, status) = knots(r);
        assert_eq!(fixes.len(), 1);
        assert!((fixes[0].speed_mps.unwrap() - units::knots_to_mps(19.44)).abs() < 1e-9);
        assert_eq!(fixes[0].attributes["alarm"], Value::from("sos"));
        let s = status.unwrap();
        assert_eq!(s.time, 1_700_000_060_000, "the newest status");
        assert_eq!((s.battery_pct, s.charging), (Some(79.0), Some(false)));
        let mixed = br#"[{"id":"a","lat":1,"lon":2},{"id":"b","lat":1,"lon":2}]"#;
        assert_eq!(decode_json(mixed, 0).unwrap_err().field, "1.id");
        assert_eq!(decode_json(b"[]", 0).unwrap_err().field, "");
        assert_eq!(decode_json(b"[1]", 0).unwrap_err().field, "0");
    }

    #[test]
    fn json_unknown_speed_and_refusals() {
        let body = br#"{"location":{"timestamp":"2023-11-14T22:13:20Z","coords":{"latitude":1,"longitude":2,"speed":-1,"heading":-1},"battery":{"level":-1}},"device_id":"d"}"#;
        let r = decode_json(body, 0).unwrap();
        assert_eq!(r.status, None);
        let f = &r.fixes[0].fix;
        assert_eq!(
            (f.speed_mps, f.heading_deg, f.battery_pct),
            (None, None, None)
        );
        assert_eq!(decode_json(b"{}", 0).unwrap_err().field, "id");
        assert_eq!(
            decode_json(br#"{"device_id":"d","location":null}"#, 0)
                .unwrap_err()
                .field,
            "location"
        );
        assert_eq!(
            decode_json(
                br#"{"device_id":"d","location":{"timestamp":"x","coords":{}}}"#,
                0
            )
            .unwrap_err()
            .field,
            "location.timestamp"
        );
        assert_eq!(
            decode_json(br#"{"device_id":"d","location":[{"timestamp":"2023-11-14T22:13:20Z","coords":{"latitude":"1","longitude":2}}]}"#, 0)
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
        let (fixes, _) = knots(r);
        assert!((fixes[0].speed_mps.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(fixes[0].battery_pct, Some(50.0));
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_params(&bytes, 0);
            let _ = decode_json(&bytes, 0);
        }

        #[test]
        fn arbitrary_text_params_never_panic(k in ".{0,8}", v in ".{0,16}") {
            let q = serde_urlencoded::to_string([("id", "a"), ("lat", "1"), ("lon", "2"), (k.as_str(), v.as_str())]).unwrap();
            let _ = decode_params(q.as_bytes(), 0);
        }
    }
}
