//! Track maths, pure: Douglas–Peucker simplification in metres and the per-device summary
//! (distance, moving time, speeds, trips and stops split by an idle gap). Distances are the
//! domain's one great-circle distance ([`gps_domain::geo::haversine_m`]).

use geo::{Coord, LineString, SimplifyIdx};
use gps_domain::geo::EARTH_RADIUS_M;
use serde::Serialize;

// Re-exported for the track benches, which measure the distance sum the summary runs.
use gps_domain::geo::haversine_m;

/// Indices of the points Douglas–Peucker keeps with tolerance `epsilon_m` metres. Points are
/// projected equirectangularly around their mean latitude, which is accurate to well under 1 %
/// over the extent of one track; the first and last points are always kept.
pub fn simplify_indices(points: &[(f64, f64)], epsilon_m: f64) -> Vec<usize> {
    if points.len() < 3 || epsilon_m <= 0.0 {
        return (0..points.len()).collect();
    }
    let mean_lat = points.iter().map(|p| p.0).sum::<f64>() / points.len() as f64;
    let k = mean_lat.to_radians().cos();
    let line: LineString<f64> = points
        .iter()
        .map(|(lat, lon)| Coord {
            x: lon.to_radians() * EARTH_RADIUS_M * k,
            y: lat.to_radians() * EARTH_RADIUS_M,
        })
        .collect();
    line.simplify_idx(epsilon_m)
}

/// One fix as the summary needs it.
#[derive(Debug, Clone, Copy)]
pub struct TrackPoint {
    /// Fix time, ms.
    pub t_ms: i64,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Reported speed, m/s.
    pub speed_mps: Option<f64>,
}

/// A trip (movement between stops) or a stop.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// Start, ms.
    pub start_ms: i64,
    /// End, ms.
    pub end_ms: i64,
    /// Distance covered, metres (0 for stops).
    pub distance_m: f64,
    /// Fixes in the segment.
    pub fixes: usize,
}

/// The summary of a track.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Number of fixes.
    pub fix_count: usize,
    /// Sum of haversine distances between consecutive fixes (gaps longer than the idle gap excluded).
    pub distance_m: f64,
    /// Time spent moving, seconds.
    pub moving_time_s: f64,
    /// First to last fix, seconds.
    pub duration_s: f64,
    /// Highest speed (reported, or implied between fixes when not reported), m/s.
    pub max_speed_mps: f64,
    /// distance / moving time, m/s.
    pub avg_speed_mps: f64,
    /// Movements.
    pub trips: Vec<Segment>,
    /// Stops of at least the idle gap.
    pub stops: Vec<Segment>,
}

/// Summarise `points` (sorted by time). A step is "moving" when its speed (reported at the
/// later fix, else implied) is at least `moving_mps` and the time between the fixes is at most
/// `idle_gap_s`; a stationary stretch (or a silence) of at least `idle_gap_s` is a stop and
/// splits trips.
pub fn summarize(points: &[TrackPoint], idle_gap_s: f64, moving_mps: f64) -> Summary {
    let mut summary = Summary {
        fix_count: points.len(),
        distance_m: 0.0,
        moving_time_s: 0.0,
        duration_s: 0.0,
        max_speed_mps: 0.0,
        avg_speed_mps: 0.0,
        trips: Vec::new(),
        stops: Vec::new(),
    };
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return summary;
    };
    summary.duration_s = (last.t_ms - first.t_ms) as f64 / 1000.0;
    let mut trip: Option<Segment> = None;
    let mut still_since: Option<(i64, usize)> = None;
    for pair in points.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let dt = (b.t_ms - a.t_ms) as f64 / 1000.0;
        let d = haversine_m(a.lat, a.lon, b.lat, b.lon);
        if dt <= 0.0 {
            continue;
        }
        let implied = d / dt;
        let speed = b.speed_mps.unwrap_or(implied);
        let moving = speed >= moving_mps && dt <= idle_gap_s;
        if dt <= idle_gap_s {
            summary.max_speed_mps = summary.max_speed_mps.max(speed);
        }
        if moving {
            summary.distance_m += d;
            summary.moving_time_s += dt;
            if let Some((since, count)) = still_since.take() {
                if (a.t_ms - since) as f64 / 1000.0 >= idle_gap_s {
                    close_trip(&mut trip, &mut summary.trips);
                    summary.stops.push(Segment {
                        start_ms: since,
                        end_ms: a.t_ms,
                        distance_m: 0.0,
                        fixes: count,
                    });
                }
            }
            let seg = trip.get_or_insert(Segment {
                start_ms: a.t_ms,
                end_ms: a.t_ms,
                distance_m: 0.0,
                fixes: 1,
            });
            seg.end_ms = b.t_ms;
            seg.distance_m += d;
            seg.fixes += 1;
        } else if dt > idle_gap_s {
            // A silence longer than the idle gap is a stop between a and b.
            close_trip(&mut trip, &mut summary.trips);
            let (since, count) = still_since.take().unwrap_or((a.t_ms, 1));
            summary.stops.push(Segment {
                start_ms: since,
                end_ms: b.t_ms,
                distance_m: 0.0,
                fixes: count + 1,
            });
        } else {
            let entry = still_since.get_or_insert((a.t_ms, 1));
            entry.1 += 1;
        }
    }
    if let Some((since, count)) = still_since {
        if (last.t_ms - since) as f64 / 1000.0 >= idle_gap_s {
            close_trip(&mut trip, &mut summary.trips);
            summary.stops.push(Segment {
                start_ms: since,
                end_ms: last.t_ms,
                distance_m: 0.0,
                fixes: count,
            });
        }
    }
    close_trip(&mut trip, &mut summary.trips);
    if summary.moving_time_s > 0.0 {
        summary.avg_speed_mps = summary.distance_m / summary.moving_time_s;
    }
    summary
}

