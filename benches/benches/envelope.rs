//! The Kafka envelope: encode and decode cost per fix, for single fixes and request-sized batches;
//! and the live path's per-fix cost in fanout: decoding a Redis `LiveBatch`, encoding each fix
//! once (`EncodedFix`), and framing it per subscriber (`fix_message`).

use benches::sample_envelope;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gps_domain::live::{LiveBatch, LiveFix};
use gps_domain::FixEnvelope;
use std::time::Instant;

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for n in [1usize, 100] {
        let env = sample_envelope(n);
        let bytes = env.encode();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("encode", n), &env, |b, env| {
            b.iter(|| env.encode())
        });
        group.bench_with_input(BenchmarkId::new("decode", n), &bytes, |b, bytes| {
            b.iter(|| FixEnvelope::decode(bytes).unwrap())
        });
    }
    group.finish();
}

fn live_batch(n: usize) -> LiveBatch {
    let env = sample_envelope(n);
    let fixes = env
        .fixes
        .iter()
        .map(|fix| LiveFix {
            device: env.device,
            uid: env.uid.clone(),
            proto: env.proto,
            rx: env.rx,
            fix: fix.clone(),
        })
        .collect();
    LiveBatch::new(env.tenant, fixes)
}

fn websocket(c: &mut Criterion) {
    let mut group = c.benchmark_group("websocket");
    let batch = live_batch(100);
    let payload = batch.encode();
    group.throughput(Throughput::Elements(100));
    group.bench_with_input(
        BenchmarkId::new("live_batch_decode", 100),
        &payload,
        |b, p| b.iter(|| LiveBatch::decode(p).unwrap()),
    );
    group.bench_with_input(BenchmarkId::new("encode_fix", 100), &batch, |b, batch| {
        b.iter(|| {
            let now = Instant::now();
            batch
                .fixes
                .iter()
                .map(|f| fanout::protocol::EncodedFix::from_live(f, now))
                .collect::<Vec<_>>()
        })
    });
    let encoded = fanout::protocol::EncodedFix::from_live(&batch.fixes[0], Instant::now());
    group.throughput(Throughput::Elements(1));
    group.bench_with_input(
        BenchmarkId::new("frame_per_subscriber", 1),
        &encoded,
        |b, e| b.iter(|| fanout::protocol::fix_message(42, e)),
    );
    group.finish();
}

criterion_group!(benches, envelope, websocket);
criterion_main!(benches);
