//! Fix validation with reason codes (used by the processor), pure and per-tenant configurable.
//!
//! Every time check is made against the envelope's ingest receive time (`rx`), never against
//! the wall clock: a fix is judged by when it reached the platform, so a lagging consumer does
//! not reject old-but-valid data, and `processor replay` reaches the same verdicts months later.
//! Thresholds come from `tenants.settings -> 'validation'` ([`Thresholds::from_settings`]);
//! the keys are documented in `docs/processor.md`.
//!
//! The speed check ([`Track::judge`]) is built so that one planted outlier cannot become the
//! reference that condemns the device's real track:
//! - a fix counts as taken no later than ingest received it ([`PreviousFix::taken`]), so a fix
//!   dated minutes into the future cannot buy itself travel time;
//! - an accepted fix becomes the reference (the anchor) only once a later fix agrees with it;
//!   until then a fix that agrees with the older anchor is accepted too;
//! - [`RELOCATION_FIXES`] consecutive refused fixes that agree with each other re-anchor the
//!   track (a genuine relocation, or a bad anchor healed).

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

/// A fix as the speed check remembers it (a device's previous accepted fix, or a refused one
/// that may start a relocation).
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
    /// When ingest received it (the envelope's `rx`), UTC ms.
    pub received_at: EpochMillis,
}

impl PreviousFix {
    /// The parts of `fix` the speed check needs, taking its fix time at its word (no receipt
    /// time known: `received_at` is the fix time).
    pub fn of(fix: &Fix) -> Self {
        Self::received(fix, fix.fix_time)
    }

    /// The parts of `fix`, received by ingest at `rx`.
    pub fn received(fix: &Fix, rx: EpochMillis) -> Self {
        Self {
            fix_time: fix.fix_time,
            lat: fix.lat,
            lon: fix.lon,
            accuracy_m: fix.accuracy_m,
            received_at: rx,
        }
    }

    /// The time the speed check uses: the fix time, but never later than the receipt. No fix
    /// is taken after it reached the platform, so a fix dated into the future (tolerated up to
    /// `max_future_secs` for clock skew) cannot claim the minutes it takes to travel far.
    pub fn taken(&self) -> EpochMillis {
        self.fix_time.min(self.received_at)
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
        speed_check(previous, &PreviousFix::received(fix, rx), thresholds)?;
    }
    Ok(())
}

/// `fix` against `reference`: refused when the implied speed exceeds the limit.
fn speed_check(
    reference: &PreviousFix,
    fix: &PreviousFix,
    thresholds: &Thresholds,
) -> Result<(), Rejection> {
    match implied_speed_mps(reference, fix) {
        Some(speed) if speed > thresholds.max_speed_mps => reject(
            RejectReason::ImpossibleSpeed,
            format!(
                "implied speed {speed:.1}m/s from fix at {}, limit {:.1}m/s",
                reference.fix_time, thresholds.max_speed_mps
            ),
        ),
        _ => Ok(()),
    }
}

/// The speed needed to travel between `a` and `b`, m/s, or `None` when a position is unusable.
/// The time gap is between their [`PreviousFix::taken`] times and counts as at least one
/// second, and both fixes' accuracies (capped at 100 m each) are forgiven from the distance, so
/// GPS jitter between fixes a few milliseconds apart is not taken for a teleport.
pub fn implied_speed_mps(a: &PreviousFix, b: &PreviousFix) -> Option<f64> {
    if !(a.lat.is_finite() && a.lon.is_finite() && b.lat.is_finite() && b.lon.is_finite()) {
        return None;
    }
    let distance = haversine_m(a.lat, a.lon, b.lat, b.lon);
    let slack = |acc: Option<f64>| {
        acc.filter(|a| a.is_finite())
            .unwrap_or(0.0)
            .clamp(0.0, 100.0)
    };
    let distance = (distance - slack(a.accuracy_m) - slack(b.accuracy_m)).max(0.0);
    let dt_ms = (i128::from(b.taken()) - i128::from(a.taken())).unsigned_abs();
    let dt_s = (dt_ms as f64 / 1000.0).max(1.0);
    Some(distance / dt_s)
}

/// How many consecutive refused fixes that agree with each other re-anchor a device's track:
/// the first `RELOCATION_FIXES - 1` are refused (`impossible_speed`), the last is accepted and
/// becomes the anchor.
pub const RELOCATION_FIXES: u32 = 3;

