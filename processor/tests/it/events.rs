//! Events through the real pipeline (issue 16): a device crossing a fence raises
//! `device_online`, `geofence_enter`, `geofence_exit` in the batch's transaction, with one
//! webhook delivery per matching webhook, live in the same Redis message as the fixes after the
//! commit, and on the events topic; redelivered and late fixes are stored but raise nothing;
//! the offline timer raises `device_offline` and the next fix brings the device back online;
//! a SIGKILL mid-stream loses and doubles no event; `replay --rebuild-events` rebuilds the live
//! events identically; every write path (direct COPY, staged COPY, unnest, status only) writes
//! the events in its transaction; a new fence takes effect within the refresh period.

use crate::support::*;
use gps_domain::events::{DeviceEventState, DeviceProfile, Event, EventRules, Fence, FenceIndex};
use gps_domain::fix::{now_millis, EpochMillis, Fix, Protocol};
use gps_domain::FixEnvelope;
use gps_runtime::config::KafkaArgs;
use gps_runtime::testing::{kafka_topics, seed_device, unique_suffix, TestDb};
use gps_store::events::{events_of_tenant, StoredEvent};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use uuid::Uuid;

/// A fence of about 680 m x 1.1 km: lon 13.00..13.01, lat 52.00..52.01.
fn square() -> serde_json::Value {
    json!({"type": "Polygon", "coordinates": [[[13.0, 52.0], [13.01, 52.0], [13.01, 52.01], [13.0, 52.01], [13.0, 52.0]]]})
}

async fn insert_fence(pool: &PgPool, tenant: Uuid) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO geofences (tenant_id, name, geometry, bbox_min_lon, bbox_min_lat,
             bbox_max_lon, bbox_max_lat)
         VALUES ($1, 'yard', $2, 13.0, 52.0, 13.01, 52.01) RETURNING id",
    )
    .bind(tenant)
    .bind(square())
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn insert_webhook(pool: &PgPool, tenant: Uuid, types: &[&str]) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO webhooks (tenant_id, url, event_types, secret)
         VALUES ($1, 'https://example.com/hook', $2, 'sixteen-chars-secret') RETURNING id",
    )
    .bind(tenant)
    .bind(types.iter().map(|t| t.to_string()).collect::<Vec<_>>())
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A slow fix (1 m/s: no motion, no overspeed) at `t`, `lon`.
fn fix(t: EpochMillis, lon: f64) -> Fix {
    let mut fix = Fix::new(t, 52.005, lon);
    fix.speed_mps = Some(1.0);
    fix
}

fn envelope(tenant: Uuid, device: Uuid, rx: EpochMillis, fixes: Vec<Fix>) -> FixEnvelope {
    FixEnvelope::new(tenant, device, "truck-7", Protocol::Json, rx, fixes)
}

/// Outside the fence (west), inside, outside (east): 680 m every two minutes from `t0`.
/// A track across the fence, each fix received as it was taken (liveness follows reception,
/// so `device_online` is dated with the first fix).
fn crossing(tenant: Uuid, device: Uuid, t0: EpochMillis) -> [FixEnvelope; 3] {
    [(0, 12.995), (120_000, 13.005), (240_000, 13.015)]
        .map(|(dt, lon)| envelope(tenant, device, t0 + dt, vec![fix(t0 + dt, lon)]))
}

async fn events_of(pool: &PgPool, tenant: Uuid) -> Vec<StoredEvent> {
    events_of_tenant(pool, tenant).await.unwrap()
}

fn types(events: &[StoredEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_type.clone()).collect()
}

async fn wait_for_events(pool: &PgPool, tenant: Uuid, count: usize) -> Vec<StoredEvent> {
    wait_until(
        Duration::from_secs(60),
        &format!("{count} events stored"),
        || async { events_of(pool, tenant).await.len() >= count },
    )
    .await;
    events_of(pool, tenant).await
}

