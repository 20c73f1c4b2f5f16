//! `GET /metrics`: the engine's counters and the pools' state in the Prometheus text format
//! (version 0.0.4), written by hand: a dozen families do not need a metrics library.
//!
//! Every family gets its `# HELP` and `# TYPE` line before its samples; label values are
//! escaped; every pool gets a `berth_volumes` sample for every state, so an absent series
//! never has to be read as zero.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use crate::engine::metrics::{LATENCY_BUCKETS, MetricsSnapshot};
use crate::engine::types::{PoolCapacity, Volume, VolumeState};

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STATES: [VolumeState; 5] = [
    VolumeState::Creating,
    VolumeState::Reserved,
    VolumeState::Attached,
    VolumeState::Detached,
    VolumeState::Deleting,
];

/// What one scrape shows.
pub struct Scrape<'a> {
    pub operations: &'a MetricsSnapshot,
    pub pools: &'a [PoolCapacity],
    pub volumes: &'a [Arc<Volume>],
    /// Bytes used by the volumes of each pool (measured, possibly a little stale).
    pub used_bytes: &'a BTreeMap<String, u64>,
    pub stray_mounts: usize,
    pub stray_loops: usize,
}

/// A per-pool gauge: name, help, and how to read it from the pool's capacity.
type PoolGauge = (&'static str, &'static str, fn(&PoolCapacity) -> u64);

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, pairs: &[(&str, &str)], value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name}{} {value}", labels(pairs));
}

/// Renders one scrape.
pub fn render(s: &Scrape<'_>) -> String {
    let mut out = String::new();

    family(
        &mut out,
        "berth_volumes",
        "gauge",
        "Volumes on this node by pool and state.",
    );
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for v in s.volumes {
        *counts
            .entry((v.placement.pool.as_str(), v.state().as_str()))
            .or_default() += 1;
    }
    let mut pool_names: Vec<&str> = s.pools.iter().map(|p| p.pool.as_str()).collect();
    // Volumes of a pool that is no longer configured still count.
    for (pool, _) in counts.keys() {
        if !pool_names.contains(pool) {
            pool_names.push(pool);
        }
    }
    for pool in &pool_names {
        for state in STATES {
            let n = counts.get(&(*pool, state.as_str())).copied().unwrap_or(0);
            sample(
                &mut out,
                "berth_volumes",
                &[("pool", pool), ("state", state.as_str())],
                n,
            );
        }
    }

    let pool_gauges: [PoolGauge; 5] = [
        (
            "berth_pool_capacity_bytes",
            "Bytes the pool may reserve in all.",
            |p| p.capacity_bytes,
        ),
        (
            "berth_pool_reserved_bytes",
            "Bytes reserved by the pool's volumes (their sizes) and snapshots.",
            |p| p.reserved_bytes,
        ),
        (
            "berth_pool_available_bytes",
            "Bytes the pool can still reserve.",
            |p| p.available_bytes,
        ),
        ("berth_pool_snapshots", "Snapshots kept in the pool.", |p| {
            p.snapshots as u64
        }),
        (
            "berth_pool_snapshot_bytes",
            "Bytes the pool's snapshots hold against its capacity.",
            |p| p.snapshot_bytes,
        ),
    ];
    for (name, help, value) in pool_gauges {
        family(&mut out, name, "gauge", help);
        for p in s.pools {
            sample(&mut out, name, &[("pool", &p.pool)], value(p));
        }
    }
    family(
        &mut out,
        "berth_pool_used_bytes",
        "gauge",
        "Bytes used inside the pool's volumes, measured at most every few seconds.",
    );
    for p in s.pools {
        let used = s.used_bytes.get(&p.pool).copied().unwrap_or(0);
        sample(
            &mut out,
            "berth_pool_used_bytes",
            &[("pool", &p.pool)],
            used,
        );
    }

    family(
        &mut out,
        "berth_operations_total",
        "counter",
        "Volume operations by front-end and operation, failed ones included.",
    );
    for ((frontend, op), stats) in &s.operations.ops {
        sample(
            &mut out,
            "berth_operations_total",
            &[("frontend", frontend), ("op", op)],
            stats.count,
        );
    }
    family(
        &mut out,
        "berth_operation_errors_total",
        "counter",
        "Failed volume operations by front-end, operation and error kind.",
    );
    for ((frontend, op, kind), n) in &s.operations.errors {
        sample(
            &mut out,
            "berth_operation_errors_total",
            &[("frontend", frontend), ("op", op), ("kind", kind)],
            n,
        );
    }
    let histogram = "berth_operation_duration_seconds";
    family(
        &mut out,
        histogram,
        "histogram",
        "Duration of volume operations by front-end and operation.",
    );
    for ((frontend, op), stats) in &s.operations.ops {
        let base = [("frontend", *frontend), ("op", *op)];
        for (le, count) in LATENCY_BUCKETS.iter().zip(stats.buckets) {
            let le = le.to_string();
            sample(
                &mut out,
                &format!("{histogram}_bucket"),
                &[base[0], base[1], ("le", &le)],
                count,
            );
        }
        sample(
            &mut out,
            &format!("{histogram}_bucket"),
            &[base[0], base[1], ("le", "+Inf")],
            stats.count,
        );
        sample(
            &mut out,
            &format!("{histogram}_sum"),
            &base,
            stats.seconds_sum,
        );
        sample(&mut out, &format!("{histogram}_count"), &base, stats.count);
    }

    let store = &s.operations.store;
    let store_counters = [
        (
            "berth_store_durable_commits_total",
            "Store writes made durable (one journal flush each); concurrent changes share one.",
            store.durable_commits,
        ),
        (
            "berth_store_unsynced_commits_total",
            "Store writes not waited for (made durable by the next durable one).",
            store.unsynced_commits,
        ),
        (
            "berth_store_checkpoints_total",
            "Times the store file was made durable and its journal begun anew.",
            store.checkpoints,
        ),
        (
            "berth_store_changes_total",
            "Record changes written to the store.",
            store.changes,
        ),
    ];
    for (name, help, value) in store_counters {
        family(&mut out, name, "counter", help);
        sample(&mut out, name, &[], value);
    }

    family(
        &mut out,
        "berth_stray_mounts",
        "gauge",
        "Mounts under berth's pools that its store did not know at start.",
    );
    sample(&mut out, "berth_stray_mounts", &[], s.stray_mounts);
    family(
        &mut out,
        "berth_stray_loop_devices",
        "gauge",
        "Loop devices over berth's images that its store did not know at start.",
    );
    sample(&mut out, "berth_stray_loop_devices", &[], s.stray_loops);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(labels(&[("pool", "x\"y")]), "{pool=\"x\\\"y\"}");
        assert_eq!(labels(&[]), "");
    }
}
