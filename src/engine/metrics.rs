//! Operation counts, errors and latency histograms per front-end and operation, kept by the
//! engine (every front-end's operations pass through it) and rendered by the admin API.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::types::Frontend;
use crate::store::StoreStats;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0,
];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpStats {
    pub count: u64,
    pub errors: u64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub seconds_sum: f64,
}

/// (front-end, operation) -> stats; errors also by kind.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    pub ops: BTreeMap<(&'static str, &'static str), OpStats>,
    pub errors: BTreeMap<(&'static str, &'static str, &'static str), u64>,
    /// What the store has committed since start (filled in by the engine).
    pub store: StoreStats,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<MetricsSnapshot>,
}

impl Metrics {
    pub fn record(
        &self,
        frontend: Frontend,
        op: &'static str,
        elapsed: Duration,
        error: Option<&'static str>,
    ) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let stats = m.ops.entry((frontend.as_str(), op)).or_default();
        stats.count += 1;
        let secs = elapsed.as_secs_f64();
        stats.seconds_sum += secs;
        for (bucket, le) in stats.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if secs <= le {
                *bucket += 1;
            }
        }
        if let Some(kind) = error {
            stats.errors += 1;
            *m.errors.entry((frontend.as_str(), op, kind)).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
