//! query-api's track maths (`query_api::summary`), per fix, over a simulated 1 Hz drive (curves,
//! stops, wandering GPS error) of 1,000 fixes and of a whole day (86,400 fixes): Douglas–Peucker
//! simplification in metres as `GET /v1/devices/{id}/positions?simplify=5` runs it, the
//! trips/stops summary of `GET /v1/devices/{id}/summary` with its default idle gap (300 s) and
//! moving speed (0.5 m/s), and the bare haversine distance along the track.

use benches::sample_track;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gps_domain::geo::haversine_m;
use query_api::summary::{simplify_indices, summarize, TrackPoint};

/// Track lengths: a short page and a day at 1 Hz.
const SIZES: [usize; 2] = [1_000, 86_400];
/// Simplification tolerance, metres.
const EPSILON_M: f64 = 5.0;

fn track(c: &mut Criterion) {
    let mut group = c.benchmark_group("query");
    for n in SIZES {
        let fixes = sample_track(n);
        let points: Vec<(f64, f64)> = fixes.iter().map(|f| (f.lat, f.lon)).collect();
        let track: Vec<TrackPoint> = fixes
            .iter()
            .map(|f| TrackPoint {
                t_ms: f.fix_time,
                lat: f.lat,
                lon: f.lon,
                speed_mps: f.speed_mps,
            })
            .collect();
        let kept = simplify_indices(&points, EPSILON_M).len();
        let summary = summarize(&track, 300.0, 0.5);
        eprintln!(
            "track of {n}: simplify({EPSILON_M} m) keeps {kept}; {:.1} km, {} trips, {} stops",
            summary.distance_m / 1000.0,
            summary.trips.len(),
            summary.stops.len()
        );
        if n > 10_000 {
            // Each iteration takes milliseconds: fewer samples keep the run short.
            group.sample_size(10);
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("simplify_{EPSILON_M}m"), n),
            &points,
            |b, points| b.iter(|| simplify_indices(black_box(points), EPSILON_M)),
        );
        group.bench_with_input(BenchmarkId::new("summary", n), &track, |b, track| {
            b.iter(|| summarize(black_box(track), 300.0, 0.5))
        });
        group.bench_with_input(BenchmarkId::new("haversine_sum", n), &points, |b, p| {
            b.iter(|| {
                black_box(p)
                    .windows(2)
                    .map(|w| haversine_m(w[0].0, w[0].1, w[1].0, w[1].1))
                    .sum::<f64>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, track);
criterion_main!(benches);
