//! The one batch loop of the processor, shared by the service (a consumer group,
//! `consumer::GroupSource`) and `processor replay` (a bounded range, `replay::ReplaySource`):
//! fill a batch from a [`BatchSource`] ([`fill_batch`]: max fixes, max wait after its first
//! record, idle gap after its last), run it through a [`BatchStage`] (the pipeline), retrying
//! transient errors with capped exponential backoff ([`RetryPolicy`]) and stopping at a fatal
//! one, publish what was newly stored, and only then tell the source the batch is done (the
//! group source commits its offsets there).
//!
//! Deadlines use `tokio::time::Instant`, so the tests below run under paused time.

use crate::error::{ProcessorError, Severity};
use crate::metrics::Metrics;
use crate::plan::{BatchOutcome, InRecord};
use crate::publisher::Publisher;
use gps_runtime::service::CancellationToken;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Where batches come from.
pub trait BatchSource {
    /// The next record; `Ok(None)` once a bounded source has delivered its whole range.
    /// Transient consume errors are handled inside (logged, retried); an `Err` ends the loop.
    /// Must be cancel safe: the loop drops it when a batch deadline passes.
    fn recv(&mut self) -> impl Future<Output = Result<Option<InRecord>, ProcessorError>> + Send;

    /// Drop the records of `batch` the source no longer owns. `true` when ownership changed
    /// since the last call (another instance may have advanced those devices).
    fn prune(&mut self, _batch: &mut Vec<InRecord>) -> bool {
        false
    }

    /// The batch's database transaction committed with this outcome (before it is published
    /// and [`BatchSource::done`]): the group source tracks freshness here.
    fn stored(&mut self, _outcome: &BatchOutcome) {}

    /// `batch` is stored, its rejects acknowledged and its new fixes published: record the
    /// progress (the group source commits the offsets).
    fn done(&mut self, batch: &[InRecord]) -> impl Future<Output = ()> + Send;

    /// The loop ends: commit what is finished and let go.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// What runs one batch (the pipeline).
pub trait BatchStage {
    /// Run one batch; on `Err` it may be run again with the same records.
    fn process(
        &mut self,
        batch: &[InRecord],
    ) -> impl Future<Output = Result<BatchOutcome, ProcessorError>> + Send;

    /// Forget per-device state (partitions moved to or from another instance).
    fn forget_devices(&mut self);
}

/// When a batch closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// At this many fixes.
    pub max_fixes: usize,
    /// This long after its first record.
    pub max_wait: Duration,
    /// When no record arrived for this long.
    pub idle: Duration,
}

/// How long an empty batch waits before looking at shutdown and ownership again.
const EMPTY_POLL: Duration = Duration::from_millis(500);

/// One filled batch.
#[derive(Debug, Default)]
pub struct Filled {
    /// The records, in arrival order.
    pub records: Vec<InRecord>,
    /// Partitions moved while it filled (see [`BatchSource::prune`]).
    pub moved: bool,
    /// The source delivered its whole range.
    pub end: bool,
}

/// Receive records until the batch holds `max_fixes`, `max_wait` passed since its first record,
/// `idle` passed since its last, the source ends, or `stop` is cancelled.
pub async fn fill_batch<S: BatchSource>(
    source: &mut S,
    limits: &BatchLimits,
    stop: &CancellationToken,
) -> Result<Filled, ProcessorError> {
    let mut filled = Filled::default();
    let mut fixes = 0usize;
    let mut deadline: Option<Instant> = None;
    while fixes < limits.max_fixes {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(limits.idle),
            None => EMPTY_POLL,
        };
        let received = tokio::select! {
            _ = stop.cancelled() => None,
            r = tokio::time::timeout(wait, source.recv()) => Some(r),
        };
        // Partitions may have moved during recv: drop what is no longer ours.
        if source.prune(&mut filled.records) {
            filled.moved = true;
            fixes = filled.records.iter().map(InRecord::weight).sum();
        }
        match received {
            None => break,
            Some(Err(_elapsed)) => {
                if !filled.records.is_empty() {
                    break;
                }
            }
            Some(Ok(Err(error))) => return Err(error),
            Some(Ok(Ok(None))) => {
                filled.end = true;
                break;
            }
            Some(Ok(Ok(Some(record)))) => {
                fixes += record.weight();
                filled.records.push(record);
                deadline.get_or_insert_with(|| Instant::now() + limits.max_wait);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    Ok(filled)
}

/// How a batch that failed with a transient error is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the first retry; doubled each time.
    pub first: Duration,
    /// Longest wait between retries.
    pub cap: Duration,
    /// Failed attempts after which the loop gives up (`None`: never; the service waits out an
    /// outage rather than skipping data).
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// The service: retry until the dependency is back, or shutdown.
    pub const SERVICE: Self = Self {
        first: Duration::from_millis(100),
        cap: Duration::from_secs(5),
        max_attempts: None,
    };

    /// `replay`: an operator waits for it; give up after a minute or so of failures.
    pub const REPLAY: Self = Self {
        first: Duration::from_millis(200),
        cap: Duration::from_secs(10),
        max_attempts: Some(10),
    };

    /// The wait after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.first.saturating_mul(1 << doublings).min(self.cap)
    }

    fn gives_up_after(&self, attempt: u32) -> bool {
        self.max_attempts.is_some_and(|max| attempt >= max)
    }
}

