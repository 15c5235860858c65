//! GPS fanout: live fixes (and device statuses and events) over WebSocket.
//!
//! The processor publishes each committed batch of accepted fixes, with the statuses and events
//! it produced, to Redis (`gps.live.<tenant>`); this service holds one pattern subscription
//! ([`subscriber`]), routes each fix (a status, an event for clients that asked for events) through an in-memory index ([`router`]) to the per-connection queues ([`outbox`]) of
//! the dashboards that subscribed to it and may see it ([`auth`], [`store`]), and writes them out
//! ([`connection`]). Open sessions are re-checked against the current credential and visibility
//! ([`recheck`]); connects and subscribes are rate-limited ([`limits`]); sessions and their
//! subscriptions are audited ([`audit`]). The message protocol is [`protocol`], documented in
//! `docs/fanout.md`.
//!
//! `run` takes a bound listener so that tests can bind port 0 and call it directly.

pub mod audit;
pub mod auth;
pub mod config;
pub mod connection;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod recheck;
pub mod router;
pub mod store;
pub mod subscriber;

pub use config::Config;
pub use error::ServiceError;

use axum::routing::get;
use gps_runtime::ops::{self, Readiness};
use gps_runtime::service::Service;
use gps_runtime::shutdown::Shutdown;
use gps_store::principal::JwtKeys;
use gps_store::tickets::TicketKey;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long shutdown waits for clients to receive their Close frames.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Run until `shutdown` fires (or the server or the live subscription stops), then close every
/// client with 1001 (going away), waiting at most [`DRAIN_DEADLINE`] for the Close frames.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), ServiceError> {
    let settings = Arc::new(config.settings()?);
    let pool = gps_runtime::db::connect(&config.database).await?;
    let redis = gps_runtime::redis_client::connect(&config.redis).await?;
    let redis_client = gps_runtime::redis_client::client(&config.redis)?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry);
    let router = Arc::new(router::Router::new(metrics.clone()));
    let upstream = Arc::new(subscriber::Upstream::default());
    let readiness = Readiness::new()
        .postgres(&pool)
        .redis(&redis)
        .with("live_subscription", {
            let upstream = upstream.clone();
            move || {
                let up = upstream.is_subscribed();
                async move {
                    if up {
                        Ok(())
                    } else {
                        Err("redis live subscription is down, reconnecting".to_owned())
                    }
                }
            }
        });
    tracing::info!(addr = %listener.local_addr()?, "fanout listening");

    let service = Service::new("fanout", shutdown);
    let sessions = Arc::new(recheck::Sessions::default());
    let (auditor, audit_queue) = audit::Auditor::new();
    let state = connection::AppState {
        pool: pool.clone(),
        redis,
        keys: JwtKeys::new(&settings.jwt_secret),
        ticket_key: TicketKey::derive(&settings.jwt_secret),
        settings: settings.clone(),
        router: router.clone(),
        metrics: metrics.clone(),
        upstream: upstream.clone(),
        // Connections close with 1001 when this is cancelled; the drain waits for the frames.
        cancel: service.token(),
        tasks: service.tasks(),
        next_id: Arc::new(AtomicU64::new(1)),
        sessions: sessions.clone(),
        auditor,
    };
    let app = axum::Router::new()
        .route("/v1/live", get(connection::live))
        .with_state(state)
        .merge(ops::router("fanout", registry, readiness));
    service
        .serve("http", listener, app)
        // Revocation and audit are part of serving live data: without them, stop serving.
        .critical(
            "live-recheck",
            recheck::run(
                pool.clone(),
                sessions,
                metrics.clone(),
                settings.recheck_interval,
                service.token(),
            ),
        )
        .critical("live-audit", audit::run(pool, audit_queue, service.token()))
        .critical(
            // It reconnects by itself and ends only when cancelled: any other end is a bug that
            // would leave every client silently without fixes.
            "live-subscription",
            subscriber::run(
                redis_client,
                router,
                upstream,
                metrics,
                settings.redis_backoff_max,
                service.token(),
            ),
        );
    service.run(DRAIN_DEADLINE).await?;
    Ok(())
}
