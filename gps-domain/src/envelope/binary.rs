//! The binary encoding of a [`FixEnvelope`]: what ingest writes to `gps.fixes` by default.
//!
//! JSON spends its time formatting and parsing numbers and matching keys (0.54 µs to encode and
//! 0.66 µs to decode a fix of a 100-fix envelope, release); here a fix is 26 bytes plus 8 per
//! optional number, written and read with fixed-width stores and loads (0.025 / 0.044 µs), and
//! floats travel bit for bit (JSON may lose the last bit of a float, and cannot carry NaN).
//! Byte by byte (`docs/envelope.md`, "Binary encoding"; all integers little-endian):
//!
//! ```text
//! envelope  0  u8       magic 0xB5 (never the first byte of UTF-8 text, so never JSON)
//!           1  u8       envelope version (1: the fields of envelope version 1)
//!           2  [16]     tenant uuid, 18 [16] device uuid (RFC 4122 byte order)
//!          34  i64      rx (ingest receive time, UTC ms)
//!          42  u8       protocol: 0 json, 1 osmand, 2 owntracks, 3 udp, 4 teltonika
//!          43  u8       flags: bit 0 = a status follows the fixes; other bits 0
//!          44  u32      uid length n, then n bytes of UTF-8
//!        48+n  u32      fix count, then the fixes, then the status when flagged
//! fix       0  u16      presence: bit 0 alt, 1 spd, 2 hdg, 3 acc, 4 bat, 5 sat, 6 hdop,
//!                       7 attributes, 8 invalid (the device called it invalid); others 0
//!           2  i64      t (fix time, UTC ms), 10 f64 lat, 18 f64 lon (IEEE 754 bits)
//!          26  …        each present field in bit order: f64 alt, spd, hdg, acc, bat;
//!                       u16 sat; f64 hdop; attributes as u32 length + a JSON object
//! status    0  u8       presence: bit 0 bat, 1 charging known, 2 charging, 3 alarm,
//!                       4 motion known, 5 motion, 6 attributes; bit 7 is 0
//!           1  i64      t (report time, UTC ms)
//!           9  …        f64 bat; alarm as u32 length + UTF-8; attributes as above
//! ```
//!
//! A record ends with its last field: trailing bytes, unknown flag bits, an unknown protocol
//! code, a length past the end or text that is not UTF-8 are [`EnvelopeError::Binary`] with the
//! byte offset. Adding a field to the binary encoding takes a new version byte (an old reader
//! cannot skip what it does not know), which the readers must learn before the writers use it.

use super::{EnvelopeError, FixEnvelope};
use crate::fix::{Fix, Protocol};
use crate::status::DeviceStatus;
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The first byte of every binary envelope.
pub(super) const MAGIC: u8 = 0xB5;

// Where a record that ends too early ended (the error's reason).
const IN_HEADER: &str = "record ends inside the header";
const IN_UID: &str = "record ends inside the uid";
const IN_FIX: &str = "record ends inside a fix";
const IN_STATUS: &str = "record ends inside the status";
const IN_ATTRIBUTES: &str = "record ends inside attributes";

/// Bytes of a fix without optional fields: presence, time, latitude, longitude.
const MIN_FIX_BYTES: usize = 2 + 8 + 8 + 8;

const ENVELOPE_HAS_STATUS: u8 = 1;

const FIX_ALT: u16 = 1;
const FIX_SPD: u16 = 1 << 1;
const FIX_HDG: u16 = 1 << 2;
const FIX_ACC: u16 = 1 << 3;
const FIX_BAT: u16 = 1 << 4;
const FIX_SAT: u16 = 1 << 5;
const FIX_HDOP: u16 = 1 << 6;
const FIX_ATTRIBUTES: u16 = 1 << 7;
const FIX_INVALID: u16 = 1 << 8;
const FIX_KNOWN: u16 = (1 << 9) - 1;

