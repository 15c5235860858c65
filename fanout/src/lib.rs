//! GPS fanout: live fixes over WebSocket.
//!
//! The processor publishes each committed batch of accepted fixes to Redis
//! (`gps.live.<tenant>`); this service holds one pattern subscription ([`subscriber`]), routes
//! each fix through an in-memory index ([`router`]) to the per-connection queues ([`outbox`]) of
//! the dashboards that subscribed to it and may see it ([`auth`], [`store`]), and writes them out
//! ([`connection`]). The message protocol is [`protocol`], documented in `docs/fanout.md`.
//!
//! `run` takes a bound listener so that tests can bind port 0 and call it directly.

pub mod auth;
pub mod config;
pub mod connection;
pub mod error;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod router;
pub mod store;
pub mod subscriber;

pub use config::Config;
pub use error::ServiceError;

use axum::routing::get;
use gps_runtime::access::JwtKeys;
use gps_runtime::ops::{self, Readiness};
use gps_runtime::shutdown::Shutdown;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for clients to receive their Close frames.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Run until `shutdown` fires, then close every client with 1001 (going away).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), ServiceError> {
    let settings = Arc::new(config.settings().map_err(ServiceError::Config)?);
    let pool = gps_runtime::db::connect(&config.database).await?;
    let redis = gps_runtime::redis_client::connect(&config.redis).await?;
    let redis_client = gps_runtime::redis_client::client(&config.redis)?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::Metrics::new(&registry);
    let router = Arc::new(router::Router::new(metrics.clone()));
    let upstream = Arc::new(subscriber::Upstream::default());
    let cancel = shutdown.token().child_token();
    let tracker = TaskTracker::new();

    tracker.spawn(subscriber::run(
        redis_client,
        router.clone(),
        upstream.clone(),
        metrics.clone(),
        settings.redis_backoff_max,
        cancel.clone(),
    ));

    let readiness = {
        let (pool, redis, upstream) = (pool.clone(), redis.clone(), upstream.clone());
        Readiness::new()
            .with("postgres", move || {
                let pool = pool.clone();
                async move { gps_runtime::db::ping(&pool).await }
            })
            .with("redis", move || {
                let mut redis = redis.clone();
                async move { gps_runtime::redis_client::ping(&mut redis).await }
            })
            .with("live_subscription", move || {
                let up = upstream.is_subscribed();
                async move {
                    if up {
                        Ok(())
                    } else {
                        Err("redis live subscription is down, reconnecting".to_owned())
                    }
                }
            })
    };

    let state = connection::AppState {
        pool,
        redis,
        keys: JwtKeys::new(&settings.jwt_secret),
        settings,
        router,
        metrics,
        upstream,
        cancel: cancel.clone(),
        tracker: tracker.clone(),
        next_id: Arc::new(AtomicU64::new(1)),
    };
    let app = axum::Router::new()
        .route("/v1/live", get(connection::live))
        .with_state(state)
        .merge(ops::router("fanout", registry, readiness));

    tracing::info!(addr = %listener.local_addr()?, "fanout listening");
    let served = ops::serve(listener, app, shutdown).await;
    // Upgraded connections outlive the HTTP server: close them (1001) and wait for the frames.
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            deadline_secs = DRAIN_DEADLINE.as_secs(),
            "some live connections did not close in time"
        );
    }
    served?;
    Ok(())
}