/// What the speed check knows of one device (see the module docs for the rule).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Track {
    /// The reference: the newest (by [`PreviousFix::taken`]) accepted fix that a later fix
    /// agreed with, or the newest stored one.
    pub anchor: Option<PreviousFix>,
    /// The newest accepted fix later than the anchor that no later fix has agreed with yet.
    pub pending: Option<PreviousFix>,
    /// The latest of consecutive refused fixes later than the anchor that agree with each
    /// other, and how many there were.
    pub relocation: Option<(PreviousFix, u32)>,
}

impl Track {
    /// The track of a device whose newest stored fix is `last`: stored means it was accepted,
    /// so it is trusted as the anchor.
    pub fn from_stored(last: Option<PreviousFix>) -> Self {
        Self {
            anchor: last,
            ..Self::default()
        }
    }

    /// The newest accepted fix known, confirmed or not.
    pub fn newest(&self) -> Option<PreviousFix> {
        match (self.anchor, self.pending) {
            (Some(a), Some(p)) if p.taken() > a.taken() => Some(p),
            (Some(a), _) => Some(a),
            (None, p) => p,
        }
    }

    /// Judge `fix` received at `rx`: every per-fix rule of [`validate`], then the speed rule
    /// against this track, which learns from the verdict. Accepted when the fix agrees with the
    /// pending fix or the anchor, or when nothing confirmed is known; refused otherwise, unless
    /// it completes a relocation of [`RELOCATION_FIXES`] agreeing fixes.
    pub fn judge(
        &mut self,
        fix: &Fix,
        rx: EpochMillis,
        thresholds: &Thresholds,
    ) -> Result<(), Rejection> {
        validate(fix, rx, None, thresholds)?;
        let point = PreviousFix::received(fix, rx);
        let agrees = |reference: &PreviousFix| speed_check(reference, &point, thresholds).is_ok();
        if let Some(pending) = self.pending {
            if agrees(&pending) {
                // A later fix agreeing with the pending one confirms it: the pair is trusted.
                if point.taken() > pending.taken() {
                    self.anchor = Some(point);
                    self.pending = None;
                }
                self.relocation = None;
                return Ok(());
            }
        }
        let refused = match self.anchor {
            // Nothing confirmed yet, so nothing to contradict: the newest fix waits for a
            // later one to agree with it.
            None => {
                self.accept_pending(point);
                return Ok(());
            }
            Some(anchor) => match speed_check(&anchor, &point, thresholds) {
                Ok(()) => {
                    if point.taken() > anchor.taken() {
                        self.accept_pending(point);
                    } else {
                        self.relocation = None;
                    }
                    return Ok(());
                }
                // An old outlier starts no relocation.
                Err(refused) if point.taken() <= anchor.taken() => return Err(refused),
                Err(refused) => refused,
            },
        };
        let count = match self.relocation {
            Some((last, n)) if point.taken() > last.taken() && agrees(&last) => n + 1,
            _ => 1,
        };
        if count >= RELOCATION_FIXES {
            *self = Self::from_stored(Some(point));
            return Ok(());
        }
        self.relocation = Some((point, count));
        Err(Rejection {
            detail: format!(
                "{} (relocation {count}/{RELOCATION_FIXES} unconfirmed)",
                refused.detail
            ),
            ..refused
        })
    }

    /// `point` was accepted without confirming the pending fix: it becomes the pending fix if
    /// it is the newest, and any relocation in progress ends.
    fn accept_pending(&mut self, point: PreviousFix) {
        if self.pending.is_none_or(|p| point.taken() >= p.taken()) {
            self.pending = Some(point);
        }
        self.relocation = None;
    }
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
            received_at: RX - 9_000,
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

    /// About 1° of latitude, metres.
    const DEGREE_M: f64 = 111_195.0;

    /// A real drive: fix `i` taken at `t`, `lat`, received `latency` ms later.
    #[derive(Debug, Clone, Copy)]
    struct Step {
        t: EpochMillis,
        lat: f64,
        latency: i64,
    }

    fn fix_at(t: EpochMillis, lat: f64, lon: f64) -> Fix {
        let mut fix = Fix::new(t, lat, lon);
        fix.accuracy_m = Some(8.0);
        fix
    }

