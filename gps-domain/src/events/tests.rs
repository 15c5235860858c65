//! The rules of [`super`] on hand-made tracks, and property tests: replay from a persisted state
//! gives identical events, enter and exit alternate, jitter inside the band raises nothing, late
//! fixes change nothing.

use super::*;
use proptest::prelude::*;

const TENANT: Uuid = Uuid::from_u128(1);
const DEVICE: Uuid = Uuid::from_u128(2);
/// Metres per degree of latitude.
const M: f64 = 111_195.08;

fn fence_of(id: u128, geometry: Value, radius_m: Option<f64>) -> Fence {
    Fence {
        id: Uuid::from_u128(id),
        shape: FenceShape::from_geojson(&geometry, radius_m).unwrap(),
        groups: Vec::new(),
        speed_limit_mps: None,
        schedule: None,
    }
}

/// A square of `side` degrees with its south-west corner at (lat, lon).
fn square(id: u128, lat: f64, lon: f64, side: f64) -> Fence {
    fence_of(
        id,
        json!({ "type": "Polygon", "coordinates": [[
            [lon, lat], [lon + side, lat], [lon + side, lat + side], [lon, lat + side], [lon, lat]
        ]]}),
        None,
    )
}

/// The Berlin test fence: 52.00..52.01 N, 13.00..13.01 E (~1.1 km by ~0.7 km).
fn berlin() -> FenceIndex {
    FenceIndex::new(vec![square(10, 52.0, 13.0, 0.01)])
}

fn fix(t_s: i64, lat: f64, lon: f64, speed: Option<f64>) -> Fix {
    let mut f = Fix::new(t_s * 1000, lat, lon);
    f.speed_mps = speed;
    f
}

fn state() -> DeviceEventState {
    DeviceEventState::new(TENANT, DEVICE)
}

fn run(state: &mut DeviceEventState, fences: &FenceIndex, fixes: &[Fix]) -> Vec<Event> {
    let rules = EventRules::default();
    fixes
        .iter()
        .flat_map(|f| state.apply(f, fences, &DeviceProfile::default(), &rules))
        .collect()
}

fn types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

#[test]
fn entering_and_leaving_across_an_edge_beyond_the_band() {
    let fences = berlin();
    let mut s = state();
    // Northwards along 13.005 E, 2 m per step from 20 m south of the south edge to 20 m
    // north of the north edge... in steps of 4 m to keep it short.
    let track: Vec<Fix> = (0..)
        .map(|i| 52.0 - 20.0 / M + i as f64 * 4.0 / M)
        .take_while(|lat| *lat < 52.01 + 20.0 / M)
        .enumerate()
        .map(|(i, lat)| fix(i as i64, lat, 13.005, Some(0.0)))
        .collect();
    let events = run(&mut s, &fences, &track);
    assert_eq!(
        types(&events),
        ["device_online", "geofence_enter", "geofence_exit"]
    );
    let enter = &events[1];
    assert_eq!(enter.geofence_id, Some(Uuid::from_u128(10)));
    let depth = (enter.lat.unwrap() - 52.0) * M;
    assert!((10.0..14.0).contains(&depth), "entered {depth} m inside");
    let exit = &events[2];
    let beyond = (exit.lat.unwrap() - 52.01) * M;
    assert!((10.0..14.0).contains(&beyond), "left {beyond} m outside");
    assert!(s.inside.is_empty());
}

#[test]
fn entering_and_leaving_through_a_vertex() {
    let fences = berlin();
    let mut s = state();
    // Diagonally through the south-west corner (13.0, 52.0), in and back out.
    let step = 3.0 / M;
    let inward: Vec<(f64, f64)> = (-10..=10)
        .map(|i| (52.0 + i as f64 * step, 13.0 + i as f64 * step))
        .collect();
    let track: Vec<Fix> = inward
        .iter()
        .chain(inward.iter().rev())
        .enumerate()
        .map(|(i, (lat, lon))| fix(i as i64, *lat, *lon, Some(0.0)))
        .collect();
    let events = run(&mut s, &fences, &track);
    assert_eq!(
        types(&events),
        ["device_online", "geofence_enter", "geofence_exit"]
    );
}

