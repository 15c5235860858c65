//! Live sessions re-checked against the current state: a WebSocket authenticates once, but its
//! user may be disabled or deleted, its API key revoked, its role changed or its groups edited
//! while it stays open. One sweeper task ([`run`]) re-reads, every `FANOUT_RECHECK_SECS`, the
//! principal of every open session ([`gps_store::principal::current_since`]) and, for sessions
//! that subscribed to something, its visibility ([`gps_store::visibility`]); then it
//!
//! - closes the sessions of a refused credential with a close code and reason (4401: account
//!   disabled or deleted, API key revoked or expired, credential no longer valid, or credentials
//!   changed: the user's password was changed or reset after the session's credential was
//!   issued; 4403: the principal lost `live:read`), through the connection's own close path;
//! - hands a changed principal or visibility to the session ([`Access`], through a `watch`
//!   slot), which drops what it may no longer see and re-routes.
//!
//! Each session remembers when its credential was issued (a JWT's `iat`, a ticket's issue time;
//! none for an API key). The check of a principal returns the user's credential cutoff
//! (`users.tokens_not_before`), and each session is judged against it on its own: a session
//! opened with a token issued after a password change stays open while older ones close.
//!
//! Cost: sessions of the same principal share one check, and at most [`CONCURRENCY`] checks run
//! at once, so a sweep over 10,000 idle connections of a few hundred users is a few hundred
//! primary-key reads, and never more than [`CONCURRENCY`] pool connections. An idle session costs
//! a map entry and a `watch` slot, no task or timer of its own. A store that does not answer
//! keeps the sessions as they are (logged, counted as `unavailable`): a database hiccup does not
//! close every dashboard, and the next sweep decides.

use crate::metrics::Metrics;
use crate::outbox::{CloseReason, ConnShared};
use futures::StreamExt;
use gps_domain::auth::{Permission, Principal, Visibility};
use gps_store::principal::{current_since, AuthError, Current};
use gps_store::visibility::visibility;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Principal checks in flight at once during a sweep.
pub const CONCURRENCY: usize = 8;

/// What a session may do now, handed to it when it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    /// The principal as the store has it now (role, key scopes).
    pub principal: Principal,
    /// Its visibility now; `None` for a session that never subscribed (nothing to re-route).
    pub visibility: Option<Arc<Visibility>>,
}

/// A session's receiving end: changed [`Access`] arrives here.
pub type AccessUpdates = watch::Receiver<Option<Arc<Access>>>;

#[derive(Debug)]
struct Watched {
    conn: Arc<ConnShared>,
    principal: Principal,
    /// When the session's credential was issued (unix seconds; `None` for an API key).
    issued_at: Option<i64>,
    /// The visibility the session applies (set when it subscribes, and by the sweeper).
    visibility: Option<Arc<Visibility>>,
    updates: watch::Sender<Option<Arc<Access>>>,
}

/// The open sessions, by connection id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<u64, Watched>>,
}

/// Sessions of one principal share one check: its tenant, and which user or API key it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    tenant: Uuid,
    api_key: bool,
    id: Uuid,
}

