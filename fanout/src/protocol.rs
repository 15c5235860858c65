//! The WebSocket message protocol (documented in `docs/fanout.md`): parsing of client messages
//! with errors that name the field, and encoding of server messages.
//!
//! A fix is encoded once per Redis message into an [`EncodedFix`] body shared by every subscriber;
//! each connection only splices its own per-device sequence number in front of it, so the cost of
//! a fix sent to many clients is one JSON encoding plus a copy per client. A device status is
//! encoded once into a whole `status` message ([`EncodedStatus`]): it carries no sequence number
//! (it is a state, not a stream: the newest replaces the older). An event is encoded once into a
//! whole `event` message ([`EncodedEvent`]) too: no sequence number (each has its own id), and
//! only connections whose [`EventKinds`] include its type receive it.

use gps_domain::events::EventType;
use gps_domain::fix::{EpochMillis, Fix};
use gps_domain::geo::{BBox, BBoxError};
use gps_domain::live::{LiveEvent, LiveFix, LiveStatus};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::time::Instant;
use uuid::Uuid;

/// Longest request `id` echoed back, in characters.
pub const MAX_ID_LEN: usize = 64;

/// What a `subscribe` or `unsubscribe` names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selectors {
    /// Device ids.
    pub devices: Vec<Uuid>,
    /// Group ids.
    pub groups: Vec<Uuid>,
    /// A bounding box.
    pub bbox: Option<BBox>,
    /// Every device the principal may see.
    pub all: bool,
}

impl Selectors {
    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.groups.is_empty() && self.bbox.is_none() && !self.all
    }
}

/// Which event types a connection receives beside fixes: a set of [`EventType`]s, empty for
/// none (the default, so that a client that predates events gets only what it got before).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventKinds(u16);

impl EventKinds {
    /// No events.
    pub const NONE: Self = Self(0);

    /// Every event type.
    pub fn all() -> Self {
        EventType::ALL.into_iter().collect()
    }

    fn bit(event_type: EventType) -> u16 {
        // A fieldless enum of 8 variants: its discriminant is its place in `EventType::ALL`.
        1 << (event_type as u16)
    }

    /// Whether events of this type are wanted.
    pub fn contains(self, event_type: EventType) -> bool {
        self.0 & Self::bit(event_type) != 0
    }

    /// Whether no event is wanted.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as bits, for an atomic.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// The set from [`bits`](Self::bits).
    pub fn from_bits(bits: u16) -> Self {
        Self(bits & Self::all().0)
    }

    /// The types' names, in the documented order.
    pub fn names(self) -> Vec<&'static str> {
        EventType::ALL
            .into_iter()
            .filter(|t| self.contains(*t))
            .map(EventType::as_str)
            .collect()
    }
}

impl FromIterator<EventType> for EventKinds {
    fn from_iter<I: IntoIterator<Item = EventType>>(types: I) -> Self {
        Self(types.into_iter().fold(0, |bits, t| bits | Self::bit(t)))
    }
}

/// A parsed client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Start receiving what the selectors match.
    Subscribe {
        /// Request id to echo.
        id: Option<Value>,
        /// What to watch.
        selectors: Selectors,
        /// The connection's new choice of events (`events`), or `None` to keep the current one.
        events: Option<EventKinds>,
    },
    /// Stop receiving what the selectors match (everything when empty).
    Unsubscribe {
        /// Request id to echo.
        id: Option<Value>,
        /// What to stop watching.
        selectors: Selectors,
    },
    /// Application-level keepalive; answered with `pong`.
    Ping {
        /// Request id to echo.
        id: Option<Value>,
    },
}

/// Why a client message was refused: sent back as an `error` message.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable reason.
    pub message: String,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// The request id, when it could be read.
    pub id: Option<Value>,
}

impl ProtocolError {
    fn new(code: &'static str, message: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            code,
            message: message.into(),
            field: field.map(str::to_owned),
            id: None,
        }
    }

    /// The `error` message.
    pub fn to_message(&self) -> String {
        error_message(
            self.id.as_ref(),
            self.code,
            &self.message,
            self.field.as_deref(),
            &[],
            &[],
        )
    }
}

