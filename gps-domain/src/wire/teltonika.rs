//! Teltonika Codec 8 (`0x08`) and Codec 8 Extended (`0x8E`), the protocol of the FMB/FMC/FMM
//! vehicle trackers: the TCP framing with its IMEI handshake, the UDP framing, the AVL records
//! with their IO elements, the acknowledgements the device waits for, and the mapping of a
//! record to a [`Fix`] and a [`DeviceStatus`]. Pure and panic-free on any input; decoding borrows
//! from the input (variable-length IO values are slices) and allocates one `Vec` per record.
//!
//! Layouts (big-endian; Teltonika's "Data Sending Protocols" wiki page, checked against
//! traccar/traccar `TeltonikaProtocolDecoder.java`):
//! ```text
//! TCP handshake  u16 IMEI length, ASCII IMEI            server answers 0x01 accept / 0x00 reject
//! TCP frame      u32 0 (preamble), u32 data length, data, u32 CRC-16/IBM of data (upper half 0)
//!                server answers u32 number of records accepted
//! UDP datagram   u16 length of the rest, u16 packet id, u8 packet type (0x01), u8 AVL packet id,
//!                u16 IMEI length, IMEI, data (no CRC)
//!                server answers 00 05, packet id, 01, AVL packet id, u8 records accepted
//! data           u8 codec, u8 record count, records, u8 record count (again)
//! record         u64 time (UTC ms), u8 priority, i32 lon (1e-7 deg), i32 lat, i16 altitude (m),
//!                u16 angle (deg), u8 satellites, u16 speed (km/h), IO
//! IO, Codec 8    u8 event IO id, u8 total, then for widths 1, 2, 4, 8: u8 count, count x (u8 id, value)
//! IO, Codec 8E   the same with u16 ids and counts, then u16 count x (u16 id, u16 length, bytes)
//! ```

use super::{MAX_ATTRIBUTES, MAX_ATTRIBUTE_VALUE};
use crate::fix::{units, EpochMillis, Fix};
use crate::status::DeviceStatus;
use serde_json::Value;

/// Bytes before the data field of a TCP frame: the zero preamble and the data length.
pub const TCP_HEADER_LEN: usize = 8;
/// Bytes after the data field of a TCP frame: the CRC field.
pub const TCP_TRAILER_LEN: usize = 4;
/// Largest data field accepted anywhere (a UDP datagram cannot carry more either).
pub const MAX_DATA_LEN: usize = 65_535;
/// Longest IMEI accepted (an IMEI has 15 digits; some units send 16).
pub const MAX_IMEI_LEN: usize = 20;
/// The one byte a device may send on an idle TCP link to keep it open (FMB "ping").
pub const KEEP_ALIVE: u8 = 0xFF;
/// Shortest possible record: time, priority, GPS element and the smallest IO header.
const MIN_RECORD_LEN: usize = 8 + 1 + 15 + 6;

/// The two codecs read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Codec 8: one-byte IO ids and counts.
    Codec8,
    /// Codec 8 Extended: two-byte IO ids and counts, and variable-length IO values.
    Codec8Extended,
}

impl Codec {
    /// The codec id byte.
    pub fn id(self) -> u8 {
        match self {
            Self::Codec8 => 0x08,
            Self::Codec8Extended => 0x8E,
        }
    }

    /// The codec of an id byte, if it is one of the two.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0x08 => Some(Self::Codec8),
            0x8E => Some(Self::Codec8Extended),
            _ => None,
        }
    }

    fn extended(self) -> bool {
        self == Self::Codec8Extended
    }
}

/// Why bytes were refused. [`TeltonikaError::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeltonikaError {
    /// The input ends inside `field`.
    #[error("truncated at {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A TCP frame does not start with four zero bytes.
    #[error("bad preamble")]
    BadPreamble,
    /// A data field longer than the cap.
    #[error("data field of {len} bytes exceeds the cap of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A codec other than 8 and 8 Extended (Codec 16, command codecs 12/13/14).
    #[error("unsupported codec 0x{0:02x}")]
    UnsupportedCodec(u8),
    /// The CRC does not match the data field.
    #[error("crc mismatch: frame says {sent:#06x}, data gives {computed:#06x}")]
    BadCrc {
        /// The CRC field.
        sent: u32,
        /// CRC-16/IBM of the data field.
        computed: u16,
    },
    /// The two record counts of the data field differ.
    #[error("record counts differ: {first} and {second}")]
    CountMismatch {
        /// Number of Data 1.
        first: u8,
        /// Number of Data 2.
        second: u8,
    },
    /// A length field disagrees with the bytes present.
    #[error("{field} says {declared} bytes, {actual} present")]
    LengthMismatch {
        /// The length field.
        field: &'static str,
        /// What it says.
        declared: usize,
        /// What is there.
        actual: usize,
    },
    /// An IMEI that is empty, too long or not ASCII digits.
    #[error("bad imei")]
    BadImei,
    /// A value outside what the fix can hold (a time past year 292 million).
    #[error("{field} out of range")]
    OutOfRange {
        /// The field.
        field: &'static str,
    },
    /// Encoding only: a value the codec cannot carry.
    #[error("{field} cannot be encoded in this codec")]
    Unencodable {
        /// The field.
        field: &'static str,
    },
}

impl TeltonikaError {
    /// Stable label for the refusal counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::BadPreamble => "bad_preamble",
            Self::TooLarge { .. } => "too_large",
            Self::UnsupportedCodec(_) => "unsupported_codec",
            Self::BadCrc { .. } => "bad_crc",
            Self::CountMismatch { .. } => "count_mismatch",
            Self::LengthMismatch { .. } => "length_mismatch",
            Self::BadImei => "bad_imei",
            Self::OutOfRange { .. } => "out_of_range",
            Self::Unencodable { .. } => "unencodable",
        }
    }
}

/// One IO element value, as wide as the device sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoValue<'a> {
    /// A one-byte value.
    U8(u8),
    /// A two-byte value.
    U16(u16),
    /// A four-byte value.
    U32(u32),
    /// An eight-byte value.
    U64(u64),
    /// A variable-length value (Codec 8 Extended only).
    Bytes(&'a [u8]),
}

impl IoValue<'_> {
    /// The value as an unsigned number (`None` for bytes).
    pub fn number(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(u64::from(v)),
            Self::U16(v) => Some(u64::from(v)),
            Self::U32(v) => Some(u64::from(v)),
            Self::U64(v) => Some(v),
            Self::Bytes(_) => None,
        }
    }

    /// Order of the width groups on the wire.
    fn width_rank(&self) -> u8 {
        match self {
            Self::U8(_) => 0,
            Self::U16(_) => 1,
            Self::U32(_) => 2,
            Self::U64(_) => 3,
            Self::Bytes(_) => 4,
        }
    }
}