#[test]
fn a_fence_over_the_antimeridian_is_entered_and_left() {
    let fences = FenceIndex::new(vec![fence_of(
        20,
        json!({ "type": "Polygon", "coordinates": [[
            [170.0, -10.0], [-170.0, -10.0], [-170.0, 10.0], [170.0, 10.0], [170.0, -10.0]
        ]]}),
        None,
    )]);
    let mut s = state();
    // Eastwards along the equator from 169.5 E to 169.5 W, one degree at a time.
    let track: Vec<Fix> = (0..22)
        .map(|i| {
            let lon = 169.5 + i as f64;
            let lon = if lon > 180.0 { lon - 360.0 } else { lon };
            fix(i, 0.0, lon, Some(0.0))
        })
        .collect();
    let events = run(&mut s, &fences, &track);
    assert_eq!(
        types(&events),
        ["device_online", "geofence_enter", "geofence_exit"]
    );
    assert_eq!(events[1].lon, Some(170.5));
    assert_eq!(events[2].lon, Some(-169.5));
}

#[test]
fn jitter_on_the_boundary_raises_nothing_but_crossing_the_band_does() {
    let fences = berlin();
    let mut s = state();
    let around_edge: Vec<Fix> = (0..200)
        .map(|i| {
            let offset_m = [-9.0, 9.0, -3.0, 5.0, 0.0][i % 5];
            fix(i as i64, 52.0 + offset_m / M, 13.005, Some(0.0))
        })
        .collect();
    assert_eq!(
        types(&run(&mut s, &fences, &around_edge)),
        ["device_online"]
    );
    let deeper = fix(300, 52.0 + 11.0 / M, 13.005, Some(0.0));
    assert_eq!(types(&run(&mut s, &fences, &[deeper])), ["geofence_enter"]);
}

#[test]
fn late_and_duplicate_fixes_raise_nothing_and_change_nothing() {
    let fences = berlin();
    let mut s = state();
    run(&mut s, &fences, &[fix(100, 51.9, 13.005, Some(0.0))]);
    let before = s.clone();
    // Deep inside, fast: would enter, overspeed and start moving, but it is older.
    let late = fix(50, 52.005, 13.005, Some(50.0));
    let duplicate = fix(100, 52.005, 13.005, Some(50.0));
    let rules = EventRules::default();
    let profile = DeviceProfile {
        groups: &[],
        speed_limit_mps: Some(10.0),
    };
    assert!(s.apply(&late, &fences, &profile, &rules).is_empty());
    assert!(s.apply(&duplicate, &fences, &profile, &rules).is_empty());
    assert_eq!(s, before);
    let newer = fix(101, 52.005, 13.005, Some(50.0));
    assert_eq!(
        types(&s.apply(&newer, &fences, &profile, &rules)),
        ["geofence_enter", "overspeed", "motion_start"]
    );
}

#[test]
fn overspeed_has_hysteresis_below_the_limit() {
    let fences = FenceIndex::default();
    let mut s = state();
    let rules = EventRules::default();
    let profile = DeviceProfile {
        groups: &[],
        speed_limit_mps: Some(15.0),
    };
    let speeds = [14.0, 16.0, 15.5, 14.5, 16.0, 13.9, 16.0];
    let events: Vec<Event> = speeds
        .iter()
        .enumerate()
        .flat_map(|(i, v)| {
            s.apply(
                &fix(i as i64, 1.0, 1.0, Some(*v)),
                &fences,
                &profile,
                &rules,
            )
        })
        .filter(|e| e.event_type == EventType::Overspeed)
        .collect();
    let at: Vec<i64> = events.iter().map(|e| e.fix_time / 1000).collect();
    assert_eq!(
        at,
        [1, 6],
        "16 at 1, still over until 13.9 < 15 - 1 at 5, again at 6"
    );
    assert_eq!(events[0].details["limit_mps"], 15.0);
    assert_eq!(events[0].details["speed_mps"], 16.0);
}

