//! The `device_status` row: what a device last said about itself (battery, charging, motion,
//! alarm, attributes of its newest status report) and when it was last heard from. The
//! processor writes it (its upserts live in `processor/src/writer.rs`) and publishes the rows a
//! batch changed; the query API reads it. This module owns the one column list
//! ([`STATUS_COLUMNS`]), the one read struct ([`StatusRow`], also the API's JSON body; beside
//! another table's row through a `LEFT JOIN`: [`JoinedStatus`]) and the one lookup by device
//! ([`of_device`]).

use chrono::{DateTime, Utc};
use gps_domain::live::LiveStatus;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// The columns of `device_status` a reader selects, in table order, without `updated_at`.
pub const STATUS_COLUMNS: &str = "device_id, tenant_id, last_seen, status_time, battery_pct, \
     charging, alarm, alarm_time, motion, attributes";

/// [`STATUS_COLUMNS`] of a `LEFT JOIN`ed `device_status` with alias `alias`, each renamed
/// `status_<column>` so that they sit beside another table's columns; read with
/// [`JoinedStatus`].
pub fn joined_status_columns(alias: &str) -> String {
    STATUS_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c} AS status_{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `device_status` row read through [`joined_status_columns`]: every column nullable, all
/// `NULL` when the device has no row. Serializes as its [`StatusRow`] would, or as `null`.
#[derive(Debug, Clone, PartialEq, Default, sqlx::FromRow)]
pub struct JoinedStatus {
    status_device_id: Option<Uuid>,
    status_tenant_id: Option<Uuid>,
    status_last_seen: Option<DateTime<Utc>>,
    status_status_time: Option<DateTime<Utc>>,
    status_battery_pct: Option<f64>,
    status_charging: Option<bool>,
    status_alarm: Option<String>,
    status_alarm_time: Option<DateTime<Utc>>,
    status_motion: Option<bool>,
    status_attributes: Option<serde_json::Value>,
}

impl JoinedStatus {
    /// The row, when the device has one.
    pub fn row(&self) -> Option<StatusRow> {
        Some(StatusRow {
            device_id: self.status_device_id?,
            tenant_id: self.status_tenant_id?,
            last_seen: self.status_last_seen?,
            status_time: self.status_status_time,
            battery_pct: self.status_battery_pct,
            charging: self.status_charging,
            alarm: self.status_alarm.clone(),
            alarm_time: self.status_alarm_time,
            motion: self.status_motion,
            attributes: self.status_attributes.clone(),
        })
    }
}

impl Serialize for JoinedStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.row().serialize(serializer)
    }
}

/// One row of `device_status`. Serializes as the API shows it (RFC 3339 times, no tenant).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StatusRow {
    /// Device id.
    pub device_id: Uuid,
    /// Tenant id (not shown: the caller's own).
    #[serde(skip)]
    pub tenant_id: Uuid,
    /// When the device was last heard from: the newest of its status report and fix times.
    pub last_seen: DateTime<Utc>,
    /// Time of the newest status report (absent while the device only sent fixes).
    pub status_time: Option<DateTime<Utc>>,
    /// Battery level, percent, of the newest report.
    pub battery_pct: Option<f64>,
    /// Whether charging, per the newest report.
    pub charging: Option<bool>,
    /// The newest alarm the device raised.
    pub alarm: Option<String>,
    /// Time of the report that raised the alarm.
    pub alarm_time: Option<DateTime<Utc>>,
    /// Whether moving, per the newest report.
    pub motion: Option<bool>,
    /// Other things the newest report carried (a JSON object).
    pub attributes: Option<serde_json::Value>,
}

impl StatusRow {
    /// The row as published live, for the device known as `uid`.
    pub fn live(&self, uid: &str) -> LiveStatus {
        let ms = |t: DateTime<Utc>| t.timestamp_millis();
        LiveStatus {
            device: self.device_id,
            uid: uid.to_owned(),
            last_seen: ms(self.last_seen),
            status_time: self.status_time.map(ms),
            battery_pct: self.battery_pct,
            charging: self.charging,
            motion: self.motion,
            alarm: self.alarm.clone(),
            alarm_time: self.alarm_time.map(ms),
            attributes: match &self.attributes {
                Some(serde_json::Value::Object(map)) => {
                    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                }
                _ => Default::default(),
            },
        }
    }
}

/// The status of `device` in `tenant`, if the device was ever heard from.
pub async fn of_device(
    pool: &PgPool,
    tenant: Uuid,
    device: Uuid,
) -> Result<Option<StatusRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {STATUS_COLUMNS} FROM device_status WHERE device_id = $1 AND tenant_id = $2"
    ))
    .bind(device)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_serializes_without_its_tenant_and_publishes_in_millis() {
        let t = DateTime::from_timestamp_millis(1_790_000_000_123).unwrap();
        let row = StatusRow {
            device_id: Uuid::from_u128(7),
            tenant_id: Uuid::from_u128(1),
            last_seen: t,
            status_time: Some(t),
            battery_pct: Some(50.0),
            charging: Some(false),
            alarm: Some("sos".into()),
            alarm_time: Some(t),
            motion: None,
            attributes: Some(serde_json::json!({ "rssi": -70 })),
        };
        let json = serde_json::to_value(&row).unwrap();
        assert!(json.get("tenant_id").is_none());
        assert_eq!(json["last_seen"], "2026-09-21T14:13:20.123Z");
        assert_eq!(json["alarm"], "sos");
        let live = row.live("359");
        assert_eq!(live.last_seen, 1_790_000_000_123);
        assert_eq!(live.alarm_time, Some(1_790_000_000_123));
        assert_eq!(live.attributes["rssi"], -70);
        assert_eq!(
            joined_status_columns("ds").split(", ").nth(2),
            Some("ds.last_seen AS status_last_seen")
        );
        assert_eq!(
            serde_json::to_value(JoinedStatus::default()).unwrap(),
            serde_json::Value::Null
        );
        let joined = JoinedStatus {
            status_device_id: Some(row.device_id),
            status_tenant_id: Some(row.tenant_id),
            status_last_seen: Some(row.last_seen),
            status_status_time: row.status_time,
            status_battery_pct: row.battery_pct,
            status_charging: row.charging,
            status_alarm: row.alarm.clone(),
            status_alarm_time: row.alarm_time,
            status_motion: row.motion,
            status_attributes: row.attributes.clone(),
        };
        assert_eq!(joined.row().as_ref(), Some(&row));
        assert_eq!(serde_json::to_value(&joined).unwrap(), json);
    }
}
