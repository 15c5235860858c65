//! Events and geofences in the dashboard: the event feed of a viewer (stored events from
//! `GET /v1/events`, then live `event` frames from the fanout) holds its group's device and never
//! another's, names the fence and shows speeds in the user's unit, counts unseen alarms and
//! focuses the map; an admin draws a polygon and a circle on the map, sees the API's 400 next to
//! the field, edits a fence and deletes one after confirming, each checked through the API.

use crate::support::{Browser, Stack};
use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use gps_domain::auth::Role;
use gps_domain::events::{Event, EventType};
use gps_domain::live::{channel_for, LiveBatch, LiveEvent};
use serde_json::{json, Value};
use uuid::Uuid;

fn now_ms() -> i64 {
    gps_domain::fix::now_millis()
}

/// One stored event, as the processor writes it.
#[allow(clippy::too_many_arguments)]
async fn insert_event(
    stack: &Stack,
    tenant: Uuid,
    device: Uuid,
    kind: &str,
    t: i64,
    (lat, lon): (f64, f64),
    fence: Option<Uuid>,
    details: Value,
) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO events (id, tenant_id, device_id, type, fix_time, lat, lon, geofence_id, details)
         VALUES ($1, $2, $3, $4, to_timestamp($5::float8 / 1000), $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(tenant)
    .bind(device)
    .bind(kind)
    .bind(t as f64)
    .bind(lat)
    .bind(lon)
    .bind(fence)
    .bind(sqlx::types::Json(details))
    .execute(&stack.db.pool)
    .await
    .unwrap();
    id
}

/// A live alarm of `device` as the processor publishes it: in the tenant's live message.
fn live_alarm(tenant: Uuid, device: Uuid, uid: &str, t: i64, alarm: &str) -> LiveEvent {
    LiveEvent {
        uid: uid.to_owned(),
        event: Event {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            device_id: device,
            event_type: EventType::Alarm,
            fix_time: t,
            lat: Some(54.31),
            lon: Some(10.12),
            geofence_id: None,
            details: json!({ "alarm": alarm }),
        },
    }
}

async fn publish(tenant: Uuid, events: Vec<LiveEvent>) {
    let mut redis = gps_runtime::redis_client::connect(&gps_runtime::testing::redis_args())
        .await
        .unwrap();
    let batch = LiveBatch::new(tenant, Vec::new()).with_events(events);
    redis::cmd("PUBLISH")
        .arg(channel_for(tenant))
        .arg(batch.encode())
        .query_async::<i64>(&mut redis)
        .await
        .unwrap();
}

/// The text of the feed's entry for event `id` (`null` when the page has none).
fn entry(id: Uuid) -> String {
    format!("const b = document.querySelector('#events-list button[data-event=\"{id}\"]'); return b && b.textContent;")
}

