//! Fix validation with reason codes (used by the processor), pure and per-tenant configurable.
//!
//! Every time check is made against the envelope's ingest receive time (`rx`), never against
//! the wall clock: a fix is judged by when it reached the platform, so a lagging consumer does
//! not reject old-but-valid data, and `processor replay` reaches the same verdicts months later.
//! Thresholds come from `tenants.settings -> 'validation'` ([`Thresholds::from_settings`]);
//! the keys are documented in `docs/processor.md`.

use crate::fix::{EpochMillis, Fix};
use crate::geo::haversine_m;
use crate::reject::RejectReason;
use serde::Deserialize;

/// One GPS week-number era: 1024 weeks, in ms (about 19.6 years).
pub const GPS_ROLLOVER_MS: i64 = 1024 * 7 * 24 * 3600 * 1000;

/// Earliest fix time accepted whatever the receive time says (2000-01-01T00:00:00Z): guards
/// storage against a nonsensical `rx`.
pub const MIN_FIX_TIME: EpochMillis = 946_684_800_000;
/// Latest fix time accepted whatever the receive time says (2200-01-01T00:00:00Z).
pub const MAX_FIX_TIME: EpochMillis = 7_258_118_400_000;

/// Per-tenant validation thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// How far after `rx` a fix time may lie (device clock skew), ms.
    pub max_future_ms: i64,
    /// How far before `rx` a fix time may lie (devices buffer while offline), ms.
    pub max_past_ms: i64,
    /// Worst accepted horizontal accuracy, metres.
    pub max_accuracy_m: f64,
    /// Fastest accepted implied speed between consecutive fixes, m/s.
    pub max_speed_mps: f64,
    /// Half-width of the window around each 1024-week multiple treated as a rollover, ms.
    pub rollover_window_ms: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_future_ms: 10 * 60 * 1000,
            max_past_ms: 30 * 24 * 3600 * 1000,
            max_accuracy_m: 1_000.0,
            // Faster than any airliner's ground speed; catches teleports, not aircraft.
            max_speed_mps: 350.0,
            rollover_window_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// The keys of `tenants.settings -> 'validation'`; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidationSettings {
    max_future_secs: Option<f64>,
    max_past_days: Option<f64>,
    max_accuracy_m: Option<f64>,
    max_speed_kmh: Option<f64>,
}

impl Thresholds {
    /// Thresholds from a tenant's `settings` JSON (the whole object), falling back to the
    /// default for every missing or unusable key. The second value lists what was unusable, so
    /// the caller can log it once.
    pub fn from_settings(settings: &serde_json::Value) -> (Self, Vec<String>) {
        let mut thresholds = Self::default();
        let mut problems = Vec::new();
        let Some(section) = settings.get("validation") else {
            return (thresholds, problems);
        };
        let parsed = match ValidationSettings::deserialize(section) {
            Ok(parsed) => parsed,
            Err(e) => {
                problems.push(format!("validation settings ignored: {e}"));
                return (thresholds, problems);
            }
        };
        let mut positive = |name: &str, value: Option<f64>, max: f64| -> Option<f64> {
            let value = value?;
            if value.is_finite() && value > 0.0 && value <= max {
                Some(value)
            } else {
                problems.push(format!("{name}={value} is not in (0, {max}]; default kept"));
                None
            }
        };
        if let Some(secs) = positive("max_future_secs", parsed.max_future_secs, 366.0 * 86_400.0) {
            thresholds.max_future_ms = (secs * 1000.0) as i64;
        }
        if let Some(days) = positive("max_past_days", parsed.max_past_days, 3650.0) {
            thresholds.max_past_ms = (days * 86_400_000.0) as i64;
        }
        if let Some(m) = positive("max_accuracy_m", parsed.max_accuracy_m, 1e7) {
            thresholds.max_accuracy_m = m;
        }
        if let Some(kmh) = positive("max_speed_kmh", parsed.max_speed_kmh, 1e6) {
            thresholds.max_speed_mps = kmh / 3.6;
        }
        (thresholds, problems)
    }
}

