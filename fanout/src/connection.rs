//! One WebSocket client: the `/v1/live` handler (refusals before the upgrade: connect rate limits,
//! origin, credential), then the session: a reader that handles client messages (subscribes
//! rate-limited by a token bucket), subscriptions, access changes found by the re-check
//! ([`recheck`](crate::recheck)) and the heartbeat, and a writer that drains the connection's
//! [`outbox`](crate::outbox) to the socket. Both run in the client's one task; either ending
//! cancels the other, and the writer always tries to say why in a Close frame. The session's
//! start and subscriptions go to the audit log ([`audit`](crate::audit)).

use crate::audit::{Auditor, SessionAudit};
use crate::auth::{self, Via};
use crate::config::Settings;
use crate::error::ApiError;
use crate::limits::{self, SubscribeBucket};
use crate::metrics::Metrics;
use crate::outbox::{CloseReason, ConnShared, Item, Outgoing, QueueLimits};
use crate::protocol::{self, ClientMessage, EventKinds, Selectors, SubscriptionState};
use crate::recheck::{Access, AccessUpdates, Sessions};
use crate::router::{Router, WideSub};
use crate::store::{self, SnapshotQuery};
use crate::subscriber::Upstream;
use axum::extract::rejection::{ExtensionRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use gps_domain::auth::{DeviceScope, Principal, Visibility};
use gps_domain::geo::BBox;
use gps_runtime::service::Tasks;
use gps_store::principal::JwtKeys;
use gps_store::tickets::TicketKey;
use gps_store::visibility;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Messages moved from the queue per lock; also the most frames written before a flush.
const WRITE_BATCH: usize = 64;
/// Bad client messages tolerated per connection before it is closed.
const MAX_CLIENT_ERRORS: u32 = 100;
/// `subscribe` messages refused in a row by the rate limit before the connection is closed.
const MAX_RATE_LIMITED: u32 = 10;
/// How long the final Close frame may take to write.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Socket read buffer per connection: client messages are small, and 10,000 idle connections
/// must stay cheap (the library default is 128 KiB each).
const READ_BUFFER: usize = 4 * 1024;
/// Bytes of frames gathered before a socket write (a flush always writes everything).
const WRITE_BUFFER: usize = 16 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Database pool (auth, visibility, snapshots).
    pub pool: PgPool,
    /// Redis connection for ticket redemption.
    pub redis: ConnectionManager,
    /// JWT verification keys.
    pub keys: JwtKeys,
    /// Live ticket signature key (derived from the JWT secret).
    pub ticket_key: TicketKey,
    /// Checked configuration.
    pub settings: Arc<Settings>,
    /// The routing index.
    pub router: Arc<Router>,
    /// Metrics.
    pub metrics: Metrics,
    /// Redis subscription status.
    pub upstream: Arc<Upstream>,
    /// Cancelled at shutdown; every connection's token is a child.
    pub cancel: CancellationToken,
    /// Tracks connection tasks so that shutdown waits for their Close frames.
    pub tasks: Tasks,
    /// Connection id source.
    pub next_id: Arc<AtomicU64>,
    /// Open sessions, re-checked by the sweeper.
    pub sessions: Arc<Sessions>,
    /// The audit writer's queue.
    pub auditor: Auditor,
}

/// Query parameters of `/v1/live`.
#[derive(Debug, Deserialize)]
pub struct LiveParams {
    /// Single-use ticket from the query API (browsers, which cannot set headers on a WebSocket).
    pub ticket: Option<String>,
}

/// `GET /v1/live`: check origin and credential, then upgrade.
pub async fn live(
    State(state): State<AppState>,
    peer: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    headers: HeaderMap,
    params: Result<Query<LiveParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // The client behind trusted proxies (`TRUSTED_PROXIES`); otherwise the TCP peer.
    let peer = peer.ok().map(|ConnectInfo(addr)| {
        state
            .settings
            .trusted_proxies
            .client_ip(addr.ip(), &headers)
    });
    match accept(state.clone(), peer, headers, params, upgrade).await {
        Ok(response) => response,
        Err(e) => {
            state
                .metrics
                .upgrades_refused
                .with_label_values(&[e.label()])
                .inc();
            tracing::debug!(reason = e.label(), error = %e, "live upgrade refused");
            e.into_response()
        }
    }
}