/// What the loop did, summed over its batches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchTotals {
    /// Records read.
    pub records: u64,
    /// Fixes newly stored.
    pub stored: u64,
    /// Duplicates (already stored, or repeated in the log).
    pub duplicates: u64,
    /// Device statuses moved forward.
    pub statuses: u64,
    /// Rejected fixes and records, by reason code.
    pub rejected: BTreeMap<String, u64>,
}

impl BatchTotals {
    fn add(&mut self, records: usize, outcome: &BatchOutcome) {
        self.records += records as u64;
        self.stored += outcome.stored.len() as u64;
        self.statuses += outcome.statuses.len() as u64;
        self.duplicates += outcome.duplicates.total() as u64;
        for (reason, count) in &outcome.rejected {
            *self.rejected.entry(reason.as_str().to_owned()).or_default() += *count as u64;
        }
    }
}

/// The loop's parts that are not the source or the stage.
#[derive(Debug)]
pub struct Sinks<'a> {
    /// Where newly stored fixes go live (`None` for replay).
    pub publisher: Option<&'a Publisher>,
    /// Retries are counted here.
    pub metrics: &'a Metrics,
}

/// Run batches from `source` through `stage` until the source ends, `stop` is cancelled (the
/// batch in hand is finished first), or a batch fails fatally (or more often than `retry`
/// allows). The source is closed in every case.
pub async fn run_batches<S: BatchSource, P: BatchStage>(
    source: &mut S,
    stage: &mut P,
    sinks: Sinks<'_>,
    limits: &BatchLimits,
    retry: &RetryPolicy,
    stop: &CancellationToken,
) -> Result<BatchTotals, ProcessorError> {
    let result = batch_loop(source, stage, &sinks, limits, retry, stop).await;
    source.close().await;
    result
}

async fn batch_loop<S: BatchSource, P: BatchStage>(
    source: &mut S,
    stage: &mut P,
    sinks: &Sinks<'_>,
    limits: &BatchLimits,
    retry: &RetryPolicy,
    stop: &CancellationToken,
) -> Result<BatchTotals, ProcessorError> {
    let mut totals = BatchTotals::default();
    loop {
        let filled = fill_batch(source, limits, stop).await?;
        if filled.moved {
            stage.forget_devices();
        }
        let batch = filled.records;
        if !batch.is_empty() {
            let Some(outcome) = run_one(stage, &batch, sinks.metrics, retry, stop).await? else {
                tracing::warn!(
                    records = batch.len(),
                    "shutdown while retrying; the batch stays uncommitted"
                );
                return Ok(totals);
            };
            source.stored(&outcome);
            // Live only after the database commit; the offsets only after both.
            if let Some(publisher) = sinks.publisher {
                publisher.publish(&outcome);
            }
            source.done(&batch).await;
            totals.add(batch.len(), &outcome);
        }
        if filled.end || stop.is_cancelled() {
            return Ok(totals);
        }
    }
}