/// The device's previous accepted fix, what the speed check compares against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreviousFix {
    /// Its fix time, UTC ms.
    pub fix_time: EpochMillis,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Its reported accuracy, metres.
    pub accuracy_m: Option<f64>,
}

impl PreviousFix {
    /// The parts of `fix` the speed check needs.
    pub fn of(fix: &Fix) -> Self {
        Self {
            fix_time: fix.fix_time,
            lat: fix.lat,
            lon: fix.lon,
            accuracy_m: fix.accuracy_m,
        }
    }
}

/// A refused fix: the reason code and the detail that goes into the reject record.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The reason code.
    pub reason: RejectReason,
    /// The offending value and the limit.
    pub detail: String,
}

fn reject(reason: RejectReason, detail: String) -> Result<(), Rejection> {
    Err(Rejection { reason, detail })
}

/// Judge one fix received at `rx`, against the device's previous accepted fix if known.
/// Never panics, whatever the numbers.
pub fn validate(
    fix: &Fix,
    rx: EpochMillis,
    previous: Option<&PreviousFix>,
    thresholds: &Thresholds,
) -> Result<(), Rejection> {
    let optional = [
        ("alt", fix.altitude_m),
        ("spd", fix.speed_mps),
        ("hdg", fix.heading_deg),
        ("acc", fix.accuracy_m),
        ("bat", fix.battery_pct),
        ("hdop", fix.hdop),
    ];
    if !fix.lat.is_finite() || !fix.lon.is_finite() {
        return reject(
            RejectReason::NonFinite,
            format!("lat={} lon={}", fix.lat, fix.lon),
        );
    }
    if let Some((name, Some(value))) = optional
        .iter()
        .find(|(_, v)| v.is_some_and(|v| !v.is_finite()))
    {
        return reject(RejectReason::NonFinite, format!("{name}={value}"));
    }
    if !(-90.0..=90.0).contains(&fix.lat) {
        return reject(RejectReason::LatOutOfRange, format!("lat={}", fix.lat));
    }
    if !(-180.0..=180.0).contains(&fix.lon) {
        return reject(RejectReason::LonOutOfRange, format!("lon={}", fix.lon));
    }
    if fix.lat == 0.0 && fix.lon == 0.0 {
        return reject(RejectReason::NullIsland, "lat=0 lon=0".into());
    }

    // i128: any two i64 instants differ by less than 2^64, so nothing overflows.
    let ahead = i128::from(fix.fix_time) - i128::from(rx);
    if ahead > i128::from(thresholds.max_future_ms) {
        return reject(
            RejectReason::FutureTime,
            format!(
                "fix time {}ms after receipt, limit {}ms",
                ahead, thresholds.max_future_ms
            ),
        );
    }
    let behind = -ahead;
    if behind > i128::from(thresholds.max_past_ms) {
        let era = i128::from(GPS_ROLLOVER_MS);
        let eras = (behind + era / 2) / era;
        let off = (behind - eras * era).abs();
        if (1..=3).contains(&eras) && off <= i128::from(thresholds.rollover_window_ms) {
            return reject(
                RejectReason::WeekRollover,
                format!("fix time {eras}x1024 weeks before receipt (off by {off}ms)"),
            );
        }
        return reject(
            RejectReason::TooOld,
            format!(
                "fix time {}ms before receipt, limit {}ms",
                behind, thresholds.max_past_ms
            ),
        );
    }
    // Only reachable when `rx` itself is absurd: the relative checks above ran first so that a
    // week-rollover fix from before 2000 is still named as one.
    if fix.fix_time < MIN_FIX_TIME {
        return reject(
            RejectReason::TooOld,
            format!("fix time {} before 2000", fix.fix_time),
        );
    }
    if fix.fix_time > MAX_FIX_TIME {
        return reject(
            RejectReason::FutureTime,
            format!("fix time {} after 2200", fix.fix_time),
        );
    }
    if let Some(acc) = fix.accuracy_m {
        if acc > thresholds.max_accuracy_m {
            return reject(
                RejectReason::PoorAccuracy,
                format!("accuracy {acc}m, limit {}m", thresholds.max_accuracy_m),
            );
        }
    }
    if let Some(previous) = previous {
        if let Some(speed) = implied_speed_mps(previous, fix) {
            if speed > thresholds.max_speed_mps {
                return reject(
                    RejectReason::ImpossibleSpeed,
                    format!(
                        "implied speed {speed:.1}m/s from fix at {}, limit {:.1}m/s",
                        previous.fix_time, thresholds.max_speed_mps
                    ),
                );
            }
        }
    }
    Ok(())
}

