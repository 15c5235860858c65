//! `TRUSTED_PROXIES` (issue 14): the unknown-credential limit counts the client a trusted proxy
//! names in `X-Forwarded-For`, and ignores the header from any other peer.

use crate::support::Ingest;

/// The statuses of `n` OsmAnd reports of unknown uids carrying `X-Forwarded-For: xff(i)`.
async fn unknown_reports(ingest: &Ingest, n: usize, xff: impl Fn(usize) -> String) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let uid = format!("nobody-{}", uuid::Uuid::new_v4().simple());
        let response = ingest
            .client
            .get(ingest.url(&format!(
                "/?id={uid}&lat=52.5&lon=13.4&timestamp=1700000000"
            )))
            .header("x-forwarded-for", xff(i))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

fn limited(statuses: &[u16]) -> Vec<bool> {
    statuses.iter().map(|s| *s == 429).collect()
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let budget = |c: &mut ingest::Config| {
        c.auth.unknown_burst = 2;
        c.auth.unknown_per_sec = 0.01;
    };
    // No trusted proxies: rotating a spoofed header does not buy a new budget.
    let ingest = Ingest::start_with(budget).await;
    let statuses = unknown_reports(&ingest, 3, |i| format!("198.18.0.{i}")).await;
    assert_eq!(limited(&statuses), [false, false, true], "{statuses:?}");

    // The test client (loopback) as a trusted proxy: each forwarded client has its own budget,
    // counted under the right-most hop the proxies did not add.
    let ingest = Ingest::start_with(|c| {
        budget(c);
        c.client_ip.trusted_proxies = "127.0.0.0/8".parse().unwrap();
    })
    .await;
    let statuses = unknown_reports(&ingest, 3, |i| format!("198.18.0.{i}")).await;
    assert_eq!(limited(&statuses), [false, false, false], "{statuses:?}");
    let statuses = unknown_reports(&ingest, 3, |i| format!("203.0.113.{i}, 198.18.1.1")).await;
    assert_eq!(limited(&statuses), [false, false, true], "{statuses:?}");
}
