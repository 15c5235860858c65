//! The report's arithmetic, kept pure so it can be tested on known data: latency percentiles,
//! per-second timelines of rate and latency, and the loss check (every acknowledged fix stored
//! exactly once, every deliberately bad fix quarantined and never stored).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A fix's identity downstream: device index in the run and fix time (ms).
pub type FixKey = (u32, i64);

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples measured.
    pub count: u64,
    /// Median, ms.
    pub p50: f64,
    /// 95th percentile, ms.
    pub p95: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Largest sample, ms.
    pub max: f64,
}

/// A latency recorder (microsecond resolution, up to an hour).
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        }
    }
}

impl Latency {
    /// Record one sample in milliseconds; negative samples (clock skew) count as zero.
    pub fn record_ms(&mut self, ms: f64) {
        let us = (ms.max(0.0) * 1000.0).round() as u64;
        self.hist.saturating_record(us.max(1));
    }

    /// Merge another recorder into this one.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The `q` quantile (0 to 1) in ms (zero when empty).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// The mean in ms (zero when empty).
    pub fn mean_ms(&self) -> f64 {
        self.hist.mean() / 1000.0
    }

    /// p50/p95/p99/max in ms (all zero when empty).
    pub fn percentiles(&self) -> Percentiles {
        if self.hist.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: self.hist.len(),
            p50: self.quantile_ms(0.50),
            p95: self.quantile_ms(0.95),
            p99: self.quantile_ms(0.99),
            max: self.hist.max() as f64 / 1000.0,
        }
    }
}

/// One second of the run, for the chart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub t: u64,
    /// Fixes sent in this second.
    pub offered: u64,
    /// Fixes acknowledged in this second.
    pub acked: u64,
    /// p99 ingest-to-database latency of fixes observed this second, ms.
    pub db_p99_ms: Option<f64>,
    /// p99 ingest-to-WebSocket latency of fixes received this second, ms.
    pub ws_p99_ms: Option<f64>,
}

/// Per-second counters and latency recorders.
#[derive(Debug, Default)]
pub struct Timeline {
    seconds: BTreeMap<u64, (u64, u64, Latency, Latency)>,
}

impl Timeline {
    fn slot(&mut self, t: u64) -> &mut (u64, u64, Latency, Latency) {
        self.seconds.entry(t).or_default()
    }
    /// Count `n` fixes offered at second `t`.
    pub fn offered(&mut self, t: u64, n: u64) {
        self.slot(t).0 += n;
    }
    /// Count `n` fixes acknowledged at second `t`.
    pub fn acked(&mut self, t: u64, n: u64) {
        self.slot(t).1 += n;
    }
    /// A database latency sample observed at second `t`.
    pub fn db_latency(&mut self, t: u64, ms: f64) {
        self.slot(t).2.record_ms(ms);
    }
    /// A WebSocket latency sample received at second `t`.
    pub fn ws_latency(&mut self, t: u64, ms: f64) {
        self.slot(t).3.record_ms(ms);
    }
    /// Every second from 0 to the last one seen (gaps filled with zeros).
    pub fn seconds(&self) -> Vec<Second> {
        let Some(&last) = self.seconds.keys().next_back() else {
            return Vec::new();
        };
        (0..=last)
            .map(|t| match self.seconds.get(&t) {
                Some((offered, acked, db, ws)) => Second {
                    t,
                    offered: *offered,
                    acked: *acked,
                    db_p99_ms: (db.count() > 0).then(|| db.percentiles().p99),
                    ws_p99_ms: (ws.count() > 0).then(|| ws.percentiles().p99),
                },
                None => Second {
                    t,
                    ..Second::default()
                },
            })
            .collect()
    }
}

/// What the run sent, as the loss check needs it.
#[derive(Debug, Default)]
pub struct Expectations {
    /// Good fixes whose request was acknowledged (each distinct key once).
    pub acked: HashSet<FixKey>,
    /// Good fixes whose request failed or timed out: they may or may not be stored.
    pub unacked: HashSet<FixKey>,
    /// Deliberately bad fixes that ingest accepted: expected in quarantine only.
    pub bad: HashSet<FixKey>,
}

/// The loss check's verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LossCheck {
    /// Acknowledged good fixes.
    pub acked: u64,
    /// Of those, found in `positions` exactly once.
    pub stored_once: u64,
    /// Acknowledged but absent from `positions`: lost.
    pub missing: u64,
    /// Keys present more than once (impossible with the primary key; checked anyway).
    pub duplicated: u64,
    /// Bad fixes found in `positions`: validation let them through.
    pub bad_stored: u64,
    /// Rows of the run's devices nobody sent (or sent unacknowledged): unexpected.
    pub unexpected: u64,
    /// Unacknowledged fixes that were stored anyway (allowed: the ack was lost, not the fix).
    pub unacked_stored: u64,
    /// Bad fixes sent and accepted by ingest.
    pub bad_sent: u64,
    /// Of those, found in the quarantine topic.
    pub bad_quarantined: u64,
    /// Whether the quarantine topic was read at all.
    pub quarantine_checked: bool,
    /// Example missing keys (device index, fix time), for debugging.
    pub missing_examples: Vec<FixKey>,
}

impl LossCheck {
    /// Zero loss: every acked fix stored once, nothing unexpected, bad ones quarantined.
    pub fn passed(&self) -> bool {
        self.missing == 0
            && self.duplicated == 0
            && self.bad_stored == 0
            && self.unexpected == 0
            && (!self.quarantine_checked || self.bad_quarantined == self.bad_sent)
    }
}

