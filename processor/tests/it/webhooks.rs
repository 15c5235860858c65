//! The webhook delivery worker runs inside the processor: an outbox row written the way the
//! batch writes it is delivered to a real receiver, counted on the processor's `/metrics`, and
//! the service still stops cleanly.

use crate::support::{config, group, wait_until, Running};
use gps_runtime::testing::{kafka_topics, TestDb};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// A minimal receiver on 127.0.0.1:0 that answers every request `200` and sends back the head
/// of each request it read.
async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn the_processor_delivers_the_webhook_outbox() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let (url, mut requests) = receiver().await;
    let tenant: Uuid = sqlx::query_scalar(
        "INSERT INTO tenants (name) VALUES ('wh-' || gen_random_uuid()) RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let webhook: Uuid = sqlx::query_scalar(
        "INSERT INTO webhooks (tenant_id, url, secret) VALUES ($1, $2, 'a-secret-of-16-chars')
         RETURNING id",
    )
    .bind(tenant)
    .bind(&url)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let event = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO events (id, tenant_id, device_id, type, fix_time) VALUES ($1, $2, $3, 'alarm', now())",
    )
    .bind(event)
    .bind(tenant)
    .bind(Uuid::new_v4())
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO webhook_deliveries (webhook_id, tenant_id, event_id) VALUES ($1, $2, $3)",
    )
    .bind(webhook)
    .bind(tenant)
    .bind(event)
    .execute(&db.pool)
    .await
    .unwrap();

    let mut config = config(&db, &kafka, &group());
    config.webhooks.urls.allow_private_cidrs = "127.0.0.0/8".parse().unwrap();
    config.webhooks.poll_ms = 50;
    let running = Running::start(config).await;
    let request = tokio::time::timeout(Duration::from_secs(30), requests.recv())
        .await
        .expect("the processor delivered the outbox row")
        .unwrap()
        .to_ascii_lowercase();
    assert!(request.starts_with("post /hook"), "{request}");
    assert!(
        request.contains(&format!("x-gps-event-id: {event}")),
        "{request}"
    );
    wait_until(Duration::from_secs(10), "the delivery recorded", || async {
        running
            .metric("gps_webhook_deliveries_total{outcome=\"delivered\"}")
            .await
            == 1.0
    })
    .await;
    let status: String =
        sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE event_id = $1")
            .bind(event)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "delivered");
    running.stop().await;
}