async fn accept(
    state: AppState,
    peer: Option<IpAddr>,
    headers: HeaderMap,
    params: Result<Query<LiveParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest {
        field: "ticket",
        message: e.body_text(),
    })?;
    // Checked before the credential so that a plain GET does not burn a single-use ticket.
    let upgrade = upgrade.map_err(|e| ApiError::UpgradeRequired(e.body_text()))?;
    let connect_limits = state.settings.connect_limits;
    // Before the credential: a flood from one address costs a Redis increment per attempt, not
    // a database lookup (and burns no ticket).
    let address = peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    limits::check_connect(
        &state.redis,
        "fanout_ip",
        "ip",
        &address,
        connect_limits.per_ip,
    )
    .await?;
    let (principal, via, issued_at) = auth::authenticate(
        &state.pool,
        &state.redis,
        &state.keys,
        &state.ticket_key,
        &state.settings.origins,
        &headers,
        params.ticket.as_deref(),
    )
    .await?;
    let (kind, id) = principal.audit_actor();
    limits::check_connect(
        &state.redis,
        "fanout_principal",
        "principal",
        &format!("{kind}:{id}"),
        connect_limits.per_principal,
    )
    .await?;
    let max = state.settings.limits.max_message_bytes;
    let tasks = state.tasks.clone();
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            tasks.track(
                "connection",
                serve(socket, state, principal, via, issued_at, peer),
            )
        }))
}

/// What one connection is subscribed to.
#[derive(Debug, Default)]
struct Subscriptions {
    devices: HashSet<Uuid>,
    groups: HashMap<Uuid, Vec<Uuid>>,
    bboxes: Vec<BBox>,
    all: bool,
    /// Devices currently routed to the connection: `devices` and the groups' devices.
    routed: HashSet<Uuid>,
    visibility: Option<Arc<Visibility>>,
    /// The event types sent beside the fixes (mirrored in the connection for the router).
    events: EventKinds,
}

impl Subscriptions {
    fn wanted(&self) -> HashSet<Uuid> {
        let mut wanted = self.devices.clone();
        for devices in self.groups.values() {
            wanted.extend(devices.iter().copied());
        }
        wanted
    }

    fn state(&self) -> SubscriptionState {
        SubscriptionState {
            devices: self.devices.iter().copied().collect(),
            groups: self.groups.keys().copied().collect(),
            bboxes: self.bboxes.iter().map(|b| b.to_array()).collect(),
            all: self.all,
            device_count: self.routed.len(),
            events: self.events.names(),
        }
    }

    fn wide(&self, conn: &Arc<ConnShared>) -> Option<WideSub> {
        let visibility = self.visibility.clone()?;
        (self.all || !self.bboxes.is_empty()).then(|| WideSub {
            conn: conn.clone(),
            all: self.all,
            bboxes: self.bboxes.clone(),
            visibility,
        })
    }
}

struct Session {
    pool: PgPool,
    settings: Arc<Settings>,
    router: Arc<Router>,
    metrics: Metrics,
    principal: Principal,
    conn: Arc<ConnShared>,
    subs: Subscriptions,
    errors: u32,
    sessions: Arc<Sessions>,
    /// Access changes found by the re-check sweeper.
    access: AccessUpdates,
    /// Subscribe rate limit.
    bucket: SubscribeBucket,
    /// Subscribes refused by the rate limit in a row.
    rate_limited: u32,
    audit: SessionAudit,
}