fn close_trip(trip: &mut Option<Segment>, trips: &mut Vec<Segment>) {
    if let Some(seg) = trip.take() {
        trips.push(seg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simplification_keeps_ends_and_stays_within_tolerance() {
        // A straight line east with a 3 m wobble, then a 100 m spike.
        let mut pts: Vec<(f64, f64)> = (0..50)
            .map(|i| {
                (
                    52.0 + if i % 2 == 0 { 0.0 } else { 3.0 / 111_195.0 },
                    13.0 + i as f64 * 0.0005,
                )
            })
            .collect();
        pts[25].0 += 100.0 / 111_195.0;
        let kept = simplify_indices(&pts, 10.0);
        assert_eq!(kept.first(), Some(&0));
        assert_eq!(kept.last(), Some(&49));
        assert!(kept.contains(&25), "the spike is kept: {kept:?}");
        assert!(kept.len() < 10, "the wobble is dropped: {kept:?}");
        assert_eq!(simplify_indices(&pts[..2], 10.0), vec![0, 1]);
    }

    #[test]
    fn summary_of_a_hand_computed_track() {
        // 10 fixes 10 s apart moving north 100 m each (10 m/s), then a 10-minute stop, then 5 more.
        let step = 100.0 / 111_195.08;
        let mut pts = Vec::new();
        for i in 0..10 {
            pts.push(TrackPoint {
                t_ms: i * 10_000,
                lat: i as f64 * step,
                lon: 0.0,
                speed_mps: None,
            });
        }
        let stop_start = 90_000;
        for j in 1..=10 {
            pts.push(TrackPoint {
                t_ms: stop_start + j * 60_000,
                lat: 9.0 * step,
                lon: 0.0,
                speed_mps: Some(0.0),
            });
        }
        let resume = stop_start + 600_000;
        for k in 1..=5 {
            pts.push(TrackPoint {
                t_ms: resume + k * 10_000,
                lat: (9 + k) as f64 * step,
                lon: 0.0,
                speed_mps: None,
            });
        }
        let s = summarize(&pts, 300.0, 0.5);
        assert_eq!(s.fix_count, 25);
        assert!((s.distance_m - 1400.0).abs() < 0.5, "{}", s.distance_m);
        assert!((s.moving_time_s - 140.0).abs() < 1e-9);
        assert!((s.avg_speed_mps - 10.0).abs() < 0.01);
        assert!((s.max_speed_mps - 10.0).abs() < 0.01);
        assert_eq!(s.trips.len(), 2, "{:?}", s.trips);
        assert_eq!(s.stops.len(), 1, "{:?}", s.stops);
        assert_eq!(s.stops[0].start_ms, stop_start);
        assert_eq!(s.stops[0].end_ms, resume);
    }

    #[test]
    fn empty_and_single_fix_tracks() {
        assert_eq!(summarize(&[], 300.0, 0.5).fix_count, 0);
        let one = [TrackPoint {
            t_ms: 0,
            lat: 1.0,
            lon: 1.0,
            speed_mps: None,
        }];
        let s = summarize(&one, 300.0, 0.5);
        assert_eq!((s.fix_count, s.distance_m, s.trips.len()), (1, 0.0, 0));
    }
}