#[test]
fn a_fence_limit_below_the_device_limit_wins_inside_it() {
    let mut zone = square(30, 52.0, 13.0, 0.01);
    zone.speed_limit_mps = Some(8.0);
    let fences = FenceIndex::new(vec![zone]);
    let mut s = state();
    let rules = EventRules::default();
    let profile = DeviceProfile {
        groups: &[],
        speed_limit_mps: Some(30.0),
    };
    let outside = fix(0, 51.99, 13.005, Some(10.0));
    let inside = fix(1, 52.005, 13.005, Some(10.0));
    assert!(!types(&s.apply(&outside, &fences, &profile, &rules)).contains(&"overspeed"));
    let events = s.apply(&inside, &fences, &profile, &rules);
    let over = events
        .iter()
        .find(|e| e.event_type == EventType::Overspeed)
        .expect("overspeed inside the zone");
    assert_eq!(over.geofence_id, Some(Uuid::from_u128(30)));
    assert_eq!(over.details["limit_mps"], 8.0);
}

#[test]
fn motion_starts_at_speed_and_stops_after_the_still_time() {
    let fences = FenceIndex::default();
    let mut s = state();
    let mut track = vec![fix(0, 1.0, 1.0, Some(0.0)), fix(1, 1.0, 1.0, Some(3.0))];
    // Slow for 130 s, one fix every 10 s, with one brief 1 m/s blip (above stop speed) at 30 s.
    for i in 1..=16 {
        let speed = if i == 3 { 1.0 } else { 0.2 };
        track.push(fix(1 + i * 10, 1.0, 1.0, Some(speed)));
    }
    let events = run(&mut s, &fences, &track);
    let motion: Vec<(&str, i64)> = events
        .iter()
        .filter(|e| e.event_type != EventType::DeviceOnline)
        .map(|e| (e.event_type.as_str(), e.fix_time / 1000))
        .collect();
    // Still since 41 s (after the blip), for 120 s at 161 s.
    assert_eq!(motion, [("motion_start", 1), ("motion_stop", 161)]);
    assert_eq!(events.last().unwrap().details["still_since"], 41_000);
}

#[test]
fn motion_without_a_speed_uses_the_distance_travelled() {
    let fences = FenceIndex::default();
    let mut s = state();
    let track = [fix(0, 1.0, 1.0, None), fix(10, 1.0 + 50.0 / M, 1.0, None)];
    assert_eq!(
        types(&run(&mut s, &fences, &track)),
        ["device_online", "motion_start"]
    );
}

#[test]
fn the_offline_timer_and_a_later_fix_raise_the_same_event() {
    let fences = FenceIndex::default();
    let rules = EventRules::default();
    let first = [fix(0, 1.0, 1.0, Some(0.0)), fix(10, 1.0, 1.0, Some(0.0))];
    let back = fix(2_000, 1.0, 1.0, Some(0.0));

    let mut live = state();
    run(&mut live, &fences, &first);
    assert_eq!(
        live.check_offline(600_000, rules.offline_after_ms),
        None,
        "not yet"
    );
    let offline = live
        .check_offline(700_000, rules.offline_after_ms)
        .expect("offline after 10 min");
    assert_eq!(offline.fix_time, 610_000, "dated last seen + timeout");
    assert_eq!(
        live.check_offline(800_000, rules.offline_after_ms),
        None,
        "once"
    );
    let live_back = run(&mut live, &fences, std::slice::from_ref(&back));
    assert_eq!(types(&live_back), ["device_online"]);

    let mut replayed = state();
    run(&mut replayed, &fences, &first);
    let replay_back = run(&mut replayed, &fences, &[back]);
    assert_eq!(types(&replay_back), ["device_offline", "device_online"]);
    assert_eq!(replay_back[0], offline, "same id, time and details");
    assert_eq!(replay_back[1], live_back[0]);
    assert_eq!(live, replayed);
}