/// Click the map at a position: a real pointer down and up (WebDriver actions) at its pixel.
async fn click_map(browser: &Browser, lon: f64, lat: f64) {
    let at = browser
        .js(&format!(
            "const r = document.querySelector('#map canvas.map-overlay').getBoundingClientRect(); \
             const [x, y] = window.__dash.map.toScreen({lon}, {lat}); return [r.left + x, r.top + y];"
        ))
        .await;
    let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
    let mouse = MouseActions::new("mouse".into())
        .then(PointerAction::MoveTo {
            duration: None,
            x: x.round(),
            y: y.round(),
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    browser.client.perform_actions(mouse).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_feed_and_geofences() {
    let stack = Stack::start().await;
    let (tenant, admin_email, admin) = stack.tenant_admin().await;
    let (viewer, viewer_email) = stack.user(tenant, Role::Viewer).await;
    let (bus, _) = stack
        .device(&admin, "bus-1", "Bus <i id=\"injected\">1</i>")
        .await;
    let (other, _) = stack.device(&admin, "bus-2", "Bus 2").await;
    stack.group(&admin, &[bus], &[viewer]).await;
    let fence = json!({ "name": "Depot", "geometry": { "type": "Point", "coordinates": [10.12, 54.31] }, "radius_m": 300.0 });
    let (status, depot) = stack
        .call(
            reqwest::Method::POST,
            "/v1/geofences",
            Some(&admin),
            Some(fence),
        )
        .await;
    assert_eq!(status, 201, "{depot}");
    let depot: Uuid = depot["id"].as_str().unwrap().parse().unwrap();

    // Stored: an overspeed of the viewer's bus in the depot (25 m/s against 12.5 = 90 vs 45
    // km/h) and an alarm of the device outside the viewer's groups.
    let t = now_ms();
    let overspeed = insert_event(
        &stack,
        tenant,
        bus,
        "overspeed",
        t - 10 * 60_000,
        (54.31, 10.12),
        Some(depot),
        json!({ "speed_mps": 25.0, "limit_mps": 12.5 }),
    )
    .await;
    let hidden_alarm = insert_event(
        &stack,
        tenant,
        other,
        "alarm",
        t - 5 * 60_000,
        (54.4, 10.3),
        None,
        json!({ "alarm": "sos" }),
    )
    .await;

    let browser = Browser::start().await;
    browser.open_login(&stack.api).await;
    browser
        .js("localStorage.setItem('gps.speedUnit', 'kmh'); return true;")
        .await;
    browser.login(&stack.api, &viewer_email).await;

    // What the page offers follows its copy of the role table: the domain's, exactly.
    let table = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1]; import('/app/api.js').then((m) => done(m.ROLE_PERMISSIONS));",
            vec![],
        )
        .await
        .unwrap();
    for role in [Role::Admin, Role::Manager, Role::Analyst, Role::Viewer] {
        let domain: Vec<&str> = role.permissions().iter().map(|p| p.as_str()).collect();
        assert_eq!(table[role.as_str()], json!(domain), "{}", role.as_str());
    }

    // --- The stored page: the viewer's bus, with the fence's name and km/h -------------------
    browser.open(&stack.api, "events", "events-list").await;
    let text = browser
        .wait_for("the stored overspeed", &entry(overspeed))
        .await;
    let text = text.as_str().unwrap();
    assert!(text.contains("Overspeed"), "{text}");
    assert!(text.contains("Bus <i id=\"injected\">1</i>"), "{text}");
    assert!(text.contains("90 km/h (limit 45 km/h in Depot)"), "{text}");
    assert_eq!(browser.js(&entry(hidden_alarm)).await, Value::Null);
    assert_eq!(
        browser
            .js("return document.getElementById('injected')")
            .await,
        Value::Null
    );

    // --- Live: the bus's alarm arrives (after the other device's, which must not) -------------
    browser.open(&stack.api, "live", "live-list").await;
    let hidden_live = live_alarm(tenant, other, "bus-2", now_ms(), "panic");
    let seen_live = live_alarm(tenant, bus, "bus-1", now_ms(), "sos");
    let (hidden_id, seen_id) = (hidden_live.event.id, seen_live.event.id);
    publish(tenant, vec![hidden_live, seen_live]).await;
    browser
        .wait_for(
            "the live alarm in the feed",
            &format!("return window.__dash.feed.ids.has('{seen_id}')"),
        )
        .await;
    assert_eq!(
        browser
            .js(&format!("return window.__dash.feed.ids.has('{hidden_id}') || window.__dash.feed.ids.has('{hidden_alarm}')"))
            .await,
        false,
        "another group's device's events"
    );
    let badge = browser
        .wait_for(
            "the unseen-alarm badge",
            "const b = document.getElementById('alarm-badge'); return !b.hidden && b.textContent",
        )
        .await;
    assert_eq!(badge, "1 unseen alarm");
    let announced = browser
        .js("return document.getElementById('announcer').textContent")
        .await;
    assert!(
        announced.as_str().unwrap().contains("Alarm sos from Bus"),
        "{announced}"
    );
    browser.shot("09-alarm-badge").await;

    // Opening the feed marks it seen; the type filter; an entry focuses the map.
    browser.open(&stack.api, "events", "events-list").await;
    browser
        .wait_for(
            "the badge cleared",
            "return document.getElementById('alarm-badge').hidden",
        )
        .await;
    browser
        .js("const s = document.getElementById('events-type'); s.value = 'alarm'; s.dispatchEvent(new Event('change')); return true;")
        .await;
    let kinds = browser
        .wait_for(
            "only alarms listed",
            "const b = [...document.querySelectorAll('#events-list button.event')]; return b.length && b.map(e => e.dataset.type)",
        )
        .await;
    assert_eq!(kinds, json!(["alarm"]));
    browser
        .click(&format!("#events-list button[data-event=\"{seen_id}\"]"))
        .await;
    let focused = browser
        .wait_for(
            "the map on the alarm",
            &format!("const d = window.__dash; return d.live.selected === '{bus}' && d.map.fromScreen(d.map.width / 2, d.map.height / 2);"),
        )
        .await;
    assert!(
        (focused[0].as_f64().unwrap() - 10.12).abs() < 1e-3
            && (focused[1].as_f64().unwrap() - 54.31).abs() < 1e-3,
        "{focused}"
    );
    browser.shot("10-events").await;
    // A viewer reads fences but may not draw them.
    browser.open(&stack.api, "geofences", "fence-list").await;
    browser
        .wait_for(
            "the depot listed",
            &format!("return document.querySelector('#fence-list button[data-fence=\"{depot}\"]')"),
        )
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('fence-new-polygon')")
            .await,
        Value::Null
    );

    // --- An admin draws a polygon; the API's 400 shows next to the limit ----------------------
    browser.logout().await;
    browser.login(&stack.api, &admin_email).await;
    browser
        .open(&stack.api, "geofences", "fence-new-polygon")
        .await;
    browser
        .js("window.__dash.map.setView(10.2, 54.3, 12); return true;")
        .await;
    browser.click("#fence-new-polygon").await;
    let corners = [(10.18, 54.29), (10.22, 54.29), (10.2, 54.31)];
    for (lon, lat) in corners {
        click_map(&browser, lon, lat).await;
    }
    let drawn = browser
        .wait_for(
            "three corners",
            "const d = window.__dash.fences.draft; return d && d.corners.length === 3 && d.corners",
        )
        .await;
    for (i, (lon, lat)) in corners.iter().enumerate() {
        // A pixel at zoom 12 is about 22 m.
        assert!(
            (drawn[i][0].as_f64().unwrap() - lon).abs() < 5e-4
                && (drawn[i][1].as_f64().unwrap() - lat).abs() < 5e-4,
            "{drawn}"
        );
    }
    browser.fill("#fence-name", "Yard").await;
    browser.fill("#fence-limit", "1000").await;
    browser.click("#fence-save").await;
    let refused = browser
        .wait_for(
            "the limit's error next to it",
            "const e = document.getElementById('fence-limit-error'); return e && e.textContent",
        )
        .await;
    assert!(
        refused.as_str().unwrap().contains("1000 km/h is 277.8 m/s")
            && browser
                .js("return document.getElementById('fence-limit').getAttribute('aria-invalid')")
                .await
                == "true",
        "{refused}"
    );
    browser.shot("11-fence-refused").await;
    browser.fill("#fence-limit", "30").await;
    browser.click("#fence-save").await;
    browser
        .wait_for(
            "the new fence listed",
            "return [...document.querySelectorAll('#fence-list button.fence')].some(b => b.textContent.includes('Yard'))",
        )
        .await;
    let fences = |token: String| {
        let stack = &stack;
        async move {
            let (status, body) = stack
                .call(reqwest::Method::GET, "/v1/geofences", Some(&token), None)
                .await;
            assert_eq!(status, 200, "{body}");
            body["geofences"].as_array().unwrap().clone()
        }
    };
    let listed = fences(admin.clone()).await;
    let yard = listed
        .iter()
        .find(|f| f["name"] == "Yard")
        .expect("the fence drawn on the page");
    assert_eq!(yard["geometry"]["type"], "Polygon");
    assert_eq!(
        yard["geometry"]["coordinates"][0].as_array().unwrap().len(),
        4
    );
    assert!(
        (yard["speed_limit_mps"].as_f64().unwrap() - 30.0 / 3.6).abs() < 1e-9,
        "{yard}"
    );
    let yard_id = yard["id"].as_str().unwrap().to_owned();

    // --- A circle: the centre, then a point on the edge --------------------------------------
    browser.click("#fence-new-circle").await;
    click_map(&browser, 10.25, 54.32).await;
    click_map(&browser, 10.26, 54.32).await;
    browser
        .wait_for(
            "the circle's radius",
            "const d = window.__dash.fences.draft; return d && d.radius > 0",
        )
        .await;
    browser.fill("#fence-name", "Gate").await;
    browser.click("#fence-groups input[type=checkbox]").await;
    browser.click("#fence-save").await;
    browser
        .wait_for(
            "the circle listed",
            "return [...document.querySelectorAll('#fence-list button.fence')].some(b => b.textContent.includes('Gate'))",
        )
        .await;
    let gate = fences(admin.clone())
        .await
        .into_iter()
        .find(|f| f["name"] == "Gate")
        .expect("the circle drawn on the page");
    assert_eq!(gate["geometry"]["type"], "Point");
    // 0.01° of longitude at 54.32° N is about 650 m.
    assert_eq!(gate["groups"].as_array().unwrap().len(), 1, "{gate}");
    let radius = gate["radius_m"].as_f64().unwrap();
    assert!((radius - 650.0).abs() < 60.0, "{gate}");
    browser.shot("12-fences").await;

    // --- Edit the polygon's name, then delete it after confirming ----------------------------
    // A click inside the polygon on the map selects it.
    click_map(&browser, 10.2, 54.296).await;
    browser
        .wait_for(
            "the polygon selected from the map",
            &format!("return window.__dash.fences.selected === '{yard_id}' && document.getElementById('fence-edit-name')"),
        )
        .await;
    browser.fill("#fence-edit-name", "Yard 2").await;
    browser.click("#fence-update").await;
    browser
        .wait_for(
            "the renamed fence",
            &format!("const b = document.querySelector('#fence-list button[data-fence=\"{yard_id}\"]'); return b && b.textContent.includes('Yard 2')"),
        )
        .await;
    let renamed = fences(admin.clone()).await;
    assert!(
        renamed
            .iter()
            .any(|f| f["id"] == yard_id.as_str() && f["name"] == "Yard 2"),
        "{renamed:?}"
    );
    browser.click("#fence-delete").await;
    // Nothing is deleted before the confirmation.
    assert_eq!(fences(admin.clone()).await.len(), 3);
    browser.click("#fence-delete-confirm").await;
    browser
        .wait_for(
            "the fence gone from the list",
            &format!("return !document.querySelector('#fence-list button[data-fence=\"{yard_id}\"]') && document.querySelectorAll('#fence-list button.fence').length === 2"),
        )
        .await;
    let left = fences(admin.clone()).await;
    assert!(
        left.iter().all(|f| f["id"] != yard_id.as_str()) && left.len() == 2,
        "{left:?}"
    );
}

