//! An export whose client stops reading (issue 14): hyper has no write timeout, so the reader
//! task stopping at its next chunk was not enough: the socket, its buffers and the connection
//! task waited on the client forever. Now a connection whose pending write makes no progress
//! for `EXPORT_IDLE_TIMEOUT_SECS` is reset.

use crate::support::Api;
use gps_domain::auth::Role;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Whether the kernel still lists the TCP connection from local port `port` to `server` as
/// established (`/proc/net/tcp`, state `01`).
fn established(port: u16, server: SocketAddr) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    let remote = format!(":{:04X}", server.port());
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3
            && fields[1].ends_with(&local)
            && fields[2].ends_with(&remote)
            && fields[3] == "01"
    })
}

#[tokio::test]
async fn a_client_that_stops_reading_an_export_is_cut_within_the_idle_timeout() {
    if !std::path::Path::new("/proc/net/tcp").exists() {
        eprintln!("skipped: needs Linux's /proc/net/tcp to see the connection");
        return;
    }
    let api = Api::start_with(&[
        "--login-rate-limit",
        "100000",
        "--api-rate-limit",
        "100000",
        "--export-idle-timeout",
        "1",
    ])
    .await;
    let tenant = api.tenant("stalled").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    let start_ms = 1_700_000_000_000_i64;
    // Far more than the socket buffers hold (a few MiB of JSON).
    api.track(tenant, device, start_ms, 50_000).await;

    let server: SocketAddr = api.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let port = stream.local_addr().unwrap().port();
    let request = format!(
        "GET /v1/devices/{device}/positions?from={start_ms}&to={}&limit=50000&format=csv HTTP/1.1\r\n\
         host: {server}\r\nauthorization: Bearer {}\r\n\r\n",
        start_ms + 86_400_000,
        analyst.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The client reads nothing from here on, and keeps its socket open.
    assert!(established(port, server), "the connection is listed");
    let started = Instant::now();
    while established(port, server) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a client that reads nothing still holds its connection after 20 s \
             (export idle timeout 1 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Other requests of the tenant are unaffected.
    let (status, _) = api
        .call(
            "get",
            &format!("/v1/devices/{device}"),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    drop(stream);
}