#[test]
fn liveness_follows_reception_not_the_device_clock() {
    let fences = FenceIndex::default();
    let rules = EventRules::default();
    let profile = DeviceProfile::default();
    let now: EpochMillis = 1_800_000_000_000;
    let two_hours = 7_200_000;
    // A device whose clock is two hours behind reports every 10 s: online once, and the timer
    // never calls it offline while it keeps sending.
    let mut clock_behind = state();
    let mut raised = Vec::new();
    for i in 0..5 {
        let rx = now + i * 10_000;
        let f = Fix::new(rx - two_hours, 1.0, 1.0);
        raised.extend(clock_behind.apply_received(&f, rx, &fences, &profile, &rules));
        assert_eq!(
            clock_behind.check_offline(rx + 1_000, rules.offline_after_ms),
            None
        );
    }
    assert_eq!(types(&raised), ["device_online"]);
    assert_eq!(raised[0].fix_time, now, "dated when received");

    // A buffer of old fixes uploaded after 20 min of silence: the missed offline, then online,
    // even though the fixes' own times have no gap.
    let mut buffered = state();
    let first = Fix::new(now, 1.0, 1.0);
    buffered.apply_received(&first, now, &fences, &profile, &rules);
    let upload = now + 1_200_000;
    let old = Fix::new(now + 5_000, 1.0, 1.0);
    let back = buffered.apply_received(&old, upload, &fences, &profile, &rules);
    assert_eq!(types(&back), ["device_offline", "device_online"]);
    assert_eq!(back[0].fix_time, now + rules.offline_after_ms);
    // A late fix (before the last applied one) changes nothing, whenever it arrives; a
    // redelivered one neither.
    let before = buffered.clone();
    let late = Fix::new(now - 1_000, 1.0, 1.0);
    assert!(buffered
        .apply_received(&late, upload + 1_200_000, &fences, &profile, &rules)
        .is_empty());
    assert!(buffered
        .apply_received(&old, upload, &fences, &profile, &rules)
        .is_empty());
    assert_eq!(buffered, before);
}

#[test]
fn alarms_come_from_status_reports_once() {
    let fences = FenceIndex::default();
    let rules = EventRules::default();
    let mut s = state();
    run(&mut s, &fences, &[fix(0, 1.0, 2.0, Some(0.0))]);
    let mut status = DeviceStatus::new(5_000);
    status.alarm = Some("sos".into());
    let events = s.apply_status(&status, &rules);
    assert_eq!(types(&events), ["alarm"]);
    assert_eq!(events[0].details["alarm"], "sos");
    assert_eq!((events[0].lat, events[0].lon), (Some(1.0), Some(2.0)));
    assert!(s.apply_status(&status, &rules).is_empty(), "redelivered");
    let heartbeat = DeviceStatus::new(6_000);
    assert!(s.apply_status(&heartbeat, &rules).is_empty());
}

#[test]
fn invalid_fixes_only_prove_the_device_alive() {
    let fences = berlin();
    let mut s = state();
    let mut invalid = fix(0, 52.005, 13.005, Some(50.0));
    invalid.valid = false;
    let profile = DeviceProfile {
        groups: &[],
        speed_limit_mps: Some(10.0),
    };
    let events = s.apply(&invalid, &fences, &profile, &EventRules::default());
    assert_eq!(types(&events), ["device_online"]);
    assert!(s.inside.is_empty() && s.last_fix.is_none() && !s.moving);
}

#[test]
fn group_fences_apply_to_their_groups_and_deleted_fences_are_forgotten() {
    let group = Uuid::from_u128(77);
    let mut restricted = square(40, 52.0, 13.0, 0.01);
    restricted.groups = vec![group];
    let fences = FenceIndex::new(vec![restricted]);
    let rules = EventRules::default();
    let inside = fix(0, 52.005, 13.005, Some(0.0));
    let mut other = state();
    let none = DeviceProfile::default();
    assert_eq!(
        types(&other.apply(&inside, &fences, &none, &rules)),
        ["device_online"]
    );
    let mut member = state();
    let groups = [group];
    let profile = DeviceProfile {
        groups: &groups,
        speed_limit_mps: None,
    };
    assert_eq!(
        types(&member.apply(&inside, &fences, &profile, &rules)),
        ["device_online", "geofence_enter"]
    );
    // The fence is deleted: the next fix leaves no trace of it and raises nothing.
    let later = fix(1, 51.9, 13.005, Some(0.0));
    assert!(member
        .apply(&later, &FenceIndex::default(), &profile, &rules)
        .is_empty());
    assert!(member.inside.is_empty());
}