/// A busy day: 1,200 events, 1,000 of them in the last hour. The page asks for windows going
/// back from now (halving the ones holding more than a page) and keeps exactly the newest 500,
/// newest first, the same as the database's newest 500; the history page's summary counts them
/// all by type.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_feed_keeps_the_newest_of_a_busy_day() {
    let stack = Stack::start().await;
    let (tenant, admin_email, admin) = stack.tenant_admin().await;
    let (bus, _) = stack.device(&admin, "bus-1", "Bus 1").await;
    sqlx::query(
        "INSERT INTO events (id, tenant_id, device_id, type, fix_time, lat, lon, details)
         SELECT gen_random_uuid(), $1, $2, 'motion_start', now() - i * interval '3 seconds', 54.3, 10.1,
                '{\"speed_mps\": 3.0}'::jsonb FROM generate_series(1, 1000) i
         UNION ALL
         SELECT gen_random_uuid(), $1, $2, 'motion_stop', now() - interval '2 hours' - i * interval '5 minutes',
                54.3, 10.1, '{}'::jsonb FROM generate_series(1, 200) i",
    )
    .bind(tenant)
    .bind(bus)
    .execute(&stack.db.pool)
    .await
    .unwrap();
    let newest: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM events WHERE tenant_id = $1 ORDER BY fix_time DESC LIMIT 500",
    )
    .bind(tenant)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();

    let browser = Browser::start().await;
    browser.login(&stack.api, &admin_email).await;
    browser.open(&stack.api, "events", "events-list").await;
    let held = browser
        .wait_for(
            "the feed loaded",
            "const f = window.__dash.feed; return f.state === 'ready' && f.events.map((e) => e.id)",
        )
        .await;
    let newest: Vec<String> = newest.iter().map(Uuid::to_string).collect();
    assert_eq!(held, json!(newest));
    let listed = browser
        .wait_for(
            "the list",
            "return document.querySelectorAll('#events-list button.event').length",
        )
        .await;
    assert_eq!(listed, 200, "the newest 200 listed");
    let status = browser
        .js("return document.getElementById('events-status').textContent")
        .await;
    assert_eq!(status, "The newest 200 of 500");

    // The device's summary on the history page counts its events of the range by type.
    let now = now_ms();
    browser
        .open_history(&stack.api, bus, now - 86_400_000 + 60_000, now + 60_000)
        .await;
    browser.click("#history-load").await;
    let counts = browser
        .wait_for(
            "the summary's event counts",
            "const c = document.getElementById('history-event-counts'); return c && c.textContent",
        )
        .await;
    assert_eq!(counts, "1000 Started moving, 200 Stopped");
}
