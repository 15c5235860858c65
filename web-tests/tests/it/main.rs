//! The dashboard end to end in headless Chromium: log in, watch devices move, draw and export a
//! history, set up a device, see only one's groups as a viewer, and recover after fanout
//! restarts; the event feed and geofences in `events.rs`. A screenshot per step goes to `<target dir>/web-artifacts/`; with
//! `UPDATE_SCREENSHOT=1` the live step's also replaces the README's `docs/img/dashboard.png`.

mod events;
mod measure;
mod support;

use gps_domain::auth::Role;
use serde_json::Value;
use support::{Browser, Stack};
use uuid::Uuid;

fn now_ms() -> i64 {
    gps_domain::fix::now_millis()
}

/// The page's state of one live device (`null` when it has none).
fn live_device(id: Uuid) -> String {
    format!("const d = window.__dash && window.__dash.live.devices.get('{id}'); return d ? {{lat: d.lat, lon: d.lon, t: d.t}} : null;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_end_to_end() {
    let mut stack = Stack::start().await;
    let (tenant, admin_email, admin) = stack.tenant_admin().await;
    let (viewer, viewer_email) = stack.user(tenant, Role::Viewer).await;

    // A fleet on the Baltic coast (the offline basemap's coastline shows at this zoom), one
    // device in no group of the viewer, with a name that would be markup if inserted as HTML.
    let mut fleet = Vec::new();
    for i in 0..10 {
        fleet.push(
            stack
                .device(&admin, &format!("van-{i:02}"), &format!("Van {i}"))
                .await,
        );
    }
    let (hidden, hidden_token) = stack
        .device(&admin, "truck-x", "Truck <b id=\"injected\">x</b>")
        .await;
    let fleet_ids: Vec<Uuid> = fleet.iter().map(|(id, _)| *id).collect();
    stack.group(&admin, &fleet_ids, &[viewer]).await;

    // Van 0's last 40 minutes: driving, a stop of 6 minutes, driving on (15 s apart).
    let start = now_ms() - 40 * 60_000;
    let mut track = Vec::new();
    let (mut lat, mut lon) = (54.32, 10.13);
    for i in 0..150i64 {
        let stopped = (60..85).contains(&i);
        if !stopped {
            lat += 0.0009;
            lon += 0.0016;
        }
        track.push((
            start + i * 15_000,
            lat,
            lon,
            if stopped { -1.0 } else { 60.0 },
        ));
    }
    stack.post_fixes(&fleet[0].1, &track).await;

    let browser = Browser::start().await;
    browser.open_login(&stack.api).await;
    browser.shot("01-login").await;
    browser.login(&stack.api, &admin_email).await;

    // --- Live: devices appear and move --------------------------------------------------------
    let origin: Vec<(f64, f64, f64)> = (0..10)
        .map(|i| {
            let i = i as f64;
            (54.0 + (i * 0.37) % 0.9, 9.6 + i * 0.33, (i * 47.0) % 360.0)
        })
        .collect();
    for round in 0..6 {
        let t = now_ms();
        for (i, (_, token)) in fleet.iter().enumerate().skip(1) {
            let (lat, lon, hdg) = origin[i];
            let step = round as f64 * 0.02;
            let (s, c) = hdg.to_radians().sin_cos();
            // Two devices went quiet a while ago: their markers age (orange, grey).
            let t = match i {
                8 => t - 4 * 60_000 + round * 1000,
                9 => t - 15 * 60_000 + round * 1000,
                _ => t,
            };
            stack
                .post_fixes(token, &[(t, lat + c * step, lon + s * step, hdg)])
                .await;
        }
        stack
            .post_fixes(
                &hidden_token,
                &[(t, 54.6, 11.2 + round as f64 * 0.01, 90.0)],
            )
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let (last_lat, last_lon) = (54.45, 10.5);
    stack
        .post_fixes(&fleet[0].1, &[(now_ms(), last_lat, last_lon, 45.0)])
        .await;
    browser
        .wait_for(
            "11 live devices",
            "return window.__dash.live.devices.size === 11",
        )
        .await;
    let moved = browser
        .wait_for(
            "van 0 at its newest position",
            &format!(
                "const d = window.__dash.live.devices.get('{}'); return d && Math.abs(d.lat - {last_lat}) < 1e-6 && d;",
                fleet[0].0
            ),
        )
        .await;
    assert!(
        (moved["lon"].as_f64().unwrap() - last_lon).abs() < 1e-6,
        "{moved}"
    );
    // Untrusted names are text, never markup.
    browser
        .js(&format!(
            "window.__dash.live.selected = '{}'; return true;",
            fleet[0].0
        ))
        .await;
    let listed = browser
        .wait_for(
            "the untrusted name in the list",
            "return [...document.querySelectorAll('#live-list li')].map(li => li.textContent).join('|').includes('Truck <b id=\"injected\">x</b>') && document.querySelectorAll('#live-list li').length",
        )
        .await;
    assert_eq!(listed, 11);
    assert_eq!(
        browser
            .js("return document.getElementById('injected')")
            .await,
        Value::Null
    );
    browser
        .js("window.__dash.map.fit([8.0, 53.2, 14.8, 55.6]); return true;")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let shot = browser.shot("02-live").await;
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/img/dashboard.png");
        std::fs::copy(&shot, readme).unwrap();
    }

    // --- History: the track draws, with the summary's stop, and exports ------------------------
    browser
        .open_history(&stack.api, fleet[0].0, start - 60_000, now_ms() + 120_000)
        .await;
    browser.click("#history-load").await;
    let stats = browser
        .wait_for(
            "the track",
            "const s = window.__dash.history.stats; return s && s.fixes > 1 && s;",
        )
        .await;
    let segments = browser
        .wait_for(
            "trips and stops",
            "const items = [...document.querySelectorAll('#history-segments li')]; return items.some(li => li.classList.contains('stop')) && items.length;",
        )
        .await;
    assert!(segments.as_u64().unwrap() >= 2, "{segments}");
    // A straight drive simplifies to few points; the stop's point is kept.
    assert!(stats["fixes"].as_u64().unwrap() < 151, "{stats}");
    browser.js("const s = document.getElementById('history-slider'); s.value = s.max / 2; s.dispatchEvent(new Event('input')); return true;").await;
    browser.shot("03-history").await;

    browser
        .js("window.__blobs = []; const original = URL.createObjectURL; URL.createObjectURL = (b) => { window.__blobs.push(b); return original(b); }; return true;")
        .await;
    for (button, check) in [
        ("#export-geojson", "geojson"),
        ("#export-gpx", "gpx"),
        ("#export-csv", "csv"),
    ] {
        let before = browser
            .js("return window.__blobs.length")
            .await
            .as_u64()
            .unwrap();
        browser.click(button).await;
        browser
            .wait_for(button, &format!("return window.__blobs.length > {before}"))
            .await;
        let text = browser
            .js(&format!("return window.__blobs[{before}].text()"))
            .await;
        let text = text.as_str().unwrap();
        match check {
            "geojson" => {
                let doc: Value = serde_json::from_str(text).unwrap();
                assert_eq!(doc["type"], "FeatureCollection");
                assert_eq!(
                    doc["features"].as_array().unwrap().len(),
                    151,
                    "every fix exported"
                );
            }
            "gpx" => assert_eq!(text.matches("<trkpt").count(), 151, "{text:.300}"),
            _ => assert_eq!(text.lines().count(), 152, "{text:.300}"),
        }
    }
    browser.shot("04-history-exported").await;

    // --- Device setup: created through the API, credentials shown once, and they work ---------
    browser.open(&stack.api, "setup", "setup-uid").await;
    browser.fill("#setup-uid", "phone-anna").await;
    browser.fill("#setup-name", "Anna's phone").await;
    browser.click("#setup-create").await;
    let token = browser
        .wait_for(
            "the device token",
            "const t = document.getElementById('setup-token'); return t && t.textContent;",
        )
        .await;
    let qr_codes = browser
        .js("return document.querySelectorAll('canvas.qr').length")
        .await;
    assert_eq!(qr_codes, 3, "Traccar Client, OsmAnd and OwnTracks");
    let osmand = browser
        .js("return document.getElementById('setup-osmand-url').textContent")
        .await;
    assert!(
        osmand
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/?id=phone-anna&token=", stack.ingest)),
        "{osmand}"
    );
    browser.click("#setup-osmand-mps").await;
    browser
        .wait_for("the speed unit set", "return document.querySelector('#setup-osmand-mps + .note').textContent === 'speed unit: m/s'")
        .await;
    let (_, devices) = stack
        .call(reqwest::Method::GET, "/v1/devices", Some(&admin), None)
        .await;
    let anna = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["uid"] == "phone-anna")
        .expect("the device created on the page");
    assert_eq!(anna["name"], "Anna's phone");
    assert_eq!(anna["speed_unit"], "mps", "{anna}");
    browser.shot("05-setup").await;
    stack
        .post_fixes(token.as_str().unwrap(), &[(now_ms(), 54.2, 10.9, 0.0)])
        .await;

    // --- A viewer sees its groups' devices only ------------------------------------------------
    browser.open(&stack.api, "live", "live-list").await;
    browser.logout().await;
    browser.login(&stack.api, &viewer_email).await;
    browser
        .wait_for(
            "the viewer's 10 devices",
            "return window.__dash.live.devices.size === 10",
        )
        .await;
    let probe_lat = 54.05;
    let t = now_ms();
    stack
        .post_fixes(&hidden_token, &[(t, 54.61, 11.4, 90.0)])
        .await;
    stack
        .post_fixes(&fleet[2].1, &[(t, probe_lat, 10.3, 90.0)])
        .await;
    browser
        .wait_for(
            "the viewer's device moving",
            &format!("const d = window.__dash.live.devices.get('{}'); return d && Math.abs(d.lat - {probe_lat}) < 1e-6;", fleet[2].0),
        )
        .await;
    assert_eq!(
        browser.js(&live_device(hidden)).await,
        Value::Null,
        "another group's device"
    );
    assert_eq!(
        browser
            .js("return document.getElementById('nav-setup').hidden")
            .await,
        true
    );
    browser
        .wait_for(
            "the viewer's list",
            "return document.querySelectorAll('#live-list li').length === 10",
        )
        .await;
    browser.shot("06-viewer").await;
    browser.open(&stack.api, "devices", "devices-table").await;
    let rows = browser
        .wait_for(
            "the device table",
            "return document.querySelectorAll('#devices-table tbody tr').length",
        )
        .await;
    assert_eq!(rows, 10);
    let listed_hidden = browser
        .js(&format!(
            "return document.querySelector('#devices-table tr[data-device=\"{hidden}\"]')"
        ))
        .await;
    assert_eq!(listed_hidden, Value::Null);

    // --- A reload logs in again silently with the refresh token ---------------------------------
    browser.open(&stack.api, "live", "live-list").await;
    browser.client.refresh().await.unwrap();
    browser
        .wait_for("live again after a reload, without the login form", "return document.getElementById('login').hidden && document.getElementById('live-state').textContent === 'live' && window.__dash.live.devices.size === 10")
        .await;

    // --- The page recovers after fanout restarts -----------------------------------------------
    stack.stop_fanout().await;
    browser
        .wait_for(
            "the page noticing",
            "return document.getElementById('live-state').textContent === 'reconnecting'",
        )
        .await;
    browser.shot("07-fanout-down").await;
    stack.start_fanout().await;
    browser
        .wait_for("reconnected", "return document.getElementById('live-state').textContent === 'live' && window.__dash.live.devices.size === 10")
        .await;
    browser
        .wait_for(
            "the list after the new snapshot",
            "return document.querySelectorAll('#live-list li').length === 10",
        )
        .await;
    let after_lat = 54.11;
    stack
        .post_fixes(&fleet[3].1, &[(now_ms(), after_lat, 10.7, 180.0)])
        .await;
    browser
        .wait_for(
            "a fix after the restart",
            &format!("const d = window.__dash.live.devices.get('{}'); return d && Math.abs(d.lat - {after_lat}) < 1e-6;", fleet[3].0),
        )
        .await;
    browser.shot("08-recovered").await;
}