/// Run one batch, retrying transient failures; `Ok(None)` when `stop` came while waiting.
async fn run_one<P: BatchStage>(
    stage: &mut P,
    batch: &[InRecord],
    metrics: &Metrics,
    retry: &RetryPolicy,
    stop: &CancellationToken,
) -> Result<Option<BatchOutcome>, ProcessorError> {
    let mut attempt = 0;
    loop {
        let error = match stage.process(batch).await {
            Ok(outcome) => return Ok(Some(outcome)),
            Err(error) => error,
        };
        attempt += 1;
        if error.severity() == Severity::Fatal {
            tracing::error!(
                %error,
                records = batch.len(),
                "batch failed and no retry can fix it; stopping"
            );
            return Err(error);
        }
        if retry.gives_up_after(attempt) {
            tracing::error!(
                %error,
                records = batch.len(),
                attempt,
                "batch failed too often; stopping"
            );
            return Err(error);
        }
        let delay = retry.delay(attempt);
        metrics.batch_retries.inc();
        tracing::warn!(
            %error,
            records = batch.len(),
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            "batch failed, retrying"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::BadRecord;
    use gps_domain::reject::RejectReason;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;

    /// A record of weight 1 at `offset`.
    fn record(offset: i64) -> InRecord {
        InRecord {
            partition: 0,
            offset,
            body: Err(BadRecord {
                reason: RejectReason::MalformedRecord,
                detail: String::new(),
                raw: Vec::new(),
            }),
        }
    }

    /// Records sent through a channel by the test; a closed channel ends the range.
    struct ChannelSource {
        rx: mpsc::UnboundedReceiver<InRecord>,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl BatchSource for ChannelSource {
        async fn recv(&mut self) -> Result<Option<InRecord>, ProcessorError> {
            Ok(self.rx.recv().await)
        }

        async fn done(&mut self, batch: &[InRecord]) {
            let offsets: Vec<String> = batch.iter().map(|r| r.offset.to_string()).collect();
            self.log
                .lock()
                .unwrap()
                .push(format!("commit {}", offsets.join(",")));
        }

        async fn close(&mut self) {
            self.log.lock().unwrap().push("close".into());
        }
    }

    /// A stage answering from a script of results (then `Ok`), logging each attempt's time.
    struct ScriptedStage {
        script: VecDeque<Result<(), ProcessorError>>,
        log: Arc<Mutex<Vec<String>>>,
        started: Instant,
    }

    impl BatchStage for ScriptedStage {
        async fn process(&mut self, batch: &[InRecord]) -> Result<BatchOutcome, ProcessorError> {
            let at = self.started.elapsed().as_millis();
            self.log
                .lock()
                .unwrap()
                .push(format!("process {} at {at}ms", batch.len()));
            self.script.pop_front().unwrap_or(Ok(()))?;
            Ok(BatchOutcome::default())
        }

        fn forget_devices(&mut self) {}
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_fixes: 10,
        max_wait: Duration::from_millis(50),
        idle: Duration::from_millis(5),
    };

    fn source() -> (mpsc::UnboundedSender<InRecord>, ChannelSource) {
        let (tx, rx) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        (tx, ChannelSource { rx, log })
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_closes_when_records_stop_coming() {
        let (tx, mut source) = source();
        let started = Instant::now();
        tokio::spawn(async move {
            for offset in 0..3 {
                tx.send(record(offset)).unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let filled = fill_batch(&mut source, &LIMITS, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(filled.records.len(), 3);
        // The last record came at 6 ms; the idle gap closed the batch 5 ms later.
        assert_eq!(started.elapsed(), Duration::from_millis(11));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_is_cut_at_the_max_wait() {
        let (tx, mut source) = source();
        let started = Instant::now();
        tokio::spawn(async move {
            for offset in 0..1000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if tx.send(record(offset)).is_err() {
                    return;
                }
                // Records 2 ms apart keep the batch from going idle.
                for extra in 0..3 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let _ = tx.send(record(10_000 + offset * 10 + extra));
                }
            }
        });
        let limits = BatchLimits {
            max_fixes: 1000,
            ..LIMITS
        };
        let stop = CancellationToken::new();
        let first = fill_batch(&mut source, &limits, &stop).await.unwrap();
        // First record at 20 ms, last three at 22..26; idle from 26 ms: closed at 31 ms.
        assert_eq!(first.records.len(), 4);
        assert_eq!(started.elapsed(), Duration::from_millis(31));

        let limits = BatchLimits {
            idle: Duration::from_millis(30),
            ..limits
        };
        let started = Instant::now();
        let second = fill_batch(&mut source, &limits, &stop).await.unwrap();
        // With a long idle gap only the max wait (50 ms after the first record) closes it.
        let first_record_after = Duration::from_millis(15); // the next record comes at 46 ms
        assert_eq!(started.elapsed(), first_record_after + LIMITS.max_wait);
        assert!(second.records.len() > 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_closes_at_once_and_a_range_end_closes_it_too() {
        let (tx, mut source) = source();
        for offset in 0..12 {
            tx.send(record(offset)).unwrap();
        }
        drop(tx);
        let stop = CancellationToken::new();
        let started = Instant::now();
        let full = fill_batch(&mut source, &LIMITS, &stop).await.unwrap();
        assert_eq!((full.records.len(), full.end), (10, false));
        assert_eq!(started.elapsed(), Duration::ZERO);
        let rest = fill_batch(&mut source, &LIMITS, &stop).await.unwrap();
        assert_eq!((rest.records.len(), rest.end), (2, true));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_source_waits_until_stopped() {
        let (_tx, mut source) = source();
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(7)).await;
            trigger.cancel();
        });
        let started = Instant::now();
        let filled = fill_batch(&mut source, &LIMITS, &stop).await.unwrap();
        assert!(filled.records.is_empty() && !filled.end);
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    #[test]
    fn retry_backoff_doubles_up_to_its_cap() {
        let delays: Vec<u64> = (1..=8)
            .map(|a| RetryPolicy::SERVICE.delay(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(RetryPolicy::SERVICE.delay(u32::MAX), Duration::from_secs(5));
        assert!(!RetryPolicy::SERVICE.gives_up_after(1_000_000));
        assert!(RetryPolicy::REPLAY.gives_up_after(10));
        assert!(!RetryPolicy::REPLAY.gives_up_after(9));
    }

    fn transient() -> ProcessorError {
        ProcessorError::Database(sqlx::Error::PoolTimedOut)
    }

    fn fatal() -> ProcessorError {
        ProcessorError::Database(sqlx::Error::ColumnNotFound("lat".into()))
    }

    async fn run(
        script: Vec<Result<(), ProcessorError>>,
        records: i64,
        retry: RetryPolicy,
    ) -> (Result<BatchTotals, ProcessorError>, Vec<String>, Metrics) {
        let (tx, mut source) = source();
        for offset in 0..records {
            tx.send(record(offset)).unwrap();
        }
        drop(tx);
        let log = source.log.clone();
        let mut stage = ScriptedStage {
            script: script.into(),
            log: log.clone(),
            started: Instant::now(),
        };
        let metrics = Metrics::new(&prometheus::Registry::new());
        let sinks = Sinks {
            publisher: None,
            metrics: &metrics,
        };
        let stop = CancellationToken::new();
        let result = run_batches(&mut source, &mut stage, sinks, &LIMITS, &retry, &stop).await;
        let log = log.lock().unwrap().clone();
        (result, log, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_backoff_and_committed_once() {
        let (result, log, metrics) = run(
            vec![Err(transient()), Err(transient())],
            3,
            RetryPolicy::SERVICE,
        )
        .await;
        assert_eq!(result.unwrap().records, 3);
        assert_eq!(
            log,
            [
                "process 3 at 0ms",
                "process 3 at 100ms",
                "process 3 at 300ms",
                "commit 0,1,2",
                "close"
            ]
        );
        assert_eq!(metrics.batch_retries.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_failure_stops_without_committing() {
        let (result, log, metrics) = run(
            vec![Err(transient()), Err(fatal())],
            12,
            RetryPolicy::SERVICE,
        )
        .await;
        assert_eq!(result.unwrap_err().severity(), Severity::Fatal);
        assert_eq!(log, ["process 10 at 0ms", "process 10 at 100ms", "close"]);
        assert_eq!(metrics.batch_retries.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_retry_policy_gives_up() {
        let policy = RetryPolicy {
            max_attempts: Some(3),
            ..RetryPolicy::SERVICE
        };
        let script = (0..5).map(|_| Err(transient())).collect();
        let (result, log, _) = run(script, 2, policy).await;
        assert!(result.is_err());
        assert_eq!(log.iter().filter(|l| l.starts_with("process")).count(), 3);
        assert!(!log.iter().any(|l| l.starts_with("commit")));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_retrying_leaves_the_batch_uncommitted() {
        let (tx, mut source) = source();
        tx.send(record(0)).unwrap();
        let log = source.log.clone();
        let mut stage = ScriptedStage {
            script: (0..100).map(|_| Err(transient())).collect(),
            log: log.clone(),
            started: Instant::now(),
        };
        let metrics = Metrics::new(&prometheus::Registry::new());
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            trigger.cancel();
        });
        let sinks = Sinks {
            publisher: None,
            metrics: &metrics,
        };
        let totals = run_batches(
            &mut source,
            &mut stage,
            sinks,
            &LIMITS,
            &RetryPolicy::SERVICE,
            &stop,
        )
        .await
        .unwrap();
        assert_eq!(totals, BatchTotals::default());
        let log = log.lock().unwrap().clone();
        assert_eq!(log.last().map(String::as_str), Some("close"));
        assert!(!log.iter().any(|l| l.starts_with("commit")));
    }
}