fn key_of(principal: &Principal) -> Key {
    let (kind, id) = principal.audit_actor();
    Key {
        tenant: principal.tenant_id,
        api_key: kind == "api_key",
        id,
    }
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Watched>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watch a new session whose credential was issued at `issued_at` (unix seconds; `None` for
    /// an API key); changes of its access arrive on the returned receiver.
    pub fn register(
        &self,
        conn: Arc<ConnShared>,
        principal: Principal,
        issued_at: Option<i64>,
    ) -> AccessUpdates {
        let (updates, rx) = watch::channel(None);
        self.lock().insert(
            conn.id,
            Watched {
                conn,
                principal,
                issued_at,
                visibility: None,
                updates,
            },
        );
        rx
    }

    /// The visibility session `id` now applies (it subscribed with it).
    pub fn set_visibility(&self, id: u64, visibility: Arc<Visibility>) {
        if let Some(w) = self.lock().get_mut(&id) {
            w.visibility = Some(visibility);
        }
    }

    /// Stop watching session `id`.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Sessions watched.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The outcome of one principal's check.
#[derive(Debug)]
enum Verdict {
    /// Still valid: the principal now with its credential cutoff (sessions whose credential
    /// predates it are closed), and its visibility if a session needs it.
    Current(Current, Option<Arc<Visibility>>),
    /// No longer valid: close its sessions.
    Revoked(CloseReason),
    /// The store did not answer: leave the sessions as they are until the next sweep.
    Unavailable,
}

/// Sweep every `interval` until cancelled.
pub async fn run(
    pool: PgPool,
    sessions: Arc<Sessions>,
    metrics: Metrics,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    // A slow sweep delays the next one instead of queueing a burst of them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        sweep(&pool, &sessions, &metrics).await;
        metrics
            .recheck_sweep_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

/// One pass over every session.
pub async fn sweep(pool: &PgPool, sessions: &Sessions, metrics: &Metrics) {
    // Distinct principals, and whether any of their sessions needs the visibility.
    let mut wanted: HashMap<Key, (Principal, bool)> = HashMap::new();
    for w in sessions.lock().values() {
        let entry = wanted
            .entry(key_of(&w.principal))
            .or_insert_with(|| (w.principal.clone(), false));
        entry.1 |= w.visibility.is_some();
    }
    if wanted.is_empty() {
        return;
    }
    let verdicts: HashMap<Key, Verdict> = futures::stream::iter(wanted)
        .map(|(key, (principal, needs_visibility))| async move {
            (key, check(pool, &principal, needs_visibility).await)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    let Applied { changed, revoked } = apply(sessions, &verdicts);
    for (key, verdict) in &verdicts {
        let outcome = match verdict {
            Verdict::Current(..) if revoked.contains(key) => "revoked",
            Verdict::Current(..) if changed.contains(key) => "changed",
            Verdict::Current(..) => "unchanged",
            Verdict::Revoked(_) => "revoked",
            Verdict::Unavailable => "unavailable",
        };
        metrics.rechecks.with_label_values(&[outcome]).inc();
    }
}

/// What [`apply`] did, by principal.
#[derive(Debug, Default)]
struct Applied {
    /// Principals some of whose sessions got changed access.
    changed: HashSet<Key>,
    /// Principals of a valid check some of whose sessions were closed (credential predating
    /// the cutoff).
    revoked: HashSet<Key>,
}

/// Apply the verdicts to every session: close the refused (and those whose credential predates
/// the user's last credential change), hand changed access to the others.
fn apply(sessions: &Sessions, verdicts: &HashMap<Key, Verdict>) -> Applied {
    let mut applied = Applied::default();
    for w in sessions.lock().values_mut() {
        let key = key_of(&w.principal);
        match verdicts.get(&key) {
            // Opened during the sweep: the next one checks it.
            None | Some(Verdict::Unavailable) => {}
            Some(Verdict::Revoked(reason)) => w.conn.close(*reason),
            Some(Verdict::Current(now, _)) if now.refuses(w.issued_at) => {
                applied.revoked.insert(key);
                w.conn.close(CloseReason::CredentialsChanged);
            }
            Some(Verdict::Current(now, visibility)) => {
                let principal = &now.principal;
                let visibility = match (&w.visibility, visibility) {
                    (Some(_), Some(now)) => Some(now.clone()),
                    (had, _) => had.clone(),
                };
                if *principal != w.principal || visibility != w.visibility {
                    applied.changed.insert(key);
                    w.principal = principal.clone();
                    w.visibility = visibility.clone();
                    w.updates.send_replace(Some(Arc::new(Access {
                        principal: principal.clone(),
                        visibility,
                    })));
                }
            }
        }
    }
    applied
}

async fn check(pool: &PgPool, principal: &Principal, needs_visibility: bool) -> Verdict {
    let now = match current_since(pool, principal).await {
        Ok(now) => now,
        Err(AuthError::Unavailable(detail)) => {
            tracing::warn!(error = %detail, "live session re-check skipped: credential store unavailable");
            return Verdict::Unavailable;
        }
        Err(AuthError::Disabled) => return Verdict::Revoked(CloseReason::AccountDisabled),
        Err(AuthError::InvalidApiKey) => return Verdict::Revoked(CloseReason::KeyRevoked),
        Err(_) => return Verdict::Revoked(CloseReason::CredentialInvalid),
    };
    if !now.principal.allows(Permission::LiveRead) {
        return Verdict::Revoked(CloseReason::PermissionRevoked);
    }
    if !needs_visibility {
        return Verdict::Current(now, None);
    }
    // Tenant-wide visibility costs no query.
    match visibility(pool, &now.principal).await {
        Ok(seen) => Verdict::Current(now, Some(Arc::new(seen))),
        Err(e) => {
            tracing::warn!(error = %e, "live session visibility re-check skipped: database unavailable");
            Verdict::Unavailable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::QueueLimits;
    use gps_domain::auth::{Actor, Role};
    use prometheus::Registry;

    fn conn(id: u64, tenant: Uuid) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(
            id,
            tenant,
            QueueLimits {
                capacity: 10,
                hard_limit: 20,
                grace: Duration::from_secs(60),
            },
            CancellationToken::new(),
            Metrics::new(&Registry::new()),
        ))
    }

    fn user(tenant: Uuid, user_id: Uuid, role: Role) -> Principal {
        Principal {
            tenant_id: tenant,
            actor: Actor::User { user_id, role },
        }
    }

    /// A valid check of a principal whose password never changed.
    fn now(principal: Principal) -> Current {
        Current {
            principal,
            credentials_not_before: None,
        }
    }

    fn user_key(tenant: Uuid, id: Uuid) -> Key {
        Key {
            tenant,
            api_key: false,
            id,
        }
    }

    #[test]
    fn verdicts_close_the_refused_and_hand_changes_to_the_others() {
        let sessions = Sessions::default();
        let tenant = Uuid::new_v4();
        let (viewer, revoked, steady) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (d1, d2) = (Uuid::new_v4(), Uuid::new_v4());
        // Two sessions of one viewer, one of which subscribed with visibility {d1, d2}.
        let idle = conn(1, tenant);
        let mut idle_rx = sessions.register(idle.clone(), user(tenant, viewer, Role::Viewer), None);
        let watching = conn(2, tenant);
        let mut watching_rx =
            sessions.register(watching.clone(), user(tenant, viewer, Role::Viewer), None);
        sessions.set_visibility(2, Arc::new(Visibility::Only([d1, d2].into())));
        let gone = conn(3, tenant);
        sessions.register(gone.clone(), user(tenant, revoked, Role::Analyst), None);
        let same = conn(4, tenant);
        let same_rx = sessions.register(same.clone(), user(tenant, steady, Role::Analyst), None);
        let unknown = conn(5, tenant);
        sessions.register(
            unknown.clone(),
            user(tenant, Uuid::new_v4(), Role::Admin),
            None,
        );

        let narrowed = Arc::new(Visibility::Only([d1].into()));
        let verdicts = HashMap::from([
            (
                user_key(tenant, viewer),
                Verdict::Current(
                    now(user(tenant, viewer, Role::Viewer)),
                    Some(narrowed.clone()),
                ),
            ),
            (
                user_key(tenant, revoked),
                Verdict::Revoked(CloseReason::AccountDisabled),
            ),
            (
                user_key(tenant, steady),
                Verdict::Current(now(user(tenant, steady, Role::Analyst)), None),
            ),
        ]);
        let applied = apply(&sessions, &verdicts);
        assert!(applied.revoked.is_empty());
        assert_eq!(applied.changed, HashSet::from([user_key(tenant, viewer)]));
        assert_eq!(gone.close_reason(), Some(CloseReason::AccountDisabled));
        assert!(gone.cancel.is_cancelled());
        for untouched in [&idle, &watching, &same, &unknown] {
            assert_eq!(untouched.close_reason(), None);
        }
        // Only the session that routes by visibility hears of the narrower one.
        assert!(watching_rx.has_changed().unwrap());
        let access = watching_rx.borrow_and_update().clone().unwrap();
        assert_eq!(access.visibility, Some(narrowed));
        assert!(!idle_rx.has_changed().unwrap());
        assert!(!same_rx.has_changed().unwrap());

        // A role change reaches every session of the principal, subscribed or not; applying the
        // same verdicts again changes nothing.
        let promoted = HashMap::from([(
            user_key(tenant, viewer),
            Verdict::Current(now(user(tenant, viewer, Role::Analyst)), None),
        )]);
        assert_eq!(apply(&sessions, &promoted).changed.len(), 1);
        assert!(idle_rx.has_changed().unwrap());
        assert_eq!(
            idle_rx.borrow_and_update().as_ref().unwrap().principal,
            user(tenant, viewer, Role::Analyst)
        );
        assert!(apply(&sessions, &promoted).changed.is_empty());
        assert!(!idle_rx.has_changed().unwrap());
        assert_eq!(sessions.len(), 5);
        sessions.remove(3);
        assert_eq!(sessions.len(), 4);
    }

    #[test]
    fn sessions_whose_credential_predates_a_password_change_are_closed_alone() {
        let sessions = Sessions::default();
        let tenant = Uuid::new_v4();
        let alice = Uuid::new_v4();
        // Two sessions of one user share one check: one opened before the change (second 90),
        // one after it (110), one in the very second of it (100); the cutoff is second 100.
        let before = conn(1, tenant);
        sessions.register(before.clone(), user(tenant, alice, Role::Viewer), Some(90));
        let after = conn(2, tenant);
        let after_rx =
            sessions.register(after.clone(), user(tenant, alice, Role::Viewer), Some(110));
        let same_second = conn(3, tenant);
        sessions.register(
            same_second.clone(),
            user(tenant, alice, Role::Viewer),
            Some(100),
        );
        let verdicts = HashMap::from([(
            user_key(tenant, alice),
            Verdict::Current(
                Current {
                    principal: user(tenant, alice, Role::Viewer),
                    credentials_not_before: Some(100),
                },
                None,
            ),
        )]);
        let applied = apply(&sessions, &verdicts);
        assert_eq!(applied.revoked, HashSet::from([user_key(tenant, alice)]));
        assert!(applied.changed.is_empty());
        assert_eq!(before.close_reason(), Some(CloseReason::CredentialsChanged));
        assert_eq!(CloseReason::CredentialsChanged.code(), 4401);
        assert_eq!(after.close_reason(), None);
        assert_eq!(same_second.close_reason(), None);
        assert!(!after_rx.has_changed().unwrap());
    }
}
