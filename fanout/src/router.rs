//! The in-memory routing index from live fixes to connections: per tenant, a map from device to
//! the connections subscribed to it, plus a list of the tenant's "wide" subscribers (bounding
//! boxes or all devices). Routing a fix costs one hash lookup per tenant and device, plus one
//! check per wide subscriber of the same tenant: never a scan of unrelated connections.
//!
//! A device status goes where a fix of the device would, by the same visibility rule, except to
//! bounding-box subscriptions: a status has no position to place in a box, so a connection gets
//! it when it names the device (directly or through a group) or subscribes to `all`.
//!
//! An event goes where a fix of the device at the event's position would (a bounding box gets it
//! when the position is in the box; an event without one reaches no box), and only to
//! connections that asked for its type.

use crate::metrics::Metrics;
use crate::outbox::{ConnShared, Item};
use crate::protocol::{EncodedEvent, EncodedFix, EncodedStatus};
use gps_domain::auth::Visibility;
use gps_domain::geo::BBox;
use gps_domain::live::{LiveEvent, LiveFix, LiveStatus};
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;
use uuid::Uuid;

/// A connection's bounding-box / all-device subscription within its tenant.
#[derive(Debug, Clone)]
pub struct WideSub {
    /// The connection.
    pub conn: Arc<ConnShared>,
    /// Every visible device.
    pub all: bool,
    /// Bounding boxes.
    pub bboxes: Vec<BBox>,
    /// What the principal may see (checked per fix: wide subscriptions name no device).
    pub visibility: Arc<Visibility>,
}

impl WideSub {
    fn matches(&self, tenant: Uuid, fix: &LiveFix) -> bool {
        self.matches_at(tenant, fix.device, Some((fix.fix.lat, fix.fix.lon)))
    }

    /// Whether it covers `device` at `position` (`(lat, lon)`; none: only `all` covers it).
    fn matches_at(&self, tenant: Uuid, device: Uuid, position: Option<(f64, f64)>) -> bool {
        self.visibility.contains(tenant, device)
            && (self.all
                || position
                    .is_some_and(|(lat, lon)| self.bboxes.iter().any(|b| b.contains(lat, lon))))
    }
}

#[derive(Debug, Default)]
struct TenantRoutes {
    devices: HashMap<Uuid, Vec<Arc<ConnShared>>>,
    wide: Vec<WideSub>,
}

impl TenantRoutes {
    fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.wide.is_empty()
    }

    /// The one routing rule of live items: queue one item of `device` on every connection that
    /// names the device and on every wide subscriber `wide_covers` accepts, once per connection
    /// and only where `wants` holds, encoding it at most once (and only if someone wants it).
    /// Returns the deliveries.
    fn deliver<E>(
        &self,
        device: Uuid,
        wants: impl Fn(&ConnShared) -> bool,
        wide_covers: impl Fn(&WideSub) -> bool,
        encode: impl Fn() -> E,
        push: impl Fn(&ConnShared, &Arc<E>),
    ) -> usize {
        let direct = self
            .devices
            .get(&device)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut encoded: Option<Arc<E>> = None;
        let mut deliveries = 0;
        let mut send = |conn: &ConnShared| {
            let item = encoded.get_or_insert_with(|| Arc::new(encode()));
            push(conn, item);
            deliveries += 1;
        };
        for conn in direct.iter().filter(|c| wants(c)) {
            send(conn);
        }
        for wide in &self.wide {
            // A connection that also names the device directly already has it.
            if wants(&wide.conn)
                && wide_covers(wide)
                && !direct.iter().any(|c| c.id == wide.conn.id)
            {
                send(&wide.conn);
            }
        }
        deliveries
    }
}

#[derive(Debug, Default)]
struct Index {
    conns: HashMap<u64, Arc<ConnShared>>,
    tenants: HashMap<Uuid, TenantRoutes>,
}

/// The routing index, shared by the Redis subscriber (reads) and the connections (writes).
#[derive(Debug)]
pub struct Router {
    index: RwLock<Index>,
    metrics: Metrics,
}