async fn deliveries(pool: &PgPool, hook: Uuid) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT event_id FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY event_id",
    )
    .bind(hook)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn state_of(pool: &PgPool, device: Uuid) -> Option<serde_json::Value> {
    sqlx::query_scalar("SELECT state FROM device_event_state WHERE device_id = $1")
        .bind(device)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Read `count` records of the events topic (every partition, from the start).
async fn read_event_topic(kafka: &KafkaArgs, count: usize) -> Vec<(String, Event)> {
    let consumer: StreamConsumer = gps_runtime::kafka::client_config(kafka, "test-events")
        .set("group.id", group())
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..gps_runtime::kafka::EVENTS_PARTITIONS {
        tpl.add_partition_offset(&kafka.events_topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    while records.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events on the topic", records.len()))
            .unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let event: Event = serde_json::from_slice(message.payload().unwrap()).unwrap();
        records.push((key, event));
    }
    records
}

#[tokio::test]
async fn crossing_a_fence_raises_enter_and_exit_once_live_on_the_topic_and_for_webhooks() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let seeded = seed_device(&db.pool, &format!("ev-{}", unique_suffix())).await;
    let (tenant, device) = (seeded.tenant_id, seeded.device_id);
    let fence = insert_fence(&db.pool, tenant).await;
    let every = insert_webhook(&db.pool, tenant, &[]).await;
    let enters = insert_webhook(&db.pool, tenant, &["geofence_enter"]).await;
    let mut pubsub = live_messages(tenant).await;

    let rx = now_millis();
    let t0 = rx - 300_000;
    let track = crossing(tenant, device, t0);
    let producer = producer(&kafka);
    produce(&producer, &kafka.fixes_topic, &track).await;
    let running = Running::start(config(&db, &kafka, &group())).await;
    let events = wait_for_events(&db.pool, tenant, 3).await;
    assert_eq!(
        types(&events),
        ["device_online", "geofence_enter", "geofence_exit"]
    );
    let times: Vec<i64> = events
        .iter()
        .map(|e| e.fix_time.timestamp_millis())
        .collect();
    assert_eq!(times, [t0, t0 + 120_000, t0 + 240_000]);
    assert_eq!(events[1].geofence_id, Some(fence));
    assert_eq!(events[2].geofence_id, Some(fence));
    assert_eq!((events[1].lat, events[1].lon), (Some(52.005), Some(13.005)));
    let ids: BTreeSet<Uuid> = events.iter().map(|e| e.id).collect();

    // One delivery per matching enabled webhook, queued with the events.
    assert_eq!(
        deliveries(&db.pool, every)
            .await
            .into_iter()
            .collect::<BTreeSet<_>>(),
        ids
    );
    assert_eq!(deliveries(&db.pool, enters).await, vec![events[1].id]);

    // Live: each event in the same message as the fix that raised it (events after fixes).
    let mut raised = 0;
    let batches = live_until(&mut pubsub, |batch| {
        raised += batch.events.len();
        raised >= 3
    })
    .await;
    let mut live = Vec::new();
    for batch in batches {
        for event in &batch.events {
            assert!(
                batch
                    .fixes
                    .iter()
                    .any(|f| f.device == event.event.device_id
                        && f.fix.fix_time == event.event.fix_time),
                "an event travels with the fix that raised it"
            );
            assert_eq!(event.uid, "truck-7");
        }
        live.extend(batch.events);
    }
    let live_ids: BTreeSet<Uuid> = live.iter().map(|e| e.event.id).collect();
    assert_eq!(live_ids, ids);

    // The events topic: keyed by device, the event as JSON.
    let topic = read_event_topic(&kafka, 3).await;
    assert!(topic.iter().all(|(key, _)| *key == device.to_string()));
    assert_eq!(
        topic.iter().map(|(_, e)| e.id).collect::<BTreeSet<_>>(),
        ids
    );
    assert_eq!(
        running
            .metric("gps_processor_events_total{type=\"geofence_enter\"}")
            .await,
        1.0
    );

    // A redelivery of the whole track, and a late fix deep inside the fence at a speed over
    // any limit: both stored as history, neither raises anything or moves the state.
    let state_before = state_of(&db.pool, device).await.unwrap();
    let mut late = fix(t0 + 60_000, 13.005);
    late.speed_mps = Some(60.0);
    let marker = Uuid::new_v4();
    let mut again = track.to_vec();
    again.push(envelope(tenant, device, rx, vec![late]));
    again.push(envelope(tenant, marker, rx, vec![fix(t0, 12.0)]));
    produce(&producer, &kafka.fixes_topic, &again).await;
    // The late fix and the marker (another device, maybe another partition) are stored.
    wait_until(
        Duration::from_secs(60),
        "the late fix is stored",
        || async { count_positions(&db.pool).await >= 5 },
    )
    .await;
    wait_until(Duration::from_secs(60), "the marker is stored", || async {
        state_of(&db.pool, marker).await.is_some()
    })
    .await;
    assert_eq!(
        count_positions(&db.pool).await,
        5,
        "the late fix is history"
    );
    assert_eq!(
        events_of(&db.pool, tenant).await.len(),
        4,
        "the marker's online only"
    );
    assert_eq!(state_of(&db.pool, device).await.unwrap(), state_before);
    assert_eq!(deliveries(&db.pool, every).await.len(), 4);
    running.stop().await;
}

#[tokio::test]
async fn the_offline_timer_raises_device_offline_and_the_next_fix_brings_it_back() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let seeded = seed_device(&db.pool, &format!("ev-{}", unique_suffix())).await;
    let (tenant, device) = (seeded.tenant_id, seeded.device_id);
    let hook = insert_webhook(&db.pool, tenant, &["device_offline"]).await;
    let mut config = config(&db, &kafka, &group());
    config.events.rules = EventRules {
        offline_after_ms: 5_000,
        ..EventRules::default()
    };
    config.events.offline_check_ms = 200;
    let running = Running::start(config).await;
    let producer = producer(&kafka);
    let rx = now_millis();
    let first = rx - 20_000;
    produce(
        &producer,
        &kafka.fixes_topic,
        &[envelope(tenant, device, first, vec![fix(first, 12.9)])],
    )
    .await;
    let events = wait_for_events(&db.pool, tenant, 2).await;
    assert_eq!(types(&events), ["device_online", "device_offline"]);
    assert_eq!(
        events[1].fix_time.timestamp_millis(),
        first + 5_000,
        "last seen + timeout"
    );
    assert_eq!(events[1].details["last_seen"], json!(first));
    assert_eq!(deliveries(&db.pool, hook).await, vec![events[1].id]);
    let online: bool =
        sqlx::query_scalar("SELECT online FROM device_event_state WHERE device_id = $1")
            .bind(device)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!online);

    // The batch path cached the device online; the timer's write must win over that cache:
    // the next fix raises `device_online` again (and not the same offline twice).
    let back = now_millis();
    produce(
        &producer,
        &kafka.fixes_topic,
        &[envelope(
            tenant,
            device,
            back,
            vec![fix(back - 1_000, 12.9)],
        )],
    )
    .await;
    let events = wait_for_events(&db.pool, tenant, 3).await;
    assert_eq!(
        types(&events)[..3],
        ["device_online", "device_offline", "device_online"]
    );
    assert_eq!(
        events[2].fix_time.timestamp_millis(),
        back,
        "online is dated when the report was received"
    );
    running.stop().await;
}

