//! Event frames: events published live (in the same message as the fixes of their batch) reach,
//! as `{"type":"event",..}` frames after that batch's fixes, exactly the clients that asked for
//! events (all types or a list) and would get a fix of the device: a viewer only its groups'
//! devices' events. A client that did not ask gets none; a later `subscribe` changes the choice,
//! and unsubscribing from everything ends it. The re-check applies to events as to fixes: a viewer
//! removed from a group stops receiving its devices' events.

use crate::support::*;
use gps_domain::auth::Role;
use gps_domain::events::{event_id, Event, EventType};
use gps_domain::live::{LiveBatch, LiveEvent, LiveFix};
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const T: i64 = 1_790_000_000_000;

fn event(tenant: Uuid, device: Uuid, event_type: EventType, t: i64) -> LiveEvent {
    LiveEvent {
        uid: format!("uid-{device}"),
        event: Event {
            id: event_id(device, event_type, t, None),
            tenant_id: tenant,
            device_id: device,
            event_type,
            fix_time: t,
            lat: Some(1.0),
            lon: Some(2.0),
            geofence_id: None,
            details: json!({"speed_mps": 31.5, "limit_mps": 25.0}),
        },
    }
}

/// Publish one live batch with fixes and events.
async fn publish_batch(
    fanout: &mut Running,
    tenant: Uuid,
    fixes: Vec<LiveFix>,
    events: Vec<LiveEvent>,
) {
    let batch = LiveBatch::new(tenant, fixes).with_events(events);
    crate::support::publish_batch(&mut fanout.redis, &batch).await;
}

/// Every `fix` and `event` frame until the marker device's fix arrives (marker excluded).
async fn frames_until(ws: &mut Ws, marker: Uuid) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let message = recv(ws).await;
        if message["type"] == "fix" && message["device"] == marker.to_string() {
            return frames;
        }
        if ["fix", "event"].contains(&message["type"].as_str().unwrap_or("")) {
            frames.push(message);
        }
    }
}

