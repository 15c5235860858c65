//! The shared credential rules at ingest's edge: the one bearer parser (scheme in any case, one
//! token) and the one API-key rule, including `last_used_at` recorded at most once a minute on the
//! cached path without a database write per request.

use crate::support::{api_key, Ingest};
use gps_runtime::testing::wait_until;
use serde_json::json;
use std::time::Duration;

async fn post(ingest: &Ingest, authorization: &str) -> u16 {
    ingest
        .client
        .post(ingest.url("/v1/fixes"))
        .header("authorization", authorization)
        .json(&json!({"time": 1_714_557_601_000_i64, "lat": 1.0, "lon": 2.0, "device": ingest.device.uid}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn last_used(ingest: &Ingest, key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let prefix = gps_domain::auth::api_key_id(key).unwrap();
    sqlx::query_scalar("SELECT last_used_at FROM api_keys WHERE prefix = $1")
        .bind(prefix)
        .fetch_one(&ingest.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive_and_takes_one_token() {
    let ingest = Ingest::start().await;
    let token = ingest.device.token.clone();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        assert_eq!(
            post(&ingest, &format!("{scheme} {token}")).await,
            202,
            "{scheme}"
        );
    }
    for refused in [
        format!("Bearer {token} extra"),
        format!("Bearer{token}"),
        format!("Token {token}"),
        "Bearer ".to_owned(),
    ] {
        assert_eq!(post(&ingest, &refused).await, 401, "{refused:?}");
    }
    ingest.stop().await;
}

#[tokio::test]
async fn a_gateway_key_records_its_use_at_most_once_a_minute() {
    let ingest = Ingest::start().await;
    let key = api_key(&ingest.db, ingest.device.tenant_id, &["fixes:write"], false).await;
    assert_eq!(last_used(&ingest, &key).await, None);
    assert_eq!(post(&ingest, &format!("Bearer {key}")).await, 202);
    // The update runs in the background, after the answer.
    wait_until(Duration::from_secs(5), "last_used_at recorded", || async {
        last_used(&ingest, &key).await.is_some()
    })
    .await;
    let first = last_used(&ingest, &key).await;
    assert!(first.unwrap() <= chrono::Utc::now());
    for _ in 0..3 {
        assert_eq!(post(&ingest, &format!("Bearer {key}")).await, 202);
    }
    // Within the minute no update is due: the cached record already carries the use.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(last_used(&ingest, &key).await, first);
    ingest.stop().await;
}
