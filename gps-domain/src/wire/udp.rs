//! The compact binary UDP datagram (format version 1, documented in `docs/udp.md`): encoder,
//! decoder, HMAC verification and the per-device replay window. Pure; the load generator and
//! ingest share it.
//!
//! Layout (all integers big-endian):
//! ```text
//! 0   2  magic "GP"
//! 2   1  version (1)
//! 3   1  flags (0; reserved)
//! 4  16  device id (UUID bytes, the platform's device id)
//! 20  8  counter (u64, strictly increasing per device)
//! 28  1  fix count n (1..=MAX_FIXES)
//! 29 30n fixes (see FIX_LEN)
//! ..  16  HMAC-SHA256(udp_key, every byte before it), first 16 bytes
//! ```

use crate::fix::{EpochMillis, Fix};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// The two magic bytes that open every datagram.
pub const MAGIC: [u8; 2] = *b"GP";
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Header length: magic, version, flags, device id, counter, fix count.
pub const HEADER_LEN: usize = 2 + 1 + 1 + 16 + 8 + 1;
/// Length of one encoded fix.
pub const FIX_LEN: usize = 8 + 4 + 4 + 4 + 2 + 2 + 2 + 1 + 1 + 2;
/// Length of the truncated HMAC tag (128 bits: ample against forgery, halves the overhead).
pub const TAG_LEN: usize = 16;
/// Largest datagram accepted or written: fits one 1280-byte IPv6 minimum MTU with headers.
pub const MAX_DATAGRAM: usize = 1200;
/// Most fixes one datagram carries.
pub const MAX_FIXES: usize = (MAX_DATAGRAM - HEADER_LEN - TAG_LEN) / FIX_LEN;

const ABSENT_I32: i32 = i32::MIN;
const ABSENT_U16: u16 = u16::MAX;
const ABSENT_U8: u8 = u8::MAX;

type HmacSha256 = Hmac<Sha256>;

/// Why a datagram was refused. [`UdpError::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UdpError {
    /// Shorter than a header plus one fix plus the tag, or the length does not match the count.
    #[error("truncated datagram")]
    Truncated,
    /// Longer than [`MAX_DATAGRAM`].
    #[error("oversized datagram")]
    Oversized,
    /// Does not start with [`MAGIC`].
    #[error("bad magic")]
    BadMagic,
    /// A version this build does not read.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// The HMAC does not match the device's key.
    #[error("bad mac")]
    BadMac,
    /// The counter was seen before or is older than the replay window.
    #[error("replayed counter")]
    Replayed,
    /// Encoding only: a value cannot be represented in the fixed-point field.
    #[error("{field} cannot be encoded: {value}")]
    Unencodable {
        /// The field.
        field: &'static str,
        /// The value.
        value: f64,
    },
    /// Encoding only: zero or more than [`MAX_FIXES`] fixes.
    #[error("a datagram carries 1..={MAX_FIXES} fixes, got {0}")]
    FixCount(usize),
}

impl UdpError {
    /// Stable label for the drop counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Oversized => "oversized",
            Self::BadMagic => "bad_magic",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::BadMac => "bad_mac",
            Self::Replayed => "replayed",
            Self::Unencodable { .. } | Self::FixCount(_) => "unencodable",
        }
    }
}

/// The unauthenticated header: enough to find the device's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Device id.
    pub device: Uuid,
    /// The datagram counter.
    pub counter: u64,
    /// Number of fixes announced.
    pub fix_count: usize,
}

/// A verified datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Datagram {
    /// Device id.
    pub device: Uuid,
    /// The datagram counter.
    pub counter: u64,
    /// The fixes, in order.
    pub fixes: Vec<Fix>,
}

/// Check the framing and read the header. Does not authenticate: call [`open`] with the key.
pub fn parse_header(datagram: &[u8]) -> Result<Header, UdpError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(UdpError::Oversized);
    }
    if datagram.len() < 3 {
        return Err(UdpError::Truncated);
    }
    if datagram[..2] != MAGIC {
        return Err(UdpError::BadMagic);
    }
    if datagram[2] != VERSION {
        return Err(UdpError::UnsupportedVersion(datagram[2]));
    }
    if datagram.len() < HEADER_LEN + FIX_LEN + TAG_LEN {
        return Err(UdpError::Truncated);
    }
    let device = Uuid::from_slice(&datagram[4..20]).map_err(|_| UdpError::Truncated)?;
    let counter = u64::from_be_bytes(
        datagram[20..28]
            .try_into()
            .map_err(|_| UdpError::Truncated)?,
    );
    let fix_count = usize::from(datagram[28]);
    if fix_count == 0 || datagram.len() != HEADER_LEN + fix_count * FIX_LEN + TAG_LEN {
        return Err(UdpError::Truncated);
    }
    Ok(Header {
        device,
        counter,
        fix_count,
    })
}