impl Router {
    /// An empty index.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            index: RwLock::new(Index::default()),
            metrics,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a connection (for broadcasts such as `gap`).
    pub fn add_connection(&self, conn: Arc<ConnShared>) {
        self.write().conns.insert(conn.id, conn);
    }

    /// Forget a connection and every route to it.
    pub fn remove_connection(&self, conn: &ConnShared, devices: &[Uuid]) {
        let mut index = self.write();
        index.conns.remove(&conn.id);
        if let Some(routes) = index.tenants.get_mut(&conn.tenant) {
            let removed = remove_routes(routes, conn.id, devices);
            self.metrics
                .subscriptions
                .with_label_values(&["device"])
                .sub(removed as i64);
            self.set_wide(routes, conn, None);
            if routes.is_empty() {
                index.tenants.remove(&conn.tenant);
            }
        }
    }

    /// Route `add` to the connection, stop routing `remove`, and replace its wide subscription.
    pub fn update(
        &self,
        conn: &Arc<ConnShared>,
        add: &[Uuid],
        remove: &[Uuid],
        wide: Option<WideSub>,
    ) {
        let mut index = self.write();
        let routes = index.tenants.entry(conn.tenant).or_default();
        let mut added = 0i64;
        for device in add {
            let subs = routes.devices.entry(*device).or_default();
            if !subs.iter().any(|c| c.id == conn.id) {
                subs.push(conn.clone());
                added += 1;
            }
        }
        let removed = remove_routes(routes, conn.id, remove) as i64;
        self.metrics
            .subscriptions
            .with_label_values(&["device"])
            .add(added - removed);
        self.set_wide(routes, conn, wide);
        if routes.is_empty() {
            index.tenants.remove(&conn.tenant);
        }
    }

    fn set_wide(&self, routes: &mut TenantRoutes, conn: &ConnShared, wide: Option<WideSub>) {
        if let Some(pos) = routes.wide.iter().position(|w| w.conn.id == conn.id) {
            let old = routes.wide.swap_remove(pos);
            self.count_wide(&old, -1);
        }
        if let Some(wide) = wide.filter(|w| w.all || !w.bboxes.is_empty()) {
            self.count_wide(&wide, 1);
            routes.wide.push(wide);
        }
    }

    fn count_wide(&self, wide: &WideSub, sign: i64) {
        if wide.all {
            self.metrics
                .subscriptions
                .with_label_values(&["all"])
                .add(sign);
        }
        self.metrics
            .subscriptions
            .with_label_values(&["bbox"])
            .add(sign * wide.bboxes.len() as i64);
    }

    /// Whether any connection of `tenant` subscribes to anything (lets the subscriber skip
    /// decoding messages nobody here wants).
    pub fn has_tenant(&self, tenant: Uuid) -> bool {
        self.read().tenants.contains_key(&tenant)
    }

    /// `each` over the routes of `tenant`; 0 when nobody here subscribes to it.
    fn with_routes(&self, tenant: Uuid, each: impl FnOnce(&TenantRoutes) -> usize) -> usize {
        self.read().tenants.get(&tenant).map_or(0, each)
    }

    /// Queue each fix for every connection that subscribes to it; returns the deliveries.
    pub fn dispatch(&self, tenant: Uuid, fixes: &[LiveFix], received: Instant) -> usize {
        self.with_routes(tenant, |routes| {
            fixes
                .iter()
                .map(|live| {
                    routes.deliver(
                        live.device,
                        |_| true,
                        |wide| wide.matches(tenant, live),
                        || EncodedFix::from_live(live, received),
                        ConnShared::push_fix,
                    )
                })
                .sum()
        })
    }

    /// Queue each status for every connection that names its device or subscribes to every
    /// device it may see; returns the deliveries.
    pub fn dispatch_statuses(&self, tenant: Uuid, statuses: &[LiveStatus]) -> usize {
        self.with_routes(tenant, |routes| {
            statuses
                .iter()
                .map(|live| {
                    routes.deliver(
                        live.device,
                        |_| true,
                        |wide| wide.all && wide.visibility.contains(tenant, live.device),
                        || EncodedStatus::from_live(live),
                        ConnShared::push_status,
                    )
                })
                .sum()
        })
    }