#[test]
fn a_fence_outside_its_schedule_is_not_evaluated() {
    let mut office = square(50, 52.0, 13.0, 0.01);
    office.schedule = Some(
        Schedule::from_json(&json!({
            "windows": [{ "days": ["mon"], "start": "08:00", "end": "18:00" }]
        }))
        .unwrap(),
    );
    let fences = FenceIndex::new(vec![office]);
    let mut s = state();
    // 2026-11-30 is a Monday: 07:00 UTC is before the window, 09:00 inside it.
    let monday_0700 = 1_796_022_000;
    let events = run(
        &mut s,
        &fences,
        &[fix(monday_0700, 52.005, 13.005, Some(0.0))],
    );
    assert_eq!(types(&events), ["device_online"]);
    let events = run(
        &mut s,
        &fences,
        &[fix(monday_0700 + 7_200, 52.005, 13.005, Some(0.0))],
    );
    assert_eq!(
        types(&events),
        ["device_offline", "device_online", "geofence_enter"],
        "two hours without a report: offline, then back"
    );
}

#[test]
fn event_ids_are_derived_from_what_the_event_is() {
    let fence = Some(Uuid::from_u128(9));
    let a = event_id(DEVICE, EventType::GeofenceEnter, 1_000, fence);
    assert_eq!(a, event_id(DEVICE, EventType::GeofenceEnter, 1_000, fence));
    assert_eq!(a.get_version_num(), 5);
    for other in [
        event_id(DEVICE, EventType::GeofenceExit, 1_000, fence),
        event_id(DEVICE, EventType::GeofenceEnter, 1_001, fence),
        event_id(DEVICE, EventType::GeofenceEnter, 1_000, None),
        event_id(Uuid::from_u128(3), EventType::GeofenceEnter, 1_000, fence),
    ] {
        assert_ne!(a, other);
    }
    for t in EventType::ALL {
        assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
        assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
    }
}

