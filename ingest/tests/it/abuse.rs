//! Unauthenticated load (issue 14): a flood of spoofed UDP device ids never stalls a known
//! device, and unknown credentials are limited per source IP (HTTP `429` + `Retry-After`, UDP
//! dropped and counted) while known devices behind the same address go on unhindered.

use crate::support::{read_fixes, Ingest};
use gps_domain::wire::udp;
use gps_domain::Fix;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_flood_of_spoofed_udp_ids_never_stalls_a_known_device() {
    // A short TTL, so the known device is served from an expired entry while it is refreshed.
    let ingest = Ingest::start_with(|c| c.auth.ttl_ms = 300).await;
    let dev = &ingest.device;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let fix = |i: i64| Fix::new(1_700_000_000_000 + i * 1000, 52.5, 13.4);
    let real = |counter: u64| {
        udp::encode(dev.device_id, counter, &[fix(counter as i64)], &dev.udp_key).unwrap()
    };
    // The device is known: its first datagram waited for its lookup and went through.
    socket.send_to(&real(1), ingest.udp).await.unwrap();
    ingest
        .wait_metric("gps_ingest_fixes_accepted_total{protocol=\"udp\"}", 1.0)
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    // From now on every database lookup hangs: a transaction holds `devices` exclusively. The
    // old loop awaited the lookup of the first spoofed id and answered nothing after it.
    let mut lock = ingest.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let rounds = 20u64;
    let spoofed_per_round = 50u64;
    for round in 0..rounds {
        for _ in 0..spoofed_per_round {
            let id = uuid::Uuid::new_v4();
            let spoofed = udp::encode(id, 1, &[fix(0)], &[7; 32]).unwrap();
            socket.send_to(&spoofed, ingest.udp).await.unwrap();
        }
        socket.send_to(&real(round + 2), ingest.udp).await.unwrap();
        // Paced by the loop itself (so the kernel buffer never overflows): the next round goes
        // once this one was received.
        let seen = 1.0 + ((round + 1) * (spoofed_per_round + 1)) as f64;
        ingest
            .wait_metric("gps_ingest_udp_datagrams_total", seen)
            .await;
    }
    // Every real datagram was acknowledged by the broker while the lookups still hang.
    let real_total = (rounds + 1) as f64;
    ingest
        .wait_metric(
            "gps_ingest_fixes_accepted_total{protocol=\"udp\"}",
            real_total,
        )
        .await;
    let busy = ingest
        .metric("gps_ingest_udp_dropped_total{reason=\"lookup_busy\"}")
        .await;
    let limited = ingest
        .metric("gps_ingest_udp_dropped_total{reason=\"rate_limited\"}")
        .await;
    let spoofed = (rounds * spoofed_per_round) as f64;
    // At most one held datagram per lookup slot is still waiting.
    assert!(
        busy + limited >= spoofed - 4.0,
        "busy {busy} limited {limited}"
    );
    assert!(
        busy >= 1.0 && limited >= 1.0,
        "busy {busy} limited {limited}"
    );
    lock.rollback().await.unwrap();

    let envelopes = read_fixes(&ingest.kafka, rounds as usize + 1).await;
    assert!(envelopes.iter().all(|e| e.device == dev.device_id));
    let mut times: Vec<i64> = envelopes
        .iter()
        .flat_map(|e| e.fixes.iter().map(|f| f.fix_time))
        .collect();
    times.sort_unstable();
    let want: Vec<i64> = (1..=rounds as i64 + 1).map(|i| fix(i).fix_time).collect();
    assert_eq!(times, want, "every real datagram produced once");
    ingest.stop().await;
}

#[tokio::test]
async fn unknown_credentials_get_429_per_source_and_known_devices_pass() {
    // Three unknown credentials, then one more every 100 s; a short TTL so the known devices
    // are past it (and past the cache) when the budget is spent.
    let ingest = Ingest::start_with(|c| {
        c.auth.unknown_burst = 3;
        c.auth.unknown_per_sec = 0.01;
        c.auth.ttl_ms = 300;
    })
    .await;
    let dev = &ingest.device;
    let osmand = |uid: &str| {
        ingest
            .client
            .get(ingest.url(&format!(
                "/?id={uid}&lat=52.5&lon=13.4&timestamp=1700000000&token={}",
                dev.token
            )))
            .send()
    };
    let fixes = |token: &str| {
        ingest
            .client
            .post(ingest.url("/v1/fixes"))
            .bearer_auth(token)
            .json(&json!({"time": 1_714_557_601_000_i64, "lat": 1.0, "lon": 2.0}))
            .send()
    };
    // The known device, once by each credential.
    assert_eq!(osmand(&dev.uid).await.unwrap().status(), 200);
    assert_eq!(fixes(&dev.token).await.unwrap().status(), 202);

    for n in 0..3 {
        let r = osmand(&format!("nobody-{n}")).await.unwrap();
        assert_eq!(r.status(), 400, "unknown uid {n} within the budget");
    }
    let r = osmand("nobody-3").await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&retry), "Retry-After {retry}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // The budget is the source's, whatever the protocol or credential kind.
    assert_eq!(fixes("not-a-token").await.unwrap().status(), 429);
    assert_eq!(
        fixes("gpsk_unknownkey12_aaaaaaaaaaaaaaaaaaaa")
            .await
            .unwrap()
            .status(),
        429
    );
    let owntracks = ingest
        .client
        .post(ingest.url("/owntracks"))
        .basic_auth(&dev.uid, Some("wrong-token"))
        .json(&json!({"_type": "location", "tst": 1_700_000_000, "lat": 1.0, "lon": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(owntracks.status(), 429);

    // Known devices from the same address are not slowed down, even with their cache entries
    // expired (they are looked up again).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(osmand(&dev.uid).await.unwrap().status(), 200);
    assert_eq!(fixes(&dev.token).await.unwrap().status(), 202);
    assert!(
        ingest
            .metric("gps_ingest_fixes_refused_total{protocol=\"osmand\",reason=\"rate_limited\"}")
            .await
            >= 1.0
    );
    ingest.stop().await;
}