/// Parse one client text message.
pub fn parse_client(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(
            "invalid_json",
            format!("message is not valid JSON: {e}"),
            None,
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(ProtocolError::new(
            "invalid_message",
            "message must be a JSON object",
            None,
        ));
    };
    let id = match map.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_ID_LEN => Some(Value::String(s)),
        Some(Value::Number(n)) => Some(Value::Number(n)),
        Some(_) => {
            return Err(ProtocolError::new(
                "invalid_field",
                format!("id must be a number or a string of at most {MAX_ID_LEN} characters"),
                Some("id"),
            ))
        }
    };
    let with_id = |mut e: ProtocolError| {
        e.id = id.clone();
        e
    };
    let kind = match map.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(with_id(ProtocolError::new(
                "invalid_field",
                "type must be a string",
                Some("type"),
            )))
        }
        None => {
            return Err(with_id(ProtocolError::new(
                "invalid_message",
                "message has no type",
                Some("type"),
            )))
        }
    };
    match kind.as_str() {
        "subscribe" => {
            let events = event_kinds(map.remove("events")).map_err(with_id)?;
            let selectors = selectors(&mut map).map_err(with_id)?;
            if selectors.is_empty() {
                return Err(with_id(ProtocolError::new(
                    "invalid_message",
                    "subscribe needs at least one of devices, groups, bbox or all",
                    None,
                )));
            }
            Ok(ClientMessage::Subscribe {
                id: id.clone(),
                selectors,
                events,
            })
        }
        "unsubscribe" => {
            let selectors = selectors(&mut map).map_err(with_id)?;
            Ok(ClientMessage::Unsubscribe {
                id: id.clone(),
                selectors,
            })
        }
        "ping" => {
            reject_unknown(&map).map_err(with_id)?;
            Ok(ClientMessage::Ping { id: id.clone() })
        }
        other => Err(with_id(ProtocolError::new(
            "unknown_type",
            format!(
                "unknown message type `{}`; expected subscribe, unsubscribe or ping",
                truncate(other, 40)
            ),
            Some("type"),
        ))),
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn reject_unknown(map: &Map<String, Value>) -> Result<(), ProtocolError> {
    match map.keys().next() {
        Some(key) => Err(ProtocolError::new(
            "invalid_field",
            format!("unknown field `{}`", truncate(key, 40)),
            Some(&truncate(key, 40)),
        )),
        None => Ok(()),
    }
}

fn selectors(map: &mut Map<String, Value>) -> Result<Selectors, ProtocolError> {
    let devices = uuid_list(map.remove("devices"), "devices")?;
    let groups = uuid_list(map.remove("groups"), "groups")?;
    let bbox = match map.remove("bbox") {
        None | Some(Value::Null) => None,
        Some(value) => Some(bbox(&value)?),
    };
    let all = match map.remove("all") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ProtocolError::new(
                "invalid_field",
                "all must be a boolean",
                Some("all"),
            ))
        }
    };
    reject_unknown(map)?;
    Ok(Selectors {
        devices,
        groups,
        bbox,
        all,
    })
}

/// `events`: `true` (every type), `false` or `null` (none), or a list of type names (`[]`: none).
fn event_kinds(value: Option<Value>) -> Result<Option<EventKinds>, ProtocolError> {
    let items = match value {
        None => return Ok(None),
        Some(Value::Null | Value::Bool(false)) => return Ok(Some(EventKinds::NONE)),
        Some(Value::Bool(true)) => return Ok(Some(EventKinds::all())),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ProtocolError::new(
                "invalid_field",
                "events must be a boolean or an array of event types",
                Some("events"),
            ))
        }
    };
    let mut kinds = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let kind = item
            .as_str()
            .and_then(|s| s.parse::<EventType>().ok())
            .ok_or_else(|| {
                let expected = EventKinds::all().names().join(", ");
                ProtocolError::new(
                    "invalid_field",
                    format!("events[{i}] is not an event type (one of {expected})"),
                    Some(&format!("events[{i}]")),
                )
            })?;
        kinds.push(kind);
    }
    Ok(Some(kinds.into_iter().collect()))
}

fn uuid_list(value: Option<Value>, field: &str) -> Result<Vec<Uuid>, ProtocolError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ProtocolError::new(
                "invalid_field",
                format!("{field} must be an array of ids"),
                Some(field),
            ))
        }
    };
    let mut ids = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = item
            .as_str()
            .and_then(|s| s.parse::<Uuid>().ok())
            .ok_or_else(|| {
                ProtocolError::new(
                    "invalid_field",
                    format!("{field}[{i}] is not a UUID"),
                    Some(&format!("{field}[{i}]")),
                )
            })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// `[minLon, minLat, maxLon, maxLat]`, validated by the one [`BBox`] rule (antimeridian-aware).
