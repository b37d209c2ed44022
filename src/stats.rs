//! Lock-free counters the core keeps about itself (the WAL, the gate): plain atomics updated on
//! the hot path, read by [`crate::metrics`] when it is scraped. Nothing here knows a metrics
//! format, so the core does not depend on the exporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (nanoseconds) of the latency buckets: 1 µs to 10 s in 1-2.5-5 steps. Policy
/// evaluation sits in the microseconds, an fdatasync in the milliseconds; one set serves both so
/// dashboards can put them side by side.
pub const LATENCY_BOUNDS_NS: &[u64] = &[
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of the group-commit batch-size buckets (records per write): powers of two.
pub const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// A histogram of `u64` observations over fixed bucket bounds: one atomic add for the bucket and
/// one for the sum per observation; no lock, no allocation.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// The buckets' upper bounds (inclusive), in the unit observed.
    pub bounds: &'static [u64],
    /// Cumulative counts: `cumulative[i]` observations were `<= bounds[i]`; one more entry at
    /// the end for `+Inf` (equal to `count`).
    pub cumulative: Vec<u64>,
    /// The number of observations.
    pub count: u64,
    /// The sum of the observations, in the unit observed.
    pub sum: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [u64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// A latency histogram ([`LATENCY_BOUNDS_NS`]); observe with [`Histogram::observe_duration`].
    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_BOUNDS_NS)
    }

    /// Records one observation.
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration in nanoseconds (saturating at `u64::MAX`, 584 years).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The counts now. Concurrent observations may land in the count but not yet the sum (or
    /// the reverse); each value is itself exact.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut acc = 0u64;
        for b in self.buckets.iter() {
            acc = acc.wrapping_add(b.load(Ordering::Relaxed));
            cumulative.push(acc);
        }
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            count: acc,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::new(&[1, 2, 4]);
        for v in [0, 1, 2, 3, 4, 5, 100] {
            h.observe(v);
        }
        let s = h.snapshot();
        // <=1: 0,1; <=2: +2; <=4: +3,4; +Inf: +5,100.
        assert_eq!(s.cumulative, vec![2, 3, 5, 7]);
        assert_eq!(s.count, 7);
        assert_eq!(s.sum, 115);
        let l = Histogram::latency();
        l.observe_duration(Duration::from_micros(12));
        let s = l.snapshot();
        assert_eq!(s.cumulative[3], 0, "12 µs is not <= 10 µs");
        assert_eq!(s.cumulative[4], 1, "12 µs is <= 25 µs");
        assert_eq!(s.sum, 12_000);
    }
}
