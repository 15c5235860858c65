//! `TRUSTED_PROXIES` (issue 14): the per-IP login limit counts the client a trusted proxy names
//! in `X-Forwarded-For`, and ignores the header from anyone else (a client cannot choose the
//! address its attempts are counted under).

use crate::support::Api;
use serde_json::json;
use std::net::IpAddr;
use std::time::Duration;
use uuid::Uuid;

/// A loopback address of its own (127.a.b.c, random), so that other tests' buckets do not count.
fn loopback() -> IpAddr {
    let random = Uuid::new_v4();
    let b = random.as_bytes();
    IpAddr::from([127, 1 + b[0] % 250, b[1], 1 + b[2] % 250])
}

/// A documentation-range address of its own (198.18.a.b), as a spoofed or forwarded client.
fn forwarded() -> String {
    let random = Uuid::new_v4();
    let b = random.as_bytes();
    format!("198.18.{}.{}", b[0], 1 + b[1] % 250)
}

/// The status of a failed login from `peer` carrying `X-Forwarded-For: xff` (each attempt with
/// its own email, so that only the per-IP bucket can refuse it).
async fn login(api: &Api, peer: IpAddr, xff: &str) -> u16 {
    reqwest::Client::builder()
        .local_address(peer)
        .build()
        .unwrap()
        .post(api.url("/v1/auth/login"))
        .header("x-forwarded-for", xff)
        .json(&json!({ "email": format!("{}@example.test", Uuid::new_v4().simple()), "password": "not it" }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Rate limits count in fixed one-minute windows: start early in one.
async fn early_in_a_window() {
    let second = chrono::Utc::now().timestamp() % 60;
    if second >= 50 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    // No trusted proxies (the default): a client rotating spoofed headers is still one address.
    let api = Api::start_with(&["--login-rate-limit", "2", "--api-rate-limit", "100000"]).await;
    early_in_a_window().await;
    let client = loopback();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(login(&api, client, &forwarded()).await);
    }
    assert_eq!(
        statuses,
        [401, 401, 429],
        "spoofed X-Forwarded-For must be ignored"
    );

    // Behind a trusted proxy: each forwarded client has its own bucket, and a client that
    // prepends a spoofed hop is still counted under the address the proxy saw.
    let proxy = loopback();
    let api = Api::start_with(&[
        "--login-rate-limit",
        "2",
        "--api-rate-limit",
        "100000",
        "--trusted-proxies",
        &format!("{proxy}/32, 10.0.0.0/8"),
    ])
    .await;
    early_in_a_window().await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(login(&api, proxy, &forwarded()).await);
    }
    assert_eq!(statuses, [401, 401, 401], "three clients behind one proxy");
    let real = forwarded();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let spoofed = format!("{}, {real}, 10.1.2.3", forwarded());
        statuses.push(login(&api, proxy, &spoofed).await);
    }
    assert_eq!(
        statuses,
        [401, 401, 429],
        "the right-most untrusted hop is the client"
    );
    // A peer that is not the proxy cannot borrow its trust.
    let other = loopback();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(login(&api, other, &forwarded()).await);
    }
    assert_eq!(statuses, [401, 401, 429]);
}
