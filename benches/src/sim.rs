//! Device simulation: plausible vehicle routes (speed changes, bounded turns, stops, slowly
//! wandering GPS error) and the traffic faults real fleets produce (duplicate resends, late
//! fixes, a few bad fixes). Deterministic for a given seed, so a run can be replayed exactly.

use gps_domain::fix::EpochMillis;
use gps_domain::Fix;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Metres per degree of latitude (mean).
const M_PER_DEG_LAT: f64 = 111_320.0;

/// Bounds of the simulated motion.
#[derive(Debug, Clone, Copy)]
pub struct MotionLimits {
    /// Top speed, m/s (35 m/s = 126 km/h).
    pub max_speed_mps: f64,
    /// Largest acceleration or braking, m/s².
    pub max_accel_mps2: f64,
    /// Largest turn rate, degrees per second.
    pub max_turn_deg_s: f64,
    /// Largest distance between the reported and the true position, metres.
    pub max_jitter_m: f64,
    /// Largest drift of the GPS error per second, metres (real GPS error wanders slowly, so
    /// consecutive fixes never imply an impossible speed).
    pub jitter_drift_m_s: f64,
}

impl Default for MotionLimits {
    fn default() -> Self {
        Self {
            max_speed_mps: 35.0,
            max_accel_mps2: 3.0,
            max_turn_deg_s: 25.0,
            max_jitter_m: 8.0,
            jitter_drift_m_s: 1.5,
        }
    }
}

/// What kind of fix a [`Traffic`] step produced, so the run knows what to expect downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FixKind {
    /// A plausible fix, sent once: expected in `positions` exactly once.
    Good,
    /// A resend of a fix already sent (same fix time, same content): still exactly once.
    Duplicate,
    /// A good fix held back and sent after later ones (out of order): expected in `positions`.
    Late,
    /// A fix the processor must refuse (Null Island or a fix time far in the future): expected
    /// in the quarantine topic, never in `positions`.
    Bad,
}

/// One simulated vehicle.
#[derive(Debug, Clone)]
pub struct Vehicle {
    rng: StdRng,
    limits: MotionLimits,
    /// True position, degrees.
    lat: f64,
    lon: f64,
    /// Course, degrees 0..360.
    heading: f64,
    speed: f64,
    target_speed: f64,
    /// Current turn rate, degrees per second (a turn lasts a while, like a curve).
    turn_rate: f64,
    /// Seconds left in the current stop (traffic light, delivery).
    stop_left: f64,
    /// GPS error, metres north and east.
    err_n: f64,
    err_e: f64,
    altitude: f64,
    battery: f64,
    /// Simulated clock, ms.
    clock: EpochMillis,
}

