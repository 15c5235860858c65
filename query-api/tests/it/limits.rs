//! Resource limits against the real stack (issue 14, "denial of service by a logged-in user"):
//! unread exports never hold the pool (login and other tenants still answer), a client that
//! reads nothing is cut off and frees its tenant's export slot, exports are capped per tenant
//! (429 + Retry-After), the statement timeout cancels slow statements, time ranges are capped,
//! parameters that used to panic or 500 are 400s naming the field, oversized bodies are 413,
//! names are capped, and `/readyz` shows names and states only.

use crate::support::Api;
use gps_domain::auth::Role;
use std::time::{Duration, Instant};
use uuid::Uuid;

const START_MS: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 86_400_000;
/// Rows of the big track: as JSON about 25 MB, far more than the socket buffers, the client's
/// and the server's buffers together hold, so an unread export really stalls.
const BIG_TRACK: i64 = 100_000;

/// [`Api::start_with`] with the rate limits out of the way, plus `extra`.
async fn start(extra: &[&str]) -> Api {
    let mut args = vec!["--login-rate-limit", "100000", "--api-rate-limit", "100000"];
    args.extend_from_slice(extra);
    Api::start_with(&args).await
}

/// The whole big track of `device`, as `format`.
fn export_path(device: Uuid, format: &str) -> String {
    format!(
        "/v1/devices/{device}/positions?from={START_MS}&to={}&limit={BIG_TRACK}&format={format}",
        START_MS + 2 * DAY_MS
    )
}

/// Open an export and read nothing of its body.
async fn open_unread(api: &Api, token: &str, path: &str) -> reqwest::Response {
    let response = api
        .client
        .get(api.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response
}

#[tokio::test]
async fn unread_exports_never_hold_the_pool_so_login_and_other_tenants_answer() {
    // The test database's pool has 8 connections; 12 unread exports used to hold all of them.
    let api = start(&["--exports-per-tenant", "100"]).await;
    let slow = api.tenant("slow-reader").await;
    let analyst = api.user(slow, Role::Analyst).await;
    let device = api.device(slow).await;
    api.track(slow, device, START_MS, BIG_TRACK).await;
    let other = api.tenant("bystander").await;
    let bystander = api.user(other, Role::Analyst).await;
    let other_device = api.device(other).await;
    api.track(other, other_device, START_MS, 100).await;

    let mut held = Vec::new();
    for i in 0..12 {
        let format = if i % 2 == 0 { "json" } else { "csv" };
        held.push(open_unread(&api, &analyst.token, &export_path(device, format)).await);
    }
    // Let every export fill its buffers and stall on the unread socket.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let login = tokio::time::timeout(
        Duration::from_secs(4),
        api.client
            .post(api.url("/v1/auth/login"))
            .json(&serde_json::json!({ "email": bystander.email, "password": bystander.password }))
            .send(),
    )
    .await
    .expect("login answers while exports stall")
    .unwrap();
    assert_eq!(login.status(), 200, "login while 12 exports are unread");
    let path = format!(
        "/v1/devices/{other_device}/positions?from={START_MS}&to={}",
        START_MS + DAY_MS
    );
    let (status, body) = api.call("get", &path, &bystander.token, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["positions"].as_array().unwrap().len(), 100);
    let (status, _) = api.call("get", "/v1/devices", &analyst.token, None).await;
    assert_eq!(status, 200, "the slow tenant's own other routes answer too");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Paging between short queries loses and repeats nothing: read one export to its end.
    let csv = held.swap_remove(1).text().await.unwrap();
    let times: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(times.len() as i64, BIG_TRACK);
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing fix times"
    );
}

