//! A volume's usage within a time budget: the one usage cache, used by Docker's
//! `VolumeDriver.Get` and by the admin API's `/metrics`.
//!
//! dockerd calls `Get` two or three times for every container start, and measuring a plain
//! directory volume walks its whole tree (seconds for a million files). So `Get` waits at
//! most [`BUDGET`] for a measurement. One that takes longer finishes in the background (at
//! most one per volume at a time); its result is shown, with its age, by the `Get`s that
//! follow and is reused for [`REUSE_SLOW_FOR`], so a large directory is walked at most
//! about once per that period and never delays a container start. Fast measurements
//! (a statfs of a volume's own filesystem) are always taken fresh.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::engine::types::{Usage, VolumeName};

/// How long `Get` waits for a measurement.
pub const BUDGET: Duration = Duration::from_millis(100);
/// How long a measurement that took longer than [`BUDGET`] is reused.
pub const REUSE_SLOW_FOR: Duration = Duration::from_secs(60);

/// The volume's usage (the engine's figures), or why it could not be measured.
pub type Outcome = Result<Usage, String>;

/// What `Get` can say about a volume's usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Measured by this call, or by a slow measurement that finished `age` ago.
    Measured { outcome: Outcome, age: Duration },
    /// A measurement is running and none has finished before.
    Pending,
}

#[derive(Default)]
struct Entry {
    measuring: bool,
    /// Counts finished measurements, so a waiter knows when the one it waits for is done.
    finished: u64,
    latest: Option<Latest>,
}

struct Latest {
    outcome: Outcome,
    at: Instant,
    slow: bool,
}