impl Vehicle {
    /// A vehicle starting near (`lat`, `lon`) at `start` ms, seeded.
    pub fn new(seed: u64, lat: f64, lon: f64, start: EpochMillis, limits: MotionLimits) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        // Spread the fleet over a ~20 km square around the centre.
        let lat = lat + rng.gen_range(-0.09..0.09);
        let lon = lon + rng.gen_range(-0.14..0.14);
        let heading = rng.gen_range(0.0..360.0);
        let target_speed = rng.gen_range(5.0..limits.max_speed_mps * 0.8);
        Self {
            limits,
            lat,
            lon,
            heading,
            speed: 0.0,
            target_speed,
            turn_rate: 0.0,
            stop_left: 0.0,
            err_n: 0.0,
            err_e: 0.0,
            altitude: rng.gen_range(20.0..120.0),
            battery: rng.gen_range(40.0..100.0),
            clock: start,
            rng,
        }
    }

    /// Advance by `dt_ms` (≥ 1) and report the fix a device would send.
    pub fn step(&mut self, dt_ms: i64) -> Fix {
        let dt_ms = dt_ms.max(1);
        let dt = dt_ms as f64 / 1000.0;
        let l = self.limits;
        // Behaviour changes happen at a per-second rate whatever the step size.
        let chance = |rng: &mut StdRng, per_second: f64| rng.gen_bool((per_second * dt).min(1.0));
        if self.stop_left > 0.0 {
            self.stop_left -= dt;
            self.target_speed = 0.0;
            if self.stop_left <= 0.0 {
                self.target_speed = self.rng.gen_range(5.0..l.max_speed_mps * 0.8);
            }
        } else if chance(&mut self.rng, 0.01) {
            self.stop_left = self.rng.gen_range(5.0..60.0);
            self.target_speed = 0.0;
        } else if chance(&mut self.rng, 0.05) {
            self.target_speed = self.rng.gen_range(3.0..l.max_speed_mps);
        }
        if chance(&mut self.rng, 0.08) {
            // Start or finish a curve; mostly straight roads.
            self.turn_rate = if self.rng.gen_bool(0.5) {
                0.0
            } else {
                self.rng.gen_range(-l.max_turn_deg_s..l.max_turn_deg_s)
            };
        }
        let dv =
            (self.target_speed - self.speed).clamp(-l.max_accel_mps2 * dt, l.max_accel_mps2 * dt);
        self.speed = (self.speed + dv).clamp(0.0, l.max_speed_mps);
        if self.speed > 0.5 {
            self.heading = (self.heading + self.turn_rate * dt).rem_euclid(360.0);
        }
        let dist = self.speed * dt;
        let rad = self.heading.to_radians();
        self.lat += dist * rad.cos() / M_PER_DEG_LAT;
        self.lon += dist * rad.sin() / (M_PER_DEG_LAT * self.lat.to_radians().cos());
        // The GPS error wanders by at most jitter_drift per second and stays within max_jitter.
        let drift = l.jitter_drift_m_s * dt;
        self.err_n = (self.err_n + self.rng.gen_range(-drift..=drift))
            .clamp(-l.max_jitter_m, l.max_jitter_m);
        self.err_e = (self.err_e + self.rng.gen_range(-drift..=drift))
            .clamp(-l.max_jitter_m, l.max_jitter_m);
        let radius = self.err_n.hypot(self.err_e);
        if radius > l.max_jitter_m {
            self.err_n *= l.max_jitter_m / radius;
            self.err_e *= l.max_jitter_m / radius;
        }
        self.altitude += self.rng.gen_range(-0.2..0.2) * dt;
        self.battery = (self.battery - 0.0005 * dt).max(1.0);
        self.clock += dt_ms;

        let mut fix = Fix::new(
            self.clock,
            self.lat + self.err_n / M_PER_DEG_LAT,
            self.lon + self.err_e / (M_PER_DEG_LAT * self.lat.to_radians().cos()),
        );
        fix.speed_mps = Some(round(self.speed, 2));
        fix.heading_deg = Some(round(self.heading, 1));
        fix.accuracy_m = Some(round(3.0 + radius, 1));
        fix.altitude_m = Some(round(self.altitude, 1));
        fix.battery_pct = Some(round(self.battery, 0));
        fix.satellites = Some(self.rng.gen_range(6..14));
        fix.hdop = Some(round(self.rng.gen_range(0.7..1.8), 1));
        fix
    }

    /// The simulated clock, ms.
    pub fn clock(&self) -> EpochMillis {
        self.clock
    }

    /// The vehicle's own random source (for fault injection that must stay deterministic).
    fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// How often faults are injected, as probabilities per generated fix.
#[derive(Debug, Clone, Copy)]
pub struct FaultRates {
    /// A resend of the previous fix.
    pub duplicate: f64,
    /// A fix held back and sent a few fixes later.
    pub late: f64,
    /// A fix the processor must quarantine.
    pub bad: f64,
}

impl Default for FaultRates {
    fn default() -> Self {
        Self {
            duplicate: 0.005,
            late: 0.005,
            bad: 0.001,
        }
    }
}

impl FaultRates {
    /// No faults at all (demo mode, ceilings).
    pub fn none() -> Self {
        Self {
            duplicate: 0.0,
            late: 0.0,
            bad: 0.0,
        }
    }
}

/// One vehicle's outgoing traffic: its fixes in send order, with faults mixed in.
#[derive(Debug, Clone)]
pub struct Traffic {
    vehicle: Vehicle,
    faults: FaultRates,
    step_ms: i64,
    last_sent: Option<Fix>,
    /// A late fix waiting, with how many fixes it still waits.
    held: Option<(Fix, u32)>,
}