/// `(frame type, device, event type or "")` of each frame.
fn summary(frames: &[Value]) -> Vec<(String, String, String)> {
    frames
        .iter()
        .map(|f| {
            let device = f["device"].as_str().or(f["device_id"].as_str());
            (
                f["type"].as_str().unwrap_or("").to_owned(),
                device.unwrap_or("").to_owned(),
                f["event"]["type"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn row(kind: &str, device: Uuid, event_type: &str) -> (String, String, String) {
    (kind.to_owned(), device.to_string(), event_type.to_owned())
}

#[tokio::test]
async fn events_follow_their_fixes_to_the_clients_that_asked_and_may_see_the_device() {
    let db = TestDb::new().await;
    let name = format!("e-{}", unique_suffix());
    let grouped = seed_device(&db.pool, &name).await.device_id;
    let ungrouped = seed_device(&db.pool, &name).await.device_id;
    let marker_seed = seed_device(&db.pool, &name).await;
    let (tenant, marker) = (marker_seed.tenant_id, marker_seed.device_id);
    let mut fanout = start(db.clone(), config(&db)).await;
    let (viewer_id, viewer) = fanout.user(tenant, Role::Viewer).await;
    create_group(&db.pool, tenant, &[grouped, marker], &[viewer_id]).await;
    let (_, admin) = fanout.user(tenant, Role::Admin).await;

    let mut viewer_all = fanout.connect(&viewer).await;
    let (acks, _) = subscribe(
        &mut viewer_all,
        json!({"type": "subscribe", "all": true, "events": true}),
    )
    .await;
    let every: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(acks[0]["subscriptions"]["events"], json!(every));
    let mut admin_by_id = fanout.connect(&admin).await;
    subscribe(
        &mut admin_by_id,
        json!({"type": "subscribe", "devices": [grouped, ungrouped, marker], "events": true}),
    )
    .await;
    let mut admin_plain = fanout.connect(&admin).await;
    let (acks, _) = subscribe(&mut admin_plain, json!({"type": "subscribe", "all": true})).await;
    assert_eq!(acks[0]["subscriptions"]["events"], json!([]));
    let mut admin_alarms = fanout.connect(&admin).await;
    let (acks, _) = subscribe(
        &mut admin_alarms,
        json!({"type": "subscribe", "all": true, "events": ["alarm"]}),
    )
    .await;
    assert_eq!(acks[0]["subscriptions"]["events"], json!(["alarm"]));

    // One batch: two fixes and the events they raised (published in that one message).
    publish_batch(
        &mut fanout,
        tenant,
        vec![live(grouped, T, 1.0, 2.0), live(ungrouped, T, 1.0, 2.0)],
        vec![
            event(tenant, grouped, EventType::Overspeed, T),
            event(tenant, ungrouped, EventType::Alarm, T),
            event(tenant, grouped, EventType::Alarm, T + 1),
        ],
    )
    .await;
    fanout
        .publish(tenant, vec![live(marker, T + 5_000, 1.0, 1.0)])
        .await;

    let frames = frames_until(&mut admin_by_id, marker).await;
    assert_eq!(
        summary(&frames),
        [
            row("fix", grouped, ""),
            row("fix", ungrouped, ""),
            row("event", grouped, "overspeed"),
            row("event", ungrouped, "alarm"),
            row("event", grouped, "alarm"),
        ],
        "the fixes first, then the events, in the batch's order"
    );
    let frame = &frames[2];
    assert_eq!(frame["uid"], format!("uid-{grouped}"));
    assert!(frame.get("seq").is_none(), "an event has its own id");
    let inner = &frame["event"];
    assert_eq!(
        inner["id"],
        event_id(grouped, EventType::Overspeed, T, None).to_string()
    );
    assert_eq!(inner["device_id"], grouped.to_string());
    assert_eq!(inner["fix_time"], T);
    assert_eq!((&inner["lat"], &inner["lon"]), (&json!(1.0), &json!(2.0)));
    assert_eq!(inner["geofence_id"], Value::Null);
    assert_eq!(inner["details"]["limit_mps"], 25.0);

    assert_eq!(
        summary(&frames_until(&mut viewer_all, marker).await),
        [
            row("fix", grouped, ""),
            row("event", grouped, "overspeed"),
            row("event", grouped, "alarm"),
        ],
        "a viewer gets its groups' devices' events only"
    );
    assert_eq!(
        summary(&frames_until(&mut admin_plain, marker).await),
        [row("fix", grouped, ""), row("fix", ungrouped, "")],
        "no events for a client that did not ask"
    );
    assert_eq!(
        summary(&frames_until(&mut admin_alarms, marker).await),
        [
            row("fix", grouped, ""),
            row("fix", ungrouped, ""),
            row("event", ungrouped, "alarm"),
            row("event", grouped, "alarm"),
        ],
        "only the types asked for"
    );
    assert_eq!(
        fanout
            .metric("gps_fanout_messages_sent_total{type=\"event\"}")
            .await,
        7.0
    );
    assert_eq!(fanout.metric("gps_fanout_live_events_total").await, 3.0);
    fanout.stop().await;
}

/// One round: an overspeed and an alarm of `device`, then a fix of the marker.
struct Round {
    tenant: Uuid,
    device: Uuid,
    marker: Uuid,
    t: i64,
}

impl Round {
    /// Publish a round and return the event types the client received in it.
    async fn run(&mut self, fanout: &mut Running, ws: &mut Ws) -> Vec<String> {
        self.t += 10_000;
        let events = [EventType::Overspeed, EventType::Alarm]
            .map(|kind| event(self.tenant, self.device, kind, self.t));
        publish_batch(fanout, self.tenant, vec![], events.into()).await;
        fanout
            .publish(self.tenant, vec![live(self.marker, self.t + 1, 1.0, 1.0)])
            .await;
        frames_until(ws, self.marker)
            .await
            .iter()
            .map(|f| f["event"]["type"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

#[tokio::test]
async fn a_later_subscribe_changes_the_event_choice_and_unsubscribing_ends_it() {
    let db = TestDb::new().await;
    let name = format!("e-{}", unique_suffix());
    let device = seed_device(&db.pool, &name).await.device_id;
    let marker_seed = seed_device(&db.pool, &name).await;
    let (tenant, marker) = (marker_seed.tenant_id, marker_seed.device_id);
    let mut fanout = start(db.clone(), config(&db)).await;
    let (_, admin) = fanout.user(tenant, Role::Admin).await;
    let mut ws = fanout.connect(&admin).await;
    let mut round = Round {
        tenant,
        device,
        marker,
        t: T,
    };
    subscribe(&mut ws, json!({"type": "subscribe", "all": true})).await;
    assert!(round.run(&mut fanout, &mut ws).await.is_empty());

    // A bad type refuses the whole subscribe, naming the entry.
    send(
        &mut ws,
        json!({"type": "subscribe", "id": 9, "all": true, "events": ["overspeed", "teleport"]}),
    )
    .await;
    let error = recv_type(&mut ws, "error", Duration::from_secs(5)).await;
    assert_eq!(
        (&error["code"], &error["field"], &error["id"]),
        (&json!("invalid_field"), &json!("events[1]"), &json!(9))
    );
    assert!(round.run(&mut fanout, &mut ws).await.is_empty());

    let (acks, _) = subscribe(
        &mut ws,
        json!({"type": "subscribe", "devices": [device], "events": ["overspeed"]}),
    )
    .await;
    assert_eq!(acks[0]["subscriptions"]["events"], json!(["overspeed"]));
    assert_eq!(round.run(&mut fanout, &mut ws).await, ["overspeed"]);

    // A subscribe without `events` keeps the choice; `events: false` ends it.
    subscribe(&mut ws, json!({"type": "subscribe", "devices": [device]})).await;
    assert_eq!(round.run(&mut fanout, &mut ws).await, ["overspeed"]);
    subscribe(
        &mut ws,
        json!({"type": "subscribe", "all": true, "events": false}),
    )
    .await;
    assert!(round.run(&mut fanout, &mut ws).await.is_empty());

    // Unsubscribing from everything ends the events too; a new subscribe must ask again.
    subscribe(
        &mut ws,
        json!({"type": "subscribe", "all": true, "events": true}),
    )
    .await;
    assert_eq!(
        round.run(&mut fanout, &mut ws).await,
        ["overspeed", "alarm"]
    );
    send(&mut ws, json!({"type": "unsubscribe"})).await;
    let ack = recv_type(&mut ws, "unsubscribed", Duration::from_secs(5)).await;
    assert_eq!(ack["subscriptions"]["events"], json!([]));
    subscribe(&mut ws, json!({"type": "subscribe", "all": true})).await;
    assert!(round.run(&mut fanout, &mut ws).await.is_empty());
    fanout.stop().await;
}

#[tokio::test]
async fn a_viewer_removed_from_a_group_stops_receiving_its_devices_events() {
    let db = TestDb::new().await;
    let name = format!("e-{}", unique_suffix());
    let kept = seed_device(&db.pool, &name).await.device_id;
    let lost = seed_device(&db.pool, &name).await.device_id;
    let marker_seed = seed_device(&db.pool, &name).await;
    let (tenant, marker) = (marker_seed.tenant_id, marker_seed.device_id);
    let mut settings = config(&db);
    settings.recheck_secs = 1;
    let mut fanout = start(db.clone(), settings).await;
    let (viewer_id, viewer) = fanout.user(tenant, Role::Viewer).await;
    create_group(&db.pool, tenant, &[kept, marker], &[viewer_id]).await;
    let lost_group = create_group(&db.pool, tenant, &[lost], &[viewer_id]).await;
    let mut ws = fanout.connect(&viewer).await;
    subscribe(
        &mut ws,
        json!({"type": "subscribe", "all": true, "events": ["alarm"]}),
    )
    .await;
    let mut t = T;
    let mut round = async |fanout: &mut Running, ws: &mut Ws| {
        t += 10_000;
        let events = [kept, lost].map(|d| event(tenant, d, EventType::Alarm, t));
        publish_batch(fanout, tenant, vec![], events.into()).await;
        fanout
            .publish(tenant, vec![live(marker, t + 1, 1.0, 1.0)])
            .await;
        summary(&frames_until(ws, marker).await)
    };
    assert_eq!(
        round(&mut fanout, &mut ws).await,
        [row("event", kept, "alarm"), row("event", lost, "alarm")]
    );

    sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
        .bind(lost_group)
        .bind(viewer_id)
        .execute(&db.pool)
        .await
        .unwrap();
    recv_type(&mut ws, "access_changed", Duration::from_secs(5)).await;
    assert_eq!(
        round(&mut fanout, &mut ws).await,
        [row("event", kept, "alarm")],
        "the re-check applies to events as to fixes"
    );
    fanout.stop().await;
}