    /// Queue each event for every connection that would get a fix of its device at its
    /// position and asked for its type; returns the deliveries.
    pub fn dispatch_events(&self, tenant: Uuid, events: &[LiveEvent]) -> usize {
        self.with_routes(tenant, |routes| {
            events
                .iter()
                .map(|live| {
                    let event = &live.event;
                    let position = event.lat.zip(event.lon);
                    routes.deliver(
                        event.device_id,
                        |conn| conn.wants_event(event.event_type),
                        |wide| wide.matches_at(tenant, event.device_id, position),
                        || EncodedEvent::from_live(live),
                        ConnShared::push_event,
                    )
                })
                .sum()
        })
    }

    /// Queue a control message on every connection.
    pub fn broadcast(&self, text: &str) {
        for conn in self.read().conns.values() {
            conn.push_item(Item::Text(text.to_owned()));
        }
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.read().conns.len()
    }
}

fn remove_routes(routes: &mut TenantRoutes, conn_id: u64, devices: &[Uuid]) -> usize {
    let mut removed = 0;
    for device in devices {
        if let Some(subs) = routes.devices.get_mut(device) {
            let before = subs.len();
            subs.retain(|c| c.id != conn_id);
            removed += before - subs.len();
            if subs.is_empty() {
                routes.devices.remove(device);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outgoing, QueueLimits};
    use crate::protocol::EventKinds;
    use gps_domain::events::{Event, EventType};
    use gps_domain::fix::{Fix, Protocol};
    use prometheus::Registry;
    use std::collections::HashSet;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    fn setup() -> (Router, Metrics) {
        let metrics = Metrics::new(&Registry::new());
        (Router::new(metrics.clone()), metrics)
    }

    fn conn(id: u64, tenant: Uuid, metrics: &Metrics) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(
            id,
            tenant,
            QueueLimits {
                capacity: 100,
                hard_limit: 200,
                grace: Duration::from_secs(60),
            },
            CancellationToken::new(),
            metrics.clone(),
        ))
    }

    fn live(device: Uuid, lat: f64, lon: f64) -> LiveFix {
        LiveFix {
            device,
            uid: "d".into(),
            proto: Protocol::Json,
            rx: 0,
            fix: Fix::new(1, lat, lon),
        }
    }

    fn status_of(device: Uuid) -> LiveStatus {
        LiveStatus {
            device,
            uid: "d".into(),
            last_seen: 1,
            status_time: Some(1),
            battery_pct: None,
            charging: None,
            motion: None,
            alarm: Some("sos".into()),
            alarm_time: Some(1),
            attributes: Default::default(),
        }
    }

    fn event_of(device: Uuid, event_type: EventType, position: Option<(f64, f64)>) -> LiveEvent {
        LiveEvent {
            uid: "d".into(),
            event: Event {
                id: Uuid::new_v4(),
                tenant_id: Uuid::nil(),
                device_id: device,
                event_type,
                fix_time: 1,
                lat: position.map(|p| p.0),
                lon: position.map(|p| p.1),
                geofence_id: None,
                details: serde_json::json!({}),
            },
        }
    }

    /// What `pick` takes of everything queued on `conn`.
    fn popped<T>(conn: &ConnShared, pick: impl Fn(Outgoing) -> Option<T>) -> Vec<T> {
        let mut out = Vec::new();
        conn.pop_batch(usize::MAX, &mut out);
        out.into_iter().filter_map(pick).collect()
    }

    fn wide_sub(
        conn: &Arc<ConnShared>,
        all: bool,
        bboxes: Vec<BBox>,
        visibility: Visibility,
    ) -> WideSub {
        WideSub {
            conn: conn.clone(),
            all,
            bboxes,
            visibility: Arc::new(visibility),
        }
    }

    fn events_of(conn: &ConnShared) -> Vec<(Uuid, EventType)> {
        popped(conn, |o| match o {
            Outgoing::Event(event) => Some((event.device, event.event_type)),
            _ => None,
        })
    }

    #[test]
    fn events_reach_who_would_get_the_fix_and_asked_for_the_type() {
        let (router, metrics) = setup();
        let tenant = Uuid::new_v4();
        let (d1, d2) = (Uuid::new_v4(), Uuid::new_v4());
        let every = EventKinds::all();
        let by_device = conn(1, tenant, &metrics);
        by_device.set_events(every);
        router.update(&by_device, &[d1], &[], None);
        let no_events = conn(2, tenant, &metrics);
        router.update(&no_events, &[d1, d2], &[], None);
        let alarms_only = conn(3, tenant, &metrics);
        alarms_only.set_events([EventType::Alarm].into_iter().collect());
        router.update(&alarms_only, &[d1], &[], None);
        let by_bbox = conn(4, tenant, &metrics);
        by_bbox.set_events(every);
        let near_origin = vec![BBox::new(0.0, 0.0, 10.0, 10.0).unwrap()];
        router.update(
            &by_bbox,
            &[],
            &[],
            Some(wide_sub(
                &by_bbox,
                false,
                near_origin,
                Visibility::AllOfTenant(tenant),
            )),
        );
        let viewer_all = conn(5, tenant, &metrics);
        viewer_all.set_events(every);
        router.update(
            &viewer_all,
            &[],
            &[],
            Some(wide_sub(
                &viewer_all,
                true,
                vec![],
                Visibility::Only(HashSet::from([d2])),
            )),
        );
        let events = [
            event_of(d1, EventType::Overspeed, Some((5.0, 5.0))),
            event_of(d2, EventType::Alarm, None),
            event_of(d2, EventType::GeofenceExit, Some((50.0, 50.0))),
            event_of(d1, EventType::Alarm, Some((50.0, 50.0))),
        ];
        assert_eq!(router.dispatch_events(tenant, &events), 6);
        assert_eq!(
            events_of(&by_device),
            [(d1, EventType::Overspeed), (d1, EventType::Alarm)]
        );
        assert!(events_of(&no_events).is_empty(), "did not ask for events");
        assert_eq!(events_of(&alarms_only), [(d1, EventType::Alarm)]);
        assert_eq!(
            events_of(&by_bbox),
            [(d1, EventType::Overspeed)],
            "in the box only; an event without a position reaches no box"
        );
        assert_eq!(
            events_of(&viewer_all),
            [(d2, EventType::Alarm), (d2, EventType::GeofenceExit)],
            "only what the viewer may see"
        );
    }

    fn statuses_of(conn: &ConnShared) -> Vec<Uuid> {
        popped(conn, |o| match o {
            Outgoing::Status(status) => Some(status.device),
            _ => None,
        })
    }

    #[test]
    fn statuses_reach_who_names_the_device_or_sees_all_of_it_never_a_box() {
        let (router, metrics) = setup();
        let tenant = Uuid::new_v4();
        let (d1, d2) = (Uuid::new_v4(), Uuid::new_v4());
        let by_device = conn(1, tenant, &metrics);
        let by_bbox = conn(2, tenant, &metrics);
        let viewer_all = conn(3, tenant, &metrics);
        let other_tenant = conn(4, Uuid::new_v4(), &metrics);
        let named_and_all = conn(5, tenant, &metrics);
        router.update(&by_device, &[d1], &[], None);
        router.update(
            &by_bbox,
            &[],
            &[],
            Some(wide_sub(
                &by_bbox,
                false,
                vec![BBox::new(-180.0, -90.0, 180.0, 90.0).unwrap()],
                Visibility::AllOfTenant(tenant),
            )),
        );
        router.update(
            &viewer_all,
            &[],
            &[],
            Some(wide_sub(
                &viewer_all,
                true,
                vec![],
                Visibility::Only(HashSet::from([d2])),
            )),
        );
        router.update(&other_tenant, &[d1, d2], &[], None);
        router.update(
            &named_and_all,
            &[d1],
            &[],
            Some(wide_sub(
                &named_and_all,
                true,
                vec![],
                Visibility::AllOfTenant(tenant),
            )),
        );
        let statuses = [status_of(d1), status_of(d2)];
        assert_eq!(router.dispatch_statuses(tenant, &statuses), 4);
        assert_eq!(statuses_of(&by_device), vec![d1]);
        assert!(statuses_of(&by_bbox).is_empty(), "a status has no position");
        assert_eq!(
            statuses_of(&viewer_all),
            vec![d2],
            "only what the viewer may see"
        );
        assert!(statuses_of(&other_tenant).is_empty());
        assert_eq!(statuses_of(&named_and_all), vec![d1, d2], "d1 once");
    }

    fn devices_of(conn: &ConnShared) -> Vec<Uuid> {
        popped(conn, |o| match o {
            Outgoing::Fix { fix, .. } => Some(fix.device),
            _ => None,
        })
    }

    #[test]
    fn fixes_reach_device_and_wide_subscribers_once_each() {
        let (router, metrics) = setup();
        let tenant = Uuid::new_v4();
        let (d1, d2, d3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let by_device = conn(1, tenant, &metrics);
        let by_bbox = conn(2, tenant, &metrics);
        let viewer_all = conn(3, tenant, &metrics);
        let other_tenant = conn(4, Uuid::new_v4(), &metrics);
        router.update(&by_device, &[d1], &[], None);
        router.update(
            &by_bbox,
            &[d1],
            &[],
            Some(WideSub {
                conn: by_bbox.clone(),
                all: false,
                bboxes: vec![BBox::new(0.0, 0.0, 10.0, 10.0).unwrap()],
                visibility: Arc::new(Visibility::AllOfTenant(tenant)),
            }),
        );
        router.update(
            &viewer_all,
            &[],
            &[],
            Some(WideSub {
                conn: viewer_all.clone(),
                all: true,
                bboxes: vec![],
                visibility: Arc::new(Visibility::Only(HashSet::from([d2]))),
            }),
        );
        router.update(&other_tenant, &[d1], &[], None);
        let fixes = [live(d1, 5.0, 5.0), live(d2, 5.0, 5.0), live(d3, 50.0, 50.0)];
        assert_eq!(router.dispatch(tenant, &fixes, Instant::now()), 4);
        assert_eq!(devices_of(&by_device), vec![d1]);
        assert_eq!(
            devices_of(&by_bbox),
            vec![d1, d2],
            "d1 once, though named and in the box"
        );
        assert_eq!(
            devices_of(&viewer_all),
            vec![d2],
            "only what the viewer may see"
        );
        assert!(devices_of(&other_tenant).is_empty());
    }

    #[test]
    fn a_box_crossing_the_antimeridian_routes_both_sides_of_it() {
        let (router, metrics) = setup();
        let tenant = Uuid::new_v4();
        let (east, west, greenwich) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let pacific = conn(1, tenant, &metrics);
        router.update(
            &pacific,
            &[],
            &[],
            Some(WideSub {
                conn: pacific.clone(),
                all: false,
                bboxes: vec![BBox::new(179.0, -1.0, -179.0, 1.0).unwrap()],
                visibility: Arc::new(Visibility::AllOfTenant(tenant)),
            }),
        );
        let fixes = [
            live(east, 0.0, 179.5),
            live(west, 0.0, -179.5),
            live(greenwich, 0.0, 0.0),
        ];
        assert_eq!(router.dispatch(tenant, &fixes, Instant::now()), 2);
        assert_eq!(devices_of(&pacific), vec![east, west]);
    }

    #[test]
    fn removed_routes_stop_and_empty_tenants_are_dropped() {
        let (router, metrics) = setup();
        let tenant = Uuid::new_v4();
        let d = Uuid::new_v4();
        let c = conn(1, tenant, &metrics);
        router.add_connection(c.clone());
        router.update(&c, &[d], &[], None);
        assert!(router.has_tenant(tenant));
        assert_eq!(
            metrics.subscriptions.with_label_values(&["device"]).get(),
            1
        );
        router.update(&c, &[], &[d], None);
        assert!(!router.has_tenant(tenant));
        assert_eq!(
            router.dispatch(tenant, &[live(d, 1.0, 1.0)], Instant::now()),
            0
        );
        router.remove_connection(&c, &[d]);
        assert_eq!(router.connection_count(), 0);
        assert_eq!(
            metrics.subscriptions.with_label_values(&["device"]).get(),
            0
        );
    }
}
