//! The in-memory routing index from live fixes to connections: per tenant, a map from device to
//! the connections subscribed to it, plus a list of the tenant's "wide" subscribers (bounding
//! boxes or all devices). Routing a fix costs one hash lookup per tenant and device, plus one
//! check per wide subscriber of the same tenant: never a scan of unrelated connections.
//!
//! A device status goes where a fix of the device would, by the same visibility rule, except to
//! bounding-box subscriptions: a status has no position to place in a box, so a connection gets
//! it when it names the device (directly or through a group) or subscribes to `all`.

use crate::metrics::Metrics;
use crate::outbox::{ConnShared, Item};
use crate::protocol::{EncodedFix, EncodedStatus};
use gps_domain::auth::Visibility;
use gps_domain::geo::BBox;
use gps_domain::live::{LiveFix, LiveStatus};
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
        self.visibility.contains(tenant, fix.device)
            && (self.all
                || self
                    .bboxes
                    .iter()
                    .any(|b| b.contains(fix.fix.lat, fix.fix.lon)))
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

    /// Queue each fix for every connection that subscribes to it; returns the deliveries.
    pub fn dispatch(&self, tenant: Uuid, fixes: &[LiveFix], received: Instant) -> usize {
        let index = self.read();
        let Some(routes) = index.tenants.get(&tenant) else {
            return 0;
        };
        let mut deliveries = 0;
        for live in fixes {
            let direct = routes
                .devices
                .get(&live.device)
                .map(Vec::as_slice)
                .unwrap_or_default();
            // Encoded lazily, once, and only if someone wants it.
            let mut encoded: Option<Arc<EncodedFix>> = None;
            let mut encode = || {
                encoded
                    .get_or_insert_with(|| Arc::new(EncodedFix::from_live(live, received)))
                    .clone()
            };
            for conn in direct {
                conn.push_fix(&encode());
                deliveries += 1;
            }
            for wide in &routes.wide {
                // A connection that also names the device directly already has it.
                if wide.matches(tenant, live) && !direct.iter().any(|c| c.id == wide.conn.id) {
                    wide.conn.push_fix(&encode());
                    deliveries += 1;
                }
            }
        }
        deliveries
    }

    /// Queue each status for every connection that names its device or subscribes to every
    /// device it may see; returns the deliveries.
    pub fn dispatch_statuses(&self, tenant: Uuid, statuses: &[LiveStatus]) -> usize {
        let index = self.read();
        let Some(routes) = index.tenants.get(&tenant) else {
            return 0;
        };
        let mut deliveries = 0;
        for live in statuses {
            let direct = routes
                .devices
                .get(&live.device)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut encoded: Option<Arc<EncodedStatus>> = None;
            let mut encode = || {
                encoded
                    .get_or_insert_with(|| Arc::new(EncodedStatus::from_live(live)))
                    .clone()
            };
            for conn in direct {
                conn.push_status(&encode());
                deliveries += 1;
            }
            for wide in &routes.wide {
                let sees = wide.all && wide.visibility.contains(tenant, live.device);
                if sees && !direct.iter().any(|c| c.id == wide.conn.id) {
                    wide.conn.push_status(&encode());
                    deliveries += 1;
                }
            }
        }
        deliveries
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

    fn statuses_of(conn: &ConnShared) -> Vec<Uuid> {
        let mut out = Vec::new();
        conn.pop_batch(usize::MAX, &mut out);
        out.into_iter()
            .filter_map(|o| match o {
                Outgoing::Status(status) => Some(status.device),
                _ => None,
            })
            .collect()
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
        let wide = |c: &Arc<ConnShared>, all, bboxes, visibility| WideSub {
            conn: c.clone(),
            all,
            bboxes,
            visibility: Arc::new(visibility),
        };
        router.update(
            &by_bbox,
            &[],
            &[],
            Some(wide(
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
            Some(wide(
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
            Some(wide(
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
        let mut out = Vec::new();
        conn.pop_batch(usize::MAX, &mut out);
        out.into_iter()
            .filter_map(|o| match o {
                Outgoing::Fix { fix, .. } => Some(fix.device),
                _ => None,
            })
            .collect()
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