/// The events the pure engine raises for `envelopes` (in log order) with `fences`: what the
/// processor must store, whatever it went through.
fn expected_events(envelopes: &[FixEnvelope], fences: &FenceIndex) -> BTreeMap<Uuid, Event> {
    let mut states: BTreeMap<Uuid, DeviceEventState> = BTreeMap::new();
    let mut events = BTreeMap::new();
    for envelope in envelopes {
        let state = states
            .entry(envelope.device)
            .or_insert_with(|| DeviceEventState::new(envelope.tenant, envelope.device));
        let mut fixes = envelope.fixes.clone();
        fixes.sort_by_key(|f| f.fix_time);
        for fix in &fixes {
            for event in state.apply_received(
                fix,
                envelope.rx,
                fences,
                &DeviceProfile::default(),
                &EventRules::default(),
            ) {
                events.insert(event.id, event);
            }
        }
    }
    events
}

#[tokio::test]
async fn sigkill_mid_stream_loses_and_doubles_no_event_and_replay_rebuilds_them() {
    let db = TestDb::new().await;
    let kafka = kafka_topics().await;
    let group = group();
    let seeded = seed_device(&db.pool, &format!("ev-{}", unique_suffix())).await;
    let tenant = seeded.tenant_id;
    let fence = insert_fence(&db.pool, tenant).await;
    let index = FenceIndex::new(vec![Fence::new(
        fence,
        &square(),
        None,
        Vec::new(),
        None,
        None,
    )
    .unwrap()]);
    let devices: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let rx = now_millis();
    // Recent enough that no device is overdue while the test runs.
    let base = rx - 300_000;
    // 20 devices x 30 envelopes x 5 fixes, each device walking east and west across the fence
    // (in and out twice every 50 fixes).
    let mut envelopes = Vec::new();
    for round in 0..30i64 {
        for (d, device) in devices.iter().enumerate() {
            let fixes: Vec<Fix> = (0..5i64)
                .map(|i| {
                    let n = round * 5 + i;
                    let phase = (n % 50) as f64;
                    let lon = if phase < 25.0 {
                        12.99 + phase * 0.001
                    } else {
                        13.04 - phase * 0.001
                    };
                    let mut f = Fix::new(base + n * 1_000, 52.001 + d as f64 * 0.0004, lon);
                    f.speed_mps = Some(1.0);
                    f
                })
                .collect();
            envelopes.push(envelope(tenant, *device, rx, fixes));
        }
    }
    let expected = expected_events(&envelopes, &index);
    assert!(expected.len() > 200, "the track crosses the fence often");
    let producer = producer(&kafka);
    let (head, tail) = envelopes.split_at(envelopes.len() / 3);
    // In order, one acknowledged record at a time: each device's records stay in log order.
    produce(&producer, &kafka.fixes_topic, head).await;
    let no_timer = [("PROCESSOR_OFFLINE_CHECK_MS", "3600000")];
    let mut first = Process::spawn(&db, &kafka, &group, &no_timer);
    let tail = tail.to_vec();
    let topic = kafka.fixes_topic.clone();
    let feeder = tokio::spawn(async move {
        produce(&producer, &topic, &tail).await;
    });
    wait_until(Duration::from_secs(120), "some events stored", || async {
        events_of(&db.pool, tenant).await.len() >= 60
    })
    .await;
    first.kill();
    let at_kill = events_of(&db.pool, tenant).await.len();
    feeder.await.unwrap();
    assert!(
        at_kill < expected.len(),
        "the kill came after everything; proves nothing"
    );

    let second = Process::spawn(&db, &kafka, &group, &no_timer);
    wait_until(Duration::from_secs(180), "every event stored", || async {
        events_of(&db.pool, tenant).await.len() >= expected.len()
    })
    .await;
    let want = envelopes.iter().map(|e| e.fixes.len() as i64).sum::<i64>();
    wait_until(Duration::from_secs(60), "every fix stored", || async {
        count_positions(&db.pool).await >= want
    })
    .await;
    drop(second);
    let live = events_of(&db.pool, tenant).await;
    let stored_ids: BTreeSet<Uuid> = live.iter().map(|e| e.id).collect();
    assert_eq!(stored_ids.len(), live.len());
    let missing: Vec<&Event> = expected
        .values()
        .filter(|e| !stored_ids.contains(&e.id))
        .collect();
    let extra: Vec<&StoredEvent> = live
        .iter()
        .filter(|e| !expected.contains_key(&e.id))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} lost, {} extra of {}: {:?} {:?}",
        missing.len(),
        extra.len(),
        expected.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        extra.iter().take(3).collect::<Vec<_>>()
    );
    for event in &live {
        let want = &expected[&event.id];
        assert_eq!(event.fix_time.timestamp_millis(), want.fix_time);
        assert_eq!(event.geofence_id, want.geofence_id);
    }

    // Replay: without a rebuild nothing changes (the stored states are at the end of the log);
    // after losing events and damaging a state, a rebuild gives back the live rows exactly.
    let config = config(&db, &kafka, &crate::support::group());
    replay_all(&config).await;
    assert_eq!(events_of(&db.pool, tenant).await, live);
    sqlx::query("DELETE FROM events WHERE tenant_id = $1 AND type = 'geofence_exit'")
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE device_event_state SET state = jsonb_set(state, '{inside}', '[]') WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
    let rebuild = processor::ReplayArgs {
        start: processor::ReplayStart {
            from_beginning: true,
            from_time: None,
        },
        rebuild_events: true,
    };
    processor::replay::replay(&config, &rebuild, false)
        .await
        .unwrap();
    assert_eq!(
        events_of(&db.pool, tenant).await,
        live,
        "replay equals live"
    );
}

