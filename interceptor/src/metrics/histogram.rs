//! A latency histogram of atomics: observing is a few relaxed adds, no lock (the
//! `prometheus-client` histogram takes a mutex per observation, too much for every
//! connection). Scrapes read the buckets one by one, so a scrape taken during an
//! observation may be off by that one observation, which Prometheus tolerates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds (seconds) of the buckets: 250 µs to 10 s, then +Inf.
pub const BOUNDS: [f64; 15] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// `(upper bound, observations in that bucket)`, the last bound +Inf.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed))
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The count from the same reads as the buckets: the +Inf bucket must equal it.
        let buckets = self.buckets();
        let count = buckets.iter().map(|b| b.1).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum().as_secs_f64(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        for ms in [0, 1, 1, 7, 30_000] {
            h.observe(Duration::from_millis(ms));
        }
        let b = h.buckets();
        let at = |bound: f64| b.iter().find(|x| x.0 == bound).unwrap().1;
        assert_eq!(
            (at(0.000_25), at(0.001), at(0.01), at(f64::INFINITY)),
            (1, 2, 1, 1)
        );
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 5);
        assert_eq!(h.sum(), Duration::from_millis(30_009));
    }
}
