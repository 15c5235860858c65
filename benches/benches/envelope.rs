//! The Kafka envelope: encode and decode cost per fix in both encodings (JSON, binary), for
//! single fixes and request-sized batches, and the processor's whole per-fix path from a record
//! to its binary COPY row (decode, `processor::plan::classify`, `encode_copy`) in each; and the
//! live path's per-fix cost in fanout: decoding a Redis `LiveBatch`, encoding each fix once
//! (`EncodedFix`), and framing it per subscriber (`fix_message`).

use benches::sample_envelope;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gps_domain::live::{LiveBatch, LiveFix};
use gps_domain::{EnvelopeFormat, FixEnvelope};
use processor::plan::{classify, Caches, InRecord};
use std::collections::HashMap;
use std::time::Instant;

const FORMATS: [EnvelopeFormat; 2] = [EnvelopeFormat::Json, EnvelopeFormat::Binary];

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for n in [1usize, 100] {
        let env = sample_envelope(n);
        group.throughput(Throughput::Elements(n as u64));
        for format in FORMATS {
            let bytes = env.encode_as(format);
            eprintln!("envelope {format} of {n} fixes: {} bytes", bytes.len());
            group.bench_with_input(
                BenchmarkId::new(format!("encode_{format}"), n),
                &env,
                |b, env| b.iter(|| env.encode_as(format)),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("decode_{format}"), n),
                &bytes,
                |b, bytes| b.iter(|| FixEnvelope::decode(bytes).unwrap()),
            );
        }
    }
    group.finish();
}

/// A processor batch of 50 records of 100 fixes (5,000 fixes, the writer's batch), from the
/// payloads to the COPY buffer, as the pipeline does it minus the I/O.
fn record_to_copy(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope/record_to_copy");
    let rx = 1_700_000_100_000;
    let envelopes: Vec<FixEnvelope> = (0..50).map(|_| sample_envelope(100)).collect();
    let caches = Caches::new(500_000, 100_000);
    let thresholds = HashMap::new();
    group.throughput(Throughput::Elements(5_000));
    for format in FORMATS {
        let payloads: Vec<Vec<u8>> = envelopes.iter().map(|e| e.encode_as(format)).collect();
        group.bench_with_input(
            BenchmarkId::new(format.as_str(), 5_000),
            &payloads,
            |b, payloads| {
                b.iter(|| {
                    let records: Vec<InRecord> = payloads
                        .iter()
                        .enumerate()
                        .map(|(offset, p)| InRecord::decode(0, offset as i64, Some(p)))
                        .collect();
                    let plan = classify(&records, &caches, &thresholds, "gps.fixes", rx);
                    assert_eq!(plan.rows.len(), 5_000);
                    gps_store::positions::encode_copy(&plan.rows)
                })
            },
        );
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

criterion_group!(benches, envelope, record_to_copy, websocket);
criterion_main!(benches);
