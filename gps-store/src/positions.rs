//! The `positions` / `last_positions` row codec: the one column list ([`COLUMNS`], in
//! `positions` order; `last_positions` is `LIKE positions` plus `updated_at`, with `valid` added
//! to both later, so always name the columns), the one type of a fix on its
//! way in ([`StoredFix`], written by the processor and published live), the bulk encoders the
//! processor writes with (binary `COPY`, [`encode_copy`], and one array per column,
//! [`Columns`]), and the one read struct every reader maps a row with ([`PositionRow`], into a
//! [`Fix`]).
//!
//! Keeping the encoders and the read struct next to the column list means a column added to the
//! migration has one place to be added to here, and a test that fails until it is.

use chrono::{DateTime, Utc};
use gps_domain::fix::{EpochMillis, Fix, Protocol};
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool};
use std::sync::Arc;
use uuid::Uuid;

/// The column list of `positions` in table order, as a literal (so `concat!` can use it).
macro_rules! columns {
    () => {
        "tenant_id, device_id, fix_time, received_at, lat, lon, altitude_m, speed_mps, \
         heading_deg, accuracy_m, battery_pct, satellites, hdop, protocol, attributes, valid"
    };
}

/// Every column of `positions`, in table order: what the writers fill and the readers select.
pub const COLUMNS: &str = columns!();

/// Number of [`COLUMNS`] (the field count of each binary COPY row).
const COLUMN_COUNT: i16 = 16;

/// The rows of a [`Columns`] bound as `$1..$16`, as a query over them with [`COLUMNS`].
pub const UNNEST_ROWS: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::float8[], \
     $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::float8[], \
     $12::int2[], $13::float8[], $14::text[], $15::text[]::jsonb[], $16::bool[]) AS r(",
    columns!(),
    ")"
);

/// The primary key of `positions`: (device, fix time).
pub type FixKey = (Uuid, EpochMillis);

/// The column names, one by one, in table order.
pub fn column_names() -> impl Iterator<Item = &'static str> {
    COLUMNS.split(", ")
}

/// [`COLUMNS`] qualified with a table alias (`lp.tenant_id, lp.device_id, ..`), for joins.
pub fn columns_of(alias: &str) -> String {
    qualified(column_names(), alias)
}

/// The columns a track reader renders: [`COLUMNS`] without the tenant and device (the query
/// filtered by both) and the attributes (no track format shows them). History, exports and
/// latest positions select these: the three skipped columns cost the history of a day of 1 Hz
/// fixes about 7 % and the latest positions of 10,000 devices about 15 % (release, measured).
/// A [`PositionRow`] read through them has a nil tenant and device and no attributes.
pub const TRACK_COLUMNS: &str = "fix_time, received_at, lat, lon, altitude_m, speed_mps, \
     heading_deg, accuracy_m, battery_pct, satellites, hdop, protocol, valid";

/// [`TRACK_COLUMNS`] qualified with a table alias, for joins.
pub fn track_columns_of(alias: &str) -> String {
    qualified(TRACK_COLUMNS.split(", "), alias)
}

fn qualified<'a>(columns: impl Iterator<Item = &'a str>, alias: &str) -> String {
    columns
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `COPY <table> (COLUMNS) FROM STDIN (FORMAT binary)`: the statement [`encode_copy`] feeds.
pub fn copy_into(table: &str) -> String {
    format!("COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)")
}

/// One fix to store (and, once stored, to publish live), with the envelope it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFix {
    /// Tenant id (from the device credential at ingest).
    pub tenant: Uuid,
    /// Device id.
    pub device: Uuid,
    /// The device's own identifier. Not a column of `positions`: the live message carries it.
    /// Shared by the fixes of one envelope.
    pub uid: Arc<str>,
    /// Protocol the fix arrived over.
    pub protocol: Protocol,
    /// Ingest receive time, UTC ms.
    pub received: EpochMillis,
    /// The fix.
    pub fix: Fix,
}

