// SPDX-License-Identifier: Apache-2.0
//! Lock-free histograms a queue thread fills and a metrics scrape reads: one relaxed counter
//! per bucket, written only by the thread that serves the queue (no locked instruction, no
//! allocation per observation), read at any time by reporters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Upper bounds (inclusive, nanoseconds) of the request latency buckets: 1 µs to 100 ms in
/// 1-2-5 steps; slower requests land in the overflow bucket (`+Inf`).
pub const LATENCY_BOUNDS_NS: [u64; 16] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
];

/// Upper bounds (inclusive) of the io_uring batch size buckets: powers of two up to 256.
pub const BATCH_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Add `n` to a counter that only the calling thread writes: a plain load and store, which
/// readers on other threads see whole (relaxed atomics), without a locked read-modify-write.
#[inline]
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A histogram over fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Per bucket (not cumulative); the last one counts values above every bound.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// Request latency in nanoseconds over [`LATENCY_BOUNDS_NS`].
#[derive(Debug)]
pub struct LatencyHistogram(pub Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self(Histogram::new(&LATENCY_BOUNDS_NS))
    }
}

impl std::ops::Deref for LatencyHistogram {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// io_uring batch sizes over [`BATCH_BOUNDS`].
#[derive(Debug)]
pub struct BatchHistogram(pub Histogram);

impl Default for BatchHistogram {
    fn default() -> Self {
        Self(Histogram::new(&BATCH_BOUNDS))
    }
}

impl std::ops::Deref for BatchHistogram {
    type Target = Histogram;
    fn deref(&self) -> &Histogram {
        &self.0
    }
}

/// A copy of a [`Histogram`] taken by a reader.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Upper bounds of the buckets (the overflow bucket has none).
    pub bounds: Vec<u64>,
    /// Per bucket, the overflow bucket last (not cumulative).
    pub counts: Vec<u64>,
    /// Sum of the observed values.
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Cumulative counts per bound, as Prometheus `le` buckets (without `+Inf`).
    pub fn cumulative(&self) -> Vec<(u64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .zip(&self.counts)
            .map(|(&b, &c)| {
                total += c;
                (b, total)
            })
            .collect()
    }
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Count `value` (single writer: the queue's thread).
    #[inline]
    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        if let Some(c) = self.counts.get(i) {
            bump(c, 1);
        }
        bump(&self.sum, value);
    }

    /// Count the time from each of `started` to now, in nanoseconds, and empty `started`
    /// (one clock read for the whole batch).
    pub fn observe_since(&self, started: &mut Vec<Instant>) {
        if started.is_empty() {
            return;
        }
        let now = Instant::now();
        for t in started.drain(..) {
            let ns = now.saturating_duration_since(t).as_nanos();
            self.observe(u64::try_from(ns).unwrap_or(u64::MAX));
        }
    }

    /// Read every bucket.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::new(&LATENCY_BOUNDS_NS);
        for v in [
            0,
            1_000,
            1_001,
            99_999_999,
            100_000_000,
            100_000_001,
            u64::MAX,
        ] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 7);
        assert_eq!(s.counts[0], 2, "0 and 1 µs are <= 1 µs");
        assert_eq!(s.counts[1], 1, "1.001 µs is <= 2 µs");
        assert_eq!(s.counts[15], 2, "up to 100 ms inclusive");
        assert_eq!(s.counts[16], 2, "overflow");
        let cumulative = s.cumulative();
        assert_eq!(cumulative.len(), 16);
        assert_eq!(cumulative[0], (1_000, 2));
        assert_eq!(cumulative[15], (100_000_000, 5));
        let b = Histogram::new(&BATCH_BOUNDS);
        for n in [1, 2, 3, 4, 5, 256, 257] {
            b.observe(n);
        }
        assert_eq!(b.snapshot().counts, [1, 1, 2, 1, 0, 0, 0, 0, 1, 1]);
        assert_eq!(b.snapshot().sum, 1 + 2 + 3 + 4 + 5 + 256 + 257);
    }

    #[test]
    fn a_batch_is_timed_with_one_clock_read() {
        let h = Histogram::new(&LATENCY_BOUNDS_NS);
        let t0 = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let mut started = vec![t0, t0, Instant::now()];
        h.observe_since(&mut started);
        assert!(started.is_empty());
        let s = h.snapshot();
        assert_eq!(s.count(), 3);
        // Two waited at least 3 ms (bucket <= 5 ms or above), one almost nothing.
        let slow: u64 = s.counts[11..].iter().sum();
        assert_eq!(slow, 2, "{s:?}");
        assert!(s.sum >= 6_000_000);
    }
}