fn bbox(value: &Value) -> Result<BBox, ProtocolError> {
    let bad = |reason: BBoxError| {
        ProtocolError::new(
            "invalid_field",
            format!("bbox must be [minLon, minLat, maxLon, maxLat]: {reason}"),
            Some("bbox"),
        )
    };
    let items = value
        .as_array()
        .filter(|items| items.len() == 4)
        .ok_or(bad(BBoxError::Shape))?;
    let mut edges = [0.0f64; 4];
    for (slot, item) in edges.iter_mut().zip(items) {
        *slot = item.as_f64().ok_or(bad(BBoxError::NotFinite))?;
    }
    BBox::from_array(edges).map_err(bad)
}

/// One fix ready to send: the routing keys and the JSON body shared by every subscriber.
#[derive(Debug)]
pub struct EncodedFix {
    /// Device id.
    pub device: Uuid,
    /// Fix time (UTC ms).
    pub fix_time: EpochMillis,
    /// Latitude, for bbox routing.
    pub lat: f64,
    /// Longitude, for bbox routing.
    pub lon: f64,
    /// The JSON object's members after `seq`, with the closing brace:
    /// `"device":..,"uid":..,"fix_time":..,"proto":..,"rx":..,"fix":{..}}`.
    body: Box<str>,
    /// When fanout received it from Redis (for the delivery-latency histogram).
    pub received: Instant,
}

#[derive(Serialize)]
struct Body<'a> {
    device: Uuid,
    uid: &'a str,
    fix_time: EpochMillis,
    proto: &'a str,
    rx: EpochMillis,
    fix: &'a Fix,
}

impl EncodedFix {
    /// Encode one position.
    pub fn new(
        device: Uuid,
        uid: &str,
        proto: &str,
        rx: EpochMillis,
        fix: &Fix,
        received: Instant,
    ) -> Self {
        let body = Body {
            device,
            uid,
            fix_time: fix.fix_time,
            proto,
            rx,
            fix,
        };
        // A struct of plain fields serializes; non-finite floats become null.
        let json = serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned());
        Self {
            device,
            fix_time: fix.fix_time,
            lat: fix.lat,
            lon: fix.lon,
            body: json[1..].into(),
            received,
        }
    }

    /// Encode a fix as published live.
    pub fn from_live(live: &LiveFix, received: Instant) -> Self {
        Self::new(
            live.device,
            &live.uid,
            live.proto.as_str(),
            live.rx,
            &live.fix,
            received,
        )
    }

    /// Size of the shared body in bytes.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

/// One device status ready to send: the whole `status` message, shared by every subscriber.
#[derive(Debug)]
pub struct EncodedStatus {
    /// Device id.
    pub device: Uuid,
    /// How new it is: (status time, alarm time, last seen), compared in that order; a newer
    /// status replaces an older one still queued for a slow client.
    pub rank: (EpochMillis, EpochMillis, EpochMillis),
    text: Box<str>,
}

#[derive(Serialize)]
struct StatusFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    device_id: Uuid,
    uid: &'a str,
    last_seen: EpochMillis,
    status_time: Option<EpochMillis>,
    battery_pct: Option<f64>,
    charging: Option<bool>,
    motion: Option<bool>,
    alarm: Option<&'a str>,
    alarm_time: Option<EpochMillis>,
    attributes: &'a std::collections::BTreeMap<String, Value>,
}

impl EncodedStatus {
    /// `{"type":"status","device_id":..,"uid":..,"last_seen":..,...}` for a status as published
    /// live; every field is present (`null` when the device did not say).
    pub fn from_live(live: &LiveStatus) -> Self {
        let frame = StatusFrame {
            kind: "status",
            device_id: live.device,
            uid: &live.uid,
            last_seen: live.last_seen,
            status_time: live.status_time,
            battery_pct: live.battery_pct,
            charging: live.charging,
            motion: live.motion,
            alarm: live.alarm.as_deref(),
            alarm_time: live.alarm_time,
            attributes: &live.attributes,
        };
        // A struct of plain fields serializes; non-finite floats become null.
        let text = serde_json::to_string(&frame).unwrap_or_else(|_| "{}".to_owned());
        let never = EpochMillis::MIN;
        Self {
            device: live.device,
            rank: (
                live.status_time.unwrap_or(never),
                live.alarm_time.unwrap_or(never),
                live.last_seen,
            ),
            text: text.into(),
        }
    }