impl StoredFix {
    /// Its primary key in `positions`.
    pub fn key(&self) -> FixKey {
        (self.device, self.fix.fix_time)
    }
}

/// One row of `positions` or `last_positions` as read (select [`COLUMNS`], or
/// [`columns_of`] in a join); [`PositionRow::fix`] gives the domain [`Fix`].
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PositionRow {
    /// Tenant id (nil when read through [`TRACK_COLUMNS`]).
    #[sqlx(default)]
    pub tenant_id: Uuid,
    /// Device id (nil when read through [`TRACK_COLUMNS`] alone).
    #[sqlx(default)]
    pub device_id: Uuid,
    /// Fix time.
    pub fix_time: DateTime<Utc>,
    /// Ingest receive time.
    pub received_at: DateTime<Utc>,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Altitude, metres.
    pub altitude_m: Option<f64>,
    /// Ground speed, m/s.
    pub speed_mps: Option<f64>,
    /// Course over ground, degrees.
    pub heading_deg: Option<f64>,
    /// Horizontal accuracy, metres.
    pub accuracy_m: Option<f64>,
    /// Battery level, percent.
    pub battery_pct: Option<f64>,
    /// Satellites used.
    pub satellites: Option<i16>,
    /// Horizontal dilution of precision.
    pub hdop: Option<f64>,
    /// Protocol name ([`Protocol::as_str`]).
    pub protocol: String,
    /// Extra attributes (a JSON object), absent when the fix had none (or when read through
    /// [`TRACK_COLUMNS`]).
    #[sqlx(default)]
    pub attributes: Option<serde_json::Value>,
    /// Whether the device called the fix valid ([`Fix::valid`]); always `true` in
    /// `last_positions`, which never holds an invalid fix.
    pub valid: bool,
}

impl PositionRow {
    /// Its primary key.
    pub fn key(&self) -> FixKey {
        (self.device_id, self.fix_time.timestamp_millis())
    }

    /// Ingest receive time, UTC ms.
    pub fn received_ms(&self) -> EpochMillis {
        self.received_at.timestamp_millis()
    }

    /// The fix it stores.
    pub fn fix(&self) -> Fix {
        let mut fix = Fix::new(self.fix_time.timestamp_millis(), self.lat, self.lon);
        fix.altitude_m = self.altitude_m;
        fix.speed_mps = self.speed_mps;
        fix.heading_deg = self.heading_deg;
        fix.accuracy_m = self.accuracy_m;
        fix.battery_pct = self.battery_pct;
        fix.satellites = self.satellites.and_then(|s| u16::try_from(s).ok());
        fix.hdop = self.hdop;
        fix.valid = self.valid;
        if let Some(serde_json::Value::Object(map)) = &self.attributes {
            fix.attributes = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        fix
    }
}

/// The keys stored for `devices` (in no particular order), for checks that count what landed.
pub async fn stored_keys(pool: &PgPool, devices: &[Uuid]) -> Result<Vec<FixKey>, sqlx::Error> {
    let rows: Vec<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT device_id, fix_time FROM positions WHERE device_id = ANY($1)")
            .bind(devices)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(device, t)| (device, t.timestamp_millis()))
        .collect())
}