const STATUS_BAT: u8 = 1;
const STATUS_CHARGING_KNOWN: u8 = 1 << 1;
const STATUS_CHARGING: u8 = 1 << 2;
const STATUS_ALARM: u8 = 1 << 3;
const STATUS_MOTION_KNOWN: u8 = 1 << 4;
const STATUS_MOTION: u8 = 1 << 5;
const STATUS_ATTRIBUTES: u8 = 1 << 6;
const STATUS_KNOWN: u8 = (1 << 7) - 1;

fn protocol_code(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Json => 0,
        Protocol::Osmand => 1,
        Protocol::Owntracks => 2,
        Protocol::Udp => 3,
        Protocol::Teltonika => 4,
    }
}

fn protocol_of(code: u8) -> Option<Protocol> {
    Some(match code {
        0 => Protocol::Json,
        1 => Protocol::Osmand,
        2 => Protocol::Owntracks,
        3 => Protocol::Udp,
        4 => Protocol::Teltonika,
        _ => return None,
    })
}

/// The bytes of `envelope` (the version byte is `envelope.v`, as JSON writes it).
pub(super) fn encode(envelope: &FixEnvelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        52 + envelope.uid.len() + envelope.fixes.len() * (MIN_FIX_BYTES + 24) + 32,
    );
    out.push(MAGIC);
    out.push(u8::try_from(envelope.v).unwrap_or(u8::MAX));
    out.extend_from_slice(envelope.tenant.as_bytes());
    out.extend_from_slice(envelope.device.as_bytes());
    out.extend_from_slice(&envelope.rx.to_le_bytes());
    out.push(protocol_code(envelope.proto));
    out.push(if envelope.status.is_some() {
        ENVELOPE_HAS_STATUS
    } else {
        0
    });
    put_text(&mut out, &envelope.uid);
    put_len(&mut out, envelope.fixes.len());
    for fix in &envelope.fixes {
        put_fix(&mut out, fix);
    }
    if let Some(status) = &envelope.status {
        put_status(&mut out, status);
    }
    out
}

fn put_fix(out: &mut Vec<u8>, fix: &Fix) {
    let numbers = [
        (FIX_ALT, fix.altitude_m),
        (FIX_SPD, fix.speed_mps),
        (FIX_HDG, fix.heading_deg),
        (FIX_ACC, fix.accuracy_m),
        (FIX_BAT, fix.battery_pct),
    ];
    let mut presence = numbers
        .iter()
        .filter(|(_, value)| value.is_some())
        .fold(0, |bits, (bit, _)| bits | bit);
    presence |= flag(fix.satellites.is_some(), FIX_SAT)
        | flag(fix.hdop.is_some(), FIX_HDOP)
        | flag(!fix.attributes.is_empty(), FIX_ATTRIBUTES)
        | flag(!fix.valid, FIX_INVALID);
    out.extend_from_slice(&presence.to_le_bytes());
    out.extend_from_slice(&fix.fix_time.to_le_bytes());
    out.extend_from_slice(&fix.lat.to_le_bytes());
    out.extend_from_slice(&fix.lon.to_le_bytes());
    for value in numbers.iter().filter_map(|(_, value)| *value) {
        out.extend_from_slice(&value.to_le_bytes());
    }
    if let Some(satellites) = fix.satellites {
        out.extend_from_slice(&satellites.to_le_bytes());
    }
    if let Some(hdop) = fix.hdop {
        out.extend_from_slice(&hdop.to_le_bytes());
    }
    if !fix.attributes.is_empty() {
        put_attributes(out, &fix.attributes);
    }
}

