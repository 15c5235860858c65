//! A device's status report: what a device says about itself when it has no position to give
//! (Traccar Client heartbeats, cell/Wi-Fi-only reports, push-token posts, Teltonika records
//! without a GNSS fix). It travels in the envelope beside (or instead of) fixes and is kept as
//! the device's *status* (last seen, battery, charging, alarm, motion), never as a position.

use crate::fix::EpochMillis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One status report of one device. Every field but the time is optional: a heartbeat may
/// carry nothing but the fact that the device is alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// When the device made the report (UTC ms; the receive time when the device sent none).
    #[serde(rename = "t")]
    pub time: EpochMillis,
    /// Battery level, percent 0..100.
    #[serde(rename = "bat", default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<f64>,
    /// Whether the device is charging.
    #[serde(rename = "chg", default, skip_serializing_if = "Option::is_none")]
    pub charging: Option<bool>,
    /// An alarm the device raised (`sos`, `panic`, `lowBattery`, …), as the device named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// Whether the device says it is moving.
    #[serde(rename = "mot", default, skip_serializing_if = "Option::is_none")]
    pub motion: Option<bool>,
    /// Other things the report carried (cell towers, Wi-Fi access points, a push token, IO
    /// elements), small and protocol-named.
    #[serde(rename = "x", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

impl DeviceStatus {
    /// A status report with only its time set.
    pub fn new(time: EpochMillis) -> Self {
        Self {
            time,
            battery_pct: None,
            charging: None,
            alarm: None,
            motion: None,
            attributes: BTreeMap::new(),
        }
    }
}