fn ts(ms: EpochMillis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn attributes_json(fix: &Fix) -> Option<String> {
    (!fix.attributes.is_empty())
        .then(|| serde_json::to_string(&fix.attributes).expect("json values serialize"))
}

fn satellites_i16(n: u16) -> i16 {
    i16::try_from(n).unwrap_or(i16::MAX)
}

/// One array per column, bound as `$1..$15` of [`UNNEST_ROWS`].
#[derive(Debug)]
pub struct Columns {
    tenant: Vec<Uuid>,
    device: Vec<Uuid>,
    fix_time: Vec<DateTime<Utc>>,
    received_at: Vec<DateTime<Utc>>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    alt: Vec<Option<f64>>,
    speed: Vec<Option<f64>>,
    heading: Vec<Option<f64>>,
    accuracy: Vec<Option<f64>>,
    battery: Vec<Option<f64>>,
    satellites: Vec<Option<i16>>,
    hdop: Vec<Option<f64>>,
    protocol: Vec<&'static str>,
    attributes: Vec<Option<String>>,
    valid: Vec<bool>,
}

impl Columns {
    /// The column arrays of `rows` (a slice, or references picked out of one without copying
    /// the rows).
    pub fn of<'a, I>(rows: I) -> Self
    where
        I: IntoIterator<Item = &'a StoredFix>,
        I::IntoIter: ExactSizeIterator,
    {
        let rows = rows.into_iter();
        let n = rows.len();
        let mut c = Self {
            tenant: Vec::with_capacity(n),
            device: Vec::with_capacity(n),
            fix_time: Vec::with_capacity(n),
            received_at: Vec::with_capacity(n),
            lat: Vec::with_capacity(n),
            lon: Vec::with_capacity(n),
            alt: Vec::with_capacity(n),
            speed: Vec::with_capacity(n),
            heading: Vec::with_capacity(n),
            accuracy: Vec::with_capacity(n),
            battery: Vec::with_capacity(n),
            satellites: Vec::with_capacity(n),
            hdop: Vec::with_capacity(n),
            protocol: Vec::with_capacity(n),
            attributes: Vec::with_capacity(n),
            valid: Vec::with_capacity(n),
        };
        for row in rows {
            let f = &row.fix;
            c.tenant.push(row.tenant);
            c.device.push(row.device);
            c.fix_time.push(ts(f.fix_time));
            c.received_at.push(ts(row.received));
            c.lat.push(f.lat);
            c.lon.push(f.lon);
            c.alt.push(f.altitude_m);
            c.speed.push(f.speed_mps);
            c.heading.push(f.heading_deg);
            c.accuracy.push(f.accuracy_m);
            c.battery.push(f.battery_pct);
            c.satellites.push(f.satellites.map(satellites_i16));
            c.hdop.push(f.hdop);
            c.protocol.push(row.protocol.as_str());
            c.attributes.push(attributes_json(f));
            c.valid.push(f.valid);
        }
        c
    }

    /// The sixteen arrays as the arguments `$1..$16`, in [`COLUMNS`] order.
    pub fn into_arguments(self) -> Result<PgArguments, sqlx::Error> {
        let mut args = PgArguments::default();
        let add = |result: Result<(), BoxDynError>| result.map_err(sqlx::Error::Encode);
        add(args.add(self.tenant))?;
        add(args.add(self.device))?;
        add(args.add(self.fix_time))?;
        add(args.add(self.received_at))?;
        add(args.add(self.lat))?;
        add(args.add(self.lon))?;
        add(args.add(self.alt))?;
        add(args.add(self.speed))?;
        add(args.add(self.heading))?;
        add(args.add(self.accuracy))?;
        add(args.add(self.battery))?;
        add(args.add(self.satellites))?;
        add(args.add(self.hdop))?;
        add(args.add(self.protocol))?;
        add(args.add(self.attributes))?;
        add(args.add(self.valid))?;
        Ok(args)
    }
}

/// Milliseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// Rows in PostgreSQL's binary COPY format, in [`COLUMNS`] order (the statement:
/// [`copy_into`]). The processor's hot path: one pass into one buffer, no allocation per row
/// or field (the attributes' JSON is written in place).
/// Format: <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>
pub fn encode_copy(rows: &[StoredFix]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(19 + rows.len() * 200 + 2);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for row in rows {
        let f = &row.fix;
        buf.extend_from_slice(&COLUMN_COUNT.to_be_bytes());
        put_uuid(&mut buf, row.tenant);
        put_uuid(&mut buf, row.device);
        put_ts(&mut buf, f.fix_time);
        put_ts(&mut buf, row.received);
        put_f64(&mut buf, Some(f.lat));
        put_f64(&mut buf, Some(f.lon));
        put_f64(&mut buf, f.altitude_m);
        put_f64(&mut buf, f.speed_mps);
        put_f64(&mut buf, f.heading_deg);
        put_f64(&mut buf, f.accuracy_m);
        put_f64(&mut buf, f.battery_pct);
        match f.satellites {
            Some(n) => {
                buf.extend_from_slice(&2i32.to_be_bytes());
                buf.extend_from_slice(&satellites_i16(n).to_be_bytes());
            }
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        put_f64(&mut buf, f.hdop);
        put_bytes(&mut buf, row.protocol.as_str().as_bytes());
        if f.attributes.is_empty() {
            buf.extend_from_slice(&(-1i32).to_be_bytes());
        } else {
            // jsonb binary format: version byte 1, then the text, serialized in place behind
            // its length (no String per row).
            let at = buf.len();
            buf.extend_from_slice(&[0, 0, 0, 0, 1]);
            serde_json::to_writer(&mut buf, &f.attributes).expect("json values serialize");
            let len = i32::try_from(buf.len() - at - 4).unwrap_or(i32::MAX);
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        buf.extend_from_slice(&1i32.to_be_bytes());
        buf.push(u8::from(f.valid));
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf
}

fn put_uuid(buf: &mut Vec<u8>, id: Uuid) {
    buf.extend_from_slice(&16i32.to_be_bytes());
    buf.extend_from_slice(id.as_bytes());
}

fn put_ts(buf: &mut Vec<u8>, ms: EpochMillis) {
    let micros = ms.saturating_sub(PG_EPOCH_MS).saturating_mul(1000);
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&micros.to_be_bytes());
}

fn put_f64(buf: &mut Vec<u8>, value: Option<f64>) {
    match value {
        Some(v) => {
            buf.extend_from_slice(&8i32.to_be_bytes());
            buf.extend_from_slice(&v.to_be_bytes());
        }
        None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(fix: Fix) -> StoredFix {
        StoredFix {
            tenant: Uuid::nil(),
            device: Uuid::from_u128(7),
            uid: "d".into(),
            protocol: Protocol::Udp,
            received: PG_EPOCH_MS,
            fix,
        }
    }

    #[test]
    fn one_column_list_for_every_shape() {
        assert_eq!(column_names().count(), COLUMN_COUNT as usize);
        assert!(column_names().all(|c| !c.is_empty() && !c.contains(' ')));
        assert!(columns_of("lp").starts_with("lp.tenant_id, lp.device_id, lp.fix_time"));
        assert!(columns_of("lp").ends_with("lp.protocol, lp.attributes, lp.valid"));
        // The UNNEST query names the columns in the same order as its sixteen parameters.
        assert_eq!(UNNEST_ROWS.matches(COLUMNS).count(), 2);
        assert!(UNNEST_ROWS.contains("$16::bool[]"));
        assert!(!UNNEST_ROWS.contains("$17"));
        assert_eq!(
            copy_into("positions_staging"),
            format!("COPY positions_staging ({COLUMNS}) FROM STDIN (FORMAT binary)")
        );
    }

    #[test]
    fn track_columns_are_the_column_list_less_tenant_device_and_attributes() {
        let skipped = ["tenant_id", "device_id", "attributes"];
        let expected: Vec<&str> = column_names().filter(|c| !skipped.contains(c)).collect();
        assert_eq!(TRACK_COLUMNS.split(", ").collect::<Vec<_>>(), expected);
        assert!(track_columns_of("lp").starts_with("lp.fix_time, lp.received_at"));
        assert!(track_columns_of("lp").ends_with("lp.hdop, lp.protocol, lp.valid"));
    }

    #[test]
    fn copy_encoding_has_header_rows_and_trailer() {
        let mut fix = Fix::new(PG_EPOCH_MS + 1, 1.0, 2.0);
        fix.satellites = Some(7);
        let bytes = encode_copy(&[stored(fix)]);
        assert!(bytes.starts_with(b"PGCOPY\n\xff\r\n\0"));
        assert!(bytes.ends_with(&[0xff, 0xff]));
        assert_eq!(&bytes[19..21], &COLUMN_COUNT.to_be_bytes());
        // header 19, field count 2, two uuids 40, then the fix time after its length.
        let fix_time = &bytes[19 + 2 + 40 + 4..19 + 2 + 40 + 12];
        assert_eq!(i64::from_be_bytes(fix_time.try_into().unwrap()), 1000);
        assert_eq!(encode_copy(&[]).len(), 19 + 2);
        // The last field of a row is `valid`: one byte after its length.
        let mut invalid = Fix::new(PG_EPOCH_MS + 1, 1.0, 2.0);
        invalid.valid = false;
        let bytes = encode_copy(&[stored(invalid)]);
        assert_eq!(
            &bytes[bytes.len() - 2 - 5..bytes.len() - 2],
            &[0, 0, 0, 1, 0]
        );
    }

    #[test]
    fn copy_encoding_writes_attributes_as_jsonb_and_absent_ones_as_null() {
        let plain = encode_copy(&[stored(Fix::new(PG_EPOCH_MS, 1.0, 2.0))]);
        let mut with = Fix::new(PG_EPOCH_MS, 1.0, 2.0);
        with.attributes.insert("tid".into(), "ab".into());
        let with = encode_copy(&[stored(with)]);
        let json = br#"{"tid":"ab"}"#;
        // The NULL (-1) becomes a length, the jsonb version byte and the text (then `valid`).
        assert_eq!(with.len(), plain.len() + 1 + json.len());
        let end = with.len() - 2 - 5;
        let at = end - json.len() - 1 - 4;
        assert_eq!(&with[at..at + 4], &(json.len() as i32 + 1).to_be_bytes());
        assert_eq!(with[at + 4], 1);
        assert_eq!(&with[at + 5..end], json);
    }

    #[test]
    fn a_read_row_gives_back_the_fix() {
        let mut fix = Fix::new(1_790_000_000_123, 52.5, 13.4);
        fix.altitude_m = Some(34.0);
        fix.speed_mps = Some(1.5);
        fix.heading_deg = Some(270.0);
        fix.accuracy_m = Some(4.0);
        fix.battery_pct = Some(88.0);
        fix.satellites = Some(9);
        fix.hdop = Some(0.9);
        fix.attributes.insert("charge".into(), true.into());
        let row = PositionRow {
            tenant_id: Uuid::nil(),
            device_id: Uuid::from_u128(7),
            fix_time: ts(fix.fix_time),
            received_at: ts(fix.fix_time + 500),
            lat: fix.lat,
            lon: fix.lon,
            altitude_m: fix.altitude_m,
            speed_mps: fix.speed_mps,
            heading_deg: fix.heading_deg,
            accuracy_m: fix.accuracy_m,
            battery_pct: fix.battery_pct,
            satellites: Some(9),
            hdop: fix.hdop,
            protocol: "json".into(),
            attributes: Some(serde_json::json!({ "charge": true })),
            valid: true,
        };
        assert_eq!(row.fix(), fix);
        assert_eq!(row.key(), (Uuid::from_u128(7), fix.fix_time));
        assert_eq!(row.received_ms(), fix.fix_time + 500);
        // What the table cannot hold as a fix field is dropped, not invented.
        let odd = PositionRow {
            satellites: Some(-1),
            attributes: Some(serde_json::json!([1, 2])),
            ..row
        };
        assert_eq!(odd.fix().satellites, None);
        assert!(odd.fix().attributes.is_empty());
    }

    #[test]
    fn unnest_columns_hold_one_entry_per_row() {
        let rows = vec![stored(Fix::new(1, 1.0, 2.0)); 3];
        let columns = Columns::of(&rows);
        assert_eq!(columns.tenant.len(), 3);
        assert_eq!(columns.protocol, vec!["udp"; 3]);
        assert_eq!(columns.attributes, vec![None; 3]);
        assert_eq!(columns.valid, vec![true; 3]);
        assert!(columns.into_arguments().is_ok());
    }
}