fn put_status(out: &mut Vec<u8>, status: &DeviceStatus) {
    let presence = flag(status.battery_pct.is_some(), STATUS_BAT)
        | flag(status.charging.is_some(), STATUS_CHARGING_KNOWN)
        | flag(status.charging == Some(true), STATUS_CHARGING)
        | flag(status.alarm.is_some(), STATUS_ALARM)
        | flag(status.motion.is_some(), STATUS_MOTION_KNOWN)
        | flag(status.motion == Some(true), STATUS_MOTION)
        | flag(!status.attributes.is_empty(), STATUS_ATTRIBUTES);
    out.push(presence);
    out.extend_from_slice(&status.time.to_le_bytes());
    if let Some(battery) = status.battery_pct {
        out.extend_from_slice(&battery.to_le_bytes());
    }
    if let Some(alarm) = &status.alarm {
        put_text(out, alarm);
    }
    if !status.attributes.is_empty() {
        put_attributes(out, &status.attributes);
    }
}

fn flag<T: Default>(set: bool, bit: T) -> T {
    if set {
        bit
    } else {
        T::default()
    }
}

/// A length as u32. Nothing ingest builds comes near 4 GiB (requests are capped far below),
/// so a longer one is a programming error, not input.
fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).expect("envelope parts are shorter than 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// The attributes as a JSON object behind their length, serialized in place (no second buffer).
fn put_attributes(out: &mut Vec<u8>, attributes: &BTreeMap<String, Value>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    // Writing JSON values of string keys into a Vec cannot fail.
    serde_json::to_writer(&mut *out, attributes).expect("json values serialize");
    let len = u32::try_from(out.len() - at - 4).expect("attributes are shorter than 4 GiB");
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Read a binary envelope (the caller saw [`MAGIC`]).
pub(super) fn decode(payload: &[u8]) -> Result<FixEnvelope, EnvelopeError> {
    let mut r = Reader {
        buf: payload,
        at: 1,
    };
    let version = r.u8(IN_HEADER)?;
    if u32::from(version) != super::ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion {
            found: u64::from(version),
        });
    }
    let tenant = r.uuid(IN_HEADER)?;
    let device = r.uuid(IN_HEADER)?;
    let rx = r.i64(IN_HEADER)?;
    let proto_at = r.at;
    let proto =
        protocol_of(r.u8(IN_HEADER)?).ok_or_else(|| r.error_at(proto_at, "unknown protocol"))?;
    let flags_at = r.at;
    let flags = r.u8(IN_HEADER)?;
    if flags & !ENVELOPE_HAS_STATUS != 0 {
        return Err(r.error_at(flags_at, "unknown envelope flags"));
    }
    let uid = r.text(IN_UID)?;
    let count = r.u32(IN_HEADER)? as usize;
    // The count is input: never reserve more than the bytes left could hold.
    let mut fixes = Vec::with_capacity(count.min(r.left() / MIN_FIX_BYTES));
    for _ in 0..count {
        fixes.push(r.fix()?);
    }
    let status = if flags & ENVELOPE_HAS_STATUS != 0 {
        Some(r.status()?)
    } else {
        None
    };
    if r.left() != 0 {
        return Err(r.error("trailing bytes after the envelope"));
    }
    Ok(FixEnvelope {
        v: u32::from(version),
        tenant,
        device,
        uid,
        proto,
        rx,
        fixes,
        status,
    })
}