/// One IO element: the AVL id and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoElement<'a> {
    /// The AVL property id (FMB list: 239 ignition, 240 movement, 66 external voltage, ...).
    pub id: u16,
    /// Its value.
    pub value: IoValue<'a>,
}

/// One AVL record, as the device sent it (no unit conversion yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvlRecord<'a> {
    /// Record time, UTC ms since the epoch.
    pub time_ms: EpochMillis,
    /// 0 low, 1 high, 2 panic.
    pub priority: u8,
    /// Longitude, 1e-7 degrees.
    pub lon_e7: i32,
    /// Latitude, 1e-7 degrees.
    pub lat_e7: i32,
    /// Altitude, metres.
    pub altitude_m: i16,
    /// Heading, degrees from north.
    pub angle_deg: u16,
    /// Satellites in use; 0 means no GNSS fix (the position is the last known one).
    pub satellites: u8,
    /// Ground speed, km/h.
    pub speed_kmh: u16,
    /// The IO id whose change made the record (0: periodic).
    pub event_io: u16,
    /// The IO elements, grouped by width as on the wire.
    pub io: Vec<IoElement<'a>>,
}

/// The data field of a frame: its codec and records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvlPacket<'a> {
    /// The codec.
    pub codec: Codec,
    /// The records, in the order sent (a device sends its oldest first).
    pub records: Vec<AvlRecord<'a>>,
}

/// A decoded UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<'a> {
    /// Channel packet id, echoed in the acknowledgement.
    pub packet_id: u16,
    /// Packet type byte (0x01 on every device seen; not checked).
    pub packet_type: u8,
    /// AVL packet id, echoed in the acknowledgement.
    pub avl_packet_id: u8,
    /// The device's IMEI.
    pub imei: &'a str,
    /// The records.
    pub avl: AvlPacket<'a>,
}

/// What the start of a TCP receive buffer holds once the handshake is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpChunk {
    /// Not enough bytes yet to know.
    NeedMore,
    /// One keep-alive byte ([`KEEP_ALIVE`]); skip it.
    KeepAlive,
    /// A frame of this many bytes in total (header, data and CRC) starts here; it may not be
    /// complete yet.
    Frame(usize),
}

/// CRC-16/IBM (ARC: polynomial 0x8005 reflected, initial value 0), as Teltonika computes it
/// over the data field.
pub fn crc16_ibm(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &byte| {
        CRC_TABLE[usize::from((crc ^ u16::from(byte)) & 0xFF)] ^ (crc >> 8)
    })
}

const CRC_TABLE: [u16; 256] = crc_table();

const fn crc_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// A bounds-checked big-endian cursor: every read is a `Result`, none can panic.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TeltonikaError> {
        let slice = self
            .at
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or(TeltonikaError::Truncated { field })?;
        self.at += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], TeltonikaError> {
        self.take(N, field)?
            .try_into()
            .map_err(|_| TeltonikaError::Truncated { field })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, TeltonikaError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, TeltonikaError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, TeltonikaError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, TeltonikaError> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// One byte in Codec 8, two in Codec 8 Extended (IO ids and counts).
    fn wide(&mut self, codec: Codec, field: &'static str) -> Result<u16, TeltonikaError> {
        if codec.extended() {
            self.u16(field)
        } else {
            self.u8(field).map(u16::from)
        }
    }
}

/// Read the TCP handshake (u16 length, ASCII IMEI) at the start of `buf`: `None` while
/// incomplete, else the IMEI and the bytes it took.
pub fn parse_imei(buf: &[u8]) -> Result<Option<(&str, usize)>, TeltonikaError> {
    let Some(len) = buf
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return Ok(None);
    };
    if len == 0 || len > MAX_IMEI_LEN {
        return Err(TeltonikaError::BadImei);
    }
    let Some(imei) = buf.get(2..2 + len) else {
        // Refuse early what can never become an IMEI.
        return if buf[2..].iter().all(u8::is_ascii_digit) {
            Ok(None)
        } else {
            Err(TeltonikaError::BadImei)
        };
    };
    Ok(Some((imei_text(imei)?, 2 + len)))
}

fn imei_text(bytes: &[u8]) -> Result<&str, TeltonikaError> {
    if bytes.is_empty() || bytes.len() > MAX_IMEI_LEN || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(TeltonikaError::BadImei);
    }
    std::str::from_utf8(bytes).map_err(|_| TeltonikaError::BadImei)
}

/// Look at the start of a TCP receive buffer after the handshake: a keep-alive byte, a frame
/// (its total length, checked against `max_data_len`), or not enough bytes to tell.
pub fn tcp_chunk(buf: &[u8], max_data_len: usize) -> Result<TcpChunk, TeltonikaError> {
    match buf.first() {
        None => return Ok(TcpChunk::NeedMore),
        Some(&KEEP_ALIVE) => return Ok(TcpChunk::KeepAlive),
        Some(_) => {}
    }
    // Refuse a wrong preamble as soon as its first bytes are in.
    if buf.iter().take(4).any(|&b| b != 0) {
        return Err(TeltonikaError::BadPreamble);
    }
    let Some(len) = buf.get(4..8) else {
        return Ok(TcpChunk::NeedMore);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let max = max_data_len.min(MAX_DATA_LEN);
    if len > max {
        return Err(TeltonikaError::TooLarge { len, max });
    }
    Ok(TcpChunk::Frame(TCP_HEADER_LEN + len + TCP_TRAILER_LEN))
}

/// Decode one complete TCP frame (preamble, length, data, CRC), checking the CRC.
pub fn decode_tcp_frame(frame: &[u8]) -> Result<AvlPacket<'_>, TeltonikaError> {
    let mut reader = Reader::new(frame);
    if reader.u32("preamble")? != 0 {
        return Err(TeltonikaError::BadPreamble);
    }
    let declared = reader.u32("data length")? as usize;
    if declared > MAX_DATA_LEN {
        return Err(TeltonikaError::TooLarge {
            len: declared,
            max: MAX_DATA_LEN,
        });
    }
    let actual = reader.remaining().saturating_sub(TCP_TRAILER_LEN);
    if declared != actual || reader.remaining() < TCP_TRAILER_LEN {
        return Err(TeltonikaError::LengthMismatch {
            field: "data length",
            declared,
            actual,
        });
    }
    let data = reader.take(declared, "data")?;
    let sent = reader.u32("crc")?;
    let computed = crc16_ibm(data);
    if sent != u32::from(computed) {
        return Err(TeltonikaError::BadCrc { sent, computed });
    }
    decode_avl(data)
}

