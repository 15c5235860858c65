//! The events engine's per-fix cost with many fences in a tenant: the point-in-fences lookup
//! (R-tree over the fences' boxes, then the exact polygon test) and a whole
//! `DeviceEventState::apply` (fences, overspeed, motion), with 100 and 10,000 polygon fences of
//! 16 positions each spread over a 10° × 10° area. Issue 16 asks for the lookup with 10,000
//! fences, in ns per fix.
//!
//! `cargo bench -p benches --bench events`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gps_domain::events::{
    DeviceEventState, DeviceProfile, EventRules, Fence, FenceIndex, FenceShape,
};
use gps_domain::Fix;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

/// South-west corner and side of the area the fences and fixes cover, degrees.
const AREA: (f64, f64, f64) = (45.0, 5.0, 10.0);
/// Positions of each fence's ring (the closing one included).
const RING: usize = 16;
/// Fixes per measured iteration.
const FIXES: usize = 1_000;

/// `n` fences: irregular 15-gons of ~300 m to ~3 km radius at random places in the area.
fn fences(n: usize, rng: &mut StdRng) -> Vec<Fence> {
    (0..n)
        .map(|i| {
            let (lat0, lon0) = (
                AREA.0 + rng.gen::<f64>() * AREA.2,
                AREA.1 + rng.gen::<f64>() * AREA.2,
            );
            let radius_deg = 0.003 + rng.gen::<f64>() * 0.027;
            let mut ring: Vec<[f64; 2]> = (0..RING - 1)
                .map(|k| {
                    let a = k as f64 / (RING - 1) as f64 * std::f64::consts::TAU;
                    let r = radius_deg * (0.7 + 0.3 * rng.gen::<f64>());
                    [lon0 + r * a.cos() / 0.7, lat0 + r * a.sin()]
                })
                .collect();
            ring.push(ring[0]);
            let geometry = json!({ "type": "Polygon", "coordinates": [ring] });
            Fence {
                id: Uuid::from_u128(i as u128 + 1),
                shape: FenceShape::from_geojson(&geometry, None).expect("a valid fence"),
                groups: Vec::new(),
                speed_limit_mps: (i % 4 == 0).then_some(13.9),
                schedule: None,
            }
        })
        .collect()
}

/// A drive of `FIXES` fixes, one a second, ~15 m/s on a random heading through the area.
fn drive(rng: &mut StdRng) -> Vec<Fix> {
    let (mut lat, mut lon) = (AREA.0 + AREA.2 / 2.0, AREA.1 + AREA.2 / 2.0);
    let heading: f64 = rng.gen::<f64>() * std::f64::consts::TAU;
    (0..FIXES)
        .map(|i| {
            lat += heading.cos() * 15.0 / 111_195.0;
            lon += heading.sin() * 15.0 / (111_195.0 * 0.7);
            let mut fix = Fix::new(1_700_000_000_000 + i as i64 * 1000, lat, lon);
            fix.speed_mps = Some(12.0 + rng.gen::<f64>() * 4.0);
            fix
        })
        .collect()
}

/// Random points anywhere in the area.
fn scattered(rng: &mut StdRng) -> Vec<(f64, f64)> {
    (0..FIXES)
        .map(|_| {
            (
                AREA.0 + rng.gen::<f64>() * AREA.2,
                AREA.1 + rng.gen::<f64>() * AREA.2,
            )
        })
        .collect()
}

fn events(c: &mut Criterion) {
    let mut group = c.benchmark_group("events");
    group.throughput(Throughput::Elements(FIXES as u64));
    let mut rng = StdRng::seed_from_u64(16);
    for n in [100usize, 10_000] {
        let index = FenceIndex::new(fences(n, &mut rng));
        let points = scattered(&mut rng);
        group.bench_with_input(BenchmarkId::new("lookup", n), &points, |b, points| {
            b.iter(|| {
                points
                    .iter()
                    .map(|(lat, lon)| index.containing(*lat, *lon).len())
                    .sum::<usize>()
            })
        });
        let track = drive(&mut rng);
        let rules = EventRules::default();
        let profile = DeviceProfile {
            groups: &[],
            speed_limit_mps: Some(30.0),
        };
        group.bench_with_input(BenchmarkId::new("apply", n), &track, |b, track| {
            b.iter_batched(
                || DeviceEventState::new(Uuid::from_u128(1), Uuid::from_u128(2)),
                |mut state| {
                    track
                        .iter()
                        .map(|fix| state.apply(fix, &index, &profile, &rules).len())
                        .sum::<usize>()
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, events);
criterion_main!(benches);