impl Traffic {
    /// Traffic of `vehicle`, one fix every `step_ms` of simulated time.
    pub fn new(vehicle: Vehicle, step_ms: i64, faults: FaultRates) -> Self {
        Self {
            vehicle,
            faults,
            step_ms: step_ms.max(1),
            last_sent: None,
            held: None,
        }
    }

    /// `devices` fault-free vehicles around Berlin, clocks at `start_clock`, one fix every
    /// `step_ms`: the rows the benchmarks that need no faults (ceilings, drain) generate.
    pub fn clean_fleet(devices: usize, start_clock: EpochMillis, step_ms: i64) -> Vec<Self> {
        (0..devices)
            .map(|i| {
                Self::new(
                    Vehicle::new(i as u64, 52.52, 13.40, start_clock, MotionLimits::default()),
                    step_ms,
                    FaultRates::none(),
                )
            })
            .collect()
    }

    /// The next fix to send and what it is.
    pub fn next_fix(&mut self) -> (Fix, FixKind) {
        if let Some((fix, left)) = self.held.take() {
            if left == 0 {
                return self.sent(fix, FixKind::Late);
            }
            self.held = Some((fix, left - 1));
        }
        let roll: f64 = self.vehicle.rng().gen();
        let f = self.faults;
        if roll < f.duplicate {
            if let Some(prev) = self.last_sent.clone() {
                return (prev, FixKind::Duplicate);
            }
        }
        let fix = self.vehicle.step(self.step_ms);
        if roll < f.duplicate + f.bad {
            let mut bad = fix;
            if self.vehicle.rng().gen_bool(0.5) {
                // Null Island: parses everywhere, refused by the processor.
                bad.lat = 0.0;
                bad.lon = 0.0;
            } else {
                // Three days ahead: a device with a broken clock.
                bad.fix_time += 3 * 86_400_000;
            }
            return (bad, FixKind::Bad);
        }
        if roll < f.duplicate + f.bad + f.late && self.held.is_none() {
            let wait = self.vehicle.rng().gen_range(1..5);
            self.held = Some((fix, wait));
            let next = self.vehicle.step(self.step_ms);
            return self.sent(next, FixKind::Good);
        }
        self.sent(fix, FixKind::Good)
    }

    fn sent(&mut self, fix: Fix, kind: FixKind) -> (Fix, FixKind) {
        if kind == FixKind::Good {
            self.last_sent = Some(fix.clone());
        }
        (fix, kind)
    }

    /// The vehicle's simulated clock, ms.
    pub fn clock(&self) -> EpochMillis {
        self.vehicle.clock()
    }
}

