//! Device status: `GET /v1/devices/{id}/status`, what the device last said about itself
//! (battery, charging, motion, the newest alarm, the attributes of its newest status report)
//! and when it was last heard from (`last_seen`: its newest status report or stored fix,
//! whichever is newer). The row is the processor's `device_status` projection of the log
//! (`gps_store::status`); the same object rides along with each entry of
//! `GET /v1/positions/latest`.
//!
//! `devices:read`, by the device visibility rule: a viewer reads only its groups' devices, and
//! another tenant's device (or one outside the caller's scope) is a `404`. A device that exists
//! but was never heard from answers `200` with `last_seen: null` and every field `null`.

use crate::app::{AppState, Caller};
use crate::error::ApiResult;
use crate::routes::parse_id;
use axum::extract::{Path, State};
use axum::Json;
use gps_domain::auth::Permission;
use serde_json::{json, Value};

/// `GET /v1/devices/{id}/status`.
pub(crate) async fn device_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::DevicesRead)?;
    let id = parse_id(&id)?;
    caller.require_device(&state.pool, id).await?;
    let body = match gps_store::status::of_device(&state.pool, caller.tenant(), id).await? {
        Some(row) => json!(row),
        None => json!({
            "device_id": id,
            "last_seen": null,
            "status_time": null,
            "battery_pct": null,
            "charging": null,
            "alarm": null,
            "alarm_time": null,
            "motion": null,
            "attributes": null,
        }),
    };
    Ok(Json(body))
}