    /// The message text.
    pub fn message(&self) -> &str {
        &self.text
    }
}

/// One event ready to send: the routing keys and the whole `event` message, shared by every
/// subscriber that wants its type.
#[derive(Debug)]
pub struct EncodedEvent {
    /// Device id.
    pub device: Uuid,
    /// The event's type, for each connection's [`EventKinds`].
    pub event_type: EventType,
    /// Where it happened, `(lat, lon)`, for bbox routing (none: no bbox subscription gets it).
    pub position: Option<(f64, f64)>,
    text: Box<str>,
}

/// The event inside an `event` frame: the shape of one `GET /v1/events` item, times in UTC ms
/// like every other frame.
#[derive(Serialize)]
struct EventBody<'a> {
    id: Uuid,
    device_id: Uuid,
    #[serde(rename = "type")]
    event_type: &'static str,
    fix_time: EpochMillis,
    lat: Option<f64>,
    lon: Option<f64>,
    geofence_id: Option<Uuid>,
    details: &'a Value,
}

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    device_id: Uuid,
    uid: &'a str,
    event: EventBody<'a>,
}

impl EncodedEvent {
    /// `{"type":"event","device_id":..,"uid":..,"event":{"id":..,"type":..,...}}` for an event
    /// as published live: the event's own `type` and `id` sit inside `event`, apart from the
    /// frame's `type` and the request `id` of acks and errors.
    pub fn from_live(live: &LiveEvent) -> Self {
        let event = &live.event;
        let frame = EventFrame {
            kind: "event",
            device_id: event.device_id,
            uid: &live.uid,
            event: EventBody {
                id: event.id,
                device_id: event.device_id,
                event_type: event.event_type.as_str(),
                fix_time: event.fix_time,
                lat: event.lat,
                lon: event.lon,
                geofence_id: event.geofence_id,
                details: &event.details,
            },
        };
        // A struct of plain fields serializes; non-finite floats become null.
        let text = serde_json::to_string(&frame).unwrap_or_else(|_| "{}".to_owned());
        Self {
            device: event.device_id,
            event_type: event.event_type,
            position: event.lat.zip(event.lon),
            text: text.into(),
        }
    }

    /// The message text.
    pub fn message(&self) -> &str {
        &self.text
    }
}

/// `{"type":"fix","seq":N,...}`.
pub fn fix_message(seq: u64, fix: &EncodedFix) -> String {
    let mut out = String::with_capacity(fix.body.len() + 32);
    out.push_str("{\"type\":\"fix\",\"seq\":");
    let _ = write!(out, "{seq},");
    out.push_str(&fix.body);
    out
}

/// `{"type":"snapshot","id":..,"count":N,"truncated":b,"positions":[{"seq":N,...},...]}`.
pub fn snapshot_message(
    id: Option<&Value>,
    truncated: bool,
    entries: &[(u64, std::sync::Arc<EncodedFix>)],
) -> String {
    let size: usize = entries.iter().map(|(_, f)| f.body.len() + 24).sum();
    let mut out = String::with_capacity(size + 96);
    out.push_str("{\"type\":\"snapshot\",\"id\":");
    out.push_str(&id_json(id));
    let _ = write!(
        out,
        ",\"count\":{},\"truncated\":{truncated},\"positions\":[",
        entries.len()
    );
    for (i, (seq, fix)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"seq\":{seq},");
        out.push_str(&fix.body);
    }
    out.push_str("]}");
    out
}

fn id_json(id: Option<&Value>) -> String {
    id.map_or_else(|| "null".to_owned(), Value::to_string)
}

