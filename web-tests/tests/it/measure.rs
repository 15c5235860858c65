//! Figures for `docs/dashboard.md`, printed, never asserted (`--ignored --nocapture`): first
//! load, a day of 1 Hz history drawn, and frames per second and heap with a synthetic in-page
//! feed of N devices (the same `apply` path as WebSocket frames, without the network).

use crate::support::{Browser, Stack};
use serde_json::Value;
use std::time::Duration;

async fn sample(browser: &Browser) -> Value {
    browser
        .js("return {frames: window.__dash.map.frames, fixes: window.__dash.live.fixes, t: performance.now(), \
             heap: performance.memory ? performance.memory.usedJSHeapSize : null, last_frame_ms: window.__dash.map.lastFrameMs};")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement: cargo test -p web-tests --test it measure -- --ignored --nocapture"]
async fn measure_first_load_and_history() {
    let stack = Stack::start().await;
    let (tenant, email, admin) = stack.tenant_admin().await;
    let (device, _) = stack.device(&admin, "day-1hz", "A day at 1 Hz").await;

    // A day of 1 Hz fixes ending now, wandering (so that simplification keeps detail).
    let end = gps_domain::fix::now_millis() / 1000 * 1000;
    let start = end - 86_400_000;
    sqlx::query(
        "SELECT gps_ensure_position_partitions((to_timestamp($1 / 1000.0) AT TIME ZONE 'UTC')::date,
                                               (to_timestamp($2 / 1000.0) AT TIME ZONE 'UTC')::date)",
    )
    .bind(start)
    .bind(end)
    .execute(&stack.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO positions (tenant_id, device_id, fix_time, received_at, lat, lon, speed_mps, protocol)
         SELECT $1, $2, to_timestamp(($3 + s * 1000) / 1000.0), to_timestamp(($3 + s * 1000) / 1000.0),
                54.3 + 0.05 * sin(s / 700.0) + 0.01 * sin(s / 47.0), 10.1 + 0.08 * cos(s / 900.0) + 0.01 * cos(s / 61.0),
                10.0, 'json'
         FROM generate_series(0, 86399) AS s",
    )
    .bind(tenant)
    .bind(device)
    .bind(start)
    .execute(&stack.db.pool)
    .await
    .unwrap();

    let browser = Browser::start().await;
    for visit in ["cold", "warm"] {
        browser.client.goto(&stack.api).await.unwrap();
        let load = browser
            .wait_for(
                "the basemap",
                "const m = performance.getEntriesByName('gps:basemap-drawn')[0]; const n = performance.getEntriesByType('navigation')[0]; \
                 return m && n.loadEventEnd > 0 && {basemap_drawn_ms: m.startTime, dom_content_loaded_ms: n.domContentLoadedEventEnd, load_ms: n.loadEventEnd, \
                 transferred_bytes: performance.getEntriesByType('resource').reduce((a, r) => a + r.transferSize, n.transferSize)};",
            )
            .await;
        println!("first load ({visit}): {load}");
    }
    browser.login(&stack.api, &email).await;

    browser
        .open_history(&stack.api, device, start - 60_000, end + 60_000)
        .await;
    for (label, tolerance) in [
        ("every fix", "null"),
        ("simplify=5 m (the default)", "5"),
        ("every fix, again", "null"),
    ] {
        browser
            .js("window.__dash.history.stats = null; return true;")
            .await;
        browser
            .js(&format!(
                "window.__dash.history.load({tolerance}); return true;"
            ))
            .await;
        let stats = browser
            .wait_for("the day drawn", "return window.__dash.history.stats")
            .await;
        println!("history, a day at 1 Hz, {label}: {stats}");
    }
}

/// Frames per second with N devices from the synthetic in-page feed, on the login page with the
/// login dialog hidden (the feed needs no session), with trails and without; the heap every 5 s
/// (`MEASURE_SECONDS`, default 30).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement: cargo test -p web-tests --test it measure -- --ignored --nocapture"]
async fn measure_live_fps() {
    let stack = Stack::start().await;
    let browser = Browser::start().await;
    browser.client.goto(&stack.api).await.unwrap();
    browser
        .wait_for(
            "the page",
            "return window.__dash && window.__dash.map.land.length",
        )
        .await;
    browser
        .js("document.getElementById('login').hidden = true; window.__dash.map.fit([9.9, 54.2, 10.4, 54.45]); return true;")
        .await;
    let seconds: u64 = std::env::var("MEASURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    // MEASURE_SOAK=1: only the target's case (10,000 devices, 10,000 fixes/s, trails), for a
    // long MEASURE_SECONDS.
    let cases: &[(u32, u32, bool)] = if std::env::var_os("MEASURE_SOAK").is_some() {
        &[(10_000, 10_000, true)]
    } else {
        &[
            (1_000, 1_000, true),
            (10_000, 10_000, true),
            (10_000, 10_000, false),
        ]
    };
    for &(devices, rate, trails) in cases {
        browser
            .js(&format!("window.__stopFeed && window.__stopFeed(); window.__dash.live.devices.clear(); \
                window.__dash.live.trailSegments = {}; window.__stopFeed = window.__dash.live.synthetic({devices}, {rate}); return true;",
                if trails { 20_000 } else { 0 }))
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let first = sample(&browser).await;
        let mut heaps = Vec::new();
        for _ in 0..seconds / 5 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            heaps.push(
                (sample(&browser).await["heap"].as_f64().unwrap_or(0.0) / 1_048_576.0).round(),
            );
        }
        let last = sample(&browser).await;
        let secs = (last["t"].as_f64().unwrap() - first["t"].as_f64().unwrap()) / 1000.0;
        let fps = (last["frames"].as_f64().unwrap() - first["frames"].as_f64().unwrap()) / secs;
        let fixes = (last["fixes"].as_f64().unwrap() - first["fixes"].as_f64().unwrap()) / secs;
        println!(
            "live, {devices} devices, {rate} fixes/s offered, trails {trails}: {fps:.1} frames/s, {fixes:.0} fixes/s applied, heap MiB every 5 s {heaps:?}"
        );
        browser
            .shot(&format!(
                "measure-live-{devices}-{}",
                if trails { "trails" } else { "no-trails" }
            ))
            .await;
    }
}