    /// `count` fixes `gap_ms` apart, driving north at `speed` m/s, received 500 ms later.
    fn drive(start: EpochMillis, count: usize, gap_ms: i64, speed: f64) -> Vec<Step> {
        (0..count)
            .map(|i| Step {
                t: start + i as i64 * gap_ms,
                lat: 48.0 + speed * (i as i64 * gap_ms) as f64 / 1000.0 / DEGREE_M,
                latency: 500,
            })
            .collect()
    }

    fn judge(track: &mut Track, step: &Step) -> Result<(), Rejection> {
        track.judge(
            &fix_at(step.t, step.lat, 11.0),
            step.t + step.latency,
            &Thresholds::default(),
        )
    }

    #[test]
    fn a_future_dated_fix_buys_no_travel_time() {
        let t = Thresholds::default();
        let previous = PreviousFix::received(&fix_at(RX - 1_000, 48.0, 11.0), RX - 500);
        // 185 km away, dated 9 minutes after its receipt: 342 m/s if its date were believed.
        let planted = fix_at(RX + 540_000, 48.0 + 185_000.0 / DEGREE_M, 11.0);
        let believed = PreviousFix::of(&planted);
        assert!(implied_speed_mps(&previous, &believed).unwrap() < t.max_speed_mps);
        let err = validate(&planted, RX, Some(&previous), &t).unwrap_err();
        assert_eq!(err.reason, RejectReason::ImpossibleSpeed);
        // The same distance in the past it claims is fine: received late, dated honestly.
        let late = fix_at(RX - 540_000, 48.0 + 185_000.0 / DEGREE_M, 11.0);
        assert_eq!(validate(&late, RX, Some(&previous), &t), Ok(()));
    }

    #[test]
    fn a_planted_fix_cannot_condemn_the_real_track() {
        let real = drive(RX - 120_000, 60, 1_000, 20.0);
        let mut track = Track::default();
        for (i, step) in real.iter().enumerate() {
            if i == 20 {
                // The attack: received now, dated 9 minutes ahead, 185 km away.
                let rx = step.t - 200;
                let planted = fix_at(rx + 540_000, step.lat + 185_000.0 / DEGREE_M, 11.0);
                let err = track
                    .judge(&planted, rx, &Thresholds::default())
                    .unwrap_err();
                assert_eq!(err.reason, RejectReason::ImpossibleSpeed);
                assert!(err.detail.contains("relocation 1/3"), "{}", err.detail);
            }
            assert_eq!(judge(&mut track, step), Ok(()), "real fix {i}");
        }
        assert_eq!(track.newest().unwrap().fix_time, real[59].t);
    }

    #[test]
    fn a_relocation_is_accepted_from_its_third_agreeing_fix() {
        let mut track = Track::default();
        for step in drive(RX - 120_000, 10, 1_000, 20.0) {
            assert_eq!(judge(&mut track, &step), Ok(()));
        }
        // 500 km north, one second later, then moving on there.
        let mut there = drive(RX - 110_000, 5, 1_000, 20.0);
        for step in &mut there {
            step.lat += 500_000.0 / DEGREE_M;
        }
        for (n, step) in there.iter().enumerate() {
            let verdict = judge(&mut track, step);
            if n + 1 < RELOCATION_FIXES as usize {
                let err = verdict.unwrap_err();
                assert_eq!(err.reason, RejectReason::ImpossibleSpeed);
                assert!(err.detail.contains(&format!("relocation {}/3", n + 1)));
            } else {
                assert_eq!(verdict, Ok(()), "fix {n} of the relocation");
            }
        }
        assert_eq!(track.newest().unwrap().fix_time, there[4].t);
    }

    #[test]
    fn refused_fixes_that_disagree_with_each_other_never_relocate() {
        let mut track = Track::default();
        let real = drive(RX - 120_000, 40, 1_000, 20.0);
        for step in &real[..10] {
            assert_eq!(judge(&mut track, step), Ok(()));
        }
        // Outliers scattered 500, 1000, 1500 … km away, one a second: each alone.
        for i in 0..10 {
            let mut step = real[10 + i];
            step.lat += (i as f64 + 1.0) * 5.0;
            step.lat = step.lat.min(89.0 - i as f64);
            assert!(judge(&mut track, &step).is_err(), "outlier {i}");
        }
        for step in &real[20..] {
            assert_eq!(judge(&mut track, step), Ok(()));
        }
    }

