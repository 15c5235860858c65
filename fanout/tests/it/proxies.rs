//! `TRUSTED_PROXIES` (issue 14): the per-IP connect limit counts the client a trusted proxy
//! names in `X-Forwarded-For`, and ignores the header from any other peer.

use crate::support::*;
use gps_runtime::testing::TestDb;
use std::net::{Ipv4Addr, SocketAddr};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error;
use tokio_tungstenite::MaybeTlsStream;
use uuid::Uuid;

/// The HTTP status of a connect from `from` with `X-Forwarded-For: xff` and a garbage
/// credential: `401` under the IP limit (checked first), `429` over it.
async fn connect_status(addr: SocketAddr, from: Ipv4Addr, xff: &str) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}/v1/live")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", HeaderValue::from_static("Bearer garbage"));
    headers.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
    match tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await {
        Err(Error::Http(response)) => response.status().as_u16(),
        other => panic!("a garbage credential was not refused: {other:?}"),
    }
}

/// A documentation-range client address of its own (the limit's Redis buckets outlive a test).
fn forwarded() -> String {
    let n = Uuid::new_v4().as_u128();
    format!("198.18.{}.{}", n as u8, (n >> 8) as u8 | 1)
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let db = TestDb::new().await;
    let proxy = own_loopback_ip();
    let mut config = config(&db);
    config.connect_limit_per_ip = 2;
    config.client_ip.trusted_proxies = format!("{proxy}/32").parse().unwrap();
    let fanout = start(db.clone(), config).await;
    fresh_window(10).await;

    // Not the proxy: a rotating spoofed header is still one address.
    let client = own_loopback_ip();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(connect_status(fanout.addr, client, &forwarded()).await);
    }
    assert_eq!(statuses, [401, 401, 429]);

    // The proxy: each forwarded client has its own budget.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(connect_status(fanout.addr, proxy, &forwarded()).await);
    }
    assert_eq!(statuses, [401, 401, 401]);
    let one = forwarded();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(connect_status(fanout.addr, proxy, &one).await);
    }
    assert_eq!(statuses, [401, 401, 429]);
    fanout.stop().await;
}