/// One record of `envelope` at `offset`.
fn record(offset: i64, envelope: FixEnvelope) -> processor::plan::InRecord {
    processor::plan::InRecord {
        partition: 0,
        offset,
        body: Ok(envelope),
    }
}

#[tokio::test]
async fn every_write_path_writes_the_events_in_the_batchs_transaction() {
    for mode in [processor::WriteMode::Copy, processor::WriteMode::Unnest] {
        let db = TestDb::new().await;
        let seeded = seed_device(&db.pool, &format!("ev-{}", unique_suffix())).await;
        let (tenant, device) = (seeded.tenant_id, seeded.device_id);
        insert_fence(&db.pool, tenant).await;
        let mut config = config(&db, &KafkaArgs::local(), &group());
        config.batch.write_mode = mode;
        let storage = gps_runtime::db::storage_mode(&db.pool).await.unwrap();
        let metrics = processor::metrics::Metrics::new(&prometheus::Registry::new());
        let pipeline = |metrics: &processor::metrics::Metrics| {
            processor::pipeline::Pipeline::from_config(
                &config,
                db.pool.clone(),
                storage,
                None,
                metrics.clone(),
            )
        };
        let rx = now_millis();
        let t0 = rx - 300_000;
        let track = crossing(tenant, device, t0);
        let event_types = |outcome: &processor::plan::BatchOutcome| -> Vec<&'static str> {
            outcome
                .events
                .iter()
                .map(|e| e.event.event_type.as_str())
                .collect()
        };

        let mut first = pipeline(&metrics);
        let outcome = first
            .process(&[record(0, track[0].clone()), record(1, track[1].clone())])
            .await
            .unwrap();
        assert_eq!(
            event_types(&outcome),
            ["device_online", "geofence_enter"],
            "{mode:?}"
        );

        // A restart (empty caches) reads the batch again with one more record: the direct COPY
        // meets stored rows and the batch goes through staging; only the exit is new.
        let mut restarted = pipeline(&metrics);
        let outcome = restarted
            .process(&[
                record(0, track[0].clone()),
                record(1, track[1].clone()),
                record(2, track[2].clone()),
            ])
            .await
            .unwrap();
        assert_eq!(event_types(&outcome), ["geofence_exit"], "{mode:?}");
        if mode == processor::WriteMode::Copy {
            assert_eq!(
                metrics.direct_copy_conflicts.get(),
                1,
                "the staged path ran"
            );
        }

        // A batch of one status report (no fix): the alarm, in its own transaction.
        let mut sos = gps_domain::DeviceStatus::new(t0 + 250_000);
        sos.alarm = Some("sos".into());
        let status_only = envelope(tenant, device, rx, Vec::new()).with_status(sos);
        let outcome = restarted.process(&[record(3, status_only)]).await.unwrap();
        assert_eq!(event_types(&outcome), ["alarm"], "{mode:?}");
        assert_eq!(outcome.events[0].uid, "truck-7");
        let stored = events_of(&db.pool, tenant).await;
        assert_eq!(
            types(&stored),
            ["device_online", "geofence_enter", "geofence_exit", "alarm"],
            "{mode:?}"
        );
        let state = state_of(&db.pool, device).await.unwrap();
        assert_eq!(state["last_status_time"], json!(t0 + 250_000));
    }
}

