//! Track maths, pure: Douglas–Peucker simplification in metres and the per-device summary
//! (distance, moving time, speeds, trips and stops split by an idle gap). Distances are the
//! domain's one great-circle distance ([`gps_domain::geo::haversine_m`]).
//!
//! Both are bounded by design, since their input comes from a caller: simplification is
//! iterative (an explicit stack, never recursion as deep as the track) with a work budget, and
//! the summary is a fold ([`Summarizer`]) that sees one fix at a time, so a route can feed it
//! straight from the database without holding the range in memory. The route adds the range's
//! event counts per type ([`event_counts`], from rows it reads) beside the track figures.

use gps_domain::events::EventType;
use gps_domain::geo::EARTH_RADIUS_M;
use serde::Serialize;
use std::collections::BTreeMap;

// Re-exported for the track benches, which measure the distance sum the summary runs.
use gps_domain::geo::haversine_m;

/// Point-to-segment distance evaluations [`simplify_indices`] may spend: about `n log n` for a
/// real track of 100,000 fixes is 2 million; a crafted zigzag would need `n²/2` (5 billion).
pub const SIMPLIFY_BUDGET: u64 = 20_000_000;

/// Indices of the points Douglas–Peucker keeps with tolerance `epsilon_m` metres. Points are
/// projected equirectangularly around their mean latitude, which is accurate to well under 1 %
/// over the extent of one track; the first and last points are always kept. Work is bounded
/// by [`SIMPLIFY_BUDGET`] (see [`simplify_indices_within`]).
pub fn simplify_indices(points: &[(f64, f64)], epsilon_m: f64) -> Vec<usize> {
    simplify_indices_within(points, epsilon_m, SIMPLIFY_BUDGET)
}

/// [`simplify_indices`] with an explicit budget of distance evaluations. Spans are split from
/// an explicit stack (no recursion, whatever the shape of the track); once the budget is spent,
/// the spans still pending keep all their points. The result is then less simplified than it
/// could be, never wrong: every dropped point is still within `epsilon_m` of the kept line.
pub fn simplify_indices_within(points: &[(f64, f64)], epsilon_m: f64, budget: u64) -> Vec<usize> {
    let n = points.len();
    if n < 3 || epsilon_m.is_nan() || epsilon_m <= 0.0 {
        return (0..n).collect();
    }
    let mean_lat = points.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let k = mean_lat.to_radians().cos();
    let xy: Vec<(f64, f64)> = points
        .iter()
        .map(|(lat, lon)| {
            (
                lon.to_radians() * EARTH_RADIUS_M * k,
                lat.to_radians() * EARTH_RADIUS_M,
            )
        })
        .collect();
    let mut keep = vec![false; n];
    keep[0] = true;
    keep[n - 1] = true;
    let mut spent: u64 = 0;
    let mut stack = vec![(0usize, n - 1)];
    while let Some((first, last)) = stack.pop() {
        if last - first < 2 {
            continue;
        }
        let interior = (last - first - 1) as u64;
        if spent.saturating_add(interior) > budget {
            // Out of budget: keep this span whole (conservative, still within tolerance).
            keep[first + 1..last].iter_mut().for_each(|k| *k = true);
            continue;
        }
        spent += interior;
        let (a, b) = (xy[first], xy[last]);
        let mut farthest = (first, -1.0_f64);
        for (i, p) in xy.iter().enumerate().take(last).skip(first + 1) {
            let d = segment_distance(*p, a, b);
            if d > farthest.1 {
                farthest = (i, d);
            }
        }
        // A NaN distance (non-finite input) compares false: the span is dropped, as geo did.
        if farthest.1 > epsilon_m {
            keep[farthest.0] = true;
            stack.push((first, farthest.0));
            stack.push((farthest.0, last));
        }
    }
    keep.iter()
        .enumerate()
        .filter_map(|(i, k)| k.then_some(i))
        .collect()
}

/// Euclidean distance from `p` to the segment `a`–`b` (to `a` when the segment is a point).
fn segment_distance(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (cx, cy) = (a.0 + t * dx, a.1 + t * dy);
    ((p.0 - cx).powi(2) + (p.1 - cy).powi(2)).sqrt()
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

/// Most trips, and most stops, a summary lists; beyond it they are still counted in the totals
/// and `segments_truncated` is set (a crafted track of one stop per fix stays bounded).
pub const MAX_SEGMENTS: usize = 10_000;

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
    /// Movements (at most [`MAX_SEGMENTS`]).
    pub trips: Vec<Segment>,
    /// Stops of at least the idle gap (at most [`MAX_SEGMENTS`]).
    pub stops: Vec<Segment>,
    /// More trips or stops than [`MAX_SEGMENTS`] happened; the lists hold the first ones.
    pub segments_truncated: bool,
    /// Events of the range per type, every type present ([`event_counts`]); absent when the
    /// caller may not read events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_counts: Option<BTreeMap<&'static str, i64>>,
}

