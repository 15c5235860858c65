//! A real HTTP receiver on 127.0.0.1:0 that answers from a script and records every request,
//! the rows a test needs (tenant, webhook, event, the outbox row the processor would insert),
//! and a running delivery worker.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gps_runtime::testing::{wait_until, TestDb};
use gps_webhooks::{Metrics, WebhookArgs};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A receiver's answer to one request.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// This status, empty body.
    Status(u16),
    /// Wait this long, then 200 (longer than the worker's timeout: a timed-out attempt).
    Hang(Duration),
    /// 200 with a body that never ends.
    Endless,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Debug, Default)]
struct Script {
    replies: VecDeque<Reply>,
    requests: Vec<Received>,
}

/// The receiver: answers the scripted replies in order, then 200.
#[derive(Clone)]
pub(crate) struct Receiver {
    pub url: String,
    script: Arc<Mutex<Script>>,
}

async fn hook(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut script = script.lock().unwrap();
        script.requests.push(Received { headers, body });
        script.replies.pop_front()
    };
    match reply {
        None => StatusCode::OK.into_response(),
        Some(Reply::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Reply::Hang(wait)) => {
            tokio::time::sleep(wait).await;
            StatusCode::OK.into_response()
        }
        Some(Reply::Endless) => {
            let chunks = futures::stream::repeat_with(|| {
                Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 64 * 1024]))
            });
            Body::from_stream(chunks).into_response()
        }
    }
}

impl Receiver {
    pub(crate) async fn start(replies: Vec<Reply>) -> Self {
        let script = Arc::new(Mutex::new(Script {
            replies: replies.into(),
            requests: Vec::new(),
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{addr}/hook"),
            script,
        }
    }

    pub(crate) fn requests(&self) -> Vec<Received> {
        self.script.lock().unwrap().requests.clone()
    }
}

/// Settings for fast tests: loopback allowed (unless `loopback` is false), short timeouts and
/// backoff.
pub(crate) fn fast_args(loopback: bool) -> WebhookArgs {
    let mut args = WebhookArgs {
        // Short enough for a quick timed-out attempt, long enough that a loaded machine does not
        // time out a receiver that answers at once.
        timeout_ms: 2_000,
        connect_timeout_ms: 2_000,
        backoff_base_ms: 20,
        backoff_max_ms: 50,
        max_attempts: 5,
        poll_ms: 20,
        ..WebhookArgs::default()
    };
    if loopback {
        args.urls.allow_private_cidrs = "127.0.0.0/8".parse().unwrap();
    }
    args
}

/// A running worker; `stop` ends it and checks that it ended.
pub(crate) struct Worker {
    stop: CancellationToken,
    task: JoinHandle<Result<(), gps_webhooks::WebhookError>>,
    pub registry: prometheus::Registry,
}

impl Worker {
    pub(crate) fn start(db: &TestDb, args: WebhookArgs) -> Self {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry);
        let stop = CancellationToken::new();
        let task = tokio::spawn(gps_webhooks::run(
            db.pool.clone(),
            args,
            metrics,
            stop.clone(),
        ));
        Self {
            stop,
            task,
            registry,
        }
    }

    /// The value of the attempts counter of `outcome`.
    pub(crate) fn attempts(&self, outcome: &str) -> u64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap();
        let selector = format!("gps_webhook_deliveries_total{{outcome=\"{outcome}\"}}");
        gps_runtime::testing::metric_value(&text, &selector) as u64
    }

    /// Stop it; it ends within the drain (in-flight deliveries finish).
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the worker stops")
            .expect("no panic")
            .expect("no error");
    }
}

/// A tenant and one webhook of it to `url`; (tenant, webhook).
pub(crate) async fn webhook(db: &TestDb, url: &str) -> (Uuid, Uuid) {
    let tenant: Uuid = sqlx::query_scalar(
        "INSERT INTO tenants (name) VALUES ('t-' || gen_random_uuid()) RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let webhook = webhook_of(db, tenant, url).await;
    (tenant, webhook)
}

/// Another webhook of `tenant`.
pub(crate) async fn webhook_of(db: &TestDb, tenant: Uuid, url: &str) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO webhooks (tenant_id, url, secret) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(tenant)
    .bind(url)
    .bind(SECRET)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// The webhooks' secret in these tests.
pub(crate) const SECRET: &str = "whsec-test-0123456789abcdef";

/// An overspeed event of a new device of `tenant` and its outbox row for `webhook`, as the
/// processor writes them; (event id, delivery id).
pub(crate) async fn event_for(db: &TestDb, tenant: Uuid, webhook: Uuid) -> (Uuid, i64) {
    let event = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO events (id, tenant_id, device_id, type, fix_time, lat, lon, details)
         VALUES ($1, $2, $3, 'overspeed', '2026-11-30T10:00:00.123Z', 52.5, 13.4,
                 '{\"speed_mps\": 31.5, \"limit_mps\": 25.0}')",
    )
    .bind(event)
    .bind(tenant)
    .bind(Uuid::new_v4())
    .execute(&db.pool)
    .await
    .unwrap();
    let delivery = outbox(db, tenant, webhook, event).await;
    (event, delivery)
}

/// The outbox row of `event` for `webhook`.
pub(crate) async fn outbox(db: &TestDb, tenant: Uuid, webhook: Uuid, event: Uuid) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO webhook_deliveries (webhook_id, tenant_id, event_id) VALUES ($1, $2, $3)
         RETURNING id",
    )
    .bind(webhook)
    .bind(tenant)
    .bind(event)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A delivery row as the log shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Delivery {
    pub status: String,
    pub attempts: i32,
    pub response_status: Option<i32>,
    pub error: Option<String>,
}

pub(crate) async fn delivery(db: &TestDb, id: i64) -> Delivery {
    sqlx::query_as(
        "SELECT status, attempts, response_status, error FROM webhook_deliveries WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Wait until the delivery `id` has `status`; returns the row.
pub(crate) async fn settled(db: &TestDb, id: i64, status: &str) -> Delivery {
    wait_until(
        Duration::from_secs(15),
        &format!("delivery {id} {status}"),
        || async { delivery(db, id).await.status == status },
    )
    .await;
    delivery(db, id).await
}