#[tokio::test]
async fn a_new_fence_takes_effect_within_the_refresh_period() {
    let db = TestDb::new().await;
    let seeded = seed_device(&db.pool, &format!("ev-{}", unique_suffix())).await;
    let (tenant, device) = (seeded.tenant_id, seeded.device_id);
    let mut config = config(&db, &KafkaArgs::local(), &group());
    config.events.fence_refresh_ms = 1_500;
    let storage = gps_runtime::db::storage_mode(&db.pool).await.unwrap();
    let metrics = processor::metrics::Metrics::new(&prometheus::Registry::new());
    let mut pipeline = processor::pipeline::Pipeline::from_config(
        &config,
        db.pool.clone(),
        storage,
        None,
        metrics,
    );
    // The service's background refresh (`processor::run` starts it the same way).
    let stop = gps_runtime::service::CancellationToken::new();
    let refresher = tokio::spawn(processor::fences::refresher(
        pipeline.events_mut().fence_cache(),
        db.pool.clone(),
        config.events.fence_refresh(),
        stop.clone(),
    ));
    let rx = now_millis();
    let t0 = rx - 300_000;
    let inside = |n: i64| envelope(tenant, device, rx, vec![fix(t0 + n * 60_000, 13.005)]);
    let outcome = pipeline.process(&[record(0, inside(0))]).await.unwrap();
    assert_eq!(outcome.events.len(), 1, "online; no fence yet");
    // The fence appears; the cached (empty) fence set still holds until the refresh.
    let fence = insert_fence(&db.pool, tenant).await;
    let outcome = pipeline.process(&[record(1, inside(1))]).await.unwrap();
    assert!(outcome.events.is_empty(), "cached for the refresh period");
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let outcome = pipeline.process(&[record(2, inside(2))]).await.unwrap();
    let entered: Vec<(&str, Option<Uuid>)> = outcome
        .events
        .iter()
        .map(|e| (e.event.event_type.as_str(), e.event.geofence_id))
        .collect();
    assert_eq!(entered, [("geofence_enter", Some(fence))]);
    stop.cancel();
    refresher.await.unwrap();
}

