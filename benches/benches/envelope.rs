//! The Kafka envelope: encode and decode cost per fix, for single fixes and request-sized batches.

use benches::sample_envelope;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gps_domain::FixEnvelope;

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

criterion_group!(benches, envelope);
criterion_main!(benches);