/// Decode one UDP datagram (header, IMEI, data field; UDP carries no CRC).
pub fn decode_udp(datagram: &[u8]) -> Result<UdpPacket<'_>, TeltonikaError> {
    let mut reader = Reader::new(datagram);
    let declared = usize::from(reader.u16("packet length")?);
    if declared != reader.remaining() {
        return Err(TeltonikaError::LengthMismatch {
            field: "packet length",
            declared,
            actual: reader.remaining(),
        });
    }
    let packet_id = reader.u16("packet id")?;
    let packet_type = reader.u8("packet type")?;
    let avl_packet_id = reader.u8("avl packet id")?;
    let imei_len = usize::from(reader.u16("imei length")?);
    if imei_len > MAX_IMEI_LEN {
        return Err(TeltonikaError::BadImei);
    }
    let imei = imei_text(reader.take(imei_len, "imei")?)?;
    let data = reader.take(reader.remaining(), "data")?;
    Ok(UdpPacket {
        packet_id,
        packet_type,
        avl_packet_id,
        imei,
        avl: decode_avl(data)?,
    })
}

/// Decode a data field: codec, count, records, count; every byte must be used.
pub fn decode_avl(data: &[u8]) -> Result<AvlPacket<'_>, TeltonikaError> {
    let mut reader = Reader::new(data);
    let codec_id = reader.u8("codec id")?;
    let codec = Codec::from_id(codec_id).ok_or(TeltonikaError::UnsupportedCodec(codec_id))?;
    let first = reader.u8("record count")?;
    // Never reserve more than the bytes present could hold.
    let mut records =
        Vec::with_capacity(usize::from(first).min(reader.remaining() / MIN_RECORD_LEN));
    for _ in 0..first {
        records.push(decode_record(&mut reader, codec)?);
    }
    let second = reader.u8("record count 2")?;
    if first != second {
        return Err(TeltonikaError::CountMismatch { first, second });
    }
    if reader.remaining() != 0 {
        return Err(TeltonikaError::LengthMismatch {
            field: "data field",
            declared: reader.at,
            actual: data.len(),
        });
    }
    Ok(AvlPacket { codec, records })
}

fn decode_record<'a>(
    reader: &mut Reader<'a>,
    codec: Codec,
) -> Result<AvlRecord<'a>, TeltonikaError> {
    let time_ms = i64::try_from(reader.u64("timestamp")?)
        .map_err(|_| TeltonikaError::OutOfRange { field: "timestamp" })?;
    let priority = reader.u8("priority")?;
    let lon_e7 = i32::from_be_bytes(reader.array("longitude")?);
    let lat_e7 = i32::from_be_bytes(reader.array("latitude")?);
    let altitude_m = i16::from_be_bytes(reader.array("altitude")?);
    let angle_deg = reader.u16("angle")?;
    let satellites = reader.u8("satellites")?;
    let speed_kmh = reader.u16("speed")?;
    let event_io = reader.wide(codec, "event io id")?;
    let total = reader.wide(codec, "io count")?;
    // The total is advisory (Traccar ignores it too); it only sizes the vector, capped by
    // what the remaining bytes could hold (2 bytes per element at least).
    let mut io = Vec::with_capacity(usize::from(total).min(reader.remaining() / 2));
    for width in [1usize, 2, 4, 8] {
        let count = reader.wide(codec, "io group count")?;
        for _ in 0..count {
            let id = reader.wide(codec, "io id")?;
            let value = match width {
                1 => IoValue::U8(reader.u8("io value")?),
                2 => IoValue::U16(reader.u16("io value")?),
                4 => IoValue::U32(reader.u32("io value")?),
                _ => IoValue::U64(reader.u64("io value")?),
            };
            io.push(IoElement { id, value });
        }
    }
    if codec.extended() {
        let count = reader.u16("io nx count")?;
        for _ in 0..count {
            let id = reader.u16("io id")?;
            let len = usize::from(reader.u16("io length")?);
            io.push(IoElement {
                id,
                value: IoValue::Bytes(reader.take(len, "io value")?),
            });
        }
    }
    Ok(AvlRecord {
        time_ms,
        priority,
        lon_e7,
        lat_e7,
        altitude_m,
        angle_deg,
        satellites,
        speed_kmh,
        event_io,
        io,
    })
}

/// The TCP handshake reply: accept (`0x01`) or reject (`0x00`) the IMEI.
pub fn handshake_reply(accepted: bool) -> [u8; 1] {
    [u8::from(accepted)]
}

/// The TCP acknowledgement: how many records of the frame the server took.
pub fn tcp_ack(accepted: u32) -> [u8; 4] {
    accepted.to_be_bytes()
}

/// The UDP acknowledgement: length 5, the packet id, `0x01`, the AVL packet id and how many
/// records the server took.
pub fn udp_ack(packet_id: u16, avl_packet_id: u8, accepted: u8) -> [u8; 7] {
    let [hi, lo] = packet_id.to_be_bytes();
    [0x00, 0x05, hi, lo, 0x01, avl_packet_id, accepted]
}

// ---------------------------------------------------------------------------------------------
// Encoder (tests, benches and the load generator speak to ingest like a device).