async fn serve(
    socket: WebSocket,
    state: AppState,
    principal: Principal,
    via: Via,
    issued_at: Option<i64>,
    ip: Option<IpAddr>,
) {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let limits = &state.settings.limits;
    let conn = Arc::new(ConnShared::new(
        id,
        principal.tenant_id,
        QueueLimits {
            capacity: limits.queue_capacity,
            hard_limit: limits.queue_hard_limit,
            grace: limits.slow_client_grace,
        },
        state.cancel.child_token(),
        state.metrics.clone(),
    ));
    let scope = match principal.device_scope() {
        DeviceScope::Tenant => "tenant",
        DeviceScope::Groups => "groups",
        DeviceScope::OwnDevice => "own_device",
    };
    conn.push_item(Item::Text(protocol::welcome_message(
        id,
        principal.tenant_id,
        scope,
        state.upstream.is_subscribed(),
        limits,
    )));
    state.router.add_connection(conn.clone());
    let access = state
        .sessions
        .register(conn.clone(), principal.clone(), issued_at);
    state.metrics.connections.inc();
    state.metrics.connections_opened.inc();
    let (actor, actor_id) = principal.audit_actor();
    tracing::debug!(connection = id, tenant = %principal.tenant_id, actor, actor_id = %actor_id, "live connection opened");
    let audit = SessionAudit::start(
        state.auditor.clone(),
        &principal,
        ip,
        id,
        via.as_str(),
        scope,
    );

    let (sink, stream) = socket.split();
    let mut session = Session {
        pool: state.pool.clone(),
        settings: state.settings.clone(),
        router: state.router.clone(),
        metrics: state.metrics.clone(),
        principal,
        conn: conn.clone(),
        subs: Subscriptions::default(),
        errors: 0,
        sessions: state.sessions.clone(),
        access,
        bucket: SubscribeBucket::new(limits.subscribe_burst, limits.subscribes_per_minute),
        rate_limited: 0,
        audit,
    };
    let reader = async {
        let reason = session.read_loop(stream).await;
        conn.close(reason);
    };
    let writer = write_loop(sink, &conn, &state.metrics);
    tokio::join!(reader, writer);

    let reason = conn.close_reason().unwrap_or(CloseReason::Shutdown);
    state.sessions.remove(id);
    session.audit.closed(reason);
    let routed: Vec<Uuid> = session.subs.routed.iter().copied().collect();
    state.router.remove_connection(&conn, &routed);
    state.metrics.connections.dec();
    state
        .metrics
        .closes
        .with_label_values(&[reason.label()])
        .inc();
    if matches!(
        reason,
        CloseReason::TooSlow
            | CloseReason::AccountDisabled
            | CloseReason::KeyRevoked
            | CloseReason::CredentialInvalid
            | CloseReason::CredentialsChanged
            | CloseReason::PermissionRevoked
            | CloseReason::RateLimited
    ) {
        tracing::info!(
            connection = id,
            reason = reason.label(),
            "live connection closed"
        );
    } else {
        tracing::debug!(
            connection = id,
            reason = reason.label(),
            "live connection closed"
        );
    }
}

