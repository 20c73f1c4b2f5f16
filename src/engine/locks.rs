//! One operation in flight per volume. A caller either waits its turn or is told at once
//! that the volume is busy (CSI wants `ABORTED` rather than a queue). Different volumes never
//! wait for each other.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

use super::error::EngineError;
use super::types::VolumeName;

#[derive(Default)]
pub struct VolumeLocks {
    busy: Mutex<HashSet<VolumeName>>,
    released: Condvar,
}

/// Held while an operation runs; dropping it lets the next one in.
pub struct VolumeGuard<'a> {
    locks: &'a VolumeLocks,
    name: VolumeName,
}

impl VolumeLocks {
    pub fn acquire(&self, name: &VolumeName, wait: bool) -> Result<VolumeGuard<'_>, EngineError> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while busy.contains(name) {
            if !wait {
                return Err(EngineError::Busy {
                    volume: name.to_string(),
                });
            }
            busy = self.released.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        busy.insert(name.clone());
        Ok(VolumeGuard {
            locks: self,
            name: name.clone(),
        })
    }
}

impl Drop for VolumeGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.locks.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.name);
        self.locks.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn second_caller_is_told_busy_or_waits() {
        let locks = Arc::new(VolumeLocks::default());
        let a = VolumeName::parse("a").unwrap();
        let b = VolumeName::parse("b").unwrap();
        let guard = locks.acquire(&a, false).unwrap();
        assert!(matches!(
            locks.acquire(&a, false),
            Err(EngineError::Busy { .. })
        ));
        // Another volume is not affected.
        drop(locks.acquire(&b, false).unwrap());

        let waiter = {
            let locks = Arc::clone(&locks);
            let a = a.clone();
            std::thread::spawn(move || {
                let _g = locks.acquire(&a, true).unwrap();
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        drop(guard);
        waiter.join().unwrap();
        drop(locks.acquire(&a, false).unwrap());
    }
}