/// The TCP handshake a device sends: u16 length and the ASCII IMEI.
pub fn encode_imei(imei: &str) -> Result<Vec<u8>, TeltonikaError> {
    let bytes = imei_text(imei.as_bytes())?.as_bytes();
    let mut out = Vec::with_capacity(2 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(out)
}

/// Encode a data field (codec, count, records, count).
pub fn encode_avl(codec: Codec, records: &[AvlRecord<'_>]) -> Result<Vec<u8>, TeltonikaError> {
    let count = u8::try_from(records.len()).map_err(|_| TeltonikaError::Unencodable {
        field: "record count",
    })?;
    let mut out = Vec::with_capacity(2 + records.len() * 64);
    out.push(codec.id());
    out.push(count);
    for record in records {
        encode_record(codec, record, &mut out)?;
    }
    out.push(count);
    if out.len() > MAX_DATA_LEN {
        return Err(TeltonikaError::Unencodable {
            field: "data field",
        });
    }
    Ok(out)
}

/// Encode a whole TCP frame: preamble, length, data field, CRC.
pub fn encode_tcp(codec: Codec, records: &[AvlRecord<'_>]) -> Result<Vec<u8>, TeltonikaError> {
    let data = encode_avl(codec, records)?;
    let mut out = Vec::with_capacity(TCP_HEADER_LEN + data.len() + TCP_TRAILER_LEN);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&data);
    out.extend_from_slice(&u32::from(crc16_ibm(&data)).to_be_bytes());
    Ok(out)
}

/// Encode a UDP datagram.
pub fn encode_udp(
    packet_id: u16,
    avl_packet_id: u8,
    imei: &str,
    codec: Codec,
    records: &[AvlRecord<'_>],
) -> Result<Vec<u8>, TeltonikaError> {
    let imei = encode_imei(imei)?;
    let data = encode_avl(codec, records)?;
    let rest = 2 + 1 + 1 + imei.len() + data.len();
    let length = u16::try_from(rest).map_err(|_| TeltonikaError::Unencodable {
        field: "packet length",
    })?;
    let mut out = Vec::with_capacity(2 + rest);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.push(0x01);
    out.push(avl_packet_id);
    out.extend_from_slice(&imei);
    out.extend_from_slice(&data);
    Ok(out)
}

fn put_wide(
    codec: Codec,
    value: usize,
    field: &'static str,
    out: &mut Vec<u8>,
) -> Result<(), TeltonikaError> {
    let unencodable = || TeltonikaError::Unencodable { field };
    if codec.extended() {
        out.extend_from_slice(
            &u16::try_from(value)
                .map_err(|_| unencodable())?
                .to_be_bytes(),
        );
    } else {
        out.push(u8::try_from(value).map_err(|_| unencodable())?);
    }
    Ok(())
}

fn encode_record(
    codec: Codec,
    record: &AvlRecord<'_>,
    out: &mut Vec<u8>,
) -> Result<(), TeltonikaError> {
    let time = u64::try_from(record.time_ms)
        .map_err(|_| TeltonikaError::Unencodable { field: "timestamp" })?;
    out.extend_from_slice(&time.to_be_bytes());
    out.push(record.priority);
    out.extend_from_slice(&record.lon_e7.to_be_bytes());
    out.extend_from_slice(&record.lat_e7.to_be_bytes());
    out.extend_from_slice(&record.altitude_m.to_be_bytes());
    out.extend_from_slice(&record.angle_deg.to_be_bytes());
    out.push(record.satellites);
    out.extend_from_slice(&record.speed_kmh.to_be_bytes());
    put_wide(codec, usize::from(record.event_io), "event io id", out)?;
    let fixed = record
        .io
        .iter()
        .filter(|e| e.value.width_rank() < 4)
        .count();
    put_wide(codec, fixed, "io count", out)?;
    for rank in 0..4u8 {
        let group = || {
            record
                .io
                .iter()
                .filter(move |e| e.value.width_rank() == rank)
        };
        put_wide(codec, group().count(), "io group count", out)?;
        for element in group() {
            put_wide(codec, usize::from(element.id), "io id", out)?;
            match element.value {
                IoValue::U8(v) => out.push(v),
                IoValue::U16(v) => out.extend_from_slice(&v.to_be_bytes()),
                IoValue::U32(v) => out.extend_from_slice(&v.to_be_bytes()),
                IoValue::U64(v) => out.extend_from_slice(&v.to_be_bytes()),
                IoValue::Bytes(_) => {}
            }
        }
    }
    let variable: Vec<_> = record
        .io
        .iter()
        .filter(|e| e.value.width_rank() == 4)
        .collect();
    if codec.extended() {
        put_wide(codec, variable.len(), "io nx count", out)?;
        for element in variable {
            if let IoValue::Bytes(bytes) = element.value {
                out.extend_from_slice(&element.id.to_be_bytes());
                let len = u16::try_from(bytes.len())
                    .map_err(|_| TeltonikaError::Unencodable { field: "io length" })?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
    } else if !variable.is_empty() {
        return Err(TeltonikaError::Unencodable {
            field: "variable-length io",
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mapping to the domain.

/// How a known IO element's raw value becomes an attribute.
#[derive(Debug, Clone, Copy)]
enum IoKind {
    /// 0 false, anything else true.
    Flag,
    /// The number as sent.
    Count,
    /// The number times a factor (millivolts to volts, tenths to units).
    Scaled(f64),
}

/// The IO elements with a name (Teltonika's FMB AVL ID list; the names are this platform's,
/// snake_case with the unit last). Every other element is kept as `io<ID>`.
pub const KNOWN_IO: &[(u16, &str)] = &[
    (239, "ignition"),
    (240, "motion"),
    (1, "din1"),
    (2, "din2"),
    (3, "din3"),
    (4, "din4"),
    (179, "dout1"),
    (180, "dout2"),
    (66, "external_voltage_v"),
    (67, "battery_voltage_v"),
    (68, "battery_current_a"),
    (113, "battery_pct"),
    (16, "odometer_m"),
    (199, "trip_odometer_m"),
    (21, "gsm_signal"),
    (69, "gnss_status"),
    (181, "pdop"),
    (182, "hdop"),
    (9, "ain1_v"),
    (80, "data_mode"),
    (200, "sleep_mode"),
    (241, "gsm_operator"),
    (205, "gsm_cell_id"),
    (206, "gsm_area_code"),
    (256, "vin"),
    (281, "dtcs"),
];

fn io_kind(id: u16) -> IoKind {
    match id {
        239 | 240 | 1..=4 | 179 | 180 => IoKind::Flag,
        66 | 67 | 68 | 9 => IoKind::Scaled(0.001),
        181 | 182 => IoKind::Scaled(0.1),
        _ => IoKind::Count,
    }
}

/// The alarm an IO element raises, if it is an alarm element with a non-zero value: 236 the
/// alarm/panic button, 246 towing, 247 crash, 249 GNSS jamming, 252 external power cut
/// (unplug), 253 green driving (1 acceleration, 2 braking, 3 cornering), 255 over speeding.
pub fn alarm_of(id: u16, value: u64) -> Option<&'static str> {
    if value == 0 {
        return None;
    }
    Some(match (id, value) {
        (236, _) => "panic",
        (246, _) => "tow",
        (247, _) => "crash",
        (249, _) => "jamming",
        (252, _) => "power_cut",
        (253, 1) => "hard_acceleration",
        (253, 2) => "hard_braking",
        (253, 3) => "hard_cornering",
        (255, _) => "overspeed",
        _ => return None,
    })
}

fn known_name(id: u16) -> Option<&'static str> {
    KNOWN_IO
        .iter()
        .find(|(known, _)| *known == id)
        .map(|(_, name)| *name)
}

fn attribute_value(id: u16, value: &IoValue<'_>) -> Option<Value> {
    let named = known_name(id).is_some();
    match (value.number(), io_kind(id)) {
        (Some(n), IoKind::Flag) if named => Some(Value::Bool(n != 0)),
        (Some(n), IoKind::Scaled(factor)) if named => {
            serde_json::Number::from_f64((n as f64 * factor * 1e6).round() / 1e6).map(Value::Number)
        }
        (Some(n), _) => Some(Value::from(n)),
        // Variable-length values: text when a named element is printable ASCII (VIN, trouble
        // codes), hex otherwise, and only when they fit the attribute bag.
        (None, _) => match value {
            IoValue::Bytes(bytes)
                if named
                    && bytes.len() <= MAX_ATTRIBUTE_VALUE
                    && bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') =>
            {
                std::str::from_utf8(bytes).ok().map(Value::from)
            }
            IoValue::Bytes(bytes) if bytes.len() * 2 <= MAX_ATTRIBUTE_VALUE => {
                Some(Value::String(hex::encode(bytes)))
            }
            _ => None,
        },
    }
}

impl AvlRecord<'_> {
    /// Latitude, degrees.
    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e7) / 1e7
    }

    /// Longitude, degrees.
    pub fn lon(&self) -> f64 {
        f64::from(self.lon_e7) / 1e7
    }

    /// Whether the record has a position at all: a unit that never had a GNSS fix since it
    /// started sends 0/0.
    pub fn has_position(&self) -> bool {
        self.lat_e7 != 0 || self.lon_e7 != 0
    }

    /// The value of IO element `id`, if the record carries it as a number.
    pub fn io_number(&self, id: u16) -> Option<u64> {
        self.io
            .iter()
            .find(|e| e.id == id)
            .and_then(|e| e.value.number())
    }

    /// The first alarm the record raises (in the order of its IO elements).
    pub fn alarm(&self) -> Option<&'static str> {
        self.io
            .iter()
            .find_map(|e| e.value.number().and_then(|n| alarm_of(e.id, n)))
    }

    /// The record's attributes: `alarm`, the named IO elements, `priority`, `event` (when not 0),
    /// then `io<ID>` for the rest, up to [`MAX_ATTRIBUTES`] in that order of importance.
    pub fn attributes(&self) -> std::collections::BTreeMap<String, Value> {
        let mut attributes = std::collections::BTreeMap::new();
        if let Some(alarm) = self.alarm() {
            attributes.insert("alarm".to_owned(), Value::from(alarm));
        }
        for element in &self.io {
            if let (Some(name), Some(value)) = (
                known_name(element.id),
                attribute_value(element.id, &element.value),
            ) {
                if attributes.len() < MAX_ATTRIBUTES {
                    attributes.insert(name.to_owned(), value);
                }
            }
        }
        // The event id only when an IO change made the record (0 is a periodic record).
        let event = (self.event_io != 0).then_some(("event", u64::from(self.event_io)));
        for (name, value) in [Some(("priority", u64::from(self.priority))), event]
            .into_iter()
            .flatten()
        {
            if attributes.len() < MAX_ATTRIBUTES {
                attributes.insert(name.to_owned(), Value::from(value));
            }
        }
        for element in &self.io {
            if attributes.len() >= MAX_ATTRIBUTES {
                break;
            }
            if known_name(element.id).is_none() {
                if let Some(value) = attribute_value(element.id, &element.value) {
                    attributes.insert(format!("io{}", element.id), value);
                }
            }
        }
        attributes
    }

    /// The record as a fix in SI units. A record without satellites repeats the last known
    /// position: it is kept, marked `valid = false`, and never becomes the live position.
    pub fn to_fix(&self) -> Fix {
        let mut fix = Fix::new(self.time_ms, self.lat(), self.lon());
        fix.altitude_m = Some(f64::from(self.altitude_m));
        fix.heading_deg = Some(f64::from(self.angle_deg % 360));
        fix.satellites = Some(u16::from(self.satellites));
        fix.speed_mps = Some(units::kmh_to_mps(f64::from(self.speed_kmh)));
        fix.hdop = self.io_number(182).map(|v| v as f64 / 10.0);
        fix.battery_pct = self
            .io_number(113)
            .map(|v| v as f64)
            .filter(|v| *v <= 100.0);
        fix.valid = self.satellites != 0 && self.has_position();
        fix.attributes = self.attributes();
        fix
    }
}

impl AvlRecord<'static> {
    /// A record as an FMB unit would send `fix` (encoder side: load generator, benches): the
    /// position in 1e-7 degrees, speed in km/h, and the permanent IO elements an FMB sends with
    /// every record (ignition, movement, GSM signal, sleep mode, GNSS status, HDOP, external and
    /// battery voltage, battery level when known, total odometer, GSM operator).
    pub fn from_fix(fix: &Fix) -> Self {
        let e7 = |deg: f64| {
            (deg * 1e7)
                .round()
                .clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
        };
        let clamp_u16 = |v: f64| v.round().clamp(0.0, f64::from(u16::MAX)) as u16;
        let speed_kmh = clamp_u16(fix.speed_mps.map_or(0.0, units::mps_to_kmh));
        let mut io = vec![
            IoElement {
                id: 239,
                value: IoValue::U8(1),
            },
            IoElement {
                id: 240,
                value: IoValue::U8(u8::from(speed_kmh > 0)),
            },
            IoElement {
                id: 21,
                value: IoValue::U8(4),
            },
            IoElement {
                id: 200,
                value: IoValue::U8(0),
            },
            IoElement {
                id: 69,
                value: IoValue::U8(1),
            },
        ];
        if let Some(battery) = fix.battery_pct {
            io.push(IoElement {
                id: 113,
                value: IoValue::U8(battery.round().clamp(0.0, 100.0) as u8),
            });
        }
        io.extend([
            IoElement {
                id: 182,
                value: IoValue::U16(clamp_u16(fix.hdop.unwrap_or(0.9) * 10.0)),
            },
            IoElement {
                id: 66,
                value: IoValue::U16(12_850),
            },
            IoElement {
                id: 67,
                value: IoValue::U16(4_080),
            },
            IoElement {
                id: 16,
                value: IoValue::U32(1_234_567),
            },
            IoElement {
                id: 241,
                value: IoValue::U32(24_602),
            },
        ]);
        Self {
            time_ms: fix.fix_time,
            priority: 0,
            lon_e7: e7(fix.lon),
            lat_e7: e7(fix.lat),
            altitude_m: fix
                .altitude_m
                .map_or(0, |a| a.round().clamp(-32_768.0, 32_767.0) as i16),
            angle_deg: clamp_u16(fix.heading_deg.unwrap_or(0.0)) % 360,
            satellites: fix.satellites.map_or(9, |s| s.min(255) as u8),
            speed_kmh,
            event_io: 0,
            io,
        }
    }
}

/// What one packet means for the platform: its fixes and the device's status.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// One fix per record that has a position, in the order sent.
    pub fixes: Vec<Fix>,
    /// The status after the packet: the newest record's motion, battery and IO, and the newest
    /// alarm any record raised. `None` for a packet without records.
    pub status: Option<DeviceStatus>,
}

/// Map a decoded packet: every record with a position becomes a fix (records at 0/0 carry no
/// position and only feed the status); the newest record gives the status.
pub fn report(packet: &AvlPacket<'_>) -> Report {
    let fixes = packet
        .records
        .iter()
        .filter(|r| r.has_position())
        .map(AvlRecord::to_fix)
        .collect();
    let newest = packet.records.iter().max_by_key(|r| r.time_ms);
    let status = newest.map(|newest| {
        let mut status = DeviceStatus::new(newest.time_ms);
        status.motion = newest.io_number(240).map(|v| v != 0);
        status.battery_pct = newest
            .io_number(113)
            .map(|v| v as f64)
            .filter(|v| *v <= 100.0);
        status.alarm = packet
            .records
            .iter()
            .filter_map(|r| r.alarm().map(|a| (r.time_ms, a)))
            .max_by_key(|(time, _)| *time)
            .map(|(_, alarm)| alarm.to_owned());
        status.attributes = newest.attributes();
        status
    });
    Report { fixes, status }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The bytes of a hex capture, for the rest of the test run (decoded packets borrow them).
    fn bytes(hex_text: &str) -> &'static [u8] {
        Box::leak(hex::decode(hex_text).unwrap().into_boxed_slice())
    }

    // Captured frames from traccar/traccar
    // src/test/java/org/traccar/protocol/TeltonikaProtocolDecoderTest.java.
    const TRACCAR_CODEC8: &str = "000000000000004c08010000016818d500580009c28d9f1cb3757a00be00c60f0053000f06f0011503c80001011d00fc0007423799180053cdf80dce426f430f88190bb8560bb802f100005aa110002887e000010000ee8d";
    const TRACCAR_CODEC8_IGNITION: &str = "000000000000004a08010000015ebc1da508002411926621f15246010b00b913005e000f06ef01f00150011505c800450108b5000bb6000642381b18005ecd0318ce19cd430f5844000001f1000061a900010000c8e1";
    const TRACCAR_CODEC8_THREE: &str = "00000000000000da08030000017fcedf499600280431be0eded45d0038012d100000fa100901000200b300b4004501500415034702fa00054232a1180000cd3b2fce281d43001f02c700000006f10000a029000000017fcedea99600280432070eded3dd00380046130009000f0801010200b300b400450150051502470205423276180009cd3b2fce281d43001f02c700000027f10000a0290000000179d50853180027f65d3f0ed67212001500f1110061000f0801010200b300b4004501500515034702054234f4180061cd53d1ce28c043003e02c700000147f1000000290003000052cb";
    const TRACCAR_CODEC8E: &str = "00000000000000a38e0100000178b11c9e1000040bbbc91f03190c002100e113001300000010000600ef0100f00100150300c800004501001e070005004237e00018000a00ce166200430f970024059f000300f10000665900c70000001e00100000a1b500000002010000115756315a5a5a32455a38363031353338380119002950303239392c50303637352c50303637342c50303637322c50303637312c50303437312c50324241430100001ad8";
    /// "invalid length and checksum" in Traccar's test.
    const TRACCAR_BAD_CRC: &str = "0000000000000000080100000113fc208dff00209cca800f14f650006f00d60400040004030101150316030001460000015d000100000000";
    const TRACCAR_UDP: &str = "0049cafe0122000f33353734353430373237313339373508010000015d3766f6a800003eef961ec6215e0063006d09003100070401000200f001c8000242381c18003201c7000000e10001";
    // Teltonika's wiki ("Data Sending Protocols"), the UDP examples and their acknowledgement.
    const WIKI_UDP_CODEC8: &str = "003DCAFE0105000F33353230393330383634303336353508010000016B4F815B30010000000000000000000000000000000103021503010101425DBC000001";
    const WIKI_UDP_CODEC8E: &str = "005FCAFE0107000F3335323039333038363430333635358E010000016B4F831C680100000000000000000000000000000000010005000100010100010011009D00010010015E2C880002000B000000003544C87A000E000000001DD7E06A000001";

    #[test]
    fn crc_is_crc16_ibm() {
        // The check value of CRC-16/ARC.
        assert_eq!(crc16_ibm(b"123456789"), 0xBB3D);
    }

    #[test]
    fn traccar_codec8_frame_decodes_with_units() {
        let frame = bytes(TRACCAR_CODEC8);
        assert_eq!(tcp_chunk(frame, 4096), Ok(TcpChunk::Frame(frame.len())));
        let packet = decode_tcp_frame(frame).unwrap();
        assert_eq!(packet.codec, Codec::Codec8);
        assert_eq!(packet.records.len(), 1);
        let fix = packet.records[0].to_fix();
        assert_eq!(fix.fix_time, 1_546_604_839_000, "2019-01-04T12:27:19Z");
        assert_eq!((fix.lat, fix.lon), (48.152_306_6, 16.374_518_3));
        assert_eq!(fix.altitude_m, Some(190.0));
        assert_eq!(fix.heading_deg, Some(198.0));
        assert_eq!(fix.satellites, Some(15));
        assert!(
            (fix.speed_mps.unwrap() - 83.0 / 3.6).abs() < 1e-9,
            "83 km/h"
        );
        assert!(fix.valid);
        let expected = [
            ("motion", Value::Bool(true)),
            ("din1", Value::Bool(true)),
            ("gsm_signal", Value::from(3u64)),
            ("external_voltage_v", Value::from(14.233)),
            ("battery_voltage_v", Value::from(3.976)),
            ("odometer_m", Value::from(2_656_224u64)),
            ("gsm_operator", Value::from(23_201u64)),
            ("priority", Value::from(0u64)),
            ("io24", Value::from(83u64)),
        ];
        for (name, value) in expected {
            assert_eq!(fix.attributes.get(name), Some(&value), "{name}");
        }
        assert!(!fix.attributes.contains_key("event"), "periodic record");
        assert!(!fix.attributes.contains_key("alarm"), "252 (unplug) is 0");
    }

    #[test]
    fn traccar_frames_decode_and_ignition_is_named() {
        let packet = decode_tcp_frame(bytes(TRACCAR_CODEC8_IGNITION)).unwrap();
        let fix = packet.records[0].to_fix();
        assert_eq!(fix.attributes["ignition"], Value::Bool(true));
        assert_eq!(fix.attributes["motion"], Value::Bool(true));
        assert!(!fix.attributes.contains_key("event"));
        let three = decode_tcp_frame(bytes(TRACCAR_CODEC8_THREE)).unwrap();
        assert_eq!(three.records.len(), 3);
        let report = report(&three);
        assert_eq!(report.fixes.len(), 3);
        let status = report.status.unwrap();
        assert_eq!(
            status.time,
            three.records.iter().map(|r| r.time_ms).max().unwrap()
        );
    }

    #[test]
    fn traccar_codec8_extended_frame_keeps_variable_length_values() {
        let packet = decode_tcp_frame(bytes(TRACCAR_CODEC8E)).unwrap();
        assert_eq!(packet.codec, Codec::Codec8Extended);
        let record = &packet.records[0];
        assert!(record
            .io
            .iter()
            .any(|e| e.id == 256 && e.value == IoValue::Bytes(b"WV1ZZZ2EZ86015388")));
        let fix = record.to_fix();
        assert_eq!((fix.lat, fix.lon), (52.029_671_6, 6.787_783_3));
        assert_eq!(fix.fix_time, 1_617_879_146_000);
        assert_eq!(fix.attributes["ignition"], Value::Bool(true));
        assert_eq!(fix.attributes["trip_odometer_m"], Value::from(30u64));
        assert_eq!(fix.attributes["vin"], Value::from("WV1ZZZ2EZ86015388"));
    }

    #[test]
    fn a_bad_crc_or_length_is_refused() {
        assert!(matches!(
            decode_tcp_frame(bytes(TRACCAR_BAD_CRC)),
            Err(TeltonikaError::LengthMismatch { .. })
        ));
        let mut frame = bytes(TRACCAR_CODEC8).to_vec();
        let last = frame.len() - 1;
        frame[last] ^= 0x01;
        assert!(matches!(
            decode_tcp_frame(&frame),
            Err(TeltonikaError::BadCrc { .. })
        ));
        assert_eq!(
            tcp_chunk(&[0, 0, 0, 1], 4096),
            Err(TeltonikaError::BadPreamble)
        );
        assert!(matches!(
            tcp_chunk(&[0, 0, 0, 0, 0, 1, 0, 0], 4096),
            Err(TeltonikaError::TooLarge { .. })
        ));
        assert_eq!(tcp_chunk(&[0, 0, 0], 4096), Ok(TcpChunk::NeedMore));
        assert_eq!(tcp_chunk(&[0xFF, 0], 4096), Ok(TcpChunk::KeepAlive));
    }

    #[test]
    fn udp_captures_decode_and_are_acknowledged_as_documented() {
        let datagram = bytes(WIKI_UDP_CODEC8);
        let packet = decode_udp(datagram).unwrap();
        assert_eq!(packet.packet_id, 0xCAFE);
        assert_eq!(packet.avl_packet_id, 0x05);
        assert_eq!(packet.imei, "352093086403655");
        assert_eq!(packet.avl.records.len(), 1);
        assert_eq!(
            udp_ack(packet.packet_id, packet.avl_packet_id, 1),
            bytes("0005CAFE010501")
        );
        let extended = decode_udp(bytes(WIKI_UDP_CODEC8E)).unwrap();
        assert_eq!(extended.avl.codec, Codec::Codec8Extended);
        assert_eq!(extended.avl.records[0].io.len(), 5);
        // Zero position: no fix, only a status.
        let report = report(&extended.avl);
        assert!(report.fixes.is_empty());
        assert!(report.status.is_some());
        let traccar = decode_udp(bytes(TRACCAR_UDP)).unwrap();
        assert_eq!(traccar.imei, "357454072713975");
        assert_eq!(traccar.avl_packet_id, 0x22);
        assert_eq!(traccar.avl.records.len(), 1);
    }

    #[test]
    fn the_imei_handshake_is_read_incrementally() {
        let hello = bytes("000F313233343536373839303132333435");
        assert_eq!(parse_imei(hello).unwrap(), Some(("123456789012345", 17)));
        assert_eq!(parse_imei(&hello[..1]).unwrap(), None);
        assert_eq!(parse_imei(&hello[..9]).unwrap(), None);
        assert_eq!(parse_imei(&[0, 0]), Err(TeltonikaError::BadImei));
        assert_eq!(parse_imei(&[0, 200]), Err(TeltonikaError::BadImei));
        assert_eq!(
            parse_imei(b"\x00\x0fGET / HTTP/1.1"),
            Err(TeltonikaError::BadImei)
        );
        assert_eq!(encode_imei("123456789012345").unwrap(), hello);
        assert_eq!(handshake_reply(true), [1]);
        assert_eq!(tcp_ack(3), [0, 0, 0, 3]);
    }

    #[test]
    fn no_satellites_is_an_invalid_fix_and_alarms_reach_the_status() {
        let record = AvlRecord {
            time_ms: 1_700_000_000_000,
            priority: 2,
            lon_e7: 134_049_540,
            lat_e7: 525_200_080,
            altitude_m: 34,
            angle_deg: 90,
            satellites: 0,
            speed_kmh: 36,
            event_io: 236,
            io: vec![
                IoElement {
                    id: 236,
                    value: IoValue::U8(1),
                },
                IoElement {
                    id: 240,
                    value: IoValue::U8(0),
                },
                IoElement {
                    id: 113,
                    value: IoValue::U8(87),
                },
                IoElement {
                    id: 16,
                    value: IoValue::U32(123_456),
                },
                IoElement {
                    id: 9999,
                    value: IoValue::U16(7),
                },
            ],
        };
        let fix = record.to_fix();
        assert!(!fix.valid);
        assert!((fix.speed_mps.unwrap() - 10.0).abs() < 1e-12);
        assert_eq!(fix.battery_pct, Some(87.0));
        assert_eq!(fix.attributes["alarm"], Value::from("panic"));
        assert_eq!(fix.attributes["odometer_m"], Value::from(123_456u64));
        assert_eq!(fix.attributes["io9999"], Value::from(7u64));
        let packet = AvlPacket {
            codec: Codec::Codec8Extended,
            records: vec![record],
        };
        let status = report(&packet).status.unwrap();
        assert_eq!(status.alarm.as_deref(), Some("panic"));
        assert_eq!(status.motion, Some(false));
        assert_eq!(status.battery_pct, Some(87.0));
    }

    #[test]
    fn attributes_are_capped_with_named_elements_first() {
        let mut io: Vec<IoElement<'_>> = (300..340)
            .map(|id| IoElement {
                id,
                value: IoValue::U8(1),
            })
            .collect();
        io.push(IoElement {
            id: 239,
            value: IoValue::U8(1),
        });
        let record = AvlRecord {
            time_ms: 1,
            priority: 0,
            lon_e7: 1,
            lat_e7: 1,
            altitude_m: 0,
            angle_deg: 0,
            satellites: 5,
            speed_kmh: 0,
            event_io: 0,
            io,
        };
        let attributes = record.attributes();
        assert_eq!(attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(attributes["ignition"], Value::Bool(true));
    }

    #[test]
    fn a_fix_survives_the_device_encoding() {
        let mut fix = Fix::new(1_700_000_000_000, -33.868_820_1, 151.209_295_5);
        fix.speed_mps = Some(13.9);
        fix.heading_deg = Some(271.4);
        fix.altitude_m = Some(58.4);
        fix.battery_pct = Some(77.0);
        let record = AvlRecord::from_fix(&fix);
        let frame = encode_tcp(Codec::Codec8, std::slice::from_ref(&record)).unwrap();
        let back = report(&decode_tcp_frame(&frame).unwrap()).fixes.remove(0);
        assert_eq!(
            (back.fix_time, back.lat, back.lon),
            (fix.fix_time, fix.lat, fix.lon)
        );
        assert!(
            (back.speed_mps.unwrap() - 50.0 / 3.6).abs() < 1e-9,
            "whole km/h"
        );
        assert_eq!(back.heading_deg, Some(271.0));
        assert_eq!(back.altitude_m, Some(58.0));
        assert_eq!(back.battery_pct, Some(77.0));
        assert!(back.valid);
    }

    #[test]
    fn codec8_cannot_carry_what_only_8e_can() {
        let record = AvlRecord {
            time_ms: 1,
            priority: 0,
            lon_e7: 1,
            lat_e7: 1,
            altitude_m: 0,
            angle_deg: 0,
            satellites: 5,
            speed_kmh: 0,
            event_io: 0,
            io: vec![IoElement {
                id: 300,
                value: IoValue::U8(1),
            }],
        };
        assert!(encode_tcp(Codec::Codec8, std::slice::from_ref(&record)).is_err());
        assert!(encode_tcp(Codec::Codec8Extended, &[record]).is_ok());
    }

    fn io_value(extended: bool) -> impl Strategy<Value = IoValue<'static>> {
        const BLOBS: [&[u8]; 3] = [b"", b"\x01\x02", b"WV1ZZZ2EZ86015388"];
        let fixed = prop_oneof![
            any::<u8>().prop_map(IoValue::U8),
            any::<u16>().prop_map(IoValue::U16),
            any::<u32>().prop_map(IoValue::U32),
            any::<u64>().prop_map(IoValue::U64),
        ];
        if extended {
            prop_oneof![
                fixed,
                (0..BLOBS.len()).prop_map(|i| IoValue::Bytes(BLOBS[i]))
            ]
            .boxed()
        } else {
            fixed.boxed()
        }
    }

    fn record(extended: bool) -> impl Strategy<Value = AvlRecord<'static>> {
        let id_max: u16 = if extended { u16::MAX } else { 255 };
        (
            (
                0i64..=4_102_444_800_000,
                any::<u8>(),
                any::<i32>(),
                any::<i32>(),
            ),
            (
                any::<i16>(),
                any::<u16>(),
                any::<u8>(),
                any::<u16>(),
                0..=id_max,
            ),
            proptest::collection::vec((0..=id_max, io_value(extended)), 0..12),
        )
            .prop_map(
                |(
                    (time_ms, priority, lon_e7, lat_e7),
                    (altitude_m, angle_deg, satellites, speed_kmh, event_io),
                    io,
                )| {
                    let mut io: Vec<_> = io
                        .into_iter()
                        .map(|(id, value)| IoElement { id, value })
                        .collect();
                    // The wire groups elements by width; a decoded record lists them so.
                    io.sort_by_key(|e| e.value.width_rank());
                    AvlRecord {
                        time_ms,
                        priority,
                        lon_e7,
                        lat_e7,
                        altitude_m,
                        angle_deg,
                        satellites,
                        speed_kmh,
                        event_io,
                        io,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = tcp_chunk(&input, 4096);
            let _ = parse_imei(&input);
            let _ = decode_tcp_frame(&input);
            let _ = decode_udp(&input);
            if let Ok(packet) = decode_avl(&input) {
                let _ = report(&packet);
            }
        }

        #[test]
        fn mutated_captures_never_panic(index in 0usize..400, byte in any::<u8>()) {
            for capture in [TRACCAR_CODEC8, TRACCAR_CODEC8E, TRACCAR_CODEC8_THREE] {
                let mut frame = bytes(capture).to_vec();
                let at = index % frame.len();
                frame[at] = byte;
                if let Ok(packet) = decode_tcp_frame(&frame) {
                    let _ = report(&packet);
                }
                // Without the CRC check the record decoder sees every mutation.
                if let Ok(packet) = decode_avl(&frame[TCP_HEADER_LEN..frame.len() - TCP_TRAILER_LEN]) {
                    let _ = report(&packet);
                }
            }
        }

        #[test]
        fn tcp_round_trip(extended in any::<bool>(), records in proptest::collection::vec(record(true), 0..4)) {
            let codec = if extended { Codec::Codec8Extended } else { Codec::Codec8 };
            let records: Vec<_> = if extended {
                records
            } else {
                records.into_iter().map(|mut r| {
                    r.event_io &= 0xFF;
                    r.io.retain(|e| e.id <= 255 && !matches!(e.value, IoValue::Bytes(_)));
                    r
                }).collect()
            };
            let frame = encode_tcp(codec, &records).unwrap();
            prop_assert_eq!(tcp_chunk(&frame, MAX_DATA_LEN), Ok(TcpChunk::Frame(frame.len())));
            let packet = decode_tcp_frame(&frame).unwrap();
            prop_assert_eq!(packet.codec, codec);
            prop_assert_eq!(&packet.records, &records);
        }

        #[test]
        fn udp_round_trip(packet_id in any::<u16>(), avl_packet_id in any::<u8>(), records in proptest::collection::vec(record(false), 1..4)) {
            let datagram = encode_udp(packet_id, avl_packet_id, "352093086403655", Codec::Codec8, &records).unwrap();
            let packet = decode_udp(&datagram).unwrap();
            prop_assert_eq!(packet.packet_id, packet_id);
            prop_assert_eq!(packet.avl_packet_id, avl_packet_id);
            prop_assert_eq!(packet.imei, "352093086403655");
            prop_assert_eq!(&packet.avl.records, &records);
        }
    }
}