#[tokio::test]
async fn exports_are_capped_per_tenant_and_a_client_that_reads_nothing_is_cut_off() {
    let api = start(&["--exports-per-tenant", "1", "--export-idle-timeout", "1"]).await;
    let tenant = api.tenant("capped").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    api.track(tenant, device, START_MS, BIG_TRACK).await;
    let other = api.tenant("uncapped").await;
    let bystander = api.user(other, Role::Analyst).await;
    let other_device = api.device(other).await;
    api.track(other, other_device, START_MS, 10).await;

    let unread = open_unread(&api, &analyst.token, &export_path(device, "json")).await;
    let small = format!(
        "/v1/devices/{device}/positions?from={START_MS}&to={}&limit=10",
        START_MS + DAY_MS
    );
    let refused = api
        .client
        .get(api.url(&small))
        .bearer_auth(&analyst.token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // The cap is per tenant: another tenant reads on.
    let (status, _) = api
        .call(
            "get",
            &format!(
                "/v1/devices/{other_device}/positions?from={START_MS}&to={}",
                START_MS + DAY_MS
            ),
            &bystander.token,
            None,
        )
        .await;
    assert_eq!(status, 200);

    // After the idle timeout the stalled export is aborted and its slot is free again.
    gps_runtime::testing::wait_until(Duration::from_secs(10), "the export slot to free", || {
        let request = api.client.get(api.url(&small)).bearer_auth(&analyst.token);
        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    // The aborted export ends in a broken transfer, never in a body that looks complete.
    assert!(
        unread.bytes().await.is_err(),
        "an aborted export must not end cleanly"
    );
}

#[tokio::test]
async fn the_statement_timeout_cancels_slow_statements() {
    // Directly: a session of a pool with the timeout cancels a deliberately slow statement.
    let db = gps_runtime::testing::TestDb::new().await;
    let pool = gps_runtime::db::connect_with(
        &db.args,
        gps_runtime::db::Session {
            statement_timeout: Some(Duration::from_millis(200)),
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = sqlx::query("SELECT pg_sleep(10)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match err {
        sqlx::Error::Database(e) => assert_eq!(e.code().as_deref(), Some("57014"), "{e}"),
        other => panic!("{other:?}"),
    }
    // The session is usable afterwards.
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();

    // Through the API: a query blocked on a lock is cancelled, and the client gets a 503.
    let api = start(&["--statement-timeout-ms", "300"]).await;
    let tenant = api.tenant("timeout").await;
    let admin = api.user(tenant, Role::Admin).await;
    let mut lock = api.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE groups IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(8),
        api.call("get", "/v1/groups", &admin.token, None),
    )
    .await
    .expect("the blocked query is cancelled, not left waiting");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(response.0, 503, "{}", response.1);
    assert_eq!(response.1["error"]["code"], "query_timeout");
    lock.rollback().await.unwrap();
    let (status, _) = api.call("get", "/v1/groups", &admin.token, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn time_ranges_are_capped_with_a_400_naming_the_cap() {
    let api = Api::start().await;
    let tenant = api.tenant("ranges").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    let to = START_MS;
    for (path, cap) in [
        (
            format!(
                "/v1/devices/{device}/positions?from={}&to={to}",
                to - 367 * DAY_MS
            ),
            "366 days",
        ),
        (format!("/v1/devices/{device}/positions?from=0"), "366 days"),
        (
            format!(
                "/v1/positions?bbox=13.39,52.51,13.40,52.52&from={}&to={to}",
                to - 8 * DAY_MS
            ),
            "7 days",
        ),
        (
            format!(
                "/v1/devices/{device}/summary?from={}&to={to}",
                to - 32 * DAY_MS
            ),
            "31 days",
        ),
    ] {
        let (status, body) = api.call("get", &path, &analyst.token, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["field"], "from", "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(cap), "{path}: {message}");
    }
    // At the cap itself: answered.
    let (status, body) = api
        .call(
            "get",
            &format!(
                "/v1/devices/{device}/summary?from={}&to={to}",
                to - 31 * DAY_MS
            ),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn parameters_that_panicked_wrapped_or_failed_are_400s_naming_the_field() {
    let api = Api::start().await;
    let tenant = api.tenant("params").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    api.track(tenant, device, START_MS, 10).await;
    let range = format!("from={START_MS}&to={}", START_MS + DAY_MS);
    for (path, field) in [
        // A panic: the connection used to drop without an answer.
        (
            format!("/v1/devices/{device}/positions?{range}&bucket=%C3%A9"),
            "bucket",
        ),
        // Used to wrap silently into a small bucket.
        (
            format!("/v1/devices/{device}/positions?{range}&bucket=144115188075855873d"),
            "bucket",
        ),
        // Near the minimum date: used to answer 500.
        (
            format!("/v1/devices/{device}/positions?to=-8334632851200001"),
            "to",
        ),
        (
            format!("/v1/devices/{device}/summary?to=-8334632851200001"),
            "to",
        ),
        (
            "/v1/positions?bbox=1,1,2,2&to=-8334632851200001".to_owned(),
            "to",
        ),
        (
            format!("/v1/devices/{device}/positions?{range}&limit=lots"),
            "limit",
        ),
        (
            format!("/v1/devices/{device}/summary?{range}&idle_gap=NaN"),
            "idle_gap",
        ),
        (
            format!("/v1/positions?bbox=1,1,2,2&{range}&limit=1e9"),
            "limit",
        ),
        (
            format!("/v1/devices/{device}/positions?{range}&from=1"),
            "from",
        ),
    ] {
        let (status, body) = api.call("get", &path, &analyst.token, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }
    // Buckets still downsample.
    let (status, body) = api
        .call(
            "get",
            &format!("/v1/devices/{device}/positions?{range}&bucket=5s"),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let n = body["positions"].as_array().unwrap().len();
    assert!((2..=3).contains(&n), "10 fixes at 1 Hz in 5 s buckets: {n}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let api = Api::start().await;
    let tenant = api.tenant("bodies").await;
    let admin = api.user(tenant, Role::Admin).await;
    // Over axum's old 2 MiB default too, where it used to be a 400.
    let huge = "x".repeat(3 * 1024 * 1024);
    for body in [
        serde_json::json!({ "uid": "big", "name": huge }),
        serde_json::json!({ "uid": "big", "name": "x".repeat(70 * 1024) }),
    ] {
        let (status, body) = api
            .call("post", "/v1/devices", &admin.token, Some(body))
            .await;
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    }
    let (status, _) = api
        .call(
            "post",
            "/v1/devices",
            &admin.token,
            Some(serde_json::json!({ "uid": "small", "name": "fits" })),
        )
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn every_name_like_field_is_capped_naming_the_field() {
    let api = Api::start().await;
    let tenant = api.tenant("names").await;
    let admin = api.user(tenant, Role::Admin).await;
    let long = "n".repeat(201);
    let device = api.device(tenant).await;
    let user = api.bare_user(tenant, Role::Viewer).await;
    for (method, path, body, field) in [
        (
            "post",
            "/v1/devices".to_owned(),
            serde_json::json!({ "uid": "named", "name": long }),
            "name",
        ),
        (
            "post",
            "/v1/devices".to_owned(),
            serde_json::json!({ "uid": long }),
            "uid",
        ),
        (
            "patch",
            format!("/v1/devices/{device}"),
            serde_json::json!({ "name": long }),
            "name",
        ),
        (
            "post",
            "/v1/users".to_owned(),
            serde_json::json!({
                "email": "long-name@example.test", "password": "correct horse battery staple",
                "role": "viewer", "display_name": long,
            }),
            "display_name",
        ),
        (
            "post",
            "/v1/users".to_owned(),
            serde_json::json!({
                "email": format!("{}@example.test", "e".repeat(400)),
                "password": "correct horse battery staple", "role": "viewer",
            }),
            "email",
        ),
        (
            "patch",
            format!("/v1/users/{user}"),
            serde_json::json!({ "display_name": long }),
            "display_name",
        ),
        (
            "post",
            "/v1/groups".to_owned(),
            serde_json::json!({ "name": long }),
            "name",
        ),
        (
            "post",
            "/v1/api-keys".to_owned(),
            serde_json::json!({ "name": long, "scopes": ["positions:read"] }),
            "name",
        ),
    ] {
        let (status, answer) = api.call(method, &path, &admin.token, Some(body)).await;
        assert_eq!(status, 400, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{method} {path}: {answer}");
    }
    // 200 characters of two bytes each fit: the cap counts characters.
    let (status, answer) = api
        .call(
            "post",
            "/v1/groups",
            &admin.token,
            Some(serde_json::json!({ "name": "é".repeat(200) })),
        )
        .await;
    assert_eq!(status, 201, "{answer}");

    // Tenants are created from the command line.
    let mut config = <query_api::Config as clap::Parser>::parse_from(["query-api"]);
    config.database = api.db.args.clone();
    let err = query_api::run_admin(
        &config,
        &query_api::AdminCommand::CreateTenant {
            name: long.clone(),
            admin_email: "first@example.test".into(),
            password: Some("correct horse battery staple".into()),
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("name") && err.contains("200"), "{err}");
}

#[tokio::test]
async fn readyz_shows_names_and_states_only() {
    let api = Api::start().await;
    let response = api.client.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "status": "ready",
            "service": "query-api",
            "checks": { "postgres": "ok", "redis": "ok" },
        })
    );
}

/// A measurement, not an assertion of speed (run by hand:
/// `cargo test -p query-api --test it slow_readers -- --ignored --nocapture`): 100 clients of
/// one tenant read a big export at 1 byte/s (the per-tenant cap raised to 100, so that every
/// one of them is admitted) while another tenant's history requests are timed, the service in
/// the test's process (4 worker threads). The figures go
/// into `docs/query-api.md`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement: run by hand"]
async fn slow_readers_leave_other_tenants_fast() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // `SLOW_READERS_CAP=8` measures the default per-tenant cap instead.
    let cap = std::env::var("SLOW_READERS_CAP").unwrap_or_else(|_| "100".into());
    let api = start(&[
        "--exports-per-tenant",
        &cap,
        "--export-idle-timeout",
        "3600",
    ])
    .await;
    let slow = api.tenant("trickle").await;
    let analyst = api.user(slow, Role::Analyst).await;
    let device = api.device(slow).await;
    api.track(slow, device, START_MS, BIG_TRACK).await;
    let other = api.tenant("timed").await;
    let bystander = api.user(other, Role::Analyst).await;
    let other_device = api.device(other).await;
    api.track(other, other_device, START_MS, 1_000).await;

    let addr = api.base.trim_start_matches("http://").to_owned();
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\r\n",
        export_path(device, "json"),
        analyst.token
    );
    let mut readers = Vec::new();
    for _ in 0..100 {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let mut read = 0u64;
            loop {
                match socket.read(&mut byte).await {
                    Ok(0) | Err(_) => return read,
                    Ok(_) => read += 1,
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let path = format!(
        "/v1/devices/{other_device}/positions?from={START_MS}&to={}&limit=100",
        START_MS + DAY_MS
    );
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let started = Instant::now();
        let (status, _) = api.call("get", &path, &bystander.token, None).await;
        latencies.push(started.elapsed());
        assert_eq!(status, 200);
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "other tenant while 100 clients read an export at 1 byte/s: {} requests, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        at(0.5).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0,
    );
    for reader in readers {
        reader.abort();
    }
}
