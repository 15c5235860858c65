//! The raw ceilings an end-to-end rate is compared with, measured on the same machine in the
//! same run: a bulk binary `COPY` of the same rows into the same `positions` table (in a throwaway,
//! migrated database, so the shared one is untouched), and the broker's produce rate with
//! records of the same size and settings as ingest's (idempotent, `acks=all`, keyed by device),
//! to a scratch topic.
//!
//! Scratch topics (`bench.*`) are left in place on purpose: after a `DeleteTopics`, tansu 0.6
//! stops acknowledging produce requests to the topics that remain (seen here: ingest's
//! `gps.fixes` timed out until the broker restarted). `dev/stack reset` clears them.

use crate::sim::Traffic;
use crate::LoadgenError;
use gps_domain::fix::now_millis;
use gps_domain::Protocol;
use gps_runtime::config::{DatabaseArgs, KafkaArgs};
use gps_store::positions::{copy_into, encode_copy, StoredFix};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// A measured ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// What was measured.
    pub what: &'static str,
    /// Fixes (rows) moved.
    pub fixes: u64,
    /// Seconds it took.
    pub secs: f64,
    /// Fixes per second.
    pub fixes_per_sec: f64,
    /// Bytes per record (produce) or per row (binary COPY).
    pub bytes_per_record: usize,
}

/// COPY `rows` simulated rows (`devices` devices) into `positions` of a fresh database, in
/// chunks of `chunk` rows per COPY statement (one transaction each), and drop it afterwards.
pub async fn copy(
    db: &DatabaseArgs,
    rows: u64,
    devices: usize,
    chunk: usize,
) -> Result<Ceiling, LoadgenError> {
    let admin = gps_runtime::db::connect(db).await?;
    let name = format!("gps_bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let scratch = DatabaseArgs {
        database_url: SecretString::from(gps_runtime::db::url_with_database(
            db.database_url.expose_secret(),
            &name,
        )),
        max_connections: 2,
    };
    let result = async {
        let pool = gps_runtime::db::connect(&scratch).await?;
        gps_runtime::db::migrate(&pool).await?;
        let measured = copy_rows(&pool, rows, devices, chunk).await;
        pool.close().await;
        measured
    }
    .await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await;
    result
}

async fn copy_rows(
    pool: &sqlx::PgPool,
    rows: u64,
    devices: usize,
    chunk: usize,
) -> Result<Ceiling, LoadgenError> {
    let devices = devices.max(1);
    let tenant = Uuid::new_v4();
    let ids: Vec<Uuid> = (0..devices).map(|_| Uuid::new_v4()).collect();
    let start_clock = (now_millis() - 2 * 3600 * 1000).div_euclid(1000) * 1000;
    let mut fleet = Traffic::clean_fleet(devices, start_clock, 100);
    // Encode every chunk first, in PostgreSQL's binary COPY format (its cheapest input, and
    // what the processor sends): the ceiling is the database's, not the generator's.
    let received = now_millis();
    let uid: Arc<str> = Arc::from("");
    let mut chunks = Vec::new();
    let mut pending: Vec<StoredFix> = Vec::with_capacity(chunk.max(1));
    let mut bytes = 0usize;
    for n in 0..rows {
        let d = (n % devices as u64) as usize;
        let (fix, _) = fleet[d].next_fix();
        pending.push(StoredFix {
            tenant,
            device: ids[d],
            uid: uid.clone(),
            protocol: Protocol::Json,
            received,
            fix,
        });
        if pending.len() == chunk.max(1) || n + 1 == rows {
            let data = encode_copy(&pending);
            bytes += data.len();
            chunks.push(data);
            pending.clear();
        }
    }
    let statement = copy_into("positions");
    let started = Instant::now();
    for data in chunks {
        let mut conn = pool.acquire().await?;
        let mut copy = conn.copy_in_raw(&statement).await?;
        copy.send(data).await?;
        copy.finish().await?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Ceiling {
        what: "postgres COPY into positions",
        fixes: rows,
        secs,
        fixes_per_sec: rows as f64 / secs.max(1e-9),
        bytes_per_record: bytes / rows.max(1) as usize,
    })
}

/// Produce `records` envelopes of `fixes_per_record` fixes (`devices` keys) to a fresh topic
/// with ingest's producer settings (idempotent, acks=all, linger 20 ms, no compression),
/// `in_flight` at a time (the topic is left in place, see the module docs).
pub async fn produce(
    kafka: &KafkaArgs,
    records: u64,
    fixes_per_record: usize,
    devices: usize,
    in_flight: usize,
) -> Result<Ceiling, LoadgenError> {
    let topic = format!(
        "bench.ceiling.{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    gps_runtime::kafka::ensure_topics(kafka, &[(&topic, gps_runtime::kafka::FIXES_PARTITIONS)])
        .await?;
    let keys: Vec<String> = (0..devices.max(1))
        .map(|_| Uuid::new_v4().to_string())
        .collect();
    let mut envelope = crate::sample_envelope(fixes_per_record.max(1));
    envelope.proto = Protocol::Json;
    let payload = envelope.encode();
    let started = Instant::now();
    let sent = produce_records(
        kafka,
        &topic,
        keys.iter()
            .cycle()
            .take(records as usize)
            .map(|key| (key.as_str(), payload.as_slice())),
        in_flight,
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    sent?;
    let fixes = records * fixes_per_record.max(1) as u64;
    Ok(Ceiling {
        what: "kafka produce (acks=all, idempotent)",
        fixes,
        secs,
        fixes_per_sec: fixes as f64 / secs.max(1e-9),
        bytes_per_record: payload.len(),
    })
}

/// Produce every `(key, payload)` to `topic` with ingest's producer settings, `in_flight`
/// deliveries awaited concurrently; fails naming how many were not acknowledged.
pub async fn produce_records<'a>(
    kafka: &KafkaArgs,
    topic: &str,
    records: impl Iterator<Item = (&'a str, &'a [u8])>,
    in_flight: usize,
) -> Result<(), LoadgenError> {
    use futures::stream::{FuturesUnordered, StreamExt};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = gps_runtime::kafka::client_config(kafka, "loadgen-producer")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "none")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut pending = FuturesUnordered::new();
    let mut failed = 0u64;
    let mut total = 0u64;
    for (key, payload) in records {
        total += 1;
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        loop {
            if pending.len() >= in_flight.max(1) {
                if let Some(Err(_)) | Some(Ok(Err(_))) = pending.next().await {
                    failed += 1;
                }
            }
            // Enqueue now (not when first polled); a full local queue waits for deliveries.
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((e, back))
                    if matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) =>
                {
                    record = back;
                    if let Some(Err(_)) | Some(Ok(Err(_))) = pending.next().await {
                        failed += 1;
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    while let Some(result) = pending.next().await {
        if !matches!(result, Ok(Ok(_))) {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(LoadgenError::Setup(format!(
            "{failed} of {total} produce requests failed"
        )));
    }
    Ok(())
}