/// Verify the tag with `key` (constant time) and decode the fixes.
pub fn open(datagram: &[u8], key: &[u8; 32]) -> Result<Datagram, UdpError> {
    let header = parse_header(datagram)?;
    let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| UdpError::BadMac)?;
    mac.update(body);
    mac.verify_truncated_left(tag)
        .map_err(|_| UdpError::BadMac)?;
    let fixes = body[HEADER_LEN..]
        .chunks_exact(FIX_LEN)
        .map(decode_fix)
        .collect();
    Ok(Datagram {
        device: header.device,
        counter: header.counter,
        fixes,
    })
}

/// Encode and sign a datagram of 1..=[`MAX_FIXES`] fixes. Attributes are not carried.
pub fn encode(
    device: Uuid,
    counter: u64,
    fixes: &[Fix],
    key: &[u8; 32],
) -> Result<Vec<u8>, UdpError> {
    if fixes.is_empty() || fixes.len() > MAX_FIXES {
        return Err(UdpError::FixCount(fixes.len()));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + fixes.len() * FIX_LEN + TAG_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(device.as_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    // Bounded by MAX_FIXES (38) above.
    out.push(fixes.len() as u8);
    for fix in fixes {
        encode_fix(fix, &mut out)?;
    }
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| UdpError::BadMac)?;
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&tag[..TAG_LEN]);
    Ok(out)
}

fn fixed_i32(field: &'static str, value: f64, scale: f64) -> Result<i32, UdpError> {
    let scaled = (value * scale).round();
    if value.is_finite() && scaled > f64::from(i32::MIN) && scaled <= f64::from(i32::MAX) {
        Ok(scaled as i32)
    } else {
        Err(UdpError::Unencodable { field, value })
    }
}

fn fixed_u16(field: &'static str, value: Option<f64>, scale: f64) -> Result<u16, UdpError> {
    let Some(value) = value else {
        return Ok(ABSENT_U16);
    };
    let scaled = (value * scale).round();
    if value.is_finite() && scaled >= 0.0 && scaled < f64::from(ABSENT_U16) {
        Ok(scaled as u16)
    } else {
        Err(UdpError::Unencodable { field, value })
    }
}

fn encode_fix(fix: &Fix, out: &mut Vec<u8>) -> Result<(), UdpError> {
    out.extend_from_slice(&fix.fix_time.to_be_bytes());
    out.extend_from_slice(&fixed_i32("lat", fix.lat, 1e7)?.to_be_bytes());
    out.extend_from_slice(&fixed_i32("lon", fix.lon, 1e7)?.to_be_bytes());
    let altitude = match fix.altitude_m {
        Some(v) => fixed_i32("altitude", v, 100.0)?,
        None => ABSENT_I32,
    };
    out.extend_from_slice(&altitude.to_be_bytes());
    out.extend_from_slice(&fixed_u16("speed", fix.speed_mps, 100.0)?.to_be_bytes());
    out.extend_from_slice(&fixed_u16("heading", fix.heading_deg, 100.0)?.to_be_bytes());
    out.extend_from_slice(&fixed_u16("accuracy", fix.accuracy_m, 10.0)?.to_be_bytes());
    let battery = match fix.battery_pct {
        Some(v) if v.is_finite() && (0.0..=254.0).contains(&v.round()) => v.round() as u8,
        Some(v) => {
            return Err(UdpError::Unencodable {
                field: "battery",
                value: v,
            })
        }
        None => ABSENT_U8,
    };
    out.push(battery);
    let satellites = match fix.satellites {
        Some(n) if n < u16::from(ABSENT_U8) => n as u8,
        Some(n) => {
            return Err(UdpError::Unencodable {
                field: "satellites",
                value: f64::from(n),
            })
        }
        None => ABSENT_U8,
    };
    out.push(satellites);
    out.extend_from_slice(&fixed_u16("hdop", fix.hdop, 100.0)?.to_be_bytes());
    Ok(())
}

