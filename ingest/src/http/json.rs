//! `POST /v1/fixes`: one JSON fix or an array (`gps_domain::wire::json`), authenticated by a
//! device token or a gateway API key with `fixes:write`. 202 with the accepted count once Kafka
//! acknowledged every accepted fix; bad items are listed by index and field. Unknown tokens and
//! keys are limited per source IP ([`AppState::admit`]).

use super::{bearer, body, json_response, AppState, UNAUTHORIZED};
use crate::auth::{DeviceRecord, KeyCheck};
use crate::error::ApiError;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use gps_domain::auth::API_KEY_PREFIX;
use gps_domain::wire::json::{self, ItemError, JsonError};
use gps_domain::{Fix, Protocol};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use uuid::Uuid;

enum Caller {
    Device(Arc<DeviceRecord>),
    Gateway { tenant_id: Uuid },
}

impl Caller {
    fn tenant_id(&self) -> Uuid {
        match self {
            Self::Device(device) => device.tenant_id,
            Self::Gateway { tenant_id } => *tenant_id,
        }
    }
}

/// The handler.
pub async fn post_fixes(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let source = state.source(peer, request.headers());
    state
        .respond(Protocol::Json, handle(&state, source, request))
        .await
}

async fn caller(state: &AppState, source: IpAddr, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let credential = bearer(headers).ok_or(UNAUTHORIZED)?;
    if credential.starts_with(API_KEY_PREFIX) {
        state.admit(source, state.auth.knows_api_key(credential))?;
        return match state.auth.api_key(credential).await? {
            KeyCheck::Ok(key) => Ok(Caller::Gateway {
                tenant_id: key.tenant_id,
            }),
            KeyCheck::MissingScope => Err(ApiError::Forbidden("the api key lacks fixes:write")),
            KeyCheck::Invalid => {
                state.unknown_credential(source);
                Err(UNAUTHORIZED)
            }
        };
    }
    state.admit(source, state.auth.knows_token(credential))?;
    match state.auth.device_by_token(credential).await? {
        Some(device) => Ok(Caller::Device(device)),
        None => {
            state.unknown_credential(source);
            Err(UNAUTHORIZED)
        }
    }
}

async fn handle(state: &AppState, source: IpAddr, request: Request) -> Result<Response, ApiError> {
    let caller = caller(state, source, request.headers()).await?;
    // A tenant the overload guard already sheds is refused before its body is read.
    state
        .producer
        .check_overload(Protocol::Json, caller.tenant_id())?;
    let raw = body(Bytes::from_request(request, state).await)?;
    let decoded = json::decode(&raw, state.max_batch).map_err(|e| match e {
        JsonError::TooMany { .. } => ApiError::TooLarge {
            message: e.to_string(),
        },
        JsonError::Malformed(_) => ApiError::bad_field("malformed_json", "", e.to_string()),
        JsonError::WrongShape => ApiError::bad_field("wrong_shape", "", e.to_string()),
        JsonError::Empty => ApiError::bad_field("empty_batch", "", e.to_string()),
    })?;
    state
        .metrics
        .fixes_received
        .with_label_values(&[Protocol::Json.as_str()])
        .inc_by(decoded.total() as u64);
    let mut errors = decoded.errors;
    // Group by device, keeping first-seen order of devices and the order of fixes.
    let mut order: Vec<Uuid> = Vec::new();
    let mut groups: HashMap<Uuid, (Arc<DeviceRecord>, Vec<Fix>)> = HashMap::new();
    for (index, item) in decoded.items {
        let device = match &caller {
            Caller::Device(device) => match &item.device {
                Some(uid) if *uid != device.uid => Err("a device token posts only its own fixes"),
                _ => Ok(device.clone()),
            },
            Caller::Gateway { tenant_id } => match &item.device {
                None => Err("required with an api key: the device uid"),
                Some(uid) => match state.auth.device_by_tenant_uid(*tenant_id, uid).await? {
                    // Another tenant's device is indistinguishable from an unknown one.
                    Some(d) if d.tenant_id == *tenant_id => Ok(d),
                    _ => Err("unknown device"),
                },
            },
        };
        match device {
            Ok(device) => {
                let entry = groups.entry(device.id).or_insert_with(|| {
                    order.push(device.id);
                    (device.clone(), Vec::new())
                });
                entry.1.push(item.fix);
            }
            Err(message) => errors.push(ItemError {
                index,
                field: "device".into(),
                code: if item.device.is_none() {
                    "missing"
                } else {
                    "unknown_device"
                },
                message: message.into(),
            }),
        }
    }
    errors.sort_by_key(|e| e.index);
    if !errors.is_empty() {
        let mut by_reason: HashMap<&'static str, u64> = HashMap::new();
        for e in &errors {
            *by_reason.entry(e.code).or_default() += 1;
        }
        for (code, n) in by_reason {
            state.metrics.refused(Protocol::Json, code, n);
        }
    }
    if groups.is_empty() {
        return Err(ApiError::InvalidItems(errors));
    }
    let batches = order
        .into_iter()
        .filter_map(|id| groups.remove(&id))
        .collect();
    let accepted = state.producer.produce(Protocol::Json, batches).await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        serde_json::json!({ "accepted": accepted, "rejected": errors }),
    ))
}
