//! Where each RPC's time goes: a short pass at concurrency 1 that reads the daemon's own
//! counters (the admin API's `/metrics`) before and after every call, so each RPC is split
//! into time inside the engine and time outside it (transport, front-end), with the durable
//! store commits (fsyncs) it made. Each call is then repeated, as a caller that lost its
//! answer would, and the repeat must commit nothing.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The daemon's counters at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub durable_commits: u64,
    pub unsynced_commits: u64,
    /// Seconds spent inside the engine, all operations together.
    pub engine_seconds: f64,
}

impl Counters {
    /// Reads `/metrics` over the admin socket.
    pub fn scrape(socket: &Path) -> Self {
        let mut stream = UnixStream::connect(socket).expect("the admin socket");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n")
            .expect("request /metrics");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read /metrics");
        let mut counters = Self::default();
        for line in reply.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            match name {
                "berth_store_durable_commits_total" => {
                    counters.durable_commits = value.parse().expect("a count")
                }
                "berth_store_unsynced_commits_total" => {
                    counters.unsynced_commits = value.parse().expect("a count")
                }
                _ if name.starts_with("berth_operation_duration_seconds_sum{") => {
                    counters.engine_seconds += value.parse::<f64>().expect("seconds")
                }
                _ => {}
            }
        }
        counters
    }

    /// What happened between `self` and the later `after`.
    pub fn delta(&self, after: &Self) -> (u64, u64, Duration) {
        (
            after.durable_commits - self.durable_commits,
            after.unsynced_commits - self.unsynced_commits,
            Duration::from_secs_f64((after.engine_seconds - self.engine_seconds).max(0.0)),
        )
    }
}

/// One RPC's share, summed over the pass.
#[derive(Clone, Debug, Default)]
pub struct Share {
    pub calls: u64,
    pub total: Duration,
    pub engine: Duration,
    pub durable_commits: u64,
    pub unsynced_commits: u64,
    /// Commits made by repeating the call (which finds nothing to do).
    pub repeat_commits: u64,
}

impl Share {
    pub fn add(&mut self, took: Duration, (durable, unsynced, engine): (u64, u64, Duration)) {
        self.calls += 1;
        self.total += took;
        self.engine += engine;
        self.durable_commits += durable;
        self.unsynced_commits += unsynced;
    }

    pub fn print(&self, rpc: &str, floor: Duration) {
        let n = self.calls.max(1) as f64;
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n;
        let total = us(self.total);
        let engine = us(self.engine);
        println!(
            "  {rpc:<20} {total:>8.1} µs = engine {engine:>7.1} + transport/front-end {:>7.1}; durable commits {:.2}, unsynced {:.2}; floor {:>6.1} µs ({:.2}x); repeated: {} commits",
            (total - engine).max(0.0),
            self.durable_commits as f64 / n,
            self.unsynced_commits as f64 / n,
            floor.as_secs_f64() * 1e6,
            total / (floor.as_secs_f64() * 1e6).max(1e-9),
            self.repeat_commits,
        );
    }
}