#[test]
fn the_index_finds_fences_near_a_point_only() {
    let fences: Vec<Fence> = (0..100)
        .map(|i| square(1000 + i, -40.0 + i as f64, 10.0, 0.5))
        .chain(std::iter::once(fence_of(
            2000,
            json!({ "type": "Point", "coordinates": [179.999, 0.0] }),
            Some(500.0),
        )))
        .collect();
    let index = FenceIndex::new(fences);
    assert_eq!(index.len(), 101);
    let hits: Vec<Uuid> = index
        .containing(42.25, 10.25)
        .iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(hits, [Uuid::from_u128(1082)]);
    assert!(index.candidates(42.75, 10.25).is_empty());
    let dateline: Vec<Uuid> = index
        .containing(0.0, -179.9995)
        .iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(dateline, [Uuid::from_u128(2000)]);
    assert_eq!(index.candidates(0.0, 180.0).len(), 1, "each fence once");
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// A walk of fixes around the Berlin fence: strictly increasing times, positions within ~300 m
/// of its south edge, optional speeds.
fn walk() -> impl Strategy<Value = Vec<Fix>> {
    prop::collection::vec(
        (
            1i64..400,
            -300.0f64..300.0,
            -100.0f64..800.0,
            prop::option::of(0.0f64..30.0),
        ),
        1..60,
    )
    .prop_map(|steps| {
        let mut t = 0;
        steps
            .into_iter()
            .map(|(dt, north_m, east_m, speed)| {
                t += dt;
                fix(t, 52.0 + north_m / M, 13.0 + east_m / (M * 0.6157), speed)
            })
            .collect()
    })
}

fn events_of(fixes: &[Fix], state: &mut DeviceEventState) -> Vec<Event> {
    let fences = berlin();
    let rules = EventRules::default();
    let profile = DeviceProfile {
        groups: &[],
        speed_limit_mps: Some(20.0),
    };
    fixes
        .iter()
        .flat_map(|f| state.apply(f, &fences, &profile, &rules))
        .collect()
}

proptest! {
    /// Replaying the same fixes from the same state gives identical events, also when the state
    /// was persisted (JSON) and read back anywhere in between.
    #[test]
    fn replay_from_a_persisted_state_is_identical(fixes in walk(), split in 0usize..60) {
        let split = split.min(fixes.len());
        let mut straight = state();
        let all = events_of(&fixes, &mut straight);

        let mut first = state();
        let mut resumed = events_of(&fixes[..split], &mut first);
        let stored = serde_json::to_string(&first).unwrap();
        let mut second: DeviceEventState = serde_json::from_str(&stored).unwrap();
        resumed.extend(events_of(&fixes[split..], &mut second));

        prop_assert_eq!(&all, &resumed);
        prop_assert_eq!(&straight, &second);
        let ids: BTreeSet<Uuid> = all.iter().map(|e| e.id).collect();
        prop_assert_eq!(ids.len(), all.len(), "ids unique");
    }

    /// Per fence, enters and exits alternate, starting with an enter, and the state agrees with
    /// the last one.
    #[test]
    fn enters_and_exits_alternate(fixes in walk()) {
        let mut s = state();
        let events = events_of(&fixes, &mut s);
        let fence: Vec<EventType> = events
            .iter()
            .filter(|e| e.geofence_id.is_some() && e.event_type != EventType::Overspeed)
            .map(|e| e.event_type)
            .collect();
        for (i, t) in fence.iter().enumerate() {
            let expected = if i % 2 == 0 { EventType::GeofenceEnter } else { EventType::GeofenceExit };
            prop_assert_eq!(*t, expected);
        }
        prop_assert_eq!(s.inside.len(), fence.len() % 2);
    }

    /// Jitter within the band around an edge raises no fence event, whichever side the device
    /// was on.
    #[test]
    fn jitter_within_the_band_raises_no_fence_event(
        start_inside in any::<bool>(),
        offsets in prop::collection::vec((-9.9f64..9.9, 100.0f64..600.0), 1..100),
    ) {
        let mut s = state();
        let start = if start_inside { 52.005 } else { 51.99 };
        let mut fixes = vec![fix(0, start, 13.005, Some(0.0))];
        fixes.extend(offsets.iter().enumerate().map(|(i, (north_m, east_m))| {
            fix(1 + i as i64, 52.0 + north_m / M, 13.0 + east_m / (M * 0.6157), Some(0.0))
        }));
        let events = events_of(&fixes, &mut s);
        let fence_events = events.iter().filter(|e| e.geofence_id.is_some()).count();
        prop_assert_eq!(fence_events, usize::from(start_inside), "{:?}", types(&events));
        prop_assert_eq!(s.inside.len(), usize::from(start_inside));
    }

    /// Late fixes change nothing: a track with fixes out of order raises exactly the events of
    /// the same track without the late ones.
    #[test]
    fn late_fixes_change_nothing(fixes in walk(), late in prop::collection::vec((0usize..60, 0i64..100_000), 0..20)) {
        let mut shuffled = fixes.clone();
        for (at, back_ms) in late {
            let at = at.min(shuffled.len());
            if at == 0 { continue; }
            let mut old = shuffled[at - 1].clone();
            old.fix_time -= back_ms;
            old.speed_mps = Some(99.0);
            shuffled.insert(at, old);
        }
        let mut a = state();
        let mut b = state();
        prop_assert_eq!(events_of(&fixes, &mut a), events_of(&shuffled, &mut b));
        prop_assert_eq!(a, b);
    }
}