fn decode_fix(bytes: &[u8]) -> Fix {
    // `bytes` is exactly FIX_LEN long (chunks_exact), so every slice below is in bounds.
    let i64_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let i32_at = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let u16_at = |at: usize| u16::from_be_bytes(bytes[at..at + 2].try_into().unwrap_or([0; 2]));
    let opt_u16 = |at: usize, scale: f64| {
        let v = u16_at(at);
        (v != ABSENT_U16).then(|| f64::from(v) / scale)
    };
    let fix_time: EpochMillis = i64_at(0);
    let mut fix = Fix::new(
        fix_time,
        f64::from(i32_at(8)) / 1e7,
        f64::from(i32_at(12)) / 1e7,
    );
    let altitude = i32_at(16);
    fix.altitude_m = (altitude != ABSENT_I32).then(|| f64::from(altitude) / 100.0);
    fix.speed_mps = opt_u16(20, 100.0);
    fix.heading_deg = opt_u16(22, 100.0);
    fix.accuracy_m = opt_u16(24, 10.0);
    fix.battery_pct = (bytes[26] != ABSENT_U8).then(|| f64::from(bytes[26]));
    fix.satellites = (bytes[27] != ABSENT_U8).then(|| u16::from(bytes[27]));
    fix.hdop = opt_u16(28, 100.0);
    fix
}

/// Width of the replay window in counters.
pub const REPLAY_WINDOW: u64 = 128;

/// Per-device anti-replay state: the highest counter accepted and a bitmap of the
/// [`REPLAY_WINDOW`] counters below it (RFC 4303 §3.4.3, as IPsec and WireGuard do). Datagrams
/// may arrive out of order within the window; each counter is accepted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: Option<u64>,
    /// Bit i set = counter `highest - i` was accepted.
    seen: u128,
}

