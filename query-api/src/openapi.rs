//! The OpenAPI 3.1 document served at `/openapi.json`, built from one route table ([`ROUTES`])
//! that a test checks against the live router, so the document cannot drift from the routes.

use axum::Json;

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// HTTP method, lowercase.
    pub method: &'static str,
    /// Path template as routed.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// The permission it needs (`None`: public or any authenticated caller).
    pub permission: Option<&'static str>,
    /// Whether a bearer credential is required.
    pub auth: bool,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    permission: Option<&'static str>,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        permission,
        auth: true,
    }
}

const fn public(method: &'static str, path: &'static str, summary: &'static str) -> Operation {
    Operation {
        method,
        path,
        summary,
        permission: None,
        auth: false,
    }
}

/// Every route of the API.
pub const ROUTES: &[Operation] = &[
    public("post", "/v1/auth/login", "Log in with email, password and optional tenant (name or id; needed, 400 tenant_required, only when the credentials match users of several tenants): access token + refresh token"),
    public("post", "/v1/auth/refresh", "Rotate a refresh token; reuse of a rotated token revokes its family"),
    public("post", "/v1/auth/logout", "Revoke a refresh token and its family"),
    op("post", "/v1/auth/password", "Change one's own password (current_password, new_password): ends every older session, answers a fresh login", None),
    op("post", "/v1/live/ticket", "Single-use ticket for the fanout WebSocket", Some("live:read")),
    op("get", "/v1/devices", "List the devices the caller may see", Some("devices:read")),
    op("post", "/v1/devices", "Create a device (uid, name, uid_only, speed_unit, payload_secret write-only, speed_limit_mps in (0, 150]); returns its ingest token and UDP key once; 409 if the uid exists in the tenant, 409 uid_taken if it is uid-only in another", Some("devices:write")),
    op("get", "/v1/devices/{id}", "Read a device", Some("devices:read")),
    op("patch", "/v1/devices/{id}", "Change name, disabled, uid_only, speed_unit, payload_secret (null: tenant default / remove), speed_limit_mps (m/s in (0, 150], null: none); 409 uid_taken", Some("devices:write")),
    op("delete", "/v1/devices/{id}", "Delete a device", Some("devices:write")),
    op("get", "/v1/tenant", "The tenant's device defaults: uid_only_devices, osmand_speed_unit", Some("devices:read")),
    op("patch", "/v1/tenant", "Change the tenant's device defaults (admins: also needs roles:write); 409 uid_taken", Some("devices:write")),
    op("post", "/v1/devices/{id}/rotate-token", "New ingest token, shown once", Some("devices:write")),
    op("post", "/v1/devices/{id}/rotate-udp-key", "New UDP HMAC key, shown once", Some("devices:write")),
    op("get", "/v1/devices/{id}/positions", "History: from, to, limit, cursor, format (json|geojson|gpx|csv), simplify, bucket, as_of, geometry", Some("positions:read")),
    op("get", "/v1/devices/{id}/summary", "Distance, moving time, speeds, trips and stops; with events:read also event_counts (events of the range per type)", Some("positions:read")),
    op("get", "/v1/devices/{id}/status", "Device status: last_seen, status_time, battery_pct, charging, motion, alarm, alarm_time, attributes (all null when never heard from)", Some("devices:read")),
    op("get", "/v1/positions", "Area query: bbox, from, to, limit", Some("positions:read")),
    op("get", "/v1/positions/latest", "Last known positions: group, bbox; each with the device's status (null when it never sent one)", Some("positions:read")),
    op("get", "/v1/users", "List users", Some("users:read")),
    op("post", "/v1/users", "Create a user with a role", Some("users:write")),
    op("get", "/v1/users/{id}", "Read a user", Some("users:read")),
    op("patch", "/v1/users/{id}", "Change display name, disabled, password", Some("users:write")),
    op("delete", "/v1/users/{id}", "Delete a user", Some("users:write")),
    op("put", "/v1/users/{id}/role", "Assign a role (never one's own)", Some("roles:write")),
    op("get", "/v1/groups", "List groups", Some("groups:read")),
    op("post", "/v1/groups", "Create a group", Some("groups:write")),
    op("get", "/v1/groups/{id}", "Read a group with its devices and members", Some("groups:read")),
    op("delete", "/v1/groups/{id}", "Delete a group", Some("groups:write")),
    op("put", "/v1/groups/{id}/devices/{device_id}", "Add a device to a group", Some("groups:write")),
    op("delete", "/v1/groups/{id}/devices/{device_id}", "Remove a device from a group", Some("groups:write")),
    op("put", "/v1/groups/{id}/members/{user_id}", "Add a user to a group", Some("groups:write")),
    op("delete", "/v1/groups/{id}/members/{user_id}", "Remove a user from a group", Some("groups:write")),
    op("get", "/v1/api-keys", "List API keys (never their secrets)", Some("keys:read")),
    op("post", "/v1/api-keys", "Create an API key; the key is shown once", Some("keys:write")),
    op("delete", "/v1/api-keys/{id}", "Revoke an API key", Some("keys:write")),
    op("get", "/v1/audit", "Audit log, newest first", Some("audit:read")),
    op("get", "/v1/geofences", "List the tenant's geofences by id: limit (1..1000, default 100), cursor; a page carries at most 4 MiB of geometry", Some("geofences:read")),
    op("post", "/v1/geofences", "Create a geofence: name, geometry (GeoJSON Polygon | MultiPolygon | Point + radius_m), groups, speed_limit_mps, schedule; validated (closed rings, no self-intersection, at most 10,000 positions, antimeridian); body up to 1 MiB", Some("geofences:write")),
    op("get", "/v1/geofences/{id}", "Read a geofence (with its bbox)", Some("geofences:read")),
    op("put", "/v1/geofences/{id}", "Replace a geofence (same body as the create)", Some("geofences:write")),
    op("delete", "/v1/geofences/{id}", "Delete a geofence", Some("geofences:write")),
    op("get", "/v1/event-types", "The event types and what raises each", Some("events:read")),
    op("get", "/v1/webhooks", "The tenant's webhooks (never their secrets)", Some("webhooks:write")),
    op("post", "/v1/webhooks", "Create a webhook: url (http/https; private, loopback, link-local and other special addresses refused: 400 private_address), event_types (empty: all), secret (16..256 characters, write-only), disabled", Some("webhooks:write")),
    op("get", "/v1/webhooks/{id}", "Read a webhook (never its secret)", Some("webhooks:write")),
    op("put", "/v1/webhooks/{id}", "Change a webhook: the fields present of url, event_types, secret, disabled", Some("webhooks:write")),
    op("delete", "/v1/webhooks/{id}", "Delete a webhook and its delivery log", Some("webhooks:write")),
    op("get", "/v1/webhooks/{id}/deliveries", "The delivery log, newest first: status (pending|delivered|failed), limit (1..1000, default 100), cursor", Some("webhooks:write")),
    op("post", "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", "Send a delivery again (same event id), due now with a fresh attempt budget", Some("webhooks:write")),
    op("get", "/v1/events", "Events, oldest first: device, type (comma list), from, to, limit (1..10000), cursor, format (json|csv); a viewer sees its groups' devices only", Some("events:read")),
    public("get", "/openapi.json", "This document"),
];