#[tokio::test]
async fn the_fence_cache_reloads_only_changed_tenants_and_drops_emptied_ones() {
    use processor::fences::{FenceCache, Refreshed};
    let db = TestDb::new().await;
    let a = seed_device(&db.pool, &format!("ev-{}", unique_suffix()))
        .await
        .tenant_id;
    let b = seed_device(&db.pool, &format!("ev-{}", unique_suffix()))
        .await
        .tenant_id;
    let cache = FenceCache::default();
    let refresh = || async { cache.refresh(&db.pool).await.unwrap() };
    assert_eq!(refresh().await, Refreshed::default());
    assert!(cache.get(a).is_none());

    let fence_a = insert_fence(&db.pool, a).await;
    insert_fence(&db.pool, b).await;
    let both = refresh().await;
    assert_eq!((both.loaded, both.dropped, both.fences), (2, 0, 2));
    assert_eq!(cache.get(a).unwrap().len(), 1);
    assert_eq!(
        refresh().await.loaded,
        0,
        "nothing changed, nothing read again"
    );

    // An edit reloads that tenant alone; deleting its last fence drops it.
    sqlx::query("UPDATE geofences SET name = 'yard 2', updated_at = now() + interval '1 second' WHERE id = $1")
        .bind(fence_a)
        .execute(&db.pool)
        .await
        .unwrap();
    let edited = refresh().await;
    assert_eq!((edited.loaded, edited.dropped), (1, 0));
    sqlx::query("DELETE FROM geofences WHERE id = $1")
        .bind(fence_a)
        .execute(&db.pool)
        .await
        .unwrap();
    let deleted = refresh().await;
    assert_eq!((deleted.loaded, deleted.dropped, deleted.fences), (0, 1, 1));
    assert!(cache.get(a).is_none());
    assert_eq!(cache.get(b).unwrap().len(), 1);
}