/// A cursor over the payload. Every read checks the length first; `short` is the reason given
/// when the record ends before the read.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.at
    }

    fn error(&self, reason: &'static str) -> EnvelopeError {
        self.error_at(self.at, reason)
    }

    fn error_at(&self, offset: usize, reason: &'static str) -> EnvelopeError {
        EnvelopeError::Binary { offset, reason }
    }

    fn take<const N: usize>(&mut self, short: &'static str) -> Result<[u8; N], EnvelopeError> {
        let bytes = self.bytes(N, short)?;
        Ok(bytes.try_into().expect("bytes() returned N bytes"))
    }

    fn bytes(&mut self, len: usize, short: &'static str) -> Result<&'a [u8], EnvelopeError> {
        if self.left() < len {
            return Err(self.error(short));
        }
        let bytes = &self.buf[self.at..self.at + len];
        self.at += len;
        Ok(bytes)
    }

    fn u8(&mut self, short: &'static str) -> Result<u8, EnvelopeError> {
        Ok(self.take::<1>(short)?[0])
    }

    fn u16(&mut self, short: &'static str) -> Result<u16, EnvelopeError> {
        self.take(short).map(u16::from_le_bytes)
    }

    fn u32(&mut self, short: &'static str) -> Result<u32, EnvelopeError> {
        self.take(short).map(u32::from_le_bytes)
    }

    fn i64(&mut self, short: &'static str) -> Result<i64, EnvelopeError> {
        self.take(short).map(i64::from_le_bytes)
    }

    fn f64(&mut self, short: &'static str) -> Result<f64, EnvelopeError> {
        self.take(short).map(f64::from_le_bytes)
    }

    fn f64_if(&mut self, present: bool, short: &'static str) -> Result<Option<f64>, EnvelopeError> {
        present.then(|| self.f64(short)).transpose()
    }

    fn uuid(&mut self, short: &'static str) -> Result<Uuid, EnvelopeError> {
        self.take(short).map(Uuid::from_bytes)
    }

    fn sized(&mut self, short: &'static str) -> Result<(usize, &'a [u8]), EnvelopeError> {
        let len = self.u32(short)? as usize;
        let at = self.at;
        Ok((at, self.bytes(len, short)?))
    }

    fn text(&mut self, short: &'static str) -> Result<String, EnvelopeError> {
        let (at, bytes) = self.sized(short)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(self.error_at(at, "text is not UTF-8")),
        }
    }

    fn attributes(&mut self) -> Result<BTreeMap<String, Value>, EnvelopeError> {
        let (at, bytes) = self.sized(IN_ATTRIBUTES)?;
        serde_json::from_slice(bytes)
            .map_err(|_| self.error_at(at, "attributes are not a JSON object"))
    }

    fn fix(&mut self) -> Result<Fix, EnvelopeError> {
        let presence_at = self.at;
        let presence = self.u16(IN_FIX)?;
        if presence & !FIX_KNOWN != 0 {
            return Err(self.error_at(presence_at, "unknown fix flags"));
        }
        let has = |bit: u16| presence & bit != 0;
        let mut fix = Fix::new(self.i64(IN_FIX)?, self.f64(IN_FIX)?, self.f64(IN_FIX)?);
        fix.altitude_m = self.f64_if(has(FIX_ALT), IN_FIX)?;
        fix.speed_mps = self.f64_if(has(FIX_SPD), IN_FIX)?;
        fix.heading_deg = self.f64_if(has(FIX_HDG), IN_FIX)?;
        fix.accuracy_m = self.f64_if(has(FIX_ACC), IN_FIX)?;
        fix.battery_pct = self.f64_if(has(FIX_BAT), IN_FIX)?;
        fix.satellites = has(FIX_SAT).then(|| self.u16(IN_FIX)).transpose()?;
        fix.hdop = self.f64_if(has(FIX_HDOP), IN_FIX)?;
        if has(FIX_ATTRIBUTES) {
            fix.attributes = self.attributes()?;
        }
        fix.valid = !has(FIX_INVALID);
        Ok(fix)
    }

    fn status(&mut self) -> Result<DeviceStatus, EnvelopeError> {
        let presence_at = self.at;
        let presence = self.u8(IN_STATUS)?;
        if presence & !STATUS_KNOWN != 0 {
            return Err(self.error_at(presence_at, "unknown status flags"));
        }
        let has = |bit: u8| presence & bit != 0;
        let mut status = DeviceStatus::new(self.i64(IN_STATUS)?);
        status.battery_pct = self.f64_if(has(STATUS_BAT), IN_STATUS)?;
        status.charging = has(STATUS_CHARGING_KNOWN).then_some(has(STATUS_CHARGING));
        status.motion = has(STATUS_MOTION_KNOWN).then_some(has(STATUS_MOTION));
        if has(STATUS_ALARM) {
            status.alarm = Some(self.text(IN_STATUS)?);
        }
        if has(STATUS_ATTRIBUTES) {
            status.attributes = self.attributes()?;
        }
        Ok(status)
    }
}
