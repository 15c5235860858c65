//! Measurements, not assertions (run in release, by hand):
//! `cargo test --release -p query-api --test it perf -- --ignored --nocapture`.
//! A day of 1 Hz fixes of one device (86,400 rows) as JSON, and latest positions of 10,000
//! devices; the figures go into the README.

use crate::support::Api;
use gps_domain::auth::Role;
use std::time::Instant;

#[tokio::test]
#[ignore = "measurement: run by hand in release"]
async fn perf_history_day_and_latest_10k() {
    let api = Api::start().await;
    let tenant = api.tenant("perf").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    let day_start = 1_700_006_400_000; // 2023-11-15T00:00:00Z
    api.track(tenant, device, day_start, 86_400).await;
    sqlx::query("ANALYZE positions")
        .execute(&api.db.pool)
        .await
        .unwrap();
    let path = format!(
        "/v1/devices/{device}/positions?from={day_start}&to={}&limit=100000",
        day_start + 86_400_000
    );
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let response = api
            .client
            .get(api.url(&path))
            .bearer_auth(&analyst.token)
            .send()
            .await
            .unwrap();
        let bytes = response.bytes().await.unwrap();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert!(bytes.len() > 86_400 * 100);
        best = best.min(ms);
        println!(
            "history day JSON: {} rows, {} bytes in {ms:.1} ms",
            86_400,
            bytes.len()
        );
    }
    println!("history day JSON best: {best:.1} ms");

    sqlx::query(
        "WITH d AS (INSERT INTO devices (tenant_id, uid) SELECT $1, 'perf-' || g FROM generate_series(1, 10000) g RETURNING id)
         INSERT INTO last_positions (tenant_id, device_id, fix_time, received_at, lat, lon, speed_mps, protocol)
         SELECT $1, id, now(), now(), 52.0 + random(), 13.0 + random(), 5.0, 'json' FROM d",
    )
    .bind(tenant)
    .execute(&api.db.pool)
    .await
    .unwrap();
    // What autovacuum would have done by then on a live system.
    sqlx::query("ANALYZE devices, last_positions")
        .execute(&api.db.pool)
        .await
        .unwrap();
    let mut best = f64::MAX;
    for _ in 0..5 {
        // Timed to the last byte received, as a client sees it; parsing is checked afterwards.
        let started = Instant::now();
        let response = api
            .client
            .get(api.url("/v1/positions/latest"))
            .bearer_auth(&analyst.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["positions"].as_array().unwrap().len(), 10_000);
        best = best.min(ms);
        println!("latest 10k devices: {ms:.1} ms");
    }
    println!("latest 10k devices best: {best:.1} ms");
}
