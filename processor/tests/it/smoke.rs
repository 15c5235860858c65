//! The service starts against the real stack and serves its operational endpoints.

use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::TestDb;
use std::time::Duration;

#[tokio::test]
async fn serves_health_readiness_and_metrics() {
    let db = TestDb::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kafka = gps_runtime::testing::kafka_topics().await;
    let config = crate::support::config(&db, &kafka, &crate::support::group());
    let shutdown = Shutdown::new();
    let server = tokio::spawn(processor::run(config, listener, shutdown.clone()));

    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let health = wait_for(&client, &format!("{base}/healthz")).await;
    assert_eq!(health.status(), 200);
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    let status = ready.status();
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["kafka"], "ok");
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("# TYPE"));

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("processor stops on shutdown")
        .unwrap()
        .unwrap();
}

async fn wait_for(client: &reqwest::Client, url: &str) -> reqwest::Response {
    for _ in 0..100 {
        if let Ok(response) = client.get(url).send().await {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never answered");
}