/// Simulated-time step per fix that keeps a fleet's clocks near real time at `rate` fixes/s
/// over `devices` devices (at least 1 ms, at most 5 s).
pub fn step_for_rate(devices: usize, rate: f64) -> i64 {
    if rate <= 0.0 {
        return 1000;
    }
    ((devices as f64 * 1000.0 / rate).round() as i64).clamp(1, 5000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gps_domain::geo::haversine_m;

    fn vehicle(seed: u64) -> Vehicle {
        Vehicle::new(
            seed,
            52.52,
            13.40,
            1_700_000_000_000,
            MotionLimits::default(),
        )
    }

    #[test]
    fn same_seed_same_route() {
        let (mut a, mut b) = (vehicle(7), vehicle(7));
        for _ in 0..500 {
            assert_eq!(a.step(1000), b.step(1000));
        }
        assert_ne!(vehicle(7).step(1000), vehicle(8).step(1000));
    }

    #[test]
    fn speeds_stay_within_bounds_and_vehicles_stop_and_go() {
        let limits = MotionLimits::default();
        let (mut stopped, mut fast) = (0, 0);
        for seed in 0..20 {
            let mut v = vehicle(seed);
            let mut prev_speed = 0.0;
            for _ in 0..2000 {
                let fix = v.step(1000);
                let speed = fix.speed_mps.unwrap();
                assert!((0.0..=limits.max_speed_mps).contains(&speed), "{speed}");
                assert!((speed - prev_speed).abs() <= limits.max_accel_mps2 + 0.02);
                prev_speed = speed;
                stopped += usize::from(speed < 0.1);
                fast += usize::from(speed > 15.0);
            }
        }
        assert!(
            stopped > 100 && fast > 1000,
            "stopped {stopped}, fast {fast}"
        );
    }

    #[test]
    fn headings_are_continuous() {
        let limits = MotionLimits::default();
        for seed in 0..20 {
            let mut v = vehicle(seed);
            let mut prev = v.step(1000).heading_deg.unwrap();
            for _ in 0..2000 {
                let h = v.step(1000).heading_deg.unwrap();
                assert!((0.0..360.0).contains(&h) || h == 360.0);
                let diff = ((h - prev + 540.0).rem_euclid(360.0) - 180.0).abs();
                assert!(
                    diff <= limits.max_turn_deg_s + 0.2,
                    "turned {diff} deg in 1 s"
                );
                prev = h;
            }
        }
    }

    #[test]
    fn jitter_is_bounded_and_never_implies_impossible_speed() {
        let limits = MotionLimits::default();
        for seed in 0..10 {
            let mut v = vehicle(seed);
            let mut prev = v.step(100);
            for _ in 0..5000 {
                let fix = v.step(100);
                let (true_lat, true_lon) = (v.lat, v.lon);
                let err = haversine_m(fix.lat, fix.lon, true_lat, true_lon);
                assert!(err <= limits.max_jitter_m + 0.1, "error {err} m");
                let apparent = haversine_m(prev.lat, prev.lon, fix.lat, fix.lon) / 0.1;
                // Rounding of the reported speed adds a little; drift adds at most √2·drift.
                assert!(
                    apparent <= limits.max_speed_mps + 1.5 * limits.jitter_drift_m_s + 0.5,
                    "apparent {apparent} m/s"
                );
                prev = fix;
            }
        }
    }

    #[test]
    fn traffic_mixes_in_each_fault_kind_and_good_fix_times_are_unique() {
        let faults = FaultRates {
            duplicate: 0.02,
            late: 0.02,
            bad: 0.02,
        };
        let mut traffic = Traffic::new(vehicle(3), 1000, faults);
        let mut counts = std::collections::HashMap::new();
        let mut good_times = std::collections::HashSet::new();
        let mut sent_times = std::collections::HashSet::new();
        let mut max_time = 0;
        let mut out_of_order = 0;
        for _ in 0..5000 {
            let (fix, kind) = traffic.next_fix();
            *counts.entry(kind).or_insert(0) += 1;
            match kind {
                FixKind::Good | FixKind::Late => {
                    assert!(good_times.insert(fix.fix_time), "fix time reused");
                    sent_times.insert(fix.fix_time);
                }
                FixKind::Duplicate => assert!(sent_times.contains(&fix.fix_time)),
                FixKind::Bad => {
                    assert!(
                        (fix.lat == 0.0 && fix.lon == 0.0)
                            || fix.fix_time > traffic.clock() + 86_400_000
                    )
                }
            }
            if kind == FixKind::Late {
                assert!(fix.fix_time < max_time);
                out_of_order += 1;
            }
            if kind != FixKind::Bad {
                max_time = max_time.max(fix.fix_time);
            }
        }
        for kind in [
            FixKind::Good,
            FixKind::Duplicate,
            FixKind::Late,
            FixKind::Bad,
        ] {
            assert!(
                counts.get(&kind).copied().unwrap_or(0) > 20,
                "{kind:?}: {counts:?}"
            );
        }
        assert!(out_of_order > 20);
    }

    #[test]
    fn step_keeps_the_fleet_clock_near_real_time() {
        assert_eq!(step_for_rate(1000, 10_000.0), 100);
        assert_eq!(step_for_rate(10, 1_000_000.0), 1);
        assert_eq!(step_for_rate(10, 0.0), 1000);
        assert_eq!(step_for_rate(100_000, 1.0), 5000);
    }
}
