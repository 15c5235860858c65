//! The processor's CPU work per fix, without the database: validation
//! (`gps_domain::validation::validate`, against the previous fix as the pipeline calls it, and a
//! rejection, which formats its detail), the in-memory dedupe in front of the database
//! (`processor::dedupe`: a hit and a miss in a full 500,000-key cache, an insert that evicts, the
//! per-device previous-fix cache), and the bulk-write encoders the writer uses
//! (`gps_store::positions`: the binary COPY buffer and the UNNEST column arrays) for a small batch
//! and a full 5,000-fix batch.

use benches::sample_track;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gps_domain::validation::{validate, PreviousFix, Thresholds};
use gps_domain::Protocol;
use gps_store::positions::{encode_copy, Columns, FixKey, StoredFix};
use processor::dedupe::{DedupeCache, DeviceCache};
use std::sync::Arc;
use uuid::Uuid;

/// Fixes per envelope in the write batches (a gateway's batch of 100).
const PER_ENVELOPE: usize = 100;

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("processor/validate");
    let track = sample_track(PER_ENVELOPE + 1);
    let rx = track.last().unwrap().fix_time + 500;
    let thresholds = Thresholds::default();
    // Each fix against the one before it, as the pipeline does.
    let pairs: Vec<_> = track
        .windows(2)
        .map(|w| (PreviousFix::of(&w[0]), w[1].clone()))
        .collect();
    assert!(pairs
        .iter()
        .all(|(p, f)| validate(f, rx, Some(p), &thresholds).is_ok()));
    group.throughput(Throughput::Elements(pairs.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("accept", pairs.len()),
        &pairs,
        |b, pairs| {
            b.iter(|| {
                pairs
                    .iter()
                    .filter(|(p, f)| validate(black_box(f), rx, Some(p), &thresholds).is_ok())
                    .count()
            })
        },
    );
    // A teleport: 100 km in one second.
    let (previous, mut fix) = pairs[0].clone();
    fix.lat += 0.9;
    assert!(validate(&fix, rx, Some(&previous), &thresholds).is_err());
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("reject_speed", 1), |b| {
        b.iter(|| validate(black_box(&fix), rx, Some(&previous), &thresholds).unwrap_err())
    });
    group.finish();
}

fn dedupe(c: &mut Criterion) {
    let mut group = c.benchmark_group("processor/dedupe");
    let capacity = 500_000; // the processor's default
    let devices: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
    let key = |i: usize| -> FixKey {
        (
            devices[i % devices.len()],
            1_700_000_000_000 + (i / devices.len()) as i64 * 1000,
        )
    };
    let mut cache = DedupeCache::new(capacity);
    for i in 0..capacity {
        cache.insert(key(i));
    }
    assert_eq!(cache.len(), capacity);
    // A batch of 100 from the newest keys (resends), and 100 not seen yet (the common case).
    let hits: Vec<FixKey> = (capacity - 100..capacity).map(key).collect();
    let misses: Vec<FixKey> = (capacity..capacity + 100).map(key).collect();
    assert!(hits.iter().all(|k| cache.contains(k)));
    assert!(!misses.iter().any(|k| cache.contains(k)));
    group.throughput(Throughput::Elements(100));
    group.bench_with_input(BenchmarkId::new("contains_hit", 100), &hits, |b, keys| {
        b.iter(|| keys.iter().filter(|k| cache.contains(black_box(k))).count())
    });
    group.bench_with_input(
        BenchmarkId::new("contains_miss", 100),
        &misses,
        |b, keys| b.iter(|| keys.iter().filter(|k| cache.contains(black_box(k))).count()),
    );
    // After a commit: remember 100 new keys in the full cache, evicting the 100 oldest.
    let mut next = capacity;
    group.bench_function(BenchmarkId::new("insert_evicting", 100), |b| {
        b.iter(|| {
            for _ in 0..100 {
                cache.insert(key(next));
                next += 1;
            }
        })
    });
    assert_eq!(cache.len(), capacity);

    // The previous fix of each device of a batch, then moved forward after the commit.
    let mut device_cache = DeviceCache::new(200_000);
    let previous = PreviousFix::of(&sample_track(1)[0]);
    for d in &devices {
        device_cache.set(*d, Some(previous));
    }
    let batch: Vec<Uuid> = devices.iter().step_by(10).copied().collect();
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("device_get", batch.len()),
        &batch,
        |b, batch| {
            b.iter(|| {
                batch
                    .iter()
                    .filter(|d| device_cache.get(black_box(d)).is_some())
                    .count()
            })
        },
    );
    let mut newer = previous;
    group.bench_with_input(
        BenchmarkId::new("device_advance", batch.len()),
        &batch,
        |b, batch| {
            b.iter(|| {
                newer.fix_time += 1000;
                for d in batch {
                    device_cache.advance(*d, black_box(newer));
                }
            })
        },
    );
    group.finish();
}

/// `n` rows in envelopes of [`PER_ENVELOPE`] fixes, one device each; `attributes` adds one
/// attribute per fix (as OsmAnd and OwnTracks fixes carry), which the encoders serialize.
fn rows(n: usize, attributes: bool) -> Vec<StoredFix> {
    let track = sample_track(n);
    track
        .chunks(PER_ENVELOPE)
        .flat_map(|chunk| {
            let device = Uuid::new_v4();
            let uid: Arc<str> = Arc::from("358240051111110");
            let received = chunk.last().unwrap().fix_time + 500;
            chunk.iter().cloned().map(move |mut fix| {
                if attributes {
                    fix.attributes.insert("charge".into(), false.into());
                }
                StoredFix {
                    tenant: Uuid::from_u128(1),
                    device,
                    uid: uid.clone(),
                    protocol: Protocol::Json,
                    received,
                    fix,
                }
            })
        })
        .collect()
}

fn writer(c: &mut Criterion) {
    let mut group = c.benchmark_group("processor/writer");
    for (n, attributes) in [(100usize, false), (5000, false), (5000, true)] {
        let rows = rows(n, attributes);
        let suffix = if attributes { "_attributes" } else { "" };
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("copy_binary{suffix}"), n),
            &rows,
            |b, rows| b.iter(|| encode_copy(black_box(rows))),
        );
        group.bench_with_input(
            BenchmarkId::new(format!("unnest_columns{suffix}"), n),
            &rows,
            |b, rows| b.iter(|| Columns::of(black_box(rows))),
        );
    }
    group.finish();
}

criterion_group!(benches, validation, dedupe, writer);
criterion_main!(benches);
