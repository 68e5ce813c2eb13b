//! Counters of one plugin's calls, shared by its pool (calls, latencies) and its instances'
//! sandboxes (log bytes dropped), read by the embedder's metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (µs) of the call-latency buckets.
const LATENCY_BOUNDS_US: [u64; 16] = [
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    u64::MAX,
];

/// Counters of one plugin's calls since load.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls to `authenticate`.
    pub calls: AtomicU64,
    /// Calls that denied.
    pub denials: AtomicU64,
    /// Calls that ended in a failure (trap, deadline, memory, ...).
    pub failures: AtomicU64,
    /// Instances created (the first at load, then one per failure or pool miss).
    pub instances: AtomicU64,
    /// Bytes of log output dropped because a call exceeded its log budget.
    pub log_dropped_bytes: AtomicU64,
    latency: [AtomicU64; 16],
}

impl PluginStats {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len() - 1);
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The 99th-percentile call latency in µs, as the upper bound of its bucket (`None`
    /// before the first call).
    pub fn p99_us(&self) -> Option<u64> {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = total.saturating_mul(99).div_ceil(100);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(LATENCY_BOUNDS_US[i]);
            }
        }
        None
    }
}