impl ReplayWindow {
    /// An empty window: the first counter seen is accepted.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest counter accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Whether `counter` would be accepted, without recording it.
    pub fn check(&self, counter: u64) -> Result<(), UdpError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        let age = highest - counter;
        if age >= REPLAY_WINDOW || self.seen & (1u128 << age) != 0 {
            return Err(UdpError::Replayed);
        }
        Ok(())
    }

    /// Record `counter` if it is fresh. Call only after the datagram's MAC verified, so that a
    /// forged counter cannot advance the window.
    pub fn accept(&mut self, counter: u64) -> Result<(), UdpError> {
        self.check(counter)?;
        match self.highest {
            Some(highest) if counter <= highest => {
                self.seen |= 1u128 << (highest - counter);
            }
            Some(highest) => {
                let shift = counter - highest;
                self.seen = if shift >= REPLAY_WINDOW {
                    0
                } else {
                    self.seen << shift
                };
                self.seen |= 1;
                self.highest = Some(counter);
            }
            None => {
                self.seen = 1;
                self.highest = Some(counter);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [7; 32];

    fn full_fix() -> Fix {
        let mut fix = Fix::new(1_700_000_000_123, 52.520_008_1, -13.404_954_4);
        fix.altitude_m = Some(-34.56);
        fix.speed_mps = Some(12.34);
        fix.heading_deg = Some(359.99);
        fix.accuracy_m = Some(4.5);
        fix.battery_pct = Some(88.0);
        fix.satellites = Some(9);
        fix.hdop = Some(0.92);
        fix
    }

    #[test]
    fn sizes_fit_one_mtu() {
        assert_eq!(HEADER_LEN, 29);
        assert_eq!(FIX_LEN, 30);
        assert_eq!(MAX_FIXES, 38);
        let fixes = vec![full_fix(); MAX_FIXES];
        let bytes = encode(Uuid::nil(), 1, &fixes, &KEY).unwrap();
        assert!(bytes.len() <= MAX_DATAGRAM);
        assert_eq!(
            encode(Uuid::nil(), 1, &vec![full_fix(); MAX_FIXES + 1], &KEY),
            Err(UdpError::FixCount(MAX_FIXES + 1))
        );
        assert_eq!(
            encode(Uuid::nil(), 1, &[], &KEY),
            Err(UdpError::FixCount(0))
        );
    }

    #[test]
    fn round_trips_every_field_within_resolution() {
        let device = Uuid::new_v4();
        let sparse = Fix::new(5, 0.0, 0.0);
        let bytes = encode(device, 42, &[full_fix(), sparse.clone()], &KEY).unwrap();
        let header = parse_header(&bytes).unwrap();
        assert_eq!(
            (header.device, header.counter, header.fix_count),
            (device, 42, 2)
        );
        let datagram = open(&bytes, &KEY).unwrap();
        assert_eq!(datagram.device, device);
        assert_eq!(datagram.counter, 42);
        let got = &datagram.fixes[0];
        let want = full_fix();
        assert_eq!(got.fix_time, want.fix_time);
        assert!((got.lat - want.lat).abs() < 1e-7);
        assert!((got.lon - want.lon).abs() < 1e-7);
        assert!((got.altitude_m.unwrap() - -34.56).abs() < 0.006);
        assert!((got.speed_mps.unwrap() - 12.34).abs() < 0.006);
        assert!((got.heading_deg.unwrap() - 359.99).abs() < 0.006);
        assert!((got.accuracy_m.unwrap() - 4.5).abs() < 0.06);
        assert_eq!(got.battery_pct, Some(88.0));
        assert_eq!(got.satellites, Some(9));
        assert!((got.hdop.unwrap() - 0.92).abs() < 0.006);
        assert_eq!(datagram.fixes[1], sparse);
    }

    #[test]
    fn refuses_forged_truncated_and_foreign_datagrams() {
        let bytes = encode(Uuid::new_v4(), 1, &[full_fix()], &KEY).unwrap();
        assert_eq!(open(&bytes, &[8; 32]), Err(UdpError::BadMac));
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert_eq!(open(&flipped, &KEY), Err(UdpError::BadMac));
        assert_eq!(
            open(&bytes[..bytes.len() - 1], &KEY),
            Err(UdpError::Truncated)
        );
        assert_eq!(open(&bytes[..10], &KEY), Err(UdpError::Truncated));
        assert_eq!(open(&[], &KEY), Err(UdpError::Truncated));
        let mut other = bytes.clone();
        other[2] = 9;
        assert_eq!(open(&other, &KEY), Err(UdpError::UnsupportedVersion(9)));
        other[0] = b'X';
        assert_eq!(open(&other, &KEY), Err(UdpError::BadMagic));
        assert_eq!(open(&[b'G'; 1201], &KEY), Err(UdpError::Oversized));
        let mut zero_count = bytes;
        zero_count[28] = 0;
        assert_eq!(open(&zero_count, &KEY), Err(UdpError::Truncated));
    }

    #[test]
    fn unencodable_values_are_refused() {
        let mut fix = full_fix();
        fix.lat = f64::NAN;
        assert!(matches!(
            encode(Uuid::nil(), 1, &[fix], &KEY),
            Err(UdpError::Unencodable { field: "lat", .. })
        ));
        let mut fix = full_fix();
        fix.speed_mps = Some(1e6);
        assert!(encode(Uuid::nil(), 1, &[fix], &KEY).is_err());
    }

    #[test]
    fn replay_window_accepts_each_counter_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.accept(10), Ok(()));
        assert_eq!(w.accept(10), Err(UdpError::Replayed));
        assert_eq!(w.accept(12), Ok(()));
        assert_eq!(w.accept(11), Ok(()), "out of order within the window");
        assert_eq!(w.accept(11), Err(UdpError::Replayed));
        assert_eq!(w.accept(12 + REPLAY_WINDOW), Ok(()));
        assert_eq!(
            w.accept(12),
            Err(UdpError::Replayed),
            "fell out of the window"
        );
        assert_eq!(w.accept(13), Ok(()), "the oldest counter inside the window");
        assert_eq!(w.accept(u64::MAX), Ok(()));
        assert_eq!(w.accept(u64::MAX), Err(UdpError::Replayed));
        assert_eq!(w.highest(), Some(u64::MAX));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
            let _ = parse_header(&bytes);
            let _ = open(&bytes, &KEY);
        }

        #[test]
        fn mutated_datagrams_never_verify(at in 0usize..(HEADER_LEN + FIX_LEN + TAG_LEN), bit in 0u8..8) {
            let bytes = encode(Uuid::new_v4(), 7, &[full_fix()], &KEY).unwrap();
            let mut mutated = bytes.clone();
            mutated[at] ^= 1 << bit;
            prop_assert!(open(&mutated, &KEY).is_err());
        }

        #[test]
        fn window_never_accepts_twice(counters in proptest::collection::vec(0u64..300, 1..200)) {
            let mut w = ReplayWindow::new();
            let mut accepted = std::collections::HashSet::new();
            for c in counters {
                if w.accept(c).is_ok() {
                    prop_assert!(accepted.insert(c), "counter {} accepted twice", c);
                }
            }
        }

        #[test]
        fn lat_lon_round_trip(lat in -90.0f64..90.0, lon in -180.0f64..180.0, t in any::<i64>()) {
            let fix = Fix::new(t, lat, lon);
            let d = open(&encode(Uuid::nil(), 1, &[fix], &KEY).unwrap(), &KEY).unwrap();
            prop_assert_eq!(d.fixes[0].fix_time, t);
            prop_assert!((d.fixes[0].lat - lat).abs() <= 0.5e-7 + 1e-12);
            prop_assert!((d.fixes[0].lon - lon).abs() <= 0.5e-7 + 1e-12);
        }
    }
}
