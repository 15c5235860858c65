//! The operational endpoints every service serves: `/healthz` (the process is up), `/readyz`
//! (its dependencies answer) and `/metrics` (Prometheus text format from the service's own
//! registry). Services merge [`router`] into their own axum router, or serve it alone.
//!
//! `/readyz` is unauthenticated, so it says only which dependency is `ok` or `failing`; why a
//! check fails (addresses, driver errors) goes to the log, never to the caller.

use crate::config::KafkaArgs;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::Arc;
use std::time::Duration;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The Kafka metadata timeout inside its check.
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A readiness probe of one dependency: `Ok` when it answers.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The named dependency checks behind `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Readiness {
    /// No checks: always ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a named check.
    pub fn with<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((
            name,
            Arc::new(move || Box::pin(check()) as BoxFuture<'static, _>),
        ));
        self
    }

    /// `postgres`: `SELECT 1` answers on `pool`.
    pub fn postgres(self, pool: &sqlx::PgPool) -> Self {
        let pool = pool.clone();
        self.with("postgres", move || {
            let pool = pool.clone();
            async move { crate::db::ping(&pool).await }
        })
    }

    /// `redis`: PING answers on `conn`.
    pub fn redis(self, conn: &redis::aio::ConnectionManager) -> Self {
        let conn = conn.clone();
        self.with("redis", move || {
            let mut conn = conn.clone();
            async move { crate::redis_client::ping(&mut conn).await }
        })
    }

    /// `kafka`: a broker of `args` returns cluster metadata, within the probe's own timeout
    /// (shorter than the check's, so the broker's error is reported rather than a timeout).
    pub fn kafka(self, args: &KafkaArgs) -> Self {
        let args = args.clone();
        self.with("kafka", move || {
            let args = args.clone();
            async move {
                crate::kafka::probe(&args, KAFKA_PROBE_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
    }

    /// Run every check (concurrently, 2 s each) and report each as `"ok"` or `"failing"`; the
    /// reason of a failing check is logged, not returned.
    pub async fn report(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let results = futures::future::join_all(self.checks.iter().map(|(name, check)| {
            let check = check.clone();
            async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("timed out after 2s".to_owned()),
                };
                (*name, outcome)
            }
        }))
        .await;
        let mut all_ok = true;
        let mut map = serde_json::Map::new();
        for (name, outcome) in results {
            let value = match outcome {
                Ok(()) => "ok",
                Err(e) => {
                    all_ok = false;
                    tracing::warn!(check = name, error = %e, "readiness check failing");
                    "failing"
                }
            };
            map.insert(name.to_owned(), value.into());
        }
        (all_ok, map)
    }
}

#[derive(Clone)]
struct OpsState {
    service: &'static str,
    registry: Registry,
    readiness: Readiness,
}

/// `/healthz`, `/readyz` and `/metrics` for one service.
pub fn router<S>(service: &'static str, registry: Registry, readiness: Readiness) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            service,
            registry,
            readiness,
        })
}

async fn healthz(State(state): State<OpsState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "service": state.service }))
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let (ready, checks) = state.readiness.report().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "service": state.service,
        "checks": checks,
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::with_capacity(8 * 1024);
    // Both registries: the service's own metrics, and process metrics from the default one.
    let mut families = state.registry.gather();
    families.extend(prometheus::gather());
    match encoder.encode(&families, &mut buffer) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            buffer,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Serve `router` on `listener` until `shutdown` is cancelled, then drain open requests.
/// Connections have `TCP_NODELAY`: a streamed response is written as headers then chunks, and
/// Nagle's algorithm meeting the client's delayed ACK held the second write back by ~40 ms.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    serve_with_write_timeout(listener, router, shutdown, None).await
}

/// [`serve`], with connections reset when a pending write makes no progress for
/// `write_timeout` (a client that stopped reading; see [`crate::write_timeout`]).
pub async fn serve_with_write_timeout(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: crate::shutdown::Shutdown,
    write_timeout: Option<std::time::Duration>,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = crate::write_timeout::WriteTimeoutListener::new(listener, write_timeout);
    let listener = listener.tap_io(|io| {
        if let Err(e) = io.get_ref().set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// Register a metric in `registry`, panicking on a programming error (duplicate name).
pub fn register<M>(registry: &Registry, metric: M) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique per registry");
    metric
}

/// The value of one sample in Prometheus text (`name{labels}` exactly as exposed), if present.
/// For tools and tests that read a service's `/metrics`.
pub fn metric_sample(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse::<f64>().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_names_the_failing_dependency_but_not_why() {
        let readiness = Readiness::new()
            .with("postgres", || async { Ok(()) })
            .with("kafka", || async {
                Err("kafka: connection refused at 10.0.0.7:9092".to_owned())
            });
        let (ok, map) = readiness.report().await;
        assert!(!ok);
        assert_eq!(map["postgres"], "ok");
        assert_eq!(map["kafka"], "failing");
        assert!(Readiness::new().report().await.0);
    }

    #[tokio::test]
    async fn readyz_answers_names_and_states_only() {
        let readiness = Readiness::new()
            .with("postgres", || async { Ok(()) })
            .with("redis", || async {
                Err("redis://:hunter2@10.0.0.7:6379: connection refused".to_owned())
            });
        let response = readyz(State(OpsState {
            service: "svc",
            registry: Registry::new(),
            readiness,
        }))
        .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "status": "not_ready",
                "service": "svc",
                "checks": { "postgres": "ok", "redis": "failing" },
            })
        );
    }

    #[test]
    fn metric_sample_reads_exact_samples_only() {
        let text = "# HELP gps_x_total fixes\n\
                    gps_x_total_extra 9\n\
                    gps_x_total 12345\n\
                    gps_y_total{reason=\"too slow\"} 2\n";
        assert_eq!(metric_sample(text, "gps_x_total"), Some(12345.0));
        assert_eq!(
            metric_sample(text, "gps_y_total{reason=\"too slow\"}"),
            Some(2.0)
        );
        assert_eq!(metric_sample(text, "missing"), None);
    }
}