impl Session {
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) -> CloseReason {
        let limits = self.settings.limits.clone();
        let mut heartbeat = tokio::time::interval(limits.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let mut last_seen = Instant::now();
        let mut watching = true;
        loop {
            let message = tokio::select! {
                _ = self.conn.cancel.cancelled() => {
                    return self.conn.close_reason().unwrap_or(CloseReason::Shutdown);
                }
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() > limits.idle_timeout {
                        return CloseReason::Idle;
                    }
                    self.conn.push_item(Item::Ping);
                    self.audit.tick(tokio::time::Instant::now());
                    continue;
                }
                changed = self.access.changed(), if watching => {
                    // The sender lives as long as the session is registered; gone means never.
                    watching = changed.is_ok();
                    let access = self.access.borrow_and_update().clone();
                    if let Some(access) = access {
                        self.on_access(&access).await;
                    }
                    continue;
                }
                message = stream.next() => message,
            };
            let message = match message {
                None => return CloseReason::Client,
                Some(Err(e)) => return classify_read_error(&e.to_string()),
                Some(Ok(message)) => message,
            };
            last_seen = Instant::now();
            match message {
                Message::Text(text) => self.on_text(text.as_str()).await,
                Message::Binary(_) => self.refuse(protocol::ProtocolError {
                    code: "binary_not_supported",
                    message: "send JSON text messages".into(),
                    field: None,
                    id: None,
                }),
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(_) => return CloseReason::Client,
            }
            if self.errors > MAX_CLIENT_ERRORS {
                return CloseReason::TooManyErrors;
            }
            if self.rate_limited > MAX_RATE_LIMITED {
                return CloseReason::RateLimited;
            }
        }
    }

    fn send(&self, text: String) {
        self.conn.push_item(Item::Text(text));
    }

    fn refuse(&mut self, error: protocol::ProtocolError) {
        self.errors += 1;
        self.metrics
            .client_errors
            .with_label_values(&[error.code])
            .inc();
        self.send(error.to_message());
    }

    async fn on_text(&mut self, text: &str) {
        match protocol::parse_client(text) {
            Err(e) => self.refuse(e),
            Ok(ClientMessage::Ping { id }) => self.send(protocol::pong_message(id.as_ref())),
            Ok(ClientMessage::Subscribe {
                id,
                selectors,
                events,
            }) => match self.bucket.take(tokio::time::Instant::now()) {
                Ok(()) => {
                    self.rate_limited = 0;
                    self.subscribe(id, selectors, events).await;
                }
                Err(wait) => {
                    self.rate_limited += 1;
                    self.metrics
                        .client_errors
                        .with_label_values(&["rate_limited"])
                        .inc();
                    self.send(protocol::rate_limited_message(id.as_ref(), wait));
                }
            },
            Ok(ClientMessage::Unsubscribe { id, selectors }) => self.unsubscribe(id, selectors),
        }
    }

    fn fail(&mut self, id: Option<&Value>, code: &'static str, message: &str) {
        self.errors += 1;
        self.metrics.client_errors.with_label_values(&[code]).inc();
        self.send(protocol::error_message(id, code, message, None, &[], &[]));
    }

    /// Check and add what `selectors` name; `events`, when given, replaces the connection's
    /// choice of event types (for everything it watches), once the subscribe is accepted.
    async fn subscribe(
        &mut self,
        id: Option<Value>,
        selectors: Selectors,
        events: Option<EventKinds>,
    ) {
        let limits = self.settings.limits.clone();
        let checked = async {
            let visibility = visibility::visibility(&self.pool, &self.principal).await?;
            let devices = store::visible_devices(
                &self.pool,
                &self.principal,
                &visibility,
                &selectors.devices,
            )
            .await?;
            let groups =
                store::visible_groups(&self.pool, &self.principal, &visibility, &selectors.groups)
                    .await?;
            Ok::<_, sqlx::Error>((visibility, devices, groups))
        }
        .await;
        let (visibility, (devices, refused_devices), (groups, refused_groups)) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                tracing::error!(error = %e, "subscription check failed");
                return self.fail(
                    id.as_ref(),
                    "unavailable",
                    "the subscription could not be checked; retry later",
                );
            }
        };
        if let Some(bbox) = selectors.bbox {
            if !self.subs.bboxes.contains(&bbox) && self.subs.bboxes.len() >= limits.max_bboxes {
                return self.fail(
                    id.as_ref(),
                    "too_many_bboxes",
                    &format!(
                        "at most {} bounding boxes per connection",
                        limits.max_bboxes
                    ),
                );
            }
        }
        let mut wanted = self.subs.wanted();
        wanted.extend(devices.iter().copied());
        for members in groups.values() {
            wanted.extend(members.iter().copied());
        }
        if wanted.len() > limits.max_devices {
            return self.fail(
                id.as_ref(),
                "too_many_devices",
                &format!("at most {} devices per connection", limits.max_devices),
            );
        }

        let snapshot_devices: Vec<Uuid> = devices
            .iter()
            .chain(groups.values().flatten())
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let granted_groups: Vec<Uuid> = groups.keys().copied().collect();
        self.audit
            .subscribed(&devices, &granted_groups, selectors.bbox, selectors.all);
        self.subs.devices.extend(devices.iter().copied());
        self.subs.groups.extend(groups);
        if let Some(bbox) = selectors.bbox {
            if !self.subs.bboxes.contains(&bbox) {
                self.subs.bboxes.push(bbox);
            }
        }
        self.subs.all |= selectors.all;
        let visibility = Arc::new(visibility);
        self.subs.visibility = Some(visibility.clone());
        self.sessions
            .set_visibility(self.conn.id, visibility.clone());
        let add: Vec<Uuid> = wanted.difference(&self.subs.routed).copied().collect();
        self.subs.routed = wanted;

        // Route first, then read the snapshot, holding the queue meanwhile: no fix committed
        // after the snapshot read can be missed, and none is sent before the snapshot. Events
        // start under the hold too, so the first one follows the `subscribed` ack.
        self.conn.hold();
        if let Some(events) = events {
            self.subs.events = events;
            self.conn.set_events(events);
        }
        self.router
            .update(&self.conn, &add, &[], self.subs.wide(&self.conn));
        let snapshot = store::snapshot(
            &self.pool,
            self.principal.tenant_id,
            &visibility,
            &SnapshotQuery {
                all: selectors.all,
                devices: &snapshot_devices,
                bbox: selectors.bbox,
            },
            limits.snapshot_limit,
        )
        .await;
        let mut front = Vec::with_capacity(3);
        if !refused_devices.is_empty() || !refused_groups.is_empty() {
            self.errors += 1;
            self.metrics
                .client_errors
                .with_label_values(&["not_found"])
                .inc();
            front.push(Item::Text(protocol::error_message(
                id.as_ref(),
                "not_found",
                "no visible device or group with these ids; they were not subscribed",
                None,
                &refused_devices,
                &refused_groups,
            )));
        }
        front.push(Item::Text(protocol::ack_message(
            "subscribed",
            id.as_ref(),
            &self.subs.state(),
        )));
        match snapshot {
            Ok((fixes, truncated)) => front.push(Item::Snapshot {
                id,
                truncated,
                fixes,
            }),
            Err(e) => {
                tracing::error!(error = %e, "snapshot read failed");
                front.push(Item::Text(protocol::error_message(
                    id.as_ref(),
                    "snapshot_unavailable",
                    "subscribed, but the snapshot could not be read; live fixes follow",
                    None,
                    &[],
                    &[],
                )));
            }
        }
        self.conn.release(front);
    }

    /// The re-check found the principal or its visibility changed: keep only what it may still
    /// see (explicit devices, groups it may still watch, wide subscriptions filtered by the new
    /// visibility), re-route, drop queued fixes of devices no longer routed, and tell the client.
    async fn on_access(&mut self, access: &Access) {
        self.principal = access.principal.clone();
        let Some(visibility) = access.visibility.clone() else {
            // Never subscribed: nothing is routed to re-check.
            return;
        };
        let tenant = self.principal.tenant_id;
        let devices_before: HashSet<Uuid> = self.subs.devices.clone();
        let groups_before: HashSet<Uuid> = self.subs.groups.keys().copied().collect();
        self.subs
            .devices
            .retain(|d| visibility.contains(tenant, *d));
        let names: Vec<Uuid> = groups_before.iter().copied().collect();
        match store::visible_groups(&self.pool, &self.principal, &visibility, &names).await {
            Ok((groups, _)) => self.subs.groups = groups,
            Err(e) => {
                // Without the group query, still drop every device no longer visible.
                tracing::error!(error = %e, "group re-check failed, filtering by visibility only");
                for members in self.subs.groups.values_mut() {
                    members.retain(|d| visibility.contains(tenant, *d));
                }
            }
        }
        self.subs.visibility = Some(visibility.clone());
        let wanted = self.subs.wanted();
        let add: Vec<Uuid> = wanted.difference(&self.subs.routed).copied().collect();
        let remove: Vec<Uuid> = self.subs.routed.difference(&wanted).copied().collect();
        self.subs.routed = wanted;
        let wide = self.subs.wide(&self.conn);
        let wide_active = wide.is_some();
        self.router.update(&self.conn, &add, &remove, wide);
        let routed = &self.subs.routed;
        self.conn.purge_fixes(|d| {
            routed.contains(&d) || (wide_active && visibility.contains(tenant, d))
        });
        let mut removed_devices: Vec<Uuid> = devices_before
            .difference(&self.subs.devices)
            .copied()
            .collect();
        removed_devices.sort();
        let mut removed_groups: Vec<Uuid> = groups_before
            .iter()
            .filter(|g| !self.subs.groups.contains_key(g))
            .copied()
            .collect();
        removed_groups.sort();
        tracing::debug!(
            connection = self.conn.id,
            removed_devices = removed_devices.len(),
            removed_groups = removed_groups.len(),
            unrouted = remove.len(),
            "live session access changed"
        );
        self.send(protocol::access_changed_message(
            &removed_devices,
            &removed_groups,
            &self.subs.state(),
        ));
    }

    fn unsubscribe(&mut self, id: Option<Value>, selectors: Selectors) {
        if selectors.is_empty() || selectors.all {
            let visibility = self.subs.visibility.take();
            self.subs = Subscriptions {
                routed: std::mem::take(&mut self.subs.routed),
                visibility,
                ..Subscriptions::default()
            };
            // Nothing watched, no events either (a later subscribe asks again).
            self.conn.set_events(EventKinds::NONE);
        } else {
            for device in &selectors.devices {
                self.subs.devices.remove(device);
            }
            for group in &selectors.groups {
                self.subs.groups.remove(group);
            }
            if let Some(bbox) = selectors.bbox {
                self.subs.bboxes.retain(|b| *b != bbox);
            }
        }
        let wanted = self.subs.wanted();
        let remove: Vec<Uuid> = self.subs.routed.difference(&wanted).copied().collect();
        self.subs.routed = wanted;
        self.router
            .update(&self.conn, &[], &remove, self.subs.wide(&self.conn));
        self.send(protocol::ack_message(
            "unsubscribed",
            id.as_ref(),
            &self.subs.state(),
        ));
    }
}