/// Event counts keyed by every type's name (0 for a type without events), from `(type, count)`
/// rows; a name that is no event type (a row of a newer build) is left out.
pub fn event_counts(rows: impl IntoIterator<Item = (String, i64)>) -> BTreeMap<&'static str, i64> {
    let mut counts: BTreeMap<&'static str, i64> =
        EventType::ALL.iter().map(|t| (t.as_str(), 0)).collect();
    for (name, count) in rows {
        if let Ok(event_type) = name.parse::<EventType>() {
            *counts.entry(event_type.as_str()).or_default() += count;
        }
    }
    counts
}

/// Summarise `points` (sorted by time). A step is "moving" when its speed (reported at the
/// later fix, else implied) is at least `moving_mps` and the time between the fixes is at most
/// `idle_gap_s`; a stationary stretch (or a silence) of at least `idle_gap_s` is a stop and
/// splits trips. The fold of [`Summarizer`] over the slice.
pub fn summarize(points: &[TrackPoint], idle_gap_s: f64, moving_mps: f64) -> Summary {
    let mut summarizer = Summarizer::new(idle_gap_s, moving_mps);
    for point in points {
        summarizer.push(*point);
    }
    summarizer.finish()
}

/// The summary as a fold: [`Summarizer::push`] each fix in time order, then
/// [`Summarizer::finish`]. Memory is constant apart from the (capped) segment lists.
#[derive(Debug, Clone)]
pub struct Summarizer {
    idle_gap_s: f64,
    moving_mps: f64,
    summary: Summary,
    first: Option<TrackPoint>,
    previous: Option<TrackPoint>,
    trip: Option<Segment>,
    still_since: Option<(i64, usize)>,
}

impl Summarizer {
    /// An empty fold with the summary's two thresholds.
    pub fn new(idle_gap_s: f64, moving_mps: f64) -> Self {
        Self {
            idle_gap_s,
            moving_mps,
            summary: Summary {
                fix_count: 0,
                distance_m: 0.0,
                moving_time_s: 0.0,
                duration_s: 0.0,
                max_speed_mps: 0.0,
                avg_speed_mps: 0.0,
                trips: Vec::new(),
                stops: Vec::new(),
                segments_truncated: false,
                event_counts: None,
            },
            first: None,
            previous: None,
            trip: None,
            still_since: None,
        }
    }