/// `{"type":"error",...}`; `devices`/`groups` name refused ids.
pub fn error_message(
    id: Option<&Value>,
    code: &str,
    message: &str,
    field: Option<&str>,
    devices: &[Uuid],
    groups: &[Uuid],
) -> String {
    let mut value = json!({
        "type": "error",
        "id": id,
        "code": code,
        "message": message,
    });
    if let Some(field) = field {
        value["field"] = json!(field);
    }
    if !devices.is_empty() {
        value["devices"] = json!(devices);
    }
    if !groups.is_empty() {
        value["groups"] = json!(groups);
    }
    value.to_string()
}

/// `{"type":"welcome",...}`: sent once after the upgrade.
pub fn welcome_message(
    connection: u64,
    tenant: Uuid,
    scope: &str,
    upstream_ok: bool,
    limits: &crate::config::Limits,
) -> String {
    json!({
        "type": "welcome",
        "connection": connection,
        "tenant": tenant,
        "scope": scope,
        "upstream": if upstream_ok { "ok" } else { "lost" },
        "limits": {
            "queue_capacity": limits.queue_capacity,
            "heartbeat_interval_ms": limits.heartbeat_interval.as_millis() as u64,
            "idle_timeout_ms": limits.idle_timeout.as_millis() as u64,
            "max_message_bytes": limits.max_message_bytes,
            "max_devices": limits.max_devices,
            "max_bboxes": limits.max_bboxes,
            "snapshot_limit": limits.snapshot_limit,
            "subscribe_burst": limits.subscribe_burst,
            "subscribes_per_minute": limits.subscribes_per_minute,
        },
    })
    .to_string()
}

/// What a connection is subscribed to, echoed after `subscribe`/`unsubscribe`.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionState {
    /// Devices named explicitly.
    pub devices: Vec<Uuid>,
    /// Groups.
    pub groups: Vec<Uuid>,
    /// Bounding boxes.
    pub bboxes: Vec<[f64; 4]>,
    /// Every visible device.
    pub all: bool,
    /// Devices currently routed to this connection (explicit and through groups).
    pub device_count: usize,
    /// The event types sent beside the fixes (empty: none).
    pub events: Vec<&'static str>,
}

/// `{"type":"subscribed"|"unsubscribed","id":..,"subscriptions":{..}}`.
pub fn ack_message(kind: &str, id: Option<&Value>, state: &SubscriptionState) -> String {
    json!({ "type": kind, "id": id, "subscriptions": state }).to_string()
}

/// `{"type":"error","code":"rate_limited",..,"retry_after_ms":N}`: a `subscribe` over the
/// connection's rate limit, not executed.
pub fn rate_limited_message(id: Option<&Value>, retry_after: std::time::Duration) -> String {
    let ms = retry_after.as_millis().max(1) as u64;
    json!({
        "type": "error",
        "id": id,
        "code": "rate_limited",
        "message": format!("too many subscribe requests; retry in {ms} ms"),
        "retry_after_ms": ms,
    })
    .to_string()
}

/// `{"type":"access_changed","removed":{"devices":[..],"groups":[..]},"subscriptions":{..}}`:
/// the principal's role or groups changed; what it may no longer see was unsubscribed.
pub fn access_changed_message(
    devices: &[Uuid],
    groups: &[Uuid],
    state: &SubscriptionState,
) -> String {
    json!({
        "type": "access_changed",
        "removed": { "devices": devices, "groups": groups },
        "subscriptions": state,
    })
    .to_string()
}

/// `{"type":"pong","id":..}`.
pub fn pong_message(id: Option<&Value>) -> String {
    json!({ "type": "pong", "id": id }).to_string()
}

/// `{"type":"lagged","coalesced":N}`: N older fixes were replaced by newer ones of the same device.
pub fn lagged_message(coalesced: u64) -> String {
    json!({ "type": "lagged", "coalesced": coalesced }).to_string()
}