/// The speed needed to travel between `previous` and `fix`, m/s, or `None` when the previous
/// fix is unusable. Both fixes' accuracies (capped at 100 m each) are forgiven from the
/// distance, and the time gap counts as at least one second, so GPS jitter between fixes a few
/// milliseconds apart is not taken for a teleport.
pub fn implied_speed_mps(previous: &PreviousFix, fix: &Fix) -> Option<f64> {
    if !(previous.lat.is_finite() && previous.lon.is_finite()) {
        return None;
    }
    let distance = haversine_m(previous.lat, previous.lon, fix.lat, fix.lon);
    let slack = |acc: Option<f64>| {
        acc.filter(|a| a.is_finite())
            .unwrap_or(0.0)
            .clamp(0.0, 100.0)
    };
    let distance = (distance - slack(previous.accuracy_m) - slack(fix.accuracy_m)).max(0.0);
    let dt_ms = (i128::from(fix.fix_time) - i128::from(previous.fix_time)).unsigned_abs();
    let dt_s = (dt_ms as f64 / 1000.0).max(1.0);
    Some(distance / dt_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RX: EpochMillis = 1_790_000_000_000;

    fn ok(fix: &Fix) -> Result<(), Rejection> {
        validate(fix, RX, None, &Thresholds::default())
    }

    fn reason(fix: &Fix) -> RejectReason {
        ok(fix).unwrap_err().reason
    }

    #[test]
    fn a_plain_fix_passes() {
        let mut fix = Fix::new(RX - 1000, 52.52, 13.40);
        fix.accuracy_m = Some(5.0);
        assert_eq!(ok(&fix), Ok(()));
    }

    #[test]
    fn each_rule_has_its_reason() {
        assert_eq!(
            reason(&Fix::new(RX, f64::NAN, 1.0)),
            RejectReason::NonFinite
        );
        let mut fix = Fix::new(RX, 1.0, 1.0);
        fix.speed_mps = Some(f64::INFINITY);
        assert_eq!(reason(&fix), RejectReason::NonFinite);
        assert_eq!(
            reason(&Fix::new(RX, 90.5, 1.0)),
            RejectReason::LatOutOfRange
        );
        assert_eq!(
            reason(&Fix::new(RX, 1.0, -180.1)),
            RejectReason::LonOutOfRange
        );
        assert_eq!(reason(&Fix::new(RX, 0.0, 0.0)), RejectReason::NullIsland);
        assert_eq!(
            reason(&Fix::new(RX + 11 * 60_000, 1.0, 1.0)),
            RejectReason::FutureTime
        );
        assert_eq!(
            reason(&Fix::new(RX - 31 * 86_400_000, 1.0, 1.0)),
            RejectReason::TooOld
        );
        assert_eq!(
            reason(&Fix::new(RX - GPS_ROLLOVER_MS + 3_600_000, 1.0, 1.0)),
            RejectReason::WeekRollover
        );
        assert_eq!(
            reason(&Fix::new(RX - 2 * GPS_ROLLOVER_MS, 1.0, 1.0)),
            RejectReason::WeekRollover
        );
        let mut fix = Fix::new(RX, 1.0, 1.0);
        fix.accuracy_m = Some(5_000.0);
        assert_eq!(reason(&fix), RejectReason::PoorAccuracy);
    }

    #[test]
    fn impossible_speed_is_caught_and_jitter_is_not() {
        let previous = PreviousFix {
            fix_time: RX - 10_000,
            lat: 52.52,
            lon: 13.40,
            accuracy_m: Some(10.0),
        };
        let t = Thresholds::default();
        // ~111 km in 10 s.
        let far = Fix::new(RX, 53.52, 13.40);
        let err = validate(&far, RX, Some(&previous), &t).unwrap_err();
        assert_eq!(err.reason, RejectReason::ImpossibleSpeed);
        // 15 m of jitter 5 ms apart.
        let mut jitter = Fix::new(RX - 9_995, 52.52013, 13.40);
        jitter.accuracy_m = Some(10.0);
        assert_eq!(validate(&jitter, RX, Some(&previous), &t), Ok(()));
        // A late fix from an hour earlier, 50 km away: 14 m/s, fine.
        let late = Fix::new(RX - 3_610_000, 52.97, 13.40);
        assert_eq!(validate(&late, RX, Some(&previous), &t), Ok(()));
    }

    #[test]
    fn tenant_settings_override_defaults_and_bad_values_are_named() {
        let settings = serde_json::json!({"validation": {
            "max_future_secs": 60, "max_past_days": 2, "max_accuracy_m": 50, "max_speed_kmh": 36
        }});
        let (t, problems) = Thresholds::from_settings(&settings);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t.max_future_ms, 60_000);
        assert_eq!(t.max_past_ms, 2 * 86_400_000);
        assert_eq!(t.max_accuracy_m, 50.0);
        assert!((t.max_speed_mps - 10.0).abs() < 1e-9);

        let (t, problems) =
            Thresholds::from_settings(&serde_json::json!({"validation": {"max_accuracy_m": -1}}));
        assert_eq!(t, Thresholds::default());
        assert!(problems[0].contains("max_accuracy_m"), "{problems:?}");
        let (t, problems) =
            Thresholds::from_settings(&serde_json::json!({"validation": {"typo": 1}}));
        assert_eq!(t, Thresholds::default());
        assert_eq!(problems.len(), 1);
        assert_eq!(
            Thresholds::from_settings(&serde_json::json!({})).0,
            Thresholds::default()
        );
    }

    fn any_float() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            -200.0..200.0f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(0.0),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_accepts_only_sane_fixes(
            lat in any_float(), lon in any_float(), acc in proptest::option::of(any_float()),
            spd in proptest::option::of(any_float()),
            fix_time in any::<i64>(), rx in any::<i64>(),
            prev in proptest::option::of((any::<i64>(), any_float(), any_float())),
        ) {
            let mut fix = Fix::new(fix_time, lat, lon);
            fix.accuracy_m = acc;
            fix.speed_mps = spd;
            let previous = prev.map(|(t, lat, lon)| PreviousFix { fix_time: t, lat, lon, accuracy_m: None });
            let t = Thresholds::default();
            if validate(&fix, rx, previous.as_ref(), &t).is_ok() {
                prop_assert!(lat.is_finite() && lon.is_finite());
                prop_assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
                prop_assert!(!(lat == 0.0 && lon == 0.0));
                prop_assert!(acc.is_none_or(|a| a.is_finite() && a <= t.max_accuracy_m));
                prop_assert!(spd.is_none_or(f64::is_finite));
                let ahead = i128::from(fix_time) - i128::from(rx);
                prop_assert!(ahead <= i128::from(t.max_future_ms));
                prop_assert!(-ahead <= i128::from(t.max_past_ms));
                prop_assert!((MIN_FIX_TIME..=MAX_FIX_TIME).contains(&fix_time));
            }
        }

        #[test]
        fn near_times_in_range_pass(
            lat in -89.9..89.9f64, lon in -179.9..179.9f64, skew in -86_400_000i64..600_000,
        ) {
            prop_assume!(lat.abs() > 1e-3 || lon.abs() > 1e-3);
            let fix = Fix::new(RX + skew, lat, lon);
            prop_assert_eq!(validate(&fix, RX, None, &Thresholds::default()), Ok(()));
        }
    }
}