/// See the module docs.
#[derive(Clone, Default)]
pub struct UsageMeter {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    entries: Mutex<HashMap<VolumeName, Entry>>,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<VolumeName, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl UsageMeter {
    /// Reads `volume`'s usage, running `measure` (blocking) unless a recent slow result can
    /// be reused or a measurement is already running. Waits at most `budget`.
    pub fn read(
        &self,
        volume: &VolumeName,
        budget: Duration,
        measure: impl FnOnce() -> Outcome + Send + 'static,
    ) -> Reading {
        let deadline = Instant::now() + budget;
        let shared = &self.shared;
        let mut entries = shared.lock();
        // Forget volumes not asked about lately (removed ones among them).
        entries.retain(|_, e| {
            e.measuring
                || e.latest
                    .as_ref()
                    .is_some_and(|l| l.at.elapsed() < REUSE_SLOW_FOR)
        });
        let entry = entries.entry(volume.clone()).or_default();
        if let Some(latest) = &entry.latest
            && latest.slow
            && latest.at.elapsed() < REUSE_SLOW_FOR
        {
            return Reading::Measured {
                outcome: latest.outcome.clone(),
                age: latest.at.elapsed(),
            };
        }
        let awaited = entry.finished + 1;
        if !entry.measuring {
            if let Err(e) = self.spawn(volume.clone(), budget, measure) {
                return Reading::Measured {
                    outcome: Err(format!("could not start measuring usage: {e}")),
                    age: Duration::ZERO,
                };
            }
            entry.measuring = true;
        }
        loop {
            let Some(entry) = entries.get(volume) else {
                return Reading::Pending;
            };
            if entry.finished >= awaited
                && let Some(latest) = &entry.latest
            {
                return Reading::Measured {
                    outcome: latest.outcome.clone(),
                    age: latest.at.elapsed(),
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return match &entry.latest {
                    Some(latest) => Reading::Measured {
                        outcome: latest.outcome.clone(),
                        age: latest.at.elapsed(),
                    },
                    None => Reading::Pending,
                };
            }
            entries = shared
                .done
                .wait_timeout(entries, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn spawn(
        &self,
        volume: VolumeName,
        budget: Duration,
        measure: impl FnOnce() -> Outcome + Send + 'static,
    ) -> std::io::Result<()> {
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name("berth-usage".into())
            .spawn(move || {
                let started = Instant::now();
                let outcome = measure();
                let slow = started.elapsed() > budget;
                let mut entries = shared.lock();
                let entry = entries.entry(volume).or_default();
                entry.measuring = false;
                entry.finished += 1;
                entry.latest = Some(Latest {
                    outcome,
                    at: Instant::now(),
                    slow,
                });
                shared.done.notify_all();
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SHORT: Duration = Duration::from_millis(50);

    fn name(s: &str) -> VolumeName {
        VolumeName::parse(s).unwrap()
    }

    fn used(bytes_used: u64) -> Usage {
        Usage {
            bytes_used,
            ..Usage::default()
        }
    }

    /// A measurement that counts its runs, takes `delay` and returns `value`.
    fn counted(
        runs: &Arc<AtomicUsize>,
        delay: Duration,
        value: Outcome,
    ) -> impl FnOnce() -> Outcome + Send + 'static {
        let runs = Arc::clone(runs);
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(delay);
            value
        }
    }

    #[test]
    fn fast_measurements_are_taken_fresh_every_time() {
        let meter = UsageMeter::default();
        let runs = Arc::new(AtomicUsize::new(0));
        for value in [5, 7] {
            let reading = meter.read(
                &name("v"),
                SHORT,
                counted(&runs, Duration::ZERO, Ok(used(value))),
            );
            assert!(
                matches!(reading, Reading::Measured { outcome: Ok(v), .. } if v.bytes_used == value),
                "{reading:?}"
            );
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        let failed = meter.read(
            &name("v"),
            SHORT,
            counted(&runs, Duration::ZERO, Err("gone".into())),
        );
        assert!(matches!(failed, Reading::Measured { outcome: Err(e), .. } if e == "gone"));
    }

    #[test]
    fn a_slow_measurement_runs_once_in_the_background_and_is_reused() {
        let meter = UsageMeter::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let slow = Duration::from_secs(1);
        let started = Instant::now();
        let first = meter.read(&name("big"), SHORT, counted(&runs, slow, Ok(used(42))));
        assert_eq!(first, Reading::Pending);
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "Get waited {:?}",
            started.elapsed()
        );
        // Asked again while it runs: no second walk, still no figure.
        let second = meter.read(&name("big"), SHORT, counted(&runs, slow, Ok(used(0))));
        assert_eq!(second, Reading::Pending);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Another volume is measured independently.
        let other = meter.read(
            &name("small"),
            SHORT,
            counted(&runs, Duration::ZERO, Ok(used(1))),
        );
        assert!(
            matches!(
                other,
                Reading::Measured {
                    outcome: Ok(Usage { bytes_used: 1, .. }),
                    ..
                }
            ),
            "{other:?}"
        );

        // Once it has finished, its result is reused without measuring again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while meter.read(&name("big"), SHORT, counted(&runs, slow, Ok(used(0)))) == Reading::Pending
        {
            assert!(
                Instant::now() < deadline,
                "the slow measurement never finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..3 {
            let reused = meter.read(&name("big"), SHORT, counted(&runs, slow, Ok(used(0))));
            assert!(
                matches!(
                    reused,
                    Reading::Measured {
                        outcome: Ok(Usage { bytes_used: 42, .. }),
                        ..
                    }
                ),
                "{reused:?}"
            );
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "the slow result is reused, not re-measured"
        );
    }

    #[test]
    fn a_measurement_that_finishes_within_the_budget_is_waited_for() {
        let meter = UsageMeter::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let reading = meter.read(
            &name("v"),
            Duration::from_secs(5),
            counted(&runs, Duration::from_millis(100), Ok(used(9))),
        );
        assert!(
            matches!(
                reading,
                Reading::Measured {
                    outcome: Ok(Usage { bytes_used: 9, .. }),
                    ..
                }
            ),
            "{reading:?}"
        );
    }
}