/// The static files: content types, the policy headers, revalidation, and no file outside the
/// dashboard's own names.
#[tokio::test]
async fn static_files_carry_types_policy_and_etags() {
    let stack = Stack::start().await;
    let get = |path: &str| stack.http.get(format!("{}{path}", stack.api)).send();
    let index = get("/").await.unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    let csp = index.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(csp.contains("connect-src 'self' ws://127.0.0.1:"), "{csp}");
    assert_eq!(index.headers()["x-content-type-options"], "nosniff");
    let etag = index.headers()["etag"].clone();
    let again = stack
        .http
        .get(format!("{}/", stack.api))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let js = get("/app/main.js").await.unwrap();
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let land = get("/vendor/land-110m.json").await.unwrap();
    assert_eq!(land.status(), 200, "npm ci in web/ fetched world-atlas");
    let config: Value = get("/config.json").await.unwrap().json().await.unwrap();
    assert!(
        config["live_url"].as_str().unwrap().ends_with("/v1/live"),
        "{config}"
    );
    assert_eq!(config["ingest_url"], stack.ingest.as_str());
    for path in [
        "/app/..%2FCargo.toml",
        "/app/.gitignore",
        "/vendor/package.json",
        "/app/main.rs",
    ] {
        assert_eq!(get(path).await.unwrap().status(), 404, "{path}");
    }
    // Data still needs a credential.
    assert_eq!(get("/v1/devices").await.unwrap().status(), 401);
}