    /// Fold in the next fix (not earlier than the previous one).
    pub fn push(&mut self, b: TrackPoint) {
        self.summary.fix_count += 1;
        self.first.get_or_insert(b);
        let Some(a) = self.previous.replace(b) else {
            return;
        };
        let idle_gap_s = self.idle_gap_s;
        // Saturating: fix times are bounded by the query, but the fold trusts no input.
        let dt = b.t_ms.saturating_sub(a.t_ms) as f64 / 1000.0;
        if dt <= 0.0 {
            return;
        }
        let d = haversine_m(a.lat, a.lon, b.lat, b.lon);
        let implied = d / dt;
        let speed = b.speed_mps.unwrap_or(implied);
        let moving = speed >= self.moving_mps && dt <= idle_gap_s;
        if dt <= idle_gap_s {
            self.summary.max_speed_mps = self.summary.max_speed_mps.max(speed);
        }
        if moving {
            self.summary.distance_m += d;
            self.summary.moving_time_s += dt;
            if let Some((since, count)) = self.still_since.take() {
                if a.t_ms.saturating_sub(since) as f64 / 1000.0 >= idle_gap_s {
                    self.close_trip();
                    self.stop(Segment {
                        start_ms: since,
                        end_ms: a.t_ms,
                        distance_m: 0.0,
                        fixes: count,
                    });
                }
            }
            let seg = self.trip.get_or_insert(Segment {
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
            self.close_trip();
            let (since, count) = self.still_since.take().unwrap_or((a.t_ms, 1));
            self.stop(Segment {
                start_ms: since,
                end_ms: b.t_ms,
                distance_m: 0.0,
                fixes: count + 1,
            });
        } else {
            let entry = self.still_since.get_or_insert((a.t_ms, 1));
            entry.1 += 1;
        }
    }

    /// The summary of every fix pushed.
    pub fn finish(mut self) -> Summary {
        let (Some(first), Some(last)) = (self.first, self.previous) else {
            return self.summary;
        };
        self.summary.duration_s = last.t_ms.saturating_sub(first.t_ms) as f64 / 1000.0;
        if let Some((since, count)) = self.still_since.take() {
            if last.t_ms.saturating_sub(since) as f64 / 1000.0 >= self.idle_gap_s {
                self.close_trip();
                self.stop(Segment {
                    start_ms: since,
                    end_ms: last.t_ms,
                    distance_m: 0.0,
                    fixes: count,
                });
            }
        }
        self.close_trip();
        if self.summary.moving_time_s > 0.0 {
            self.summary.avg_speed_mps = self.summary.distance_m / self.summary.moving_time_s;
        }
        self.summary
    }

    fn close_trip(&mut self) {
        if let Some(seg) = self.trip.take() {
            push_capped(
                &mut self.summary.trips,
                &mut self.summary.segments_truncated,
                seg,
            );
        }
    }

    fn stop(&mut self, seg: Segment) {
        push_capped(
            &mut self.summary.stops,
            &mut self.summary.segments_truncated,
            seg,
        );
    }
}

fn push_capped(list: &mut Vec<Segment>, truncated: &mut bool, seg: Segment) {
    if list.len() < MAX_SEGMENTS {
        list.push(seg);
    } else {
        *truncated = true;
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

    /// A zigzag whose amplitude grows along the track: the farthest point from every chord is
    /// the one next to its end, so Douglas–Peucker splits off one point per step (recursion as
    /// deep as the track, quadratic work). It must finish, keep the ends, and stay correct.
    #[test]
    fn a_crafted_zigzag_of_100k_points_completes_within_its_budget() {
        let n = 100_000;
        let pts: Vec<(f64, f64)> = (0..n)
            .map(|i| {
                let amplitude = 1e-4 * (1.0 + i as f64 * 1e-3);
                let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                (10.0 + sign * amplitude, 10.0 + i as f64 * 1e-6)
            })
            .collect();
        // Run on a thread with a small stack: a recursive simplification overflows it.
        let kept = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || simplify_indices(&pts, 1.0))
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert_eq!(kept.first(), Some(&0));
        assert_eq!(kept.last(), Some(&(n - 1)));
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        // Every point deviates by more than 1 m from its neighbours' line: all are kept.
        assert_eq!(kept.len(), n);
    }

    #[test]
    fn an_exhausted_budget_keeps_the_pending_spans_whole() {
        let straight: Vec<(f64, f64)> = (0..100).map(|i| (52.0 + i as f64 * 1e-4, 13.0)).collect();
        assert_eq!(simplify_indices_within(&straight, 5.0, 1_000), vec![0, 99]);
        assert_eq!(simplify_indices_within(&straight, 5.0, 10).len(), 100);
        assert_eq!(simplify_indices(&straight, f64::NAN).len(), 100);
    }

    #[test]
    fn event_counts_name_every_type_and_skip_unknown_ones() {
        let counts = event_counts([
            ("overspeed".to_owned(), 3),
            ("teleport".to_owned(), 9),
            ("alarm".to_owned(), 1),
        ]);
        assert_eq!(counts.len(), EventType::ALL.len());
        assert_eq!(counts["overspeed"], 3);
        assert_eq!(counts["alarm"], 1);
        assert_eq!(counts["geofence_enter"], 0);
        assert!(!counts.contains_key("teleport"));
        let json = serde_json::to_value(summarize(&[], 300.0, 0.5)).unwrap();
        assert!(json.get("event_counts").is_none(), "absent unless filled");
    }

    #[test]
    fn the_fold_caps_its_segment_lists() {
        // Fixes 2 s apart with a 1 s idle gap: every step is a silence, so one stop per fix.
        let pts: Vec<TrackPoint> = (0..(3 * MAX_SEGMENTS as i64))
            .map(|i| TrackPoint {
                t_ms: i * 2_000,
                lat: (i % 2) as f64 * 1e-3,
                lon: 0.0,
                speed_mps: None,
            })
            .collect();
        let s = summarize(&pts, 1.0, 0.5);
        assert_eq!(s.fix_count, pts.len());
        assert_eq!(s.stops.len(), MAX_SEGMENTS);
        assert!(s.segments_truncated);
    }
}