/// Read errors: an oversized message, a protocol violation, or the client simply going away.
fn classify_read_error(error: &str) -> CloseReason {
    if error.contains("Space limit exceeded") || error.contains("too long") {
        CloseReason::MessageTooBig
    } else if error.contains("protocol error") || error.contains("UTF-8") {
        CloseReason::ProtocolError
    } else {
        CloseReason::Client
    }
}

async fn write_loop(mut sink: SplitSink<WebSocket, Message>, conn: &ConnShared, metrics: &Metrics) {
    let fix_sent = metrics.messages_sent.with_label_values(&["fix"]);
    let snapshot_sent = metrics.messages_sent.with_label_values(&["snapshot"]);
    let control_sent = metrics.messages_sent.with_label_values(&["control"]);
    let status_sent = metrics.messages_sent.with_label_values(&["status"]);
    let event_sent = metrics.messages_sent.with_label_values(&["event"]);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    'session: loop {
        loop {
            if !conn.pop_batch(WRITE_BATCH, &mut batch) {
                break 'session;
            }
            if batch.is_empty() {
                break;
            }
            for outgoing in batch.drain(..) {
                let (message, received) = match outgoing {
                    Outgoing::Fix { seq, fix } => {
                        fix_sent.inc();
                        (
                            Message::Text(protocol::fix_message(seq, &fix).into()),
                            Some(fix.received),
                        )
                    }
                    Outgoing::Snapshot {
                        id,
                        truncated,
                        entries,
                    } => {
                        snapshot_sent.inc();
                        let text = protocol::snapshot_message(id.as_ref(), truncated, &entries);
                        (Message::Text(text.into()), None)
                    }
                    Outgoing::Status(status) => {
                        status_sent.inc();
                        (Message::Text(status.message().into()), None)
                    }
                    Outgoing::Event(event) => {
                        event_sent.inc();
                        (Message::Text(event.message().into()), None)
                    }
                    Outgoing::Text(text) => {
                        control_sent.inc();
                        (Message::Text(text.into()), None)
                    }
                    Outgoing::Lagged(n) => {
                        control_sent.inc();
                        (Message::Text(protocol::lagged_message(n).into()), None)
                    }
                    Outgoing::Ping => (Message::Ping(Default::default()), None),
                };
                let fed = tokio::select! {
                    _ = conn.cancel.cancelled() => break 'session,
                    fed = sink.feed(message) => fed,
                };
                if fed.is_err() {
                    conn.close(CloseReason::WriteFailed);
                    break 'session;
                }
                if let Some(received) = received {
                    metrics
                        .delivery_seconds
                        .observe(received.elapsed().as_secs_f64());
                }
            }
            let flushed = tokio::select! {
                _ = conn.cancel.cancelled() => break 'session,
                flushed = sink.flush() => flushed,
            };
            if flushed.is_err() {
                conn.close(CloseReason::WriteFailed);
                break 'session;
            }
        }
        tokio::select! {
            _ = conn.cancel.cancelled() => break,
            _ = conn.wait() => {}
        }
    }
    let reason = conn.close_reason().unwrap_or(CloseReason::Shutdown);
    if reason != CloseReason::WriteFailed {
        let frame = Message::Close(Some(CloseFrame {
            code: reason.code(),
            reason: reason.text().into(),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(frame)).await;
    }
}