/// `{"type":"gap",...}`: the live feed was interrupted (`lost`) or is back (`resumed`).
pub fn gap_message(status: &str, since: EpochMillis, until: Option<EpochMillis>) -> String {
    json!({ "type": "gap", "status": status, "since": since, "until": until }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_parses_every_selector() {
        let d = Uuid::new_v4();
        let g = Uuid::new_v4();
        let text = format!(
            r#"{{"type":"subscribe","id":7,"devices":["{d}","{d}"],"groups":["{g}"],"bbox":[10,40,12,42]}}"#
        );
        let ClientMessage::Subscribe {
            id,
            selectors,
            events,
        } = parse_client(&text).unwrap()
        else {
            panic!("not a subscribe");
        };
        assert_eq!(id, Some(json!(7)));
        assert_eq!(events, None, "no `events`: the connection's choice stays");
        assert_eq!(selectors.devices, vec![d], "duplicates collapse");
        assert_eq!(selectors.groups, vec![g]);
        assert!(selectors.bbox.unwrap().contains(41.0, 11.0));
        assert!(!selectors.all);
    }

    fn events_of(text: &str) -> Option<EventKinds> {
        match parse_client(text) {
            Ok(ClientMessage::Subscribe { events, .. }) => events,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn subscribe_chooses_events_by_flag_or_type_list() {
        assert_eq!(
            events_of(r#"{"type":"subscribe","all":true,"events":true}"#),
            Some(EventKinds::all())
        );
        for none in ["false", "null", "[]"] {
            let text = format!(r#"{{"type":"subscribe","all":true,"events":{none}}}"#);
            assert_eq!(events_of(&text), Some(EventKinds::NONE), "{none}");
        }
        let some =
            events_of(r#"{"type":"subscribe","all":true,"events":["overspeed","alarm","alarm"]}"#)
                .unwrap();
        assert!(some.contains(EventType::Overspeed) && some.contains(EventType::Alarm));
        assert!(!some.contains(EventType::GeofenceEnter));
        assert_eq!(some.names(), ["overspeed", "alarm"]);
        assert_eq!(EventKinds::from_bits(some.bits()), some);
        assert_eq!(EventKinds::all().names().len(), EventType::ALL.len());
        // `events` alone selects nothing to watch.
        let err = parse_client(r#"{"type":"subscribe","events":true}"#).unwrap_err();
        assert_eq!(err.code, "invalid_message");
    }

    #[test]
    fn bad_messages_name_the_field() {
        let cases = [
            ("not json", "invalid_json", None),
            ("[1,2]", "invalid_message", None),
            (r#"{"type":"dance"}"#, "unknown_type", Some("type")),
            (r#"{"type":"subscribe"}"#, "invalid_message", None),
            (
                r#"{"type":"subscribe","devices":["x"]}"#,
                "invalid_field",
                Some("devices[0]"),
            ),
            (
                r#"{"type":"subscribe","bbox":[0,91,1,92]}"#,
                "invalid_field",
                Some("bbox"),
            ),
            (
                r#"{"type":"subscribe","all":true,"colour":"red"}"#,
                "invalid_field",
                Some("colour"),
            ),
            (
                r#"{"type":"ping","id":{"a":1}}"#,
                "invalid_field",
                Some("id"),
            ),
            (
                r#"{"type":"subscribe","all":true,"events":"yes"}"#,
                "invalid_field",
                Some("events"),
            ),
            (
                r#"{"type":"subscribe","all":true,"events":["alarm","teleport"]}"#,
                "invalid_field",
                Some("events[1]"),
            ),
            (
                r#"{"type":"subscribe","all":true,"events":[3]}"#,
                "invalid_field",
                Some("events[0]"),
            ),
            (
                r#"{"type":"unsubscribe","events":true}"#,
                "invalid_field",
                Some("events"),
            ),
        ];
        for (text, code, field) in cases {
            let err = parse_client(text).unwrap_err();
            assert_eq!(err.code, code, "{text}: {err:?}");
            assert_eq!(err.field.as_deref(), field, "{text}");
        }
    }

    #[test]
    fn errors_echo_the_request_id() {
        let err = parse_client(r#"{"type":"nope","id":"abc"}"#).unwrap_err();
        let message: Value = serde_json::from_str(&err.to_message()).unwrap();
        assert_eq!(message["id"], "abc");
        assert_eq!(message["type"], "error");
    }

    #[test]
    fn bbox_crossing_the_antimeridian_wraps() {
        let b = bbox(&json!([170, -10, -170, 10])).unwrap();
        assert!(b.contains(0.0, 175.0));
        assert!(b.contains(0.0, -175.0));
        assert!(!b.contains(0.0, 0.0));
        assert!(!b.contains(20.0, 175.0));
    }

    #[test]
    fn fix_messages_splice_the_sequence_into_one_body() {
        let mut fix = Fix::new(1_700_000_000_000, 48.5, 2.25);
        fix.speed_mps = Some(3.5);
        let encoded = EncodedFix::new(Uuid::nil(), "dev-1", "json", 5, &fix, Instant::now());
        let message: Value = serde_json::from_str(&fix_message(42, &encoded)).unwrap();
        assert_eq!(message["type"], "fix");
        assert_eq!(message["seq"], 42);
        assert_eq!(message["uid"], "dev-1");
        assert_eq!(message["fix_time"], 1_700_000_000_000i64);
        assert_eq!(message["fix"]["spd"], 3.5);
        let shared = std::sync::Arc::new(encoded);
        let snapshot: Value = serde_json::from_str(&snapshot_message(
            Some(&json!("s1")),
            false,
            &[(1, shared.clone()), (1, shared)],
        ))
        .unwrap();
        assert_eq!(snapshot["count"], 2);
        assert_eq!(snapshot["positions"][1]["seq"], 1);
        assert_eq!(snapshot["positions"][0]["fix"]["lat"], 48.5);
    }

    #[test]
    fn a_status_message_carries_every_field() {
        let mut live = LiveStatus {
            device: Uuid::from_u128(7),
            uid: "phone".into(),
            last_seen: 30,
            status_time: Some(20),
            battery_pct: Some(f64::NAN),
            charging: Some(true),
            motion: None,
            alarm: Some("sos".into()),
            alarm_time: Some(10),
            attributes: Default::default(),
        };
        live.attributes.insert("rssi".into(), json!(-70));
        let encoded = EncodedStatus::from_live(&live);
        let message: Value = serde_json::from_str(encoded.message()).unwrap();
        assert_eq!(message["type"], "status");
        assert_eq!(message["device_id"], Uuid::from_u128(7).to_string());
        assert_eq!(message["uid"], "phone");
        assert_eq!(message["last_seen"], 30);
        assert_eq!(message["status_time"], 20);
        assert_eq!(message["battery_pct"], Value::Null, "NaN is not JSON");
        assert_eq!(message["charging"], true);
        assert_eq!(message["motion"], Value::Null);
        assert_eq!(message["alarm"], "sos");
        assert_eq!(message["alarm_time"], 10);
        assert_eq!(message["attributes"]["rssi"], -70);
        assert_eq!(encoded.rank, (20, 10, 30));
    }

    #[test]
    fn an_event_frame_nests_the_event_apart_from_the_frame_type() {
        let device = Uuid::from_u128(9);
        let fence = Uuid::from_u128(3);
        let event = gps_domain::events::Event {
            id: Uuid::from_u128(1),
            tenant_id: Uuid::from_u128(2),
            device_id: device,
            event_type: EventType::GeofenceEnter,
            fix_time: 1_700_000_000_000,
            lat: Some(52.5),
            lon: Some(f64::NAN),
            geofence_id: Some(fence),
            details: json!({"name": "depot"}),
        };
        let encoded = EncodedEvent::from_live(&LiveEvent {
            uid: "truck-1".into(),
            event,
        });
        let message: Value = serde_json::from_str(encoded.message()).unwrap();
        assert_eq!(message["type"], "event");
        assert_eq!(message["device_id"], device.to_string());
        assert_eq!(message["uid"], "truck-1");
        let inner = &message["event"];
        assert_eq!(inner["id"], Uuid::from_u128(1).to_string());
        assert_eq!(inner["type"], "geofence_enter");
        assert_eq!(inner["device_id"], device.to_string());
        assert_eq!(inner["fix_time"], 1_700_000_000_000i64);
        assert_eq!(inner["lat"], 52.5);
        assert_eq!(inner["lon"], Value::Null, "NaN is not JSON");
        assert_eq!(inner["geofence_id"], fence.to_string());
        assert_eq!(inner["details"]["name"], "depot");
        assert!(
            inner.get("tenant_id").is_none(),
            "the tenant is the caller's"
        );
        assert_eq!(encoded.event_type, EventType::GeofenceEnter);
        assert_eq!(encoded.device, device);
    }

    #[test]
    fn non_finite_numbers_still_encode() {
        let mut fix = Fix::new(1, 1.0, 2.0);
        fix.hdop = Some(f64::NAN);
        let encoded = EncodedFix::new(Uuid::nil(), "d", "udp", 0, &fix, Instant::now());
        assert!(serde_json::from_str::<Value>(&fix_message(1, &encoded)).is_ok());
    }
}