/// Compare what was sent with what the database holds (`stored`: key → row count) and what
/// the quarantine topic holds (`None` when it was not read).
pub fn loss_check(
    expect: &Expectations,
    stored: &HashMap<FixKey, u64>,
    quarantined: Option<&HashSet<FixKey>>,
) -> LossCheck {
    let mut check = LossCheck {
        acked: expect.acked.len() as u64,
        bad_sent: expect.bad.len() as u64,
        quarantine_checked: quarantined.is_some(),
        ..LossCheck::default()
    };
    for key in &expect.acked {
        match stored.get(key).copied().unwrap_or(0) {
            0 => {
                check.missing += 1;
                if check.missing_examples.len() < 10 {
                    check.missing_examples.push(*key);
                }
            }
            1 => check.stored_once += 1,
            _ => check.duplicated += 1,
        }
    }
    check.missing_examples.sort_unstable();
    for (key, &count) in stored {
        if count > 1 && !expect.acked.contains(key) {
            check.duplicated += 1;
        }
        if expect.bad.contains(key) {
            check.bad_stored += 1;
        } else if expect.unacked.contains(key) {
            check.unacked_stored += 1;
        } else if !expect.acked.contains(key) {
            check.unexpected += 1;
        }
    }
    if let Some(q) = quarantined {
        check.bad_quarantined = expect.bad.iter().filter(|k| q.contains(k)).count() as u64;
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_data() {
        let mut lat = Latency::default();
        for ms in 1..=1000 {
            lat.record_ms(ms as f64);
        }
        let p = lat.percentiles();
        assert_eq!(p.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002 + 0.01;
        assert!(close(p.p50, 500.0), "{p:?}");
        assert!(close(p.p95, 950.0), "{p:?}");
        assert!(close(p.p99, 990.0), "{p:?}");
        assert!(close(p.max, 1000.0), "{p:?}");
        assert!(
            close(lat.quantile_ms(0.999), 999.0),
            "{}",
            lat.quantile_ms(0.999)
        );
        assert!(close(lat.mean_ms(), 500.5), "{}", lat.mean_ms());
        assert_eq!(Latency::default().percentiles(), Percentiles::default());
        assert_eq!(Latency::default().mean_ms(), 0.0);
    }

    #[test]
    fn merged_recorders_and_skewed_samples() {
        let (mut a, mut b) = (Latency::default(), Latency::default());
        a.record_ms(-5.0);
        b.record_ms(2.5);
        a.merge(&b);
        let p = a.percentiles();
        assert_eq!(p.count, 2);
        assert!(p.p50 < 0.01 && (p.max - 2.5).abs() < 0.01, "{p:?}");
    }

    #[test]
    fn timeline_fills_gaps() {
        let mut t = Timeline::default();
        t.offered(0, 10);
        t.acked(2, 7);
        t.db_latency(2, 40.0);
        let s = t.seconds();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].offered, s[1].offered, s[2].acked), (10, 0, 7));
        assert!(s[1].db_p99_ms.is_none());
        assert!((s[2].db_p99_ms.unwrap() - 40.0).abs() < 0.1);
    }

    fn expectations() -> Expectations {
        Expectations {
            acked: [(0, 1), (0, 2), (1, 1)].into(),
            unacked: [(1, 2)].into(),
            bad: [(0, 9)].into(),
        }
    }

    #[test]
    fn clean_run_passes() {
        let stored = [((0, 1), 1), ((0, 2), 1), ((1, 1), 1), ((1, 2), 1)].into();
        let q: HashSet<FixKey> = [(0, 9)].into();
        let check = loss_check(&expectations(), &stored, Some(&q));
        assert!(check.passed(), "{check:?}");
        assert_eq!((check.stored_once, check.unacked_stored), (3, 1));
        assert_eq!(check.bad_quarantined, 1);
    }

    #[test]
    fn each_kind_of_failure_is_caught() {
        let q: HashSet<FixKey> = [(0, 9)].into();
        // Lost fix.
        let stored = [((0, 1), 1), ((1, 1), 1)].into();
        let c = loss_check(&expectations(), &stored, Some(&q));
        assert!(!c.passed());
        assert_eq!((c.missing, c.missing_examples.clone()), (1, vec![(0, 2)]));
        // Stored twice.
        let stored = [((0, 1), 2), ((0, 2), 1), ((1, 1), 1)].into();
        assert_eq!(loss_check(&expectations(), &stored, Some(&q)).duplicated, 1);
        // Bad fix stored, and a row nobody sent.
        let stored = [
            ((0, 1), 1),
            ((0, 2), 1),
            ((1, 1), 1),
            ((0, 9), 1),
            ((5, 5), 1),
        ]
        .into();
        let c = loss_check(&expectations(), &stored, Some(&q));
        assert_eq!((c.bad_stored, c.unexpected), (1, 1));
        assert!(!c.passed());
        // Bad fix not quarantined.
        let stored = [((0, 1), 1), ((0, 2), 1), ((1, 1), 1)].into();
        let c = loss_check(&expectations(), &stored, Some(&HashSet::new()));
        assert_eq!(c.bad_quarantined, 0);
        assert!(!c.passed());
        // Quarantine not read: only the database side decides.
        assert!(loss_check(&expectations(), &stored, None).passed());
    }
}