/// The status of an operation's success: `201` for a create, `204` for an answer without a
/// body (deletes, memberships, logout), `200` otherwise (as the handlers answer).
fn success_status(method: &str, path: &str) -> &'static str {
    match (method, path) {
        (
            "post",
            "/v1/devices" | "/v1/users" | "/v1/groups" | "/v1/api-keys" | "/v1/geofences"
            | "/v1/webhooks",
        ) => "201",
        ("delete", _) | ("post", "/v1/auth/logout") => "204",
        ("put", path) if path.starts_with("/v1/groups/") => "204",
        _ => "200",
    }
}

/// The document.
pub fn build() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    for route in ROUTES {
        let params: Vec<serde_json::Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                // Every path id is a uuid but a webhook delivery's (a number).
                let schema = if name == "delivery_id" {
                    serde_json::json!({ "type": "integer", "format": "int64", "minimum": 1 })
                } else {
                    serde_json::json!({ "type": "string", "format": "uuid" })
                };
                serde_json::json!({ "name": name, "in": "path", "required": true, "schema": schema })
            })
            .collect();
        let error = serde_json::json!({ "$ref": "#/components/responses/Error" });
        let mut responses = serde_json::json!({
            success_status(route.method, route.path): { "description": "success" },
            "400": error, "401": error, "403": error, "404": error, "429": error,
            // A dependency down, or a statement over the timeout (with Retry-After).
            "503": error,
        });
        if route.method != "get" {
            // Writes: a conflict (existing uid, last admin, ...) and a body over the limit.
            responses["409"] = error.clone();
            responses["413"] = error.clone();
        }
        let mut operation = serde_json::json!({
            "summary": route.summary,
            "parameters": params,
            "responses": responses,
        });
        if route.auth {
            operation["security"] = serde_json::json!([{ "bearer": [] }]);
        }
        if let Some(permission) = route.permission {
            operation["x-permission"] = permission.into();
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| serde_json::json!({}));
        entry[route.method] = operation;
    }
    serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "gps-telemetry query API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer",
                            "description": "JWT access token from /v1/auth/login, or an API key gpsk_..." }
            },
            "responses": {
                "Error": {
                    "description": "error",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": { "type": "object", "required": ["code", "message"],
                        "properties": { "code": { "type": "string" }, "message": { "type": "string" },
                                        "field": { "type": "string" } } } }
                }
            }
        }
    })
}

/// `GET /openapi.json`.
pub async fn document() -> Json<serde_json::Value> {
    Json(build())
}
