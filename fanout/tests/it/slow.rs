//! A client that stops reading never delays the others: its queue coalesces to the newest fix
//! per device (sequence numbers show the gap), and past the hard limit it is closed as too slow.

use crate::support::*;
use futures::StreamExt;
use gps_domain::auth::Role;
use gps_domain::fix::now_millis;
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const DEVICES: usize = 40;

/// A client with a tiny socket receive buffer, so that not reading fills the server's queue fast.
async fn slow_client(addr: SocketAddr, token: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut ws = connect_on(socket, addr, token).await.unwrap();
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    subscribe(&mut ws, json!({"type": "subscribe", "all": true})).await;
    ws
}

fn round(devices: &[Uuid], t: i64) -> Vec<gps_domain::live::LiveFix> {
    devices
        .iter()
        .map(|d| {
            let mut fix = live(*d, t, 45.0, 7.0);
            // Padding makes each message ~0.5 KiB so the socket buffers fill sooner.
            fix.fix
                .attributes
                .insert("pad".into(), json!("x".repeat(300)));
            fix
        })
        .collect()
}

async fn setup(queue_capacity: usize, hard_limit: usize) -> (Running, Vec<Uuid>, Uuid, String) {
    let db = TestDb::new().await;
    let name = format!("slow-{}", unique_suffix());
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        devices.push(seed_device(&db.pool, &name).await.device_id);
    }
    let tenant: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
        .bind(&name)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let mut config = config(&db);
    config.queue_capacity = queue_capacity;
    config.queue_hard_limit = hard_limit;
    config.slow_client_grace_ms = 120_000;
    let fanout = start(db, config).await;
    let (_, token) = fanout.user(tenant, Role::Admin).await;
    (fanout, devices, tenant, token)
}

#[tokio::test]
async fn a_stalled_client_gets_coalesced_fixes_and_does_not_delay_a_fast_one() {
    const ROUNDS: i64 = 300;
    let (mut fanout, devices, tenant, token) = setup(128, 512).await;
    let mut fast = fanout.connect(&token).await;
    subscribe(&mut fast, json!({"type": "subscribe", "all": true})).await;
    let mut slow = slow_client(fanout.addr, &token).await;

    // The fast client reads everything, noting the publish-to-receive latency of each fix.
    let expected = ROUNDS as usize * DEVICES;
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(expected);
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        let mut lagged = 0;
        while latencies.len() < expected {
            let message = recv(&mut fast).await;
            match message["type"].as_str() {
                Some("fix") => {
                    latencies.push(now_millis() - message["rx"].as_i64().unwrap());
                    let seq = message["seq"].as_u64().unwrap();
                    let prev = last_seq.insert(message["device"].as_str().unwrap().into(), seq);
                    assert_eq!(seq, prev.unwrap_or(0) + 1, "the fast client misses nothing");
                }
                Some("lagged") => lagged += 1,
                _ => {}
            }
        }
        (latencies, lagged)
    });

    for t in 1..=ROUNDS {
        fanout.publish(tenant, round(&devices, t)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (latencies, lagged) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the fast client receives every fix")
        .unwrap();
    assert_eq!(lagged, 0);
    // A deadline, not a performance figure (`loadgen ws` measures latency): had any fix waited
    // for the stalled client, which reads nothing until the fast one is done, it would have
    // waited for ever; 15 s is far beyond scheduling noise on a shared machine.
    let max = latencies.iter().max().copied().unwrap_or(0);
    assert!(
        max < 15_000,
        "a fix reached the fast client only after {max} ms: it waited for the stalled client"
    );
    assert!(
        fanout.metric("gps_fanout_fixes_coalesced_total").await > 0.0,
        "the stalled client's queue coalesced"
    );

    // The stalled client now reads: it ends with the newest fix of every device, and the
    // sequence numbers account for every fix it did not get.
    let mut newest: HashMap<String, (u64, i64)> = HashMap::new();
    let (mut fixes, mut lagged) = (0usize, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while newest.len() < DEVICES || newest.values().any(|(_, t)| *t < ROUNDS) {
        assert!(Instant::now() < deadline, "stalled client never caught up");
        let message: Value = match slow.next().await {
            Some(Ok(Message::Text(text))) => serde_json::from_str(text.as_str()).unwrap(),
            Some(Ok(Message::Close(frame))) => {
                // Also acceptable: closed as too slow.
                assert_eq!(u16::from(frame.unwrap().code), 4008);
                fanout.stop().await;
                return;
            }
            Some(Ok(_)) => continue,
            other => panic!("unexpected {other:?}"),
        };
        match message["type"].as_str() {
            Some("fix") => {
                fixes += 1;
                newest.insert(
                    message["device"].as_str().unwrap().into(),
                    (
                        message["seq"].as_u64().unwrap(),
                        message["fix_time"].as_i64().unwrap(),
                    ),
                );
            }
            Some("lagged") => lagged += 1,
            _ => {}
        }
    }
    assert!(lagged > 0, "the client was told it lagged");
    assert!(fixes < expected, "fewer messages than fixes: {fixes}");
    for (seq, t) in newest.values() {
        assert_eq!(
            (*seq, *t),
            (ROUNDS as u64, ROUNDS),
            "seq counts the skipped fixes"
        );
    }
    fanout.stop().await;
}

#[tokio::test]
async fn a_client_behind_past_the_hard_limit_is_closed_as_too_slow() {
    let (mut fanout, devices, tenant, token) = setup(8, 16).await;
    let mut slow = slow_client(fanout.addr, &token).await;
    let mut fast = fanout.connect(&token).await;
    subscribe(
        &mut fast,
        json!({"type": "subscribe", "devices": [devices[0]]}),
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut t = 0;
    while fanout
        .metric("gps_fanout_closes_total{reason=\"too_slow\"}")
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the stalled client was never closed"
        );
        for _ in 0..20 {
            t += 1;
            fanout.publish(tenant, round(&devices, t)).await;
        }
    }
    // The fast client, subscribed to one device, is still served.
    let mut last = 0;
    while last < t {
        let message = recv(&mut fast).await;
        if message["type"] == "fix" {
            last = message["fix_time"].as_i64().unwrap();
        }
    }
    // The stalled client reads what was buffered, then the close (or the end of the stream if
    // the close frame could not be written into its full socket).
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the stalled client's stream ends");
    if let Some(code) = end {
        assert_eq!(code, 4008);
    }
    fanout.stop().await;
}
