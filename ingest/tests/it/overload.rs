//! Performance policies (issue 19) against the real broker: overload shedding while the store
//! falls behind (no processor runs in these tests, so every record produced is lag) and the
//! two producer lanes (immediate while few requests are in flight, batching under load).

use crate::support::{read_fixes, Ingest};
use gps_domain::wire::udp;
use gps_domain::Fix;
use gps_runtime::testing::seed_device;
use serde_json::json;

/// Shedding over a tiny bound, polled often, for a group that never consumes.
fn shed_over(bound: u64) -> impl FnOnce(&mut ingest::Config) {
    move |c| {
        c.overload.lag_records = bound;
        c.overload.poll_ms = 200;
        c.overload.group = Some(format!("no-processor-{}", uuid::Uuid::new_v4()));
        c.overload.tenant_floor_per_sec = 1.0;
    }
}

/// Post one fix with `token`; returns the response.
async fn post_one(ingest: &Ingest, token: &str, i: i64) -> reqwest::Response {
    ingest
        .client
        .post(ingest.url("/v1/fixes"))
        .bearer_auth(token)
        .json(&json!({"time": 1_714_557_600_000_i64 + i * 1000, "lat": 52.5, "lon": 13.4}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_noisy_tenant_is_shed_with_retry_after_while_a_quiet_tenant_gets_through() {
    let ingest = Ingest::start_with(shed_over(5)).await;
    let noisy = ingest.device.clone();
    let quiet = seed_device(&ingest.db.pool, "quiet").await;

    // The noisy tenant sends until it is shed; its accepted records are the growing lag.
    let mut shed = None;
    for i in 0..5_000 {
        let response = post_one(&ingest, &noisy.token, i).await;
        match response.status().as_u16() {
            202 => {}
            503 => {
                shed = Some(response);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let shed = shed.expect("the noisy tenant is shed once the lag exceeds the bound");
    let retry_after: u32 = shed.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    let body: serde_json::Value = shed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(ingest.metric("gps_ingest_store_lag_records").await > 5.0);

    // A shed tenant is refused before its body is read: a body that would be a 400 is a 503
    // while its bucket is in debt.
    let mut refused_unread = false;
    for i in 0..1_000 {
        if post_one(&ingest, &noisy.token, 10_000 + i).await.status() != 503 {
            continue;
        }
        let malformed = ingest
            .client
            .post(ingest.url("/v1/fixes"))
            .bearer_auth(&noisy.token)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        if malformed.status() == 503 {
            assert!(malformed.headers().contains_key("retry-after"));
            refused_unread = true;
            break;
        }
    }
    assert!(refused_unread, "a shed tenant's body is never decoded");

    // The quiet tenant's single request still gets through.
    let response = post_one(&ingest, &quiet.token, 0).await;
    assert_eq!(response.status(), 202, "the quiet tenant is not shed");

    // Over UDP the noisy device's datagrams are dropped and counted, never silently.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for counter in 1..=20u64 {
        let fix = Fix::new(1_714_600_000_000 + counter as i64 * 1000, 52.5, 13.4);
        let datagram = udp::encode(noisy.device_id, counter, &[fix], &noisy.udp_key).unwrap();
        socket.send_to(&datagram, ingest.udp).await.unwrap();
    }
    ingest
        .wait_metric("gps_ingest_udp_dropped_total{reason=\"overloaded\"}", 1.0)
        .await;

    let noisy_label = format!("gps_ingest_shed_total{{tenant=\"{}\"}}", noisy.tenant_id);
    assert!(
        ingest.metric(&noisy_label).await >= 2.0,
        "HTTP and UDP sheds counted"
    );
    let quiet_label = format!("gps_ingest_shed_total{{tenant=\"{}\"}}", quiet.tenant_id);
    assert_eq!(ingest.metric(&quiet_label).await, 0.0);
    assert!(
        ingest
            .metric("gps_ingest_fixes_refused_total{protocol=\"json\",reason=\"overloaded\"}")
            .await
            >= 1.0
    );
    assert!(
        ingest
            .metric("gps_ingest_shed_tenant_limit_fixes_per_second")
            .await
            > 0.0
    );
    assert_eq!(ingest.metric("gps_ingest_shed_bound_records").await, 5.0);
    ingest.stop().await;
}

#[tokio::test]
async fn nothing_is_shed_while_the_lag_is_under_the_bound() {
    let ingest = Ingest::start_with(shed_over(1_000_000)).await;
    let token = ingest.device.token.clone();
    for i in 0..50 {
        assert_eq!(post_one(&ingest, &token, i).await.status(), 202);
    }
    // The monitor sees the backlog (nothing consumes it) but it is under the bound.
    ingest
        .wait_metric("gps_ingest_store_lag_records", 50.0)
        .await;
    assert_eq!(post_one(&ingest, &token, 50).await.status(), 202);
    assert_eq!(ingest.metric("gps_ingest_shed_total").await, 0.0);
    assert_eq!(
        ingest
            .metric("gps_ingest_shed_tenant_limit_fixes_per_second")
            .await,
        0.0
    );
    ingest.stop().await;
}

#[tokio::test]
async fn a_lone_request_takes_the_immediate_lane_and_a_crowd_the_batching_one() {
    let ingest = Ingest::start_with(|c| c.producer.immediate_max_inflight = 4).await;
    let token = ingest.device.token.clone();
    assert_eq!(post_one(&ingest, &token, 0).await.status(), 202);
    assert_eq!(
        ingest
            .metric("gps_ingest_produce_path_total{path=\"immediate\"}")
            .await,
        1.0
    );
    assert_eq!(
        ingest
            .metric("gps_ingest_produce_path_total{path=\"batching\"}")
            .await,
        0.0
    );

    // 200 requests at once: more than 4 are in flight, so some batch; every one is acknowledged.
    let crowd = (1..=200).map(|i| post_one(&ingest, &token, i));
    let statuses = futures::future::join_all(crowd).await;
    assert!(statuses.iter().all(|r| r.status() == 202));
    let batching = ingest
        .metric("gps_ingest_produce_path_total{path=\"batching\"}")
        .await;
    assert!(batching >= 1.0, "batching lane used ({batching})");
    assert_eq!(read_fixes(&ingest.kafka, 201).await.len(), 201);

    // Quiet again: back on the immediate lane.
    let immediate = ingest
        .metric("gps_ingest_produce_path_total{path=\"immediate\"}")
        .await;
    assert_eq!(post_one(&ingest, &token, 500).await.status(), 202);
    assert_eq!(
        ingest
            .metric("gps_ingest_produce_path_total{path=\"immediate\"}")
            .await,
        immediate + 1.0
    );
    ingest.stop().await;
}