    #[test]
    fn with_nothing_confirmed_a_first_outlier_refuses_nothing() {
        let real = drive(RX - 120_000, 10, 1_000, 20.0);
        let mut track = Track::default();
        let rx = real[0].t - 1_000;
        let planted = fix_at(rx + 300_000, 30.0, 11.0);
        assert_eq!(track.judge(&planted, rx, &Thresholds::default()), Ok(()));
        for (i, step) in real.iter().enumerate() {
            assert_eq!(judge(&mut track, step), Ok(()), "real fix {i}");
        }
        assert!((track.anchor.unwrap().lat - real[9].lat).abs() < 1e-9);
    }

    /// A real drive: 3 to 40 fixes, 1 to 30 s apart, at up to 40 m/s, received up to 3 s late.
    fn any_drive() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec((1_000i64..30_000, 0.0..40.0f64, 0i64..3_000), 3..40).prop_map(
            |legs| {
                let mut t = RX - 3_600_000;
                let mut lat = 48.0;
                legs.into_iter()
                    .map(|(gap, speed, latency)| {
                        t += gap;
                        lat += speed * gap as f64 / 1000.0 / DEGREE_M;
                        Step { t, lat, latency }
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn one_planted_outlier_anywhere_condemns_no_real_fix(
            real in any_drive(),
            at in any::<prop::sample::Index>(),
            distance_km in 100.0..4_000.0f64,
            north in any::<bool>(),
            after_ms in 0i64..5_000,
            ahead_ms in -60_000i64..599_000,
        ) {
            let at = at.index(real.len() + 1);
            let t = Thresholds::default();
            let mut track = Track::default();
            for (i, step) in real.iter().enumerate() {
                if i == at {
                    let rx = match i { 0 => step.t - 1_000, _ => real[i - 1].t + real[i - 1].latency + after_ms };
                    let offset = if north { distance_km } else { -distance_km } * 1000.0 / DEGREE_M;
                    // Dated off the real fixes' whole seconds, so no key collides.
                    let planted = fix_at(rx + ahead_ms + 333, step.lat + offset, 11.0);
                    let verdict = track.judge(&planted, rx, &t);
                    if at >= 2 {
                        prop_assert_eq!(verdict.unwrap_err().reason, RejectReason::ImpossibleSpeed);
                    }
                }
                prop_assert_eq!(judge(&mut track, step), Ok(()), "real fix {}", i);
            }
        }

        #[test]
        fn a_relocation_is_accepted_after_the_documented_number_of_fixes(
            before in any_drive(),
            after in any_drive(),
            distance_km in 100.0..5_000.0f64,
            jump_ms in 1_000i64..30_000,
        ) {
            let mut track = Track::default();
            for step in &before {
                prop_assert_eq!(judge(&mut track, step), Ok(()));
            }
            let last = before.last().unwrap();
            let shift = last.t + jump_ms - after[0].t;
            let lift = distance_km * 1000.0 / DEGREE_M - after[0].lat + last.lat;
            for (n, step) in after.iter().take(10).enumerate() {
                let step = Step { t: step.t + shift, lat: (step.lat + lift).min(89.9), ..*step };
                let verdict = judge(&mut track, &step);
                if n + 1 < RELOCATION_FIXES as usize {
                    prop_assert_eq!(verdict.unwrap_err().reason, RejectReason::ImpossibleSpeed);
                } else {
                    prop_assert_eq!(verdict, Ok(()), "fix {} of the relocation", n);
                }
            }
        }

        #[test]
        fn judging_never_panics_and_the_anchor_only_moves_forward(
            fixes in prop::collection::vec(
                (any::<i64>(), -90.0..90.0f64, -180.0..180.0f64, -700_000i64..100_000, any::<bool>()),
                1..30,
            ),
        ) {
            let mut track = Track::default();
            let mut anchor: Option<EpochMillis> = None;
            for (rx, lat, lon, skew, recent) in fixes {
                let rx = if recent { RX + rx % 600_000 } else { rx };
                let _ = track.judge(&Fix::new(rx.saturating_add(skew), lat, lon), rx, &Thresholds::default());
                if let Some(a) = track.anchor {
                    prop_assert!(anchor.is_none_or(|before| a.taken() >= before), "anchor moved back");
                    anchor = Some(a.taken());
                }
                if let (Some(a), Some(p)) = (track.anchor, track.pending) {
                    prop_assert!(p.taken() > a.taken(), "pending not after the anchor");
                }
            }
        }
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
            let previous = prev.map(|(t, lat, lon)| PreviousFix { fix_time: t, lat, lon, accuracy_m: None, received_at: t });
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