/// `query-api admin ensure-user` (the demo login of `dev/stack run`): creates the tenant and
/// user, and a second run with another password resets it rather than adding a user.
#[tokio::test]
async fn ensure_user_creates_then_resets_the_demo_login() {
    let stack = Stack::start().await;
    let tenant = format!("demo-{}", Uuid::new_v4().simple());
    let mut config = <query_api::Config as clap::Parser>::parse_from(["query-api"]);
    config.database = stack.db.args.clone();
    let ensure = |password: &str| query_api::AdminCommand::EnsureUser {
        tenant: tenant.clone(),
        email: "demo@demo.test".into(),
        role: "admin".into(),
        password: password.into(),
    };
    let login = |password: &str| {
        let body = serde_json::json!({ "email": "demo@demo.test", "password": password });
        stack.call(reqwest::Method::POST, "/v1/auth/login", None, Some(body))
    };
    let first = query_api::run_admin(&config, &ensure("first password 1"))
        .await
        .unwrap();
    assert!(first.contains("ready, role admin"), "{first}");
    let (status, body) = login("first password 1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "admin");

    query_api::run_admin(&config, &ensure("second password 2"))
        .await
        .unwrap();
    assert_eq!(login("first password 1").await.0, 401);
    assert_eq!(login("second password 2").await.0, 200);
    let users: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'demo@demo.test'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(users, 1);

    let short = query_api::run_admin(&config, &ensure("short")).await;
    assert!(short.unwrap_err().to_string().contains("password"));
}
